"""Builds the offline install bundle on a connected build machine.

One tar holds a wheelhouse with every dependency (the `hearth` wheel and the
llama-cpp-python wheel of the chosen flavour included), optionally GGUF
models, the systemd unit, the install script and a default configuration,
all listed with their SHA-256 in an Ed25519-signed MANIFEST.  The versions
are the ones installed in the build environment, so a site gets exactly what
was tested.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime import __version__
from runtime.bundle.manifest import load_signing_key, write_manifest
from runtime.errors import ConfigError, IntegrityError
from runtime.models.gguf_file import inspect_gguf
from runtime.storage.fsutil import atomic_file

FORMAT = "hearth-bundle/1"
LLAMA_DIST = "llama-cpp-python"
FLAVOURS = ("cpu", "cuda")


@dataclass
class BundleSpec:
    out: Path                     # a .tar file, or a folder to put it in
    source: Path                  # the Hearth source tree (setup.py)
    signing_key: Path
    flavour: str = "auto"         # auto: what the build environment's llama-cpp-python is
    models: list[tuple[str, Path]] = field(default_factory=list)
    python: str = sys.executable
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    fingerprint: str
    flavour: str
    files: int
    size: int


def python_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def installed_flavour() -> str:
    try:
        files = importlib.metadata.files(LLAMA_DIST) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(f"{LLAMA_DIST} is not installed in this environment") from exc
    return "cuda" if any(f.name.startswith("libggml-cuda") for f in files) else "cpu"


def wheel_flavour(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        return "cuda" if any("libggml-cuda" in n for n in z.namelist()) else "cpu"


def constraints() -> str:
    """name==version of everything installed here but Hearth itself."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in ("hearth", LLAMA_DIST):
            lines.add(f"{name}=={dist.version}")
    return "".join(f"{x}\n" for x in sorted(lines, key=str.lower))


def default_config(models: list[str]) -> str:
    parts = ['# Written by the bundle build; models come from the sealed store.\n',
             "[server]\n",
             'listen = ["127.0.0.1:50051", "unix:/run/hearth/hearth.sock"]\n',
             'metrics_listen = "127.0.0.1:9464"\n',
             'log_format = "json"\n']
    for name in models:
        parts.append(f"\n[models.{name}]\nstore = true\n")
    return "".join(parts)


