"""Pairwise squared Euclidean and Euclidean distances on any array API library."""

from __future__ import annotations

from typing import Any

from ._agnostic import distances as _generic
from ._backends import backend_for
from ._lib._compat import device
from ._lib._validation import (
    check_distance_dtype,
    check_known_shapes,
    check_matrix,
    check_same_features,
    float_dtype_of,
    namespace_of,
    working_dtype,
)

__all__ = ["pairwise_distances", "pairwise_sqdist"]


def _validated(A: Any, B: Any | None, xp: Any) -> tuple[Any, Any, Any, Any]:
    xp = namespace_of({"A": A, "B": B}, xp)
    check_known_shapes({"A": A, "B": B})  # row offsets, the centre and the diagonal need the sizes
    check_matrix("A", A)
    if B is not None:
        check_matrix("B", B)
        check_same_features("A", A, "B", B)
    dtype = float_dtype_of({"A": A, "B": B}, xp)
    check_distance_dtype({"A": A, "B": B}, dtype, "pairwise_sqdist", xp)
    return xp, dtype, A, B


def _sqdist(A: Any, B: Any | None, *, dtype: Any, xp: Any) -> Any:
    n = A.shape[0]
    m = n if B is None else B.shape[0]
    if n == 0 or m == 0 or A.shape[1] == 0:
        return xp.zeros((n, m), dtype=dtype, device=device(A))
    work = working_dtype(dtype, xp)
    A = xp.astype(A, work, copy=False)
    B = None if B is None else xp.astype(B, work, copy=False)
    D = backend_for(xp).pairwise_sqdist(A, B, dtype=work, xp=xp)
    return xp.astype(D, dtype, copy=False)


