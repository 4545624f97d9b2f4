"""Softmax cross-entropy: every backend against the NumPy long-double reference, PyTorch autograd, jax.grad
and finite differences; numerics at the edges; bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import softdist
from softdist.testing import (
    Backend,
    assert_matches_reference,
    reference_cross_entropy,
    reference_softmax_loss,
)

# float32 against float64 truths: rtol 1e-5 and atol 1e-6 (the bar); float64: 1e-12.
TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-15}}
N, C = 23, 7
has_torch = importlib.util.find_spec("torch") is not None
has_jax = importlib.util.find_spec("jax") is not None


def _labels(rng):
    y = rng.integers(0, C, N)
    y[:C] = np.arange(C)  # every class present
    return y


def _soft(rng, scale=1.0):
    return rng.dirichlet(np.ones(C), N) * scale


# name -> (labels, options) built from NumPy; arrays in options go to the backend too.
CASES = {
    "plain": lambda r: (_labels(r), {}),
    "sum": lambda r: (_labels(r), {"reduction": "sum"}),
    "none": lambda r: (_labels(r), {"reduction": "none"}),
    "class_weight": lambda r: (_labels(r), {"class_weight": r.random(C) + 0.2}),
    "sample_weight": lambda r: (_labels(r), {"sample_weight": r.random(N)}),
    "smoothing": lambda r: (_labels(r), {"label_smoothing": 0.15}),
    "ignore_index": lambda r: (np.where(r.random(N) < 0.3, -1, _labels(r)), {"ignore_index": -1}),
    "all_options": lambda r: (
        _labels(r),
        dict(class_weight=r.random(C) + 0.2, sample_weight=r.random(N), label_smoothing=0.1, ignore_index=2),
    ),
    "all_options_none": lambda r: (
        _labels(r),
        {"class_weight": r.random(C) + 0.2, "label_smoothing": 0.3, "ignore_index": 4, "reduction": "none"},
    ),
    "soft": lambda r: (_soft(r), {}),
    "soft_unnormalised": lambda r: (_soft(r, 1.7), {"reduction": "sum"}),
    "soft_all_options": lambda r: (
        _soft(r),
        {"class_weight": r.random(C) + 0.2, "sample_weight": r.random(N), "label_smoothing": 0.2},
    ),
}


def _on(backend: Backend, options: dict, dtype: str) -> dict:
    return {k: backend.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _labels_on(backend: Backend, labels: np.ndarray, dtype: str):
    return backend.asarray(labels, dtype if labels.ndim == 2 else None)


def _case(rng, name, dtype):
    labels, options = CASES[name](rng)
    logits = (3 * rng.standard_normal((N, C))).astype(dtype)
    rounded = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    return logits, labels.astype(dtype) if labels.ndim == 2 else labels, rounded


# -- every backend against the reference -------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_grad_match_reference(backend: Backend, float_dtype, case, rng):
    logits, labels, options = _case(rng, case, float_dtype)
    want_loss, want_grad = reference_cross_entropy(logits, labels, **options)
    z = backend.asarray(logits)
    loss, grad = backend.call(
        softdist.softmax_cross_entropy_and_grad, z, _labels_on(backend, labels, float_dtype),
        **_on(backend, options, float_dtype),
    )  # fmt: skip
    dtype = backend.dtype(float_dtype)
    assert_matches_reference(backend, loss, np.asarray(want_loss), like=z, dtype=dtype, **TOL[float_dtype])
    assert_matches_reference(backend, grad, want_grad, like=z, dtype=dtype, **TOL[float_dtype])
    loss_only = backend.call(
        softdist.softmax_cross_entropy, z, _labels_on(backend, labels, float_dtype),
        **_on(backend, options, float_dtype),
    )  # fmt: skip
    assert_matches_reference(
        backend, loss_only, np.asarray(want_loss), like=z, dtype=dtype, **TOL[float_dtype]
    )


@pytest.mark.parametrize("case", ["plain", "all_options", "all_options_none", "soft_all_options"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_softmax_loss_matches_reference(backend: Backend, float_dtype, case, with_bias, rng):
    _, labels, options = _case(rng, case, float_dtype)
    D = 5
    W = rng.standard_normal((D, C)).astype(float_dtype)
    X = (2 * rng.standard_normal((N, D))).astype(float_dtype)
    b = rng.standard_normal(C).astype(float_dtype) if with_bias else None
    want = reference_softmax_loss(W, X, labels, reg=0.3, b=b, **options)
    args = [backend.asarray(W), backend.asarray(X), _labels_on(backend, labels, float_dtype)]
    extra = {"b": backend.asarray(b)} if with_bias else {}
    got = backend.call(softdist.softmax_loss, *args, reg=0.3, **extra, **_on(backend, options, float_dtype))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert_matches_reference(
            backend, g, w, like=args[0], dtype=backend.dtype(float_dtype), **TOL[float_dtype]
        )


@pytest.mark.parametrize("chunk_size", [1, 5, 10])
def test_chunked_equals_unchunked(backend: Backend, chunk_size, rng):
    W, X = rng.standard_normal((4, C)), rng.standard_normal((N, 4))
    y, b = _labels(rng), rng.standard_normal(C)
    args = [backend.asarray(a) for a in (W, X, y)]
    whole = backend.call(softdist.softmax_loss, *args, b=backend.asarray(b), reg=0.1)
    chunked = backend.call(softdist.softmax_loss, *args, b=backend.asarray(b), reg=0.1, chunk_size=chunk_size)
    for w, c in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(backend.to_numpy(c), backend.to_numpy(w), rtol=1e-13, atol=1e-15)


# -- PyTorch and JAX as independent oracles -----------------------------------------------------------------
def _torch_loss(F, torch, z, labels, options):
    """PyTorch's F.cross_entropy, with sample weights applied the way softdist defines them."""
    cw = options.get("class_weight")
    cw_t = None if cw is None else torch.from_numpy(cw)
    ignore = options.get("ignore_index")
    target = torch.from_numpy(labels)
    common = {"weight": cw_t, "label_smoothing": options.get("label_smoothing", 0.0)}
    if ignore is not None:
        common["ignore_index"] = ignore
    sw = options.get("sample_weight")
    reduction = options.get("reduction", "mean")
    if sw is None:
        return F.cross_entropy(z, target, reduction=reduction, **common)
    rows = F.cross_entropy(z, target, reduction="none", **common) * torch.from_numpy(sw)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if labels.ndim == 2:
        return rows.sum() / sw.sum()
    counted = labels != ignore if ignore is not None else np.ones(len(labels), bool)
    safe = np.where(counted, labels, 0)
    w_y = np.ones(len(labels)) if cw is None else cw[safe]
    return rows.sum() / (sw * w_y)[counted].sum()


