"""JAX: static-shape refinement and kNN (tracing forbids data-dependent shapes), one compiled function
per option set when eager (JAX compiles every operation anew for every new shape), lax.top_k, lax.scan
over the linear head's chunks, and full-precision matrix products."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import _config
from .._agnostic import distances as _generic
from .._agnostic import linear as _linear
from .._agnostic import neighbors as _neighbors
from .._agnostic import softmax as _softmax
from .._lib._compat import device
from ._default import Backend, scatter_subtract, scattering_kernel


def is_jax_tracer(x: Any) -> bool:
    """True inside jax.jit / grad / vmap, where values are abstract (array_api_compat calls every JAX
    array lazy, eager ones too)."""
    import jax

    return isinstance(x, jax.core.Tracer)


# --- JAX ----------------------------------------------------------------------------------------------
# Why: the generic refinement needs data-dependent shapes (nonzero), which tracing forbids, and JAX's
# eager mode compiles every operation anew for every new shape (seconds per call). Here the flagged
# entries are found with a static-size nonzero: the first `budget` of them (row-major) are recomputed.
# Under a user's jit/grad/vmap the budget is n + m and the rest keep the centred-expansion value (the
# documented, weaker jit bound). Eagerly, one compiled function runs with budget n + m and, if more
# entries were flagged, once more with a budget that covers them all: the full eager guarantee.
def jax_refine_static(
    D: Any, A: Any, B: Any, ra: Any, rb: Any, *, tau: float, xp: Any, budget: int, counts: list
) -> Any:
    import jax
    import jax.numpy as jnp

    n, m = D.shape
    symmetric = A is B  # the generic caller passes A twice for B=None
    row = jnp.arange(n)[:, None]
    col = jnp.arange(m)[None, :]
    budget = min(budget, n * m)
    count_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)  # int32 unless x64 is enabled

    def flags(D: Any) -> Any:
        flagged = D <= tau * ra[:, None] + tau * rb[None, :]  # <=: overflowed (inf) and underflowed (0) norms
        # B=None: refine the upper triangle only, then mirror it, so the result stays symmetric
        return flagged & (row < col) if symmetric else flagged

    def refine(D: Any) -> tuple[Any, Any]:
        flat_flagged = jnp.reshape(flags(D), (-1,))
        (idx,) = jnp.nonzero(flat_flagged, size=budget, fill_value=0)
        exact = _generic.direct_sqdist_pairs(A, B, idx // m, idx % m, xp=xp)
        flat = jnp.reshape(D, (-1,))
        flat = flat.at[idx].set(jnp.where(flat_flagged[idx], exact, flat[idx]))
        D = jnp.reshape(flat, (n, m))
        return (jnp.where(row < col, D, D.T) if symmetric else D), jnp.sum(flat_flagged, dtype=count_dtype)

    def keep(D: Any) -> tuple[Any, Any]:
        return D, jnp.zeros((), dtype=count_dtype)

    # Well-separated data flags nothing: one test skips the static nonzero, whose prefix sum over all
    # n * m entries costs XLA's CPU backend about ten times the matrix product itself. The test reads D
    # once, as a row minimum against the row's largest threshold (a superset of the flagged rows): an
    # elementwise flag test made XLA write and re-read an (n, m) mask. Entries that are not flagged
    # exceed a threshold >= 0, so only the refine branch needs the clamp at 0.
    suspicious = jnp.min(D, axis=1) <= tau * ra + tau * jnp.max(rb)
    D, count = jax.lax.cond(jnp.any(suspicious), lambda D: refine(jnp.maximum(D, 0.0)), keep, D)
    counts.append(count)
    return D


def jax_unscale_squares(D: Any, big: Any, factor: float, *, xp: Any) -> Any:
    """:func:`unscale_squares` under lax.cond: data that needed no scaling (the usual case) skips the
    (n, m) pass."""
    import jax

    def apply(D: Any) -> Any:
        return _generic.unscale_squares(D, big, factor, xp=xp)

    return jax.lax.cond(xp.any(big), apply, lambda D: D, D)


def _jax_sqdist_with_count(A: Any, B: Any | None, *, xp: Any, budget: int) -> tuple[Any, Any]:
    counts: list = []

    def refine(*args: Any, **kwargs: Any) -> Any:
        return jax_refine_static(*args, **kwargs, budget=budget, counts=counts)

    def set_nonfinite(D: Any, A: Any, B: Any, bad_a: Any, bad_b: Any, *, xp: Any) -> Any:
        # Finite data (the usual case) skips the two indicator products.
        def fix(D: Any) -> Any:
            return _generic.set_nonfinite_static(D, A, B, bad_a, bad_b, xp=xp)

        return jax.lax.cond(jnp.any(bad_a) | jnp.any(bad_b), fix, lambda D: D, D)

    import jax
    import jax.numpy as jnp

    D = _generic.pairwise_sqdist(
        A, B, xp=xp, refine=refine, set_nonfinite=set_nonfinite, eager=False, unscale=jax_unscale_squares
    )
    return D, counts[0]


def jax_pairwise_sqdist(A: Any, B: Any | None, *, xp: Any) -> Any:
    n = A.shape[0]
    m = n if B is None else B.shape[0]
    if is_jax_tracer(A) or is_jax_tracer(B):
        return _jax_sqdist_with_count(A, B, xp=xp, budget=n + m)[0]
    symmetric = B is None
    B_ = A if symmetric else B
    D, count = jax_compiled(_jax_sqdist_run, symmetric=symmetric, budget=n + m, xp=xp)(A, B_)
    if is_jax_tracer(count):  # concrete inputs inside someone's trace (closed-over constants)
        return D
    count = int(count)  # eager-only path: the size of the second pass depends on the data
    if count > n + m:
        budget = 1 << (count - 1).bit_length()
        D, _ = jax_compiled(_jax_sqdist_run, symmetric=symmetric, budget=budget, xp=xp)(A, B_)
    return D


def _jax_sqdist_run(A: Any, B: Any, *, symmetric: bool, budget: int, xp: Any) -> tuple[Any, Any]:
    return _jax_sqdist_with_count(A, None if symmetric else B, xp=xp, budget=budget)


# Eager JAX compiles one executable per function, option set and input signature (shapes, dtypes), and
# jax.jit never lets one go: 100 distinct pairwise_sqdist shapes added ~800 MiB, 50 softmax shapes ~450
# MiB (CPU, float32). Each signature gets its own jax.jit wrapper here, kept in a least-recently-used
# table of _config.JAX_COMPILED_CACHE_SIZE entries: dropping a wrapper drops its executable, so a long-running
# process holds at most that many (about 4-10 MiB each on the CPU) and a shape seen again after eviction
# compiles again.
_JAX_COMPILED: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_JAX_COMPILED_LOCK = threading.Lock()


def _jax_signature(x: Any) -> Any:
    if x is None or not hasattr(x, "shape"):  # a Python number (reg) is traced: its type is enough
        return None if x is None else type(x).__name__
    return (tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)))


def jax_compiled(core: Callable[..., Any], **static: Any) -> Callable[..., Any]:
    """``core`` with its keyword options fixed, run as one compiled function (JAX's eager mode compiles
    every operation for every new shape: one compiled function is 10-100x faster than op by op),
    compiled once per option set and argument signature and kept in a bounded LRU table."""
    options = tuple(sorted(static.items(), key=lambda kv: kv[0]))

    def call(*arrays: Any) -> Any:
        key = (core, options, tuple(_jax_signature(a) for a in arrays))
        with _JAX_COMPILED_LOCK:
            jitted = _JAX_COMPILED.get(key)
            if jitted is None:
                import functools

                import jax

                jitted = _JAX_COMPILED[key] = jax.jit(functools.partial(core, **static))
                while len(_JAX_COMPILED) > _config.JAX_COMPILED_CACHE_SIZE:
                    _JAX_COMPILED.popitem(last=False)
            else:
                _JAX_COMPILED.move_to_end(key)
        return jitted(*arrays)

    return call


# --- JAX kNN ---------------------------------------------------------------------------------------------
# Why: traced, the generic loop over query tiles unrolls into one copy of the tile program per tile
# (hundreds at 50k queries): minutes of compilation, and a 50k x 50k float32 search under jax.jit ran
# over 10 minutes on 2 CPU cores. lax.map runs one compiled tile body over every query tile instead.
def jax_knn(Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int, sqdist: Any,
            dtype: Any, xp: Any) -> tuple[Any, Any]:  # fmt: skip
    """Same result as the generic static knn; compiled once per shape and option set when eager."""
    options = {"k": k, "exclude_self": exclude_self, "tile_rows": tile_rows, "tile_cols": tile_cols,
               "sqdist": sqdist, "dtype": dtype, "xp": xp}  # fmt: skip
    if is_jax_tracer(Q) or is_jax_tracer(X):
        return _jax_knn_mapped(Q, X, **options)
    return jax_compiled(_jax_knn_mapped, **options)(Q, X)


def _jax_knn_mapped(Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
                    sqdist: Any, dtype: Any, xp: Any) -> tuple[Any, Any]:  # fmt: skip
    import functools

    import jax
    import jax.numpy as jnp

    nq, d = Q.shape
    tiles = -(-nq // tile_rows)
    padded = jnp.concatenate([Q, jnp.zeros((tiles * tile_rows - nq, d), dtype=Q.dtype)])  # rows ignored
    starts = jnp.arange(tiles) * tile_rows
    blocks = (jnp.reshape(padded, (tiles, tile_rows, d)), starts)
    if not _config.KNN_JAX_FLOAT32_SCREEN or d == 0:
        finite = jnp.all(jnp.isfinite(Q)) & jnp.all(jnp.isfinite(X))

        def one_tile(args: tuple[Any, Any]) -> tuple[Any, Any]:
            Qt, q0 = args
            return jax_query_tile_neighbours(
                Qt, X, q0, finite, k=k, exclude_self=exclude_self, tile_cols=tile_cols, xp=xp,
                sqdist=functools.partial(sqdist, dtype=dtype, xp=xp),
            )  # fmt: skip

        dist, index = jax.lax.map(one_tile, blocks)
    else:
        screen = _float32_screen_operands(Q, X, xp=xp)

        def direct_tile(args: tuple[Any, Any]) -> tuple[Any, Any]:
            return _direct_query_tile(*args, X, screen, nq=nq, k=k, exclude_self=exclude_self, xp=xp)

        def screened_tile(args: tuple[Any, Any]) -> tuple[Any, Any]:
            found, certified = _screened_query_tile(*args, X, screen, nq=nq, k=k, exclude_self=exclude_self,
                                                    tile_cols=tile_cols, xp=xp)  # fmt: skip
            return jax.lax.cond(certified, lambda _: found, lambda _: direct_tile(args), None)

        dist, index = jax.lax.cond(screen.usable, lambda b: jax.lax.map(screened_tile, b),
                                   lambda b: jax.lax.map(direct_tile, b), blocks)  # fmt: skip
    kept = dist.shape[-1]
    return jnp.reshape(dist, (-1, kept))[:nq], jnp.reshape(index, (-1, kept))[:nq]


# Why: XLA's CPU sort and top_k are fast only for float32 keys. At 512 x 4096 float64 distances, top_k of
# the 20 smallest took 1370 ms against 31 ms for the tile's product, and a stable argsort of 512 x 20
# took 16 ms (the generic tile loop sorts every tile's exact list twice). Here each tile's candidates come
# from a float32 top_k with an exactness check (_smallest_columns), the running lists are merged by a rank
# count instead of a sort, and exact distances are computed once, for each query's 2k best distance
# values over all of X (the generic loop recomputes 2k per reference tile; the two agree unless more
# than 2k references lie at the same distance from a query, the documented limit of the static path).
# 5000 x 5000, d = 64, k = 10, float64, 2 shared CPU cores: 39-54x the distance product before, 3.0-3.6x
# after (eager and jit); float32 4.4x -> 2.8-3.7x.
def jax_query_tile_neighbours(
    Qt: Any, X: Any, q0: Any, finite: Any, *, k: int, exclude_self: bool, tile_cols: int, xp: Any,
    sqdist: Callable[[Any, Any], Any],
) -> tuple[Any, Any]:  # fmt: skip
    """:func:`softdist._agnostic.neighbors.query_tile_neighbours` for JAX: the k best references of X
    for the queries Qt (global rows q0..), sorted by (exact distance, index), NaN last."""
    import jax
    import jax.numpy as jnp

    m, tq = X.shape[0], Qt.shape[0]
    keep = min(2 * k, m)
    index_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
    best_d = best_i = None
    for j0 in range(0, m, tile_cols):
        Xt = X[j0 : min(j0 + tile_cols, m), ...]
        D = sqdist(Qt, Xt)
        own = _neighbors.own_entries(tq, Xt.shape[0], q0, j0, xp=xp, dev=device(D)) if exclude_self else None
        D = _neighbors.rank_key(D if own is None else jnp.where(own, jnp.nan, D), xp=jnp)  # own row last
        columns = _smallest_columns(D, min(keep, Xt.shape[0]))
        dist = jnp.take_along_axis(D, columns, axis=1)
        index = columns.astype(index_dtype) + j0
        if best_d is not None:
            dist, index = jnp.concatenate([best_d, dist], axis=1), jnp.concatenate([best_i, index], axis=1)
        best_d, best_i = _first_by_rank(dist, index, min(keep, dist.shape[1]))
    # Exact distances of the survivors (the shortcut for finite data changes no bit and halves the time).
    rows = jnp.broadcast_to(jnp.arange(tq)[:, None], best_i.shape).reshape(-1)
    cols = best_i.reshape(-1)

    def exact(finite_data: bool) -> Callable[[Any], Any]:
        return lambda _: _generic.exact_sqdist_rows(Qt[rows], X[cols], xp=xp, finite=finite_data)

    exact_d = jax.lax.cond(finite, exact(True), exact(False), None).reshape(best_i.shape)
    if exclude_self:
        # a query's own row survives only where fewer than 2k others do: NaN past every index, so last
        mine = best_i == (jnp.arange(tq)[:, None] + q0).astype(index_dtype)
        exact_d = jnp.where(mine, jnp.nan, exact_d)
        best_i = jnp.where(mine, jnp.asarray(_neighbors.OWN_ROW_INDEX, dtype=index_dtype), best_i)
    return _first_by_rank(exact_d, best_i, min(k, best_i.shape[1]))


# Why: exactness and speed. Each query keeps the k + KNN_JAX_SCREEN_EXTRA references of smallest key, a
# float32 product of the centred, power-of-two-scaled data, gets their exact distances (the double-float
# kernel), and a certificate makes the answer exact: every reference left out has a key at least a
# per-query threshold L, hence an exact distance at least L plus the query's norm less the float32
# rounding bound, and the k-th exact distance kept must lie strictly under that. The bound is per pair
# (the reference's share is folded into its key) and the centre is each column's median over a spread
# sample, so a far reference widens only its own key's bound and does not move the centre. A query tile
# that fails (ties or near-ties wider than the bound among more than the references kept, a far tight
# cluster, a non-finite query, fewer than k finite distances) is ranked by direct differences, whose
# error is relative to the distance itself, with a certificate of its own; where that fails too
# (near-ties within its rounding among more than 2k references), by exact distances to every reference
# (_direct_query_tile, _exact_query_tile). Data whose range the float32 key cannot hold go to the direct
# differences at once. Ranked on the accurate expansion centred at the tile's column mean with no
# certificate, as before, float32 JAX returned other than the nearest neighbours for a far tight
# cluster's rows (a tenth of 300 rows at 500 +- 0.01: 100 of their 150 neighbours) and for most rows when
# one row 1e6 times the others moved the mean. 5000 x 5000, d = 64, k = 10, float32, 2 loaded cores:
# 0.35 s against 1.06 s before (compilation 11.6 s against 9.4 s); all rows equal 2.5 s, a tenth of the
# rows at 500 +- 0.01 3.4 s (2.6 s and 2.7 s before, wrong indices). float64: the float32 product ranks
# about twice as fast as a float64 one (interleaved medians: 3.2-3.8x the float64 products -> 1.5-1.8x,
# eager and jit).
@dataclasses.dataclass(frozen=True)
class _Screen:
    centre: Any  # (d,) the working dtype's centre of the references (column medians of a sample)
    scale: Any  # () power of two: every scaled centred entry lies under 1 / (2 sqrt(d))
    X32: Any  # (m, d) float32 scaled centred references (0 for a non-finite row)
    x_key: Any  # (m,) float32 |x|^2 (1 - beta) (scaled), +inf for a non-finite row: never kept
    beta: Any  # () key error bound per unit of |q|^2 + |x|^2 (scaled), the working dtype
    amax: Any  # () the largest centred entry (finite rows)
    usable: Any  # () bool


def _float32_screen_operands(Q: Any, X: Any, *, xp: Any) -> _Screen:
    import jax.numpy as jnp

    m, d = X.shape
    good_q, good_x = jnp.all(jnp.isfinite(Q), axis=1), jnp.all(jnp.isfinite(X), axis=1)
    n_sample = max(min(_config.KNN_SAMPLE_COLUMNS, m // 16), min(m, 64))  # as the eager search's sample
    sample = jnp.asarray(_neighbors.spread_sample(m, n_sample))
    centre = _neighbors.sample_centre(X, sample, xp=xp)
    Qc = jnp.where(good_q[:, None], Q - centre, 0.0)
    Xc = jnp.where(good_x[:, None], X - centre, 0.0)
    amax = jnp.maximum(jnp.max(jnp.abs(Qc)), jnp.max(jnp.abs(Xc))) if Q.shape[0] else jnp.max(jnp.abs(Xc))
    # A power of two puts every scaled centred entry under 2**-h <= 1 / (2 sqrt(d)): no scaled square,
    # norm or difference's square overflows (a sum of d of them is at most 1). The float32 key needs the
    # scale's exponent far from float32's over/underflow (and float64's for float64 data: a zero spread
    # screens nothing); otherwise every tile is ranked by direct differences.
    lo, hi = (2.0**-450, 2.0**450) if Q.dtype == jnp.float64 else (2.0**-60, 2.0**60)
    usable = (amax > lo) & (amax < hi)
    scale = _power_of_two_under(amax, d)
    Xs = Xc * scale
    # |key - (|x|^2 - 2 q.x)| <= (d + 5) u (|q|^2 + |x|^2) (inputs, products and the float32 sum of d
    # terms, the norm and the subtraction rounded, u = 2**-24); doubled, and one more u per term for the
    # folding and the working dtype's roundings. Flushed subnormals (the scaled norms are <= 1, the
    # largest entry above 2**-60 of 1) cost less than the 2**-60 added to the bound.
    beta = 2.0 * (d + 9) * 2.0**-24
    x_key = jnp.sum(Xs * Xs, axis=1) * (1.0 - beta)
    return _Screen(centre=centre, scale=scale, X32=Xs.astype(jnp.float32),
                   x_key=jnp.where(good_x, x_key, jnp.inf).astype(jnp.float32),
                   beta=jnp.asarray(beta, dtype=Q.dtype), amax=amax, usable=usable)  # fmt: skip


def _screened_query_tile(
    Qt: Any, q0: Any, X: Any, screen: _Screen, *, nq: int, k: int, exclude_self: bool, tile_cols: int,
    xp: Any,
) -> tuple[tuple[Any, Any], Any]:  # fmt: skip
    """((distances, indices), certified): the float32-screened search for the queries Qt."""
    import jax
    import jax.numpy as jnp

    m, tq = X.shape[0], Qt.shape[0]
    keep = min(k + _config.KNN_JAX_SCREEN_EXTRA, m)
    index_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
    Qs = (Qt - screen.centre) * screen.scale  # a non-finite query: NaN norm, never certified
    q_norms = jnp.sum(Qs * Qs, axis=1)
    Q32 = jnp.where(jnp.isfinite(Qs), Qs, 0.0).astype(jnp.float32)
    lowest = jnp.full((tq,), jnp.inf, dtype=jnp.float32)  # a lower bound of every key left out
    best_k = best_i = None
    for j0 in range(0, m, tile_cols):
        j1 = min(j0 + tile_cols, m)
        key = screen.x_key[None, j0:j1] - 2.0 * jnp.matmul(Q32, screen.X32[j0:j1].T)
        own = _neighbors.own_entries(tq, j1 - j0, q0, j0, xp=xp, dev=device(key)) if exclude_self else None
        if own is not None:
            key = jnp.where(own, jnp.inf, key)
        count = min(keep, j1 - j0)
        if count == j1 - j0:
            columns = jnp.broadcast_to(jnp.arange(count)[None, :], (tq, count))
        else:
            last, columns = _float32_smallest(key, count)
            lowest = jnp.minimum(lowest, last)
        inside = jnp.minimum(columns, j1 - j0 - 1)  # columns past the tile are padding: key +inf
        found = jnp.where(columns < j1 - j0, jnp.take_along_axis(key, inside, axis=1), jnp.inf)
        index = columns.astype(index_dtype) + j0
        if best_k is not None:
            found, index = jnp.concatenate([best_k, found], axis=1), jnp.concatenate([best_i, index], axis=1)
        if found.shape[1] > keep:  # the keep smallest keys; the next one bounds those dropped
            neg, at = jax.lax.optimization_barrier(jax.lax.top_k(-found, keep + 1))
            lowest = jnp.minimum(lowest, -neg[:, keep])
            found, index = -neg[:, :keep], jnp.take_along_axis(index, at[:, :keep], axis=1)
        best_k, best_i = found, index
    rows = jnp.broadcast_to(jnp.arange(tq)[:, None], best_i.shape).reshape(-1)
    exact_d = _generic.exact_sqdist_rows(Qt[rows], X[best_i.reshape(-1)], xp=xp)
    exact_d = exact_d.reshape(best_i.shape)
    # keys of +inf: the query's own row (exclude_self), a non-finite reference or padding
    left_out = best_k == jnp.inf
    exact_d = jnp.where(left_out, jnp.nan, exact_d)
    best_i = jnp.where(left_out, jnp.asarray(_neighbors.OWN_ROW_INDEX, dtype=index_dtype), best_i)
    dist, index = _first_by_rank(exact_d, best_i, k)
    bound = lowest.astype(Qt.dtype) + q_norms * (1.0 - screen.beta) - 2.0**-60
    padding = jnp.arange(tq) + q0 >= nq  # the last tile's zero rows: their answer is dropped
    # NaN: False; a k-th distance under the smallest normal may tie, rounded, with one left out
    clear = (dist[:, k - 1] * screen.scale * screen.scale < bound) & (  # scale**2 may flush: not formed
        dist[:, k - 1] >= jnp.finfo(dist.dtype).smallest_normal
    )
    certified = jnp.all(padding | clear)
    return (dist, index), certified


def _power_of_two_under(amax: Any, d: int) -> Any:
    """2**-(e + h) for amax < 2**e and 2**-h <= 1 / (2 sqrt(d)) (amax's shape): entries up to amax, and
    their differences, then have squares whose sum over d columns is at most 1. The exponent is clipped
    to the dtype's range (0 and non-finite amax: h alone)."""
    import jax.numpy as jnp

    h = math.ceil(math.log2(max(d, 1)) / 2) + 1
    top = jnp.finfo(amax.dtype).maxexp - h - 4
    ok = (amax > 0) & jnp.isfinite(amax)
    e = jnp.clip(jnp.floor(jnp.log2(jnp.where(ok, amax, 1.0))) + 1, -top, top)
    return jnp.ldexp(jnp.ones_like(amax), -(e.astype(jnp.int32) + h))


def _direct_query_tile(Qt: Any, q0: Any, X: Any, screen: _Screen, *, nq: int, k: int, exclude_self: bool,
                       xp: Any) -> tuple[Any, Any]:  # fmt: skip
    """The screen's fallback: the k best references of X for the queries Qt, ranked by direct differences.

    Each query keeps the 2k references of smallest sum(((q - x) * s_q)^2) (s_q a power of two from the
    query's largest centred entry, at least 2**-30 of the data's: no square overflows for references
    within that range, nor flushes for differences above a 2**-60 of it), ties to the lower index, over
    chunks of references (:func:`_scan_references`, KNN_JAX_DIRECT_ELEMENTS (query, reference, column)
    entries at a time); the kept get exact distances and are ranked by (distance, index), NaN last. Its
    error is relative to the distance itself, (d + 2) u, not to the norms as the expansion's: a far tight
    cluster is resolved.
    """
    import jax
    import jax.numpy as jnp

    (m, d), tq = X.shape, Qt.shape[0]
    q_max = jnp.max(jnp.where(jnp.isfinite(Qt), jnp.abs(Qt - screen.centre), 0.0), axis=1)
    scale = _power_of_two_under(jnp.maximum(q_max, screen.amax * 2.0**-30), d)[:, None, None]

    def scaled_sum(Xc: Any) -> Any:
        diff = (Qt[:, None, :] - Xc[None, :, :]) * scale
        return jnp.sum(diff * diff, axis=2)

    elements = _config.KNN_JAX_DIRECT_ELEMENTS
    best_key, best_i = _scan_references(Qt, q0, X, scaled_sum, keep=min(2 * k, m), elements=elements,
                                        exclude_self=exclude_self)  # fmt: skip
    left_out = best_i == _neighbors.OWN_ROW_INDEX
    rows = jnp.broadcast_to(jnp.arange(tq)[:, None], best_i.shape).reshape(-1)
    cols = jnp.where(left_out, 0, best_i).reshape(-1)
    exact_d = _generic.exact_sqdist_rows(Qt[rows], X[cols], xp=xp).reshape(best_i.shape)
    dist, index = _first_by_rank(jnp.where(left_out, jnp.nan, exact_d), best_i, k)
    # Every reference left out has a key >= t, the largest kept (each chunk's and each merge's selection
    # is exact), so an exact scaled distance >= (t - abs) / (1 + delta): the key's relative error is at
    # most (d + 2) u, doubled, plus flushed squares. A kept key of 0 is an exact duplicate of the query
    # (q - x = 0 exactly), and duplicates left out have higher indices: they lose the tie at 0.
    finfo = jnp.finfo(X.dtype)
    delta, flushed = (d + 3) * float(finfo.eps), 4.0 * d * float(finfo.smallest_normal)
    t = jnp.max(_neighbors.rank_key(best_key, xp=jnp), axis=1)  # inf where a NaN or a left-out is kept
    at_k = dist[:, k - 1] * scale[:, 0, 0] * scale[:, 0, 0]  # not scale * scale: XLA flushes subnormals
    # A query with a NaN or inf has only NaN and inf distances, which the keys give exactly (NaN where a
    # difference is NaN, else inf): ranked by (key, index), its answer is the exact one.
    skip = (jnp.arange(tq) + q0 >= nq) | ~jnp.all(jnp.isfinite(Qt), axis=1)  # padding, non-finite queries
    # (a k-th distance under the smallest normal may tie, rounded, with one left out: not certified)
    clear = (at_k < (t - flushed) / (1.0 + delta)) & (dist[:, k - 1] >= finfo.smallest_normal)
    certified = skip | clear | ((t == 0.0) & (dist[:, k - 1] == 0.0))
    return jax.lax.cond(jnp.all(certified), lambda _: (dist, index),
                        lambda _: _exact_query_tile(Qt, q0, X, k=k, exclude_self=exclude_self, xp=xp),
                        None)  # fmt: skip


def _exact_query_tile(Qt: Any, q0: Any, X: Any, *, k: int, exclude_self: bool, xp: Any) -> tuple[Any, Any]:
    """The last resort: exact distances to every reference (the double-float kernel, about 20 passes per
    entry: slow), over chunks of references (:func:`_scan_references`), ranked by (distance, index), NaN
    last. Taken where more than 2k references lie within the direct differences' rounding of a query's
    k-th distance."""
    import jax.numpy as jnp

    tq = Qt.shape[0]

    def exact(Xc: Any) -> Any:
        width = Xc.shape[0]
        rows, cols = jnp.repeat(jnp.arange(tq), width), jnp.tile(jnp.arange(width), tq)
        return _generic.exact_sqdist_rows(Qt[rows], Xc[cols], xp=xp).reshape(tq, width)

    return _scan_references(Qt, q0, X, exact, keep=k, elements=_config.KNN_JAX_EXACT_ELEMENTS,
                            exclude_self=exclude_self)  # fmt: skip


def _scan_references(Qt: Any, q0: Any, X: Any, value: Callable[[Any], Any], *, keep: int, elements: int,
                     exclude_self: bool) -> tuple[Any, Any]:  # fmt: skip
    """Each query's ``keep`` references of X (fewer where X has fewer rows) of smallest ``value(chunk)``
    (a (queries, chunk rows) array) and their indices, by (value, index), NaN last: over chunks of
    ``elements`` (query, reference, column) entries under lax.scan, each chunk's best merged into the
    running list by :func:`_first_by_rank`. Padding rows and, with exclude_self, the query's own row
    enter as NaN with index OWN_ROW_INDEX, after every real reference."""
    import jax
    import jax.numpy as jnp

    (m, d), tq = X.shape, Qt.shape[0]
    index_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
    width = min(m, max(keep, elements // max(tq * d, 1)))
    chunks = -(-m // width)
    Xp = jnp.concatenate([X, jnp.zeros((chunks * width - m, d), dtype=X.dtype)])
    count = min(keep + exclude_self, width)  # one more: the query's own row may take a place among ties
    own_row = jnp.asarray(_neighbors.OWN_ROW_INDEX, dtype=index_dtype)

    def body(carry: tuple[Any, Any], j: Any) -> tuple[tuple[Any, Any], None]:
        Xc = jax.lax.dynamic_slice_in_dim(Xp, j * width, width)
        index = jnp.broadcast_to((j * width + jnp.arange(width)).astype(index_dtype)[None, :], (tq, width))
        skip = index >= m  # padding
        if exclude_self:
            skip = skip | (index == (jnp.arange(tq)[:, None] + q0).astype(index_dtype))
        found = jnp.where(skip, jnp.nan, value(Xc))
        index = jnp.where(skip, own_row, index)
        picked = _smallest_columns(_neighbors.rank_key(found, xp=jnp), count)
        found = jnp.concatenate([carry[0], jnp.take_along_axis(found, picked, axis=1)], axis=1)
        index = jnp.concatenate([carry[1], jnp.take_along_axis(index, picked, axis=1)], axis=1)
        return _first_by_rank(found, index, keep), None

    start = (jnp.full((tq, keep), jnp.nan, dtype=X.dtype), jnp.full((tq, keep), own_row, dtype=index_dtype))
    return jax.lax.scan(body, start, jnp.arange(chunks))[0]


def _first_by_rank(dist: Any, index: Any, count: int) -> tuple[Any, Any]:
    """The ``count`` first entries of each row by (distance, index, position), NaN last, in that order:
    each entry's rank is counted by comparing it with every other entry of its row (a few dozen, so
    w * w comparisons are cheaper than XLA's CPU sort of float64)."""
    import jax.numpy as jnp

    w = dist.shape[1]
    nan = jnp.isnan(dist)
    a_d, b_d = dist[:, :, None], dist[:, None, :]  # entry j (axis 1) before entry i (axis 2)?
    a_n, b_n = nan[:, :, None], nan[:, None, :]
    a_i, b_i = index[:, :, None], index[:, None, :]
    position = jnp.arange(w)
    same_key = (a_d == b_d) | (a_n & b_n)
    earlier = (a_i < b_i) | ((a_i == b_i) & (position[:, None] < position[None, :]))
    before = (~a_n & b_n) | (~a_n & ~b_n & (a_d < b_d)) | (same_key & earlier)
    rank = jnp.sum(before, axis=1)  # (rows, w): a permutation of 0..w-1 in every row
    slot = jnp.argmax(rank[:, :, None] == jnp.arange(count)[None, None, :], axis=1)  # (rows, count)
    return jnp.take_along_axis(dist, slot, axis=1), jnp.take_along_axis(index, slot, axis=1)


def _smallest_columns(D: Any, count: int) -> Any:
    """Columns of the ``count`` smallest entries of each row of D (no NaN), ties to the lower column, in
    no particular order: what ``lax.top_k(-D, count)`` gives, without a float64 top_k.

    float64: a float32 top_k of ``count + KNN_JAX_EXTRA_CANDIDATES`` candidates, then the ``count``
    smallest of those by their float64 values. The candidates hold the true ``count`` smallest when at
    least ``count`` of them lie strictly under a lower bound of every other entry: an entry left out has
    a float32 value at least the largest kept one, t, so its float64 value is at least t less one float32
    ulp of t (rounding to nearest is monotone) less the smallest normal float32 (flushed subnormals).
    Rows that miss (ties or near-ties wider than the margin, infinities) make the whole tile take the
    float64 top_k instead: a lax.cond, no host read.
    """
    import jax
    import jax.numpy as jnp

    n, m = D.shape
    if count >= m:
        return jnp.broadcast_to(jnp.arange(m)[None, :], (n, m))
    if D.dtype != jnp.float64:  # float32 (and smaller): XLA's top_k is fast
        return jax.lax.top_k(-D, count)[1]
    wide = min(m, count + _config.KNN_JAX_EXTRA_CANDIDATES)
    last, columns = _float32_smallest(D.astype(jnp.float32), wide)
    candidates = jnp.where(columns < m, jnp.take_along_axis(D, jnp.minimum(columns, m - 1), axis=1), jnp.inf)
    if wide == m:
        certified = jnp.asarray(True)
    else:
        f32 = jnp.finfo(jnp.float32)
        t = last.astype(jnp.float64)
        below = t - jnp.abs(t) * float(f32.eps) - float(f32.smallest_normal)  # eps = 2 * half-ulp: room
        below = jnp.where(t == jnp.inf, float(f32.max), below)  # entries left out are then > FLT_MAX
        certified = jnp.all(jnp.sum(candidates < below[:, None], axis=1) >= count)

    def from_candidates(_: Any) -> Any:
        return _first_by_rank(candidates, columns, count)[1]

    def full(_: Any) -> Any:
        return jax.lax.top_k(-D, count)[1]

    return jax.lax.cond(certified, from_candidates, full, None)


def _float32_smallest(key: Any, wide: int) -> tuple[Any, Any]:
    """(t, columns): ``wide`` columns of each row of the float32 ``key`` such that every other column's
    key is >= t, the largest key among them. Columns >= key.shape[1] (padding) carry +inf.

    Wide rows are cut into blocks of KNN_JAX_SELECT_BLOCK: the ``wide`` smallest keys lie in the ``wide``
    blocks of smallest minimum (each of those holds a key <= every key of a block left out), so one
    top_k over the block minima and one over the chosen blocks replace a top_k over the whole row
    (512 x 4096: about twice as fast).
    """
    import jax
    import jax.numpy as jnp

    def top(x: Any, count: int) -> tuple[Any, Any]:
        # The barrier keeps XLA's fast CPU top_k: slicing its outputs made XLA rewrite it into a full
        # sort (1000 ms instead of 30 at 512 x 4096).
        neg, where = jax.lax.optimization_barrier(jax.lax.top_k(-x, count))
        return -neg[:, -1], where

    n, m = key.shape
    b = _config.KNN_JAX_SELECT_BLOCK
    blocks = -(-m // b)
    if b <= 1 or blocks < 4 * wide:
        return top(key, wide)
    if blocks * b != m:
        key = jnp.pad(key, ((0, 0), (0, blocks * b - m)), constant_values=jnp.inf)
    key = jnp.reshape(key, (n, blocks, b))
    _, chosen = top(jnp.min(key, axis=2), wide)  # (n, wide) block numbers
    inside = jnp.reshape(jnp.take_along_axis(key, chosen[:, :, None], axis=1), (n, wide * b))
    last, at = top(inside, wide)
    return last, jnp.take_along_axis(chosen, at // b, axis=1) * b + at % b


# --- Linear cross-entropy head: JAX ----------------------------------------------------------------------
# Why: memory. Traced, the generic Python loop over chunks unrolls, and XLA is free to schedule every
# chunk's logits at once: jax.grad at N = 1024, C = 4096, 128-row chunks compiled to 18 MiB of temporaries
# (the whole logits are 16 MiB). lax.scan runs one chunk body at a time (rows padded with zero weights,
# which contribute exactly 0), so the temporaries are one chunk's. The body is the generic one.
def jax_linear_head(
    X: Any, W: Any, terms: _softmax.RowTerms, workspace: _linear.Workspace, *,
    chunk_rows: int, want_grad: bool, xp: Any, **options: Any,
) -> tuple[Any, ...]:  # fmt: skip
    import jax
    import jax.numpy as jnp

    n, d = X.shape
    chunks = -(-n // chunk_rows)
    if chunks <= 1:
        return _linear.linear_head(
            X, W, terms, workspace, chunk_rows=chunk_rows, want_grad=want_grad, xp=xp, **options
        )
    pad = chunks * chunk_rows

    def blocked(a: Any) -> Any:
        a = jnp.concatenate([a, jnp.zeros((pad - n, *a.shape[1:]), dtype=a.dtype)])
        return jnp.reshape(a, (chunks, chunk_rows, *a.shape[1:]))

    names = [k for k in ("alpha", "gamma", "labels", "beta", "soft", "zero_rows", "weight")
             if getattr(terms, k) is not None]  # fmt: skip
    b, work, want_dX = workspace.b, workspace.work, workspace.want_dX

    def body(carry: Any, xs: Any) -> tuple[Any, Any]:
        Xc, fields = xs
        rows = dataclasses.replace(terms, **dict(zip(names, fields, strict=True)))
        ws = _linear.Workspace(Xc, W, b, work=work, want_dX=want_dX, tree=False, xp=xp)
        loss_c, dX_c, dW_c, db_c = _linear.linear_head(
            Xc, W, rows, ws, chunk_rows=chunk_rows, want_grad=want_grad, xp=xp, **options
        )
        if not want_grad:
            return carry, (loss_c, None)
        return (carry[0] + dW_c, None if b is None else carry[1] + db_c), (loss_c, dX_c)

    init = (jnp.zeros(W.shape, dtype=work), None if b is None else jnp.zeros(b.shape, dtype=work))
    xs = (blocked(X), [blocked(getattr(terms, k)) for k in names])
    (dW, db), (loss, dX) = jax.lax.scan(body, init if want_grad else (None, None), xs)
    loss = jnp.reshape(loss, (-1,))[:n]
    if not want_grad:
        return loss, None, None, None
    dX = None if dX is None else jnp.reshape(dX, (-1, d))[:n]
    return loss, dX, dW, db


# --- Softmax cross-entropy: JAX ---------------------------------------------------------------------------
# Why: speed. The generic kernel is the textbook one (optax's too): a row-max pass, exp(z - max) into an
# (n, C) temporary, its row sums, then the gradient from the temporary, and XLA compiles both programs to
# the same passes. Shifting by the label's logit z_y instead (a gather of n values) needs no max pass, and
# every row sum s = sum_k exp(z_k - z_y) is >= 1 (the label's own term is exp(0) = 1), so nothing
# underflows; the loss is gamma * log(s) directly. exp(z - z_y) is computed twice, inside the row-sum
# reduction and inside the gradient's single pass, so no (n, C) temporary is written at all. A batch with
# a row whose sum is out of [1, 1/sqrt(tiny)] (a logit gap past ~43 in float32, where gamma / s would be
# subnormal; inf and NaN logits; rows of -inf) runs the generic kernel instead (lax.cond). Index labels
# without label smoothing (gamma is alpha), on the CPU: on a GPU lax.cond reads its predicate on the
# host, not measured. 100000 x 100 float32 under jax.jit, 2 CPU cores shared with other jobs, against
# jax.value_and_grad of optax's softmax_cross_entropy_with_integer_labels: 1.08-1.13x -> 0.91-0.92x
# (interleaved medians, wall and CPU time). The generic kernel's answer to rounding:
# tests/test_backend_paths.py.
def jax_softmax_block(
    z: Any, terms: _softmax.RowTerms, *, want_grad: bool, xp: Any, recompute: Any = None
) -> tuple[Any, Any | None]:
    import jax

    simple = terms.soft is None and terms.beta is None and terms.gamma is terms.alpha
    platform = jax.default_backend() if is_jax_tracer(z) else next(iter(z.devices())).platform
    if not simple or platform != "cpu":
        return scattering_kernel(z, terms, want_grad=want_grad, xp=xp)

    z_y = _softmax.gather_labels(z, terms.labels, xp=xp)
    s = xp.sum(xp.exp(z - z_y[:, None]), axis=1)
    usable = s <= 1 / xp.finfo(z.dtype).smallest_normal ** 0.5  # False for NaN
    if terms.zero_rows is not None:
        usable = usable | terms.zero_rows  # ignored rows give 0 whatever their logits

    def fast(z: Any) -> tuple[Any, Any | None]:
        loss = _softmax.times(terms.gamma, xp.log(s), xp=xp)
        if terms.zero_rows is not None:
            loss = xp.where(terms.zero_rows, 0.0, loss)
        if not want_grad:
            return loss, None
        G = xp.exp(z - z_y[:, None]) * (terms.gamma / s)[:, None]
        G = scatter_subtract(G, terms.labels, terms.alpha, xp=xp)
        if terms.zero_rows is not None:
            G = xp.where(terms.zero_rows[:, None], 0.0, G)
        return loss, G

    def generic(z: Any) -> tuple[Any, Any | None]:
        return scattering_kernel(z, terms, want_grad=want_grad, xp=xp)

    return jax.lax.cond(xp.all(usable), fast, generic, z)


@contextlib.contextmanager
def highest_matmul_precision() -> Iterator[None]:
    """Matrix products at full float32 precision: JAX's default on GPUs/TPUs may use TF32 or bfloat16
    passes, which would silently void the accuracy softdist promises."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


class JaxBackend(Backend):
    name = "jax"

    def is_abstract(self, x: Any) -> bool:
        return is_jax_tracer(x)

    def matmul_precision(self) -> contextlib.AbstractContextManager[None]:
        return highest_matmul_precision()

    def run(self, core: Callable[..., Any], arrays: tuple[Any, ...], xp: Any, **static: Any) -> Any:
        """Eagerly: ``core`` as one compiled function (op by op, JAX compiles every operation for every
        new shape); traced: as it is."""
        with highest_matmul_precision():
            if not any(is_jax_tracer(a) for a in arrays if a is not None):
                return jax_compiled(core, xp=xp, **static)(*arrays)
            return core(*arrays, xp=xp, **static)

    def pairwise_sqdist(self, A: Any, B: Any | None, *, dtype: Any, xp: Any) -> Any:
        with highest_matmul_precision():
            return jax_pairwise_sqdist(A, B, xp=xp)

    # Why: top-k selection is the other big cost after the distance tiles; jax.lax.top_k beats
    # array-api-extra's generic argpartition (NaN made +inf, so it sorts last).
    def select_smallest(self, D: Any, count: int, *, xp: Any) -> Any:
        import jax

        return jax.lax.top_k(-xp.where(xp.isnan(D), xp.inf, D), count)[1]

    def knn_pruning_applies(self, x: Any) -> bool:
        return False

    def knn(
        self, Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
        sqdist: Callable[..., Any], dtype: Any, index_dtype: Any, xp: Any,
    ) -> tuple[Any, Any]:  # fmt: skip
        # one compiled tile body for every query tile (see jax_knn)
        with highest_matmul_precision():
            return jax_knn(Q, X, k=k, exclude_self=exclude_self, tile_rows=tile_rows, tile_cols=tile_cols,
                           sqdist=sqdist, dtype=dtype, xp=xp)  # fmt: skip

    # No max pass and no (n, C) temporary (see jax_softmax_block).
    def softmax_kernel(self, arrays: list[Any]) -> _softmax.Kernel:
        return jax_softmax_block

    def linear_head(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return jax_linear_head(*args, **kwargs)
