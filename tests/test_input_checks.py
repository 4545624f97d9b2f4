"""Inputs that cannot be computed on get one clear error naming the argument; `xp=` is checked against
the arrays; `reg` as a 0-D array; Dask arrays of unknown size; JAX arrays sharded over several devices."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import softdist
from softdist.testing import Backend, reference_sqdist

has_torch = importlib.util.find_spec("torch") is not None


def _calls(make):
    """Every public array function, given arrays made by ``make`` from NumPy."""
    rng = np.random.default_rng(0)
    z, y, X = rng.standard_normal((6, 3)), np.array([0, 1, 2, 0, 1, 2]), rng.standard_normal((6, 4))
    W = rng.standard_normal((4, 3))
    return {
        "softmax_cross_entropy": lambda **kw: softdist.softmax_cross_entropy(make(z), make(y), **kw),
        "softmax_cross_entropy_and_grad": lambda **kw: softdist.softmax_cross_entropy_and_grad(
            make(z), make(y), **kw
        ),
        "softmax_loss": lambda **kw: softdist.softmax_loss(make(W), make(X), make(y), **kw),
        "pairwise_sqdist": lambda **kw: softdist.pairwise_sqdist(make(X), **kw),
        "pairwise_distances": lambda **kw: softdist.pairwise_distances(make(X), make(X), **kw),
        "knn": lambda **kw: softdist.knn(make(X), k=2, **kw),
    }


FUNCTIONS = sorted(_calls(np.asarray))
FIRST_ARG = {"softmax_cross_entropy": "logits", "softmax_cross_entropy_and_grad": "logits",
             "softmax_loss": "W", "pairwise_sqdist": "A", "pairwise_distances": "A", "knn": "Q"}  # fmt: skip


# -- arrays without computable dense data ----------------------------------------------------------------
def _torch_kinds():
    import torch

    def nested(x):
        t = torch.asarray(x)
        return torch.nested.nested_tensor(list(t)) if t.ndim == 2 else t

    return {
        "meta": (lambda x: torch.asarray(x, device="meta"), "torch meta tensor"),
        "sparse_coo": (lambda x: torch.asarray(x).to_sparse(), "sparse torch tensor"),
        "sparse_csr": (
            lambda x: torch.asarray(x).to_sparse_csr() if np.ndim(x) == 2 else torch.asarray(x),
            "sparse torch tensor",
        ),
        "nested": (nested, "nested torch tensor"),
    }


@pytest.mark.skipif(not has_torch, reason="torch is not installed")
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("kind", ["meta", "sparse_coo", "sparse_csr", "nested"])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_torch_tensors_without_dense_data(kind, function):
    make, what = _torch_kinds()[kind]
    with pytest.raises(
        ValueError, match=rf"{FIRST_ARG[function]} must be a dense array with data; got a {what}"
    ):
        _calls(make)[function]()


@pytest.mark.parametrize("function", FUNCTIONS)
def test_numpy_masked_arrays(function):
    def masked(x):
        return np.ma.masked_array(x, mask=np.zeros(np.shape(x), bool))

    with pytest.raises(ValueError, match=rf"{FIRST_ARG[function]} must be .* NumPy masked array"):
        _calls(masked)[function]()


def test_dask_masked_chunks():
    da = pytest.importorskip("dask.array")
    X = da.ma.masked_greater(da.from_array(np.arange(12.0).reshape(6, 2), chunks=3), 100)
    with pytest.raises(ValueError, match=r"A must be .* masked chunks"):
        softdist.pairwise_sqdist(X)


# -- xp= ---------------------------------------------------------------------------------------------------
RAW_MODULE = {"numpy": "numpy", "strict": "array_api_strict", "torch": "torch", "jax": "jax.numpy",
              "dask": "dask.array", "cupy": "cupy"}  # fmt: skip


@pytest.mark.parametrize("function", FUNCTIONS)
def test_xp_matching_the_arrays(backend: Backend, function, rng):
    """xp= given as the compatible namespace or as the library's own module: the same result as without."""
    calls = _calls(backend.asarray)
    without = calls[function]() if not backend.jit else None
    for xp in (backend.xp, importlib.import_module(RAW_MODULE[backend.library])):
        if backend.jit:
            import jax

            got = jax.jit(lambda xp=xp: calls[function](xp=xp))()
        else:
            with backend.no_compute():
                got = calls[function](xp=xp)
            for g, w in zip(got if isinstance(got, tuple) else (got,),
                            without if isinstance(without, tuple) else (without,), strict=True):  # fmt: skip
                assert type(g) is type(w)
                np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))
        assert got is not None


