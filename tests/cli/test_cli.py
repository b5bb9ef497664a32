"""The `hearth` command against a running daemon, as an operator uses it."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.conftest import Daemon


def hearth(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_generate_streams_to_stdout(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        expected, _, _ = c.complete("hello world", max_tokens=16, temperature=0.0)
    out = hearth("generate", "--addr", tiny_daemon.tcp, "--max-tokens", "16",
                 "--temperature", "0", "--stats", "hello world")
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n"
    assert "generated tokens" in out.stderr and "first token" in out.stderr


def test_generate_over_the_unix_socket_from_stdin(tiny_daemon: Daemon) -> None:
    sock = next(a for a in tiny_daemon.addresses if a.startswith("unix:"))
    out = hearth("generate", "--addr", sock, "--max-tokens", "4", "-", stdin="the patient")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_chat_reads_turns_from_stdin(tiny_daemon: Daemon) -> None:
    out = hearth("chat", "--addr", tiny_daemon.tcp, "--max-tokens", "6", "--temperature", "0",
                 "--system", "be brief", stdin="hello\n/reset\nagain\n/exit\n")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) >= 2


def test_models_tokenize_embed(tiny_daemon: Daemon) -> None:
    listed = hearth("models", "list", "--addr", tiny_daemon.tcp)
    assert listed.returncode == 0 and "tiny" in listed.stdout and "ready" in listed.stdout
    got = hearth("models", "get", "tiny", "--addr", tiny_daemon.tcp)
    assert json.loads(got.stdout)["slotsTotal"] == 16
    tok = hearth("tokenize", "--addr", tiny_daemon.tcp, "hello world")
    assert tok.stdout.split()[0] == "1"
    emb = hearth("embed", "--addr", tiny_daemon.tcp, "hello", "world")
    vectors = [json.loads(line) for line in emb.stdout.splitlines()]
    assert len(vectors) == 2 and len(vectors[0]) == 64


def test_errors_have_messages_and_exit_codes(tiny_daemon: Daemon) -> None:
    bad = hearth("generate", "--addr", tiny_daemon.tcp, "--temperature", "-1", "hi")
    assert bad.returncode == 7
    assert "INVALID_ARGUMENT: temperature:" in bad.stderr
    gone = hearth("generate", "--addr", "127.0.0.1:1", "hi")
    assert gone.returncode == 6
    assert "UNAVAILABLE" in gone.stderr
    codes = hearth("exit-codes")
    assert "MODEL_LOAD" in codes.stdout


def test_bad_serve_arguments_exit_with_config() -> None:
    out = hearth("serve", "--model", "../x=/tmp/x.gguf")
    assert out.returncode == 3
    assert "not a valid name" in out.stderr
