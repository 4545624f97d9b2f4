"""Pairwise squared Euclidean and Euclidean distances on any array API library."""

from __future__ import annotations

from typing import Any

from ._agnostic import distances as _generic
from ._backends import backend_for
from ._lib._compat import device
from ._lib._validation import (
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

    Parameters
    ----------
    A : array, shape (n, d)
        Any array API array (NumPy, PyTorch, JAX, CuPy, Dask, array-api-strict). Integer and boolean
        inputs are computed in the namespace's default floating dtype.
    B : array, shape (m, d), optional
        Same library and device as A. ``None`` means A against itself; the result is then exactly
        symmetric with an exactly zero diagonal.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    array, shape (n, m)
        In A's library, on A's device, in the inputs' (promoted) floating dtype. Never negative; any
        row of A identical to a row of B gives exactly 0.0. On eager backends every entry is within
        relative 1e-4 (float32) / 1e-10 (float64) of the exact distance; under ``jax.jit`` the first
        n + m suspect entries are refined and the rest keep the centred-expansion bound.
    """
    xp, dtype, A, B = _validated(A, B, xp)
    return _sqdist(A, B, dtype=dtype, xp=xp)


def pairwise_distances(A: Any, B: Any | None = None, /, *, xp: Any | None = None) -> Any:
    """Euclidean distances, ``sqrt(pairwise_sqdist(A, B))``, with a zero (not NaN) gradient at 0.

    Same parameters, guarantees and return conventions as :func:`pairwise_sqdist`.
    """
    xp, dtype, A, B = _validated(A, B, xp)
    return _generic.safe_sqrt(_sqdist(A, B, dtype=dtype, xp=xp), xp=xp)
