"""Drop-in parity with PyTorch's cross-entropy: PyTorch's own test inputs for ``nn.functional.cross_entropy``
(the OpInfo samples of ``torch.testing._internal.common_methods_invocations``) and ``nn.CrossEntropyLoss``
(the ModuleInfo inputs of ``common_modules``) through ``softdist.torch``, in float32 and float64, as given
and non-contiguous: loss and input gradient against PyTorch's, gradcheck/gradgradcheck over input and
probability target, forward AD against PyTorch's. The same K-dim shapes through the generic functions on
every backend against the NumPy reference.

In scope: every sample. Compared with one documented difference (README, "Differences from
``torch.nn.functional.cross_entropy``"): a ``"mean"`` over a batch whose every target is ``ignore_index``
is 0 here and NaN (0/0) in PyTorch — such samples (drawn at random) are checked to be exactly 0 instead.
Weights (``weight``) are constants here: their gradient, which no sample checks, is not computed.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from softdist.testing import Backend, assert_matches_reference, reference_cross_entropy

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest", reason="torch.testing._internal imports expecttest")
F = torch.nn.functional
# torch's forward AD scripts its jvp decompositions on first use (torch/_decomp/decompositions_for_jvp.py),
# which warns in torch 2.13: a warning inside torch, not about softdist.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

import softdist  # noqa: E402
import softdist.torch as st  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# -- PyTorch's samples -------------------------------------------------------------------------------------
def _import_internal(module: str, name: str):
    # torch's own test modules script a few functions at import (DeprecationWarning in torch 2.13) and
    # read optional packages; none of that concerns the samples.
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(f"torch.testing._internal.{module}"), name)


@functools.cache
def _op_samples(dtype_name: str) -> tuple:
    op_db = _import_internal("common_methods_invocations", "op_db")

    (op,) = [o for o in op_db if o.name == "nn.functional.cross_entropy"]
    torch.manual_seed(0)
    samples = op.sample_inputs(device="cpu", dtype=DTYPES[dtype_name], requires_grad=True)
    return tuple((s.input, s.args[0], dict(s.kwargs), f"op[{i}]") for i, s in enumerate(samples))


@functools.cache
def _module_samples(dtype_name: str) -> tuple:
    module_db = _import_internal("common_modules", "module_db")

    (info,) = [m for m in module_db if m.module_cls is torch.nn.CrossEntropyLoss]
    torch.manual_seed(0)
    inputs = info.module_inputs_func(
        info, device="cpu", dtype=DTYPES[dtype_name], requires_grad=True, training=True
    )
    out = []
    for mi in inputs:
        assert not mi.constructor_input.args and not mi.forward_input.kwargs  # all keyword-constructed
        x, t = mi.forward_input.args
        out.append((x, t, dict(mi.constructor_input.kwargs), f"module[{mi.desc}]"))
    return tuple(out)


def _samples(dtype_name: str, layout: str, *, modules: bool = True) -> list[tuple]:
    noncontiguous_like = _import_internal("common_utils", "noncontiguous_like")

    out = []
    for x, t, kwargs, name in _op_samples(dtype_name) + (_module_samples(dtype_name) if modules else ()):
        x, t = x.detach(), t.detach()
        if layout == "noncontiguous":
            x, t = noncontiguous_like(x), noncontiguous_like(t)
            assert x.numel() <= 1 or not x.is_contiguous()
        out.append((x, t, kwargs, f"{name}-{layout}"))
    return out


def _ours_kwargs(kwargs: dict) -> dict:
    """F.cross_entropy's keywords under softdist's names (weight -> class_weight)."""
    out = {k: v for k, v in kwargs.items() if k != "weight"}
    if kwargs.get("weight") is not None:
        out["class_weight"] = kwargs["weight"].detach()
    return out


def _theirs_kwargs(kwargs: dict) -> dict:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


def _soft(x: torch.Tensor, t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.shape == x.shape


def _all_ignored_mean(t: torch.Tensor, kwargs: dict) -> bool:
    ignore = kwargs.get("ignore_index", -100)
    return (
        not t.is_floating_point() and kwargs.get("reduction", "mean") == "mean" and bool((t == ignore).all())
    )


def _check_all(samples: list[tuple], check) -> None:
    """Run ``check`` on every sample; report every failing sample by name, not just the first."""
    failures = []
    for x, t, kwargs, name in samples:
        try:
            check(x, t, kwargs)
        except Exception as e:  # collected, re-raised below with the sample name
            failures.append(f"{name} {kwargs.keys()}: {type(e).__name__}: {str(e).splitlines()[0]}")
    assert not failures, f"{len(failures)} of {len(samples)} samples fail:\n" + "\n".join(failures[:10])


# -- loss and input gradient, function and module ----------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
def test_function_and_module_match_pytorch(dtype_name, layout):
    def check(x, t, kwargs):
        x1, x2, x3 = (x.clone().requires_grad_() for _ in range(3))
        ours = st.softmax_cross_entropy(x1, t, **_ours_kwargs(kwargs))
        module = st.SoftmaxCrossEntropy(**_theirs_kwargs(kwargs))  # nn.CrossEntropyLoss's arguments
        module_out = module(x3, t)
        grad_out = torch.rand_like(ours)  # a random cotangent: "none" rows are weighted differently
        ours.backward(grad_out)
        module_out.backward(grad_out)
        if _all_ignored_mean(t, kwargs):  # documented: 0, not PyTorch's 0/0
            assert ours.item() == 0 and module_out.item() == 0
            assert not x1.grad.any() and not x3.grad.any()
            return
        theirs = F.cross_entropy(x2, t, **_theirs_kwargs(kwargs))
        theirs.backward(grad_out)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(module_out, theirs)
        torch.testing.assert_close(x1.grad, x2.grad)
        torch.testing.assert_close(x3.grad, x2.grad)

    _check_all(_samples(dtype_name, layout), check)


# -- float64: gradcheck and gradgradcheck over input and probability target; forward AD ---------------------
def _differentiable(x, t, kwargs):
    """(f, inputs): softdist's loss as a function of the input, and of the target when it is soft."""
    opts = _ours_kwargs(kwargs)
    if _soft(x, t):
        return (lambda a, b: st.softmax_cross_entropy(a, b, **opts)), (x, t)
    return (lambda a: st.softmax_cross_entropy(a, t, **opts)), (x,)


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_gradcheck_and_gradgradcheck(layout):
    def check(x, t, kwargs):
        f, inputs = _differentiable(x, t, kwargs)
        inputs = tuple(a.clone().requires_grad_() for a in inputs)
        # fast_mode (random projections of the Jacobian) keeps the 600-element samples quick.
        fast = sum(a.numel() for a in inputs) > 12
        assert torch.autograd.gradcheck(f, inputs, fast_mode=fast, check_forward_ad=True)
        assert torch.autograd.gradgradcheck(f, inputs, fast_mode=fast)

    # Non-contiguous: the OpInfo samples (the 105 module inputs repeat their shapes; runtime).
    _check_all(_samples("float64", layout, modules=layout == "contiguous"), check)


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_forward_ad_matches_pytorch(layout):
    def check(x, t, kwargs):
        f, inputs = _differentiable(x, t, kwargs)
        if _all_ignored_mean(t, kwargs):
            return
        plain = _theirs_kwargs(kwargs)
        g = (
            (lambda a, b: F.cross_entropy(a, b, **plain))
            if len(inputs) == 2
            else (lambda a: F.cross_entropy(a, t, **plain))
        )
        tangents = tuple(torch.randn_like(a) for a in inputs)
        got, want = torch.func.jvp(f, inputs, tangents), torch.func.jvp(g, inputs, tangents)
        torch.testing.assert_close(got, want)

    _check_all(_samples("float64", layout, modules=layout == "contiguous"), check)