class BundleBuilder:
    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec
        if not (spec.source / "setup.py").exists():
            raise ConfigError(f"{spec.source}: not a Hearth source tree (no setup.py)")
        self.key = load_signing_key(spec.signing_key)
        # The core in the hearth wheel links the llama-cpp-python installed
        # here, so the bundle's flavour is that one's.
        self.flavour = installed_flavour()
        if spec.flavour not in ("auto", self.flavour):
            raise ConfigError(f"--flavour {spec.flavour}: this environment has the "
                              f"{self.flavour} build of {LLAMA_DIST}; build the bundle where "
                              f"the {spec.flavour} build is installed (make setup CUDA=1)")
        self.llama_version = importlib.metadata.version(LLAMA_DIST)
        for name, path in spec.models:
            inspect_gguf(path, f"model {name}")   # refuse to ship a broken file
        self.name = (f"hearth-bundle-{__version__}-{self.flavour}-{python_tag()}-"
                     f"{sysconfig.get_platform().replace('-', '_')}")

    def _pip(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [self.spec.python, "-m", "pip", "--disable-pip-version-check", *args]
        self.spec.log("$ " + " ".join(cmd))
        r = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            raise ConfigError(f"pip {args[0]} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")

    def clean_source(self, into: Path) -> Path:
        """The source tree without build outputs or ignored files, so the
        wheel holds what the checkout says (and the running checkout's own
        libhearth_core is not rebuilt under a process that has it mapped)."""
        src = self.spec.source
        if (src / ".git").exists() and shutil.which("git"):
            listed = subprocess.run(
                ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others",
                 "--exclude-standard"], capture_output=True, check=True).stdout
            names = [n for n in listed.decode().split("\0") if n]
        else:
            skip = {".venv", "build", "models", ".git", "__pycache__", "_native", "dist"}
            names = [p.relative_to(src).as_posix() for p in src.rglob("*")
                     if p.is_file() and not skip & set(p.relative_to(src).parts)]
        dest = into / "src"
        for name in names:
            if (src / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / name, dest / name)
        return dest

    def wheelhouse(self, wh: Path) -> list[str]:
        cuda = self.flavour == "cuda"
        source = self.clean_source(wh.parent.parent)
        self._pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wh),
                  str(source), env={"HEARTH_CUDA": "ON" if cuda else "AUTO"})
        shutil.rmtree(source)
        prebuilt = os.environ.get("HEARTH_LLAMA_WHEEL")
        if prebuilt:
            # The CUDA flavour's finished wheel (native/tools/cuda_build.py):
            # its libraries find the runtime wheels it requires by RPATH.
            shutil.copy2(prebuilt, wh / Path(prebuilt).name)
        else:
            llama_env = {"CMAKE_ARGS": "-DGGML_CUDA=on"} if cuda else {}
            # pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS: a CUDA
            # build must not come from (or go into) it.
            no_cache = ["--no-cache-dir", "--no-binary", LLAMA_DIST] if cuda else []
            self._pip("wheel", "--no-deps", *no_cache, "-w", str(wh),
                      f"{LLAMA_DIST}=={self.llama_version}", env=llama_env)
        llama = next(wh.glob("llama_cpp_python-*.whl"))
        if wheel_flavour(llama) != self.flavour:
            raise ConfigError(f"{llama.name} is a {wheel_flavour(llama)} build, not "
                              f"{self.flavour}: clear pip's cache of it and retry")
        hearth_wheel = next(wh.glob("hearth-*.whl"))
        pins = wh.parent / "constraints.txt"
        pins.write_text(constraints())
        self._pip("wheel", "-w", str(wh), "--find-links", str(wh), "--only-binary", ":all:",
                  "--constraint", str(pins), str(hearth_wheel))
        pins.unlink()
        return sorted(p.name for p in wh.glob("*.whl"))

    def build(self) -> BuiltBundle:
        out = self.spec.out
        target = out / f"{self.name}.tar" if out.is_dir() or not out.suffix else out
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="hearth-bundle-", dir=target.parent) as tmp:
            root = Path(tmp) / self.name
            (root / "wheelhouse").mkdir(parents=True)
            wheels = self.wheelhouse(root / "wheelhouse")
            self._add_models(root)
            self._add_packaging(root)
            info = {"format": FORMAT, "hearth_version": __version__, "flavour": self.flavour,
                    "python": python_tag(), "platform": sysconfig.get_platform(),
                    "llama_cpp_python": self.llama_version,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "models": [name for name, _ in self.spec.models], "wheels": wheels}
            (root / "BUNDLE.json").write_text(json.dumps(info, indent=2) + "\n")
            fp = write_manifest(root, self.key)
            files = write_tar(root, target)
        return BuiltBundle(target, fp, self.flavour, files, target.stat().st_size)

    def _add_models(self, root: Path) -> None:
        if not self.spec.models:
            return
        (root / "models").mkdir()
        for name, path in self.spec.models:
            self.spec.log(f"adding model {name} ({path.stat().st_size / 2**20:.0f} MiB)")
            shutil.copyfile(path, root / "models" / f"{name}.gguf")

    def _add_packaging(self, root: Path) -> None:
        src = self.spec.source / "packaging"
        dst = root / "packaging"
        dst.mkdir()
        shutil.copyfile(src / "install.sh", dst / "install.sh")
        (dst / "install.sh").chmod(0o755)
        shutil.copyfile(src / "systemd" / "hearth.service", dst / "hearth.service")
        shutil.copyfile(src / "systemd" / "hearth-coordinator.service",
                        dst / "hearth-coordinator.service")
        shutil.copyfile(src / "hearth.example.toml", dst / "hearth.example.toml")
        (dst / "hearth.toml").write_text(default_config([n for n, _ in self.spec.models]))


def write_tar(root: Path, path: Path) -> int:
    """A reproducible tar of root (sorted, owner root, fixed times): the same
    inputs give the same bytes.  Written whole or not at all."""
    count = 0

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    with atomic_file(path, mode=0o666, what=f"writing {path.name}") as out, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            arc = Path(root.name) / base.relative_to(root)
            tar.addfile(clean(tar.gettarinfo(str(base), str(arc))))
            for name in sorted(filenames):
                info = clean(tar.gettarinfo(str(base / name), str(arc / name)))
                with (base / name).open("rb") as f:
                    tar.addfile(info, f)
                count += 1
    return count


def unpack(bundle: Path, into: Path) -> Path:
    """Extracts a bundle (plain files and folders only, nothing outside
    `into`) and returns its top folder.  Verify it before use."""
    try:
        with tarfile.open(bundle, "r:*") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            for m in members:
                if not (m.isfile() or m.isdir()) or m.name.startswith("/") or \
                        ".." in m.name.split("/"):
                    raise IntegrityError(f"{bundle}: unsafe entry {m.name!r} in the archive")
            if len(tops) != 1 or not re.fullmatch(r"hearth-bundle-[\w.+-]+", next(iter(tops))):
                raise ConfigError(f"{bundle}: not a Hearth bundle (one hearth-bundle-* folder)")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"{bundle}: not a readable tar archive ({exc})") from exc
    return into / next(iter(tops))


def read_info(root: Path) -> dict:
    info = json.loads((root / "BUNDLE.json").read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ConfigError(f"BUNDLE.json: format {info.get('format')!r} is not {FORMAT}")
    return info
