"""Exact k-nearest neighbours in bounded memory, on every backend."""

from __future__ import annotations

import numbers
from typing import Any

from . import _config
from ._backends import backend_for
from ._lib._compat import default_dtype, device
from ._lib._validation import (
    check_known_shapes,
    check_matrix,
    check_same_features,
    float_dtype_of,
    namespace_of,
    working_dtype,
)
from .distances import _sqdist

__all__ = ["knn"]


def _check_k(k: Any, available: int, exclude_self: bool) -> None:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise TypeError(f"k must be an int; got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if k > available:
        what = "rows in X minus the query itself (exclude_self=True)" if exclude_self else "rows in X"
        raise ValueError(f"k = {k} is larger than the {available} {what}")


def _tiles(nq: int, m: int, itemsize: int, working_memory: int) -> tuple[int, int]:
    """Query rows and reference rows per tile: wide reference tiles (fewer merges), at most 512 queries
    (``_config.KNN_MAX_TILE_ROWS``)."""
    entries = max(1, working_memory // (itemsize * _config.KNN_ARRAYS_PER_TILE_ENTRY))
    width = max(1, min(m, _config.KNN_TILE_COLUMNS_FOR_ROWS))
    rows = max(1, min(nq, _config.KNN_MAX_TILE_ROWS, entries // width))
    cols = max(1, min(m, entries // rows))
    return rows, cols


def knn(
    Q: Any,
    X: Any | None = None,
    /,
    *,
    k: int,
    exclude_self: bool | None = None,
    working_memory: int | None = None,
    xp: Any | None = None,
) -> tuple[Any, Any]:
    """The k nearest rows of X (squared Euclidean) for every row of Q, without the full distance matrix.

    Parameters
    ----------
    Q : array, shape (nq, d)
    X : array, shape (m, d), optional
        ``None`` means Q against itself.
    k : int
        1 <= k <= m (m - 1 when the query's own row is excluded).
    exclude_self : bool, optional
        With ``X=None`` (default True): leave each query's own row out. Not allowed with an explicit X.
    working_memory : int, optional
        Bytes of distance tiles at a time (default 64 MiB; on a GPU a quarter of the free memory).
    xp : namespace, optional

    Returns
    -------
    sqdist : array (nq, k)
        Exact squared distances of the returned pairs (the exact value of the given floats, rounded
        once: the same bits on every backend), in the promoted floating dtype of Q and X.
    indices : array (nq, k)
        Row indices into X, in the namespace's default index dtype. Both sorted by (distance, index):
        ties go to the lower index, identically on every backend; NaN distances sort last.
    """
    xp = namespace_of({"Q": Q, "X": X}, xp)
    check_known_shapes({"Q": Q, "X": X})  # k against the row count, row offsets of every block
    check_matrix("Q", Q)
    if exclude_self is not None and not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be True, False or None; got {exclude_self!r}")
    if X is not None:
        check_matrix("X", X)
        check_same_features("Q", Q, "X", X)
        if exclude_self:
            raise ValueError("exclude_self applies to X=None (Q against itself) only")
    self_mode = X is None
    exclude = bool(self_mode and (exclude_self is None or exclude_self))
    X_ = Q if self_mode else X
    nq, m = Q.shape[0], X_.shape[0]
    _check_k(k, m - int(exclude), exclude)
    if working_memory is not None and (
        not isinstance(working_memory, numbers.Integral)
        or isinstance(working_memory, bool)
        or working_memory < 1
    ):
        raise ValueError(f"working_memory must be a positive number of bytes; got {working_memory!r}")
    dtype = float_dtype_of({"Q": Q, "X": X}, xp)
    work = working_dtype(dtype, xp)
    Qw, Xw = xp.astype(Q, work, copy=False), xp.astype(X_, work, copy=False)
    index_dtype = default_dtype(xp, "indexing", device=device(Q))
    if nq == 0:
        empty = xp.zeros((0, k), dtype=dtype, device=device(Q))
        return empty, xp.zeros((0, k), dtype=index_dtype, device=device(Q))
    backend = backend_for(xp)
    memory = working_memory or backend.default_working_memory(Q, cpu_default=_config.KNN_WORKING_MEMORY)
    rows, cols = _tiles(nq, m, xp.finfo(work).bits // 8, memory)
    dist, index = backend.knn(
        Qw, Xw, k=k, exclude_self=exclude, tile_rows=rows, tile_cols=cols, sqdist=_sqdist, dtype=work,
        index_dtype=index_dtype, xp=xp,
    )  # fmt: skip
    return xp.astype(dist, dtype, copy=False), xp.astype(index, index_dtype, copy=False)
