"""Class-index labels of every integer dtype, with values at the edges of the dtype's range and
``ignore_index`` inside and outside it, on every backend against the NumPy reference.

A Python int that does not fit the labels' dtype (uint8 labels, ignore_index=-100; int8 labels, 200
classes) was wrapped by torch and JAX (rows wrongly ignored or rejected, NaN under jit) and refused by
array-api-strict (OverflowError); torch had no comparisons for uint16/uint32 at all.
"""

from __future__ import annotations

import numpy as np
import pytest

import softdist
from softdist.testing import Backend, reference_cross_entropy

C = 300  # more classes than uint8/int8 can count
INT_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]


def _supported(backend: Backend, dtype: str) -> None:
    if backend.library == "torch" and dtype == "uint64":
        pytest.skip("torch cannot compare uint64: see test_torch_uint64_is_a_clear_error")


def _edge_labels(dtype: str) -> np.ndarray:
    """Valid class indices at the edges of the dtype's range: 0, 1, the largest that is a class."""
    top = min(C - 1, np.iinfo(dtype).max)
    return np.array([0, 1, top, top - 1, 0, top], dtype=dtype)


def _ignore_values(dtype: str) -> list:
    info = np.iinfo(dtype)
    return [None, -100, 1, int(info.max) + 1, int(info.min) - 1]


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("ignore_index", range(5), ids=["none", "-100", "1", "max+1", "min-1"])
def test_labels_of_every_integer_dtype(backend: Backend, dtype, ignore_index, rng):
    _supported(backend, dtype)
    ignore_index = _ignore_values(dtype)[ignore_index]
    labels = _edge_labels(dtype)
    info = np.iinfo(dtype)
    if ignore_index is not None and info.min <= ignore_index <= info.max:
        labels[-2] = ignore_index  # one row carries it (and is ignored); -1 only fits signed types
    logits = rng.standard_normal((labels.shape[0], C))
    want_loss, want_grad = reference_cross_entropy(
        logits, labels.astype(np.int64), reduction="none", ignore_index=ignore_index
    )
    loss, grad = backend.call(
        softdist.softmax_cross_entropy_and_grad, backend.asarray(logits), backend.asarray(labels),
        reduction="none", ignore_index=ignore_index,
    )  # fmt: skip
    np.testing.assert_allclose(backend.to_numpy(loss), want_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(backend.to_numpy(grad), want_grad, rtol=1e-12, atol=1e-15)


def test_the_issue_inputs(backend: Backend):
    """zeros((1, 200)) against uint8 [156] with ignore_index=-100, and int8 [100]: log 200 everywhere."""
    z = backend.asarray(np.zeros((1, 200)))
    for labels, ignore in ((np.array([156], np.uint8), -100), (np.array([100], np.int8), None),
                           (np.array([100], np.int8), -100)):  # fmt: skip
        loss = backend.call(softdist.softmax_cross_entropy, z, backend.asarray(labels), ignore_index=ignore)
        np.testing.assert_allclose(backend.to_numpy(loss), np.log(200), rtol=1e-14)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_labels_beyond_the_classes_are_still_invalid(backend: Backend, dtype):
    """Narrow dtypes: the largest value (and the most negative) is not a class of 100."""
    _supported(backend, dtype)
    info = np.iinfo(dtype)
    for bad in {int(info.max), int(info.min)} - {0}:
        labels = np.array([0, bad, 1], dtype=dtype)
        z, y = backend.asarray(np.zeros((3, 100))), backend.asarray(labels)
        if not backend.jit and not backend.lazy:
            with pytest.raises(ValueError, match=rf"labels\[1\] = {bad}"):
                softdist.softmax_cross_entropy_and_grad(z, y, ignore_index=-100)
            continue
        loss = backend.to_numpy(backend.call(softdist.softmax_cross_entropy, z, y, reduction="none"))
        assert np.isnan(loss[1]) and np.all(np.isfinite(loss[[0, 2]]))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_integral_float_labels_with_huge_ignore_index(backend: Backend, dtype):
    """Float labels: ignore_index beyond the dtype's range (1e40 > float32 max) never matches."""
    if backend.library == "strict" and dtype == "float16":
        pytest.skip("array-api-strict has no float16")
    labels = np.array([0, 2, 1], dtype=dtype)
    z = np.random.default_rng(0).standard_normal((3, 4))
    want = reference_cross_entropy(z, labels.astype(np.int64), reduction="none")[0]
    for ignore in (2**70, 10**40, -(10**40), 10**400):
        got = backend.call(softdist.softmax_cross_entropy, backend.asarray(z), backend.asarray(labels),
                           reduction="none", ignore_index=ignore)  # fmt: skip
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-12)


def test_torch_uint64_is_a_clear_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"labels of dtype torch\.uint64 .* torch\.int64"):
        softdist.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1], dtype=torch.uint64))


def test_torch_uint16_labels_through_the_module_and_softmax_loss():
    torch = pytest.importorskip("torch")
    import softdist.torch as sdt

    y = torch.tensor([0, 3, 2, 1], dtype=torch.uint16)
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    sdt.SoftmaxCrossEntropy()(z, y).backward()
    ref = torch.nn.functional.cross_entropy(z, y.to(torch.int64))
    want = torch.autograd.grad(ref, z)[0]
    torch.testing.assert_close(z.grad, want)
    W, X = torch.randn(3, 5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    got = softdist.softmax_loss(W, X, y)[0]
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(X @ W, y.to(torch.int64)))
