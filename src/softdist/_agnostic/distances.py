"""Pairwise squared Euclidean distances: centred norm expansion plus exact refinement.

The plain expansion ``|a|^2 + |b|^2 - 2 a.b`` has an absolute rounding error of about
``eps * sqrt(d) * (|a|^2 + |b|^2)``; when the distance is small against the norms (data with a large
common offset, near-duplicates, tight clusters far from the origin) that error swamps the result. Two
steps bound it:

1. Centre both inputs on their common column mean. Distances are translation invariant, and for offset
   data ``x - mean`` is exact (Sterbenz), so the norms that scale the error become the spread of the data
   rather than its offset.
2. Flag every entry whose value is below ``tau * (|a - mean|^2 + |b - mean|^2)`` and recompute it by
   direct differences of the original rows. Entries that are not flagged then have a relative error of at
   most ``eps * sqrt(d) / tau``; flagged entries are exact up to the rounding of a sum of squares, which
   makes duplicated rows exactly 0.0.
"""

from __future__ import annotations

import math
from typing import Any

from .._lib._compat import at, device, is_writeable_array

# Relative accuracy promised for entries that are not recomputed, per floating precision.
TARGET_RTOL = {32: 1e-4, 64: 1e-10}
# Safety factor between the typical GEMM rounding error (eps * sqrt(d) * norms) and the threshold;
# measured worst cases sit about 4x under the bound (benchmarks/accuracy_distances.py).
TAU_SAFETY = 4.0
# Largest number of elements a direct-difference chunk materialises (16 MiB in float32).
DIRECT_CHUNK_ELEMENTS = 1 << 22


def refine_threshold(dtype: Any, n_features: int, *, xp: Any) -> float:
    """Relative size below which an expansion entry is recomputed by direct differences."""
    info = xp.finfo(dtype)
    target = TARGET_RTOL.get(info.bits, TARGET_RTOL[32])
    return min(0.5, TAU_SAFETY * info.eps * math.sqrt(n_features + 2) / target)


def column_mean(A: Any, B: Any | None, *, xp: Any) -> Any:
    """Common column mean of the rows of A and B, shape (d,): the centre of the expansion.

    A column holding NaN or inf gets centre 0, so a non-finite value poisons only its own row's entries
    rather than every entry through the centring.
    """
    total = xp.sum(A, axis=0)
    count = A.shape[0]
    if B is not None:
        total = total + xp.sum(B, axis=0)
        count = count + B.shape[0]
    mean = total / max(count, 1)
    return xp.where(xp.isfinite(mean), mean, 0.0)


def sqdist_expansion(A: Any, B: Any, mean: Any, *, xp: Any) -> tuple[Any, Any, Any]:
    """Centred expansion in one matrix product; returns (D, |A - mean|^2, |B - mean|^2)."""
    A_aug, B_aug, ra, rb = augmented_operands(A, B, mean, xp=xp)
    return xp.matmul(A_aug, xp.matrix_transpose(B_aug)), ra, rb


