"""knn: every backend against a brute-force NumPy reference (ties by index, exact distances, NaN last),
tiling in both directions, bad input, and Dask on a real distributed LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest

import softdist
from softdist.testing import Backend, assert_same_kind, backend_by_name, jax_x64_wanted, reference_sqdist


def reference_knn(
    Q: np.ndarray, X: np.ndarray | None, k: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in long double: sort every row by (distance rounded to Q's dtype, index), as knn
    promises (exact distances rounded once, ties by index); NaN last."""
    D = reference_sqdist(Q, X)
    index = np.broadcast_to(np.arange(D.shape[1]), D.shape)
    keyed = np.where(np.isnan(D), np.inf, D.astype(Q.dtype) if Q.dtype.kind == "f" else D)
    nan_last = np.isnan(D).astype(int)
    if X is None and exclude_self:
        np.fill_diagonal(nan_last, 2)  # after every other entry, NaN ones too: never among k <= m - 1
    order = np.lexsort((index, keyed, nan_last), axis=1)[:, :k]
    return np.take_along_axis(D, order, axis=1), order


def _data(rng, n=70, m=90, d=5):
    Q = rng.standard_normal((n, d))
    X = rng.standard_normal((m, d)) + 0.5
    X[m // 9] = X[m // 2] = Q[3]  # duplicates of a query: distance exactly 0, ties broken by index
    X[m - 30 : m - 24] = X[m // 4]  # a cluster of identical references: more exact ties than 2k
    return Q, X


@pytest.mark.parametrize("working_memory", [None, 4000])  # 4000 bytes: many tiles in both directions
@pytest.mark.parametrize("k", [1, 7])
def test_matches_brute_force(backend: Backend, float_dtype, working_memory, k, rng):
    Q, X = _data(rng)
    Q, X = Q.astype(float_dtype), X.astype(float_dtype)
    want_d, want_i = reference_knn(Q, X, k, False)
    Qb, Xb = backend.asarray(Q), backend.asarray(X)
    dist, index = backend.call(softdist.knn, Qb, Xb, k=k, working_memory=working_memory)
    assert_same_kind(dist, Qb, dtype=backend.dtype(float_dtype))
    assert_same_kind(index, Qb)
    assert backend.xp.isdtype(index.dtype, "integral")
    np.testing.assert_array_equal(backend.to_numpy(index), want_i)
    got_d = backend.to_numpy(dist)
    np.testing.assert_allclose(got_d, want_d, rtol={"float32": 1e-5, "float64": 1e-12}[float_dtype], atol=0)
    assert np.all(got_d[3, : min(k, 2)] == 0)  # duplicates come back exactly 0.0


@pytest.mark.parametrize("exclude_self", [None, False])
def test_self_mode(backend: Backend, exclude_self, rng):
    Q, _ = _data(rng)
    Q[5] = Q[8]  # a duplicate inside Q: its nearest other point is at exactly 0
    exclude = exclude_self is None
    want_d, want_i = reference_knn(Q, None, 4, exclude)
    kwargs = {} if exclude_self is None else {"exclude_self": exclude_self}
    dist, index = backend.call(softdist.knn, backend.asarray(Q), k=4, working_memory=3000, **kwargs)
    np.testing.assert_array_equal(backend.to_numpy(index), want_i)
    np.testing.assert_allclose(backend.to_numpy(dist), want_d, rtol=1e-12)
    if exclude:
        assert backend.to_numpy(index)[5, 0] == 8 and backend.to_numpy(dist)[5, 0] == 0


@pytest.mark.parametrize(
    ("n", "m", "d", "k", "exclude_self"),
    [(5, 50, 0, 2, False), (50, 50, 0, 3, True), (6, 6, 0, 6, False), (0, 50, 0, 2, False),
     (0, 50, 4, 2, False)],
)  # fmt: skip
def test_empty_dimensions(backend: Backend, n, m, d, k, exclude_self):
    """Zero features (every distance 0: the first k indices, the own row left out) and zero queries: the
    reference's answer, not an error from inside a reduction (a break test's input, (5, 0) against
    (50, 0), raised from the pruned search's overflow check on NumPy, torch, Dask, array-api-strict)."""
    X = np.zeros((m, d))
    Q = X if exclude_self else np.ones((n, d))
    want_d, want_i = reference_knn(Q, None if exclude_self else X, k, exclude_self)
    Qb = backend.asarray(Q)
    if exclude_self:
        dist, index = backend.call(softdist.knn, Qb, k=k, exclude_self=True)
    else:
        dist, index = backend.call(softdist.knn, Qb, backend.asarray(X), k=k)
    assert backend.to_numpy(index).shape == (n, k)
    np.testing.assert_array_equal(backend.to_numpy(index), want_i)
    np.testing.assert_array_equal(backend.to_numpy(dist), want_d)


@pytest.mark.parametrize("k", [3, 10])
def test_many_exact_ties_at_different_points(backend: Backend, float_dtype, k, rng):
    """References on three values in one dimension: ~100 lie at exactly the k-th distance, at two
    different points (their expansion values differ by rounding). Distances are the exact ones on every
    backend; the eager CPU backends and Dask return the lowest tied indices. On JAX and GPUs (the
    documented limit) the indices may be other tied references, never a farther one."""
    X = rng.choice(np.array([0.0, 2.0, 5.0]), size=(300, 1)).astype(float_dtype)
    Q = np.array([[1.0], [3.5], [2.0]], dtype=float_dtype)
    want_d, want_i = reference_knn(Q, X, k, False)
    dist, index = backend.call(softdist.knn, backend.asarray(Q), backend.asarray(X), k=k)
    got_d, got_i = backend.to_numpy(dist), backend.to_numpy(index)
    np.testing.assert_array_equal(got_d, want_d)
    if backend.library == "jax" or backend.device_kind == "gpu":
        # each returned reference really is at the returned distance, and none is returned twice
        np.testing.assert_array_equal(reference_sqdist(Q, X)[np.arange(3)[:, None], got_i], got_d)
        assert all(len(set(row)) == k for row in got_i.tolist())
    else:
        np.testing.assert_array_equal(got_i, want_i)


def _crowded(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Data where far more than k references tie exactly with a query's k-th neighbour."""
    # (300 x 8 each: one compiled program serves every kind on JAX)
    if kind == "all_equal":  # every distance exactly 0
        return np.full((300, 8), 3.0)
    if kind == "few_distinct":  # 8 points, each ~40 times: ~40 exact zeros per query
        return rng.standard_normal((8, 8))[rng.integers(0, 8, 300)]
    if kind in ("on_a_sphere", "huge_sphere"):  # +-e_i: from the origin all at exactly 1, from e_i 0, 2 or 4
        X = np.zeros((299, 8))
        X[np.arange(299), rng.integers(0, 8, 299)] = rng.choice([-1.0, 1.0], 299)
        # huge: scaled by 2**60, near float32's overflow (the float32 expansion runs on scaled-down data)
        return np.concatenate([np.zeros((1, 8)), X]) * (2.0**60 if kind == "huge_sphere" else 1.0)
    X = rng.standard_normal((300, 8))  # "mixed": a crowd of duplicates among random rows, and a NaN row
    X[rng.permutation(300)[:120]] = X[7]
    X[3, 2] = np.nan
    return X


@pytest.mark.parametrize("kind", ["all_equal", "few_distinct", "on_a_sphere", "huge_sphere", "mixed"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_crowded_exact_ties(backend: Backend, float_dtype, kind, exclude_self, rng):
    """Duplicate-heavy and all-equal data (a query's ties at the k-th distance run to hundreds): the
    exact distances and, except in the GPU libraries' tile search (torch, CuPy), the lowest tied
    indices."""
    X = _crowded(kind, rng).astype(float_dtype)
    k = 6
    want_d, want_i = reference_knn(X, None, k, exclude_self)
    # 20000 bytes: many tiles each way, so the bound carries over from tile to tile
    dist, index = backend.call(softdist.knn, backend.asarray(X), k=k, exclude_self=exclude_self,
                               working_memory=20000)  # fmt: skip
    got_d, got_i = backend.to_numpy(dist), backend.to_numpy(index)
    np.testing.assert_allclose(got_d, want_d, rtol={"float32": 1e-5, "float64": 1e-12}[float_dtype], atol=0)
    if backend.device_kind == "gpu" and backend.library != "jax":  # documented: another tied index
        # each returned reference really is at the returned distance, and none is returned twice
        at = reference_sqdist(X, None)[np.arange(X.shape[0])[:, None], got_i]
        np.testing.assert_allclose(at, got_d, rtol={"float32": 1e-5, "float64": 1e-12}[float_dtype], atol=0)
        assert all(len(set(row)) == k for row in got_i.tolist())
    else:
        np.testing.assert_array_equal(got_i, want_i)


@pytest.fixture
def exact_pairs(monkeypatch) -> list[int]:
    """The number of pairs of each exact-distance call the pruned kNN search makes (NumPy, eager)."""
    from softdist._agnostic import neighbors

    pairs: list[int] = []
    exact = neighbors.direct_sqdist_pairs

    def counted(A, B, rows, cols, **kwargs):
        pairs.append(rows.shape[0])
        return exact(A, B, rows, cols, **kwargs)

    monkeypatch.setattr(neighbors, "direct_sqdist_pairs", counted)
    return pairs


@pytest.mark.parametrize("kind", ["all_equal", "few_distinct"])
def test_crowded_ties_bounded_work(kind, rng, exact_pairs):
    """Exact ties are resolved as they crowd in: all-equal rows cost a few exact distances per query,
    not one per reference (2000 rows: ~4 million before)."""
    n = 2000
    X = np.zeros((n, 5)) if kind == "all_equal" else rng.standard_normal((10, 16))[rng.integers(0, 10, n)]
    dist, index = softdist.knn(X, k=5)
    want_d, want_i = reference_knn(X, None, 5, True)
    np.testing.assert_array_equal(index, want_i)
    np.testing.assert_array_equal(dist, want_d)
    assert 0 < sum(exact_pairs) <= 40 * n


FAR_KINDS = ["one_outlier", "huge_outlier", "huge_row", "outliers", "far_cluster", "two_clusters",
             "near_duplicates"]  # fmt: skip


def _far_rows(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random rows with a few far from the rest: a reference's norm widens the expansion's error bound."""
    X = rng.standard_normal((n, 8))
    if kind == "one_outlier":
        X[n // 3] *= 1000.0
    elif kind == "huge_outlier":  # moves the column mean far from every other row
        X[n // 5] *= 1e10
    elif kind == "huge_row":  # float32: the expansion runs scaled down, the other rows near underflow
        X[n // 4] = 1e18
    elif kind == "outliers":  # several, far and farther, on both sides of the data
        X[rng.permutation(n)[:5]] *= np.array([-1e4, 1e3, 3e3, -300.0, 1e5])[:, None]
    elif kind == "far_cluster":  # a tenth of the rows in a tight cluster far away, among the others
        X[rng.permutation(n)[: n // 10]] = 500.0 + 0.01 * rng.standard_normal((n // 10, 8))
    elif kind == "two_clusters":  # half the rows 1000 away from the other half, shuffled
        X[rng.permutation(n)[: n // 2]] += 1000.0
    else:  # "near_duplicates": 10 points, each repeated with noise far below the rounding of the norms
        X = X[:10][rng.integers(0, 10, n)] + 1e-5 * rng.standard_normal((n, 8))
    return X


@pytest.mark.parametrize("kind", FAR_KINDS)
def test_far_rows(backend: Backend, float_dtype, kind, rng):
    """Rows far from the others (outliers, a far cluster): every query's exact neighbours, ties by index.
    The GPU libraries' tile search (torch, CuPy) picks candidates by the expansion's values centred at
    the column mean (documented in docs/numerics.md): where its error exceeds the gaps between a query's
    neighbours (float32; float64 with an outlier 1e10 times the others) it may return other references,
    each at its exact distance."""
    X = _far_rows(kind, rng, 300).astype(float_dtype)
    Q = np.concatenate([X[:40], 50.0 * rng.standard_normal((5, 8)).astype(float_dtype)])
    for queries in (None, Q):
        want_d, want_i = reference_knn(X if queries is None else queries, X if queries is not None else None,
                                       5, queries is None)  # fmt: skip
        args = (backend.asarray(X),) if queries is None else (backend.asarray(queries), backend.asarray(X))
        dist, index = backend.call(softdist.knn, *args, k=5, working_memory=20000)
        got_d, got_i = backend.to_numpy(dist), backend.to_numpy(index)
        rtol = {"float32": 1e-5, "float64": 1e-12}[float_dtype]
        if (backend.library != "jax" and backend.device_kind == "gpu") and (
            float_dtype == "float32" or kind in ("huge_outlier", "huge_row")
        ):
            at = reference_sqdist(X if queries is None else queries, X)
            at = at[np.arange(at.shape[0])[:, None], got_i]
            np.testing.assert_allclose(got_d, at, rtol=rtol, atol=0)
            continue
        np.testing.assert_allclose(got_d, want_d, rtol=rtol, atol=0)
        np.testing.assert_array_equal(got_i, want_i)


@pytest.mark.parametrize("kind", FAR_KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_far_rows_bounded_work(kind, dtype, rng, exact_pairs):
    """A far reference widens only its own entries' bound, and float32 rows far from the mean compared
    with their neighbours' distances are screened in float64: a few exact distances per query, not one
    per reference (2000 rows with one outlier: ~4 million before; two clusters: ~2 million)."""
    n = 2000
    X = _far_rows(kind, rng, n).astype(dtype)
    dist, index = softdist.knn(X, k=5)
    want_d, want_i = reference_knn(X, None, 5, True)
    np.testing.assert_array_equal(index, want_i)
    np.testing.assert_allclose(dist, want_d, rtol={"float32": 1e-5, "float64": 1e-12}[dtype], atol=0)
    assert 0 < sum(exact_pairs) <= 40 * n


def _non_finite_rows(kind: str, rng: np.random.Generator, n: int, dtype: str) -> np.ndarray:
    """Rows whose k-th distance is NaN or inf, so that knn finishes them against every reference."""
    X = rng.standard_normal((n, 8)).astype(dtype)
    big = np.sqrt(np.finfo(dtype).max / 8)  # distances between rows of this size are near overflow
    if kind == "nan_column":  # every row but 5 has a NaN: NaN distances except among those 5
        X[5:, 3] = np.nan
    elif kind == "inf_signs":  # +inf and -inf in one column: inf - inf of one sign is NaN, else inf
        X[: n // 2, 0] = np.inf
        X[n // 4 : n // 2 + 10, 0] = -np.inf
        X[n - 3, 5] = np.nan
    elif kind == "all_overflow":  # every distance overflows to inf: ties at inf, by index
        X = X * (4 * big)
    elif kind == "underflow":  # distances round to 0 or to subnormals: ties by index (break test)
        X = X * np.sqrt(np.finfo(dtype).smallest_subnormal) * 4
    else:  # "some_overflow": distances on both sides of the overflow threshold
        X = X * (0.3 * big)
        X[: n // 10] *= 3.0
    return X


@pytest.mark.parametrize("kind", ["nan_column", "inf_signs", "all_overflow", "some_overflow", "underflow"])
def test_non_finite_kth_distance(backend: Backend, float_dtype, kind, rng):
    """Queries whose k-th distance is NaN or inf get every reference's exact distance: NaN where a
    difference is NaN (a NaN, inf - inf), inf where one is infinite or the sum overflows, by index; and
    distances that round to 0 or to subnormals tie by index."""
    if kind == "underflow" and backend.library == "jax":
        pytest.skip("XLA on the CPU flushes subnormal results to 0 (docs/numerics.md)")
    X = _non_finite_rows(kind, rng, 200, float_dtype)
    Q = np.concatenate([X[:30], X[-30:]])
    rtol = {"float32": 1e-5, "float64": 1e-12}[float_dtype]
    for queries in (None, Q):
        with np.errstate(invalid="ignore", over="ignore"):  # the reference's inf - inf, its cast to inf
            if queries is None:
                want_d, want_i = reference_knn(X, None, 6, True)
            else:
                want_d, want_i = reference_knn(queries, X, 6, False)
            want_d = want_d.astype(float_dtype)  # distances past float32's range are inf
        args = (backend.asarray(X),) if queries is None else (backend.asarray(queries), backend.asarray(X))
        dist, index = backend.call(softdist.knn, *args, k=6, working_memory=20000)
        got_d, got_i = backend.to_numpy(dist), backend.to_numpy(index)
        np.testing.assert_allclose(got_d, want_d, rtol=rtol, atol=0)
        np.testing.assert_array_equal(got_i, want_i)


def test_ties_at_large_scale(backend: Backend, rng):
    """Grid data near 2**60 in 17-D (float32): JAX's certificates once formed scale**2, which XLA
    flushes to 0, and passed other indices for exact ties (break test)."""
    X = np.zeros((200, 17), np.float32)
    X[:, 0] = rng.permutation(np.repeat(np.arange(20), 10)) * np.float32(2.0**56)
    want_d, want_i = reference_knn(X, None, 12, True)
    dist, index = backend.call(softdist.knn, backend.asarray(X), k=12)
    np.testing.assert_array_equal(backend.to_numpy(index), want_i)
    np.testing.assert_allclose(backend.to_numpy(dist), want_d, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", ["nan_column", "inf_signs", "all_overflow"])
def test_non_finite_kth_distance_bounded_work(kind, rng, exact_pairs):
    """Pairs with a non-finite row, and finite pairs whose distance certainly overflows, need no exact
    distance (each took one before: 5000 rows with a NaN each, 29 s)."""
    n = 2000
    X = _non_finite_rows(kind, rng, n, "float32")
    dist, index = softdist.knn(X, k=5)
    with np.errstate(invalid="ignore", over="ignore"):
        want_d, want_i = reference_knn(X, None, 5, True)
        want_d = want_d.astype(np.float32)
    np.testing.assert_array_equal(index, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5, atol=0)
    assert sum(exact_pairs) <= 40 * n


def test_nan_rows_sort_last(backend: Backend, rng):
    Q, X = _data(rng, n=6, m=12)
    X[2, 1] = np.nan
    X[7, 0] = np.nan
    dist, index = backend.call(softdist.knn, backend.asarray(Q), backend.asarray(X), k=12)
    index, dist = backend.to_numpy(index), backend.to_numpy(dist)
    np.testing.assert_array_equal(index[:, -2:], np.broadcast_to([2, 7], (6, 2)))
    assert np.all(np.isnan(dist[:, -2:])) and np.all(np.isfinite(dist[:, :-2]))


def test_fast_paths_equal_generic(rng):
    import array_api_compat.numpy as xp

    from softdist._agnostic import distances as gd
    from softdist._agnostic import neighbors as gn
    from softdist._backends import _numpy, backend_for

    Q, X = rng.standard_normal((40, 5)), rng.standard_normal((300, 5))  # no ties: selections agree
    common = {"k": 5, "exclude_self": False, "tile_rows": 16, "tile_cols": 50, "xp": xp}
    generic = gn.knn(Q, X, sqdist=lambda a, b: gd.pairwise_sqdist(a, b, xp=xp),
                     select=lambda D, c: gn.select_smallest(D, c, xp=xp), **common)  # fmt: skip
    pruned = gn.knn_pruned(Q, X, operands=_numpy.numpy_augmented_operands,
                           select=backend_for(xp).smallest_selector(xp), **common)  # fmt: skip
    for g, p in zip(generic, pruned, strict=True):
        np.testing.assert_array_equal(g, p)
    D = gd.pairwise_sqdist(Q, X, xp=xp)
    D[0, :3] = np.nan
    want = np.sort(gn.select_smallest(D, 6, xp=xp), axis=1)
    for module in ("numpy", "torch", "jax.numpy"):
        lib = pytest.importorskip(module)
        from array_api_compat import array_namespace

        Dl = lib.asarray(D)
        got = backend_for(array_namespace(Dl)).smallest_selector(array_namespace(Dl))(Dl, 6)
        np.testing.assert_array_equal(np.sort(np.asarray(got), axis=1), want)


class TestBadInput:
    Q = np.zeros((4, 3))

    @pytest.mark.parametrize(
        ("args", "kwargs", "error", "match"),
        [
            ((), {"k": 0}, ValueError, "k must be >= 1"),
            ((), {"k": 2.0}, TypeError, "k must be an int"),
            ((), {"k": 4}, ValueError, r"k = 4 is larger than the 3 other rows in X \(exclude_self=True"),
            ((np.zeros((5, 3)),), {"k": 6}, ValueError, "k = 6 is larger than the 5 rows in X"),
            ((np.zeros((5, 2)),), {"k": 1}, ValueError, "same number of features"),
            (
                (np.zeros((5, 3)),),
                {"k": 1, "exclude_self": True},
                ValueError,
                "exclude_self applies to X=None",
            ),
            ((), {"k": 1, "working_memory": 0}, ValueError, "working_memory must be a positive"),
        ],
    )
    def test_errors(self, args, kwargs, error, match):
        with pytest.raises(error, match=match):
            softdist.knn(self.Q, *args, **kwargs)

    def test_non_2d(self):
        with pytest.raises(ValueError, match="Q must be a 2-D array"):
            softdist.knn(np.zeros(4), k=1)


def test_dask_graph_is_lazy_and_blocks_are_bounded(rng):
    da = pytest.importorskip("dask.array")
    Q, X = _data(rng, n=200, m=300)
    Qd, Xd = da.from_array(Q, chunks=(50, 5)), da.from_array(X, chunks=(60, 5))
    with backend_by_name("dask").no_compute():  # any compute while building the graph raises
        dist, index = softdist.knn(Qd, Xd, k=3)
    assert isinstance(dist, da.Array) and isinstance(index, da.Array)
    assert max(dist.chunks[0]) == 50 and dist.chunks[1] == (3,)  # (query chunk, k) blocks; nothing ran
    want_d, want_i = reference_knn(Q, X, 3, False)
    np.testing.assert_array_equal(index.compute(), want_i)
    np.testing.assert_allclose(dist.compute(), want_d, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # distributed's own imports on some versions
def test_on_a_distributed_local_cluster(rng):
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    Q, X = _data(rng, n=400, m=600, d=8)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="400MiB",
                                 dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        Qd, Xd = da.from_array(Q, chunks=(100, 8)), da.from_array(X, chunks=(150, 8))
        dist, index = client.compute(softdist.knn(Qd, Xd, k=5), sync=True)
        D = client.compute(softdist.pairwise_sqdist(Qd, Xd), sync=True)
    want_d, want_i = reference_knn(Q, X, 5, False)
    np.testing.assert_array_equal(index, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-12)
    np.testing.assert_allclose(D, reference_sqdist(Q, X), rtol=1e-10)


def _near_ties(rng, near: int, far: int, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Queries at 0 and references: ``near`` of them at squared distances 1 + j * 2**-40 (the same
    float32 value, 1.0, distinct in float64), in shuffled rows, and ``far`` ones further than 4."""
    X = rng.standard_normal((near + far, d))
    X *= (2.0 + rng.random((near + far, 1))) / np.linalg.norm(X, axis=1, keepdims=True)
    rows = rng.permutation(near + far)[:near]
    X[rows] = 0.0
    X[rows, rng.integers(0, d, near)] = np.sqrt(1.0 + rng.permutation(near) * 2.0**-40)
    return np.zeros((3, d)), X


class TestFloat32Candidates:
    """The float64 JAX path picks candidates by a float32 top_k and checks them against the float64
    values; these cases straddle float32 rounding (a float32 ranking would get them wrong) or defeat
    the check (the float64 fallback). Every backend, against the long-double reference."""

    @pytest.fixture(autouse=True)
    def _float64_arrays(self, request: pytest.FixtureRequest) -> None:
        backend = request.node.callspec.params.get("backend")
        if getattr(backend, "library", "") == "jax" and not jax_x64_wanted():
            pytest.skip("JAX x64 is off: float64 arrays are float32")

    @pytest.mark.parametrize(("near", "k"), [(5, 3), (40, 3), (40, 20)])
    @pytest.mark.parametrize("working_memory", [None, 6000])
    def test_near_ties_below_float32_resolution(self, backend: Backend, near, k, working_memory, rng):
        Q, X = _near_ties(rng, near, 300)
        want_d, want_i = reference_knn(Q, X, k, False)
        dist, index = backend.call(softdist.knn, backend.asarray(Q), backend.asarray(X), k=k,
                                   working_memory=working_memory)  # fmt: skip
        np.testing.assert_array_equal(backend.to_numpy(index), want_i)
        np.testing.assert_allclose(backend.to_numpy(dist), want_d, rtol=1e-12, atol=0)

    @pytest.mark.parametrize("copies", [3, 50])
    def test_duplicates_tie_by_index(self, backend: Backend, float_dtype, copies, rng):
        Q = rng.standard_normal((20, 6))
        X = rng.standard_normal((400, 6)) * 3.0
        X[rng.permutation(400)[:copies]] = Q[4] + 0.25  # identical references: exact ties
        Q, X = Q.astype(float_dtype), X.astype(float_dtype)
        want_d, want_i = reference_knn(Q, X, 5, False)
        dist, index = backend.call(softdist.knn, backend.asarray(Q), backend.asarray(X), k=5)
        np.testing.assert_array_equal(backend.to_numpy(index), want_i)
        np.testing.assert_allclose(
            backend.to_numpy(dist), want_d, rtol={"float32": 1e-5, "float64": 1e-12}[float_dtype]
        )

    @pytest.mark.parametrize("exclude_self", [True, False])
    def test_k_close_to_n(self, backend: Backend, exclude_self, rng):
        Q = rng.standard_normal((60, 3))
        Q[7] = Q[30]
        k = 59 if exclude_self else 60
        want_d, want_i = reference_knn(Q, None, k, exclude_self)
        dist, index = backend.call(softdist.knn, backend.asarray(Q), k=k, exclude_self=exclude_self,
                                   working_memory=5000)  # fmt: skip
        np.testing.assert_array_equal(backend.to_numpy(index), want_i)
        np.testing.assert_allclose(backend.to_numpy(dist), want_d, rtol=1e-12)


def _jax_or_skip():
    jax = pytest.importorskip("jax")
    if not jax.config.read("jax_enable_x64"):
        pytest.skip("float64 selection: needs JAX x64")
    return jax


@pytest.mark.parametrize("block", [1, 4])
@pytest.mark.parametrize("case", ["random", "near_ties", "ties", "inf", "narrow"])
def test_jax_float64_selection_equals_top_k(case, block, rng, monkeypatch):
    jax = _jax_or_skip()
    import jax.numpy as jnp

    from softdist import _config
    from softdist._backends import _jax

    monkeypatch.setattr(_config, "KNN_JAX_SELECT_BLOCK", block)
    D = rng.random((30, 403)) + 1.0
    if case == "near_ties":  # 8 values per row within float32's rounding of 1.0, in random columns
        for row in D:
            row[rng.permutation(403)[:8]] = 1.0 + rng.permutation(8) * 2.0**-40
    elif case == "ties":  # more equal values than candidates: the float64 fallback
        D[:, rng.permutation(403)[:60]] = 1.0
    elif case == "inf":
        D[:5, 10:] = np.inf
    elif case == "narrow":
        D = D[:, :20]
    count = 10
    got = jax.jit(lambda D: _jax._smallest_columns(D, count))(jnp.asarray(D))
    want = jax.lax.top_k(-jnp.asarray(D), min(count, D.shape[1]))[1]
    np.testing.assert_array_equal(np.sort(np.asarray(got), axis=1), np.sort(np.asarray(want), axis=1))


def test_jax_knn_equals_generic(rng):
    """The JAX tile loop (float32 candidates, rank-count merges, exact distances once) against the
    generic one with the generic selection, on NumPy, at float64 with near-ties and duplicates."""
    _jax_or_skip()
    import array_api_compat.numpy as xp
    import jax.numpy as jnp
    from array_api_compat import array_namespace

    from softdist._agnostic import distances as gd
    from softdist._agnostic import neighbors as gn
    from softdist._backends import _jax
    from softdist.distances import _sqdist

    _, X = _near_ties(rng, 6, 250)
    Q = np.concatenate([np.zeros((2, 4)), rng.standard_normal((40, 4))])
    X[[3, 90, 200]] = Q[5]
    for exclude_self, X_ in [(False, X), (True, Q)]:
        common = {"k": 4, "exclude_self": exclude_self, "tile_rows": 16, "tile_cols": 64}
        want = gn.knn(Q, X_, sqdist=lambda a, b: gd.pairwise_sqdist(a, b, xp=xp),
                      select=lambda D, c: gn.select_smallest(D, c, xp=xp), xp=xp, **common)  # fmt: skip
        Qj, Xj = jnp.asarray(Q), jnp.asarray(X_)
        got = _jax.JaxBackend().knn(Qj, Xj, sqdist=_sqdist, dtype=jnp.float64, index_dtype=jnp.int64,
                                    xp=array_namespace(Qj), **common)  # fmt: skip
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g), w)


def _screen_data(case, rng):
    """Data for the float32 screen of the JAX float64 path: cases it certifies and cases it hands to
    the float64 path (near-ties, clusters far from the centre) or skips (NaN, inf, out of range)."""
    Q, X = rng.standard_normal((50, 6)), rng.standard_normal((230, 6))
    if case == "offset":  # a common offset far past the spread: centred first, so still certified
        Q, X = Q + 1e6, X + 1e6
    elif case == "duplicates":  # more exact ties than the k + 8 kept, no more than the float64 path's 2k
        Q[3] = 50.0  # away from the rest: only these 20 equal points see the ties
        X[rng.permutation(230)[:19]] = Q[3]
    elif case == "near_ties":  # distances equal in float32, distinct in float64
        Q, X = _near_ties(rng, 30, 200)
    elif case == "clusters":  # two tight clusters 1e4 apart: the float32 bound is too loose
        X = X * 1e-3 + np.where(rng.random((230, 1)) < 0.5, 1e4, -1e4)
        Q = X[rng.permutation(230)[:50]] + rng.standard_normal((50, 6)) * 1e-4
    elif case == "nan_inf":
        X[7, 2], X[50, 0], Q[3, 1] = np.nan, np.inf, -np.inf
    elif case == "tiny":  # squared norms below 2**-900: no scale for float32
        Q, X = Q * 1e-150, X * 1e-150
    elif case == "narrow":  # fewer references than the candidates kept
        X = X[:14]
    return Q, X


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize(
    "case", ["random", "offset", "duplicates", "near_ties", "clusters", "nan_inf", "tiny", "narrow"]
)
def test_jax_float32_screen_equals_generic(case, exclude_self, rng):
    """The float32-screened JAX float64 search (tiles small enough for several merges and the blocked
    selection) gives the exact answer, and certifies the cases it should."""
    jax = _jax_or_skip()
    import array_api_compat.numpy as xp
    import jax.numpy as jnp
    from array_api_compat import array_namespace

    from softdist._agnostic import distances as gd
    from softdist._agnostic import neighbors as gn
    from softdist._backends import _jax
    from softdist.distances import _sqdist

    Q, X = _screen_data(case, rng)
    if exclude_self:
        X = Q = np.concatenate([Q, X])
    k = {"near_ties": 5, "duplicates": 10}.get(case, 6)
    common = {"k": k, "exclude_self": exclude_self, "tile_rows": 16, "tile_cols": 100}
    want = gn.knn(Q, X, sqdist=lambda a, b: gd.pairwise_sqdist(a, b, xp=xp),
                  select=lambda D, c: gn.select_smallest(D, c, xp=xp), xp=xp, **common)  # fmt: skip
    Qj, Xj = jnp.asarray(Q), jnp.asarray(X)
    got = _jax.JaxBackend().knn(Qj, Xj, sqdist=_sqdist, dtype=jnp.float64, index_dtype=jnp.int64,
                                xp=array_namespace(Qj), **common)  # fmt: skip
    # ties by index against the long-double reference (the generic static path keeps 2k per tile, so
    # it may miss a lower index among more exact ties than that), except with NaN rows (the reference
    # ranks a query's own row before NaN distances); distances: the generic path's bits
    if case == "nan_inf":
        want_i = want[1]
    else:
        want_i = reference_knn(Q, None if exclude_self else X, k, exclude_self)[1]
    np.testing.assert_array_equal(np.asarray(got[1]), want_i)
    assert np.asarray(got[0]).tobytes() == np.asarray(want[0]).tobytes()
    # The certificate itself, on the first query tile: the screen's answer is taken only when it holds.
    screen = _jax._float32_screen_operands(Qj, Xj, xp=array_namespace(Qj))
    options = {"nq": Q.shape[0], "k": k, "exclude_self": exclude_self, "tile_cols": 100}
    tile = jax.jit(lambda Qt: _jax._screened_query_tile(Qt, 0, Xj, screen, xp=array_namespace(Qj), **options))
    (dist, index), certified = tile(Qj[:16])
    expect = {"random": True, "offset": True, "narrow": True, "near_ties": False, "clusters": False,
              "duplicates": False}  # fmt: skip
    assert bool(screen.usable) == (case != "tiny")
    if case in expect:
        assert bool(certified) == expect[case]
    if bool(certified):
        np.testing.assert_array_equal(np.asarray(index), want_i[:16])
        assert np.asarray(dist).tobytes() == np.asarray(want[0][:16]).tobytes()


@pytest.mark.parametrize("stage", ["direct", "exact"])
@pytest.mark.parametrize("case", ["random", "duplicates", "nan_inf", "clusters"])
def test_jax_float32_screen_fallback(case, stage, rng, monkeypatch):
    """Query tiles whose certificate fails are ranked by direct differences, and where those cannot be
    certified, by exact distances to every reference: each forced here, the answer is the same (self
    mode and cross mode)."""
    _jax_or_skip()
    import jax.numpy as jnp

    from softdist._backends import _jax

    calls = []

    def refused(Qt, *args, **kwargs):
        (dist, index), _ = screened(Qt, *args, **kwargs)
        calls.append(1)
        return (dist * 0.0 - 1.0, index * 0), jnp.asarray(False)  # a wrong answer, not certified

    def exact_only(Qt, q0, X, screen, *, nq, k, exclude_self, xp):
        calls.append(2)
        return _jax._exact_query_tile(Qt, q0, X, k=k, exclude_self=exclude_self, xp=xp)

    screened = _jax._screened_query_tile
    monkeypatch.setattr(_jax, "_screened_query_tile", refused)
    if stage == "exact":
        monkeypatch.setattr(_jax, "_direct_query_tile", exact_only)
    Q, X = _screen_data(case, rng)
    for queries, refs in ((Q, X), (X, None)):
        monkeypatch.setattr(_jax, "_JAX_COMPILED", type(_jax._JAX_COMPILED)())
        calls.clear()
        with np.errstate(invalid="ignore"):  # the reference's inf - inf
            want = reference_knn(queries, refs, 6, refs is None)
        args = (jnp.asarray(queries),) if refs is None else (jnp.asarray(queries), jnp.asarray(refs))
        dist, index = softdist.knn(*args, k=6, working_memory=20000)
        assert 1 in calls and (stage == "direct" or 2 in calls)  # traced once: each stage on the path
        np.testing.assert_array_equal(np.asarray(index), want[1])
        np.testing.assert_allclose(np.asarray(dist), want[0], rtol=1e-12)
