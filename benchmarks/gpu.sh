#!/usr/bin/env bash
# One short GPU session: the GPU tests, then `softdist bench --device cuda`; results into $OUT/gpu
# (the lent machine's output folder) or benchmarks/results/gpu. See benchmarks/README.md.
#
# With registry access:  nox -s tests_gpu && softdist bench --device cuda --out benchmarks/results/gpu
# On a machine without it (torch, JAX and CuPy preinstalled): put the pure-Python wheels of
# array-api-compat, array-api-extra and array-api-strict in .whl/ and run this script from the root.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}/gpu"
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"

# The GPU tests (CuPy, torch CUDA, JAX GPU; each skips cleanly if its library is missing): ~2 min.
timeout 240 python3 -m pytest -q -p no:cacheprovider -k "cuda or gpu" -rs 2>&1 | tail -60 >"$out/tests.txt"
echo "tests: exit ${PIPESTATUS[0]}" | tee -a "$out/tests.txt"
tail -3 "$out/tests.txt"

# The benchmark on every CUDA backend; on SIGTERM it still writes the rows it finished.
timeout 330 python3 -m softdist bench --device cuda --out "$out" 2>&1 | grep -v '^\[' | tail -40
echo "bench: exit ${PIPESTATUS[0]}"

# The fused linear head at language-model size: N=8192, D=4096, C=128256, bfloat16 inputs (~1 min).
timeout 180 python3 benchmarks/linear_head.py gpu 2>&1 | tee "$out/linear_head.txt"
