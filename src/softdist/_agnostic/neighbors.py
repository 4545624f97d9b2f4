"""Exact k-nearest neighbours in bounded memory, written once against the array API standard.

Queries and references are both tiled. For each (query tile, reference tile) the accurate distance
expansion ranks the tile, the best ``candidates`` columns per row are recomputed exactly by direct
differences, and the exact lists are merged by (distance, index). Merging exact values makes ties break by
the lower index identically everywhere, and a duplicate of a query comes back at exactly 0.0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _config
from .._lib._compat import argpartition, default_dtype, device
from .distances import column_mean, direct_sqdist_pairs, finite_rows, overflow_scale

Select = Callable[[Any, int], Any]
# Index given to a query's own row while it is carried through a merge: past every real index (and
# exact in int32 and in the float64 that carries indices between Dask blocks).
OWN_ROW_INDEX = 2**31 - 1


def select_smallest(D: Any, count: int, *, xp: Any) -> Any:
    """Column indices of ``count`` smallest entries per row (unordered); NaN counts as +inf."""
    if count >= D.shape[1]:
        return xp.broadcast_to(xp.arange(D.shape[1], device=device(D))[None, :], D.shape)
    D = xp.where(xp.isnan(D), xp.inf, D)
    return argpartition(D, count - 1, axis=1, xp=xp)[:, :count]


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
# Bound of the centred expansion against the exact distance (README, "Accuracy of the distances"):
# |D_expansion - D_exact| <= EXPANSION_BOUND * eps * sqrt(d + 2) * (|q - mean|^2 + |x - mean|^2),
# with EXPANSION_BOUND and the first tile's width (KNN_FIRST_TILE_COLUMNS) in softdist._config.


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
) -> tuple[Any, Any]:
    """Same result as :func:`knn` for eager backends, without a top-k selection on every tile.

    The first KNN_FIRST_TILE_COLUMNS references give each query an upper bound tau on its k-th distance
    (exact values of a top-2k selection). Every tile then keeps only the entries whose expansion value is
    within the expansion's error bound of the current tau — no true neighbour and no tie is ever dropped
    — and recomputes just those exactly. After the first tiles almost nothing passes: one comparison pass
    per tile instead of a selection. ``row_offset``/``col_offset`` place Q and X in a larger problem (Dask
    blocks): they decide which entry is a query's own row, and are added to the returned indices.
    """
    nq, m, d = Q.shape[0], X.shape[0], Q.shape[1]
    # The expansion (for pruning only) runs on finite rows at a power-of-two scale that cannot overflow;
    # rows with a NaN or inf get a NaN norm, so no expansion entry of theirs passes a threshold, and
    # their exact values are filled in at the end. Exact values come from the caller's floats.
    scale = float(overflow_scale(X, Q, xp=xp))  # eager path: one host read
    in_range = scale == 1.0  # magnitudes within a quarter of the threshold: no pair needs scaling down
    good_q, good_x = finite_rows(Q, xp=xp), finite_rows(X, xp=xp)
    mean = column_mean(X * scale, None, xp=xp)
    Q_aug, X_aug, rq, rx = operands(
        xp.where(good_q[:, None], Q * scale, mean), xp.where(good_x[:, None], X * scale, mean), mean, xp=xp
    )
    rq, rx = xp.where(good_q, rq, xp.nan), xp.where(good_x, rx, xp.nan)
    Q_aug = xp.concat([Q_aug[:, :d], rq[:, None], Q_aug[:, d + 1 :]], axis=1)
    X_aug = xp.concat([X_aug[:, : d + 1], rx[:, None]], axis=1)
    eps = xp.finfo(Q.dtype).eps
    rx_max = xp.max(xp.where(good_x, rx, 0.0))
    bound = _config.EXPANSION_BOUND * eps * (d + 2) ** 0.5 * (rq + rx_max)
    first = min(m, max(2 * k, _config.KNN_FIRST_TILE_COLUMNS))
    index_dtype = default_dtype(xp, "indexing", device=device(Q))
    out_d, out_i = [], []
    for q0 in range(0, nq, tile_rows):
        q1 = min(q0 + tile_rows, nq)
        Qt, Qa = Q[q0:q1, ...], Q_aug[q0:q1, ...]

        def expansion(j0: int, j1: int, Qa: Any = Qa) -> Any:  # tile values from the shared operands
            return Qa @ xp.matrix_transpose(X_aug[j0:j1, ...])

        seed_d, _ = tile_neighbours(
            Qt, X[:first, ...], q0 + row_offset, col_offset, k=k, exclude_self=exclude_self, xp=xp,
            select=select, sqdist=lambda a, b: expansion(0, first),
        )  # fmt: skip
        seed_tau = (
            seed_d[:, -1]
            if seed_d.shape[1] == k
            else xp.full(q1 - q0, xp.inf, dtype=Q.dtype, device=device(Q))
        )
        seed_tau = xp.where(xp.isnan(seed_tau), xp.inf, seed_tau)
        best_d = xp.full((q1 - q0, k), xp.inf, dtype=Q.dtype, device=device(Q))
        best_i = xp.full((q1 - q0, k), -1, dtype=index_dtype, device=device(Q))
        for j0 in range(0, m, tile_cols):
            j1 = min(j0 + tile_cols, m)
            D = expansion(j0, j1)
            limit = xp.minimum(seed_tau, best_d[:, -1]) * scale * scale + bound[q0:q1]
            keep = D <= limit[:, None]
            own = (
                own_entries(q1 - q0, j1 - j0, q0 + row_offset, j0 + col_offset, xp=xp, dev=device(D))
                if exclude_self
                else None
            )
            if own is not None:
                keep = keep & ~own
            # 1-D nonzero: NumPy's 2-D nonzero is ~10x slower per entry (13 ms vs 1.3 ms a 512 x 8192 tile).
            (flat,) = xp.nonzero(xp.reshape(keep, (-1,)))
            if flat.shape[0] == 0:
                continue
            r, c = flat // (j1 - j0), xp.astype(flat % (j1 - j0), index_dtype) + j0
            # kept entries are between finite rows (others have NaN expansion values)
            exact = direct_sqdist_pairs(Qt, X, r, c, xp=xp, finite=True, in_range=in_range, eager=True)
            best_d, best_i = _merge_ragged(best_d, best_i, r, exact, c + col_offset, xp=xp)
        short = xp.any(best_i < 0, axis=1)
        if bool(xp.any(short)):  # inf and NaN distances pass no threshold: those rows in full
            best_d, best_i = _fill_short_rows(
                Qt, X, best_d, best_i, short, q0 + row_offset, col_offset, exclude_self, xp=xp
            )
        out_d.append(best_d)
        out_i.append(best_i)
    return _stack_rows(out_d, xp=xp), _stack_rows(out_i, xp=xp)


def _fill_short_rows(
    Qt: Any, X: Any, best_d: Any, best_i: Any, short: Any, q0: int, j0: int, exclude_self: bool, *, xp: Any
) -> tuple[Any, Any]:
    """Rows with fewer than k neighbours found (a non-finite query, or fewer than k references at a
    finite distance): exact distances to every reference, sorted by (distance, index), NaN last."""
    k, m = best_d.shape[1], X.shape[0]
    (rows,) = xp.nonzero(short)
    index_dtype = best_i.dtype
    cols = xp.arange(m, device=device(X), dtype=index_dtype)
    d_rows, i_rows = [], []
    for r in rows:  # rare: one pass over X each
        r = int(r)
        exact = direct_sqdist_pairs(Qt, X, xp.full(m, r, dtype=index_dtype, device=device(X)), cols, xp=xp)
        index = cols + j0
        if exclude_self:
            mine = cols == q0 + r - j0
            exact = xp.where(mine, xp.nan, exact)
            index = xp.where(mine, xp.asarray(OWN_ROW_INDEX, dtype=index_dtype, device=device(X)), index)
        dist, idx = sorted_smallest(exact[None, :], index[None, :], min(k, m), xp=xp)
        if m < k:  # a Dask block narrower than k: pad, the merge of the blocks drops these
            pad = (1, k - m)
            dist = xp.concat([dist, xp.full(pad, xp.nan, dtype=dist.dtype, device=device(X))], axis=1)
            idx = xp.concat([idx, xp.full(pad, OWN_ROW_INDEX, dtype=index_dtype, device=device(X))], axis=1)
        d_rows.append(dist[0, ...])
        i_rows.append(idx[0, ...])
    place = xp.cumulative_sum(xp.astype(short, xp.int64)) - 1  # position of each short row in d_rows
    take = xp.where(short, place, 0)
    best_d = xp.where(short[:, None], xp.take(xp.stack(d_rows), take, axis=0), best_d)
    best_i = xp.where(short[:, None], xp.take(xp.stack(i_rows), take, axis=0), best_i)
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