def test_hessian_and_jacfwd_match_pytorch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, dtype=torch.float64, generator=g)
    t = torch.rand(3, 4, 2, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (3, 2), generator=g)
    w = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)
    for target in (y, t):
        ours = lambda a, b: st.softmax_cross_entropy(a, b, class_weight=w, label_smoothing=0.1)  # noqa: E731
        theirs = lambda a, b: F.cross_entropy(a, b, weight=w, label_smoothing=0.1)  # noqa: E731
        argnums = (0, 1) if target is t else 0
        torch.testing.assert_close(
            torch.func.hessian(ours, argnums=argnums)(x, target),
            torch.func.hessian(theirs, argnums=argnums)(x, target),
        )
        none_ours = lambda a, b: st.softmax_cross_entropy(a, b, reduction="none")  # noqa: E731
        none_theirs = lambda a, b: F.cross_entropy(a, b, reduction="none")  # noqa: E731
        torch.testing.assert_close(
            torch.func.jacfwd(none_ours, argnums=argnums)(x, target),
            torch.func.jacfwd(none_theirs, argnums=argnums)(x, target),
        )


@pytest.mark.parametrize("outer", ["jacfwd", "jacrev"])
def test_second_order_compositions_match_pytorch(outer):
    """Reverse over forward, forward over reverse, reverse over reverse. (Forward over forward,
    jacfwd(jacfwd), is the documented gap: it misses the saved gradient's tangent.)"""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 2, dtype=torch.float64, generator=g)
    t = torch.rand(3, 4, 2, dtype=torch.float64, generator=g)
    inners = ["jacrev"] if outer == "jacfwd" else ["jacfwd", "jacrev"]
    for inner in inners:
        T, U = getattr(torch.func, outer), getattr(torch.func, inner)
        got = T(U(lambda a, b: st.softmax_cross_entropy(a, b, label_smoothing=0.1), (0, 1)), (0, 1))(x, t)
        want = T(U(lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1), (0, 1)), (0, 1))(x, t)
        torch.testing.assert_close(got, want)


