"""Checks every public function must pass on every backend: array type, device and dtype in equal out;
inputs never modified; Dask stays lazy; JAX runs under jit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import softdist
from softdist.testing import Backend, assert_same_kind

# One entry per public array function: how to build its arguments from NumPy inputs.
CASES: dict[str, Callable[[np.random.Generator, str], tuple[tuple[np.ndarray, ...], dict]]] = {
    "pairwise_sqdist": lambda rng, dt: (
        (rng.standard_normal((9, 4)).astype(dt), rng.standard_normal((7, 4)).astype(dt)),
        {},
    ),
    "pairwise_distances": lambda rng, dt: ((rng.standard_normal((9, 4)).astype(dt),), {}),
    "knn": lambda rng, dt: (
        (rng.standard_normal((9, 4)).astype(dt), rng.standard_normal((7, 4)).astype(dt)),
        {"k": 3},
    ),
    "softmax_cross_entropy": lambda rng, dt: (
        (rng.standard_normal((9, 4)).astype(dt), rng.integers(0, 4, 9)),
        {"label_smoothing": 0.1},
    ),
    "softmax_cross_entropy_and_grad": lambda rng, dt: (
        (rng.standard_normal((9, 4)).astype(dt), rng.integers(0, 4, 9)),
        {},
    ),
    "linear_cross_entropy": lambda rng, dt: (
        (
            rng.standard_normal((9, 3)).astype(dt),
            rng.standard_normal((4, 3)).astype(dt),
            rng.integers(0, 4, 9),
        ),
        {"chunk_size": 4, "z_loss": 0.1, "softcap": 5.0},
    ),
    "linear_cross_entropy_and_grad": lambda rng, dt: (
        (
            rng.standard_normal((9, 3)).astype(dt),
            rng.standard_normal((4, 3)).astype(dt),
            rng.integers(0, 4, 9),
        ),
        {"chunk_size": 4, "label_smoothing": 0.1},
    ),
    "softmax_loss": lambda rng, dt: (
        (
            rng.standard_normal((3, 4)).astype(dt),
            rng.standard_normal((9, 3)).astype(dt),
            rng.integers(0, 4, 9),
        ),
        {"reg": 0.1},
    ),
}
NOT_ARRAY_FUNCTIONS = {"__version__", "KNeighborsClassifier", "SoftmaxClassifier"}  # estimators: own tests


def test_every_public_function_has_a_case():
    public = set(softdist.__all__) - NOT_ARRAY_FUNCTIONS
    assert public == set(CASES), "add the new public function to tests/test_common.py::CASES"


def _leaves(result: Any) -> list[Any]:
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("name", sorted(CASES))
def test_array_in_same_array_out(backend: Backend, float_dtype: str, name: str, rng):
    inputs_np, options = CASES[name](rng, float_dtype)
    inputs = [backend.asarray(x) for x in inputs_np]
    result = backend.call(getattr(softdist, name), *inputs, **options)
    for leaf in _leaves(result):
        if backend.xp.isdtype(leaf.dtype, "real floating"):
            assert_same_kind(leaf, inputs[0], dtype=backend.dtype(float_dtype), what=name)
        else:
            assert_same_kind(leaf, inputs[0], what=name)
        assert np.all(np.isfinite(backend.to_numpy(leaf)))
    for before, after in zip(inputs_np, inputs, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(after), before)
