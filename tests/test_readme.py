"""Every command in README.md runs, so the README cannot drift from the code.

The README's ```sh blocks run as bash scripts (`set -e`: every command must
succeed) and its ```python blocks as scripts, in a scratch folder laid out
like a checkout after `make run`:

- `.venv/bin/hearth` there is this checkout's CLI (`python -m
  runtime.cli.main`).  A `hearth serve` line is started, must reach SERVING
  (its ready file), and is stopped with SIGTERM (exit 0); without a
  `--listen` of its own it listens on a free port instead of 50051.
- `models/` holds the tiny generated model under the default models' file
  names: the Gemma name without a chat template (as the real base model),
  the SmolLM2 name with one.
- A daemon started here serves both as `make run` does; the address the
  README uses for it (127.0.0.1:50051, and 127.0.0.1:8080 for HTTP) is
  replaced by that daemon's, and $HEARTH_ADDR points there.  Piped input is
  "What is the capital of France?".
- The state directory ($HEARTH_STATE_DIR) is the scratch folder's.

A block that cannot run in a test is preceded by `<!-- readme-test: skip:
REASON -->`; that list is kept short (see test_few_blocks_are_skipped).
The ```toml block is loaded with the config parser.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.models.default_model import CHAT_MODEL_FILE, CHAT_MODEL_NAME, DEFAULT_MODEL_NAME
from runtime.models.tiny import write_tiny_model
from tests.integration.conftest import Daemon, start_daemon

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(?P<reason>[^>]*?)\s*-->\s*\n$")
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```\n", re.S | re.M)
QUESTION = "What is the capital of France?\n"

WRAPPER = '''\
import json, os, signal, subprocess, sys, time
cli = [sys.executable, "-m", "runtime.cli.main"]
args = sys.argv[1:]
if args[:1] != ["serve"]:
    os.execv(sys.executable, [*cli, *args])
ready = f"ready-{os.getpid()}.json"
extra = ["--ready-file", ready] + ([] if "--listen" in args else ["--listen", "127.0.0.1:0"])
proc = subprocess.Popen([*cli, *args, *extra])
deadline = time.monotonic() + 120
while not os.path.exists(ready):
    if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        sys.exit(f"hearth serve did not reach SERVING (exit {proc.wait()})")
    time.sleep(0.1)
print("serving on", ", ".join(json.load(open(ready))["addresses"]), file=sys.stderr)
proc.send_signal(signal.SIGTERM)
sys.exit(proc.wait(60))
'''


@dataclass(frozen=True)
class Block:
    line: int               # where it starts in README.md
    lang: str
    body: str
    skip: str               # the reason, or ""

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def blocks(text: str) -> list[Block]:
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()]
        skip = SKIP.search(before[-300:])
        out.append(Block(before.count("\n") + 1, m["lang"], m["body"],
                         skip["reason"] if skip else ""))
    return out


def runnable(lang: str) -> list[Block]:
    return [b for b in blocks(README.read_text()) if b.lang == lang and not b.skip]


@dataclass
class Site:
    root: Path
    env: dict[str, str]
    daemon: Daemon
    http: str

    def localise(self, text: str) -> str:
        return (text.replace("127.0.0.1:50051", self.daemon.tcp)
                .replace("127.0.0.1:8080", self.http))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("readme")
    models = root / "models"
    write_tiny_model(models / GEMMA_FILE, chat_template=None)
    write_tiny_model(models / CHAT_MODEL_FILE)
    hearth = root / ".venv" / "bin" / "hearth"
    hearth.parent.mkdir(parents=True)
    hearth.write_text(f"#!{sys.executable}\n{WRAPPER}")
    hearth.chmod(hearth.stat().st_mode | stat.S_IXUSR)
    d = start_daemon(["--model", f"{DEFAULT_MODEL_NAME}={models / GEMMA_FILE}",
                      "--model", f"{CHAT_MODEL_NAME}={models / CHAT_MODEL_FILE}",
                      "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                      "--parallel", "2", "--ctx", "2048", "--threads", "2"], root)
    http = json.loads(next(root.glob("ready-*.json")).read_text())["http"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEARTH_ADDR": d.tcp,
           "HEARTH_STATE_DIR": str(root / "state"), "PYTHONUNBUFFERED": "1"}
    yield Site(root, env, d, http)
    assert d.stop() == 0, d.log()


def _run(site: Site, cmd: list[str], block: Block) -> None:
    out = subprocess.run(cmd, cwd=site.root, env=site.env, input=QUESTION,
                         capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, (f"{block} failed with exit {out.returncode}:\n"
                                 f"--- stdout\n{out.stdout[-3000:]}\n"
                                 f"--- stderr\n{out.stderr[-3000:]}")


@pytest.mark.timeout(900)        # the federation block trains twice
@pytest.mark.parametrize("block", runnable("sh"), ids=str)
def test_shell_block_runs(site: Site, block: Block) -> None:
    """Fails when a README command is broken: misspelling the tour's
    `--pieces` as `--peices` made this fail ("unrecognized arguments",
    exit 2)."""
    script = "set -euo pipefail\n" + site.localise(block.body)
    _run(site, ["bash", "-c", script], block)


@pytest.mark.parametrize("block", runnable("python"), ids=str)
def test_python_block_runs(site: Site, block: Block) -> None:
    path = site.root / f"snippet_{block.line}.py"
    path.write_text(site.localise(textwrap.dedent(block.body)))
    _run(site, [sys.executable, str(path)], block)


@pytest.mark.parametrize("block", runnable("toml"), ids=str)
def test_toml_block_is_a_valid_config(tmp_path: Path, block: Block) -> None:
    from runtime.config import load_config

    path = tmp_path / "hearth.toml"
    path.write_text(block.body)
    load_config(str(path))


def test_few_blocks_are_skipped() -> None:
    """Only what cannot run in a test (building and serving for good) is
    skipped, each with its reason; every block has a language we run."""
    all_blocks = blocks(README.read_text())
    assert {b.lang for b in all_blocks} <= {"sh", "python", "toml"}, \
        [str(b) for b in all_blocks if b.lang not in ("sh", "python", "toml")]
    skipped = [b for b in all_blocks if b.skip]
    assert len(skipped) <= 2, [f"{b}: {b.skip}" for b in skipped]
    assert len(all_blocks) - len(skipped) >= 6
