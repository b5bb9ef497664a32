#!/usr/bin/env python3
"""Locate the pinned llama.cpp that Hearth's native core is built against.

The core links the libllama/libggml that the pinned llama-cpp-python wheel
installs, and compiles against the headers of exactly that version, taken
from the same version's sdist (the wheel ships no headers).  The sdist is
fetched by package name with pip, checked against the pinned SHA-256, and
cached, so later builds (and air-gapped ones, given HEARTH_LLAMA_SDIST) need
no network.

    llama_dist.py version   pinned llama-cpp-python version
    llama_dist.py headers   include dirs (CMake list), fetching if needed
    llama_dist.py libdir    lib dir of the installed llama_cpp package
    llama_dist.py source    full vendor/llama.cpp tree (for benchmark peers)
    llama_dist.py cmake-args  the CMake options of the CPU build (peers reuse them)
    llama_dist.py wheel     the CPU wheel, built once from the verified sdist into a
                            cache folder keyed by version and options; prints its path

The CPU build differs from pip's default in two ways, both for the engine:
  - GGML_RPC=ON: llama.cpp's RPC backend, for models split across boxes;
  - on x86-64, no AMX kernels (-mno-amx-*): ggml's AMX path segfaulted on
    the first Gemma 3 decode on an AMX-capable Xeon VM (ldtilecfg in
    ggml_backend_amx_mul_mat), in llama-cpp-python and Hearth alike, while
    plain AMX instructions ran there; the AVX-512 kernels are used instead.
pip's own wheel cache is keyed by the sdist alone, not by CMAKE_ARGS, so it
would hand back a wheel built with other options: hence our own cache.
HEARTH_LLAMA_CMAKE_ARGS adds options (and a cache key of their own).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PIN_FILE = Path(__file__).resolve().parent.parent / "llama-cpp-pin.json"


def pin() -> dict:
    return json.loads(PIN_FILE.read_text())


def cache_dir() -> Path:
    base = os.environ.get("HEARTH_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "hearth")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sdist_path() -> Path:
    """The pinned sdist, verified; downloaded with pip on first use."""
    p = pin()
    name = f"llama_cpp_python-{p['version']}.tar.gz"
    target = cache_dir() / name
    supplied = os.environ.get("HEARTH_LLAMA_SDIST")
    if not target.exists() and supplied:
        shutil.copyfile(supplied, target)
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary=:all:", "-d", tmp, f"{p['package']}=={p['version']}"]
            print(f"fetching {p['package']}=={p['version']} sdist for its headers",
                  file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=sys.stderr)
            got = Path(tmp) / name
            if not got.exists():
                raise SystemExit(f"pip did not produce {name}")
            shutil.move(str(got), target)
    actual = _sha256(target)
    if actual != p["sdist_sha256"]:
        target.unlink()
        raise SystemExit(f"{name}: SHA-256 {actual} does not match the pin {p['sdist_sha256']}")
    return target


def _extract(members_prefixes: tuple[str, ...], dest: Path, only_headers: bool) -> None:
    root = f"llama_cpp_python-{pin()['version']}/vendor/llama.cpp/"
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist_path()) as tar:
        for member in tar.getmembers():
            if not member.name.startswith(root) or not (member.isfile() or member.isdir()):
                continue
            rel = member.name[len(root):]
            if not rel or not rel.startswith(members_prefixes):
                continue
            if only_headers and member.isfile() and not rel.endswith(".h"):
                continue
            out = (tmp / rel).resolve()
            if not str(out).startswith(str(tmp.resolve()) + os.sep):
                raise SystemExit(f"refusing to extract {member.name}: outside the target")
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with src, out.open("wb") as f:
                shutil.copyfileobj(src, f)
            out.chmod(0o755 if member.mode & 0o111 else 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def headers() -> list[Path]:
    dest = cache_dir() / f"llama.cpp-headers-{pin()['version']}"
    if not (dest / "include" / "llama.h").exists():
        _extract(("include/", "ggml/include/"), dest, only_headers=True)
    return [dest / "include", dest / "ggml" / "include"]


def source() -> Path:
    dest = cache_dir() / f"llama.cpp-src-{pin()['version']}"
    if not (dest / "CMakeLists.txt").exists():
        _extract(("",), dest, only_headers=False)
    return dest


def libdir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llama_cpp is not installed in this Python "
                         f"(pip install {pin()['package']}=={pin()['version']})")
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    if not (lib / "libllama.so").exists():
        raise SystemExit(f"{lib} has no libllama.so")
    return lib


NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cmake_args() -> str:
    """CMAKE_ARGS of the CPU build, as one shell-quoted string."""
    args = ["-DGGML_RPC=ON"]
    if platform.machine() in ("x86_64", "AMD64"):
        args += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    extra = os.environ.get("HEARTH_LLAMA_CMAKE_ARGS", "")
    return " ".join([*(shlex.quote(a) for a in args), extra]).strip()


def wheel() -> Path:
    """The CPU wheel for these options, built on first use (minutes)."""
    args = cmake_args()
    key = hashlib.sha256(f"{pin()['version']}\0{args}".encode()).hexdigest()[:16]
    dest = cache_dir() / "wheels" / f"cpu-{key}"
    found = sorted(dest.glob("llama_cpp_python-*.whl"))
    if found:
        return found[-1]
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    print(f"building llama-cpp-python {pin()['version']} with CMAKE_ARGS={args} "
          "(several minutes; cached afterwards)", file=sys.stderr, flush=True)
    env = {**os.environ, "CMAKE_ARGS": args}
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                    "-w", str(partial), str(sdist_path())], check=True, env=env,
                   stdout=sys.stderr)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return sorted(dest.glob("llama_cpp_python-*.whl"))[-1]


def main(argv: list[str]) -> int:
    commands = {"version", "headers", "libdir", "source", "cmake-args", "wheel"}
    if len(argv) != 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "version":
        print(pin()["version"])
    elif cmd == "headers":
        print(";".join(str(p) for p in headers()))
    elif cmd == "libdir":
        print(libdir())
    elif cmd == "cmake-args":
        print(cmake_args())
    elif cmd == "wheel":
        print(wheel())
    else:
        print(source())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
