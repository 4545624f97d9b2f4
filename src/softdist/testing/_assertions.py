"""Assertions that check library, device, dtype and shape before values."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._harness import Backend


def assert_same_kind(actual: Any, like: Any, *, dtype: Any = None, what: str = "result") -> None:
    """Assert that ``actual`` is from the same array namespace and on the same device as ``like`` (and
    has ``dtype``, when given); ``what`` names it in the message.

    Examples
    --------
    >>> import numpy as np
    >>> from softdist.testing import assert_same_kind
    >>> assert_same_kind(np.zeros(2, np.float32), np.ones(3), dtype=np.float32)
    """
    from array_api_compat import array_namespace, device

    got_xp, want_xp = array_namespace(actual), array_namespace(like)
    assert got_xp is want_xp, f"{what} is from {got_xp.__name__}, expected {want_xp.__name__}"
    assert device(actual) == device(like), f"{what} is on {device(actual)!r}, expected {device(like)!r}"
    if dtype is not None:
        assert actual.dtype == dtype, f"{what} has dtype {actual.dtype}, expected {dtype}"


def assert_matches_reference(
    backend: Backend,
    actual: Any,
    expected: np.ndarray,
    *,
    like: Any,
    dtype: Any,
    rtol: float,
    atol: float = 0.0,
) -> np.ndarray:
    """Check namespace, device, dtype and shape of ``actual``, then its values against a NumPy reference.

    Parameters
    ----------
    backend : Backend
        The backend ``actual`` was computed on (it converts it to NumPy).
    actual : array
        The result under test.
    expected : numpy.ndarray
        The independent reference.
    like : array
        An input of the call: ``actual`` must share its namespace and device.
    dtype : dtype
        The dtype ``actual`` must have.
    rtol, atol : float
        As for ``numpy.testing.assert_allclose``, against ``expected`` in float64.

    Returns
    -------
    numpy.ndarray
        ``actual`` as NumPy, for further checks.

    Examples
    --------
    >>> import numpy as np
    >>> from softdist.testing import assert_matches_reference, backend_by_name
    >>> x = np.array([1.0, 2.0])
    >>> assert_matches_reference(backend_by_name("numpy"), x * 2, np.array([2.0, 4.0]), like=x,
    ...                          dtype=np.float64, rtol=1e-15)
    array([2., 4.])
    """
    assert_same_kind(actual, like, dtype=dtype)
    assert tuple(actual.shape) == expected.shape, f"shape {tuple(actual.shape)}, expected {expected.shape}"
    got = backend.to_numpy(actual)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=rtol, atol=atol)
    return got
