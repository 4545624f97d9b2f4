"""Exact k-nearest neighbours in bounded memory, on every backend."""

from __future__ import annotations

import functools
import numbers
from typing import Any

from ._agnostic import distances as _distances
from ._agnostic import neighbors as _generic
from ._lib import _backends
from ._lib._compat import default_dtype, device, is_dask_namespace, is_jax_namespace, is_numpy_namespace
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

DEFAULT_WORKING_MEMORY = 64 * 2**20  # bytes of distance tiles (and their temporaries) at a time, on a CPU
# A tile's temporaries: the distances, the refinement's masks and the selection's copy.
BYTES_PER_TILE_ENTRY = 4


def _check_k(k: Any, available: int, exclude_self: bool) -> None:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise TypeError(f"k must be an int; got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if k > available:
        what = "rows in X minus the query itself (exclude_self=True)" if exclude_self else "rows in X"
        raise ValueError(f"k = {k} is larger than the {available} {what}")


def _tiles(nq: int, m: int, itemsize: int, working_memory: int) -> tuple[int, int]:
    """Query rows and reference rows per tile: wide reference tiles (fewer merges), at most 512 queries."""
    entries = max(1, working_memory // (itemsize * BYTES_PER_TILE_ENTRY))
    rows = max(1, min(nq, 512, entries // max(1, min(m, 1024))))
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
    if is_dask_namespace(xp):
        dist, index = _backends.dask_knn(Qw, Xw, k=k, exclude_self=exclude, index_dtype=index_dtype)
        return xp.astype(dist, dtype), index
    memory = working_memory or _backends.default_working_memory(Q, xp=xp, cpu_default=DEFAULT_WORKING_MEMORY)
    rows, cols = _tiles(nq, m, xp.finfo(work).bits // 8, memory)
    tiles = {"k": k, "exclude_self": exclude, "tile_rows": rows, "tile_cols": cols}
    select = _backends.smallest_selector(xp)
    if is_jax_namespace(xp):  # one compiled tile body for every query tile (see _backends.jax_knn)
        run = functools.partial(_backends.jax_knn, sqdist=_sqdist, dtype=work, **tiles)
    elif _backends.knn_pruning_applies(Q, xp=xp):
        operands = (
            _backends.numpy_augmented_operands if is_numpy_namespace(xp) else _distances.augmented_operands
        )
        run = functools.partial(_generic.knn_pruned, operands=operands, select=select, **tiles)
    else:
        sqdist = functools.partial(_sqdist, dtype=work, xp=xp)
        run = functools.partial(_generic.knn, sqdist=sqdist, select=select, **tiles)
    with _backends.highest_matmul_precision(xp):
        dist, index = run(Qw, Xw, xp=xp)
    return xp.astype(dist, dtype, copy=False), xp.astype(index, index_dtype, copy=False)
