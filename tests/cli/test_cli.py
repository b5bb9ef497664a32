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
    """The CLI curbs repetition by default (repeat_penalty 1.1); the API
    does not."""
    with tiny_daemon.client() as c:
        expected, _, _ = c.complete("hello world", max_tokens=16, temperature=0.0,
                                    repeat_penalty=1.1)
    out = hearth("generate", "--addr", tiny_daemon.tcp, "--max-tokens", "16",
                 "--temperature", "0", "--stats", "hello world")
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n"
    assert "generated tokens" in out.stderr and "first token" in out.stderr


def test_generate_prints_a_screenful_by_default_and_says_how_to_get_more(
        tiny_daemon: Daemon) -> None:
    """Without --max-tokens the CLI stops at 200 tokens and says so on
    stderr; the API's default (512 here) is unchanged.  Fails on ea4a01e,
    which generated up to the server's default."""
    prompt = "hello world"         # greedy with the penalty runs past 200 tokens
    with tiny_daemon.client() as c:
        _, api_tokens, _ = c.complete(prompt, temperature=0.0, ignore_eos=True)
        expected, _, last = c.complete(prompt, temperature=0.0, repeat_penalty=1.1,
                                       max_tokens=200)
    assert len(api_tokens) > 200 and last.finish_reason == 2     # length
    out = hearth("generate", "--addr", tiny_daemon.tcp, "--temperature", "0", prompt)
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n"
    assert "[stopped at 200 tokens, the default here; --max-tokens N for more]" in out.stderr
    more = hearth("generate", "--addr", tiny_daemon.tcp, "--temperature", "0",
                  "--max-tokens", "8", prompt)
    assert more.returncode == 0 and "stopped at" not in more.stderr


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
