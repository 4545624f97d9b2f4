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
from collections.abc import Callable
from typing import Any

from .. import _config
from .._lib._compat import at, device, is_writeable_array


def refine_threshold(dtype: Any, n_features: int, *, xp: Any) -> float:
    """Relative size below which an expansion entry is recomputed by direct differences."""
    info = xp.finfo(dtype)
    target = _config.TARGET_RTOL.get(info.bits, _config.TARGET_RTOL[32])
    return min(0.5, _config.TAU_SAFETY * info.eps * math.sqrt(n_features + 2) / target)


def column_mean(A: Any, B: Any | None, *, xp: Any, eager: bool = True, finite: bool = False) -> Any:
    """Common column mean of the finite entries of A and B, shape (d,): the centre of the expansion.

    NaN and inf entries are left out (a column with none finite gets 0), so one non-finite value moves
    no other row's centre; each entry is divided by the count before summing, so the sum cannot
    overflow near the largest float. ``eager``: one host read skips the masking when all is finite;
    ``finite``: the caller knows it is.
    """
    parts = [A] if B is None else [A, B]
    total = sum(part.shape[0] for part in parts)
    inv = 1.0 / max(total, 1)
    if finite or (eager and all(bool(xp.all(xp.isfinite(part))) for part in parts)):
        return sum(xp.sum(part * inv, axis=0) for part in parts)
    mean, count = 0.0, 0.0
    for part in parts:
        ok = xp.isfinite(part)
        mean = mean + xp.sum(xp.where(ok, part * inv, 0.0), axis=0)
        count = count + xp.sum(xp.astype(ok, part.dtype), axis=0)
    return xp.where(count > 0, mean * (total / xp.maximum(count, 1.0)), 0.0)


def finite_rows(X: Any, *, xp: Any) -> Any:
    """(n,) True where every coordinate of the row is finite."""
    return xp.all(xp.isfinite(X), axis=1)


def _power_of_two_scales(dtype: Any, n_features: int, *, xp: Any) -> tuple[float, float, float, float]:
    """(too_big, down, too_small, up): values whose magnitude is above ``too_big`` are multiplied by
    ``down`` before squaring (and the squares by ``1 / down**2`` after), below ``too_small`` by ``up``.

    Powers of two, so the scaling itself is exact; ``too_big`` leaves room for d squares of differences
    (and Dekker's split constant) under the largest float, ``too_small`` keeps the squares and their
    rounding errors above the smallest normal float.
    """
    info = xp.finfo(dtype)
    emax = round(math.log2(info.max))  # 128 / 1024
    emin = round(math.log2(info.smallest_normal))  # -126 / -1022
    digits = round(-math.log2(info.eps)) + 1  # 24 / 53
    hi = (emax - 8 - max(n_features, 1).bit_length()) // 2
    lo = (emin + 2 * digits) // 2 + 2
    shift_down = emax + 2 - hi
    shift_up = hi - lo - 2
    return 2.0**hi, 2.0**-shift_down, 2.0**lo, 2.0**shift_up


def unscale_squares(D: Any, flag: Any, factor: float, *, xp: Any) -> Any:
    """``D * factor**2`` where ``flag`` (broadcast), exact for a power of two ``factor``; a product past
    the largest float is inf, without the overflow warning NumPy would give for the multiplication."""
    one = xp.asarray(1.0, dtype=D.dtype, device=device(D))
    f = xp.where(flag, xp.asarray(factor, dtype=D.dtype, device=device(D)), one)
    if factor <= 1.0:
        return D * f * f
    over = flag & (D > xp.finfo(D.dtype).max / factor / factor)
    return xp.where(over, xp.inf, xp.where(over, 0.0, D) * f * f)


