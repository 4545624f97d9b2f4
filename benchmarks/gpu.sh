#!/usr/bin/env bash
# One short GPU session (about 9 minutes): the fused linear head at language-model size, the GPU tests,
# then `softdist bench --device cuda` case by case. Everything lands in $OUT/gpu.tar.gz (the lent
# machine's output folder; at most 8 files come back from it) or in benchmarks/results/gpu.
# See benchmarks/README.md.
#
# With registry access:  nox -s tests_gpu && softdist bench --device cuda --out benchmarks/results/gpu
# On a machine without it (torch, JAX and CuPy preinstalled): put the pure-Python wheels of
# array-api-compat, array-api-extra, array-api-strict and expecttest in .whl/ and run this from the root.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then out=/tmp/gpu; else out=benchmarks/results/gpu; fi
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU at start by default; torch and CuPy share the device in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, jax, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'jax', jax.__version__)" \
    2>&1 | tee -a "$out/gpu.txt"

# The fused linear head at language-model size: N=8192, D=4096, C=128256, bfloat16 inputs.
timeout "${LINEAR_SECONDS:-100}" python3 benchmarks/linear_head.py gpu 2>&1 | tee "$out/linear_head.txt"

# The GPU tests (CuPy, torch CUDA, JAX GPU; each skips cleanly if its library is missing).
par=()
python3 -c "import xdist" 2>/dev/null && par=(-n 6)
# pytest-benchmark (installed there) warns under xdist, and the suite turns warnings into errors
par+=(-p no:benchmark)
timeout "${TEST_SECONDS:-170}" python3 -m pytest -q -p no:cacheprovider "${par[@]}" -k "cuda or gpu" -rfEs >"$out/tests.txt" 2>&1
echo "tests: exit $?" | tee -a "$out/tests.txt"
grep -E "passed|failed|error" "$out/tests.txt" | tail -3

# The benchmark on every CUDA backend, one case at a time so that each gets its share of the time;
# on SIGTERM a run still writes the rows it finished.
# BENCH="case:seconds ..." and BENCH_ARGS (e.g. "--backend torch-cuda") narrow it for a short lease.
default="pairwise_sqdist:55 knn:70 softmax_cross_entropy_and_grad:45 softmax_loss:45 linear_cross_entropy:45"
for spec in ${BENCH:-$default}; do
    case=${spec%%:*}
    # shellcheck disable=SC2086
    timeout "${spec##*:}" python3 -m softdist bench --device cuda --case "$case" --no-plots --out "$out/$case" \
        ${BENCH_ARGS:-} 2>&1 | grep -v '^\[' | tail -8
    echo "bench $case: exit ${PIPESTATUS[0]}"
done
if [ -n "${OUT:-}" ]; then tar -czf "$OUT/gpu.tar.gz" -C /tmp gpu && ls -la "$OUT"; fi
