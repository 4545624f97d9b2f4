"""Exact kNN: softdist.knn against faiss IndexFlatL2 and scikit-learn's brute force, time and peak memory.

Each method runs in its own process (same seeded data), so its peak resident memory is its own; the
full distance matrix would be nq * m * 4 bytes. A last case runs softdist.knn on a Dask LocalCluster whose
total worker memory is smaller than that matrix.

    python benchmarks/bench_knn.py                 # 50,000 x 50,000, d = 64, k = 10
    python benchmarks/bench_knn.py --n 20000       # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
METHODS = ["softdist.knn (numpy)", "softdist.knn (torch-cpu)", "faiss IndexFlatL2.search",
           "sklearn NearestNeighbors(brute)"]  # fmt: skip


def _data(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)


def _method(name: str, d: int, k: int):
    """The callable for ``name``, with its library imported (imports are not timed)."""
    if name == "softdist.knn (numpy)":
        import softdist

        return lambda X: softdist.knn(X, X, k=k)[1]
    if name == "softdist.knn (torch-cpu)":
        import torch

        import softdist

        return lambda X: softdist.knn(torch.from_numpy(X), torch.from_numpy(X), k=k)[1].numpy()
    if name == "faiss IndexFlatL2.search":
        import faiss

        def search(X):
            flat = faiss.IndexFlatL2(d)
            flat.add(X)
            return flat.search(X, k)[1]

        return search
    if name == "sklearn NearestNeighbors(brute)":
        from sklearn.neighbors import NearestNeighbors

        return lambda X: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(X)[1]
    raise ValueError(name)


def run_one(method: str, n: int, d: int, k: int) -> dict:
    run = _method(method, d, k)
    X = _data(n, d)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    index = np.asarray(run(X))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "n": n, "d": d, "k": k, "seconds": seconds, "peak_rss_mb": peak,
            "rss_before_mb": baseline, "self_first": float(np.mean(index[:, 0] == np.arange(n)))}  # fmt: skip


def run_cluster(n: int, d: int, k: int, workers: int, memory_limit: str) -> dict:
    import dask.array as da
    from distributed import Client, LocalCluster

    import softdist

    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, memory_limit=memory_limit,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        X = da.random.default_rng(0).standard_normal((n, d), chunks=(n // 8, d), dtype=np.float32)
        X = X.persist()
        start = time.perf_counter()
        _, index = softdist.knn(X, k=k)
        result = client.compute(index, sync=True)
        seconds = time.perf_counter() - start
    return {
        "method": f"softdist.knn (Dask LocalCluster, {workers} workers x {memory_limit})",
        "n": n, "d": d, "k": k, "seconds": seconds, "peak_rss_mb": float("nan"),
        "rss_before_mb": float("nan"), "self_first": float("nan"), "matrix_gb": n * n * 4 / 1e9,
        "shape": list(result.shape),
    }  # fmt: skip


def to_markdown(rows: list[dict]) -> str:
    faiss = next((r["seconds"] for r in rows if r["method"].startswith("faiss")), float("nan"))
    lines = [
        "| method | n = m, d, k | seconds | × faiss | peak RSS MB | RSS before the call | full matrix GB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        matrix = r.get("matrix_gb", r["n"] * r["n"] * 4 / 1e9)
        ratio = f"{r['seconds'] / faiss:.2f}" if "matrix_gb" not in r else "—"  # the cluster case differs
        lines.append(f"| {r['method']} | {r['n']}, {r['d']}, {r['k']} | {r['seconds']:.1f} | {ratio} "
                     f"| {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} | {matrix:.1f} |")  # fmt: skip
    return "\n".join(lines).replace("| nan |", "| — |").replace("| nan |", "| — |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--cluster-n", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.d, args.k)))
        return
    rows = []
    for method in METHODS:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            method,
            "--n",
            str(args.n),
            "--d",
            str(args.d),
            "--k",
            str(args.k),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"skipped {method}: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    try:
        rows.append(run_cluster(args.cluster_n, 16, args.k, workers=2, memory_limit="1GiB"))
    except ImportError as exc:
        print(f"skipped the Dask cluster case: {exc}", file=sys.stderr)
    table = to_markdown(rows)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "knn_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "knn_cpu.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