def _two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """Knuth's TwoSum: s + e == a + b exactly (no overflow assumed); additions only."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _square_dd(x: Any, split: float) -> tuple[Any, Any]:
    """Dekker: p + e == x * x exactly (Veltkamp split; every product below p is exact)."""
    p = x * x
    t = x * split
    hi = t - (t - x)
    lo = x - hi
    return p, ((hi * hi - p) + 2.0 * hi * lo) + lo * lo


def exact_sqdist_rows(
    a: Any, b: Any, *, xp: Any, finite: bool = False, in_range: bool = False, eager: bool = False
) -> Any:
    """``sum((a - b)**2, axis=1)`` for (P, d) row pairs, as the exact value of the given floats rounded
    once, in a fixed order: the same bits on every backend. (The sum carries twice the working
    precision: an exact value within about 2**-44 (float32) / 2**-98 (float64) relative of a rounding
    boundary may round to the other neighbour.)

    Each difference is split exactly (TwoSum) into hi + lo, its square exactly into two floats (Dekker),
    and the d terms are added in double-float precision by a fixed pairwise tree; the result is the
    rounded hi + lo. Pairs with huge or tiny differences are scaled by powers of two first, so a finite
    distance never overflows or flushes in between: an unrepresentable one is inf. Non-finite
    coordinates follow the direct differences: NaN where a coordinate is NaN or inf - inf, else inf.

    Shortcuts that change no bit: ``finite`` (the caller knows every value is finite), ``in_range``
    (every magnitude is at most a quarter of the overflow threshold), ``eager`` (one host read skips the
    tiny-difference scaling when no pair needs it).
    """
    P, d = a.shape
    dtype = a.dtype
    if d == 0 or P == 0:
        return xp.zeros((P,), dtype=dtype, device=device(a))
    if not finite:
        finite_a, finite_b = xp.isfinite(a), xp.isfinite(b)
        nan = xp.any(xp.isnan(a) | xp.isnan(b) | (~finite_a & (a == b)), axis=1)
        inf = xp.any(~(finite_a & finite_b), axis=1)
        a = xp.where(finite_a, a, 0.0)
        b = xp.where(finite_b, b, 0.0)
    too_big, down, too_small, up = _power_of_two_scales(dtype, d, xp=xp)
    dev = device(a)

    def pick(flag: Any, value: float) -> Any:  # value where flag, else 1 (as arrays: strict needs one)
        one = xp.asarray(1.0, dtype=dtype, device=dev)
        return xp.where(flag, xp.asarray(value, dtype=dtype, device=dev), one)

    if in_range:
        s, e = _two_sum(a, -b)
    else:
        big = xp.max(xp.abs(a * 0.5 - b * 0.5), axis=1) > too_big * 0.5  # halves: no overflow
        pre = pick(big, down)[:, None]
        s, e = _two_sum(a * pre, b * -pre)
    small = xp.max(xp.abs(s), axis=1) < too_small
    scale_up = not eager or bool(xp.any(small))
    if scale_up:
        post = pick(small, up)[:, None]
        s, e = s * post, e * post
    split = 2.0 ** ((round(-math.log2(xp.finfo(dtype).eps)) + 2) // 2) + 1.0
    hi, lo = _square_dd(s, split)
    lo = lo + (2.0 * s * e + e * e)
    while hi.shape[1] > 1:  # pairwise, always the same pairs: no backend may reassociate this sum
        half = hi.shape[1] // 2
        h1, h2, l1, l2 = hi[:, :half], hi[:, half : 2 * half], lo[:, :half], lo[:, half : 2 * half]
        t, err = _two_sum(h1, h2)
        err = err + (l1 + l2)
        h = t + err
        low = err - (h - t)
        if hi.shape[1] % 2:
            h = xp.concat([h, hi[:, -1:]], axis=1)
            low = xp.concat([low, lo[:, -1:]], axis=1)
        hi, lo = h, low
    total = (hi + lo)[:, 0]
    if not in_range:
        total = unscale_squares(total, big, 1.0 / down, xp=xp)
    if scale_up:
        total = unscale_squares(total, small, 1.0 / up, xp=xp)
    if finite:
        return total
    return xp.where(nan, xp.nan, xp.where(inf, xp.inf, total))


def direct_sqdist_pairs(
    A: Any, B: Any, rows: Any, cols: Any, *, xp: Any, chunk_elements: int | None = None,
    kernel: Callable[..., Any] | None = None, **shortcuts: bool,
) -> Any:  # fmt: skip
    """Exact squared distances of the pairs (A[rows], B[cols]) (:func:`exact_sqdist_rows`, which takes
    the ``shortcuts``), in chunks of ``chunk_elements`` (default DIRECT_CHUNK_ELEMENTS) that bound the
    temporary memory; each pair is computed alone, so the chunking changes no bit. ``kernel`` replaces
    :func:`exact_sqdist_rows` (a backend's version with the same bits; it may overwrite the taken rows)."""
    n_pairs = rows.shape[0]
    step = max(1, (chunk_elements or _config.DIRECT_CHUNK_ELEMENTS) // max(A.shape[1], 1))
    parts = []
    for start in range(0, n_pairs, step):
        stop = min(start + step, n_pairs)
        a = xp.take(A, rows[start:stop], axis=0)
        b = xp.take(B, cols[start:stop], axis=0)
        parts.append((kernel or exact_sqdist_rows)(a, b, xp=xp, **shortcuts))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return xp.zeros((0,), dtype=A.dtype, device=device(A))
    return xp.concat(parts)


def refine_small_entries(D: Any, A: Any, B: Any, ra: Any, rb: Any, *, tau: float, xp: Any) -> Any:
    """Recompute the flagged entries of D by direct differences (eager backends: data-dependent shapes).

    An entry is flagged when ``D <= tau * (ra + rb)``: ``<=`` so that entries whose norms overflowed
    (inf <= inf) or underflowed (0 <= 0) are recomputed too. Only rows whose minimum falls under a
    per-row bound are examined entry by entry, so well-separated data pays one read-only pass (the row
    minimum) and nothing else. D is our own temporary and may be updated in place.
    """
    row_min = xp.min(D, axis=1)
    suspicious = row_min <= tau * ra + tau * xp.max(rb)  # tau <= 0.5 first: no overflow
    (rows,) = xp.nonzero(suspicious)
    if rows.shape[0] == 0:
        return D
    D_rows = xp.take(D, rows, axis=0)
    flagged = D_rows <= tau * xp.take(ra, rows)[:, None] + tau * rb[None, :]
    pair_rows, pair_cols = xp.nonzero(flagged)
    exact = direct_sqdist_pairs(A, B, xp.take(rows, pair_rows), pair_cols, xp=xp, finite=True, eager=True)
    D_rows = at(xp.maximum(D_rows, 0.0), flagged).set(exact)
    return at(D, suspicious).set(D_rows)


def nonfinite_entries(A: Any, B: Any, *, xp: Any) -> Any:
    """(n, m): what direct differences give where row i of A or row j of B has a NaN or inf: NaN if
    either has a NaN or both have an inf of the same sign in one coordinate (inf - inf), else inf.
    Entries between two finite rows are meaningless here. Two indicator products, no inf arithmetic."""

    def indicator(X: Any, value: float) -> Any:
        return xp.astype(X == value, X.dtype)

    same_inf = indicator(A, xp.inf) @ xp.matrix_transpose(indicator(B, xp.inf))
    same_inf = same_inf + indicator(A, -xp.inf) @ xp.matrix_transpose(indicator(B, -xp.inf))
    nan = xp.any(xp.isnan(A), axis=1)[:, None] | xp.any(xp.isnan(B), axis=1)[None, :] | (same_inf > 0)
    inf = xp.full(nan.shape, xp.inf, dtype=A.dtype, device=device(A))
    return xp.where(nan, xp.nan, inf)


def set_nonfinite_rows(D: Any, A: Any, B: Any, bad_a: Any, bad_b: Any, *, xp: Any) -> Any:
    """D with the entries of non-finite rows (bad_a) and columns (bad_b) set by :func:`nonfinite_entries`,
    computed for those rows and columns only (eager: data-dependent shapes)."""

    def rows_of(D: Any, A: Any, B: Any, bad: Any) -> Any:
        (rows,) = xp.nonzero(bad)
        if rows.shape[0] == 0:
            return D
        values = nonfinite_entries(xp.take(A, rows, axis=0), B, xp=xp)  # (r, m)
        place = xp.cumulative_sum(xp.astype(bad, rows.dtype)) - 1  # each bad row's place in values
        return xp.where(bad[:, None], xp.take(values, xp.where(bad, place, 0), axis=0), D)

    D = rows_of(D, A, B, bad_a)
    return xp.matrix_transpose(rows_of(xp.matrix_transpose(D), B, A, bad_b))


def set_nonfinite_static(D: Any, A: Any, B: Any, bad_a: Any, bad_b: Any, *, xp: Any) -> Any:
    """:func:`set_nonfinite_rows` with static shapes (every entry computed, then selected)."""
    return xp.where(bad_a[:, None] | bad_b[None, :], nonfinite_entries(A, B, xp=xp), D)


def overflow_scale(A: Any, B: Any | None, *, xp: Any, finite: bool = False) -> Any:
    """0-D power of two: 1, or a factor that brings data so large that its centred squared norms could
    overflow into range (finite entries only; the expansion is computed on the scaled data)."""
    too_big, down, _, _ = _power_of_two_scales(A.dtype, A.shape[1], xp=xp)
    one = xp.asarray(1.0, dtype=A.dtype, device=device(A))
    parts = [p for p in ([A] if B is None else [A, B]) if 0 not in p.shape]  # no entries: nothing to scale
    if not parts:
        return one
    if finite:
        largest = xp.max(xp.stack([xp.max(xp.abs(p)) for p in parts]))
    else:
        largest = xp.max(xp.stack([xp.max(xp.where(xp.isfinite(p), xp.abs(p), 0.0)) for p in parts]))
    return xp.where(largest > too_big * 0.25, xp.asarray(down, dtype=A.dtype, device=device(A)), one)


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
    """Exactly symmetric average of D and its transpose (floating addition commutes); halves first, so
    entries near the largest float do not overflow."""
    return D * 0.5 + xp.matrix_transpose(D) * 0.5


def pairwise_sqdist(
    A: Any,
    B: Any | None,
    *,
    xp: Any,
    refine: Any = refine_small_entries,
    operands: Any = augmented_operands,
    set_nonfinite: Any = set_nonfinite_rows,
    eager: bool = True,
    mean: Any = None,
    scale: Any = None,
    unscale: Any = None,
) -> Any:
    """Squared distances of floating A (n, d) and B (m, d); B None means A against itself.

    Rows holding a NaN or inf are left out of the expansion (replaced by the centre) and their entries
    set by ``set_nonfinite`` (:func:`nonfinite_entries`); data large enough to overflow the expansion is
    expanded at a power-of-two scale and scaled back (inf only where the distance itself overflows).
    ``refine(D, A, B, ra, rb, tau=..., xp=...)`` recomputes the entries the expansion cannot be trusted
    with; the default needs data-dependent shapes (eager backends; ``eager=False`` avoids host reads
    elsewhere). ``operands`` has the signature of :func:`augmented_operands`; a backend may swap in an
    equivalent that is faster for it. ``mean``/``scale`` come from a larger problem (Dask blocks).
    ``unscale(D, big, factor, xp=...)``: :func:`unscale_squares` for the (n, m) result (a backend may
    skip the pass when ``big`` is False without a host read).
    """
    symmetric = B is None
    B_ = A if symmetric else B
    good_a = finite_rows(A, xp=xp)
    good_b = good_a if symmetric else finite_rows(B_, xp=xp)
    # eager: one host read lets all-finite data (the usual case) skip the masking passes below
    clean = eager and bool(xp.all(good_a) & xp.all(good_b))
    if scale is None:
        scale = overflow_scale(A, B, xp=xp, finite=clean)
    scaled = (not eager) or bool(xp.any(scale != 1.0))  # eager: one host read skips two (n, m) passes
    A_s, B_s = (A * scale, B_ * scale) if scaled else (A, B_)
    if mean is None:
        mean = column_mean(A_s, None if symmetric else B_s, xp=xp, eager=eager, finite=clean)
    else:
        mean = mean * scale
    if clean:
        A_f, B_f = A_s, B_s
    else:  # non-finite rows become the centre: finite arithmetic in the expansion, no warnings
        A_f = xp.where(good_a[:, None], A_s, mean)
        B_f = A_f if symmetric else xp.where(good_b[:, None], B_s, mean)
    A_aug, B_aug, ra, rb = operands(A_f, B_f, mean, xp=xp)
    tau = refine_threshold(A_aug.dtype, A.shape[1], xp=xp)
    if not symmetric:
        D = xp.matmul(A_aug, xp.matrix_transpose(B_aug))
    elif is_writeable_array(A_aug):
        D = symmetric_expansion_blocked(A_aug, B_aug, xp=xp)
    else:
        D = symmetrize(xp.matmul(A_aug, xp.matrix_transpose(B_aug)), xp=xp)
    if scaled:  # back to the caller's units: inf where the distance overflows, norms likewise
        big, undo = scale != 1.0, 1.0 / _power_of_two_scales(A.dtype, A.shape[1], xp=xp)[1]
        D = (unscale or unscale_squares)(D, big, undo, xp=xp)
        ra = unscale_squares(ra, big, undo, xp=xp)
        rb = ra if symmetric else unscale_squares(rb, big, undo, xp=xp)
    # The refinement recomputes from the caller's values (finite rows only: the others are reset below).
    if clean:
        A_r, B_r = A, B_
    else:
        A_r = xp.where(good_a[:, None], A, 0.0)
        B_r = A_r if symmetric else xp.where(good_b[:, None], B_, 0.0)
    if symmetric:
        # The diagonal is exactly zero by definition: keep it out of the refinement (it would make every
        # row look suspicious) and write it afterwards.
        D = refine(set_diagonal(D, xp.inf, xp=xp), A_r, A_r, ra, ra, tau=tau, xp=xp)
    else:
        D = refine(D, A_r, B_r, ra, rb, tau=tau, xp=xp)
    if not clean:
        D = set_nonfinite(D, A, B_, ~good_a, ~good_b, xp=xp)
    return set_diagonal(D, 0.0, xp=xp) if symmetric else D


def set_diagonal(D: Any, value: float, *, xp: Any) -> Any:
    """D (n, n) with its diagonal set to ``value``: a strided write of n entries, not an (n, n) pass."""
    n = D.shape[0]
    flat = at(xp.reshape(D, (n * n,)), slice(None, None, n + 1)).set(value)
    return xp.reshape(flat, (n, n))


def safe_sqrt(D: Any, *, xp: Any) -> Any:
    """sqrt whose gradient is 0, not NaN or inf, where D == 0 (autograd-friendly double where); NaN stays
    NaN (a NaN coordinate or inf - inf must not read as a duplicate row)."""
    positive = D > 0
    return xp.where(positive, xp.sqrt(xp.where(positive, D, 1.0)), xp.where(D == 0, 0.0, D))
