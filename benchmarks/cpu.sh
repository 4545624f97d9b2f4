#!/usr/bin/env bash
# The committed CPU results: one `softdist bench` run per case into benchmarks/results/cpu/<case>/
# (bench.md, bench.json, summary.md, a plot), then the README's and docs' tables regenerated from them.
# Run it with nothing else on the machine (the full set takes about 40 minutes on 2 cores).
#   bash benchmarks/cpu.sh                          # every case
#   bash benchmarks/cpu.sh knn linear_cross_entropy # only these (the other folders stay as they are)
set -euo pipefail
cd "$(dirname "$0")/.."
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(pairwise_sqdist knn softmax_cross_entropy_and_grad softmax_loss linear_cross_entropy)
for case in "${cases[@]}"; do
    softdist bench --case "$case" --out "benchmarks/results/cpu/$case"
done
python benchmarks/readme_tables.py
