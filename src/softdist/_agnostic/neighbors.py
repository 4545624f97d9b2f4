"""Exact k-nearest neighbours in bounded memory, written once against the array API standard.

Queries and references are both tiled. For each (query tile, reference tile) the accurate distance
expansion ranks the tile, the best ``candidates`` columns per row are recomputed exactly by direct
differences, and the exact lists are merged by (distance, index). Merging exact values makes ties break by
the lower index identically everywhere, and a duplicate of a query comes back at exactly 0.0.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _config
from .._lib._compat import argpartition, default_dtype, device
from .distances import direct_sqdist_pairs, overflow_scale
from .distances import finite_rows as _finite_rows

Select = Callable[[Any, int], Any]
# ``kth_smallest(E, k)``: each row's k-th smallest value of a 2-D E, NaN counting as largest.
KthSmallest = Callable[[Any, int], Any]
# Index given to a query's own row while it is carried through a merge: past every real index (and
# exact in int32 and in the float64 that carries indices between Dask blocks).
OWN_ROW_INDEX = 2**31 - 1


def rank_key(D: Any, *, xp: Any) -> Any:
    """D with +inf as the largest finite value and NaN as +inf: a key that ranks an inf distance before a
    NaN one for selections that know no NaN order."""
    return xp.where(xp.isnan(D), xp.inf, xp.where(D == xp.inf, xp.finfo(D.dtype).max, D))


def select_smallest(D: Any, count: int, *, xp: Any) -> Any:
    """Column indices of ``count`` smallest entries per row (unordered); NaN after +inf."""
    if count >= D.shape[1]:
        return xp.broadcast_to(xp.arange(D.shape[1], device=device(D))[None, :], D.shape)
    return argpartition(rank_key(D, xp=xp), count - 1, axis=1, xp=xp)[:, :count]


def exact_sqdist(Q: Any, X: Any, columns: Any, *, xp: Any) -> Any:
    """sum((Q_i - X_columns[i, j])**2) by direct differences: (tq, K) from Q (tq, d) and X (tm, d)."""
    tq, K = columns.shape
    rows = xp.reshape(xp.broadcast_to(xp.arange(tq, device=device(Q))[:, None], (tq, K)), (-1,))
    return xp.reshape(direct_sqdist_pairs(Q, X, rows, xp.reshape(columns, (-1,)), xp=xp), (tq, K))


def own_entries(tq: int, tm: int, q0: int, j0: int, *, xp: Any, dev: Any) -> Any | None:
    """Mask of the (query, reference) entries that are the same global row, or None when the tile
    (queries q0.., references j0..) does not cross the diagonal."""
    if isinstance(q0, int) and not (q0 < j0 + tm and j0 < q0 + tq):  # a traced q0 always gets a mask
        return None
    return xp.arange(tq, device=dev)[:, None] + q0 == xp.arange(tm, device=dev)[None, :] + j0


def sorted_smallest(dist: Any, index: Any, k: int, *, xp: Any) -> tuple[Any, Any]:
    """The k smallest per row by (distance, index): ties go to the lower index; NaN last."""
    by_index = xp.argsort(index, axis=1, stable=True)
    dist, index = xp.take_along_axis(dist, by_index, axis=1), xp.take_along_axis(index, by_index, axis=1)
    by_dist = xp.argsort(dist, axis=1, stable=True)[:, :k]
    return xp.take_along_axis(dist, by_dist, axis=1), xp.take_along_axis(index, by_dist, axis=1)


def tile_neighbours(
    Qt: Any,
    Xt: Any,
    q0: int,
    j0: int,
    *,
    k: int,
    exclude_self: bool,
    xp: Any,
    sqdist: Callable[[Any, Any], Any],
    select: Select,
) -> tuple[Any, Any]:
    """Exact (distance, global index) of the k best references of one tile for each query of a tile.

    ``q0``/``j0`` are the tiles' offsets; with ``exclude_self`` the query's own row (same global index)
    never counts. Returns up to k columns (fewer when the tile is narrower).
    """
    tq, tm = Qt.shape[0], Xt.shape[0]
    D = sqdist(Qt, Xt)
    own = own_entries(tq, tm, q0, j0, xp=xp, dev=device(D)) if exclude_self else None
    if own is not None:
        D = xp.where(own, xp.inf, D)
    # Rank on the expansion, keep twice k, then decide on exact values: near-ties survive the ranking.
    columns = select(D, min(2 * k, tm))
    exact = exact_sqdist(Qt, Xt, columns, xp=xp)
    index = columns + j0
    index = xp.astype(index, default_dtype(xp, "indexing", device=device(D)))
    if own is not None:
        # A tile narrower than 2k may have to keep the query's own row: NaN with an index past every
        # real one sorts it after every other entry, NaN-distance ones included; with k <= m - 1 the
        # merges always drop it.
        mine = index == xp.astype(xp.arange(tq, device=device(D))[:, None] + q0, index.dtype)
        exact = xp.where(mine, xp.nan, exact)
        index = xp.where(mine, xp.asarray(OWN_ROW_INDEX, dtype=index.dtype, device=device(D)), index)
    return sorted_smallest(exact, index, min(k, index.shape[1]), xp=xp)


def merge_neighbours(a: tuple[Any, Any], b: tuple[Any, Any], k: int, *, xp: Any) -> tuple[Any, Any]:
    dist = xp.concat([a[0], b[0]], axis=1)
    index = xp.concat([a[1], b[1]], axis=1)
    return sorted_smallest(dist, index, min(k, dist.shape[1]), xp=xp)


def knn(
    Q: Any,
    X: Any,
    *,
    k: int,
    exclude_self: bool,
    tile_rows: int,
    tile_cols: int,
    xp: Any,
    sqdist: Callable[[Any, Any], Any],
    select: Select,
) -> tuple[Any, Any]:
    """(sqdist, indices), each (nq, k), for tiles of tile_rows x tile_cols distances at a time."""
    nq = Q.shape[0]
    out_d, out_i = [], []
    for q0 in range(0, nq, tile_rows):
        Qt = Q[q0 : min(q0 + tile_rows, nq), ...]
        best = query_tile_neighbours(Qt, X, q0, k=k, exclude_self=exclude_self, tile_cols=tile_cols, xp=xp,
                                     sqdist=sqdist, select=select)  # fmt: skip
        out_d.append(best[0])
        out_i.append(best[1])
    return _stack_rows(out_d, xp=xp), _stack_rows(out_i, xp=xp)


def query_tile_neighbours(
    Qt: Any,
    X: Any,
    q0: Any,
    *,
    k: int,
    exclude_self: bool,
    tile_cols: int,
    xp: Any,
    sqdist: Callable[[Any, Any], Any],
    select: Select,
) -> tuple[Any, Any]:
    """The k best references of all of X for the queries Qt (global rows q0..), tile by tile of X."""
    m = X.shape[0]
    best = None
    for j0 in range(0, m, tile_cols):
        Xt = X[j0 : min(j0 + tile_cols, m), ...]
        found = tile_neighbours(Qt, Xt, q0, j0, k=k, exclude_self=exclude_self, xp=xp, sqdist=sqdist,
                                select=select)  # fmt: skip
        best = found if best is None else merge_neighbours(best, found, k, xp=xp)
    return best


def _stack_rows(parts: list[Any], *, xp: Any) -> Any:
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


# -- eager backends: prune each tile against the current k-th best ---------------------------------------
# Bound of the centred expansion against the exact distance (docs/numerics.md), per pair, c the centre:
# |D_expansion - D_exact| <= EXPANSION_BOUND * eps * sqrt(d + 2) * (|q - c|^2 + |x - c|^2) + u, with
# EXPANSION_BOUND, the spread sample's size, the sub-tile size, when the bound tightens inside a tile and
# the exact distances' chunk size in softdist._config (KNN_*).
TileMap = Callable[[Callable[[int], Any], list[int]], list[Any]]
# ``screen(Qa, width)`` -> ``fn(Xs, limit)``: for one query tile's sub-tiles of at most ``width`` columns,
# (flat, values): the row-major positions of the entries of Qa @ Xs that are <= their row's ``limit``, in
# order, and those entries; a backend may write every sub-tile into the same buffers.
Screen = Callable[[Any, int], Callable[[Any, Any], tuple[Any, Any]]]


def screen_tiles(
    Qa: Any, width: int, *, xp: Any, flat_nonzero: Callable[[Any], Any] | None = None
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """The generic :data:`Screen`: a new product and mask per sub-tile."""
    nonzero = flat_nonzero or (lambda mask: xp.nonzero(mask)[0])

    def screen(Xs: Any, limit: Any) -> tuple[Any, Any]:
        D = Qa @ Xs
        # 1-D nonzero: NumPy's 2-D nonzero is ~10x slower per entry. (Compacting the rows with a hit
        # first measured slower, on NumPy and on torch.)
        flat = nonzero(xp.reshape(D <= limit, (-1,)))
        return flat, xp.take(xp.reshape(D, (-1,)), flat)

    return screen


def spread_sample(m: int, count: int) -> list[int]:
    """Up to ``count`` distinct row numbers spread over range(m), sorted: the golden-ratio (Weyl)
    sequence, so sorted or clustered input contributes rows from everywhere, with no period a data
    layout could line up with (a fixed stride could)."""
    if count >= m:
        return list(range(m))
    step = (5**0.5 - 1) / 2
    return sorted({int(((i * step) % 1.0) * m) for i in range(count)})


def knn_pruned(
    Q: Any,
    X: Any,
    *,
    k: int,
    exclude_self: bool,
    tile_rows: int,
    tile_cols: int,
    xp: Any,
    operands: Callable[..., tuple[Any, Any, Any, Any]],
    select: Select,
    row_offset: int = 0,
    col_offset: int = 0,
    tile_map: TileMap | None = None,
    flat_nonzero: Callable[[Any], Any] | None = None,
    screen: Screen | None = None,
    exact_rows: Callable[..., Any] | None = None,
    finite_rows: Callable[..., Any] | None = None,
    subtile_entries: int | None = None,
    kth_smallest: KthSmallest | None = None,
) -> tuple[Any, Any]:
    """Same result as :func:`knn` for eager backends, without a top-k selection on every tile.

    Everything is decided on the centred expansion E, whose error against the exact distance D is at
    most b(q, x) = beta (rq + rx) (rq, rx the centred squared norms; beta from EXPANSION_BOUND), and
    only the final candidates are computed exactly. Each entry has a lower value L = E - b <= D and an
    upper value U = E + b >= D; if U_k is a query's k-th smallest upper value over any subset of the
    references, every true neighbour (ties included) has L <= U_k. A spread sample of
    KNN_SAMPLE_COLUMNS references gives a first U_k; every tile then keeps only the entries with
    L <= U_k (one comparison pass on the product, whose reference column carries rx's share of the
    bound, and a compaction, no selection), and U_k tightens from the kept entries. At the end the
    kept entries still under the final U_k (about k per query) get exact distances and are ranked by
    (distance, index). ``row_offset``/``col_offset`` place Q and X in a larger problem (Dask blocks):
    they decide which entry is a query's own row, and are added to the returned indices. ``tile_map(fn,
    starts)`` returns ``[fn(q0) for q0 in starts]`` (query tiles are independent: a backend may run
    them in threads); ``flat_nonzero(mask)`` is ``xp.nonzero(mask)[0]`` for a 1-D mask (a backend may
    compact faster); ``screen`` (:data:`Screen`, default :func:`screen_tiles`) computes each sub-tile's
    expansion values and the mask of those under the query's limit; ``exact_rows`` replaces
    :func:`softdist._agnostic.distances.exact_sqdist_rows` for the candidates (same bits);
    ``finite_rows(A, xp=)`` replaces :func:`softdist._agnostic.distances.finite_rows` (same values);
    ``subtile_entries`` (default ``_config.KNN_SUBTILE_ENTRIES``) sizes the sub-tiles screened at once;
    ``kth_smallest`` (:data:`KthSmallest`) gives the bound's k-th values (default: by ``select``).
    """
    nq, m, d = Q.shape[0], X.shape[0], Q.shape[1]
    dev = device(Q)
    # The expansion runs on finite rows at a power-of-two scale that cannot overflow; rows with a NaN
    # or inf get a NaN norm, so no expansion entry of theirs passes a threshold, and their exact values
    # are filled in at the end. Exact values come from the caller's floats.
    good_q, good_x = (finite_rows or _finite_rows)(Q, xp=xp), (finite_rows or _finite_rows)(X, xp=xp)
    finite = bool(xp.all(good_q)) and bool(xp.all(good_x))  # eager path: host reads
    scale = float(overflow_scale(X, Q, xp=xp, finite=finite))
    in_range = scale == 1.0  # magnitudes within a quarter of the threshold: no pair needs scaling down
    # Distances under the dtype's smallest normal round with an absolute spacing: a reference that close
    # to the k-th ties with it (float32 data x1e-30: every distance rounds to 0, ties by index; found by
    # the break test), in the expansion's (scaled) units.
    tie_floor = float(xp.finfo(Q.dtype).smallest_normal) * float(xp.finfo(Q.dtype).eps) * scale * scale
    index_dtype = default_dtype(xp, "indexing", device=dev)
    # At most a sixteenth of the references: the sample's product is extra work (Dask blocks are narrow).
    n_sample = max(2 * k, min(_config.KNN_SAMPLE_COLUMNS, m // 16))
    sample = xp.asarray(spread_sample(m, n_sample), dtype=index_dtype, device=dev)

    def expansion(dtype: Any) -> _Expansion:
        Qs, Xs = xp.astype(Q, dtype, copy=False) * scale, xp.astype(X, dtype, copy=False) * scale
        centre = sample_centre(Xs, sample, xp=xp)
        Q_aug, X_aug, rq, rx = operands(
            xp.where(good_q[:, None], Qs, centre), xp.where(good_x[:, None], Xs, centre), centre, xp=xp
        )
        rq, rx = xp.where(good_q, rq, xp.nan), xp.where(good_x, rx, xp.nan)
        # The bound is per pair, b(q, x) = beta * (rq + rx) (rq, rx: the centred squared norms). The
        # reference's share goes into the product: the screened value is F = E - beta * rx (X_aug's norm
        # column times 1 - beta), so D >= F - beta * rq and D <= F + beta * rq + 2 * beta * rx. One far
        # reference then widens only its own entries' bound (with the largest norm in every bound, one
        # outlier row made every entry pass: 5000 x 64 with one row times 1000, 25 s against 0.26 s).
        beta = _config.EXPANSION_BOUND * xp.finfo(dtype).eps * (d + 2) ** 0.5
        Q_aug = xp.concat([Q_aug[:, :d], rq[:, None], Q_aug[:, d + 1 :]], axis=1)
        X_aug = xp.concat([X_aug[:, : d + 1], (rx * (1.0 - beta))[:, None]], axis=1)
        upper = 2.0 * beta * rx  # F + upper[x] + window / 2 bounds D(q, x) from above
        # ... plus an absolute term for underflow: data scaled down for a huge row (or tiny data) has
        # entries in the subnormal range, where each rounding errs by up to half eps * smallest_normal
        # whatever the value (one row 1e18 in float32 put the others' scaled distances there: wrong
        # neighbours, found by the break test).
        finfo = xp.finfo(dtype)
        underflow = 8.0 * (d + 2) * finfo.eps * finfo.smallest_normal
        window = 2.0 * beta * rq + 2.0 * underflow
        return _Expansion(
            Q_aug=Q_aug, X_t=xp.matrix_transpose(X_aug), upper=upper, window=window,
            sample_t=xp.matrix_transpose(xp.take(X_aug, sample, axis=0)),
            sample_upper=xp.take(upper, sample)[None, :],
        )  # fmt: skip

    main = expansion(Q.dtype)
    # Float32 data whose rows sit far from the centre compared with their neighbours' distances (a
    # tight cluster far from the rest, two clusters far apart, near-duplicates) has a bound wider than
    # those distances: every entry among them passes, and each gets an exact distance. A query tile
    # whose sample shows such rows runs on a float64 expansion of the same data instead (made once, when
    # first needed), whose bound is 2^29 times tighter (exact ties stay crowded in both: those tiles
    # stay). 20000 x 64 float32 on 2 cores, NumPy / torch: a tenth of the rows at 500 +- 0.01 6.95 s ->
    # 1.62 / 1.67 s; two clusters 1000 apart > 100 s -> 1.66 / 1.91 s; 10 rows repeated with 1e-5
    # noise > 90 s -> 2.4 s (NumPy); random data 0.95 / 1.19 s (unchanged).
    wide: list[_Expansion] = []
    wide_lock = threading.Lock()
    can_widen = Q.dtype != xp.float64 and hasattr(xp, "float64")

    def widened() -> _Expansion:
        with wide_lock:
            if not wide:
                wide.append(expansion(xp.float64))
            return wide[0]

    # Sub-tiles of about a megabyte stay in cache between the product and the comparison that reads it
    # back (single-thread NumPy, 512 x 50000 x 66 float32: 47 ms in 8192-column tiles, 42 ms in 512).
    sub = max(1, min(tile_cols, (subtile_entries or _config.KNN_SUBTILE_ENTRIES) // tile_rows))
    kth_of = kth_smallest or (lambda E, c: xp.max(xp.take_along_axis(E, select(E, c), axis=1), axis=1))

    def query_tile(q0: int) -> tuple[Any, Any]:
        q1 = min(q0 + tile_rows, nq)
        own = col_offset if exclude_self else None

        def start(ex: _Expansion) -> tuple[Any, Any, Any]:
            """The tile's queries, their sample's values and each row's k-th upper value there."""
            Qa = ex.Q_aug[q0:q1, ...]
            F = Qa @ ex.sample_t
            kth = _sample_kth(F + ex.sample_upper, sample, k, q0 + row_offset, own, xp=xp,
                              kth_smallest=kth_of)  # fmt: skip
            return Qa, F, kth

        def crowded(ex: _Expansion, F: Any, kth: Any) -> int:
            """How many rows have more than k + KNN_POOL_RESOLVE_EXTRA sample entries within the bound."""
            inside = xp.count_nonzero(F <= (kth + ex.window[q0:q1])[:, None], axis=1)
            return int(xp.count_nonzero(inside > k + _config.KNN_POOL_RESOLVE_EXTRA))

        ex = main
        Qa, F, kth = start(ex)
        # eager path: host reads (one pass over the sample's product, which ~2% of the time goes to)
        if can_widen:
            crowded_here = crowded(ex, F, kth)
            if crowded_here:
                wide_ex = widened()
                Qa_w, F_w, kth_w = start(wide_ex)
                if crowded(wide_ex, F_w, kth_w) < crowded_here:  # rounding, not exact ties, crowded them
                    ex, Qa, kth = wide_ex, Qa_w, kth_w

        def exact(r: Any, c: Any) -> Any:  # candidates are between finite rows (others: NaN expansion)
            return direct_sqdist_pairs(Q[q0:q1, ...], X, r, c, xp=xp, finite=True, in_range=in_range,
                                       eager=True, chunk_elements=_config.KNN_EXACT_CHUNK_ELEMENTS,
                                       kernel=exact_rows)  # fmt: skip

        pool = _Pool(q1 - q0, k, kth, ex.window[q0:q1], ex.upper, xp=xp, kth_smallest=kth_of, exact=exact,
                     unscaled=in_range, rounding=float(xp.finfo(Q.dtype).eps),
                     rounding_floor=tie_floor)  # fmt: skip
        sub_tile = screen(Qa, sub) if screen else screen_tiles(Qa, sub, xp=xp, flat_nonzero=flat_nonzero)
        for j0 in range(0, m, tile_cols):  # the bound tightens once per tile
            limit = pool.limit()[:, None]
            found, count = [], 0
            for s0 in range(j0, min(j0 + tile_cols, m), sub):
                s1 = min(s0 + sub, j0 + tile_cols, m)
                flat, values = sub_tile(ex.X_t[:, s0:s1], limit)
                if flat.shape[0] == 0:
                    continue
                rows, columns = flat // (s1 - s0), xp.astype(flat % (s1 - s0), index_dtype) + s0
                if exclude_self and _crosses(q0 + row_offset, q1 - q0, s0 + col_offset, s1 - s0):
                    # the query's own row never counts: dropped from the few kept entries
                    shift = q0 + row_offset - col_offset
                    (other,) = xp.nonzero(xp.astype(rows, index_dtype) + shift != columns)
                    rows, columns, values = (xp.take(a, other) for a in (rows, columns, values))
                found.append((rows, columns, values))
                count += rows.shape[0]
                if count > _config.KNN_POOL_UPDATE_PER_ROW * k * (
                    q1 - q0
                ):  # sorted input: the neighbours come at once
                    pool.add(*(xp.concat([f[i] for f in found]) for i in range(3)), runs=len(found))
                    limit, found, count = pool.limit()[:, None], [], 0
            if found:
                pool.add(*(xp.concat([f[i] for f in found]) for i in range(3)), runs=len(found))
        r, c, dist = pool.candidates()
        best_d = xp.full((q1 - q0, k), xp.inf, dtype=Q.dtype, device=dev)
        best_i = xp.full((q1 - q0, k), -1, dtype=index_dtype, device=dev)
        best_d, best_i = _merge_ragged(best_d, best_i, r, dist, c + col_offset, xp=xp)
        short = xp.any(best_i < 0, axis=1)
        if bool(xp.any(short)):  # inf and NaN distances pass no threshold: those rows in full
            filled = _fill_short_rows(Q[q0:q1, ...], X, best_d, best_i, short, q0 + row_offset, col_offset,
                                      exclude_self, xp=xp, finite_rows=finite_rows)  # fmt: skip
            best_d, best_i = filled
        return best_d, best_i

    found = (tile_map or _serial_map)(query_tile, list(range(0, nq, tile_rows)))
    return _stack_rows([f[0] for f in found], xp=xp), _stack_rows([f[1] for f in found], xp=xp)


