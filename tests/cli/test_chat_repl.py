"""`hearth chat` as a person uses it: piped turns, a terminal REPL, the
choice of model when several are loaded, and the refusal of a base model."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.models.tiny import write_tiny_model
from tests.cli.test_cli import hearth
from tests.integration.conftest import Daemon, start_daemon

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_tiny(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A base model without a template (`base`, first by name) beside one
    with a template (`instruct`), as `make run` serves Gemma and SmolLM2."""
    tmp = tmp_path_factory.mktemp("two")
    base = write_tiny_model(tmp / "base.gguf", chat_template=None)
    d = start_daemon(["--model", f"base={base}", "--model", f"instruct={tiny_model}",
                      "--listen", "127.0.0.1:0", "--parallel", "2", "--ctx", "2048",
                      "--threads", "1"], tmp)
    yield d
    assert d.stop() == 0, d.log()


def test_piped_chat_answers_each_line_once_and_picks_the_model_with_a_template(
        two_tiny: Daemon) -> None:
    """Fails on ea4a01e: with two models loaded the request named none
    (INVALID_ARGUMENT, model required)."""
    out = hearth("chat", "--addr", two_tiny.tcp, "--max-tokens", "4", "--temperature", "0",
                 stdin="hello\nagain\n")
    assert out.returncode == 0, out.stderr
    log = two_tiny.log()
    assert log.count("chat instruct ok") == 2 and "chat base" not in log


def test_base_model_is_refused_with_the_way_out(two_tiny: Daemon) -> None:
    """Fails on ea4a01e: the base model was given the ChatML fallback."""
    out = hearth("chat", "--addr", two_tiny.tcp, "--model", "base", stdin="hello\n")
    assert out.returncode == 7
    assert "FAILED_PRECONDITION: model 'base' has no chat template" in out.stderr
    assert "--chat-template" in out.stderr and "[models.base] chat_template" in out.stderr
    got = hearth("models", "get", "base", "--addr", two_tiny.tcp)
    assert '"chatTemplate": "none"' in got.stdout


def test_operator_chosen_template_makes_a_base_model_chat(tmp_path: Path) -> None:
    """`--chat-template chatml` on a model without one: Chat works and
    Models.Get says the template comes from the config.  Deleting the
    --chat-template override in cli/serve.py makes it fail."""
    base = write_tiny_model(tmp_path / "base.gguf", chat_template=None)
    d = start_daemon(["--model", f"base={base}", "--chat-template", "chatml", "--listen",
                      "127.0.0.1:0", "--parallel", "1", "--ctx", "512", "--threads", "1"],
                     tmp_path)
    try:
        out = hearth("chat", "--addr", d.tcp, "--max-tokens", "3", stdin="hello\n")
        got = hearth("models", "get", "--addr", d.tcp)
    finally:
        assert d.stop() == 0, d.log()
    assert out.returncode == 0, out.stderr
    assert '"chatTemplate": "config"' in got.stdout


def _read_until(fd: int, needle: bytes, timeout: float = 180.0, must: bool = True) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 and not must:
            break
        assert left > 0, f"no {needle!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:         # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _as_at_a_terminal() -> None:
    """In the child: the pty becomes its controlling terminal, and SIGINT
    gets its default action back, as a login shell gives it.  A test run
    started in the background by a non-interactive shell inherits SIGINT
    ignored, and then Ctrl-C would reach nobody."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def spawn_in_terminal(*args: str) -> tuple[subprocess.Popen, int]:
    """`hearth ARGS` with a pseudo-terminal as its controlling terminal (so
    that Ctrl-C is SIGINT, as at a real one); returns it and the leader."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli.main", *args], stdin=follower, stdout=follower,
        stderr=follower, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True, preexec_fn=_as_at_a_terminal)
    os.close(follower)
    return proc, leader


