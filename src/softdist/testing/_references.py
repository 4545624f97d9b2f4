"""Independent NumPy references: explicit differences in extended precision, never the expansion trick."""

from __future__ import annotations

import numpy as np

from .._agnostic.distances import TARGET_RTOL

# The accuracy pairwise_sqdist promises against the exact distance of the (rounded) inputs, by dtype name.
SQDIST_RTOL = {"float32": TARGET_RTOL[32], "float64": TARGET_RTOL[64]}


def _as_numpy_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.longdouble)


def reference_sqdist(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """Exact-as-possible squared distances: ``sum((A_i - B_j)**2)`` in long double, returned as float64."""
    A_ = _as_numpy_float(A)
    B_ = A_ if B is None else _as_numpy_float(B)
    out = np.empty((A_.shape[0], B_.shape[0]), dtype=np.float64)
    rows = max(1, (1 << 21) // max(1, B_.shape[0] * max(1, A_.shape[1])))
    for start in range(0, A_.shape[0], rows):
        diff = A_[start : start + rows, None, :] - B_[None, :, :]
        out[start : start + rows] = np.sum(diff * diff, axis=-1)
    return out


def reference_distances(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    return np.sqrt(reference_sqdist(A, B))


def hard_datasets(
    rng: np.random.Generator, *, n: int, m: int, d: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Data sets on which the plain norm expansion loses accuracy, as float64 (A, B) pairs.

    Centred Gaussian data; a common offset of 1e3 and 1e5; raw pixel values 0-255; near-duplicates and
    exact duplicates at magnitude 1e4; tight clusters far apart from each other.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out["centred"] = (rng.standard_normal((n, d)), rng.standard_normal((m, d)))
    for offset in (1e3, 1e5):
        out[f"offset-{offset:.0e}"] = (
            rng.standard_normal((n, d)) + offset,
            rng.standard_normal((m, d)) + offset,
        )
    out["pixels-0-255"] = (
        rng.integers(0, 256, (n, d)).astype(np.float64),
        rng.integers(0, 256, (m, d)).astype(np.float64),
    )
    base = rng.standard_normal((n, d)) + 1e4
    near = base[rng.integers(0, n, m)] + 0.05 * rng.standard_normal((m, d))
    near[: m // 4] = base[: m // 4]  # exact duplicates too
    out["near-duplicates-1e4"] = (base, near)
    centres = 1e4 * rng.standard_normal((5, d))
    out["tight-clusters"] = (
        centres[rng.integers(0, 5, n)] + 0.1 * rng.standard_normal((n, d)),
        centres[rng.integers(0, 5, m)] + 0.1 * rng.standard_normal((m, d)),
    )
    return out
