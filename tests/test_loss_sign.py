"""Row losses are never negative (targets and weights >= 0) and exactly 0 when C = 1, on every backend;
the same rows agree with a long-double reference. Regression: the NumPy/torch CPU in-place kernel computed
log(sum_k exp(z_k) * exp(-z_y)), which fell below 0 for confident rows (-1.2e-7 for float32 [17, 0])."""

from __future__ import annotations

import numpy as np
import pytest

import softdist
from softdist.testing import Backend


def _ce_matrix(z: np.ndarray) -> np.ndarray:
    """(N, C) long-double lse(z_i) - z_ik, computed independently of the library."""
    L = z.astype(np.longdouble)
    m = L.max(axis=1, keepdims=True)
    return m + np.log(np.exp(L - m).sum(axis=1, keepdims=True)) - L


def _rows(rng: np.random.Generator, dtype: str, n: int = 600, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Confident rows (scales up to 60), large margins, random labels and argmax labels."""
    scale = np.exp(rng.uniform(np.log(0.01), np.log(60.0), (n, 1)))
    z = rng.standard_normal((n, c)) * scale
    z[: n // 4, 0] += rng.uniform(5, 90, n // 4)  # a large margin on class 0
    y = np.where(rng.random(n) < 0.7, z.argmax(axis=1), rng.integers(0, c, n))
    return z.astype(dtype), y


def _check(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    assert got.dtype == np.dtype(dtype)
    assert (got >= 0).all(), f"negative losses: {got[got < 0][:5]} (min {got.min()})"
    eps = np.finfo(dtype).eps
    err = np.abs(got.astype(np.longdouble) - want) / np.maximum(want, 1)
    assert err.max() <= 8 * eps, err.max()


REPRODUCERS = [
    (np.array([[17.0, 0.0]], np.float32), np.array([0])),
    (np.tile(np.array([[40.0, -1000.0]], np.float32), (8, 1)), np.zeros(8, int)),
    (np.array([[40.0, 0.0], [30.0, 1.0], [16.0, 0.0], [36.0, 0.0]]), np.zeros(4, int)),
]


@pytest.mark.parametrize("case", range(len(REPRODUCERS)))
def test_reported_rows_are_not_negative(backend: Backend, case):
    z, y = REPRODUCERS[case]
    dtype = str(z.dtype)
    if str(backend.to_numpy(backend.asarray(z)).dtype) != dtype:
        pytest.skip(f"{backend.name} has no {dtype} here")
    got = backend.call(
        softdist.softmax_cross_entropy, backend.asarray(z), backend.asarray(y), reduction="none"
    )
    _check(backend.to_numpy(got), _ce_matrix(z)[np.arange(len(y)), y], dtype)
    mean = backend.call(softdist.softmax_cross_entropy, backend.asarray(z), backend.asarray(y))
    assert backend.to_numpy(mean) >= 0


@pytest.mark.parametrize(
    "option", ["plain", "sample_weight", "class_weight", "label_smoothing", "soft", "soft_smoothing"]
)
def test_random_rows_are_not_negative(backend: Backend, float_dtype, option, rng):
    z, y = _rows(rng, float_dtype)
    n, c = z.shape
    ce = _ce_matrix(z)
    picked = ce[np.arange(n), y]
    kwargs: dict = {"reduction": "none"}
    labels = y
    if option == "plain":
        want = picked
    elif option == "sample_weight":
        w = rng.random(n).astype(float_dtype)
        kwargs["sample_weight"] = backend.asarray(w)
        want = w * picked
    elif option == "class_weight":
        cw = (rng.random(c) + 0.1).astype(float_dtype)
        kwargs["class_weight"] = backend.asarray(cw)
        want = cw[y] * picked
    elif option == "label_smoothing":
        kwargs["label_smoothing"] = 0.1
        want = 0.9 * picked + 0.1 / c * ce.sum(axis=1)
    else:
        # soft targets concentrated on one class (confident) or spread
        q = rng.dirichlet(np.full(c, 0.05), n).astype(float_dtype)
        labels = q
        want = (q.astype(np.longdouble) * ce).sum(axis=1)
        if option == "soft_smoothing":
            kwargs["label_smoothing"] = 0.2
            qs = 0.8 * q.astype(np.longdouble) + 0.2 / c * q.astype(np.longdouble).sum(axis=1, keepdims=True)
            want = (qs * ce).sum(axis=1)
    got = backend.call(softdist.softmax_cross_entropy, backend.asarray(z), backend.asarray(labels), **kwargs)
    _check(backend.to_numpy(got), want, float_dtype)


def test_one_class_gives_exactly_zero(backend: Backend, float_dtype, rng):
    z = (rng.standard_normal((50, 1)) * np.exp(rng.uniform(-5, 4, (50, 1)))).astype(float_dtype)
    y = np.zeros(50, int)
    loss, grad = backend.call(
        softdist.softmax_cross_entropy_and_grad, backend.asarray(z), backend.asarray(y), reduction="none"
    )
    assert (backend.to_numpy(loss) == 0).all()
    assert (backend.to_numpy(grad) == 0).all()


def test_softmax_loss_and_linear_head_rows_are_not_negative(backend: Backend, float_dtype, rng):
    n, d, c = 400, 4, 5
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, c)) * 25  # confident scores
    X, W = X.astype(float_dtype), W.astype(float_dtype)
    z = X.astype(np.longdouble) @ W.astype(np.longdouble)
    y = z.argmax(axis=1)
    want = _ce_matrix(z)[np.arange(n), y]
    loss = backend.call(
        softdist.softmax_loss, backend.asarray(W), backend.asarray(X), backend.asarray(y), reduction="none"
    )[0]
    # the kernel sees the rounded product, so compare with a looser, absolute-plus-relative bound
    got = backend.to_numpy(loss)
    assert (got >= 0).all(), got.min()
    head = backend.call(
        softdist.linear_cross_entropy, backend.asarray(X), backend.asarray(W.T.copy()), backend.asarray(y),
        reduction="none", chunk_size=64,
    )  # fmt: skip
    got_head = backend.to_numpy(head)
    assert (got_head >= 0).all(), got_head.min()
    scale = np.abs(z).max(axis=1)  # rounding of the product: a few ulps of the largest score
    tol = 16 * np.finfo(float_dtype).eps * (1 + scale)
    assert (np.abs(got - want) <= tol).all()
    assert (np.abs(got_head - want) <= tol).all()
