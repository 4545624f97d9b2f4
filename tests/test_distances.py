"""pairwise_sqdist and pairwise_distances on every backend, against the independent NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import RTOL

import softdist
from softdist.testing import (
    Backend,
    assert_matches_reference,
    hard_datasets,
    reference_distances,
    reference_sqdist,
)


def _expansion_bound(A: np.ndarray, B: np.ndarray, dtype: str) -> np.ndarray:
    """The documented jit bound: 4 eps sqrt(d + 2) (|a - mean|^2 + |b - mean|^2) / 0.5 safety margin."""
    mean = np.concatenate([A, B]).mean(axis=0)
    ra = ((A - mean) ** 2).sum(1)
    rb = ((B - mean) ** 2).sum(1)
    eps = np.finfo(dtype).eps
    return 8 * eps * math.sqrt(A.shape[1] + 2) * (ra[:, None] + rb[None, :])


class TestPairwiseSqdist:
    def test_matches_reference(self, backend: Backend, float_dtype: str, rng: np.random.Generator):
        A_np = rng.standard_normal((37, 5)).astype(float_dtype)
        B_np = rng.standard_normal((23, 5)).astype(float_dtype)
        A, B = backend.asarray(A_np), backend.asarray(B_np)
        D = backend.call(softdist.pairwise_sqdist, A, B)
        assert_matches_reference(
            backend, D, reference_sqdist(A_np, B_np), like=A,
            dtype=backend.dtype(float_dtype), rtol=RTOL[float_dtype],
        )  # fmt: skip
        np.testing.assert_array_equal(backend.to_numpy(A), A_np)  # inputs untouched
        np.testing.assert_array_equal(backend.to_numpy(B), B_np)

    @pytest.mark.parametrize(
        "dataset",
        ["centred", "offset-1e+03", "offset-1e+05", "pixels-0-255", "near-duplicates-1e4",
         "tight-clusters"],
    )  # fmt: skip
    def test_accuracy_on_hard_data(
        self, backend: Backend, float_dtype: str, dataset: str, rng: np.random.Generator
    ):
        A64, B64 = hard_datasets(rng, n=40, m=30, d=16)[dataset]
        A_np, B_np = A64.astype(float_dtype), B64.astype(float_dtype)
        exact = reference_sqdist(A_np, B_np)
        D = backend.call(softdist.pairwise_sqdist, backend.asarray(A_np), backend.asarray(B_np))
        got = backend.to_numpy(D).astype(np.float64)
        assert np.all(got >= 0)
        if backend.jit:
            # Under jit only the first n + m suspect entries are refined: the weaker documented bound.
            assert np.all(np.abs(got - exact) <= _expansion_bound(A_np, B_np, float_dtype))
        else:
            np.testing.assert_allclose(got, exact, rtol=RTOL[float_dtype], atol=0)
            assert np.all(got[exact == 0] == 0)

    def test_naive_expansion_would_fail_offset_data(self, rng: np.random.Generator):
        # Guards the test data itself: on it the plain expansion is far outside the tolerance.
        A64, B64 = hard_datasets(rng, n=40, m=30, d=16)["offset-1e+03"]
        A, B = A64.astype(np.float32), B64.astype(np.float32)
        naive = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T
        exact = reference_sqdist(A, B)
        assert np.max(np.abs(naive - exact) / exact) > 1e-2

    def test_duplicated_rows_are_exactly_zero(
        self, backend: Backend, float_dtype: str, rng: np.random.Generator
    ):
        A_np = (rng.standard_normal((20, 7)) * 3 + 500).astype(float_dtype)
        B_np = (rng.standard_normal((15, 7)) * 3 + 500).astype(float_dtype)
        B_np[[2, 9, 14]] = A_np[[5, 0, 19]]
        D = backend.call(softdist.pairwise_sqdist, backend.asarray(A_np), backend.asarray(B_np))
        got = backend.to_numpy(D)
        assert got[5, 2] == 0 and got[0, 9] == 0 and got[19, 14] == 0
        assert np.count_nonzero(got == 0) == 3
        np.testing.assert_allclose(got, reference_sqdist(A_np, B_np), rtol=RTOL[float_dtype])

    def test_self_distances_symmetric_with_zero_diagonal(
        self, backend: Backend, float_dtype: str, rng: np.random.Generator
    ):
        A_np = (rng.standard_normal((33, 6)) + 1e3).astype(float_dtype)
        A_np[7] = A_np[30]  # a duplicate pair off the diagonal
        A = backend.asarray(A_np)
        D = backend.call(softdist.pairwise_sqdist, A)
        got = assert_matches_reference(
            backend, D, reference_sqdist(A_np), like=A, dtype=backend.dtype(float_dtype),
            rtol=RTOL[float_dtype],
        )  # fmt: skip
        np.testing.assert_array_equal(got, got.T)
        assert np.all(np.diag(got) == 0)
        assert got[7, 30] == 0 and got[30, 7] == 0

    @pytest.mark.parametrize("int_dtype", ["uint8", "int32", "bool"])
    def test_integer_and_bool_inputs_use_default_float(
        self, backend: Backend, int_dtype: str, rng: np.random.Generator
    ):
        A_np = rng.integers(0, 256, (12, 9)).astype(int_dtype)
        B_np = rng.integers(0, 256, (8, 9)).astype(int_dtype)
        A = backend.asarray(A_np)
        D = backend.call(softdist.pairwise_sqdist, A, backend.asarray(B_np))
        default = backend.xp.asarray(0.0, device=backend.device()).dtype
        assert_matches_reference(
            backend, D, reference_sqdist(A_np.astype(np.float64), B_np.astype(np.float64)),
            like=A, dtype=default, rtol=RTOL["float32"],
        )  # fmt: skip

    def test_mixed_float_dtypes_promote(self, backend: Backend, rng: np.random.Generator):
        A_np = rng.standard_normal((6, 3)).astype(np.float32)
        B_np = rng.standard_normal((4, 3))
        A = backend.asarray(A_np)
        D = backend.call(softdist.pairwise_sqdist, A, backend.asarray(B_np))
        assert_matches_reference(
            backend, D, reference_sqdist(A_np, B_np), like=A, dtype=backend.dtype("float64"),
            rtol=RTOL["float64"],
        )  # fmt: skip

    def test_half_precision_computed_in_float32(self, backend: Backend, rng: np.random.Generator):
        if not hasattr(backend.xp, "float16"):
            pytest.skip(f"{backend.name} has no float16")
        # Squares of 1e3 overflow float16 (max 65504); the distances themselves do not.
        A_np = (rng.standard_normal((10, 4)) * 10 + 1e3).astype(np.float16)
        B_np = (rng.standard_normal((5, 4)) * 10 + 1e3).astype(np.float16)
        A = backend.asarray(A_np)
        D = backend.call(softdist.pairwise_sqdist, A, backend.asarray(B_np))
        exact = reference_sqdist(A_np, B_np)
        got = assert_matches_reference(backend, D, exact, like=A, dtype=backend.dtype("float16"), rtol=2e-3)
        assert np.all(np.isfinite(got))

    @pytest.mark.parametrize(("n", "m", "d"), [(0, 4, 3), (4, 0, 3), (0, 0, 3), (3, 4, 0)])
    def test_empty_inputs(self, backend: Backend, n: int, m: int, d: int):
        A = backend.asarray(np.ones((n, d)))
        D = backend.call(softdist.pairwise_sqdist, A, backend.asarray(np.ones((m, d))))
        assert_matches_reference(backend, D, np.zeros((n, m)), like=A, dtype=backend.dtype("float64"), rtol=0)

    def test_nan_row_only_poisons_its_own_entries(self, backend: Backend, rng: np.random.Generator):
        A_np = rng.standard_normal((6, 3)) + 100
        B_np = rng.standard_normal((5, 3)) + 100
        B_np[3] = A_np[1]
        B_np[2, 1] = np.nan
        D = backend.call(softdist.pairwise_sqdist, backend.asarray(A_np), backend.asarray(B_np))
        got = backend.to_numpy(D)
        assert np.all(np.isnan(got[:, 2]))
        rest = np.delete(got, 2, axis=1)
        np.testing.assert_allclose(
            rest, np.delete(reference_sqdist(A_np, B_np), 2, axis=1), rtol=RTOL["float64"]
        )
        if not backend.jit:
            assert got[1, 3] == 0

    def test_dask_stays_lazy_with_bounded_chunks(self, rng: np.random.Generator):
        da = pytest.importorskip("dask.array")
        A = da.from_array(rng.standard_normal((40, 6)), chunks=(10, 3))
        B = da.from_array(rng.standard_normal((30, 6)), chunks=(15, 3))
        D = softdist.pairwise_sqdist(A, B)
        assert isinstance(D, da.Array)
        assert D.chunks == ((10,) * 4, (15,) * 2)
        np.testing.assert_allclose(D.compute(), reference_sqdist(A.compute(), B.compute()), rtol=1e-10)


class TestPairwiseDistances:
    def test_matches_reference(self, backend: Backend, float_dtype: str, rng: np.random.Generator):
        A_np = (rng.standard_normal((21, 4)) + 50).astype(float_dtype)
        A_np[3] = A_np[11]
        A = backend.asarray(A_np)
        D = backend.call(softdist.pairwise_distances, A)
        got = assert_matches_reference(
            backend, D, reference_distances(A_np), like=A, dtype=backend.dtype(float_dtype),
            rtol=RTOL[float_dtype],
        )  # fmt: skip
        assert got[3, 11] == 0 and np.all(np.diag(got) == 0)

    def test_torch_gradient_is_zero_not_nan_at_zero_distance(self):
        torch = pytest.importorskip("torch")
        A = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], dtype=torch.float64, requires_grad=True)
        softdist.pairwise_distances(A).sum().backward()
        # Autograd on the direct-difference formula, with the zero-distance terms masked out.
        B = A.detach().clone().requires_grad_(True)
        diff = B[:, None, :] - B[None, :, :]
        sq = (diff**2).sum(-1)
        mask = sq > 0
        torch.where(mask, torch.sqrt(torch.where(mask, sq, 1.0)), 0.0).sum().backward()
        assert torch.isfinite(A.grad).all()
        torch.testing.assert_close(A.grad, B.grad, rtol=1e-12, atol=1e-12)

    def test_jax_gradient_is_zero_not_nan_at_zero_distance(self):
        jax = pytest.importorskip("jax")
        jnp = jax.numpy
        A = jnp.asarray([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]])

        def direct(X):
            sq = jnp.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
            return jnp.sum(jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0))

        g = jax.grad(lambda X: jnp.sum(softdist.pairwise_distances(X)))(A)
        assert bool(jnp.all(jnp.isfinite(g)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(direct)(A)), atol=1e-12)


class TestBadInput:
    def test_not_2d(self):
        with pytest.raises(ValueError, match=r"A must be a 2-D array .*got shape \(5,\)"):
            softdist.pairwise_sqdist(np.ones(5))
        with pytest.raises(ValueError, match=r"B must be a 2-D array .*got shape \(2, 3, 4\)"):
            softdist.pairwise_sqdist(np.ones((2, 4)), np.ones((2, 3, 4)))

    def test_mismatched_features(self):
        with pytest.raises(ValueError, match=r"same number of features.*\(3, 4\).*\(2, 5\)"):
            softdist.pairwise_distances(np.ones((3, 4)), np.ones((2, 5)))

    def test_complex_input(self):
        with pytest.raises(TypeError, match="A must be real; complex"):
            softdist.pairwise_sqdist(np.ones((2, 2), dtype=np.complex128))

    def test_not_an_array(self):
        with pytest.raises(TypeError, match=r"A must be an array .*got builtins.list"):
            softdist.pairwise_sqdist([[1.0, 2.0]])

    def test_two_libraries(self):
        torch = pytest.importorskip("torch")
        with pytest.raises(TypeError, match="one array library; got A from numpy, B from torch"):
            softdist.pairwise_sqdist(np.ones((2, 2)), torch.ones((2, 2)))

    def test_two_devices(self):
        xps = pytest.importorskip("array_api_strict")
        A = xps.ones((2, 2))
        B = xps.ones((2, 2), device=xps.Device("device1"))
        with pytest.raises(ValueError, match=r"one device; A is on .* but B is on"):
            softdist.pairwise_sqdist(A, B)
