"""JAX: static-shape refinement and kNN (tracing forbids data-dependent shapes), one compiled function
per option set when eager (JAX compiles every operation anew for every new shape), lax.top_k, lax.scan
over the linear head's chunks, and full-precision matrix products."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
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
    finite = jnp.all(jnp.isfinite(Q)) & jnp.all(jnp.isfinite(X))

    def one_tile(args: tuple[Any, Any]) -> tuple[Any, Any]:
        Qt, q0 = args
        return jax_query_tile_neighbours(
            Qt, X, q0, finite, k=k, exclude_self=exclude_self, tile_cols=tile_cols, xp=xp,
            sqdist=functools.partial(sqdist, dtype=dtype, xp=xp),
        )  # fmt: skip

    starts = jnp.arange(tiles) * tile_rows
    blocks = (jnp.reshape(padded, (tiles, tile_rows, d)), starts)
    if dtype != jnp.float64 or not _config.KNN_JAX_FLOAT32_SCREEN or d == 0:
        dist, index = jax.lax.map(one_tile, blocks)
    else:
        screen = _float32_screen_operands(Q, X, finite)

        def screened_tile(args: tuple[Any, Any]) -> tuple[Any, Any]:
            found, certified = _screened_query_tile(*args, X, screen, nq=nq, k=k, exclude_self=exclude_self,
                                                    tile_cols=tile_cols, xp=xp)  # fmt: skip
            return jax.lax.cond(certified, lambda _: found, lambda _: one_tile(args), None)

        dist, index = jax.lax.cond(
            screen.usable, lambda b: jax.lax.map(screened_tile, b), lambda b: jax.lax.map(one_tile, b), blocks
        )
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
        # inf ranks as the largest finite value and NaN as inf: an inf distance before a NaN one
        D = jnp.where(D == jnp.inf, jnp.finfo(D.dtype).max, D)
        D = jnp.where(jnp.isnan(D) if own is None else own | jnp.isnan(D), jnp.inf, D)  # NaN ranks last
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


# Why: at float64 the tile's float64 product and the float32 selection of its cast took about as long
# each (5000 x 5000, d = 64). A float32 product of the centred, power-of-two-scaled data ranks the
# references about twice as fast, the best few per query get exact distances (the double-float kernel),
# and a certificate makes the answer exact: every reference left out has a float32 key at least a
# per-query threshold L, hence an exact distance at least L less the float32 rounding bound, and the k-th
# exact distance kept must lie strictly under that. A query tile that fails (ties or near-ties wider
# than the bound, clustered data far from the centre) takes the float64 path above (lax.cond); data
# with a NaN, an inf or a range float32 cannot hold skip the screen altogether. 5000 x 5000, d = 64,
# k = 10, 2 loaded CPU cores, interleaved medians: 3.2-3.8x the float64 products -> 1.5-1.8x (eager and
# jit).
@dataclasses.dataclass(frozen=True)
class _Screen:
    mean: Any  # (d,) float64 centre of Q and X
    scale: Any  # () power of two: the largest scaled centred squared norm lies in [1, 4)
    X32: Any  # (m, d) float32 scaled centred references
    x_norms: Any  # (m,) float32 their squared norms (from float64)
    err_per_norm: Any  # () float64: key error bound per unit of |q|^2 + max |x|^2 (scaled)
    x_norm_max: Any  # () float64
    usable: Any  # () bool


def _float32_screen_operands(Q: Any, X: Any, finite: Any) -> _Screen:
    import jax.numpy as jnp

    d = Q.shape[1]
    mean = (jnp.sum(Q, axis=0) + jnp.sum(X, axis=0)) / (Q.shape[0] + X.shape[0])
    mean = jnp.where(finite, mean, 0.0)
    Qc, Xc = Q - mean, X - mean
    top = jnp.maximum(jnp.max(jnp.sum(Qc * Qc, axis=1)), jnp.max(jnp.sum(Xc * Xc, axis=1)))
    # float64 exponents of the scale stay far from over/underflow; a zero spread screens nothing
    usable = finite & (top < 2.0**900) & (top > 2.0**-900)
    e = jnp.where(usable, jnp.floor(jnp.log2(jnp.where(usable, top, 1.0)) / 2), 0.0)
    scale = jnp.ldexp(jnp.ones((), dtype=Q.dtype), -e.astype(jnp.int32))
    Xs = Xc * scale
    x_norms = jnp.sum(Xs * Xs, axis=1)
    # |key - (|x|^2 - 2 q.x)| <= (d + 5) u (|q|^2 + |x|^2) (inputs, products and the float32 sum of d
    # terms, the norm and the subtraction rounded, u = 2**-24); doubled for the float64 roundings and
    # margin. Flushed subnormals (the scaled norms are <= 4) cost less than the 2**-60 added.
    err = 2.0 * (d + 8) * 2.0**-24
    return _Screen(mean=mean, scale=scale, X32=Xs.astype(jnp.float32), x_norms=x_norms.astype(jnp.float32),
                   err_per_norm=jnp.asarray(err, dtype=Q.dtype), x_norm_max=jnp.max(x_norms),
                   usable=usable)  # fmt: skip


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
    Qs = (Qt - screen.mean) * screen.scale
    q_norms = jnp.sum(Qs * Qs, axis=1)
    Q32 = Qs.astype(jnp.float32)
    lowest = jnp.full((tq,), jnp.inf, dtype=jnp.float32)  # a lower bound of every key left out
    best_k = best_i = None
    for j0 in range(0, m, tile_cols):
        j1 = min(j0 + tile_cols, m)
        key = screen.x_norms[None, j0:j1] - 2.0 * jnp.matmul(Q32, screen.X32[j0:j1].T)
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
    exact_d = _generic.exact_sqdist_rows(Qt[rows], X[best_i.reshape(-1)], xp=xp, finite=True)
    exact_d = exact_d.reshape(best_i.shape)
    # keys of +inf: the query's own row (exclude_self) or padding, never among the k (k <= m - 1)
    left_out = best_k == jnp.inf
    exact_d = jnp.where(left_out, jnp.nan, exact_d)
    best_i = jnp.where(left_out, jnp.asarray(_neighbors.OWN_ROW_INDEX, dtype=index_dtype), best_i)
    dist, index = _first_by_rank(exact_d, best_i, k)
    bound = lowest.astype(jnp.float64) + q_norms - screen.err_per_norm * (q_norms + screen.x_norm_max)
    bound = bound - 2.0**-60
    padding = jnp.arange(tq) + q0 >= nq  # the last tile's zero rows: their answer is dropped
    certified = jnp.all(padding | (dist[:, k - 1] * (screen.scale * screen.scale) < bound))  # NaN: False
    return (dist, index), certified


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
