"""Input checks found by break-testing: extended-precision distances, chunk_size types, (N, 1) labels."""

from __future__ import annotations

import numpy as np
import pytest

import softdist

has_longdouble = np.finfo(np.longdouble).bits > 64


# -- longdouble: softmax computes in it, the distance functions refuse it with a TypeError --------------
@pytest.mark.skipif(not has_longdouble, reason="longdouble is float64 on this platform")
@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda a, b: softdist.pairwise_sqdist(a), "A"),
        (lambda a, b: softdist.pairwise_sqdist(b, a), "B"),
        (lambda a, b: softdist.pairwise_distances(a, b), "A"),
        (lambda a, b: softdist.knn(a, k=2), "Q"),
        (lambda a, b: softdist.knn(b, a, k=2), "X"),
    ],
)
def test_distances_refuse_longdouble(call, name):
    a, b = np.ones((5, 3), np.longdouble), np.ones((4, 3))
    with pytest.raises(TypeError, match=rf"{name} has dtype float128.*float64"):
        call(a, b)


@pytest.mark.skipif(not has_longdouble, reason="longdouble is float64 on this platform")
def test_softmax_keeps_longdouble():
    z = np.array([[17.0, 0.0], [1.0, 2.0]], np.longdouble)
    loss = softdist.softmax_cross_entropy(z, np.array([0, 0]), reduction="none")
    assert loss.dtype == np.longdouble
    want = np.log1p(np.exp(np.array([-17.0, 1.0], np.longdouble)))
    np.testing.assert_allclose(loss, want, rtol=1e-17)


# -- chunk_size: a non-int (bool and strings other than "auto" included) is a TypeError, an int < 1 a
# ValueError, in every function that takes it ----------------------------------------------------------
def _chunked_calls():
    X, W, y = np.ones((4, 3)), np.ones((2, 3)), np.zeros(4, int)
    calls = {
        "softmax_loss": lambda c: softdist.softmax_loss(W.T.copy(), X, y, chunk_size=c),
        "linear_cross_entropy": lambda c: softdist.linear_cross_entropy(X, W, y, chunk_size=c),
        "linear_cross_entropy_and_grad": lambda c: softdist.linear_cross_entropy_and_grad(
            X, W, y, chunk_size=c
        ),
    }
    try:
        import jax.numpy as jnp

        import softdist.jax as sj

        calls["jax.linear_cross_entropy"] = lambda c: sj.linear_cross_entropy(
            jnp.asarray(X), jnp.asarray(W), jnp.asarray(y), chunk_size=c
        )
    except ImportError:
        pass
    try:
        import torch

        import softdist.torch as st

        calls["torch.linear_cross_entropy"] = lambda c: st.linear_cross_entropy(
            torch.ones(4, 3), torch.ones(2, 3), torch.zeros(4, dtype=torch.int64), chunk_size=c
        )
        calls["torch.LinearCrossEntropy"] = lambda c: st.LinearCrossEntropy(chunk_size=c)
    except ImportError:
        pass
    return calls


@pytest.mark.parametrize("func", sorted(_chunked_calls()))
@pytest.mark.parametrize(("chunk_size", "error"), [("big", TypeError), (2.0, TypeError), (True, TypeError),
                                                   (0, ValueError), (-3, ValueError)])  # fmt: skip
def test_chunk_size_errors(func, chunk_size, error):
    with pytest.raises(error, match="chunk_size must be"):
        _chunked_calls()[func](chunk_size)


# -- Keras-style (N, 1) class indices: the error says how to pass them --------------------------------------
def test_column_labels_get_a_hint(backend):
    z = backend.asarray(np.zeros((4, 3)), "float32")
    for labels in (np.zeros((4, 1), int), np.zeros((4, 1), np.float32)):
        with pytest.raises(
            ValueError, match=r"got \(4, 1\); for class indices pass shape \(N,\), e\.g\. labels"
        ):
            softdist.softmax_cross_entropy(z, backend.asarray(labels))
    with pytest.raises(ValueError, match=r"got \(4, 2\)$"):  # other shapes: no hint
        softdist.softmax_cross_entropy(z, backend.asarray(np.zeros((4, 2), np.float32)))
    X, W = backend.asarray(np.zeros((4, 2)), "float32"), backend.asarray(np.zeros((3, 2)), "float32")
    with pytest.raises(ValueError, match="for class indices pass shape"):
        softdist.linear_cross_entropy(X, W, backend.asarray(np.zeros((4, 1), int)))
