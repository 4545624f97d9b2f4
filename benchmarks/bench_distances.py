"""pairwise_sqdist against the backend's own plain ``A @ B.T`` and against the peers, in one run.

Every row is a ratio to the same backend's ``A @ B.T`` measured in the same run (medians of interleaved
repeats), so machine load affects numerator and denominator alike. Accuracy (max relative error against
an exact reference on float32 data offset by 1e3) is reported next to speed.

    python benchmarks/bench_distances.py            # writes benchmarks/results/distances_cpu.{md,json}
    python benchmarks/bench_distances.py --repeats 31
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _timing import timed  # benchmarks/ is the script directory

import softdist
from softdist.testing import reference_sqdist

RESULTS = Path(__file__).parent / "results"


def _naive_generic(xp):
    # What a first array-API port looks like: three broadcast passes after the product.
    def run(A, B):
        na = xp.sum(A * A, axis=1)
        nb = xp.sum(B * B, axis=1)
        return na[:, None] + nb[None, :] - 2 * (A @ B.T)

    return run


def _accuracy(name: str, fn, A: np.ndarray, B: np.ndarray, to_numpy) -> float:
    """Max relative error on 400 x 300 rows of the data offset by 1e3 (exact reference is slow)."""
    if name.startswith("A @ B.T"):
        return float("nan")
    A_off, B_off = A[:400] + np.float32(1e3), B[:300] + np.float32(1e3)
    exact = reference_sqdist(A_off, None if "B=None" in name else B_off)
    got = to_numpy(fn(A_off, B_off)).astype(np.float64)
    off_diagonal = exact > 0
    return float(np.max(np.abs(got - exact)[off_diagonal] / exact[off_diagonal]))


def bench_case(n: int, d: int, repeats: int, slow_peers: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, d), dtype=np.float32)
    B = rng.standard_normal((n, d), dtype=np.float32)
    rows: list[dict] = []

    import array_api_compat.numpy as xnp

    methods: dict[str, Callable] = {
        "A @ B.T (bound)": lambda a, b: a @ b.T,
        "softdist.pairwise_sqdist": softdist.pairwise_sqdist,
        "softdist.pairwise_sqdist(A) (B=None)": lambda a, b: softdist.pairwise_sqdist(a),
        "naive array-API expansion": _naive_generic(xnp),
    }
    try:
        from sklearn.metrics.pairwise import euclidean_distances

        methods["sklearn euclidean_distances(squared=True)"] = lambda a, b: euclidean_distances(
            a, b, squared=True
        )
    except ImportError:
        pass
    if slow_peers:
        from scipy.spatial.distance import cdist

        methods["scipy cdist(sqeuclidean)"] = lambda a, b: cdist(a, b, "sqeuclidean")
    times = timed({k: (lambda f=f: f(A, B)) for k, f in methods.items()}, repeats)
    for name, f in methods.items():
        rows.append(_row("numpy", name, n, d, times[name], times["A @ B.T (bound)"],
                         _accuracy(name, f, A, B, np.asarray)))  # fmt: skip

    try:
        import torch
    except ImportError:
        return rows
    tA, tB = torch.from_numpy(A), torch.from_numpy(B)
    tmethods: dict[str, Callable] = {
        "A @ B.T (bound)": lambda a, b: a @ b.T,
        "softdist.pairwise_sqdist": softdist.pairwise_sqdist,
        "softdist.pairwise_sqdist(A) (B=None)": lambda a, b: softdist.pairwise_sqdist(a),
        "torch.cdist(...)**2": lambda a, b: torch.cdist(a, b) ** 2,
    }
    times = timed({k: (lambda f=f: f(tA, tB)) for k, f in tmethods.items()}, repeats)
    for name, f in tmethods.items():
        acc = _accuracy(name, lambda a, b, f=f: f(torch.from_numpy(a), torch.from_numpy(b)), A, B,
                        lambda t: t.numpy())  # fmt: skip
        rows.append(_row("torch-cpu", name, n, d, times[name], times["A @ B.T (bound)"], acc))
    return rows


def _row(backend, name, n, d, seconds, bound, rel_err) -> dict:
    return {"backend": backend, "method": name, "n": n, "m": n, "d": d, "dtype": "float32",
            "seconds": seconds, "ratio_to_matmul": seconds / bound,
            "max_rel_err_offset_1e3": rel_err}  # fmt: skip


def _err(x: float) -> str:
    return "—" if np.isnan(x) else f"{x:.1e}"


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| backend | shape (n=m, d) | method | ms | × A @ B.T | max rel err, data offset 1e3 |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['n']}, {r['d']} | {r['method']} | {r['seconds'] * 1e3:.1f} "
            f"| {r['ratio_to_matmul']:.2f} | {_err(r['max_rel_err_offset_1e3'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = bench_case(4000, 256, args.repeats, slow_peers=False)
    rows += bench_case(2000, 64, args.repeats, slow_peers=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distances_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = to_markdown(rows)
    (args.out / "distances_cpu.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