@pytest.mark.skipif(not has_torch, reason="torch is not installed")
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_autograd(float_dtype, case, rng):
    import torch
    import torch.nn.functional as F

    logits, labels, options = _case(rng, case, float_dtype)
    z = torch.tensor(logits, requires_grad=True)
    want = _torch_loss(F, torch, z, labels, options)
    want.sum().backward()
    t_opts = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    loss, grad = softdist.softmax_cross_entropy_and_grad(
        torch.from_numpy(logits), torch.from_numpy(labels), **t_opts
    )
    tol = TOL[float_dtype]
    np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), rtol=tol["rtol"], atol=tol["atol"])
    np.testing.assert_allclose(grad.numpy(), z.grad.numpy(), rtol=tol["rtol"], atol=tol["atol"])


@pytest.mark.skipif(not has_torch, reason="torch is not installed")
@pytest.mark.parametrize("case", ["plain", "all_options", "soft_all_options", "all_options_none"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_softmax_loss_matches_torch_autograd(case, with_bias, rng):
    import torch
    import torch.nn.functional as F

    _, labels, options = _case(rng, case, "float64")
    W, X, b = rng.standard_normal((6, C)), rng.standard_normal((N, 6)), rng.standard_normal(C)
    tW, tb = torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)
    data = _torch_loss(F, torch, torch.from_numpy(X) @ tW + (tb if with_bias else 0.0), labels, options)
    (data.sum() + 0.25 * (tW * tW).sum()).backward()
    t_opts = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    extra = {"b": torch.from_numpy(b)} if with_bias else {}
    got = softdist.softmax_loss(
        torch.from_numpy(W), torch.from_numpy(X), torch.from_numpy(labels), reg=0.25, **extra, **t_opts
    )
    assert len(got) == (3 if with_bias else 2)
    want_loss = data.detach().numpy() + (0 if options.get("reduction") == "none" else 0.25 * np.sum(W * W))
    np.testing.assert_allclose(got[0].numpy(), want_loss, rtol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), tW.grad.numpy(), rtol=1e-12, atol=1e-15)
    if with_bias:
        np.testing.assert_allclose(got[2].numpy(), tb.grad.numpy(), rtol=1e-12, atol=1e-15)


