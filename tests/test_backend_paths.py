"""Every backend-specific path in softdist._backends gives the generic path's answer."""

from __future__ import annotations

import numpy as np
import pytest

import softdist
from softdist._agnostic import distances as generic
from softdist._backends import _cpu, _dask, _jax, _numpy, backend_for
from softdist._backends._default import scatter_subtract
from softdist.testing import hard_datasets, reference_sqdist


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_operands_equal_generic(dtype, rng):
    import array_api_compat.numpy as xp

    A = (rng.standard_normal((50, 9)) + 300).astype(dtype)
    B = (rng.standard_normal((40, 9)) + 300).astype(dtype)
    mean = generic.column_mean(A, B, xp=xp)
    fast = _numpy.numpy_augmented_operands(A, B, mean, xp=xp)
    slow = generic.augmented_operands(A, B, mean, xp=xp)
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(f, s, rtol=10 * np.finfo(dtype).eps)
    with_fast = generic.pairwise_sqdist(A, B, xp=xp, operands=_numpy.numpy_augmented_operands)
    np.testing.assert_allclose(with_fast, generic.pairwise_sqdist(A, B, xp=xp), rtol=1e-6)


@pytest.mark.parametrize("dataset", ["tight-clusters", "nonfinite"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_jax_compiled_path_equals_generic_eager(symmetric, dataset, rng):
    """The compiled JAX path (static refinement, non-finite entries under lax.cond) gives the generic
    eager path's bits, run on the same JAX arrays."""
    jax = pytest.importorskip("jax")
    from array_api_compat import array_namespace

    A64, B64 = hard_datasets(rng, n=60, m=50, d=8)["tight-clusters"]  # many flagged entries
    if dataset == "nonfinite":
        A64[3, 1], A64[7, 0], B64[2, 5], B64[9] = np.inf, np.nan, -np.inf, np.inf
    A = jax.numpy.asarray(A64.astype(np.float32))
    B = None if symmetric else jax.numpy.asarray(B64.astype(np.float32))
    xp = array_namespace(A)
    fast = np.asarray(_jax.jax_pairwise_sqdist(A, B, xp=xp))
    slow = np.asarray(generic.pairwise_sqdist(A, B, xp=xp))  # generic eager refinement
    with np.errstate(invalid="ignore"):  # inf - inf in the reference
        exact = reference_sqdist(A64.astype(np.float32), None if symmetric else B64.astype(np.float32))
    # Entries both refine (within a cluster, and the non-finite ones) are the same exact bits; the rest
    # are expansion values, whose last bits depend on how XLA compiles the product.
    near = ~(np.isfinite(exact) & (exact > 1e3))
    np.testing.assert_array_equal(fast[near], slow[near])
    np.testing.assert_allclose(fast[~near], slow[~near], rtol=1e-6)
    ok = np.isfinite(exact) & (exact > 0)
    assert np.max(np.abs(fast[ok] - exact[ok]) / exact[ok]) < 1e-4
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(exact) & ~np.eye(*exact.shape, dtype=bool)
                                  if symmetric else np.isnan(exact))  # fmt: skip


def _knn_data(rng):
    """Duplicates, a cluster of identical references (more exact ties than 2k), a NaN and an inf row."""
    Q = rng.standard_normal((45, 5))
    X = rng.standard_normal((130, 5)) + 0.5
    X[13] = X[60] = Q[3]
    X[100:106] = X[30]
    X[7, 2] = np.nan
    X[50, 0] = np.inf
    return Q, X


def _knn_hooks(xp):
    """The backend's own pieces of the pruned search (compaction, sub-tile screen and size, exact kernel)."""
    backend = backend_for(xp)
    return {"flat_nonzero": backend.knn_flat_nonzero(xp), "screen": backend.knn_screen(xp),
            "exact_rows": backend.knn_exact_rows(xp), "finite_rows": backend.knn_finite_rows(xp),
            "subtile_entries": backend.knn_subtile_entries(xp),
            "kth_smallest": backend.knn_kth_smallest(xp)}  # fmt: skip


def _brute_force_knn(Qn, Xn, *, k, exclude_self, **_tiles):
    """Every distance in long double, rows sorted by (distance, index), NaN last, own row never."""
    with np.errstate(invalid="ignore"):  # inf - inf in the rows with an inf: NaN, as knn gives
        D = reference_sqdist(Qn, Xn)
    last = np.isnan(D).astype(int)
    if exclude_self:
        np.fill_diagonal(last, 2)
    order = np.lexsort((np.broadcast_to(np.arange(D.shape[1]), D.shape), np.where(last, np.inf, D), last))
    order = order[:, :k]
    return np.take_along_axis(D, order, axis=1).astype(Qn.dtype), order


def _assert_pruned_equals_generic(backend, library, Qn, Xn, *, tile_map=None, brute_force=False, **options):
    """The pruned search with the backend's own hooks gives the generic static path's bits (or, with
    ``brute_force``, where more than 2k references per tile tie exactly, which the generic path's
    per-tile top-2k need not keep by index, the brute-force answer)."""
    import array_api_compat.numpy as xnp

    from softdist._agnostic import neighbors as gn

    if brute_force:
        generic_d, generic_i = _brute_force_knn(Qn, Xn, **options)
    else:
        generic_d, generic_i = gn.knn(
            Qn, Xn, xp=xnp, select=lambda D, c: gn.select_smallest(D, c, xp=xnp),
            sqdist=lambda a, b: generic.pairwise_sqdist(a, b, xp=xnp), **options,
        )  # fmt: skip
    xp = backend.xp
    operands = _numpy.numpy_augmented_operands if library == "numpy" else generic.augmented_operands
    dist, index = gn.knn_pruned(
        backend.asarray(Qn), backend.asarray(Xn), xp=backend_for(xp).knn_namespace(xp), operands=operands,
        select=backend_for(xp).smallest_selector(xp), tile_map=tile_map, **_knn_hooks(xp), **options,
    )  # fmt: skip
    np.testing.assert_array_equal(backend.to_numpy(index), generic_i)
    assert backend.to_numpy(dist).tobytes() == np.asarray(generic_d).tobytes()


@pytest.mark.parametrize("library", ["numpy", "strict", "torch", "jax", "dask"])
@pytest.mark.parametrize("self_mode", [False, True])
def test_knn_fast_paths_equal_generic(library, self_mode, rng):
    """Each kNN path (pruned tiles on eager CPU backends, the compiled JAX map, the Dask tree of
    blocks) gives the generic static path's bits: same distances, same indices, ties and all."""
    from softdist._agnostic import neighbors as gn
    from softdist.testing import backend_by_name

    name = {"jax": "jax-cpu", "torch": "torch-cpu"}.get(library, library)
    backend = backend_by_name(name)
    if backend.skip_reason():
        pytest.skip(backend.skip_reason())
    Q, X = _knn_data(rng)
    if self_mode:
        Q, X = X, X
    k, exclude = 6, self_mode
    options = {"k": k, "exclude_self": exclude, "tile_rows": 16, "tile_cols": 40}
    import array_api_compat.numpy as xnp

    generic_d, generic_i = gn.knn(
        Q, X, xp=xnp, select=lambda D, c: gn.select_smallest(D, c, xp=xnp),
        sqdist=lambda a, b: generic.pairwise_sqdist(a, b, xp=xnp), **options,
    )  # fmt: skip
    Qb, Xb = backend.asarray(Q), backend.asarray(X)
    xp = backend.xp
    if library == "dask":
        dist, index = _dask.dask_knn(Qb, Xb, k=k, exclude_self=exclude, index_dtype=xp.int64)
    elif library == "jax":
        from softdist.distances import _sqdist

        dist, index = _jax.jax_knn(Qb, Xb, sqdist=_sqdist, dtype=Qb.dtype, xp=xp, **options)
    else:
        operands = _numpy.numpy_augmented_operands if library == "numpy" else generic.augmented_operands
        select = backend_for(xp).smallest_selector(xp)
        dist, index = gn.knn_pruned(
            Qb, Xb, xp=backend_for(xp).knn_namespace(xp), operands=operands, select=select, **_knn_hooks(xp),
            **options,
        )  # fmt: skip
    np.testing.assert_array_equal(backend.to_numpy(index), generic_i)
    assert backend.to_numpy(dist).tobytes() == np.asarray(generic_d).tobytes()


@pytest.mark.parametrize("self_mode", [False, True])
@pytest.mark.parametrize("reference_rows", [1, 35, 10**9])
def test_dask_knn_reference_groups_equal_generic(reference_rows, self_mode, monkeypatch, rng):
    """Dask kNN with the reference chunks grouped into blocks of several sizes (every chunk alone,
    uneven groups with an odd number of blocks, one block), uneven row chunks and chunked columns:
    the generic path's bits, and the graph stays lazy."""
    da = pytest.importorskip("dask.array")
    import array_api_compat.numpy as xnp

    from softdist import _config
    from softdist._agnostic import neighbors as gn
    from softdist.testing import backend_by_name

    Q, X = _knn_data(rng)
    if self_mode:
        Q = X
    k, exclude = 6, self_mode
    generic_d, generic_i = gn.knn(
        Q, X, k=k, exclude_self=exclude, tile_rows=16, tile_cols=40, xp=xnp,
        select=lambda D, c: gn.select_smallest(D, c, xp=xnp),
        sqdist=lambda a, b: generic.pairwise_sqdist(a, b, xp=xnp),
    )  # fmt: skip
    monkeypatch.setattr(_config, "DASK_KNN_REFERENCE_BYTES", reference_rows * X.shape[1] * X.itemsize)
    Qd = da.from_array(Q, chunks=((20, 7, 18), (3, 2)) if not self_mode else ((9, 31, 40, 50), (2, 3)))
    Xd = Qd if self_mode else da.from_array(X, chunks=((9, 31, 40, 50), (2, 3)))
    with backend_by_name("dask").no_compute():
        dist, index = _dask.dask_knn(Qd, Xd, k=k, exclude_self=exclude, index_dtype=xnp.int64)
    assert dist.chunks[0] == Qd.chunks[0]
    np.testing.assert_array_equal(index.compute(), generic_i)
    assert dist.compute().tobytes() == np.asarray(generic_d).tobytes()


def test_dask_reference_groups():
    assert _dask.reference_groups((9, 31, 40, 50), 35) == (9, 31, 40, 50)
    assert _dask.reference_groups((9, 31, 40, 50), 40) == (40, 40, 50)
    assert _dask.reference_groups((9, 31, 40, 50), 10**9) == (130,)
    assert _dask.reference_groups((5, 5, 5, 5, 5), 10) == (10, 10, 5)


def test_dask_path_equals_generic(rng):
    da = pytest.importorskip("dask.array")
    import array_api_compat.numpy as xnp

    A64, B64 = hard_datasets(rng, n=60, m=50, d=8)["near-duplicates-1e4"]
    A = da.from_array(A64, chunks=(16, 4))
    B = da.from_array(B64, chunks=(20, 4))
    got = softdist.pairwise_sqdist(A, B).compute()
    np.testing.assert_allclose(got, generic.pairwise_sqdist(A64, B64, xp=xnp), rtol=1e-10)
    got_self = softdist.pairwise_sqdist(A).compute()
    np.testing.assert_allclose(got_self, generic.pairwise_sqdist(A64, None, xp=xnp), rtol=1e-10)
    np.testing.assert_array_equal(got_self, got_self.T)


def _edge_logits(rng, dtype, n=40, c=9):
    """Logits that send rows down every branch of the CPU fast path: ordinary rows; rows whose unshifted
    exponentials overflow (+300) or underflow (-300); a masked target; masked classes; all -inf; NaN."""
    z = rng.standard_normal((n, c))
    z[1] += 300
    z[2] -= 300
    z[3, :4] = -np.inf
    z[4] = -np.inf
    z[5, 2] = np.nan
    z[6, 0] = 95  # one exponent just past float32's range
    return z.astype(dtype)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "options", [{}, {"ignore_index": 1, "reduction": "sum"}, {"reduction": "none", "sample_weight": True}]
)
def test_eager_cpu_softmax_kernel_equals_generic(library, dtype, options, rng):
    from array_api_compat import array_namespace

    from softdist._agnostic import softmax as generic_softmax

    if library == "torch":
        torch = pytest.importorskip("torch")
        convert = torch.from_numpy
    else:
        convert = np.asarray
    z_np = _edge_logits(rng, dtype)
    labels_np = rng.integers(0, z_np.shape[1], z_np.shape[0])
    labels_np[3] = 0  # the masked target
    z, labels = convert(z_np), convert(labels_np)
    xp = array_namespace(z)
    sw = convert(rng.random(z_np.shape[0]).astype(dtype)) if options.pop("sample_weight", False) else None
    terms = generic_softmax.index_row_terms(
        labels, n_classes=z_np.shape[1], dtype=z.dtype, sample_weight=sw, class_weight=None,
        label_smoothing=0.0, ignore_index=options.get("ignore_index"),
        reduction=options.get("reduction", "mean"), checked=True, xp=xp,
    )  # fmt: skip
    slow_loss, slow_grad = generic_softmax.block_loss_and_grad(z, terms, want_grad=True, xp=xp)
    fast_loss, fast_grad = _cpu.eager_cpu_block(z, terms, want_grad=True, xp=xp)
    np.testing.assert_array_equal(np.asarray(z), z_np)  # the caller's logits are untouched
    rtol = 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(np.asarray(fast_loss), np.asarray(slow_loss), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(np.asarray(fast_grad), np.asarray(slow_grad), rtol=rtol, atol=rtol)

    # In place on scores it owns, recomputing the rows it repairs:
    own = convert(z_np.copy())
    in_loss, in_grad = _cpu.eager_cpu_block(
        own, terms, want_grad=True, xp=xp, recompute=lambda rows: xp.take(z, rows, axis=0)
    )
    np.testing.assert_allclose(np.asarray(in_loss), np.asarray(slow_loss), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(np.asarray(in_grad), np.asarray(slow_grad), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("data", ["ordinary", "wide-gaps", "edge"])
@pytest.mark.parametrize(
    "options",
    [{}, {"ignore_index": 1, "reduction": "sum"}, {"reduction": "none", "sample_weight": True},
     {"class_weight": True}, {"class_weight": True, "label_smoothing": 0.1}],
)  # fmt: skip
def test_jax_softmax_kernel_equals_generic(dtype, data, options, rng):
    """JAX's kernel (shifted by the label's logit, no max pass, the generic kernel under lax.cond for
    batches it cannot take) gives the generic kernel's answer, eagerly and under jax.jit: ordinary
    logits (its own path), gaps past 1/sqrt(tiny) between logits, and every edge row at once."""
    jax = pytest.importorskip("jax")
    from softdist.testing import jax_x64_wanted

    if dtype == "float64" and not jax_x64_wanted():
        pytest.skip("JAX x64 is off")
    from array_api_compat import array_namespace

    from softdist._agnostic import softmax as generic_softmax

    n, c = 40, 9
    if data == "edge":
        z_np = _edge_logits(rng, dtype, n, c)
    else:
        z_np = (3 * rng.standard_normal((n, c))).astype(dtype)
        if data == "wide-gaps":
            z_np[5, 2] += 50 if dtype == "float32" else 400  # gamma / s would be subnormal: generic
    labels_np = rng.integers(0, c, n)
    labels_np[3] = 1  # an ignored row (with ignore_index=1) among the edge rows
    z, labels = jax.numpy.asarray(z_np), jax.numpy.asarray(labels_np)
    xp = array_namespace(z)
    options = dict(options)
    sw = jax.numpy.asarray(rng.random(n).astype(dtype)) if options.pop("sample_weight", False) else None
    cw = jax.numpy.asarray(rng.random(c).astype(dtype) + 0.5) if options.pop("class_weight", False) else None

    def both(z, labels, sw, cw):
        terms = generic_softmax.index_row_terms(
            labels, n_classes=c, dtype=z.dtype, sample_weight=sw, class_weight=cw,
            label_smoothing=options.get("label_smoothing", 0.0), ignore_index=options.get("ignore_index"),
            reduction=options.get("reduction", "mean"), checked=True, xp=xp,
        )  # fmt: skip
        slow = generic_softmax.block_loss_and_grad(z, terms, want_grad=True, xp=xp)
        fast = _jax.jax_softmax_block(z, terms, want_grad=True, xp=xp)
        fast_loss_only, none = _jax.jax_softmax_block(z, terms, want_grad=False, xp=xp)
        assert none is None
        return slow, fast, fast_loss_only

    rtol = 20 * np.finfo(dtype).eps
    for run in (both, jax.jit(both)):
        (slow_loss, slow_grad), (fast_loss, fast_grad), loss_only = run(z, labels, sw, cw)
        for fast, slow in ((fast_loss, slow_loss), (loss_only, slow_loss), (fast_grad, slow_grad)):
            fast, slow = np.asarray(fast), np.asarray(slow)
            scale = np.max(np.abs(slow[np.isfinite(slow)]), initial=1.0)
            np.testing.assert_allclose(fast, slow, rtol=rtol, atol=rtol * scale)  # NaN and inf alike


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_eager_cpu_softmax_kernel_large_sums(library, rng):
    """Logits near 88 keep exp finite in float32, but the mean's scale / sum is then subnormal (few
    significant bits): those rows must go through the shifted kernel."""
    from array_api_compat import array_namespace

    from softdist._agnostic import softmax as generic_softmax

    convert = pytest.importorskip("torch").from_numpy if library == "torch" else np.asarray
    z_np = rng.standard_normal((2000, 10)).astype(np.float32)
    z_np[::7, 3] = np.float32(88.5)
    z, labels = convert(z_np), convert(rng.integers(0, 10, 2000))
    xp = array_namespace(z)
    terms = generic_softmax.index_row_terms(
        labels, n_classes=10, dtype=z.dtype, sample_weight=None, class_weight=None, label_smoothing=0.0,
        ignore_index=None, reduction="mean", checked=True, xp=xp,
    )  # fmt: skip
    _, slow = generic_softmax.block_loss_and_grad(z, terms, want_grad=True, xp=xp)
    _, fast = _cpu.eager_cpu_block(z, terms, want_grad=True, xp=xp)
    scale = np.max(np.abs(np.asarray(slow)))
    atol = 10 * np.finfo(np.float32).eps * scale
    np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), rtol=0, atol=atol)


def test_scatter_subtract_equals_mask(rng):
    import array_api_compat.numpy as xp

    from softdist._agnostic import softmax as generic_softmax

    G = rng.standard_normal((12, 5))
    labels, values = rng.integers(0, 5, 12), rng.random(12)
    want = generic_softmax.subtract_onehot(G, labels, values, xp=xp)
    np.testing.assert_array_equal(scatter_subtract(G.copy(), labels, values, xp=xp), want)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("options", [{}, {"z_loss": 0.1, "softcap": 4.0}, {"label_smoothing": 0.1}])
@pytest.mark.parametrize("chunk_size", [16, 40])  # G wider than tall (G.T @ X), and taller (X.T @ G)
def test_eager_linear_workspace_equals_generic(library, options, chunk_size, rng, monkeypatch):
    """The in-place CPU workspace (reused score buffer, dX written in place, dW accumulated in place, NumPy
    in class blocks) gives the generic workspace's answer."""
    from array_api_compat import array_namespace

    from softdist import _config
    from softdist._agnostic import linear as generic_linear

    monkeypatch.setattr(_config, "NUMPY_CLASS_BLOCK_BYTES", 7 * 8 * 8)  # 7-class blocks of float64 dW

    X, W, b = rng.standard_normal((50, 8)), rng.standard_normal((30, 8)), rng.standard_normal(30)
    X[3] *= 1e3  # a row the unshifted fast kernel must repair
    y = rng.integers(0, 30, 50)
    if library == "torch":
        torch = pytest.importorskip("torch")
        X, W, b, y = (torch.asarray(a) for a in (X, W, b, y))
    results = []
    for fast in (True, False):

        def workspace(self, X, W, b, *, chunk_rows, work, want_dX, xp, fast=fast):
            if fast:
                return _cpu.EagerCPUWorkspace(
                    X, W, b, chunk_rows=chunk_rows, work=work, want_dX=want_dX, xp=xp
                )
            return generic_linear.Workspace(X, W, b, work=work, want_dX=want_dX, tree=False, xp=xp)

        monkeypatch.setattr(type(backend_for(array_namespace(X))), "linear_workspace", workspace)
        results.append(
            softdist.linear_cross_entropy_and_grad(X, W, y, bias=b, chunk_size=chunk_size, **options)
        )
    for fast, slow in zip(*results, strict=True):
        np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize(
    "options", [{}, {"z_loss": 0.1, "softcap": 4.0}, {"label_smoothing": 0.1, "reduction": "sum"}]
)
@pytest.mark.parametrize("chunk_size", [None, 16])
@pytest.mark.parametrize("cache_rows", [None, 4])
def test_threaded_numpy_head_equals_generic(parts, options, chunk_size, cache_rows, rng, monkeypatch):
    """NumPy's linear head with its rows in one part per thread (own score buffer and dW each, added in
    part order; G.T @ Xc on each thread; cache_rows: each part in chunks of that many rows) gives the
    generic workspace's answer, for softmax_loss and the head with dX."""
    from softdist import _config
    from softdist._agnostic import linear as generic_linear

    monkeypatch.setattr(_config, "CPU_HEAD_THREAD_MIN_ROWS", 8)
    monkeypatch.setattr(_config, "CPU_HEAD_THREAD_MEMORY_SHARE", 1)
    if cache_rows is None:
        monkeypatch.setattr(_config, "CPU_HEAD_CACHE_BYTES", None)
    else:  # X is (61, 6) float64: 4 rows of 48 bytes
        monkeypatch.setattr(_config, "CPU_HEAD_CACHE_BYTES", cache_rows * 6 * 8)
        monkeypatch.setattr(_config, "LINEAR_MIN_AUTO_ROWS", 1)
    monkeypatch.setattr(_cpu, "cpu_workers", lambda: parts)
    monkeypatch.setattr(_cpu, "blas_threads", lambda: parts)
    X, W, b = rng.standard_normal((61, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    X[3] *= 1e3  # a row the unshifted fast kernel must repair
    y = rng.integers(0, 5, 61)
    threaded = []
    pool = _cpu._head_pool

    def spy(threads):
        threaded.append(threads)
        return pool(threads)

    monkeypatch.setattr(_cpu, "_head_pool", spy)
    results = []
    for fast in (True, False):
        if not fast:

            def workspace(self, X, W, b, *, chunk_rows, work, want_dX, xp):
                return generic_linear.Workspace(X, W, b, work=work, want_dX=want_dX, tree=False, xp=xp)

            monkeypatch.setattr(_numpy.NumpyBackend, "linear_workspace", workspace)
        head = softdist.linear_cross_entropy_and_grad(X, W, y, bias=b, chunk_size=chunk_size or "auto",
                                                      **options)  # fmt: skip
        loss = softdist.softmax_loss(W.T.copy(), X, y, b=b, reg=0.1, chunk_size=chunk_size,
                                     label_smoothing=options.get("label_smoothing", 0.0))  # fmt: skip
        results.append((*head, *loss))
        if fast:
            assert threaded == [parts - 1] * 2  # both calls ran on threads
    for fast, slow in zip(*results, strict=True):
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_threaded_numpy_head_path_depends_on_settings_not_timing(rng, monkeypatch):
    """The NumPy head's path (threads or rows in order, which add dW in different orders) depends on the
    shapes, the cores and BLAS's thread limit, never on what ran just before: the same call gives the
    same bits right after a two-thread product, after a pause and back to back; a BLAS limit of one
    thread keeps the rows in order (no thread pool)."""
    import time

    from threadpoolctl import threadpool_limits

    from softdist import _config

    monkeypatch.setattr(_config, "CPU_HEAD_THREAD_MIN_ROWS", 8)
    monkeypatch.setattr(_config, "CPU_HEAD_THREAD_MEMORY_SHARE", 1)
    monkeypatch.setattr(_cpu, "cpu_workers", lambda: 2)
    monkeypatch.setattr(_cpu, "blas_threads", lambda: 2)
    X, W = rng.standard_normal((301, 6)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 5, 301)
    runs = []
    for before in (lambda: None, lambda: X @ X.T, lambda: time.sleep(0.2), lambda: None):
        before()
        runs.append(softdist.softmax_loss(W, X, y))
    for loss, dW in runs[1:]:
        assert loss.tobytes() == runs[0][0].tobytes() and dW.tobytes() == runs[0][1].tobytes()
    monkeypatch.undo()
    monkeypatch.setattr(_config, "CPU_HEAD_THREAD_MIN_ROWS", 8)
    monkeypatch.setattr(_config, "CPU_HEAD_THREAD_MEMORY_SHARE", 1)
    monkeypatch.setattr(_cpu, "cpu_workers", lambda: 2)
    monkeypatch.setattr(_cpu, "_head_pool", lambda threads: pytest.fail("the rows went to threads"))
    with threadpool_limits(1, user_api="blas"):
        assert _cpu.blas_threads() == 1
        loss, dW = softdist.softmax_loss(W.astype(np.float64), X.astype(np.float64), y)
    z = X.astype(np.float64) @ W
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loss, -np.mean(np.log(p[np.arange(301), y])), rtol=1e-12)
    p[np.arange(301), y] -= 1
    np.testing.assert_allclose(dW, X.astype(np.float64).T @ p / 301, rtol=1e-10, atol=1e-14)


def test_threads_at_interpreter_exit(tmp_path):
    """In an atexit handler (no thread may start then) the NumPy head and kNN run their parts and tiles
    on the calling thread, with the same bits as on threads."""
    import subprocess
    import sys

    script = tmp_path / "at_exit.py"
    script.write_text(
        "import atexit, numpy as np, softdist\n"
        "from softdist import _config\n"
        "from softdist._backends import _cpu\n"
        "_config.CPU_HEAD_THREAD_MIN_ROWS = 8\n"
        "_cpu.cpu_workers = lambda: 2\n"
        "_cpu.blas_threads = lambda: 2\n"
        "rng = np.random.default_rng(0)\n"
        "X, W, y = rng.standard_normal((3000, 6)), rng.standard_normal((6, 5)), rng.integers(0, 5, 3000)\n"
        "Q = rng.standard_normal((1500, 6))\n"
        "live = softdist.softmax_loss(W, X, y), softdist.knn(Q, X, k=3)\n"
        "def at_exit():\n"
        "    late = softdist.softmax_loss(W, X, y), softdist.knn(Q, X, k=3)\n"
        "    same = all(a.tobytes() == b.tobytes() for u, v in zip(live, late) for a, b in zip(u, v))\n"
        "    print('same' if same else 'different')\n"
        "atexit.register(at_exit)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "same"


CROWDED = ("all_equal", "few_distinct", "on_a_sphere")  # exact ties crowd the candidate pool


@pytest.mark.parametrize("library", ["numpy", "strict", "torch"])
@pytest.mark.parametrize("layout", ["shuffled", "sorted", "clustered", *CROWDED])
def test_knn_pruned_subtiles_sample_and_threads(library, layout, rng, monkeypatch):
    """The pruned path with several sub-tiles per tile (runs merged in the candidate pool), a spread
    sample smaller than a tile, and query tiles on threads (NumPy, torch) gives the generic path's bits,
    on shuffled, sorted and clustered data with duplicates and non-finite rows; and on data whose exact
    ties crowd the pool (all rows equal, a few distinct rows, unit vectors: every query's ties at the
    k-th distance number in the tens), where crowded rows are resolved by exact distances."""
    from softdist import _config
    from softdist._agnostic import neighbors as gn
    from softdist.testing import backend_by_name

    name = {"torch": "torch-cpu"}.get(library, library)
    backend = backend_by_name(name)
    if backend.skip_reason():
        pytest.skip(backend.skip_reason())
    Q, X = _knn_data(rng)
    X = np.concatenate([X, rng.standard_normal((170, 5)) * 0.01 + rng.integers(0, 4, (170, 1))])
    if layout == "sorted":
        X = X[np.argsort(X[:, 0], kind="stable")]
    elif layout == "clustered":
        X = X[np.argsort(np.round(X[:, 1]), kind="stable")]
    elif layout in CROWDED:  # the NaN and inf rows stay
        finite = np.all(np.isfinite(X), axis=1)
        crowd = {"all_equal": np.full((1, 5), 0.75), "few_distinct": rng.standard_normal((4, 5)),
                 "on_a_sphere": np.concatenate([np.eye(5), -np.eye(5)])}[layout]  # fmt: skip
        X[finite] = crowd[rng.integers(0, crowd.shape[0], int(finite.sum()))]
        Q[::3] = 0.0  # from the origin every unit vector is at exactly 1
    monkeypatch.setattr(_config, "KNN_SUBTILE_ENTRIES", 16 * 7)  # 7-column sub-tiles of 16-row tiles
    monkeypatch.setattr(_config, "KNN_TORCH_SUBTILE_ENTRIES", 16 * 7)
    monkeypatch.setattr(_config, "KNN_SAMPLE_COLUMNS", 13)
    monkeypatch.setattr(_config, "KNN_POOL_UPDATE_PER_ROW", 1)  # the bound also tightens between sub-tiles
    filled = []  # rows that fell back to a full pass: only queries with a NaN or inf may

    def spy(Qt, *args, **kwargs):
        filled.append(int(np.sum(np.all(np.isfinite(backend.to_numpy(Qt)), axis=1)
                              & backend.to_numpy(args[3]))))  # fmt: skip
        return fill(Qt, *args, **kwargs)

    fill = gn._fill_short_rows
    monkeypatch.setattr(gn, "_fill_short_rows", spy)
    resolved = []
    resolve = gn._Pool._resolve

    def counted(pool, *args):
        resolved.append(1)
        return resolve(pool, *args)

    monkeypatch.setattr(gn._Pool, "_resolve", counted)
    for Qn, Xn, exclude in ((Q, X, False), (X, X, True)):
        _assert_pruned_equals_generic(
            backend, library, Qn, Xn, tile_map=backend_for(backend.xp).knn_tile_map(backend.xp),
            brute_force=layout in CROWDED,
            k=6, exclude_self=exclude, tile_rows=16, tile_cols=40,
        )  # fmt: skip
    assert sum(filled) == 0
    assert bool(resolved) == (layout in CROWDED)


def _numpy_blas(info: dict) -> bool:
    """NumPy's own BLAS (the one its products use): SciPy may load a second OpenBLAS later in the
    session, which softdist's products never call."""
    return info["user_api"] == "blas" and "numpy" in info["filepath"]


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 64, 65])
def test_cpu_exact_rows_equal_generic(library, dtype, d, rng):
    """The in-place CPU kernel of the kNN candidates' exact distances gives the generic kernel's bits:
    equal rows (exactly 0), differences of an ulp, cancelling and tiny differences (scaled up), any
    width of the pairwise tree; outside its shortcuts it hands over to the generic kernel."""
    lib = pytest.importorskip(library)
    from array_api_compat import array_namespace

    a = rng.standard_normal((200, d)).astype(dtype)
    b = rng.standard_normal((200, d)).astype(dtype)
    b[:20] = a[:20]  # duplicates
    b[20:40] = a[20:40] * (1 + np.finfo(dtype).eps)  # an ulp apart
    a[40:60] *= np.finfo(dtype).tiny ** 0.5  # differences whose squares would underflow
    b[40:60] = a[40:60] * 1.5
    b[60:80] = (a[60:80] * 3.0).astype(dtype) - a[60:80] * 2.0  # cancellation
    xp = array_namespace(lib.asarray(a))
    for shortcuts in ({"finite": True, "in_range": True, "eager": True}, {"finite": True}):
        want = generic.exact_sqdist_rows(lib.asarray(a), lib.asarray(b), xp=xp, **shortcuts)
        got = _cpu.exact_sqdist_rows(lib.asarray(a.copy()), lib.asarray(b.copy()), xp=xp, **shortcuts)
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_kept_positions_equal_nonzero(dtype, rng):
    """torch's search of the entries under each row's limit, group by group: the indices NumPy's
    nonzero of the mask gives, in order, for any width (whole groups of 64 or not, narrower than one),
    density, ties with the limit, NaN entries, rows and limits, and an infinite limit."""
    torch = pytest.importorskip("torch")
    from softdist._backends._torch import torch_kept_positions

    for rows, w in ((1, 1), (3, 63), (5, 64), (7, 65), (16, 128), (33, 200), (512, 512), (64, 1000)):
        for p in (0.0, 0.001, 0.01, 0.3, 1.0):
            D = rng.standard_normal((rows, w)).astype(dtype)
            limit = (
                np.quantile(D, p, axis=1, keepdims=True).astype(dtype)
                if p < 1
                else np.full((rows, 1), np.inf, dtype)
            )
            D[:, ::7] = np.where(rng.random((rows, 1)) < 0.3, limit, D[:, ::7])  # ties: kept
            if rows > 2:
                D[1, :] = np.nan  # a non-finite query
                D[:, w // 2] = np.nan  # a non-finite reference
                limit[2] = np.nan
            want = np.nonzero((D <= limit).reshape(-1))[0]
            got = torch_kept_positions(torch.from_numpy(D), torch.from_numpy(limit))
            np.testing.assert_array_equal(np.asarray(got), want)
            assert got.dtype == torch.int64


def test_torch_index_select_namespace_take_equals_compat(rng):
    """The torch pruned search's take (torch.index_select) gives array_api_compat's values, 1-D and 2-D,
    both axes, empty and repeated indices; the rest of the namespace is compat's own."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xpt

    from softdist._backends._torch import index_select_namespace

    ns = index_select_namespace(xpt)
    A = torch.from_numpy(rng.standard_normal((7, 5)))
    for x, axis, n in ((A[:, 0], None, 7), (A, 0, 7), (A, 1, 5)):
        for idx in (rng.integers(0, n, 12), np.arange(n)[::-1].copy(), np.zeros(0, dtype=np.int64)):
            i = torch.from_numpy(idx)
            want = xpt.take(x, i) if axis is None else xpt.take(x, i, axis=axis)
            got = ns.take(x, i) if axis is None else ns.take(x, i, axis=axis)
            assert torch.equal(got, want) and got.dtype == want.dtype
    assert ns.argsort is xpt.argsort and ns.__name__ == xpt.__name__
    assert ns.__array_namespace_info__ is xpt.__array_namespace_info__


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_finite_rows_equal_isfinite(dtype, rng):
    """torch's finite rows through X - X: NumPy's all(isfinite) per row, with NaN, both infinities and
    the largest finite values."""
    torch = pytest.importorskip("torch")
    from softdist._backends._torch import torch_finite_rows

    X = rng.standard_normal((40, 7)).astype(dtype)
    big = np.finfo(dtype).max
    X[1, 3], X[2, 0], X[3, 6], X[4, :] = np.nan, np.inf, -np.inf, big
    X[5, 2], X[6, :2], X[7, 1] = -big, (np.inf, -np.inf), np.finfo(dtype).smallest_subnormal
    got = torch_finite_rows(torch.from_numpy(X), xp=None)
    np.testing.assert_array_equal(np.asarray(got), np.all(np.isfinite(X), axis=1))
    assert got.dtype == torch.bool


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_knn_pruned_k_near_n(library, rng):
    """k up to every reference (and every other row in self mode) through the CPU backends' pruned
    search, ties and duplicates included: the generic path's bits."""
    from softdist.testing import backend_by_name

    backend = backend_by_name({"torch": "torch-cpu"}.get(library, library))
    if backend.skip_reason():
        pytest.skip(backend.skip_reason())
    Q = rng.standard_normal((9, 4))
    X = rng.standard_normal((21, 4))
    X[3] = X[8] = Q[2]
    X[10:14] = X[5]
    for Qn, Xn, exclude, k in ((Q, X, False, 21), (Q, X, False, 20), (X, X, True, 20), (X, X, True, 19)):
        _assert_pruned_equals_generic(
            backend, library, Qn, Xn, k=k, exclude_self=exclude, tile_rows=4, tile_cols=6
        )


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_single_threaded_products_nest_and_restore(library):
    """knn's thread-per-core paths hold BLAS / torch at one thread while any user is inside, and the
    last one out restores the caller's setting (Dask blocks enter and leave in any order)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    lib = pytest.importorskip(library)
    from array_api_compat import array_namespace

    xp = array_namespace(lib.asarray([1.0]))

    def threads() -> list[int]:
        if library == "torch":
            return [lib.get_num_threads()]
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if _numpy_blas(i)]

    before = threads()
    outer = _cpu.single_threaded_products(xp)
    inner = _cpu.single_threaded_products(xp)
    assert outer.__enter__() is True
    assert inner.__enter__() is True
    outer.__exit__(None, None, None)  # the first in leaves first
    assert set(threads()) <= {1}
    inner.__exit__(None, None, None)
    assert threads() == before


def test_single_threaded_products_from_any_thread():
    """Dask runs blocks (NumPy chunks) on its worker threads: the BLAS limit holds in whichever thread
    enters, whichever thread leaves last restores the caller's setting, and a thread that set it before
    does not keep the others out (threadpoolctl >= 3.8 lets only one thread change a pthreads OpenBLAS;
    torch's count is per thread, see _cpu._one_thread_here)."""
    import threading

    import array_api_compat.numpy as xp

    threadpoolctl = pytest.importorskip("threadpoolctl")

    def threads() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if _numpy_blas(i)]

    before = threads()
    with _cpu.single_threaded_products(xp):  # this thread sets and restores first
        pass
    seen: list[list[int]] = []
    outer = _cpu.single_threaded_products(xp)
    inner = _cpu.single_threaded_products(xp)

    def in_thread(fn) -> None:
        t = threading.Thread(target=fn)
        t.start()
        t.join()

    in_thread(lambda: (outer.__enter__(), seen.append(threads())))
    in_thread(lambda: (inner.__enter__(), seen.append(threads())))
    in_thread(lambda: outer.__exit__(None, None, None))
    seen.append(threads())
    in_thread(lambda: inner.__exit__(None, None, None))  # a third thread leaves last
    assert all(set(s) <= {1} for s in seen)
    assert threads() == before
    with _cpu.single_threaded_products(xp):  # and this thread can still set it
        assert set(threads()) <= {1}
    assert threads() == before


def test_dask_row_blocks_run_with_single_threaded_products():
    """Each Dask row-block task runs its eager code with BLAS at one thread (blocks run one per scheduler
    thread), from any thread, and the setting comes back after."""
    import concurrent.futures

    threadpoolctl = pytest.importorskip("threadpoolctl")

    def threads(*_):
        return tuple(i["num_threads"] for i in threadpoolctl.threadpool_info() if _numpy_blas(i))

    before = threads()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        inside = list(pool.map(lambda _: _dask._one_thread(threads, np.zeros(3)), range(4)))
    assert all(set(t) <= {1} for t in inside)
    assert threads() == before


_DASK_LOSS_OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none", "label_smoothing": 0.2},
    {"sample_weight": True, "class_weight": True, "ignore_index": 2, "label_smoothing": 0.1},
    {"soft": True, "sample_weight": True, "class_weight": True},
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", _DASK_LOSS_OPTIONS)
def test_dask_row_block_softmax_equals_generic(dtype, options, rng):
    """Dask's one-task-per-row-block cross-entropy (the eager kernel on each block, the mean's
    denominator summed over blocks) gives the generic kernel's answer on the whole array, and stays
    lazy until asked."""
    da = pytest.importorskip("dask.array")
    import array_api_compat.numpy as xp

    from softdist._agnostic import softmax as generic_softmax

    options = dict(options)
    z = _edge_logits(rng, dtype, n=70)
    n, c = z.shape
    soft = options.pop("soft", False)
    y = rng.random((n, c)).astype(dtype) if soft else rng.integers(0, c, n)
    sw = rng.random(n).astype(dtype) if options.pop("sample_weight", False) else None
    cw = rng.random(c).astype(dtype) if options.pop("class_weight", False) else None
    reduction = options.get("reduction", "mean")
    common = {"dtype": z.dtype, "sample_weight": sw, "class_weight": cw, "reduction": reduction,
              "label_smoothing": options.get("label_smoothing", 0.0), "xp": xp}  # fmt: skip
    if soft:
        terms = generic_softmax.soft_row_terms(y, **common)
    else:
        terms = generic_softmax.index_row_terms(
            y, n_classes=c, ignore_index=options.get("ignore_index"), checked=True, **common
        )
    with np.errstate(all="ignore"):
        row_loss, want_grad = generic_softmax.block_loss_and_grad(z, terms, want_grad=True, xp=xp)
    want_loss = row_loss if reduction == "none" else np.sum(row_loss)

    def chunked(a):
        return None if a is None else da.from_array(a, chunks=(23, *a.shape[1:]))

    extra = {"sample_weight": chunked(sw), "class_weight": None if cw is None else da.from_array(cw)}
    loss, grad = softdist.softmax_cross_entropy_and_grad(
        da.from_array(z, chunks=(23, 4)), chunked(y), **options, **extra
    )
    assert len(grad.chunks[0]) == 4  # one task per row block, the classes whole
    rtol = 20 * np.finfo(dtype).eps
    np.testing.assert_allclose(loss.compute(), want_loss, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad.compute(), want_grad, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("column_chunk", [None, 4])
@pytest.mark.parametrize("options", _DASK_LOSS_OPTIONS[:4])
def test_dask_row_block_linear_equals_numpy(options, column_chunk, rng):
    """Dask's row-block linear head and softmax_loss (eager code per block, dW and dbias summed over
    blocks) give the NumPy path's answer (itself tested equal to the generic workspace above), with
    uneven row chunks and with the features split into column chunks."""
    da = pytest.importorskip("dask.array")
    options = dict(options)
    X, W, b = rng.standard_normal((70, 6)), rng.standard_normal((9, 6)), rng.standard_normal(9)
    X[3] *= 1e3  # a row the unshifted fast kernel must repair
    y = rng.integers(0, 9, 70)
    sw = rng.random(70) if options.pop("sample_weight", False) else None
    cw = rng.random(9) if options.pop("class_weight", False) else None

    def lazy(a, rows=23):
        if a is None:
            return None
        columns = a.shape[1:] if column_chunk is None else tuple(min(column_chunk, s) for s in a.shape[1:])
        return da.from_array(a, chunks=(rows, *columns))

    eager = {"sample_weight": sw, "class_weight": cw} | options
    lazy_options = {"sample_weight": lazy(sw), "class_weight": lazy(cw, 4)} | options
    cases = [
        (softdist.linear_cross_entropy_and_grad, (X, W, y), {"bias": b, "z_loss": 0.01, "softcap": 5.0}),
        (softdist.softmax_loss, (W.T, X, y), {"b": b, "reg": 0.1}),
        (lambda *a, **k: (softdist.linear_cross_entropy(*a, **k),), (X, W, y), {"bias": b}),
    ]
    for f, args, more in cases:
        want = f(*args, **eager, **more)
        got = f(*(lazy(a, 31) if a is not y else lazy(a) for a in args), **lazy_options,
                **{k: lazy(v, 4) if isinstance(v, np.ndarray) else v for k, v in more.items()})  # fmt: skip
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.compute(), w, rtol=1e-12, atol=1e-12)


def test_jax_compiled_cache_is_bounded(monkeypatch, rng):
    """Eager JAX keeps one compiled function per signature in a bounded LRU table: new shapes evict the
    least recently used, and an evicted shape compiles again with the same answer."""
    jnp = pytest.importorskip("jax.numpy")
    from softdist import _config

    monkeypatch.setattr(_config, "JAX_COMPILED_CACHE_SIZE", 3)
    monkeypatch.setattr(_jax, "_JAX_COMPILED", type(_jax._JAX_COMPILED)())
    A = rng.standard_normal((12, 4)).astype(np.float32)
    first = np.asarray(softdist.pairwise_sqdist(jnp.asarray(A[:5]), jnp.asarray(A[:4])))
    for rows in range(6, 12):
        softdist.pairwise_sqdist(jnp.asarray(A[:rows]), jnp.asarray(A[:4]))
        assert len(_jax._JAX_COMPILED) <= 3
    again = np.asarray(softdist.pairwise_sqdist(jnp.asarray(A[:5]), jnp.asarray(A[:4])))
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(first, reference_sqdist(A[:5], A[:4]), rtol=1e-4, atol=1e-5)