def test_target_gradient_is_scaled_negative_log_softmax():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=g)
    t = torch.rand(5, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    st.softmax_cross_entropy(x, t, class_weight=w, label_smoothing=0.2).backward()
    want = -torch.log_softmax(x, dim=1) * w[:, None] * (1 - 0.2) / (5 * 4)
    torch.testing.assert_close(t.grad, want)


# -- the module: state dicts, half precision; errors ---------------------------------------------------------
def test_load_state_dict_of_cross_entropy_loss():
    w = torch.rand(3)
    ours = st.SoftmaxCrossEntropy(weight=torch.ones(3))
    ours.load_state_dict(torch.nn.CrossEntropyLoss(weight=w).state_dict())
    torch.testing.assert_close(ours.weight, w)
    st.SoftmaxCrossEntropy().load_state_dict(torch.nn.CrossEntropyLoss().state_dict())
    torch.nn.CrossEntropyLoss(weight=torch.ones(3)).load_state_dict(ours.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key"):  # as nn.CrossEntropyLoss() itself does
        st.SoftmaxCrossEntropy().load_state_dict(torch.nn.CrossEntropyLoss(weight=w).state_dict())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu(dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, 3, generator=g).to(dtype)
    for target in (torch.randint(0, 5, (6, 3), generator=g), torch.rand(6, 5, 3, generator=g).to(dtype)):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, theirs = st.softmax_cross_entropy(x1, target), F.cross_entropy(x2, target)
        assert ours.dtype == dtype
        ours.backward()
        theirs.backward()
        assert x1.grad.dtype == dtype
        # softdist reduces in float32 and rounds once; PyTorch CPU rounds intermediate results
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=1e-2)
        torch.testing.assert_close(x1.grad.float(), x2.grad.float(), rtol=2e-2, atol=2e-3)


def test_integer_targets_of_the_input_shape_raise_like_pytorch():
    x, t = torch.randn(4, 3), torch.ones(4, 3, dtype=torch.int64)
    with pytest.raises(RuntimeError):
        F.cross_entropy(x, t)
    with pytest.raises(TypeError, match="labels of the logits' shape are soft targets"):
        st.softmax_cross_entropy(x, t)


# -- the same K-dim cases through the generic functions on every backend ------------------------------------
def _numpy_reference(logits, labels, axis, **options):
    """reference_cross_entropy on the classes moved last and the batch flattened (NumPy, long double)."""
    z = np.moveaxis(logits, axis, -1)
    batch = z.shape[:-1]
    soft = labels.shape == logits.shape
    y = np.moveaxis(labels, axis, -1).reshape(-1, z.shape[-1]) if soft else labels.reshape(-1)
    sw = options.pop("sample_weight", None)
    loss, grad = reference_cross_entropy(
        z.reshape(-1, z.shape[-1]), y, sample_weight=None if sw is None else sw.reshape(-1), **options
    )
    if options.get("reduction") == "none":
        loss = loss.reshape(batch)
    return loss, np.moveaxis(grad.reshape(z.shape), -1, axis)


K_DIM_CASES = {  # (logits shape, class axis), from the OpInfo/ModuleInfo shapes, and another class axis
    "higher_dim": ((2, 3, 5, 2, 2), 1),
    "no_batch_dim": ((3,), 0),
    "classes_first": ((3, 4, 2), 0),
}
OPTIONS = {
    "all": {"class_weight": True, "sample_weight": True, "label_smoothing": 0.15, "ignore_index": 1},
    "none": {"reduction": "none", "class_weight": True, "label_smoothing": 0.15},
    "none_soft": {
        "reduction": "none",
        "soft": True,
        "class_weight": True,
        "sample_weight": True,
        "label_smoothing": 0.15,
    },
}
TOL = {"float32": {"rtol": 2e-5, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-14}}


@pytest.mark.parametrize("options_name", sorted(OPTIONS))
@pytest.mark.parametrize("case", sorted(K_DIM_CASES))
def test_generic_any_batch_shape_matches_reference(backend: Backend, float_dtype, case, options_name, rng):
    shape, axis = K_DIM_CASES[case]
    options = dict(OPTIONS[options_name])
    n_classes = shape[axis]
    batch = tuple(s for i, s in enumerate(shape) if i != axis)
    logits = rng.standard_normal(shape).astype(float_dtype)
    soft = options.pop("soft", False)
    labels = rng.random(shape).astype(float_dtype) if soft else rng.integers(0, n_classes, batch)
    if options.pop("class_weight", False):
        options["class_weight"] = np.linspace(0.5, 1.5, n_classes).astype(float_dtype)
    if options.pop("sample_weight", False):
        options["sample_weight"] = np.asarray(rng.random(batch) + 0.5, dtype=float_dtype)
    want_loss, want_grad = _numpy_reference(logits, labels, axis, **options)

    on = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    z, y = backend.asarray(logits), backend.asarray(labels)
    loss, grad = backend.call(softdist.softmax_cross_entropy_and_grad, z, y, axis=axis, **on)
    only_loss = backend.call(softdist.softmax_cross_entropy, z, y, axis=axis, **on)
    dtype = backend.dtype(float_dtype)
    for got, want in ((loss, want_loss), (only_loss, want_loss), (grad, want_grad)):
        assert_matches_reference(backend, got, np.asarray(want), like=z, dtype=dtype, **TOL[float_dtype])


def test_numpy_classes_last_takes_views(monkeypatch):
    """The class axis last: the batch is flattened by reshape (a view on NumPy), never copied."""
    import softdist.softmax as module

    seen = []
    original = module._matrix_loss

    def spy(logits, labels, *args, **kwargs):
        seen.append(logits)
        return original(logits, labels, *args, **kwargs)

    monkeypatch.setattr(module, "_matrix_loss", spy)
    z = np.random.default_rng(0).standard_normal((4, 5, 3))
    softdist.softmax_cross_entropy(z, np.zeros((4, 5), int))
    assert np.shares_memory(seen[0], z)