def _jax_plain_loss(labels, options, n, c, dtype):
    """The textbook formula -sum(T * log_softmax(z)) / denominator in JAX, for jax.grad to differentiate."""
    import jax
    import jax.numpy as jnp

    cw = jnp.asarray(options.get("class_weight", np.ones(c, dtype)))
    sw = jnp.asarray(options.get("sample_weight", np.ones(n, dtype)))
    eps = options.get("label_smoothing", 0.0)
    ignore = options.get("ignore_index")
    if labels.ndim == 2:
        T, counted = jnp.asarray(labels), jnp.ones(n, bool)
        denominator = jnp.sum(sw)
    else:
        counted = jnp.asarray(labels != ignore if ignore is not None else np.ones(n, bool))
        safe = jnp.where(counted, jnp.asarray(labels), 0)
        T = jax.nn.one_hot(safe, c, dtype=dtype)
        denominator = jnp.sum(jnp.where(counted, sw * cw[safe], 0))
    T = ((1 - eps) * T + eps / c) * cw * (sw * counted)[:, None]
    scale = 1 / denominator if options.get("reduction", "mean") == "mean" else 1.0

    def plain(z):  # "none": the sum of the rows, whose gradient is the per-row gradients
        return -jnp.sum(T * jax.nn.log_softmax(z)) * scale

    return plain


@pytest.mark.skipif(not has_jax, reason="jax is not installed")
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_jax_grad(float_dtype, case, rng):
    import jax
    import jax.numpy as jnp

    logits, labels, options = _case(rng, case, float_dtype)
    plain = _jax_plain_loss(labels, options, *logits.shape, float_dtype)
    want_loss, want_grad = jax.value_and_grad(plain)(jnp.asarray(logits))
    jax_opts = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    loss, grad = softdist.softmax_cross_entropy_and_grad(jnp.asarray(logits), jnp.asarray(labels), **jax_opts)
    tol = TOL[float_dtype]
    np.testing.assert_allclose(np.sum(np.asarray(loss)), np.asarray(want_loss), **tol)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), **tol)


@pytest.mark.skipif(not has_jax, reason="jax is not installed")
@pytest.mark.parametrize("case", ["plain", "all_options", "soft_all_options"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_softmax_loss_matches_jax_grad(case, with_bias, rng):
    import jax
    import jax.numpy as jnp

    _, labels, options = _case(rng, case, "float64")
    W, X, b = rng.standard_normal((6, C)), rng.standard_normal((N, 6)), rng.standard_normal(C)
    plain = _jax_plain_loss(labels, options, N, C, "float64")

    def total(W_, b_):
        scores = jnp.asarray(X) @ W_ + (b_ if with_bias else 0.0)
        return plain(scores) + 0.25 * jnp.sum(W_ * W_)

    want_loss, (want_dW, want_db) = jax.value_and_grad(total, argnums=(0, 1))(jnp.asarray(W), jnp.asarray(b))
    jax_opts = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    extra = {"b": jnp.asarray(b)} if with_bias else {}
    got = softdist.softmax_loss(
        jnp.asarray(W), jnp.asarray(X), jnp.asarray(labels), reg=0.25, **extra, **jax_opts
    )
    want = (want_loss, want_dW, want_db) if with_bias else (want_loss, want_dW)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12, atol=1e-15)


# -- finite differences -------------------------------------------------------------------------------------
def _central_differences(f, x, coords, h=1e-5):
    out = []
    for idx in coords:
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        out.append((f(up) - f(down)) / (2 * h))
    return np.array(out)


def _coords(rng, shape, k=12):
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(k)]


@pytest.mark.parametrize("case", ["plain", "all_options", "soft_all_options"])
def test_logits_gradient_matches_finite_differences(case, rng):
    logits, labels, options = _case(rng, case, "float64")
    grad = softdist.softmax_cross_entropy_and_grad(logits, labels, **options)[1]
    coords = _coords(rng, logits.shape)
    fd = _central_differences(
        lambda z: float(softdist.softmax_cross_entropy(z, labels, **options)), logits, coords
    )
    got = np.array([grad[i] for i in coords])
    assert np.max(np.abs(fd - got)) <= 1e-7 * np.max(np.abs(grad))


