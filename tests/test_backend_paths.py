"""Every backend-specific path in softdist._lib._backends gives the generic path's answer."""

from __future__ import annotations

import numpy as np
import pytest

import softdist
from softdist._agnostic import distances as generic
from softdist._lib import _backends
from softdist.testing import hard_datasets, reference_sqdist


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_operands_equal_generic(dtype, rng):
    import array_api_compat.numpy as xp

    A = (rng.standard_normal((50, 9)) + 300).astype(dtype)
    B = (rng.standard_normal((40, 9)) + 300).astype(dtype)
    mean = generic.column_mean(A, B, xp=xp)
    fast = _backends.numpy_augmented_operands(A, B, mean, xp=xp)
    slow = generic.augmented_operands(A, B, mean, xp=xp)
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(f, s, rtol=10 * np.finfo(dtype).eps)
    with_fast = generic.pairwise_sqdist(A, B, xp=xp, operands=_backends.numpy_augmented_operands)
    np.testing.assert_allclose(with_fast, generic.pairwise_sqdist(A, B, xp=xp), rtol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
def test_jax_compiled_path_equals_generic_eager(symmetric, rng):
    jax = pytest.importorskip("jax")
    from array_api_compat import array_namespace

    A64, B64 = hard_datasets(rng, n=60, m=50, d=8)["tight-clusters"]  # many flagged entries
    A = jax.numpy.asarray(A64.astype(np.float32))
    B = None if symmetric else jax.numpy.asarray(B64.astype(np.float32))
    xp = array_namespace(A)
    fast = np.asarray(_backends.jax_pairwise_sqdist(A, B, xp=xp))
    slow = np.asarray(generic.pairwise_sqdist(A, B, xp=xp))  # generic eager refinement
    exact = reference_sqdist(A64.astype(np.float32), None if symmetric else B64.astype(np.float32))
    nz = exact > 0
    for got in (fast, slow):
        assert np.max(np.abs(got - exact)[nz] / exact[nz]) < 1e-4
        assert np.all(got[~nz] == 0)


def test_dask_path_equals_generic(rng):
    da = pytest.importorskip("dask.array")
    import array_api_compat.numpy as xnp

    A64, B64 = hard_datasets(rng, n=60, m=50, d=8)["near-duplicates-1e4"]
    A = da.from_array(A64, chunks=(16, 4))
    B = da.from_array(B64, chunks=(20, 4))
    got = softdist.pairwise_sqdist(A, B).compute()
    np.testing.assert_allclose(got, generic.pairwise_sqdist(A64, B64, xp=xnp), rtol=1e-10)
    got_self = softdist.pairwise_sqdist(A).compute()
    np.testing.assert_allclose(got_self, generic.pairwise_sqdist(A64, None, xp=xnp), rtol=1e-10)
    np.testing.assert_array_equal(got_self, got_self.T)
