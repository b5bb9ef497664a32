#!/usr/bin/env python3
"""Builds and installs llama-cpp-python's CUDA flavour, with or without a
system CUDA toolkit.  `make setup CUDA=1` calls `install`.

The toolkit is the system one when its nvcc is CUDA 13 (`nvcc` on PATH,
$CUDA_HOME or /usr/local/cuda); otherwise, or with CUDA_TOOLKIT=pip, the
pinned wheels (TOOLKIT_SPEC) are installed into a venv of their own in the
cache, and the links CMake looks for and the wheels lack are added (an
unversioned name for every versioned library, lib64, targets/x86_64-linux).

The wheel is built with `pip wheel --no-cache-dir`, since pip's own cache
is keyed by the sdist and ignores CMAKE_ARGS, into a cache folder keyed by
the flags (wheels/cuda-<key>), so a second venv or a bundle reuses it.
Then it is finished for running without LD_LIBRARY_PATH: every library
that needs cudart or cuBLAS gets an RPATH to the wheels' nvidia/cu13/lib
beside it in site-packages, and the wheel requires those runtime wheels.

    cuda_build.py key       the cache key of the current settings
    cuda_build.py wheel     build (or reuse) the finished wheel; prints its path
    cuda_build.py install   wheel, then install it and the runtime wheels
                            into --python (default: this interpreter)

Settings come from the environment: CUDA_ARCHS (default 90-real, Hopper;
e.g. "80-real;86-real;89-real;90-real" for a wider bundle, about 40 minutes
per architecture on 2 cores), CUDA_TOOLKIT (auto|pip|system),
CMAKE_BUILD_PARALLEL_LEVEL, and HEARTH_CACHE_DIR.
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_dist  # beside this file

TOOLKIT_VERSION = "13.0.3.0"
TOOLKIT_SPEC = f"cuda-toolkit[nvcc,cublas,cccl]=={TOOLKIT_VERSION}"
CUDA_MAJOR = 13
DEFAULT_ARCHS = "90-real"
# The runtime libraries the CUDA backend links, and the wheels that hold them
# (in site-packages/nvidia/cu13/lib).  The finished wheel requires them by
# major version so that an environment that has them (a PyTorch image) keeps its own.
RUNTIME_WHEELS = ("nvidia-cuda-runtime", "nvidia-cublas")
RUNTIME_LIBS = ("libcudart.so", "libcublas.so", "libcublasLt.so")
WHEEL_LIB_DIR = f"nvidia/cu{CUDA_MAJOR}/lib"
# The CPU build's flags (no AMX kernels: see llama_dist.py), so that this
# flavour's CPU fallback runs the same CPU code.
X86_CPU_FLAGS = llama_dist.NO_AMX
FINISH_VERSION = 1      # bump when finish_wheel changes what it writes


@dataclass(frozen=True)
class Toolkit:
    root: Path             # has bin/nvcc, include/, lib64/
    version: str           # nvcc's, e.g. 13.0.88
    source: str            # "system" or "pip"
    python: Path | None    # the venv holding the wheels (pip only)

    @property
    def nvcc(self) -> Path:
        return self.root / "bin" / "nvcc"


# ---- the toolkit -------------------------------------------------------------------------

def nvcc_version(nvcc: Path) -> str | None:
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except OSError:
        return None
    m = re.search(r"\bV(\d+\.\d+\.\d+)", out) or re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def system_toolkit() -> Toolkit | None:
    """A system CUDA toolkit of the major version the runtime wheels have."""
    candidates = []
    if shutil.which("nvcc"):
        candidates.append(Path(shutil.which("nvcc") or "").resolve().parent.parent)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        nvcc = root / "bin" / "nvcc"
        version = nvcc_version(nvcc) if nvcc.exists() else None
        if version and int(version.split(".")[0]) == CUDA_MAJOR:
            return Toolkit(root.resolve(), version, "system", None)
    return None


def add_missing_links(root: Path) -> list[str]:
    """What CMake's FindCUDAToolkit expects and the wheels leave out.
    Idempotent; returns what it added."""
    added = []
    lib = root / "lib"
    for f in sorted(lib.glob("lib*.so.*")):
        plain = lib / (f.name.split(".so.", 1)[0] + ".so")
        if not plain.exists() and not plain.is_symlink():
            plain.symlink_to(f.name)
            added.append(plain.name)
    if not (root / "lib64").exists():
        (root / "lib64").symlink_to("lib")
        added.append("lib64")
    target = root / "targets" / "x86_64-linux"
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        target.symlink_to("../")
        added.append("targets/x86_64-linux")
    return added


def pip_toolkit(cache: Path) -> Toolkit:
    """The pinned toolkit wheels in a venv of their own (not the project's:
    nvcc is a build tool)."""
    venv = cache / f"cuda-toolkit-{TOOLKIT_VERSION}"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig;print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    root = site / "nvidia" / f"cu{CUDA_MAJOR}"
    if not (root / "bin" / "nvcc").exists() or not (venv / "bin" / "patchelf").exists():
        subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                        TOOLKIT_SPEC, "patchelf"], check=True, stdout=sys.stderr)
    for name in add_missing_links(root):
        print(f"cuda toolkit: added {name}", file=sys.stderr)
    version = nvcc_version(root / "bin" / "nvcc")
    if not version:
        raise SystemExit(f"{root}/bin/nvcc does not run")
    return Toolkit(root, version, "pip", py)


def choose_toolkit(mode: str, cache: Path) -> Toolkit:
    if mode not in ("auto", "pip", "system"):
        raise SystemExit(f"CUDA_TOOLKIT={mode}: expected auto, pip or system")
    if mode != "pip":
        found = system_toolkit()
        if found:
            return found
        if mode == "system":
            raise SystemExit(f"CUDA_TOOLKIT=system: no CUDA {CUDA_MAJOR} nvcc found "
                             "(PATH, CUDA_HOME, /usr/local/cuda)")
    return pip_toolkit(cache)


# ---- the build ---------------------------------------------------------------------------

def flavour_args(archs: str, machine: str | None = None) -> list[str]:
    """The CMake arguments that decide what is built (no paths): the cache key."""
    args = ["-DGGML_CUDA=on", f"-DCMAKE_CUDA_ARCHITECTURES={archs}", "-DGGML_NATIVE=OFF",
            # Without VMM the backend does not link libcuda.so.1, the driver:
            # the library loads on a machine with no driver and serves on the CPU.
            "-DGGML_CUDA_NO_VMM=ON", "-DGGML_RPC=ON"]
    if (machine or platform.machine()) in ("x86_64", "AMD64"):
        args += [f"-DCMAKE_C_FLAGS={X86_CPU_FLAGS}", f"-DCMAKE_CXX_FLAGS={X86_CPU_FLAGS}"]
    return args


def cache_key(archs: str, toolkit_version: str, machine: str | None = None) -> str:
    pin = llama_dist.pin()
    blob = json.dumps({"llama": pin["version"], "sdist": pin["sdist_sha256"],
                       "cmake": flavour_args(archs, machine),
                       "cuda": toolkit_version.rsplit(".", 1)[0] if toolkit_version.count(".") > 1
                       else toolkit_version, "finish": FINISH_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_env(toolkit: Toolkit, archs: str) -> dict[str, str]:
    args = [*flavour_args(archs), f"-DCUDAToolkit_ROOT={toolkit.root}",
            f"-DCMAKE_CUDA_COMPILER={toolkit.nvcc}"]
    env = dict(os.environ)
    env.update(CMAKE_ARGS=" ".join(_cmake_quote(a) for a in args),
               CUDAToolkit_ROOT=str(toolkit.root), CUDA_PATH=str(toolkit.root),
               PATH=f"{toolkit.root / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    return env


def _cmake_quote(arg: str) -> str:
    # scikit-build-core splits CMAKE_ARGS like a shell does.
    if " " not in arg:
        return arg
    name, value = arg.split("=", 1)
    return f"{name}='{value}'"


def build_raw_wheel(toolkit: Toolkit, archs: str, into: Path, log: Path) -> Path:
    builder = toolkit.python or Path(sys.executable)
    # The source unpacked and the build folder (scikit-build-core's build-dir)
    # kept in the cache, both at fixed paths, rather than pip's temporary
    # ones: an interrupted build resumes where ninja stopped.
    src = into.parent / "src"
    if not (src / "pyproject.toml").exists():
        shutil.rmtree(src, ignore_errors=True)
        with tarfile.open(llama_dist.sdist_path()) as tar:
            tar.extractall(into.parent / "src.partial", filter="data")
        top = next((into.parent / "src.partial").iterdir())
        top.rename(src)
        (into.parent / "src.partial").rmdir()
    cmd = [str(builder), "-m", "pip", "wheel", "--disable-pip-version-check", "--no-cache-dir",
           "--no-deps", "-v", "--config-settings", f"build-dir={into.parent / 'build'}",
           "-w", str(into), str(src)]
    print(f"building llama-cpp-python's CUDA flavour for {archs} with the {toolkit.source} "
          f"toolkit {toolkit.version} (about 40 minutes per architecture on 2 cores); "
          f"log: {log}", file=sys.stderr)
    start = time.monotonic()
    with log.open("w") as out:
        r = subprocess.run(cmd, env=build_env(toolkit, archs), stdout=out,
                           stderr=subprocess.STDOUT, check=False)
    if r.returncode != 0:
        raise SystemExit(f"the CUDA build failed (exit {r.returncode}); see {log}")
    print(f"built in {(time.monotonic() - start) / 60:.0f} min", file=sys.stderr)
    return next(into.glob("llama_cpp_python-*.whl"))


# ---- finishing the wheel -----------------------------------------------------------------

def rpath_for(member: str) -> str:
    """$ORIGIN-relative RPATH from a library's folder in site-packages to the
    runtime wheels' library folder, after $ORIGIN itself (ggml's siblings)."""
    depth = member.count("/")
    return "$ORIGIN:$ORIGIN/" + "../" * depth + WHEEL_LIB_DIR


def needs_cuda_runtime(data: bytes) -> bool:
    return any(lib.encode() + b"." in data for lib in RUNTIME_LIBS)


def add_requirements(metadata: str, requirements: list[str]) -> str:
    head, sep, body = metadata.partition("\n\n")
    lines = [ln for ln in head.split("\n")
             if not any(ln.startswith(f"Requires-Dist: {r.split(' ')[0]}") for r in requirements)]
    lines += [f"Requires-Dist: {r}" for r in requirements]
    return "\n".join(lines) + sep + body


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()


def finish_wheel(raw: Path, out: Path, patchelf: list[str]) -> list[str]:
    """Copies `raw` to `out` with RPATHs set and the runtime wheels required;
    returns the members it patched.  The RECORD is rewritten to match."""
    requirements = [f"{name}>={CUDA_MAJOR},<{CUDA_MAJOR + 1}" for name in RUNTIME_WHEELS]
    patched = []
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(raw) as zin, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        rows = []
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        for info in zin.infolist():
            if info.filename == record_name:
                continue
            data = zin.read(info)
            name = info.filename
            if ".so" in name and ".data/" not in name and needs_cuda_runtime(data):
                path = Path(tmp) / "lib.so"
                path.write_bytes(data)
                subprocess.run([*patchelf, "--set-rpath", rpath_for(name), str(path)],
                               check=True)
                data = path.read_bytes()
                patched.append(name)
            elif name.endswith(".dist-info/METADATA"):
                data = add_requirements(data.decode(), requirements).encode()
            zout.writestr(info, data)
            rows.append((name, _record_hash(data), str(len(data))))
        rows.append((record_name, "", ""))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        zout.writestr(record_name, buf.getvalue())
    return patched


def patchelf_cmd(cache: Path) -> list[str]:
    """patchelf from PATH, else from its wheel in a small venv of the cache."""
    if shutil.which("patchelf"):
        return ["patchelf"]
    venv = cache / "patchelf-venv"
    tool = venv / "bin" / "patchelf"
    if not tool.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "patchelf"], check=True, stdout=sys.stderr)
    return [str(tool)]


def wheel(archs: str, mode: str) -> Path:
    cache = llama_dist.cache_dir()
    toolkit = choose_toolkit(mode, cache)
    folder = cache / "wheels" / f"cuda-{cache_key(archs, toolkit.version)}"
    done = sorted(folder.glob("llama_cpp_python-*.whl"))
    if done:
        print(f"reusing {done[0]}", file=sys.stderr)
        return done[0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(
        {"archs": archs, "toolkit": toolkit.source, "cuda": toolkit.version,
         "cmake": flavour_args(archs)}, indent=2) + "\n")
    raw_dir = folder / "raw"
    raw = next(raw_dir.glob("llama_cpp_python-*.whl"), None) if raw_dir.exists() else None
    if raw is None:
        raw_dir.mkdir(exist_ok=True)
        raw = build_raw_wheel(toolkit, archs, raw_dir, folder / "build.log")
    partial = folder / (raw.name + ".partial")
    tool = [str(toolkit.python.parent / "patchelf")] if toolkit.python else patchelf_cmd(cache)
    patched = finish_wheel(raw, partial, tool)
    if not patched:
        raise SystemExit(f"{raw.name} links no CUDA runtime library: not a CUDA build?")
    final = folder / raw.name
    partial.rename(final)
    shutil.rmtree(raw_dir)
    shutil.rmtree(folder / "build", ignore_errors=True)
    shutil.rmtree(folder / "src", ignore_errors=True)
    print(f"RPATH set on {len(patched)} libraries; wheel: {final}", file=sys.stderr)
    return final


def runtime_pins(toolkit_python: Path | None) -> list[str]:
    """The runtime wheels at the versions the toolkit venv has (the same
    wheels), or by major version when a system toolkit built the wheel."""
    if toolkit_python is not None:
        out = subprocess.run([str(toolkit_python), "-m", "pip", "list", "--format=json",
                              "--disable-pip-version-check"], capture_output=True, text=True,
                             check=False).stdout
        have = {p["name"].lower(): p["version"] for p in json.loads(out or "[]")}
        if all(name in have for name in RUNTIME_WHEELS):
            return [f"{name}=={have[name]}" for name in RUNTIME_WHEELS]
    return [f"{name}>={CUDA_MAJOR},<{CUDA_MAJOR + 1}" for name in RUNTIME_WHEELS]


def install(python: str, archs: str, mode: str) -> None:
    built = wheel(archs, mode)
    pip = [python, "-m", "pip", "--disable-pip-version-check", "install"]
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(built)], check=True)
    # Then what it requires (numpy ..., and the runtime wheels, at the
    # toolkit's versions where the toolkit came from wheels).
    subprocess.run([*pip, str(built), *runtime_pins(pip_toolkit_python())], check=True)


def pip_toolkit_python() -> Path | None:
    py = llama_dist.cache_dir() / f"cuda-toolkit-{TOOLKIT_VERSION}" / "bin" / "python"
    return py if py.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("key", "wheel", "install"))
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    archs = os.environ.get("CUDA_ARCHS") or DEFAULT_ARCHS
    mode = os.environ.get("CUDA_TOOLKIT") or "auto"
    if args.command == "key":
        tk = choose_toolkit(mode, llama_dist.cache_dir())
        print(cache_key(archs, tk.version))
    elif args.command == "wheel":
        print(wheel(archs, mode))
    else:
        install(args.python, archs, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