@pytest.mark.parametrize("reg", [0.0, 0.7])
@pytest.mark.parametrize("case", ["plain", "all_options"])
def test_linear_gradients_match_finite_differences(reg, case, rng):
    _, labels, options = _case(rng, case, "float64")
    W, X, b = rng.standard_normal((5, C)), rng.standard_normal((N, 5)), rng.standard_normal(C)
    _, dW, db = softdist.softmax_loss(W, X, labels, reg=reg, b=b, **options)

    def loss_of(W_, b_):
        return float(softdist.softmax_loss(W_, X, labels, reg=reg, b=b_, **options)[0])

    for grad, x, f in ((dW, W, lambda w: loss_of(w, b)), (db, b, lambda v: loss_of(W, v))):
        coords = _coords(rng, x.shape)
        fd = _central_differences(f, x, coords)
        got = np.array([grad[i] for i in coords])
        assert np.max(np.abs(fd - got)) <= 1e-7 * np.max(np.abs(grad))


# -- numerics at the edges -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "magnitude"), [("float32", 1e4), ("float64", 1e4), ("float32", 1e30)])
def test_huge_logits_give_finite_correct_losses(backend: Backend, dtype, magnitude, rng):
    logits = (magnitude * rng.standard_normal((N, C))).astype(dtype)
    labels = _labels(rng)
    want_loss, want_grad = reference_cross_entropy(logits, labels, reduction="none")
    z = backend.asarray(logits)
    loss, grad = backend.call(
        softdist.softmax_cross_entropy_and_grad, z, backend.asarray(labels), reduction="none"
    )
    # atol: a loss below float eps (target far above the rest) rounds to 0, as in every framework.
    tol = {"rtol": 1e-6, "atol": TOL[dtype]["atol"]}
    got = assert_matches_reference(backend, loss, want_loss, like=z, dtype=backend.dtype(dtype), **tol)
    assert np.all(np.isfinite(got))
    assert_matches_reference(backend, grad, want_grad, like=z, dtype=backend.dtype(dtype), **tol)


def test_masked_classes_and_degenerate_rows(backend: Backend, float_dtype, rng):
    logits = rng.standard_normal((6, C)).astype(float_dtype)
    labels = np.array([0, 1, 2, 3, -1, 5])
    logits[0, 3:] = -np.inf  # masked classes, label unmasked
    logits[1, :] = -np.inf  # every class masked
    logits[2, 0] = np.nan  # NaN poisons its own row only
    logits[4, :] = np.nan  # ignored row: 0 even though it is NaN
    z = backend.asarray(logits)
    loss, grad = backend.call(
        softdist.softmax_cross_entropy_and_grad, z, backend.asarray(labels), reduction="none", ignore_index=-1
    )
    loss, grad = backend.to_numpy(loss), backend.to_numpy(grad)
    assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))
    keep = [0, 1, 3, 4, 5]
    assert np.all(np.isfinite(loss[keep])) and np.all(np.isfinite(grad[keep]))
    assert np.all(grad[0, 3:] == 0)
    assert loss[1] == 0 and np.all(grad[1] == 0)
    assert loss[4] == 0 and np.all(grad[4] == 0)
    want_loss, want_grad = reference_cross_entropy(logits[[0, 3, 5]], labels[[0, 3, 5]], reduction="none")
    np.testing.assert_allclose(loss[[0, 3, 5]], want_loss, **TOL[float_dtype])
    np.testing.assert_allclose(grad[[0, 3, 5]], want_grad, **TOL[float_dtype])


def test_all_ignored_batch_gives_zero_not_nan(backend: Backend, rng):
    z = backend.asarray(rng.standard_normal((4, C)))
    labels = backend.asarray(np.full(4, -100))
    loss, grad = backend.call(softdist.softmax_cross_entropy_and_grad, z, labels, ignore_index=-100)
    assert backend.to_numpy(loss) == 0 and np.all(backend.to_numpy(grad) == 0)
    empty = backend.call(softdist.softmax_cross_entropy, backend.asarray(np.zeros((0, C))),
                         backend.asarray(np.zeros(0, dtype=np.int64)))  # fmt: skip
    assert backend.to_numpy(empty) == 0


