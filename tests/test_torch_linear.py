"""softdist.torch.linear_cross_entropy and LinearCrossEntropy in real PyTorch code: autograd against
F.linear + F.cross_entropy, retain_graph, gradcheck, gradgradcheck, torch.func.grad, torch.compile,
no_grad, and the port from torch.nn.functional.linear_cross_entropy."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import softdist.torch as st  # noqa: E402

N, D, C = 19, 5, 8


def _data(seed=0, dtype=torch.float64, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=dtype)
    W = torch.randn(C, D, generator=g, dtype=dtype)
    b = torch.randn(C, generator=g, dtype=dtype)
    y = torch.randint(0, C, (N,), generator=g)
    y[::5] = -100
    return [t.requires_grad_(requires_grad) for t in (X, W, b)] + [y]


def _torch_loss(X, W, b, y, reduction="mean", weight=None, label_smoothing=0.0, z_loss=0.0, softcap=None):
    z = F.linear(X, W, b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ce = F.cross_entropy(z, y, weight=weight, reduction="none", label_smoothing=label_smoothing)
    keep = y != -100
    w = keep.to(z.dtype) if weight is None else weight[torch.where(keep, y, 0)] * keep
    rows = ce + z_loss * w * torch.logsumexp(z, 1) ** 2
    if reduction == "none":
        return rows
    return rows.sum() / w.sum() if reduction == "mean" else rows.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "extra", [{}, {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 3.0, "weight": True}]
)
def test_backward_matches_autograd(reduction, extra):
    extra = dict(extra)
    if extra.pop("weight", False):
        extra["weight"] = torch.linspace(0.5, 1.5, C, dtype=torch.float64)
    X, W, b, y = _data()
    ours = st.linear_cross_entropy(
        X, W, y, linear_bias=b, reduction=reduction, ignore_index=-100, chunk_size=4, **extra
    )
    X2, W2, b2 = (t.detach().clone().requires_grad_() for t in (X, W, b))
    want = _torch_loss(X2, W2, b2, y, reduction=reduction, **extra)
    torch.testing.assert_close(ours, want, rtol=1e-10, atol=1e-12)
    v = torch.linspace(0.2, 1.3, N, dtype=torch.float64) if reduction == "none" else torch.tensor(0.7)
    (ours * v).sum().backward()
    (want * v).sum().backward()
    for a, w in ((X, X2), (W, W2), (b, b2)):
        torch.testing.assert_close(a.grad, w.grad, rtol=1e-10, atol=1e-12)


def test_ports_from_torch_linear_cross_entropy():
    X, W, b, y = _data(1)
    want = F.linear_cross_entropy(X, W, y, linear_bias=b, label_smoothing=0.1)
    got = st.linear_cross_entropy(X, W, y, linear_bias=b, label_smoothing=0.1, ignore_index=-100)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_retain_graph_second_and_third_backward(scale):
    # The first backward hands the kept gradients over in place; later ones recompute.
    X, W, b, y = _data(2)
    loss = scale * st.linear_cross_entropy(X, W, y, linear_bias=b, ignore_index=-100)
    X2, W2, b2 = (t.detach().clone().requires_grad_() for t in (X, W, b))
    want = torch.autograd.grad(scale * _torch_loss(X2, W2, b2, y), (X2, W2, b2))
    for k in (1, 2, 3):
        loss.backward(retain_graph=True)
        for t, g in zip((X, W, b), want, strict=True):
            torch.testing.assert_close(t.grad, k * g, rtol=1e-10, atol=1e-12)


def test_backward_accumulates_into_existing_grads():
    X, W, b, y = _data(6)
    for t in (X, W, b):
        t.grad = torch.ones_like(t)
    (2.5 * st.linear_cross_entropy(X, W, y, linear_bias=b, ignore_index=-100)).backward()
    X2, W2, b2 = (t.detach().clone().requires_grad_() for t in (X, W, b))
    want = torch.autograd.grad(2.5 * _torch_loss(X2, W2, b2, y), (X2, W2, b2))
    for t, g in zip((X, W, b), want, strict=True):
        torch.testing.assert_close(t.grad, 1 + g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_and_gradgradcheck(reduction):
    X, W, b, y = _data(3)

    def f(X, W, b):
        return st.linear_cross_entropy(
            X, W, y, linear_bias=b, reduction=reduction, ignore_index=-100, z_loss=0.05, softcap=2.0,
            chunk_size=5,
        )  # fmt: skip

    assert torch.autograd.gradcheck(f, (X, W, b))
    assert torch.autograd.gradgradcheck(f, (X, W, b))


def test_torch_func_grad():
    X, W, b, y = _data(4, requires_grad=False)

    def f(X, W):
        return st.linear_cross_entropy(X, W, y, linear_bias=b, ignore_index=-100)

    got = torch.func.grad(f, argnums=(0, 1))(X, W)
    X2, W2 = X.clone().requires_grad_(), W.clone().requires_grad_()
    _torch_loss(X2, W2, b, y).backward()
    torch.testing.assert_close(got[0], X2.grad)
    torch.testing.assert_close(got[1], W2.grad)


def test_no_grad_computes_the_loss_only(monkeypatch):
    import softdist.linear

    X, W, b, y = _data(5)
    calls = []
    original = softdist.linear._head
    monkeypatch.setattr(
        softdist.linear, "_head", lambda *a, **k: calls.append(k["want_grad"]) or original(*a, **k)
    )
    with torch.no_grad():
        loss = st.linear_cross_entropy(X, W, y, linear_bias=b, ignore_index=-100)
    assert calls == [False] and not loss.requires_grad


# Dynamo's inspection touches a non-leaf .grad (a UserWarning inside torch); inductor's imports warn.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_torch_compile_runs():
    X, W, b, y = _data(6)
    module = st.LinearCrossEntropy(ignore_index=-100, z_loss=1e-3)
    compiled = torch.compile(lambda X, W, b: module(X, W, y, b) * 2)
    loss = compiled(X, W, b)
    loss.backward()
    X2, W2, b2 = (t.detach().clone().requires_grad_() for t in (X, W, b))
    (_torch_loss(X2, W2, b2, y, z_loss=1e-3) * 2).backward()
    torch.testing.assert_close(loss, _torch_loss(X2, W2, b2, y, z_loss=1e-3).detach() * 2)
    torch.testing.assert_close(W.grad, W2.grad)


def test_module_trains_a_head():
    torch.manual_seed(0)
    hidden = torch.randn(64, 8)
    labels = (hidden[:, 0] > 0).long() + 2 * (hidden[:, 1] > 0).long()
    head = torch.nn.Linear(8, 4)
    loss_fn = st.LinearCrossEntropy(chunk_size=16)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(hidden, head.weight, labels, head.bias)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    assert "z_loss=0.0" in repr(loss_fn)


@pytest.mark.parametrize(
    ("option", "value"),
    [("z_loss", True), ("z_loss", "a"), ("softcap", "x"), ("label_smoothing", "a"), ("chunk_size", 2.5)],
)
def test_bad_options_are_named(option, value):
    X, W, _, y = _data()
    with pytest.raises((ValueError, TypeError), match=option):
        st.linear_cross_entropy(X, W, y, ignore_index=-100, **{option: value})


def test_padding_label_without_ignore_index_says_what_to_pass():
    X, W, _, y = _data()  # y holds -100 padding labels, as PyTorch's default expects
    with pytest.raises(ValueError, match="ignore_index=-100"):
        st.linear_cross_entropy(X, W, y)


def test_vmap_of_grad_matches_pytorch():
    X, W, _, y = _data(requires_grad=False)
    y = y.clamp(min=0)

    def ours(x, t):
        return st.linear_cross_entropy(x[None], W, t[None])

    def theirs(x, t):
        return F.cross_entropy(F.linear(x[None], W), t[None])

    got = torch.func.vmap(torch.func.grad(ours))(X, y)
    want = torch.func.vmap(torch.func.grad(theirs))(X, y)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["target", "weight", "sample_weight"])
def test_targets_and_weights_that_require_grad_are_named(name):
    # Gradients flow to input, linear_weight and linear_bias only: a None .grad would be silent.
    X, W, _, _ = _data(7)
    soft = torch.softmax(torch.randn(N, C, dtype=torch.float64), 1)
    args = {"target": soft, "weight": torch.ones(C, dtype=torch.float64),
            "sample_weight": torch.ones(N, dtype=torch.float64)}  # fmt: skip
    args[name] = args[name].requires_grad_()
    target = args.pop("target")
    with pytest.raises(ValueError, match=f"{name} requires grad.*{name}.detach"):
        st.linear_cross_entropy(X, W, target, **args)
    with torch.no_grad():  # no graph: nothing to warn about
        st.linear_cross_entropy(X, W, target, **args)


def test_module_checks_its_options_at_construction():
    with pytest.raises(ValueError, match="chunk_size"):
        st.LinearCrossEntropy(chunk_size=-3)
    with pytest.raises(TypeError, match="chunk_size"):
        st.LinearCrossEntropy(chunk_size="big")
    with pytest.raises(ValueError, match="softcap"):
        st.LinearCrossEntropy(softcap=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        st.LinearCrossEntropy(label_smoothing=True)
