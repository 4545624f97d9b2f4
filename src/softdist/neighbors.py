"""Exact k-nearest neighbours in bounded memory, on every backend."""

from __future__ import annotations

import numbers
from typing import Any

from . import _config
from ._backends import backend_for
from ._lib._compat import default_dtype, device
from ._lib._validation import (
    check_distance_dtype,
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
        if exclude_self:
            what = f"{max(available, 0)} other rows in X (exclude_self=True leaves each query's own row out)"
        else:
            what = f"{available} rows in X"
        raise ValueError(f"k = {k} is larger than the {what}")


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
        The queries; any array API array (NumPy, PyTorch, JAX, CuPy, Dask, array-api-strict). Integer
        and boolean inputs are computed in the namespace's default floating dtype.
    X : array, shape (m, d), optional
        The reference points, same library and device as Q. ``None`` means Q against itself.
    k : int
        Neighbours per query, 1 <= k <= m (m - 1 when the query's own row is excluded).
    exclude_self : bool, optional
        With ``X=None`` (default True): leave each query's own row out. Not allowed with an explicit X.
    working_memory : int, optional
        In **bytes**, not MiB as scikit-learn's ``working_memory`` (``64 * 2**20`` for 64 MiB): the
        distance tiles (and their temporaries) at a time; 64 MiB by default on a CPU, a quarter of the
        free memory on a CUDA device. On Dask the blocks are the tiles.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    sqdist : array, shape (nq, k)
        Exact squared distances of the returned pairs (the exact value of the given floats, rounded
        once: the same bits on every backend), in the promoted floating dtype of Q and X. On torch
        tensors that require grad (while autograd records) they are differentiable: on the CPU the
        in-place pruned search picks the indices on detached tensors and the distances are recomputed
        differentiably at them (the same values and indices as without autograd); on GPUs the call
        takes the tiled search.
    indices : array, shape (nq, k)
        Row indices into X, in the namespace's default index dtype. Both sorted by (distance, index):
        ties go to the lower index, identically on the eager CPU backends, JAX and Dask; inf distances come
        after the finite ones and NaN distances last. On GPUs, exact ties among more than the 2k best
        candidates may come back with other indices at the same distance (Notes). float16 and bfloat16
        are ranked by their float32 distances, then rounded: two neighbours whose distances differ in
        float32 but round to one float16 value keep their float32 order, not index order. Dask input
        gives lazy Dask arrays.

    Raises
    ------
    ValueError
        Q or X not 2-D, different numbers of columns, k out of range, ``exclude_self=True`` with an
        explicit X, ``working_memory`` not a positive int, arrays on two devices, Dask arrays of unknown
        size.
    TypeError
        k not an int, ``exclude_self`` not a bool or None, inputs that are not arrays or come from two
        libraries, complex dtypes, extended precision (NumPy's longdouble; float64 at most, as for
        :func:`pairwise_sqdist`).

    See Also
    --------
    pairwise_sqdist : the full distance matrix.
    KNeighborsClassifier : a scikit-learn classifier on these neighbours.

    Notes
    -----
    Queries and references are tiled so that the distance tiles stay within ``working_memory``. Each
    tile is ranked on the centred expansion of :func:`pairwise_sqdist`, and the candidates are then
    recomputed *exactly*: each difference is split into an exact sum of two floats by Knuth's TwoSum
    [1]_, its square into an exact sum of two floats by Dekker's product with Veltkamp's split [2]_, and
    the d terms are added in double-float arithmetic in one fixed pairwise order (pairs scaled by powers
    of two where they would overflow or underflow). The result is the exact squared distance rounded
    once, unless it lies within a relative ~2**-44 (float32) / ~2**-98 (float64) of a rounding boundary,
    where it may be one ulp off -- identically on every backend, since the operation sequence is fixed.
    The exact lists are merged by (distance, index), so ties fall by index everywhere and a duplicate of
    a query comes back at exactly 0.0.

    *Pruning on eager CPU backends* (NumPy, PyTorch on the CPU, array-api-strict): the expansion, centred
    at c (each column's median over a sample of the references, so one far row does not move it) and run
    on data scaled by a power of two that cannot overflow, has an error of at most ``b = 8 eps sqrt(d + 2)
    (|q - c|^2 + |x - c|^2) + u`` (u: an absolute term for underflow) for the pair of query q and
    reference x, so ``L = E - b`` and ``U = E + b``
    bound the exact distance. A sample of max(2k, min(1024, m / 16)) references spread over X (a
    golden-ratio sequence, so sorted or clustered input gives no worse a start) gives each query a first
    k-th smallest upper value ``U_q``; every tile then keeps only the entries with ``L <= U_q`` (one
    comparison per entry: x's share of b is folded into the product), and ``U_q`` tightens from the kept
    entries (after each tile, and inside one once 4k entries a query wait). An entry whose exact distance
    could be among the k smallest, tie with the k-th, or round to it always passes: no neighbour and no
    tie is lost, and one comparison pass per tile replaces a top-k selection. Only the entries left
    under the final ``U_q`` are recomputed exactly. A float32 query tile whose sample shows rows crowded
    by b (rows far from c next to their neighbours' distances: far clusters, near-duplicates) and less
    so in float64 is screened on a float64 expansion. Exact ties (duplicate or all-equal rows) all pass,
    so a query left with more than k + 8 entries within its bound is resolved at once: those entries get
    exact distances, their k best by (distance, index) are kept, and the k-th exact distance ``d_q``
    then bounds the later (higher-index) references, which only count below it: ``L`` under ``d_q``,
    none when ``d_q`` is 0. All-equal or few-distinct data thus costs about what random data
    does, not one exact distance per pair. On GPUs each tile instead selects its best 2k
    by the library's top-k, and the exact lists are merged; there, when more than 2k references lie at or
    within rounding of a query's k-th distance, exact ties may come back with other indices than the
    lowest (the distances are the same), and where the expansion cannot resolve a query's neighbours (a
    tight cluster far from the others in float32) near rather than nearest ones. On JAX (static shapes,
    also under ``jax.jit``) each query keeps its best k + 8 (``_config.KNN_JAX_SCREEN_EXTRA``) by a
    float32 product of the data centred at the sample's column medians, gets their exact distances, and
    the answer stands only if its k-th distance lies strictly under a lower bound, from the float32
    rounding error (per pair), of every reference left out; otherwise its query tile is ranked by direct
    differences (error relative to the distance), certified the same way, and failing that by exact
    distances to every reference (slow), so the result is the eager backends' one. Dask runs each (query
    block,
    reference block) pair as one task (the pruned search on the chunks; adjacent reference chunks grouped up
    to 64 MiB) and merges the lists in a tree, so it runs on a ``distributed`` cluster.

    References
    ----------
    .. [1] D. E. Knuth, *The Art of Computer Programming*, vol. 2, *Seminumerical Algorithms*, 3rd ed.,
       Addison-Wesley, 1997, sec. 4.2.2 (TwoSum, the error-free sum of two floating-point numbers).
    .. [2] T. J. Dekker, "A floating-point technique for extending the available precision",
       *Numerische Mathematik* 18, 224-242, 1971 (the exact product by splitting, and double-float
       addition).

    Examples
    --------
    >>> import numpy as np, softdist
    >>> X = np.array([[0.0], [1.0], [3.0], [4.5]])
    >>> sqdist, indices = softdist.knn(X, k=2)  # each point's 2 nearest other points
    >>> sqdist
    array([[ 1.  ,  9.  ],
           [ 1.  ,  4.  ],
           [ 2.25,  4.  ],
           [ 2.25, 12.25]])
    >>> indices
    array([[1, 2],
           [0, 2],
           [3, 1],
           [2, 1]])

    Ties go to the lower index:

    >>> softdist.knn(np.array([[0.0]]), np.array([[1.0], [-1.0], [2.0]]), k=2)[1]
    array([[0, 1]])
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
        raise ValueError(f"working_memory must be a positive int (bytes); got {working_memory!r}")
    dtype = float_dtype_of({"Q": Q, "X": X}, xp)
    check_distance_dtype({"Q": Q, "X": X}, dtype, "knn", xp)
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