HALF = [("numpy", "float16"), ("torch-cpu", "float16"), ("torch-cpu", "bfloat16"), ("jax-cpu", "float16"),
        ("jax-cpu", "bfloat16"), ("jax-jit-cpu", "bfloat16")]  # fmt: skip


@pytest.mark.parametrize(("backend_name", "half"), HALF)
def test_half_precision_reduces_in_float32(backend_name, half, rng):
    from softdist.testing import backend_by_name

    backend = backend_by_name(backend_name)
    if (reason := backend.skip_reason()) is not None:
        pytest.skip(reason)
    # 70,000 equal logits: the sum of exponentials (7e4) overflows float16 (max 65504).
    wide = backend.asarray(np.zeros((2, 70_000), np.float32))
    wide = backend.xp.astype(wide, backend.dtype(half))
    loss = backend.call(softdist.softmax_cross_entropy, wide, backend.asarray(np.array([0, 69_999])))
    assert loss.dtype == backend.dtype(half)
    # Within 1e-3 of the float32 result, or within the final rounding to the half dtype (bfloat16 keeps
    # 8 significant bits: relative spacing up to 2**-7).
    rtol = max(1e-3, float(backend.xp.finfo(backend.dtype(half)).eps) / 2)
    np.testing.assert_allclose(float(backend.to_numpy(backend.xp.astype(loss, backend.xp.float32))),
                               np.log(70_000), rtol=rtol)  # fmt: skip
    logits32 = (4 * rng.standard_normal((N, C))).astype(np.float32)
    labels = backend.asarray(_labels(rng))
    half_in = backend.xp.astype(backend.asarray(logits32), backend.dtype(half))
    rounded = backend.to_numpy(backend.xp.astype(half_in, backend.xp.float32))
    loss_h, grad_h = backend.call(softdist.softmax_cross_entropy_and_grad, half_in, labels)
    assert grad_h.dtype == backend.dtype(half)
    want = reference_cross_entropy(rounded, _labels_np(labels, backend))[0]
    got = float(backend.to_numpy(backend.xp.astype(loss_h, backend.xp.float32)))
    np.testing.assert_allclose(got, want, rtol=rtol)


def _labels_np(labels, backend):
    return backend.to_numpy(labels)


# -- labels that are not class indices -------------------------------------------------------------------
BAD_LABELS = {
    "too_large": [0, C, 1],
    "negative": [0, -1, 1],
    "non_integer": [0.0, 1.5, 2.0],
    "nan": [0, np.nan, 1],
}


@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_bad_label_values(backend: Backend, kind):
    labels = np.array(BAD_LABELS[kind])
    z = backend.asarray(np.zeros((3, C)))
    y = backend.asarray(labels)
    if not backend.jit and not backend.lazy:
        with pytest.raises(ValueError, match=r"labels must be integer class indices in \[0, 7\)"):
            softdist.softmax_cross_entropy_and_grad(z, y)
        return
    # Under jax.jit and Dask the values cannot be read without a sync: the affected row is NaN instead of
    # silently wrapping -1 around to the last class.
    loss, grad = backend.call(softdist.softmax_cross_entropy_and_grad, z, y, reduction="none")
    loss, grad = backend.to_numpy(loss), backend.to_numpy(grad)
    assert np.isnan(loss[1]) and np.all(np.isnan(grad[1]))
    assert np.all(np.isfinite(loss[[0, 2]])) and np.all(np.isfinite(grad[[0, 2]]))
    # The mean: NaN, and the invalid row counts in the denominator on every backend (Dask's row blocks
    # and jit alike): the other rows' gradient is (softmax - onehot) / 3.
    loss, grad = backend.call(softdist.softmax_cross_entropy_and_grad, z, y)
    loss, grad = backend.to_numpy(loss), backend.to_numpy(grad)
    assert np.isnan(loss)
    expected = (np.full(C, 1 / C) - np.eye(C)[labels[[0, 2]].astype(int)]) / 3
    np.testing.assert_allclose(grad[[0, 2]], expected, rtol=1e-6)


def test_integral_float_labels_are_accepted(rng):
    z = rng.standard_normal((N, C))
    y = _labels(rng)
    np.testing.assert_allclose(softdist.softmax_cross_entropy(z, y.astype(np.float64)),
                               softdist.softmax_cross_entropy(z, y), rtol=0)  # fmt: skip


