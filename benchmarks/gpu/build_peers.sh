#!/usr/bin/env bash
# Builds llama-server and llama-batched-bench from the pinned llama.cpp with
# shared libggml/libllama and no GPU code (minutes, not the CUDA build's 40):
# benchmarks/gpu/check.sh runs them against the carried CUDA build's
# libraries, which makes them llama-server's CUDA build of the same llama.cpp.
#
#   benchmarks/gpu/build_peers.sh [BUILD_DIR]   (default ~/.cache/hearth/peers-gpu)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-$HOME/.cache/hearth/peers-gpu}
py=${PYTHON:-python3}
src=$("$py" native/tools/llama_dist.py source | tail -n 1)
# The CPU build's options (RPC on, no AMX kernels), and no -march=native:
# the binaries run on another machine.
mapfile -t cpu_args < <("$py" native/tools/llama_dist.py cmake-args |
    "$py" -c 'import shlex, sys; print("\n".join(shlex.split(sys.stdin.read())))')
# $ORIGIN run paths: on the GPU machine the binaries find their own shared
# libraries (libllama-common, the tools' -impl libraries) and the CUDA build's,
# which check.sh links beside them, wherever the carried folder lands.
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=OFF \
    "${cpu_args[@]}" >/dev/null
cmake --build "$build" --target llama-server llama-batched-bench -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "$build/bin"