@dataclass(frozen=True)
class _Expansion:
    """The pruned search's centred expansion in one dtype (see knn_pruned)."""

    Q_aug: Any  # (nq, d + 2): E = Q_aug @ X_t (the screened value F)
    X_t: Any  # (d + 2, m)
    upper: Any  # (m,) F + upper + window / 2 bounds the distance from above
    window: Any  # (nq,) F - window / 2 bounds it from below; NaN for a bad query
    sample_t: Any  # (d + 2, sample): X_t's sample columns
    sample_upper: Any  # (1, sample)


def sample_centre(X: Any, sample: Any, *, xp: Any) -> Any:
    """The expansion's centre: each column's median over the sample rows' finite entries (0 where none).

    Any centre gives the bound its form; the distances from the centre set its width. The column mean
    moves with one far row (one row 1e10 times the others put every row ~2e6 from a mean of 5000 rows,
    and the pruned search took 22 s against 0.16 s): the median does not."""
    rows = xp.take(X, sample, axis=0)
    ok = xp.isfinite(rows)
    ordered = xp.sort(xp.where(ok, rows, xp.inf), axis=0)
    count = xp.sum(xp.astype(ok, sample.dtype), axis=0)
    middle = xp.take_along_axis(ordered, (xp.maximum(count - 1, 0) // 2)[None, :], axis=0)[0, ...]
    return xp.where(count > 0, middle, 0.0)


def _crosses(q0: int, tq: int, j0: int, tm: int) -> bool:
    """Whether queries q0.. (tq of them) and references j0.. (tm) share a global row."""
    return q0 < j0 + tm and j0 < q0 + tq


def _serial_map(fn: Callable[[int], Any], items: list[int]) -> list[Any]:
    return [fn(item) for item in items]


def _sample_kth(
    E: Any, sample: Any, k: int, q0: int, own_offset: int | None, *, xp: Any, kth_smallest: KthSmallest
) -> Any:
    """Each row's k-th smallest expansion value over the sample columns (own row left out when
    ``own_offset`` is given), +inf where fewer than k are finite."""
    if own_offset is not None:
        rows = xp.arange(E.shape[0], device=device(E))[:, None] + q0
        E = xp.where(rows == xp.astype(sample, rows.dtype)[None, :] + own_offset, xp.inf, E)
    if E.shape[1] < k:
        return xp.full(E.shape[0], xp.inf, dtype=E.dtype, device=device(E))
    kth = kth_smallest(E, k)
    return xp.where(xp.isnan(kth), xp.inf, kth)


class _Pool:
    """The (row, column, screened value F) entries a query tile has kept so far, ordered by row, with
    each row's current k-th smallest upper value ``kth`` (F + ``upper[column]``, see knn_pruned);
    entries with F beyond ``kth + window`` are dropped as soon as ``kth`` tightens.

    Exact ties (duplicate rows, all-equal data) defeat that bound: every tied entry stays within it. A
    row left with more than ``k + _config.KNN_POOL_RESOLVE_EXTRA`` entries within it (random data
    keeps about k) is therefore resolved: its first entries get exact distances (``exact(rows,
    columns)``), their k best by (distance, column) are set aside as final candidates, the others are
    dropped, and the k-th exact distance d_k bounds what may
    come later. Later columns have higher indices, so they lose every tie with d_k: an entry can only
    matter if its exact distance is below d_k, so its F below d_k + window / 2 (F - window / 2 is a
    lower bound of the distance; only when the expansion runs on ``unscaled`` data, in the exact
    distances' units); none can when d_k is 0, and the row takes no more entries.
    """

    def __init__(
        self, rows: int, k: int, kth: Any, window: Any, upper: Any, *, xp: Any, kth_smallest: KthSmallest,
        exact: Callable[[Any, Any], Any], unscaled: bool, rounding: float, rounding_floor: float = 0.0,
    ) -> None:  # fmt: skip
        self.k, self.kth, self.window, self.xp, self.kth_smallest = k, kth, window, xp, kth_smallest
        self.upper, self.rounding, self.rounding_floor = upper, rounding, rounding_floor
        self.exact, self.unscaled = exact, unscaled
        self.crowded = k + _config.KNN_POOL_RESOLVE_EXTRA
        self.rows = xp.arange(rows, device=device(kth))
        self.exact_kth = xp.full(kth.shape, xp.inf, dtype=kth.dtype, device=device(kth))
        self.resolved: list[tuple[Any, Any, Any]] = []  # (row, column, exact distance)
        self.r: Any = None
        self.c: Any = None
        self.e: Any = None

    def limit(self) -> Any:
        xp = self.xp
        # + a relative eps of the result's dtype: a reference whose distance rounds to the k-th's ties
        # with it, and may lie that far above it (a float64 expansion's window is narrower than that)
        bound = self.kth + self.window + self.rounding * xp.abs(self.kth) + self.rounding_floor
        above = self.exact_kth + 0.5 * self.window if self.unscaled else bound
        return xp.minimum(bound, xp.where(self.exact_kth == 0.0, -xp.inf, above))

    def add(self, r: Any, c: Any, e: Any, *, runs: int) -> None:
        """New entries: ``runs`` runs, each ordered by row (as a row-major nonzero gives them)."""
        xp = self.xp
        r = xp.astype(r, self.rows.dtype)
        if self.r is not None:
            r, c, e = xp.concat([self.r, r]), xp.concat([self.c, c]), xp.concat([self.e, e])
            runs += 1
        if runs > 1:
            order = xp.argsort(r, stable=True)  # merges the runs (a few linear passes)
            r, c, e = xp.take(r, order), xp.take(c, order), xp.take(e, order)
        # Each row's k-th smallest kept value: its run of entries as a padded dense row, then a
        # selection of k (a few columns wide after the first tiles).
        starts = xp.searchsorted(r, self.rows)
        counts = xp.searchsorted(r, self.rows, side="right") - starts
        width = int(xp.max(counts))  # eager path: one host read
        if width >= self.k:
            u = e + xp.take(self.upper, c)  # each entry's upper value
            at_k = self.kth_smallest(_dense_rows(u, starts, counts, width, xp.inf, xp=xp), self.k)
            self.kth = xp.minimum(self.kth, at_k)
        (kept,) = xp.nonzero(e <= xp.take(self.limit(), r))
        r, c, e = xp.take(r, kept), xp.take(c, kept), xp.take(e, kept)
        if width > self.crowded:
            starts = xp.searchsorted(r, self.rows)
            counts = xp.searchsorted(r, self.rows, side="right") - starts
            if int(xp.max(counts)) > self.crowded:  # eager path: one host read
                done = self._resolve(r, c, starts, counts, counts > self.crowded)
                (kept,) = xp.nonzero(~done & (e <= xp.take(self.limit(), r)))
                r, c, e = xp.take(r, kept), xp.take(c, kept), xp.take(e, kept)
        self.r, self.c, self.e = r, c, e

    def _resolve(self, r: Any, c: Any, starts: Any, counts: Any, full: Any) -> Any:
        """Sets aside the k best entries by exact distance (then column) of the first ``crowded``
        entries of each row marked ``full``, and tightens those rows' exact bound (the later entries
        then face it); returns the mask of the entries resolved."""
        xp, k, width = self.xp, self.k, self.crowded
        (rows,) = xp.nonzero(full)
        counts = xp.minimum(xp.take(counts, rows), width)
        span = xp.arange(width, device=device(r), dtype=starts.dtype)
        inside = span[None, :] < counts[:, None]
        padded = xp.reshape(xp.take(starts, rows)[:, None] + span[None, :], (-1,))  # entry positions
        (entries,) = xp.nonzero(xp.reshape(inside, (-1,)))  # each full row's entries, in column order
        at = xp.take(padded, entries)
        values = self.exact(xp.take(r, at), xp.take(c, at))
        exact = xp.reshape(_spread(values, xp.reshape(inside, (-1,)), xp.inf, xp=xp), (rows.shape[0], width))
        d_k = self.kth_smallest(exact, k)
        # the k best by (distance, column): those below d_k, then the first ties at d_k
        below = exact < d_k[:, None]
        tie = exact == d_k[:, None]
        tie_rank = xp.cumulative_sum(xp.astype(tie, xp.int64), axis=1)
        best = below | (tie & (tie_rank <= k - xp.sum(xp.astype(below, xp.int64), axis=1)[:, None]))
        (chosen,) = xp.nonzero(xp.reshape(best & inside, (-1,)))
        at = xp.take(padded, chosen)
        self.resolved.append((xp.take(r, at), xp.take(c, at), xp.take(xp.reshape(exact, (-1,)), chosen)))
        self.exact_kth = xp.minimum(self.exact_kth, _spread(d_k, full, xp.inf, xp=xp))
        slot = xp.arange(r.shape[0], device=device(r), dtype=starts.dtype) - xp.take(starts, r)
        return xp.take(full, r) & (slot < width)

    def candidates(self) -> tuple[Any, Any, Any]:
        """(row, column, exact distance) of every entry that may be among a row's k best."""
        xp = self.xp
        parts = list(self.resolved)
        if self.r is not None:
            parts.append((self.r, self.c, self.exact(self.r, self.c)))
        if not parts:
            empty = xp.zeros((0,), dtype=xp.int64, device=device(self.kth))
            return empty, empty, xp.zeros((0,), dtype=self.kth.dtype, device=device(self.kth))
        return tuple(xp.concat([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in range(3))


def _dense_rows(e: Any, starts: Any, counts: Any, width: int, pad: Any, *, xp: Any) -> Any:
    """The row-ordered entries ``e`` as a (rows, width) matrix, one row's entries per row (row i's
    start at ``starts[i]``, ``counts[i]`` of them), padded with ``pad``."""
    offsets = xp.arange(width, device=device(e), dtype=starts.dtype)
    where = xp.reshape(xp.minimum(starts[:, None] + offsets[None, :], e.shape[0] - 1), (-1,))
    dense = xp.reshape(xp.take(e, where), (starts.shape[0], width))
    return xp.where(offsets[None, :] < counts[:, None], dense, pad)


def _spread(values: Any, mask: Any, fill: Any, *, xp: Any) -> Any:
    """The 1-D array shaped like ``mask`` holding ``values`` (one per True entry, in order) at its True
    entries and ``fill`` elsewhere: a gather, as the standard has no scatter."""
    place = xp.cumulative_sum(xp.astype(mask, xp.int64)) - 1
    return xp.where(mask, xp.take(values, xp.clip(place, 0, None)), fill)


def _fill_short_rows(
    Qt: Any, X: Any, best_d: Any, best_i: Any, short: Any, q0: int, j0: int, exclude_self: bool, *, xp: Any,
    finite_rows: Callable[..., Any] | None = None,
) -> tuple[Any, Any]:  # fmt: skip
    """Rows with fewer than k neighbours found (a non-finite query, or fewer than k references at a
    finite distance): exact distances to every reference, sorted by (distance, index), NaN last.

    A pair with a non-finite row has a NaN distance where one of its differences is NaN (a NaN, or inf -
    inf of the same sign) and an inf distance otherwise: a test per entry, with no arithmetic. Only pairs
    of finite rows need the exact kernel. The short rows go in batches of about KNN_SHORT_ROWS_ENTRIES
    (row, reference, column) entries. (Row by row, with the exact kernel for every pair: 29 s for 5000
    x 32 float32 rows with a NaN each.)"""
    k, m, d = best_d.shape[1], X.shape[0], X.shape[1]
    dev = device(X)
    index_dtype = best_i.dtype
    (rows,) = xp.nonzero(short)
    rows = xp.astype(rows, index_dtype)
    good_q = (finite_rows or _finite_rows)(Qt, xp=xp)
    good_x = (finite_rows or _finite_rows)(X, xp=xp)
    x_nan = xp.any(xp.isnan(X), axis=1)
    # Finite data whose distances may overflow (4 d largest^2 > max: 1e37 in float32 made every one inf):
    # a power-of-two scale s puts every scaled difference under 1 / sqrt(d); a plain sum of the scaled
    # squares over 2 max s^2, less its relative error of at most (d + 2) eps, is an inf distance.
    finfo = xp.finfo(X.dtype)
    largest = float(xp.max(xp.where(xp.isfinite(X), xp.abs(X), 0.0)))  # eager path: host reads
    largest = max(largest, float(xp.max(xp.where(xp.isfinite(Qt), xp.abs(Qt), 0.0))))
    overflow = X_finite = None
    if 4.0 * d * largest * largest > float(finfo.max) and (d + 2) * float(finfo.eps) < 0.5:
        s = 2.0 ** -(math.frexp(largest)[1] + 1 + math.ceil(math.log2(d) / 2))
        overflow = (s, float(finfo.max) * s * s * 2.0 / (1.0 - (d + 2) * float(finfo.eps)))  # no 2 max: inf
        X_finite = xp.where(xp.isfinite(X), X, 0.0)  # only the overflow test reads it
    cols = xp.arange(m, device=dev, dtype=index_dtype)
    batch = max(1, _config.KNN_SHORT_ROWS_ENTRIES // max(m * d, 1))
    d_parts, i_parts = [], []
    for b0 in range(0, rows.shape[0], batch):  # rare input: a pass over X per batch of rows
        rb = rows[b0 : min(b0 + batch, rows.shape[0])]
        nb = rb.shape[0]
        Qb = xp.take(Qt, rb, axis=0)
        # a pair with a non-finite row: NaN where a difference is (a NaN, inf - inf), else inf
        same_inf = xp.any(xp.isinf(Qb)[:, None, :] & (Qb[:, None, :] == X[None, :, :]), axis=2)
        nan = same_inf | xp.any(xp.isnan(Qb), axis=1)[:, None] | x_nan[None, :]
        dist = xp.where(nan, xp.asarray(xp.nan, dtype=X.dtype, device=dev), xp.inf)
        both = xp.take(good_q, rb)[:, None] & good_x[None, :]
        if overflow is not None:  # pairs whose distance certainly overflows are inf without the kernel
            # (non-finite entries as 0: those pairs are not tested, and inf - inf would warn)
            Qf = xp.where(xp.isfinite(Qb), Qb, 0.0)
            scaled = Qf[:, None, :] * overflow[0] - X_finite[None, :, :] * overflow[0]
            both = both & (xp.sum(scaled * scaled, axis=2) < overflow[1])
        both = xp.reshape(both, (-1,))
        (pairs,) = xp.nonzero(both)
        if pairs.shape[0]:
            pair_rows = xp.take(rb, pairs // m)
            exact = direct_sqdist_pairs(Qt, X, pair_rows, xp.take(cols, pairs % m), xp=xp, finite=True)
            dist = xp.reshape(_spread(exact, both, xp.reshape(dist, (-1,)), xp=xp), (nb, m))
        index = xp.broadcast_to(cols[None, :] + j0, (nb, m))
        if exclude_self:
            mine = cols[None, :] == rb[:, None] + (q0 - j0)
            dist = xp.where(mine, xp.nan, dist)
            index = xp.where(mine, xp.asarray(OWN_ROW_INDEX, dtype=index_dtype, device=dev), index)
        dist, idx = sorted_smallest(dist, index, min(k, m), xp=xp)
        if m < k:  # a Dask block narrower than k: pad, the merge of the blocks drops these
            pad = (nb, k - m)
            dist = xp.concat([dist, xp.full(pad, xp.nan, dtype=dist.dtype, device=dev)], axis=1)
            idx = xp.concat([idx, xp.full(pad, OWN_ROW_INDEX, dtype=index_dtype, device=dev)], axis=1)
        d_parts.append(dist)
        i_parts.append(idx)
    place = xp.cumulative_sum(xp.astype(short, xp.int64)) - 1  # position of each short row in the parts
    take = xp.where(short, place, 0)
    best_d = xp.where(short[:, None], xp.take(_stack_rows(d_parts, xp=xp), take, axis=0), best_d)
    best_i = xp.where(short[:, None], xp.take(_stack_rows(i_parts, xp=xp), take, axis=0), best_i)
    return best_d, best_i


def _merge_ragged(best_d: Any, best_i: Any, rows: Any, dist: Any, index: Any, *, xp: Any) -> tuple[Any, Any]:
    """Each row's k best of its current list plus its new (row, distance, index) entries."""
    tq, k = best_d.shape
    dev = device(best_d)
    own_rows = xp.reshape(xp.broadcast_to(xp.arange(tq, device=dev)[:, None], (tq, k)), (-1,))
    all_r = xp.concat([own_rows, xp.astype(rows, own_rows.dtype)])
    all_d = xp.concat([xp.reshape(best_d, (-1,)), dist])
    all_i = xp.concat([xp.reshape(best_i, (-1,)), index])
    order = xp.argsort(all_i, stable=True)  # then by distance, then by row: (row, distance, index)
    order = xp.take(order, xp.argsort(xp.take(all_d, order), stable=True))
    order = xp.take(order, xp.argsort(xp.take(all_r, order), stable=True))
    starts = xp.searchsorted(xp.take(all_r, order), xp.arange(tq, device=dev, dtype=all_r.dtype))
    picks = xp.take(order, xp.reshape(starts[:, None] + xp.arange(k, device=dev, dtype=starts.dtype), (-1,)))
    return xp.reshape(xp.take(all_d, picks), (tq, k)), xp.reshape(xp.take(all_i, picks), (tq, k))
