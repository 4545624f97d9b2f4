"""kNN on torch tensors that require grad: the distances are differentiable (the pruned CPU search
writes into buffers, which autograd refuses, so it must not run then), the indices are the same as
without autograd, and the gradient matches torch.autograd through an independent formula."""

from __future__ import annotations

import numpy as np
import pytest

import softdist
from softdist.testing import Backend


def _torch_only(backend: Backend):
    if backend.library != "torch":
        pytest.skip("autograd is torch's")
    import torch

    return torch


@pytest.mark.parametrize("two_sets", [False, True])
def test_knn_distances_are_differentiable(backend: Backend, two_sets, rng):
    torch = _torch_only(backend)
    X0 = rng.standard_normal((60, 8))
    Q0 = rng.standard_normal((9, 8))
    X = backend.asarray(X0, "float64").requires_grad_()
    Q = backend.asarray(Q0, "float64").requires_grad_() if two_sets else X
    args = (Q, X) if two_sets else (X,)
    D, idx = softdist.knn(*args, k=5)
    assert D.grad_fn is not None and D.dtype == torch.float64 and idx.dtype == torch.int64
    with torch.no_grad():
        D_ng, idx_ng = softdist.knn(*args, k=5)
    assert D_ng.grad_fn is None
    assert torch.equal(idx, idx_ng)
    assert torch.equal(D.detach(), D_ng)  # the same bits as the pruned search
    weights = backend.asarray(rng.standard_normal(tuple(D.shape)), "float64")
    got = torch.autograd.grad((D * weights).sum(), [X] + ([Q] if two_sets else []))

    # independent reference: the squared differences at the returned indices, through torch autograd
    Xr = torch.tensor(X0, requires_grad=True)
    Qr = torch.tensor(Q0, requires_grad=True) if two_sets else Xr
    i = idx.detach().cpu()
    ref_D = ((Qr[:, None, :] - Xr[i]) ** 2).sum(-1)
    want = torch.autograd.grad((ref_D * weights.cpu()).sum(), [Xr] + ([Qr] if two_sets else []))
    np.testing.assert_allclose(D.detach().cpu().numpy(), ref_D.detach().numpy(), rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.cpu().numpy(), w.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("data", ["all_equal", "few_distinct"])
@pytest.mark.parametrize("two_sets", [False, True])
def test_ties_under_autograd_fall_by_index(backend: Backend, data, two_sets, rng):
    """More exact ties than 2k per tile (a break test's input: 50 all-equal rows, k = 3 gave 31, 32, 33
    on the CPU): with autograd recording, the indices are the lowest tied ones, as without it, and the
    distances the same bits (GPUs: the documented tie limit, tied indices at the right distance)."""
    torch = _torch_only(backend)
    points = np.full((1, 6), 0.3) if data == "all_equal" else rng.standard_normal((4, 6))
    X0 = points[rng.integers(0, points.shape[0], 300)]
    Q0 = X0[:40] + (0.0 if data == "all_equal" else 0.5)
    X = backend.asarray(X0, "float64").requires_grad_()
    Q = backend.asarray(Q0, "float64").requires_grad_() if two_sets else X
    args = (Q, X) if two_sets else (X,)
    D, idx = softdist.knn(*args, k=7, working_memory=20000)
    D_ref = ((torch.tensor(Q0 if two_sets else X0)[:, None, :] - torch.tensor(X0)[None]) ** 2).sum(-1)
    if not two_sets:
        D_ref.fill_diagonal_(float("inf"))
    order = np.lexsort((np.broadcast_to(np.arange(300), D_ref.shape), D_ref.numpy()), axis=1)[:, :7]
    got = idx.detach().cpu().numpy()
    if backend.device_kind == "gpu":
        np.testing.assert_array_equal(np.take_along_axis(D_ref.numpy(), got, axis=1),
                                      np.take_along_axis(D_ref.numpy(), order, axis=1))  # fmt: skip
    else:
        np.testing.assert_array_equal(got, order)
        with torch.no_grad():
            D_ng, idx_ng = softdist.knn(*args, k=7, working_memory=20000)
        assert torch.equal(idx, idx_ng) and torch.equal(D.detach(), D_ng)
    D.sum().backward()
    assert torch.isfinite(X.grad).all()


def test_embedding_weight_reproducer(backend: Backend):
    torch = _torch_only(backend)
    torch.manual_seed(0)
    w = torch.nn.Embedding(100, 8).weight.to(backend.device_kind)
    D, _ = softdist.knn(w, k=5)
    assert D.shape == (100, 5) and D.grad_fn is not None
    D.sum().backward()
    assert w.grad is None or torch.isfinite(w.grad).all()
