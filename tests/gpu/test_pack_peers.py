"""benchmarks/gpu/pack.py's peers tarball: the tools travel with every shared library
of their build that the carried llama_cpp package does not provide.  This llama.cpp
builds llama-server and llama-batched-bench as small launchers of -impl libraries on
libllama-common; a first pack dropped those (a `libllama` prefix rule), so on the GPU
machine the peers could not have started.  Checked to fail with that rule back."""
from __future__ import annotations

import tarfile
from pathlib import Path

from benchmarks.gpu.pack import pack_peers

BUILT = ["llama-server", "llama-batched-bench", "libllama-server-impl.so",
         "libllama-batched-bench-impl.so", "libllama-common.so", "libllama-common.so.0",
         "libllama-common.so.0.5.0", "libllama.so", "libllama.so.0", "libllama.so.0.5.0",
         "libggml.so.0", "libggml-base.so.0.25.3", "libggml-cpu.so", "libggml-rpc.so.0",
         "libmtmd.so.0", "libmtmd.so.0.5.0"]


def test_the_tools_travel_with_their_own_libraries_but_not_llama_cpps(tmp_path: Path) -> None:
    bin_dir = tmp_path / "build" / "bin"
    bin_dir.mkdir(parents=True)
    for name in BUILT:
        (bin_dir / name).write_bytes(b"\x7fELF")
    out = tmp_path / "peers.tar.gz"
    pack_peers(tmp_path / "build", out)
    with tarfile.open(out) as tar:
        carried = sorted(Path(n).name for n in tar.getnames())
    assert carried == sorted(["llama-server", "llama-batched-bench", "libllama-server-impl.so",
                              "libllama-batched-bench-impl.so", "libllama-common.so",
                              "libllama-common.so.0", "libllama-common.so.0.5.0"])
