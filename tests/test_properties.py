"""hypothesis property tests: the invariants of squared Euclidean distances, on several backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import softdist
from softdist.testing import Backend, backend_by_name

# The fast eager backends; jit and Dask run the same code and are covered by test_distances.py.
PROPERTY_BACKENDS = ["numpy", "strict-device1", "torch-cpu", "jax-cpu"]
# derandomize: CI must not turn red on a new random example; run locally with --hypothesis-seed to explore.
SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Magnitudes under 1e-6 are flushed to 0: their squares would be subnormal, where scaling by a power of
# two is no longer exact (a property of floating point, not of the library).
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64).map(
    lambda x: 0.0 if abs(x) < 1e-6 else x
)


@st.composite
def matrix_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 12))
    d = draw(st.integers(1, 6))
    A = draw(arrays(np.float64, (n, d), elements=finite))
    B = draw(arrays(np.float64, (m, d), elements=finite))
    return A, B


def _sq(backend: Backend, A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    D = softdist.pairwise_sqdist(backend.asarray(A), None if B is None else backend.asarray(B))
    return backend.to_numpy(D)


def _close(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> None:
    # Distances agree to float64 rounding of the data's scale (entries may be tiny against it).
    np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12 * (1.0 + float(np.max(scale))))


@pytest.fixture(params=PROPERTY_BACKENDS)
def prop_backend(request: pytest.FixtureRequest) -> Backend:
    b = backend_by_name(request.param)
    reason = b.skip_reason()
    if reason:
        pytest.skip(reason)
    return b


@SETTINGS
@given(pair=matrix_pairs(), shift=finite)
def test_translation_invariance(prop_backend: Backend, pair, shift):
    A, B = pair
    base = _sq(prop_backend, A, B)
    _close(_sq(prop_backend, A + shift, B + shift), base, np.abs(A).max() + abs(shift))


@SETTINGS
@given(pair=matrix_pairs(), data=st.data())
def test_row_permutation_equivariance(prop_backend: Backend, pair, data):
    A, B = pair
    p = np.asarray(data.draw(st.permutations(range(A.shape[0]))), dtype=np.intp)
    q = np.asarray(data.draw(st.permutations(range(B.shape[0]))), dtype=np.intp)
    base = _sq(prop_backend, A, B)
    _close(_sq(prop_backend, A[p], B[q]), base[p][:, q], base)


@SETTINGS
@given(pair=matrix_pairs())
def test_symmetry_when_b_is_none(prop_backend: Backend, pair):
    A, _ = pair
    D = _sq(prop_backend, A)
    np.testing.assert_array_equal(D, D.T)
    assert np.all(np.diag(D) == 0)
    assert np.all(D >= 0)


@SETTINGS
@given(pair=matrix_pairs(), power=st.integers(-8, 8), c=st.floats(0.1, 10.0))
def test_scaling(prop_backend: Backend, pair, power, c):
    A, B = pair
    base = _sq(prop_backend, A, B)
    # A power of two scales every rounding step exactly: bitwise equal.
    s = 2.0**power
    np.testing.assert_array_equal(_sq(prop_backend, A * s, B * s), base * s * s)
    _close(_sq(prop_backend, A * c, B * c), base * c * c, base * c * c)


@SETTINGS
@given(pair=matrix_pairs(), pad=st.integers(1, 4))
def test_zero_padding_features_changes_nothing(prop_backend: Backend, pair, pad):
    A, B = pair
    A_pad = np.concatenate([A, np.zeros((A.shape[0], pad))], axis=1)
    B_pad = np.concatenate([B, np.zeros((B.shape[0], pad))], axis=1)
    base = _sq(prop_backend, A, B)
    _close(_sq(prop_backend, A_pad, B_pad), base, base)


# -- softmax cross-entropy ------------------------------------------------------------------------------
logit_values = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def classification(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, dict]:
    n = draw(st.integers(1, 10))
    c = draw(st.integers(1, 6))
    logits = draw(arrays(np.float64, (n, c), elements=logit_values))
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    options = {
        "label_smoothing": draw(st.sampled_from([0.0, 0.1])),
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
    }
    if draw(st.booleans()):
        options["class_weight"] = draw(arrays(np.float64, (c,), elements=st.floats(0.1, 3)))
    return logits, labels, options


def _ce(backend: Backend, logits: np.ndarray, labels: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
    opts = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    loss, grad = softdist.softmax_cross_entropy_and_grad(
        backend.asarray(logits), backend.asarray(labels), **opts
    )
    return backend.to_numpy(loss), backend.to_numpy(grad)


@SETTINGS
@given(data=classification(), shift=st.floats(-1e3, 1e3, allow_nan=False, width=64))
def test_softmax_row_shift_invariance(prop_backend: Backend, data, shift):
    logits, labels, options = data
    loss, grad = _ce(prop_backend, logits, labels, **options)
    loss2, grad2 = _ce(prop_backend, logits + shift, labels, **options)  # shift loses ~|shift| * eps
    tol = 1e-11 * (1 + abs(shift))
    np.testing.assert_allclose(loss2, loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad2, grad, rtol=tol, atol=tol)


@SETTINGS
@given(data=classification(), seed=st.integers(0, 2**32 - 1))
def test_softmax_permutation_equivariance(prop_backend: Backend, data, seed):
    logits, labels, options = data
    rng = np.random.default_rng(seed)
    rows, classes = rng.permutation(logits.shape[0]), rng.permutation(logits.shape[1])
    relabel = np.argsort(classes)  # class k moves to column relabel[k]
    permuted = dict(options)
    if "class_weight" in options:
        permuted["class_weight"] = options["class_weight"][classes]
    loss, grad = _ce(prop_backend, logits, labels, **options)
    loss2, grad2 = _ce(prop_backend, logits[rows][:, classes], relabel[labels[rows]], **permuted)
    np.testing.assert_allclose(loss2, loss[rows] if loss.ndim else loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad2, grad[rows][:, classes], rtol=1e-12, atol=1e-14)


@SETTINGS
@given(data=classification(), scale=st.sampled_from([0.25, 3.0, 1024.0]))
def test_softmax_sample_weight_scaling_and_zero_row_sums(prop_backend: Backend, data, scale):
    logits, labels, options = data
    weights = np.linspace(0.5, 1.5, logits.shape[0])
    loss, grad = _ce(prop_backend, logits, labels, sample_weight=weights, **options)
    loss2, grad2 = _ce(prop_backend, logits, labels, sample_weight=scale * weights, **options)
    factor = 1.0 if options["reduction"] == "mean" else scale  # the mean is scale-free
    np.testing.assert_allclose(loss2, factor * loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad2, factor * grad, rtol=1e-12, atol=1e-14)
    # Each row of the gradient sums to zero: softmax mass equals target mass.
    np.testing.assert_allclose(np.sum(grad, axis=1), 0.0, atol=1e-12 * (1 + np.max(np.abs(grad))))