def pairwise_sqdist(A: Any, B: Any | None = None, /, *, xp: Any | None = None) -> Any:
    """Squared Euclidean distances between the rows of A and the rows of B.

    ``D[i, j] = sum((A[i] - B[j])**2)``, computed by one matrix product on centred data plus an exact
    recomputation of the entries that product cannot resolve, so it is as fast as ``A @ B.T`` on typical
    data and accurate where the textbook expansion ``|a|^2 + |b|^2 - 2 a.b`` loses every digit (data with
    a large common offset, near-duplicates, tight clusters far from the origin).

    Parameters
    ----------
    A : array, shape (n, d)
        Any array API array (NumPy, PyTorch, JAX, CuPy, Dask, array-api-strict). Real floating dtypes
        are kept; integer and boolean inputs are computed in the namespace's default floating dtype;
        float16/bfloat16 are computed in float32 and rounded to their own dtype.
    B : array, shape (m, d), optional
        Same library and device as A. ``None`` means A against itself; the result is then exactly
        symmetric with an exactly zero diagonal.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    D : array, shape (n, m)
        In A's library, on A's device, in the inputs' (promoted) floating dtype. Never negative; any
        row of A identical to a row of B gives exactly 0.0. On eager backends every entry is within
        relative 1e-4 (float32) / 1e-10 (float64) of the exact distance of the given inputs; under
        ``jax.jit`` the first n + m suspect entries are refined and the rest keep the centred-expansion
        bound ``8 eps sqrt(d + 2) (|a - mean|^2 + |b - mean|^2)``. A NaN in a row gives NaN in that
        row's (column's) entries only; an inf coordinate gives inf against finite rows. Dask input
        gives a lazy Dask array with one block per pair of row blocks.

    Raises
    ------
    ValueError
        A or B not 2-D, different numbers of columns, arrays on two devices, Dask arrays of unknown
        size, arrays without computable data (torch meta, sparse or nested tensors, masked arrays).
    TypeError
        A or B not an array, arrays from two libraries, ``xp`` that is not their namespace, complex
        dtypes, extended precision (NumPy's longdouble: unlike the softmax functions, the distance
        functions support floats up to float64 only; cast first).

    See Also
    --------
    pairwise_distances : the Euclidean distances, ``sqrt`` of these.
    knn : the k nearest rows without the n x m matrix.

    Notes
    -----
    Two steps (``softdist._agnostic.distances``):

    1. *Centred expansion.* Both inputs are centred on their common column mean ``c`` and the
       expansion ``|a - c|^2 + |b - c|^2 - 2 (a - c).(b - c)`` is evaluated in one matrix product (the
       squared norms ride along as two extra columns of the operands). Distances are translation
       invariant, the rounding error of the product scales with the norms it multiplies [1]_, and for
       data whose offset dominates its spread ``a - c`` is computed exactly (Sterbenz's lemma: ``x - y``
       is exact in floating point when ``y/2 <= x <= 2y`` [2]_), so the error now scales with the
       data's spread rather than its offset.
    2. *Refinement of small entries.* The expansion's absolute error is at most about
       ``eps sqrt(d) (|a - c|^2 + |b - c|^2)``; an entry below ``tau (|a - c|^2 + |b - c|^2)``, with
       ``tau = 4 eps sqrt(d + 2) / rtol`` (rtol the promised 1e-4 or 1e-10), could be dominated by
       that error (cancellation) and is recomputed by direct differences of the original rows, as the
       exact squared distance rounded once (the same routine as :func:`knn`). Only rows whose minimum
       falls below a per-row bound are examined entry by entry, so well-separated data pays one
       read-only pass. Data made of k tight clusters far apart has about n m / k such entries,
       recomputed in bounded-memory chunks.

    References
    ----------
    .. [1] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM, 2002:
       rounding errors of inner products and matrix products (ch. 3), cancellation (sec. 1.7).
    .. [2] P. H. Sterbenz, *Floating-Point Computation*, Prentice-Hall, 1974 (Sterbenz's lemma, the
       exact subtraction of nearby floating-point numbers).

    Examples
    --------
    >>> import numpy as np, softdist
    >>> A = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> softdist.pairwise_sqdist(A)
    array([[ 0., 25.],
           [25.,  0.]])
    >>> softdist.pairwise_sqdist(A, np.array([[0.0, 1.0]]))
    array([[ 1.],
           [18.]])

    Points one unit apart at a common offset of 1e4 in float32, where the textbook expansion gives
    nonsense:

    >>> X = np.array([[1e4, 1e4], [1e4 + 1, 1e4]], dtype=np.float32)
    >>> softdist.pairwise_sqdist(X)
    array([[0., 1.],
           [1., 0.]], dtype=float32)
    >>> sq = (X * X).sum(1)
    >>> bool(np.all(sq[:, None] + sq[None, :] - 2 * X @ X.T == [[0, 1], [1, 0]]))
    False
    """
    xp, dtype, A, B = _validated(A, B, xp)
    return _sqdist(A, B, dtype=dtype, xp=xp)


def pairwise_distances(A: Any, B: Any | None = None, /, *, xp: Any | None = None) -> Any:
    """Euclidean distances between the rows of A and the rows of B, ``sqrt(pairwise_sqdist(A, B))``.

    Parameters
    ----------
    A : array, shape (n, d)
        Any array API array; dtype rules as for :func:`pairwise_sqdist`.
    B : array, shape (m, d), optional
        Same library and device as A; ``None`` means A against itself.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    D : array, shape (n, m)
        In A's library, device and (promoted) floating dtype; the same guarantees as
        :func:`pairwise_sqdist` (the relative error halves under the square root). NaN stays NaN.
        Differentiable on torch and JAX with a zero (not NaN) gradient at zero distance.

    Raises
    ------
    ValueError, TypeError
        As for :func:`pairwise_sqdist`.

    See Also
    --------
    pairwise_sqdist : the squared distances, with the algorithm and its references.

    Examples
    --------
    >>> import numpy as np, softdist
    >>> softdist.pairwise_distances(np.array([[0.0, 0.0], [3.0, 4.0]]))
    array([[0., 5.],
           [5., 0.]])
    """
    xp, dtype, A, B = _validated(A, B, xp)
    return _generic.safe_sqrt(_sqdist(A, B, dtype=dtype, xp=xp), xp=xp)
