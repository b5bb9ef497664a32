#!/usr/bin/env bash
# One command for a GPU machine with no package registry (see README.md):
# installs the carried CUDA flavour, runs `pytest -m gpu`, and runs the
# serving benchmark against llama-server's CUDA build at N = 1, 16, 64,
# writing everything under $OUT.  Runs from the repository root.
#
#   OUT=/some/dir benchmarks/gpu/check.sh
#
# Knobs (for the rehearsal on a CPU machine): HEARTH_GPU_PYTHON (python3),
# HEARTH_GPU_NS (1,16,64), HEARTH_GPU_MODEL (a GGUF; default: a random
# llama model written here), HEARTH_GPU_BENCH_S (300), HEARTH_GPU_TESTS_S (180).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
repo=$PWD
carry=$repo/benchmarks/gpu/carry
out=${OUT:-/tmp/hearth-gpu-out}
py=${HEARTH_GPU_PYTHON:-python3}
ns=${HEARTH_GPU_NS:-1,16,64}
work=$(mktemp -d /tmp/hearth-gpu.XXXXXX)
site=$work/site
mkdir -p "$out" "$site"
exec > >(tee -a "$out/check.log") 2>&1
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start ))s] $*"; }
die() { echo "check.sh: $*" >&2; exit 1; }

[ -f "$carry/MANIFEST.json" ] || die "no $carry/MANIFEST.json: pack it first (README.md)"

step "installing the carried files into $site"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
    "$carry"/wheels/*.whl || die "pip could not install the carried wheels"
tar -xzf "$carry/llama_cpp.tar.gz" -C "$site"
tar -xzf "$carry/core.tar.gz" -C "$repo"
# The CUDA libraries carry an RPATH to site-packages/nvidia/cu13/lib (the
# runtime wheels').  This image has those wheels elsewhere, or a system
# toolkit: link the folder that has cudart and cuBLAS there, so the RPATH is
# what finds them (no LD_LIBRARY_PATH).
if [ ! -e "$site/nvidia/cu13/lib" ]; then
    cudalib=$("$py" - <<'PY'
import glob, os, sys
for root in [*sys.path, "/usr/local/cuda"]:
    for d in (os.path.join(root, "nvidia", "cu13", "lib"), os.path.join(root, "lib64")):
        if glob.glob(os.path.join(d, "libcudart.so.13")) and \
                glob.glob(os.path.join(d, "libcublas.so.13")):
            print(d)
            raise SystemExit(0)
PY
    )
    if [ -n "$cudalib" ]; then
        mkdir -p "$site/nvidia/cu13" && ln -s "$cudalib" "$site/nvidia/cu13/lib"
        echo "CUDA runtime libraries: $cudalib"
    else
        echo "no libcudart.so.13/libcublas.so.13 found: a CPU rehearsal, or the import fails"
    fi
fi
export PYTHONPATH=$repo:$site PYTHONUNBUFFERED=1

step "what this machine is"
{
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    "$py" - <<'PY'
import llama_cpp
from runtime.native import build_info, list_devices
print("llama_cpp", llama_cpp.__version__, llama_cpp.__file__)
print(build_info())
for d in list_devices():
    print(f"device {d.index} {d.type} {d.name} {d.description} "
          f"free {d.free_bytes / 2**30:.1f} of {d.total_bytes / 2**30:.1f} GiB")
PY
    "$py" -m runtime.cli.main doctor 2>&1 | grep -E "gpu|driver|core" || true
} | tee "$out/machine.txt"
grep -q "^llama_cpp " "$out/machine.txt" || die "the carried llama_cpp does not import"

step "pytest -m gpu"
timeout "${HEARTH_GPU_TESTS_S:-180}" "$py" -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider \
    --junitxml="$out/gpu-tests.xml" -o junit_family=xunit2
echo "pytest exit: $?"

bench_peers=hearth
peers=$work/peers
if [ -f "$carry/peers.tar.gz" ]; then
    step "the llama.cpp peers, linked to the carried libraries"
    mkdir -p "$peers"
    tar -xzf "$carry/peers.tar.gz" -C "$peers"
    for lib in "$site"/llama_cpp/lib/lib*.so*; do
        ln -sf "$lib" "$peers/bin/"
    done
    "$peers/bin/llama-server" --version 2>&1 | tail -n 2
    bench_peers=hearth,llama-server-tuned,batched-bench
else
    echo "no peers.tar.gz carried: Hearth is measured alone"
fi

model=${HEARTH_GPU_MODEL:-}
if [ -z "$model" ]; then
    step "writing a random llama model (no model travels; the same file for every peer)"
    model=$work/bench.gguf
    "$py" -c "from runtime.models.tiny import write_tiny_model as w; \
w('$model', n_layer=16, n_embd=1024, n_head=16, n_head_kv=4, n_ff=4096, extra_tokens=32000)"
fi

step "serving benchmark at N=$ns"
HEARTH_PEERS_BUILD=$peers timeout "${HEARTH_GPU_BENCH_S:-300}" "$py" -m benchmarks.serving \
    --model "$model" --concurrency "$ns" --parallel 64 --ctx 32768 --repeat 1 \
    --peers "$bench_peers" --out "$out/serving"
echo "benchmark exit: $?"
if [ -f "$out/serving/serving-latest.json" ]; then
    "$py" -m benchmarks.gpu.summary "$out/serving/serving-latest.json" --out "$out/gpu-summary.md"
fi
step "done; results in $out"
ls -la "$out" "$out/serving" 2>/dev/null
rm -rf "$work"