@pytest.mark.parametrize("function", FUNCTIONS)
def test_xp_not_matching_the_arrays(backend: Backend, function):
    import array_api_compat.numpy as np_xp

    other = np_xp if backend.library != "numpy" else pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match=rf"xp must be the namespace of the arrays .* got {other.__name__}"):
        _calls(backend.asarray)[function](xp=other)
    with pytest.raises(TypeError, match="xp must be the namespace"):
        _calls(backend.asarray)[function](xp="numpy")


# -- reg ---------------------------------------------------------------------------------------------------
def test_reg_as_a_0d_array(backend: Backend, rng):
    W, X, y = rng.standard_normal((4, 3)), rng.standard_normal((6, 4)), np.array([0, 1, 2, 0, 1, 2])
    args = [backend.asarray(a) for a in (W, X, y)]
    want = softdist.softmax_loss(W, X, y, reg=0.25)
    for reg in (np.array(0.25), np.array(0.25, np.float32)):
        got = _call_with_reg(backend, args, backend.asarray(reg))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(
                backend.to_numpy(g), w, rtol=1e-6 if reg.dtype == np.float32 else 1e-14
            )
    for bad in (-0.5, np.inf, np.nan):
        reg = backend.asarray(np.array(bad))
        if backend.jit or backend.lazy:  # the value cannot be read: NaN, as for invalid labels
            loss, dW = _call_with_reg(backend, args, reg)
            assert np.isnan(backend.to_numpy(loss)) and np.all(np.isnan(backend.to_numpy(dW)))
        else:
            with pytest.raises(ValueError, match="reg must be a finite number >= 0; got an array holding"):
                softdist.softmax_loss(*args, reg=reg)


def _call_with_reg(backend: Backend, args, reg):
    if backend.jit:
        import jax

        return jax.jit(lambda W, X, y, r: softdist.softmax_loss(W, X, y, reg=r))(*args, reg)
    with backend.no_compute():
        return softdist.softmax_loss(*args, reg=reg)


def test_bad_reg_always_names_reg():
    W, X, y = np.zeros((2, 3)), np.zeros((4, 2)), np.array([0, 1, 2, 0])
    with pytest.raises(
        ValueError, match=r"reg must be a number or a 0-D array; got an array of shape \(1,\)"
    ):
        softdist.softmax_loss(W, X, y, reg=np.array([0.1]))
    with pytest.raises(TypeError, match="reg must be real"):
        softdist.softmax_loss(W, X, y, reg=np.array(1 + 1j))
    with pytest.raises(TypeError, match="reg must be a number"):
        softdist.softmax_loss(W, X, y, reg=True)
    if has_torch:
        import torch

        t = [torch.asarray(a) for a in (W, X, y)]
        with pytest.raises(TypeError, match=r"one array library; got W from torch.* reg from numpy"):
            softdist.softmax_loss(*t, reg=np.array(0.1))


# -- knn options -------------------------------------------------------------------------------------------
def test_exclude_self_must_be_a_bool(backend: Backend):
    X = backend.asarray(np.zeros((4, 2)))
    for value in ("no", 1, 0, np.True_, "False"):
        with pytest.raises(TypeError, match="exclude_self must be True, False or None"):
            softdist.knn(X, k=1, exclude_self=value)


def test_working_memory_must_be_a_positive_int(backend: Backend):
    X = backend.asarray(np.zeros((4, 2)))
    for value in (True, False, 0, -5, 1.5, "64MB"):
        with pytest.raises(ValueError, match=r"working_memory must be a positive int \(bytes\)"):
            softdist.knn(X, k=1, working_memory=value)


def test_knn_valid_options_still_work(backend: Backend):
    X = backend.asarray(np.array([[0.0], [1.0], [3.0]]))
    for exclude, want in ((True, [[1], [0], [1]]), (False, [[0], [1], [2]]), (None, [[1], [0], [1]])):
        _, idx = backend.call(softdist.knn, X, k=1, exclude_self=exclude, working_memory=1)
        np.testing.assert_array_equal(backend.to_numpy(idx), want)


