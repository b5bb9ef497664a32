"""native/tools/cuda_build.py: what it can be checked for without a 40-minute
CUDA build (the build itself was run by hand: see benchmarks/gpu/README.md)."""
from __future__ import annotations

import csv
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "native" / "tools"


def _load():
    sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location("cuda_build", TOOLS / "cuda_build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["cuda_build"] = module
    spec.loader.exec_module(module)
    return module


cb = _load()


def test_missing_links_are_added_once(tmp_path: Path) -> None:
    """The wheels' layout (lib/ with versioned names only) gets what CMake
    looks for; a second run adds nothing.  Fails without the unversioned
    loop: libcublas.so is then missing."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("libcudart.so.13", "libcublas.so.13", "libnvrtc-builtins.so.13.0"):
        (lib / name).write_bytes(b"\x7fELF")
    added = cb.add_missing_links(tmp_path)
    assert set(added) == {"libcudart.so", "libcublas.so", "libnvrtc-builtins.so", "lib64",
                          "targets/x86_64-linux"}
    assert (tmp_path / "lib64" / "libcublas.so").read_bytes() == b"\x7fELF"
    assert (tmp_path / "targets" / "x86_64-linux" / "lib" / "libcudart.so").exists()
    assert cb.add_missing_links(tmp_path) == []


def test_flavour_args_and_the_cache_key() -> None:
    """The AMX flags go into the x86_64 build only, and anything that
    changes the build changes the key (pip's own cache ignores CMAKE_ARGS)."""
    x86 = cb.flavour_args("90-real", "x86_64")
    assert "-DGGML_CUDA_NO_VMM=ON" in x86 and "-DGGML_NATIVE=OFF" in x86
    assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in x86
    assert not any("amx" in a for a in cb.flavour_args("90-real", "aarch64"))
    key = cb.cache_key("90-real", "13.0.88", "x86_64")
    assert key == cb.cache_key("90-real", "13.0.88", "x86_64")
    assert key != cb.cache_key("89-real;90-real", "13.0.88", "x86_64")
    assert key != cb.cache_key("90-real", "13.0.88", "aarch64")
    assert key != cb.cache_key("90-real", "13.2.51", "x86_64")
    assert cb._cmake_quote("-DCMAKE_C_FLAGS=-a -b") == "-DCMAKE_C_FLAGS='-a -b'"


def test_rpath_reaches_the_runtime_wheels_from_each_folder() -> None:
    assert cb.rpath_for("llama_cpp/lib/libggml-cuda.so") == \
        "$ORIGIN:$ORIGIN/../../nvidia/cu13/lib"
    assert cb.rpath_for("lib/libggml-cuda.so") == "$ORIGIN:$ORIGIN/../nvidia/cu13/lib"


def test_unknown_toolkit_mode_is_refused() -> None:
    with pytest.raises(SystemExit, match="auto, pip or system"):
        cb.choose_toolkit("conda", Path("/nonexistent"))


def _wheel(path: Path) -> Path:
    members = {
        "llama_cpp/__init__.py": b"",
        "llama_cpp/lib/libggml-cuda.so": b"\x7fELF needs libcudart.so.13 libcublas.so.13",
        "llama_cpp/lib/libggml-cpu.so": b"\x7fELF needs libgomp.so.1",
        "llama_cpp_python-0.3.36.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.36\n"
            b"Requires-Dist: numpy>=1.20\n\nA description.\n",
        "llama_cpp_python-0.3.36.dist-info/RECORD": b"stale\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_finish_wheel_patches_cuda_libraries_and_requires_the_runtime(tmp_path: Path) -> None:
    """Only the library that links cudart/cuBLAS is patched; METADATA gains
    the runtime wheels and RECORD matches the new bytes.  A fake patchelf
    appends its arguments, so the RPATH it was given is visible."""
    fake = tmp_path / "patchelf"
    fake.write_text('#!/bin/sh\nprintf "|%s" "$2" >> "$3"\n')
    fake.chmod(0o755)
    raw, out = _wheel(tmp_path / "raw.whl"), tmp_path / "out.whl"
    patched = cb.finish_wheel(raw, out, [str(fake)])
    assert patched == ["llama_cpp/lib/libggml-cuda.so"]
    with zipfile.ZipFile(out) as z:
        assert z.read("llama_cpp/lib/libggml-cuda.so").endswith(
            b"|$ORIGIN:$ORIGIN/../../nvidia/cu13/lib")
        assert z.read("llama_cpp/lib/libggml-cpu.so") == b"\x7fELF needs libgomp.so.1"
        meta = z.read("llama_cpp_python-0.3.36.dist-info/METADATA").decode()
        head, body = meta.split("\n\n", 1)
        assert "Requires-Dist: nvidia-cuda-runtime>=13,<14" in head.split("\n")
        assert "Requires-Dist: nvidia-cublas>=13,<14" in head.split("\n")
        assert "Requires-Dist: numpy>=1.20" in head and body == "A description.\n"
        rows = list(csv.reader(io.StringIO(
            z.read("llama_cpp_python-0.3.36.dist-info/RECORD").decode())))
        for name, digest, size in rows:
            if digest:
                assert cb._record_hash(z.read(name)) == digest and int(size) == len(z.read(name))
        assert {r[0] for r in rows} == set(z.namelist())
