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