# -- Dask arrays of unknown size ---------------------------------------------------------------------------
@pytest.fixture
def unknown():
    da = pytest.importorskip("dask.array")
    X = np.random.default_rng(0).standard_normal((20, 3))
    Xd = da.from_array(X, chunks=5)
    keep = Xd[:, 0] > 0
    y = np.arange(20) % 3
    return X, Xd[keep], X[X[:, 0] > 0], da.from_array(y, chunks=5)[keep]


def test_dask_unknown_sizes_in_softmax_and_knn(unknown):
    _, Xu, _, yu = unknown
    import dask.array as da

    msg = r"{} has unknown chunk sizes \(shape \(nan, 3\)\).*call {}.compute_chunk_sizes\(\) first"
    for call, name in (
        (lambda: softdist.softmax_cross_entropy(Xu, yu), "logits"),
        (lambda: softdist.softmax_cross_entropy_and_grad(Xu, yu), "logits"),
        (lambda: softdist.softmax_loss(da.ones((3, 3)), Xu, yu), "X"),
        (lambda: softdist.knn(Xu, k=2), "Q"),
        (lambda: softdist.knn(Xu[:, :3], da.ones((4, 3)), k=2), "Q"),
    ):
        with pytest.raises(ValueError, match=msg.format(name, name)):
            call()
    with pytest.raises(ValueError, match=r"X has unknown chunk sizes"):
        softdist.knn(da.ones((4, 3)), Xu, k=2)
    with pytest.raises(ValueError, match=r"labels has unknown chunk sizes"):
        softdist.softmax_cross_entropy(da.ones((5, 3)), yu)


def test_dask_unknown_sizes_in_distances(unknown):
    # Before: all-NaN results without an error (one side unknown), or a ValueError from inside Dask.
    X, Xu, _, _ = unknown
    import dask.array as da

    Xd = da.from_array(X, chunks=5)
    for func in (softdist.pairwise_sqdist, softdist.pairwise_distances):
        for args, name in (((Xu,), "A"), ((Xu, Xd), "A"), ((Xd, Xu), "B")):
            with pytest.raises(ValueError, match=rf"{name} has unknown chunk sizes.*compute_chunk_sizes"):
                func(*args)
    Xu.compute_chunk_sizes()  # the suggested remedy works
    np.testing.assert_allclose(
        softdist.pairwise_sqdist(Xd, Xu).compute(),
        reference_sqdist(X, X[X[:, 0] > 0]),
        rtol=1e-10,
        atol=1e-12,
    )


# -- JAX arrays sharded over several devices ---------------------------------------------------------------
SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import softdist
    from softdist.testing import reference_cross_entropy

    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((8, 5)), np.arange(8) % 5
    zs = jax.device_put(jnp.asarray(z), NamedSharding(mesh, P("x", None)))
    ys = jax.device_put(jnp.asarray(y), NamedSharding(mesh, P("x")))
    want_loss, want_grad = reference_cross_entropy(z, y)
    for run in (softdist.softmax_cross_entropy_and_grad, jax.jit(softdist.softmax_cross_entropy_and_grad)):
        loss, grad = run(zs, ys)
        np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-12, atol=1e-15)
    W = jax.device_put(jnp.asarray(rng.standard_normal((5, 5))), NamedSharding(mesh, P(None, None)))
    softdist.softmax_loss(W, zs, ys, reg=0.1)
    D = softdist.pairwise_sqdist(zs)
    # Arrays on different device sets are still refused.
    one = jax.device_put(jnp.asarray(y), jax.devices()[0])
    try:
        softdist.softmax_cross_entropy(zs, one)
    except ValueError as e:
        assert "all arrays must be on one device" in str(e), e
    else:
        raise AssertionError("arrays on different devices were accepted")
    print("sharded ok")
    """
)


def test_jax_arrays_sharded_over_four_devices():
    """JAX fixes its device count when it starts, so this runs in a fresh interpreter."""
    pytest.importorskip("jax")
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "sharded ok" in done.stdout, done.stderr[-3000:]
