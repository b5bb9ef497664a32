"""Packs what benchmarks/gpu/check.sh needs on a GPU machine with no package
registry into benchmarks/gpu/carry/ (at most 64 MiB with the working tree).

    python -m benchmarks.gpu.pack --python /tmp/venv-cuda/bin/python

--python is an environment with the CUDA flavour of llama-cpp-python installed
(native/tools/cuda_build.py).  Carried:

  llama_cpp.tar.gz   its llama_cpp package and dist-info, each library once
                     (the wheel's extra copies of a library become symlinks)
  core.tar.gz        libhearth_core built against it, and the generated protos
  peers.tar.gz       llama-server and llama-batched-bench from the same llama.cpp,
                     linked to shared libggml/libllama: check.sh points them at
                     the CUDA build's libraries, so they are llama-server's CUDA build
  wheels/            the Python packages the GPU image lacks, for --py-version
  MANIFEST.json      what is carried, with sizes

A rehearsal with the CPU flavour (--python .venv/bin/python --py-version 3.11)
packs the same layout.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / "benchmarks" / "gpu" / "carry"
LIMIT = 64 << 20
# What the GPU image (a PyTorch image: numpy, grpcio, pytest, aiohttp, psutil,
# matplotlib, jinja2 ... are there) lacks or may hold in too old a version.
CARRIED_PACKAGES = ("cffi", "pycparser", "cryptography", "grpcio", "grpcio-health-checking",
                    "grpcio-reflection", "grpcio-status", "googleapis-common-protos",
                    "protobuf", "jsonschema", "referencing", "rpds-py",
                    "jsonschema-specifications", "gguf")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux1_x86_64")


def run(cmd: list[str], **kw: object) -> str:
    print("$ " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, text=True, capture_output=True,
                          **kw).stdout  # type: ignore[call-overload]


def site_packages(python: str) -> Path:
    return Path(run([python, "-c", "import llama_cpp, pathlib; "
                     "print(pathlib.Path(llama_cpp.__file__).parent.parent)"]).strip())


def pack_llama(python: str, out: Path) -> str:
    """llama_cpp with each library stored once: same bytes, one file, the
    other names symlinks to it (tar keeps symlinks; a wheel cannot)."""
    site = site_packages(python)
    dist = sorted(site.glob("llama_cpp_python-*.dist-info"))
    if not dist:
        raise SystemExit(f"{site}: no llama_cpp_python dist-info")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        shutil.copytree(site / "llama_cpp", stage / "llama_cpp", symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(dist[0], stage / dist[0].name)
        first: dict[str, Path] = {}
        for lib in sorted((stage / "llama_cpp" / "lib").iterdir(), key=lambda p: len(p.name)):
            if lib.is_symlink() or not lib.is_file():
                continue
            digest = hashlib.sha256(lib.read_bytes()).hexdigest()
            if digest in first:
                lib.unlink()
                lib.symlink_to(first[digest].name)
            else:
                first[digest] = lib
        with tarfile.open(out, "w:gz") as tar:
            tar.add(stage / "llama_cpp", "llama_cpp")
            tar.add(stage / dist[0].name, dist[0].name)
    flavour = "cuda" if any("libggml-cuda" in p.name for p in first.values()) else "cpu"
    return flavour


def pack_core(python: str, out: Path) -> None:
    """The native core, built against `python`'s llama-cpp-python in a copy
    of the tree (so the checkout's own core stays as it is)."""
    names = run(["git", "-C", str(REPO), "ls-files", "--cached", "--others",
                 "--exclude-standard"]).split("\n")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for name in filter(None, names):
            if (REPO / name).is_file() and not name.startswith("benchmarks/gpu/carry/"):
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, src / name)
        run([python, "setup.py", "-q", "build_proto", "build_native"], cwd=src,
            env={**os.environ, "HEARTH_CUDA": "AUTO"})
        with tarfile.open(out, "w:gz") as tar:
            tar.add(src / "runtime" / "_native", "runtime/_native")
            for f in sorted((src / "runtime" / "_proto").rglob("*_pb2*.py")):
                tar.add(f, f.relative_to(src).as_posix())


# Libraries the carried llama_cpp package holds in its CUDA build (libllama-common
# and the tools' -impl libraries are not among them).
PROVIDED_BY_LLAMA_CPP = re.compile(r"lib(ggml[-.\w]*|llama|mtmd)\.so")


def pack_peers(build: Path, out: Path) -> None:
    """llama-server and llama-batched-bench without the libraries the carried
    llama_cpp provides (libggml*, libllama.so, libmtmd: check.sh links those
    beside them); the build's other shared libraries go along: the tools are
    small launchers of libllama-server-impl / libllama-batched-bench-impl, on
    libllama-common.  Their run path must be $ORIGIN (build_peers.sh)."""
    bins = [build / "bin" / t for t in ("llama-server", "llama-batched-bench")]
    missing = [b for b in bins if not b.exists()]
    if missing:
        raise SystemExit(f"missing {missing}: build them with benchmarks/gpu/check.sh's "
                         "peers step (see README.md)")
    with tarfile.open(out, "w:gz") as tar:
        for b in bins:
            tar.add(b, f"bin/{b.name}")
        for lib in sorted((build / "bin").glob("lib*.so*")):
            if not PROVIDED_BY_LLAMA_CPP.match(lib.name):
                tar.add(lib, f"bin/{lib.name}")


def pack_wheels(py_version: str, into: Path, versions_from: str) -> list[str]:
    into.mkdir(parents=True, exist_ok=True)
    pins = json.loads(run([versions_from, "-c", "import importlib.metadata as m, json, sys;"
                           "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))",
                           *CARRIED_PACKAGES]))
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
           "--no-deps", "--only-binary=:all:", "--python-version", py_version,
           "--implementation", "cp", "-d", str(into)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    run([*cmd, *(f"{n}=={v}" for n, v in pins.items())])
    return sorted(p.name for p in into.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", required=True,
                    help="the Python whose llama-cpp-python is carried")
    ap.add_argument("--py-version", default="3.12", help="the GPU machine's Python (3.12)")
    ap.add_argument("--peers-build", type=Path,
                    help="a llama.cpp build folder with bin/llama-server (shared libraries; "
                         "benchmarks/gpu/build_peers.sh); without it Hearth runs alone")
    ap.add_argument("--out", type=Path, default=CARRY)
    args = ap.parse_args(argv)
    args.python = os.path.abspath(args.python)   # not resolved: a venv's python is a link
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    flavour = pack_llama(args.python, args.out / "llama_cpp.tar.gz")
    pack_core(args.python, args.out / "core.tar.gz")
    if args.peers_build:
        pack_peers(args.peers_build, args.out / "peers.tar.gz")
    wheels = pack_wheels(args.py_version, args.out / "wheels", args.python)
    files = {p.relative_to(args.out).as_posix(): p.stat().st_size
             for p in sorted(args.out.rglob("*")) if p.is_file()}
    tracked = sum((REPO / n).stat().st_size for n in run(
        ["git", "-C", str(REPO), "ls-files"]).split("\n") if n and (REPO / n).is_file())
    total = sum(files.values())
    manifest = {"flavour": flavour, "python": args.py_version, "wheels": wheels,
                "files": files, "carry_bytes": total, "tracked_bytes": tracked}
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{flavour} flavour: {total / 2**20:.1f} MiB carried + {tracked / 2**20:.1f} MiB "
          f"tracked = {(total + tracked) / 2**20:.1f} MiB of the 64 MiB", file=sys.stderr)
    if total + tracked > LIMIT:
        raise SystemExit("over the 64 MiB a GPU run may carry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