class TestBadInput:
    z = np.zeros((4, 3))
    y = np.array([0, 1, 2, 0])

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"labels": np.zeros(5, int)}, ValueError, r"labels must be class indices of shape \(4,\)"),
            ({"labels": np.zeros((4, 2))}, ValueError, r"soft targets .* \(4, 3\); got \(4, 2\)"),
            ({"logits": np.zeros(())}, ValueError, r"logits must have at least one dimension"),
            (
                {"logits": np.zeros(3), "labels": np.zeros(2, int)},
                ValueError,
                r"labels must be class indices of shape \(\)",
            ),
            ({"labels": np.ones((4, 3), int)}, TypeError, "labels of the logits' shape are soft targets"),
            ({"axis": 2}, ValueError, "axis 2 is out of range"),
            ({"axis": 1.0}, TypeError, "axis must be an int"),
            ({"axis": 0}, ValueError, r"labels must be class indices of shape \(3,\)"),
            ({"logits": np.zeros((4, 3, 2))}, ValueError, r"labels must be class indices of shape \(4, 3\)"),
            (
                {
                    "logits": np.zeros((4, 3, 2)),
                    "labels": np.zeros((4, 2), int),
                    "axis": 1,
                    "sample_weight": np.ones(4),
                },
                ValueError,
                r"sample_weight must have the logits' batch shape \(4, 2\)",
            ),
            (
                {"labels": np.array([True, False, True, True])},
                TypeError,
                "integer class indices; got dtype bool",
            ),
            ({"class_weight": np.ones(4)}, ValueError, r"class_weight must be a 1-D array of shape \(3,\)"),
            (
                {"sample_weight": np.ones((4, 1))},
                ValueError,
                r"sample_weight must be a 1-D array of shape \(4,\)",
            ),
            ({"reduction": "avg"}, ValueError, "reduction must be one of"),
            ({"label_smoothing": 1.5}, ValueError, r"label_smoothing must be a number in \[0, 1\]"),
            ({"label_smoothing": True}, ValueError, r"label_smoothing must be a number in \[0, 1\]"),
            ({"ignore_index": 1.0}, TypeError, "ignore_index must be an int"),
            ({"labels": np.full((4, 3), 1 / 3), "ignore_index": 0}, ValueError, "ignore_index applies to"),
            ({"class_weight": [1.0, 1.0, 1.0]}, TypeError, "class_weight must be an array"),
        ],
    )
    def test_logits_api(self, kwargs, error, match):
        args = {"logits": self.z, "labels": self.y} | kwargs
        with pytest.raises(error, match=match):
            softdist.softmax_cross_entropy_and_grad(args.pop("logits"), args.pop("labels"), **args)

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"X": np.zeros((4, 5))}, ValueError, r"X has 5 features .* W has 2 rows"),
            ({"y": np.zeros(3, int)}, ValueError, r"labels must be class indices of shape \(4,\)"),
            ({"b": np.zeros(4)}, ValueError, r"b must be a 1-D array of shape \(3,\)"),
            ({"W": np.zeros(6)}, ValueError, "W must be a 2-D array"),
            ({"reg": -1.0}, ValueError, "reg must be a finite number >= 0"),
            ({"reg": "0.1"}, TypeError, "reg must be a number"),
            ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
            ({"chunk_size": -2}, ValueError, "chunk_size must be a positive int"),
            ({"chunk_size": "big"}, TypeError, "chunk_size must be a positive int"),
            ({"chunk_size": 2.0}, TypeError, "chunk_size must be a positive int"),
            ({"chunk_size": True}, TypeError, "chunk_size must be a positive int"),
        ],
    )
    def test_linear_api(self, kwargs, error, match):
        args = {"W": np.zeros((2, 3)), "X": np.zeros((4, 2)), "y": self.y} | kwargs
        with pytest.raises(error, match=match):
            softdist.softmax_loss(args.pop("W"), args.pop("X"), args.pop("y"), **args)

    @pytest.mark.skipif(not has_torch, reason="torch is not installed")
    def test_two_libraries(self):
        import torch

        with pytest.raises(TypeError, match="one array library; got logits from numpy, labels from torch"):
            softdist.softmax_cross_entropy(self.z, torch.from_numpy(self.y))

    def test_two_devices(self):
        xps = pytest.importorskip("array_api_strict")
        z = xps.asarray(self.z)
        y = xps.asarray(self.y, device=xps.Device("device1"))
        with pytest.raises(ValueError, match="one device"):
            softdist.softmax_cross_entropy(z, y)
