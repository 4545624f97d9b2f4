"""Assertions that check library, device, dtype and shape before values."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._harness import Backend


def assert_same_kind(actual: Any, like: Any, *, dtype: Any = None, what: str = "result") -> None:
    """``actual`` is from the same array namespace and on the same device as ``like``."""
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

    Returns ``actual`` as NumPy for further checks.
    """
    assert_same_kind(actual, like, dtype=dtype)
    assert tuple(actual.shape) == expected.shape, f"shape {tuple(actual.shape)}, expected {expected.shape}"
    got = backend.to_numpy(actual)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=rtol, atol=atol)
    return got
