"""Accuracy of pairwise_sqdist against an exact float64 (longdouble) reference, on hard data sets.

Also measures the calibration constant behind the refinement threshold: the largest ratio of the centred
expansion's absolute error to ``eps * sqrt(d + 2) * (|a - mean|^2 + |b - mean|^2)``.

    python benchmarks/accuracy_distances.py
"""

from __future__ import annotations

import numpy as np

import softdist
from softdist._agnostic import distances as generic
from softdist.testing import hard_datasets, reference_sqdist


def expansion_error_ratio(A: np.ndarray, B: np.ndarray) -> float:
    mean = generic.column_mean(A, B, xp=np)
    D, ra, rb = generic.sqdist_expansion(A, B, mean, xp=np)
    exact = reference_sqdist(A, B)
    scale = np.finfo(A.dtype).eps * np.sqrt(A.shape[1] + 2) * (ra[:, None] + rb[None, :])
    return float(np.max(np.abs(D - exact) / np.maximum(scale, np.finfo(np.float64).tiny)))


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'data':<24} {'dtype':<8} {'d':>5} {'max rel err':>12} {'naive rel err':>14} {'calib':>6}")
    for d in (3, 64, 256, 1024):
        for name, (A64, B64) in hard_datasets(rng, n=300, m=200, d=d).items():
            for dtype in (np.float32, np.float64):
                A, B = A64.astype(dtype), B64.astype(dtype)
                exact = reference_sqdist(A, B)
                got = softdist.pairwise_sqdist(A, B)
                naive = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T
                nz = exact > 0
                rel = np.max(np.abs(got - exact)[nz] / exact[nz])
                rel_naive = np.max(np.abs(naive - exact)[nz] / exact[nz])
                zeros_ok = np.all(got[~nz] == 0)
                calib = expansion_error_ratio(A, B)
                flag = "" if zeros_ok else "  NONZERO DUPLICATE"
                print(
                    f"{name:<24} {np.dtype(dtype).name:<8} {d:>5} {rel:>12.2e} {rel_naive:>14.2e} "
                    f"{calib:>6.2f}{flag}"
                )


if __name__ == "__main__":
    main()
