"""`softdist` / `python -m softdist`: distances on every installed backend, checked against NumPy."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import pairwise_sqdist
from .testing import BACKENDS, SQDIST_RTOL, Backend, hard_datasets, reference_sqdist


def _check(backend: Backend, dtype: str, A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    exact = reference_sqdist(A.astype(dtype), B.astype(dtype))
    A_b, B_b = backend.asarray(A, dtype), backend.asarray(B, dtype)
    start = time.perf_counter()
    got = backend.to_numpy(backend.call(pairwise_sqdist, A_b, B_b)).astype(np.float64)
    seconds = time.perf_counter() - start
    nonzero = exact > 0
    rel = float(np.max(np.abs(got - exact)[nonzero] / exact[nonzero])) if nonzero.any() else 0.0
    if np.any(got[~nonzero] != 0):
        rel = float("inf")
    return rel, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="softdist",
        description="Compute pairwise squared distances on every installed array backend and check "
        "each against an exact NumPy float64 reference.",
    )
    parser.add_argument("--backend", action="append", help="only these backends (repeatable)")
    parser.add_argument("--dtype", choices=["float32", "float64"], action="append")
    args = parser.parse_args(argv)

    names = {b.name for b in BACKENDS}
    for name in args.backend or []:
        if name not in names:
            parser.error(f"unknown backend {name!r}; choose from {', '.join(sorted(names))}")
    chosen = [b for b in BACKENDS if not args.backend or b.name in args.backend]
    dtypes = args.dtype or ["float32", "float64"]

    # Hard data: near-duplicates and exact duplicates at magnitude 1e4, where the plain expansion fails.
    rng = np.random.default_rng(0)
    A, B = hard_datasets(rng, n=300, m=200, d=32)["near-duplicates-1e4"]

    print(f"pairwise_sqdist on {A.shape} x {B.shape} data at magnitude 1e4 with duplicates")
    print(f"{'backend':<16} {'dtype':<8} {'max rel err':>12} {'seconds':>8}  agrees with NumPy")
    failures, skipped = 0, []
    for backend in chosen:
        reason = backend.skip_reason()
        if reason:
            skipped.append(reason)
            continue
        for dtype in dtypes:
            rel, seconds = _check(backend, dtype, A, B)
            ok = rel <= SQDIST_RTOL[dtype]
            failures += not ok
            print(f"{backend.name:<16} {dtype:<8} {rel:>12.2e} {seconds:>8.3f}  {'yes' if ok else 'NO'}")
    for reason in skipped:
        print(f"skipped {reason}")
    if failures:
        print(f"{failures} backend/dtype combinations disagree with NumPy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