def _ctrl_c_at_the_prompt(proc: subprocess.Popen, leader: int) -> None:
    """Ctrl-C until the prompt is back, at most 5 times.  Python's readline can lose a
    SIGINT that lands after it printed the prompt but before it blocks in select()
    (the flag is set, nothing wakes the select): the REPL then waits, alive, for the
    next key, and a person presses Ctrl-C again.  One fresh-clone run hit exactly that."""
    for _ in range(5):
        os.write(leader, b"\x03")
        seen = _read_until(leader, b"> ", timeout=10.0, must=False)
        assert proc.poll() is None, f"Ctrl-C at the prompt ended the REPL: {seen!r}"
        if b"> " in seen:
            return
    raise AssertionError("no prompt after five Ctrl-C")


def test_terminal_repl_ctrl_c_keeps_it_and_ctrl_d_leaves(two_tiny: Daemon) -> None:
    """At a terminal: an answer, Ctrl-C at the prompt does not leave, Ctrl-D
    does (exit 0).  Fails when _read_turn lets KeyboardInterrupt through
    (exit 130)."""
    proc, leader = spawn_in_terminal("chat", "--addr", two_tiny.tcp, "--max-tokens", "4")
    try:
        assert b"Ctrl-D leaves" in _read_until(leader, b"> ")
        os.write(leader, b"hello\r")
        _read_until(leader, b"> ")                    # answered, prompting again
        _ctrl_c_at_the_prompt(proc, leader)
        assert proc.poll() is None
        os.write(leader, b"\x04")                     # Ctrl-D
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)


@pytest.mark.gemma
def test_chat_answers_the_capital_of_france_on_the_default_models(
        gemma_model: Path, chat_model: Path, tmp_path: Path) -> None:
    """What a new user does after `make run`: both default models loaded,
    `hearth chat` with a piped question picks the instruct model, answers
    with Paris, and exits at EOF; the base model gets the clear refusal.
    Fails on ea4a01e (no model named: INVALID_ARGUMENT).  (Checked with a
    Q5_1 requantization of the chat model on a VM where ggml's AMX kernels,
    which Q4_1 uses, crash.)"""
    d = start_daemon(["--model", f"gemma3-270m={gemma_model}",
                      "--model", f"smollm2-135m-instruct={chat_model}",
                      "--listen", "127.0.0.1:0", "--parallel", "1", "--ctx", "2048"], tmp_path)
    try:
        out = hearth("chat", "--addr", d.tcp, "--temperature", "0",
                     stdin="What is the capital of France?\n")
        base = hearth("chat", "--addr", d.tcp, "--model", "gemma3-270m",
                      stdin="What is the capital of France?\n")
    finally:
        assert d.stop() == 0, d.log()
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert base.returncode == 7
    assert "model 'gemma3-270m' has no chat template" in base.stderr


@pytest.mark.gemma
def test_ctrl_c_stops_an_answer_and_the_repl_goes_on(chat_model: Path, tmp_path: Path) -> None:
    """At a terminal, Ctrl-C during a long answer cancels it (the daemon
    logs the request as cancelled), the REPL prompts again, and the next
    question is answered.  Fails when _answer lets KeyboardInterrupt through
    (the REPL exits with 130)."""
    d = start_daemon(["--model", f"smollm2-135m-instruct={chat_model}", "--listen",
                      "127.0.0.1:0", "--parallel", "1", "--ctx", "2048"], tmp_path)
    proc, leader = spawn_in_terminal("chat", "--addr", d.tcp, "--max-tokens", "1000",
                                     "--temperature", "0")
    try:
        _read_until(leader, b"> ")
        os.write(leader, b"Write a very long story about a lighthouse keeper.\r")
        _read_until(leader, b" the ")                   # the answer is streaming
        os.write(leader, b"\x03")
        assert b"[stopped]" in _read_until(leader, b"> ")
        assert proc.poll() is None
        os.write(leader, b"/reset\r")                 # forget the story
        _read_until(leader, b"> ")
        os.write(leader, b"What is the capital of France?\r")
        answer = _read_until(leader, b"> ")
        assert b"Paris" in answer, answer
        os.write(leader, b"\x04")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
        assert d.stop() == 0, d.log()
    assert re.search(r"chat smollm2-135m-instruct \S+ cancelled", d.log())