def direct_sqdist_pairs(A: Any, B: Any, rows: Any, cols: Any, *, xp: Any) -> Any:
    """``sum((A[rows] - B[cols])**2, axis=1)`` in chunks that bound the temporary memory."""
    n_pairs = rows.shape[0]
    step = max(1, DIRECT_CHUNK_ELEMENTS // max(A.shape[1], 1))
    parts = []
    for start in range(0, n_pairs, step):
        stop = min(start + step, n_pairs)
        diff = xp.take(A, rows[start:stop], axis=0) - xp.take(B, cols[start:stop], axis=0)
        parts.append(xp.sum(diff * diff, axis=1))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return xp.zeros((0,), dtype=A.dtype, device=device(A))
    return xp.concat(parts)


def refine_small_entries(D: Any, A: Any, B: Any, ra: Any, rb: Any, *, tau: float, xp: Any) -> Any:
    """Recompute the flagged entries of D by direct differences (eager backends: data-dependent shapes).

    Only rows whose minimum falls under a per-row bound are examined entry by entry, so well-separated
    data pays one read-only pass (the row minimum) and nothing else. D is our own temporary and may be
    updated in place.
    """
    rb_nan = xp.isnan(rb)
    if xp.any(rb_nan):  # eager-only path: a NaN column would hide every row minimum
        row_min = xp.min(xp.where(rb_nan[None, :], xp.inf, D), axis=1)
        rb_max = xp.max(xp.where(rb_nan, -xp.inf, rb))
    else:
        row_min = xp.min(D, axis=1)
        rb_max = xp.max(rb)
    suspicious = row_min < tau * (ra + rb_max)
    (rows,) = xp.nonzero(suspicious)
    if rows.shape[0] == 0:
        return D
    D_rows = xp.take(D, rows, axis=0)
    flagged = D_rows < tau * (xp.take(ra, rows)[:, None] + rb[None, :])
    pair_rows, pair_cols = xp.nonzero(flagged)
    exact = direct_sqdist_pairs(A, B, xp.take(rows, pair_rows), pair_cols, xp=xp)
    D_rows = at(xp.maximum(D_rows, 0.0), flagged).set(exact)
    return at(D, suspicious).set(D_rows)


def augmented_operands(A: Any, B: Any, mean: Any, *, xp: Any) -> tuple[Any, Any, Any, Any]:
    """``[-2(a - mean), |a - mean|^2, 1]`` and ``[b - mean, 1, |b - mean|^2]`` rows, with the two norms.

    Their product is the centred expansion in one GEMM: the norms ride along as two extra columns, so
    the (n, m) result is written once instead of being re-read by two broadcast additions.
    """
    A_c = A - mean
    B_c = B - mean
    ra = xp.sum(A_c * A_c, axis=1)
    rb = xp.sum(B_c * B_c, axis=1)
    dev = device(A)
    ones_a = xp.ones((A.shape[0], 1), dtype=A.dtype, device=dev)
    ones_b = xp.ones((B.shape[0], 1), dtype=B.dtype, device=dev)
    A_aug = xp.concat([A_c * -2.0, ra[:, None], ones_a], axis=1)
    B_aug = xp.concat([B_c, ones_b, rb[:, None]], axis=1)
    return A_aug, B_aug, ra, rb


def symmetric_expansion_blocked(A_aug: Any, B_aug: Any, *, xp: Any, block: int = 1024) -> Any:
    """``A_aug @ B_aug.T`` for B = A, exactly symmetric, computing only the upper block triangle.

    Half the GEMM work of the full product, and no full-matrix transposed pass; needs slice assignment
    (every standard namespace except JAX's immutable arrays).
    """
    n = A_aug.shape[0]
    D = xp.empty((n, n), dtype=A_aug.dtype, device=device(A_aug))
    B_t = xp.matrix_transpose(B_aug)
    for i in range(0, n, block):
        i_end = min(i + block, n)
        for j in range(i, n, block):
            j_end = min(j + block, n)
            tile = xp.matmul(A_aug[i:i_end, :], B_t[:, j:j_end])
            if i == j:
                tile = symmetrize(tile, xp=xp)
            D[i:i_end, j:j_end] = tile
            if i != j:
                D[j:j_end, i:i_end] = xp.matrix_transpose(tile)
    return D


def symmetrize(D: Any, *, xp: Any) -> Any:
    """Exactly symmetric average of D and its transpose (floating addition commutes)."""
    return (D + xp.matrix_transpose(D)) * 0.5


def pairwise_sqdist(
    A: Any,
    B: Any | None,
    *,
    xp: Any,
    refine: Any = refine_small_entries,
    operands: Any = augmented_operands,
) -> Any:
    """Squared distances of floating A (n, d) and B (m, d); B None means A against itself.

    ``refine(D, A, B, ra, rb, tau=..., xp=...)`` recomputes the entries the expansion cannot be trusted
    with; the default needs data-dependent shapes (eager backends). ``operands`` has the signature of
    :func:`augmented_operands`; a backend may swap in an equivalent that is faster for it.
    """
    symmetric = B is None
    B_ = A if symmetric else B
    mean = column_mean(A, B, xp=xp)
    A_aug, B_aug, ra, rb = operands(A, B_, mean, xp=xp)
    tau = refine_threshold(A_aug.dtype, A.shape[1], xp=xp)
    if not symmetric:
        D = xp.matmul(A_aug, xp.matrix_transpose(B_aug))
        return refine(D, A, B_, ra, rb, tau=tau, xp=xp)
    if is_writeable_array(A_aug):
        D = symmetric_expansion_blocked(A_aug, B_aug, xp=xp)
    else:
        D = symmetrize(xp.matmul(A_aug, xp.matrix_transpose(B_aug)), xp=xp)
    # The diagonal is exactly zero by definition: keep it out of the refinement (it would make every row
    # look suspicious) and write it afterwards.
    D = refine(set_diagonal(D, xp.inf, xp=xp), A, A, ra, ra, tau=tau, xp=xp)
    return set_diagonal(D, 0.0, xp=xp)


def set_diagonal(D: Any, value: float, *, xp: Any) -> Any:
    """D (n, n) with its diagonal set to ``value``: a strided write of n entries, not an (n, n) pass."""
    n = D.shape[0]
    flat = at(xp.reshape(D, (n * n,)), slice(None, None, n + 1)).set(value)
    return xp.reshape(flat, (n, n))


def safe_sqrt(D: Any, *, xp: Any) -> Any:
    """sqrt whose gradient is 0, not NaN or inf, where D == 0 (autograd-friendly double where)."""
    positive = D > 0
    return xp.where(positive, xp.sqrt(xp.where(positive, D, 1.0)), 0.0)
