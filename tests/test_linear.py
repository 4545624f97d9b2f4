"""The fused linear cross-entropy head: every backend against torch autograd of F.linear + the loss written
out in float64, jax.grad of the plain formula, finite differences, chunk invariance, bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import softdist
from softdist.testing import Backend, assert_same_kind

N, D, C = 23, 6, 9
has_torch = importlib.util.find_spec("torch") is not None
has_jax = importlib.util.find_spec("jax") is not None
# float32 against float64 truths: loss 1e-6, dX/dW/dbias 5e-7 relative (Frobenius), the bar;
# float64: 1e-10.
LOSS_TOL = {"float32": 1e-6, "float64": 1e-10}
GRAD_TOL = {"float32": 5e-7, "float64": 1e-10}


def _labels(rng, n=N):
    y = rng.integers(0, C, n)
    y[: min(n, C)] = np.arange(min(n, C))
    return y


CASES = {
    "plain": lambda r: (_labels(r), {}),
    "sum": lambda r: (_labels(r), {"reduction": "sum"}),
    "none": lambda r: (_labels(r), {"reduction": "none", "z_loss": 0.01}),
    "all_options": lambda r: (
        np.where(r.random(N) < 0.2, -1, _labels(r)),
        dict(
            class_weight=r.random(C) + 0.2,
            sample_weight=r.random(N),
            label_smoothing=0.1,
            ignore_index=-1,
            z_loss=0.05,
            softcap=4.0,
        ),
    ),
    "soft_all_options": lambda r: (
        r.dirichlet(np.ones(C), N),
        {
            "class_weight": r.random(C) + 0.2,
            "sample_weight": r.random(N),
            "label_smoothing": 0.2,
            "z_loss": 0.1,
            "softcap": 3.0,
        },
    ),
}


def reference(X, W, labels, bias=None, *, reduction="mean", sample_weight=None, class_weight=None,
              label_smoothing=0.0, ignore_index=None, z_loss=0.0, softcap=None):  # fmt: skip
    """(loss, dX, dW, dbias) by torch autograd in float64 of F.linear and the loss written out."""
    import torch

    t = lambda a: None if a is None else torch.tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    Xt, Wt = t(X).requires_grad_(), t(W).requires_grad_()
    bt = None if bias is None else t(bias).requires_grad_()
    z = torch.nn.functional.linear(Xt, Wt, bt)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    n, c = z.shape
    lse = torch.logsumexp(z, dim=1)
    sw = torch.ones(n, dtype=torch.float64) if sample_weight is None else t(sample_weight)
    cw = torch.ones(c, dtype=torch.float64) if class_weight is None else t(class_weight)
    if labels.ndim == 2:
        q = t(labels) * (1 - label_smoothing) + label_smoothing / c
        q = q * cw
        row_weight = sw
        rows = sw * (q * (lse[:, None] - z)).sum(1)
    else:
        y = torch.tensor(labels)
        keep = torch.ones(n, dtype=torch.bool) if ignore_index is None else y != ignore_index
        ys = torch.where(keep, y, 0)
        ce = torch.nn.functional.cross_entropy(
            z, ys, weight=cw, reduction="none", label_smoothing=label_smoothing
        )
        row_weight = sw * cw[ys] * keep
        rows = sw * ce * keep
    rows = rows + z_loss * row_weight * lse**2
    if reduction == "none":
        loss, total = rows, rows.sum()
    else:
        total = rows.sum()
        if reduction == "mean":
            denom = row_weight.sum()
            total = total / denom if denom != 0 else total * 0
        loss = total
    total.backward()
    out = [loss.detach().numpy(), Xt.grad.numpy(), Wt.grad.numpy()]
    return (*out, None if bt is None else bt.grad.numpy())


def _data(rng, dtype, n=N):
    X = rng.standard_normal((n, D)).astype(dtype)
    W = (0.8 * rng.standard_normal((C, D))).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    return X, W, b


def _rounded(options, dtype):
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _on(backend, options):
    return {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _check(backend, got, want, like, dtype, tol, what):
    assert_same_kind(got, like, dtype=dtype, what=what)
    assert tuple(got.shape) == want.shape, f"{what}: shape {tuple(got.shape)}, expected {want.shape}"
    g = backend.to_numpy(got).astype(np.float64)
    error = np.linalg.norm(g - want) / max(np.linalg.norm(want), 1e-300)
    assert error <= tol, f"{what}: relative error {error:.3g} > {tol:g}"


def _run_and_check(backend, float_dtype, rng, labels, options, with_bias, chunk_size):
    X, W, b = _data(rng, float_dtype)
    options = _rounded(options, float_dtype)
    if labels.ndim == 2:
        labels = labels.astype(float_dtype)
    bias = b if with_bias else None
    want = reference(X, W, labels, bias, **options)
    Xb, Wb = backend.asarray(X), backend.asarray(W)
    args = (Xb, Wb, backend.asarray(labels))
    extra = _on(backend, options) | {"chunk_size": chunk_size}
    if with_bias:
        extra["bias"] = backend.asarray(b)
    out = backend.call(softdist.linear_cross_entropy_and_grad, *args, **extra)
    assert len(out) == (4 if with_bias else 3)
    dtype = backend.dtype(float_dtype)
    _check(backend, out[0], want[0], Xb, dtype, LOSS_TOL[float_dtype], "loss")
    for got, w, name in zip(out[1:], want[1:], ("dX", "dW", "dbias"), strict=False):
        _check(backend, got, w, Xb, dtype, GRAD_TOL[float_dtype], name)
    loss = backend.call(softdist.linear_cross_entropy, *args, **extra)
    _check(backend, loss, want[0], Xb, dtype, LOSS_TOL[float_dtype], "loss only")
    np.testing.assert_array_equal(backend.to_numpy(Xb), X)  # inputs unmodified
    np.testing.assert_array_equal(backend.to_numpy(Wb), W)


@pytest.mark.skipif(not has_torch, reason="the reference needs torch")
class TestLinearCrossEntropy:
    @pytest.mark.parametrize("chunk_size", [1, 7, 256, N])
    def test_chunk_sizes_match_reference(self, backend: Backend, float_dtype, chunk_size, rng):
        labels, options = CASES["all_options"](rng)
        _run_and_check(backend, float_dtype, rng, labels, options, True, chunk_size)

    @pytest.mark.parametrize("case", sorted(CASES))
    @pytest.mark.parametrize("with_bias", [False, True])
    def test_options_match_reference(self, backend: Backend, float_dtype, case, with_bias, rng):
        labels, options = CASES[case](rng)
        _run_and_check(backend, float_dtype, rng, labels, options, with_bias, 7)

    def test_auto_chunk_matches_reference(self, backend: Backend, rng):
        labels, options = CASES["plain"](rng)
        _run_and_check(backend, "float64", rng, labels, options, True, "auto")

    def test_all_ignored_gives_zero(self, rng):
        X, W, b = _data(rng, "float64")
        y = np.full(N, -1)
        loss, dX, dW, db = softdist.linear_cross_entropy_and_grad(
            X, W, y, bias=b, ignore_index=-1, z_loss=0.1
        )
        assert loss == 0 and not dX.any() and not dW.any() and not db.any()

    def test_empty_batch(self):
        X, W = np.zeros((0, D)), np.ones((C, D))
        loss, dX, dW = softdist.linear_cross_entropy_and_grad(X, W, np.zeros(0, dtype=int))
        assert loss == 0 and dX.shape == (0, D) and not dW.any()

    def test_softmax_loss_equals_head_on_transposed_weight(self, rng):
        X, W, b = _data(rng, "float64")
        y = _labels(rng)
        loss, dW, db = softdist.softmax_loss(W.T, X, y, b=b, chunk_size=5)
        want = reference(X, W, y, b)
        np.testing.assert_allclose(loss, want[0], rtol=1e-12)
        np.testing.assert_allclose(dW, want[2].T, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(db, want[3], rtol=1e-10, atol=1e-14)


@pytest.mark.skipif(not has_torch, reason="needs torch")
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_half_precision_accumulates_in_float32(dtype_name, rng):
    import torch

    dtype = getattr(torch, dtype_name)
    X, W, b = (rng.standard_normal(s) for s in ((300, 16), (C, 16), (C,)))
    y = _labels(rng, 300)
    Xh, Wh, bh = (torch.tensor(a).to(dtype) for a in (X, W, b))
    want = reference(*(a.double().numpy() for a in (Xh, Wh)), y, bh.double().numpy())
    loss, dX, dW, db = softdist.linear_cross_entropy_and_grad(Xh, Wh, torch.tensor(y), bias=bh, chunk_size=1)
    assert loss.dtype == dX.dtype == dW.dtype == db.dtype == dtype
    tol = 2e-2 if dtype_name == "bfloat16" else 3e-3
    for got, w in zip((loss, dX, dW, db), want, strict=True):
        got = got.double().numpy()
        assert np.linalg.norm(got - w) <= tol * np.linalg.norm(w)
    # 300 one-row chunks: float32 accumulation keeps dW within a rounding of the exact sum
    assert np.linalg.norm(dW.double().numpy() - want[2]) <= 2**-7 * np.linalg.norm(want[2])


@pytest.mark.skipif(not has_jax, reason="needs jax")
def test_matches_jax_grad_of_plain_formula(rng):
    import jax
    import jax.numpy as jnp

    X, W, b = _data(rng, "float64")
    y = _labels(rng)
    sw = rng.random(N)

    def plain(X, W, b):
        z = 3.0 * jnp.tanh((X @ W.T + b) / 3.0)
        lse = jax.scipy.special.logsumexp(z, axis=1)
        rows = sw * (lse - z[jnp.arange(N), y]) + 0.2 * sw * lse**2
        return jnp.sum(rows) / jnp.sum(sw)

    want = (plain(X, W, b), *jax.grad(plain, argnums=(0, 1, 2))(X, W, b))
    got = softdist.linear_cross_entropy_and_grad(
        X, W, y, bias=b, sample_weight=sw, z_loss=0.2, softcap=3.0, chunk_size=4
    )
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-10, atol=1e-14)


def test_finite_differences(rng):
    X, W, b = _data(rng, "float64", n=8)
    y = _labels(rng, 8)
    options = {"z_loss": 0.1, "softcap": 2.5, "label_smoothing": 0.1, "chunk_size": 3}
    _, dX, dW, db = softdist.linear_cross_entropy_and_grad(X, W, y, bias=b, **options)
    h = 1e-6
    for array, grad in ((X, dX), (W, dW), (b, db)):
        for index in [(0,) * array.ndim, tuple(s - 1 for s in array.shape)]:
            plus, minus = array.copy(), array.copy()
            plus[index] += h
            minus[index] -= h
            args = {id(X): [X, W, b], id(W): [X, W, b], id(b): [X, W, b]}[id(array)]
            up = [plus if a is array else a for a in args]
            down = [minus if a is array else a for a in args]
            f_up = softdist.linear_cross_entropy(up[0], up[1], y, bias=up[2], **options)
            f_down = softdist.linear_cross_entropy(down[0], down[1], y, bias=down[2], **options)
            np.testing.assert_allclose((f_up - f_down) / (2 * h), grad[index], rtol=1e-6, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), chunk=st.integers(1, 35), seed=st.integers(0, 2**16))
def test_chunk_invariance_and_row_permutation(n, chunk, seed):
    rng = np.random.default_rng(seed)
    X, W, b = _data(rng, "float64", n=n)
    y = _labels(rng, n)
    options = {"bias": b, "z_loss": 0.05, "softcap": 5.0, "label_smoothing": 0.1, "reduction": "none"}
    whole = softdist.linear_cross_entropy_and_grad(X, W, y, chunk_size=n, **options)
    chunked = softdist.linear_cross_entropy_and_grad(X, W, y, chunk_size=chunk, **options)
    for w, c in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(c, w, rtol=1e-12, atol=1e-14)
    perm = rng.permutation(n)
    permuted = softdist.linear_cross_entropy_and_grad(X[perm], W, y[perm], chunk_size=chunk, **options)
    np.testing.assert_allclose(permuted[0], whole[0][perm], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(permuted[1], whole[1][perm], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(permuted[2], whole[2], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(permuted[3], whole[3], rtol=1e-10, atol=1e-13)


class TestBadInput:
    @pytest.mark.parametrize(
        ("change", "error", "match"),
        [
            ({"W": np.ones((C, D + 1))}, ValueError, "X has 6 features"),
            ({"y": np.zeros(N - 1, dtype=int)}, ValueError, "labels must be class indices of shape"),
            ({"bias": np.ones(C + 1)}, ValueError, "bias must be a 1-D array of shape"),
            ({"class_weight": np.ones(C - 1)}, ValueError, "class_weight must be a 1-D array"),
            ({"y": np.ones((N, C + 1))}, ValueError, "soft targets"),
            ({"y": np.full(N, C)}, ValueError, "labels must be integer class indices"),
            ({"chunk_size": 0}, ValueError, "chunk_size must be"),
            ({"chunk_size": 2.5}, TypeError, "chunk_size must be"),
            ({"chunk_size": "big"}, TypeError, "chunk_size must be"),
            ({"chunk_size": True}, TypeError, "chunk_size must be"),
            ({"softcap": 0.0}, ValueError, "softcap must be"),
            ({"softcap": -1}, ValueError, "softcap must be"),
            ({"z_loss": -0.1}, ValueError, "z_loss must be"),
            ({"z_loss": float("nan")}, ValueError, "z_loss must be"),
            ({"reduction": "avg"}, ValueError, "reduction must be"),
            ({"X": np.ones(D)}, ValueError, "X must be a 2-D array"),
            ({"W": np.ones(D)}, ValueError, "W must be a 2-D array"),
        ],
    )
    def test_raises(self, change, error, match):
        args = {"X": np.ones((N, D)), "W": np.ones((C, D)), "y": np.zeros(N, dtype=int)} | change
        for f in (softdist.linear_cross_entropy, softdist.linear_cross_entropy_and_grad):
            with pytest.raises(error, match=match):
                f(args["X"], args["W"], args["y"],
                  **{k: v for k, v in args.items() if k not in ("X", "W", "y")})  # fmt: skip

    @pytest.mark.skipif(not has_torch, reason="needs torch")
    def test_two_libraries(self):
        import torch

        with pytest.raises(TypeError, match="one array library"):
            softdist.linear_cross_entropy(np.ones((N, D)), torch.ones(C, D), np.zeros(N, dtype=int))

    def test_two_devices(self):
        xps = pytest.importorskip("array_api_strict")
        X = xps.asarray(np.ones((N, D)), device=xps.Device("device1"))
        with pytest.raises(ValueError, match="one device"):
            softdist.linear_cross_entropy(
                X, xps.asarray(np.ones((C, D))), xps.asarray(np.zeros(N, dtype=int))
            )


class TestDask:
    def test_lazy_row_blocks_and_tree_reduced_weight_gradient(self, rng):
        da = pytest.importorskip("dask.array")
        from softdist.testing import backend_by_name

        X, W, b = _data(rng, "float64", n=40)
        y = _labels(rng, 40)
        Xd = da.from_array(X, chunks=(5, D))  # 8 row blocks: 8 chunks
        with backend_by_name("dask").no_compute():
            loss, dX, dW, db = softdist.linear_cross_entropy_and_grad(
                Xd, da.from_array(W), da.from_array(y, chunks=5), bias=da.from_array(b), z_loss=0.1
            )
        assert all(isinstance(a, da.Array) for a in (loss, dX, dW, db))
        assert dX.chunks[0] == (5,) * 8
        # the largest task holds one row block of logits, never all of them
        graph = dict(dW.__dask_graph__())
        assert len(graph) > 8
        want = reference(X, W, y, b, z_loss=0.1) if has_torch else None
        if want is not None:
            for got, w in zip((loss, dX, dW, db), want, strict=True):
                np.testing.assert_allclose(
                    np.asarray(got.compute(scheduler="sync")), w, rtol=1e-10, atol=1e-13
                )

    @pytest.mark.parametrize("chunk_size", [7, "auto"])
    def test_row_inputs_follow_the_row_blocks_of_x(self, rng, chunk_size):
        # labels and sample_weight in other blocks than X: no slivers, an int chunk_size kept exactly
        da = pytest.importorskip("dask.array")
        X, W, _ = _data(rng, "float64", n=50)
        y = _labels(rng, 50)
        sw = rng.uniform(0.5, 2.0, 50)
        loss, dX, dW = softdist.linear_cross_entropy_and_grad(
            da.from_array(X, chunks=(13, D)), da.from_array(W), da.from_array(y, chunks=11),
            sample_weight=da.from_array(sw, chunks=20), chunk_size=chunk_size,
        )  # fmt: skip
        assert dX.chunks[0] == ((7,) * 7 + (1,) if chunk_size == 7 else (13, 13, 13, 11))
        single = softdist.linear_cross_entropy_and_grad(X, W, y, sample_weight=sw)
        for got, w in zip((loss, dX, dW), single, strict=True):
            np.testing.assert_allclose(np.asarray(got.compute(scheduler="sync")), w, rtol=1e-12, atol=1e-14)

    def test_on_a_distributed_local_cluster(self, rng):
        distributed = pytest.importorskip("distributed")
        da = pytest.importorskip("dask.array")
        X, W, _ = _data(rng, "float64", n=60)
        y = _labels(rng, 60)
        with (
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="400MiB",
                                     dashboard_address=None) as cluster,
            distributed.Client(cluster) as client,
        ):  # fmt: skip
            lazy = softdist.linear_cross_entropy_and_grad(
                da.from_array(X, chunks=(16, D)), da.from_array(W), da.from_array(y, chunks=16), chunk_size=10
            )
            loss, dX, dW = client.compute(lazy, sync=True)
        single = softdist.linear_cross_entropy_and_grad(X, W, y)
        for got, w in zip((loss, dX, dW), single, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)


def test_docstring_examples_run():
    import doctest

    import softdist.linear

    result = doctest.testmod(softdist.linear)
    assert result.failed == 0 and result.attempted >= 6
