"""softdist.torch: the autograd Function and nn.Module in real PyTorch code (autograd, double backward,
torch.func, torch.compile, a training loop), and differentiable distances on torch tensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import softdist  # noqa: E402
import softdist.torch as st  # noqa: E402

N, C = 17, 6
OPTIONS = {
    "plain": {},
    "weights": {"weight": True},
    "smoothing": {"label_smoothing": 0.2},
    "ignore": {"ignore_index": 2},
    "sum": {"reduction": "sum"},
    "none_all": {"reduction": "none", "weight": True, "label_smoothing": 0.1, "ignore_index": 0},
}


def _data(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, generator=g, dtype=dtype), torch.randint(0, C, (N,), generator=g)


def _modules(options: dict, dtype=torch.float64):
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.linspace(0.5, 1.5, C, dtype=dtype)
    ours = st.SoftmaxCrossEntropy(**kwargs)
    if "ignore_index" not in kwargs:
        kwargs["ignore_index"] = -100
    return ours, torch.nn.CrossEntropyLoss(**kwargs)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_module_mirrors_cross_entropy_loss(name):
    z, y = _data(0)
    ours, theirs = _modules(OPTIONS[name])
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    a, b = ours(z1, y), theirs(z2, y)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-12, atol=1e-15)
    assert torch.equal(z1.detach(), z)  # inputs are never written to


@pytest.mark.parametrize("name", ["plain", "none_all"])
def test_gradcheck_and_double_backward(name):
    z, y = _data(1)
    ours, _ = _modules(OPTIONS[name])
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ours(t, y), (z,))
    assert torch.autograd.gradgradcheck(lambda t: ours(t, y), (z,))


def test_torch_func_transforms():
    from torch.func import grad, jacrev, vmap

    z, y = _data(2)
    want = torch.func.grad(lambda t: F.cross_entropy(t, y))(z)
    torch.testing.assert_close(
        grad(lambda t: st.softmax_cross_entropy(t, y))(z), want, rtol=1e-12, atol=1e-15
    )
    batch = torch.randn(4, N, C, dtype=torch.float64)
    got = vmap(lambda t: st.softmax_cross_entropy(t, y, label_smoothing=0.1))(batch)
    torch.testing.assert_close(got, torch.stack([F.cross_entropy(t, y, label_smoothing=0.1) for t in batch]))
    grads = vmap(grad(lambda t: st.softmax_cross_entropy(t, y)))(batch)
    torch.testing.assert_close(grads, vmap(grad(lambda t: F.cross_entropy(t, y)))(batch))
    jac = jacrev(lambda t: st.softmax_cross_entropy(t, y, reduction="none"))(z)
    torch.testing.assert_close(jac, jacrev(lambda t: F.cross_entropy(t, y, reduction="none"))(z))


# torch's own inductor imports emit a DeprecationWarning (torch.jit.script_method) on first use, and
# Dynamo's inspection of the module touches a non-leaf .grad (a UserWarning inside torch).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_torch_compile_runs_and_matches():
    z, y = _data(3, torch.float32)
    model = torch.nn.Linear(C, C)
    loss_fn = st.SoftmaxCrossEntropy()

    def step(x):  # the loss is one opaque call to Dynamo: one graph break around it
        return loss_fn(model(x), y)

    compiled = torch.compile(step)
    torch.testing.assert_close(compiled(z), torch.nn.CrossEntropyLoss()(model(z), y))


def test_training_loop_matches_cross_entropy_loss():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 20, generator=g)
    y = torch.randint(0, 5, (256,), generator=g)

    def trajectory(loss_fn):
        torch.manual_seed(0)
        model = torch.nn.Linear(20, 5)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        losses = []
        for _ in range(50):
            opt.zero_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return np.array(losses)

    ours = trajectory(st.SoftmaxCrossEntropy(label_smoothing=0.05))
    theirs = trajectory(torch.nn.CrossEntropyLoss(label_smoothing=0.05))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert ours[-1] < 0.9 * ours[0]


def test_weight_is_a_buffer_and_bad_labels_raise():
    loss_fn = st.SoftmaxCrossEntropy(weight=torch.ones(C))
    assert "weight" in dict(loss_fn.named_buffers())
    assert loss_fn.to(torch.float64).weight.dtype == torch.float64
    z, _ = _data(4)
    with pytest.raises(ValueError, match="class indices"):
        loss_fn(z, torch.full((N,), C))


@pytest.mark.parametrize("func", ["pairwise_sqdist", "pairwise_distances"])
def test_distances_are_differentiable(func):
    g = torch.Generator().manual_seed(5)
    A = torch.randn(7, 3, generator=g, dtype=torch.float64)
    B = torch.cat([A[:2], torch.randn(4, 3, generator=g, dtype=torch.float64)])  # two zero distances
    A1, B1 = A.clone().requires_grad_(), B.clone().requires_grad_()
    weights = torch.rand(7, 6, generator=g, dtype=torch.float64)
    (getattr(softdist, func)(A1, B1) * weights).sum().backward()

    A2, B2 = A.clone().requires_grad_(), B.clone().requires_grad_()
    sq = ((A2[:, None, :] - B2[None, :, :]) ** 2).sum(-1)
    direct = sq if func == "pairwise_sqdist" else torch.where(sq > 0, sq, 1).sqrt() * (sq > 0)
    (direct * weights).sum().backward()
    for got, want in ((A1.grad, A2.grad), (B1.grad, B2.grad)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def _textbook(logits, labels, sw, cw, reduction, eps, ignore):
    """-sum(T * log_softmax(z)) with T the weighted smoothed one-hot, over counted rows; "mean" divides by
    the weight of the counted rows' labels (PyTorch's convention): autograd differentiates it."""
    counted = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)
    safe = torch.where(counted, labels, 0)
    T = ((1 - eps) * F.one_hot(safe, C).to(logits.dtype) + eps / C) * cw * (sw * counted)[:, None]
    rows = -(T * torch.log_softmax(logits, 1)).sum(1)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / (cw[safe] * sw * counted).sum()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # forward AD
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps, ignore", [(0.0, None), (0.2, 3)])
def test_sample_and_class_weight_gradients(reduction, eps, ignore):
    # Learnt weights got a silent None .grad (break test): now the true gradient, all modes.
    logits, labels = _data(11)
    g = torch.Generator().manual_seed(12)
    sw = torch.rand(N, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    cw = torch.rand(C, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    logits.requires_grad_()
    opts = {"reduction": reduction, "label_smoothing": eps, "ignore_index": ignore}

    def ours(z, s, c):
        return st.softmax_cross_entropy(z, labels, sample_weight=s, class_weight=c, **opts)

    torch.autograd.gradcheck(ours, (logits, sw, cw), check_forward_ad=True)
    torch.autograd.gradgradcheck(ours, (logits, sw, cw))
    upstream = torch.linspace(0.5, 2, N, dtype=torch.float64) if reduction == "none" else None
    got = torch.autograd.grad(ours(logits, sw, cw), (sw, cw), upstream)
    want = torch.autograd.grad(_textbook(logits, labels, sw, cw, reduction, eps, ignore), (sw, cw), upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    z = logits.detach()
    jac = torch.func.jacfwd(lambda s, c: ours(z, s, c), argnums=(0, 1))(sw.detach(), cw.detach())
    for j, b in zip(jac, want, strict=True):  # forward mode under torch.func, contracted with upstream
        torch.testing.assert_close(j.T @ upstream if upstream is not None else j, b, rtol=1e-12, atol=1e-14)
    module = st.SoftmaxCrossEntropy(weight=cw, **opts)  # a learnt buffer
    module(logits, labels, sw).sum().backward()
    assert cw.grad is not None and sw.grad is not None


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # forward AD
def test_sample_weight_gradient_with_soft_targets():
    logits, _ = _data(13)
    g = torch.Generator().manual_seed(14)
    probs = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), 1).requires_grad_()
    sw = torch.rand(N, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    cw = torch.rand(C, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    for reduction in ("mean", "sum", "none"):
        torch.autograd.gradcheck(
            lambda p, s, c, reduction=reduction: st.softmax_cross_entropy(
                logits, p, sample_weight=s, class_weight=c, reduction=reduction, label_smoothing=0.1
            ),
            (probs, sw, cw), check_forward_ad=True,
        )  # fmt: skip


def test_functional_takes_weight_as_torch_does_and_class_weight():
    # The functional took only class_weight while the module and linear_cross_entropy take weight.
    logits, labels = _data(15)
    w = torch.linspace(0.5, 1.5, C, dtype=torch.float64)
    want = F.cross_entropy(logits, labels, weight=w, label_smoothing=0.1)
    for kwargs in ({"weight": w}, {"class_weight": w}):
        got = st.softmax_cross_entropy(logits, labels, label_smoothing=0.1, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="both weight and class_weight"):
        st.softmax_cross_entropy(logits, labels, weight=w, class_weight=w)
