"""Issue 11, sections 1 and 2: non-finite and huge values, and kNN ties and self-exclusion, identical on
every backend. References are exact rational arithmetic (fractions) or the direct-difference rule."""

from __future__ import annotations

import fractions
import warnings

import numpy as np
import pytest

import softdist
from softdist.testing import Backend

inf, nan = np.inf, np.nan


def _run(backend: Backend, func, *arrays, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning may escape
        out = backend.call(func, *[backend.asarray(a) for a in arrays], **options)
        if isinstance(out, tuple):
            return tuple(backend.to_numpy(o) for o in out)
        return backend.to_numpy(out)


def _exact_sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The direct-difference rule, with finite sums exact (fractions) and rounded once to A's dtype."""
    dtype = np.result_type(A, B)
    out = np.empty((A.shape[0], B.shape[0]), dtype=dtype)
    big = fractions.Fraction(float(np.finfo(dtype).max)) * (
        1 + fractions.Fraction(1, 2 ** (np.finfo(dtype).nmant + 2))
    )
    for i, a in enumerate(A):
        for j, b in enumerate(B):
            with np.errstate(all="ignore"):
                diff = a.astype(np.float64) - b.astype(np.float64)
            if np.any(np.isnan(diff)):
                out[i, j] = nan
            elif np.any(np.isinf(diff)):
                out[i, j] = inf
            else:
                s = sum(
                    (fractions.Fraction(float(x)) - fractions.Fraction(float(y))) ** 2
                    for x, y in zip(a, b, strict=True)
                )
                if s >= big:
                    out[i, j] = inf
                elif dtype == np.float64:
                    out[i, j] = float(s)
                else:  # nearest float32 (float(s) may round twice): pick the closest neighbour
                    c = np.float32(float(s))
                    cands = [np.nextafter(c, np.float32(-inf)), c, np.nextafter(c, np.float32(inf))]
                    cands = [v for v in cands if np.isfinite(v)]
                    out[i, j] = min(cands, key=lambda v: abs(fractions.Fraction(float(v)) - s))
    return out


# -- section 1: the inputs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "X",
    [np.array([[0.0], [1.0], [inf]]), np.array([[0.0], [1.0], [3e19]], dtype=np.float32)],
    ids=["inf", "overflow-float32"],
)
def test_knn_with_infinite_distances(backend: Backend, X):
    dist, index = _run(backend, softdist.knn, X, k=1)
    np.testing.assert_array_equal(index, [[1], [0], [0]])
    np.testing.assert_array_equal(dist, np.array([[1], [1], [inf]], dtype=X.dtype))
    dist, index = _run(backend, softdist.knn, X, k=2)
    np.testing.assert_array_equal(index, [[1, 2], [0, 2], [0, 1]])
    np.testing.assert_array_equal(dist, np.array([[1, inf], [1, inf], [inf, inf]], dtype=X.dtype))


def test_inf_in_b_keeps_finite_entries_accurate(backend: Backend):
    A = np.array([[1000.1, 0], [1001.3, 0]], dtype=np.float32)
    B = np.concatenate([A, np.array([[inf, 0]], dtype=np.float32)])
    D = _run(backend, softdist.pairwise_sqdist, A, B)
    want = _exact_sqdist(A, B)
    np.testing.assert_array_equal(D[:, 2], [inf, inf])
    np.testing.assert_allclose(D[:, :2], want[:, :2], rtol=1e-4)
    if not backend.jit:
        assert D[0, 1] == np.float32(1.4400293)


@pytest.mark.parametrize(
    ("X", "want"),
    [
        (np.array([[9e18], [-7e18]], dtype=np.float32), None),
        (np.array([[1e308], [-1e308], [0.0]]), np.array([[0, inf, inf], [inf, 0, inf], [inf, inf, 0]])),
    ],
    ids=["float32-finite", "float64-overflow"],
)
def test_huge_finite_input(backend: Backend, X, want):
    D = _run(backend, softdist.pairwise_sqdist, X)
    want = _exact_sqdist(X, X) if want is None else want
    np.testing.assert_allclose(D, want, rtol=1e-4)
    assert not np.any(np.isnan(D))


def test_self_distances_with_nan_and_inf_rows(backend: Backend):
    X = np.array([[0, 0], [nan, 1], [inf, 0], [1, 1]])
    D = _run(backend, softdist.pairwise_sqdist, X)
    want = np.array([[0, nan, inf, 2], [nan, 0, nan, nan], [inf, nan, 0, inf], [2, nan, inf, 0]])
    np.testing.assert_array_equal(D, want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_distances_keep_nan_where_squared_distances_are_nan(backend: Backend, dtype):
    # pairwise_distances used to turn NaN into 0.0: a NaN row read as a duplicate.
    X = np.array([[0, 0], [nan, 1], [inf, 0], [1, 1], [inf, 0]], dtype=dtype)
    D = _run(backend, softdist.pairwise_distances, X)
    D_ab = _run(backend, softdist.pairwise_distances, X, X[::-1].copy())
    sq = _exact_sqdist(X, X)
    sq[np.arange(5), np.arange(5)] = 0  # pairwise_sqdist(X): a row's distance to itself is 0
    np.testing.assert_array_equal(np.isnan(D), np.isnan(sq))
    np.testing.assert_array_equal(np.isnan(D_ab), np.isnan(_exact_sqdist(X, X[::-1].copy())))
    finite = np.isfinite(sq)
    np.testing.assert_allclose(D[finite], np.sqrt(sq[finite]), rtol=1e-6)
    assert np.all(D[np.isinf(sq)] == inf)


# -- section 1: the whole class -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", ["A", "B", "both"])
def test_nonfinite_entries_follow_direct_differences(backend: Backend, dtype, where, rng):
    A = (rng.standard_normal((7, 3)) * 3 + 100).astype(dtype)
    B = (rng.standard_normal((6, 3)) * 3 + 100).astype(dtype)
    B[4] = A[2]
    for X in [A] if where == "A" else [B] if where == "B" else [A, B]:
        X[1, 0] = inf
        X[3, 2] = -inf
        X[5, 1] = nan
        X[-1, :] = [inf, -inf, 5]
    A[0, 0] = inf  # same sign as B[1, 0] when both: inf - inf
    D = _run(backend, softdist.pairwise_sqdist, A, B)
    want = _exact_sqdist(A, B)
    special = ~np.isfinite(want)
    np.testing.assert_array_equal(D[special], want[special])
    assert np.all(np.isfinite(D[~special]))
    np.testing.assert_allclose(D[~special], want[~special], rtol=1e-4 if dtype == "float32" else 1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("magnitude", [0.3, 0.49, 0.6, 1.2])
def test_magnitudes_near_overflow(backend: Backend, dtype, magnitude, rng):
    """Values up to the largest float: finite where the distance is representable, else inf, never NaN."""
    top = float(np.finfo(dtype).max)
    X = (rng.uniform(-1, 1, (6, 2)) * np.sqrt(top) * magnitude).astype(dtype)
    X[0] = [top / 2, -top / 3]
    X[1] = [-top / 2, top / 3]
    D = _run(backend, softdist.pairwise_sqdist, X)
    want = _exact_sqdist(X, X)
    assert not np.any(np.isnan(D))
    np.testing.assert_array_equal(np.isinf(D), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(D[finite], want[finite], rtol=1e-4 if dtype == "float32" else 1e-10)
    dist, index = _run(backend, softdist.knn, X, k=5)
    assert index.shape == (6, 5) and dist.shape == (6, 5)
    ref = np.where(np.eye(6, dtype=bool), nan, want.astype(np.float64))
    for i in range(6):
        order = np.lexsort((np.arange(6), np.isnan(ref[i]), np.where(np.isnan(ref[i]), inf, ref[i])))[:5]
        np.testing.assert_array_equal(index[i], order)
        np.testing.assert_array_equal(dist[i], want[i, order])


# -- section 2 -------------------------------------------------------------------------------------------


def test_ties_fall_by_index_on_exactly_rounded_distances(backend: Backend):
    Q = np.array([[4.7, 3.2, 1.3, 0.2]])
    X = np.array([[4.6, 3.4, 1.4, 0.3], [4.8, 3.0, 1.4, 0.1], [4.8, 3.0, 1.4, 0.3]])
    dist, index = _run(backend, softdist.knn, Q, X, k=3)
    want = _exact_sqdist(Q, X)[0]
    np.testing.assert_array_equal(index, [[0, 2, 1]])
    assert dist.tobytes() == want[[0, 2, 1]][None, :].tobytes()  # the same bits everywhere


def test_self_exclusion_with_nan_rows(backend: Backend):
    X = np.array([[0.0], [nan], [1.0]])
    _, index = _run(backend, softdist.knn, X, k=2)
    np.testing.assert_array_equal(index, [[2, 1], [0, 2], [0, 1]])


def test_self_exclusion_with_nan_rows_dask_one_row_chunks():
    da = pytest.importorskip("dask.array")
    X = da.from_array(np.array([[0.0], [nan], [1.0]]), chunks=(1, 1))
    _, index = softdist.knn(X, k=2)
    np.testing.assert_array_equal(index.compute(), [[2, 1], [0, 2], [0, 1]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_knn_distances_are_exactly_rounded_on_a_tie_grid(backend: Backend, dtype, rng):
    """Points on a coarse grid plus tiny offsets: many exact and rounding ties; the returned distances
    are the correctly rounded exact values and the order is (distance, index)."""
    X = (rng.integers(0, 3, (40, 3)) * 0.1 + rng.integers(0, 2, (40, 3)) * 1e-9).astype(dtype)
    Q = X[:5] + np.asarray(0.05, dtype)
    dist, index = _run(backend, softdist.knn, Q, X, k=8)
    want = _exact_sqdist(Q, X)
    for i in range(5):
        order = np.lexsort((np.arange(40), want[i]))[:8]
        np.testing.assert_array_equal(index[i], order)
        assert dist[i].tobytes() == want[i, order].tobytes()


def test_knn_dtype_follows_type_promotion(backend: Backend):
    """Section 3, last bullet: float32 Q with float64 X gives float64 distances (array API promotion)."""
    Q, X = np.zeros((3, 2), np.float32), np.ones((4, 2))
    Qb = backend.asarray(Q)
    dist, _ = backend.call(softdist.knn, Qb, backend.asarray(X), k=1)
    assert dist.dtype == backend.dtype("float64")


def test_same_bits_with_jax_x64_disabled(tmp_path):
    """JAX's default (no float64): float32 work stays in float32 and gives NumPy's bits."""
    pytest.importorskip("jax")
    import subprocess
    import sys

    script = tmp_path / "x64_off.py"
    script.write_text(
        "import jax, numpy as np, softdist\n"
        "assert not jax.config.jax_enable_x64\n"
        "Q = np.array([[4.7, 3.2, 1.3, 0.2]], np.float32)\n"
        "X = np.array([[4.6, 3.4, 1.4, 0.3], [4.8, 3.0, 1.4, 0.1], [4.8, 3.0, 1.4, 0.3]], np.float32)\n"
        "for f in (softdist.knn, jax.jit(softdist.knn, static_argnames='k')):\n"
        "    d, i = f(jax.numpy.asarray(Q), jax.numpy.asarray(X), k=3)\n"
        "    print(np.asarray(d).tobytes().hex(), np.asarray(i).tolist())\n"
        "d, i = softdist.knn(jax.numpy.asarray(np.array([[0.], [np.nan], [1.], [3e19]], np.float32)), k=2)\n"
        "print(np.asarray(d).tolist(), np.asarray(i).tolist())\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    lines = out.stdout.splitlines()
    Q = np.array([[4.7, 3.2, 1.3, 0.2]], np.float32)
    X = np.array([[4.6, 3.4, 1.4, 0.3], [4.8, 3.0, 1.4, 0.1], [4.8, 3.0, 1.4, 0.3]], np.float32)
    d, i = softdist.knn(Q, X, k=3)
    assert lines[0] == lines[1] == f"{d.tobytes().hex()} {i.tolist()}"
    assert lines[2] == "[[1.0, inf], [nan, nan], [1.0, inf], [inf, inf]] [[2, 3], [0, 2], [0, 3], [0, 2]]"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pair_distances_are_correctly_rounded_hypothesis(dtype):
    """Any floats, NaN, inf and extremes included: knn's and the refinement's pair routine gives the
    direct-difference rule with finite values correctly rounded, except within 2**-40 (float32) /
    2**-96 (float64) of a rounding boundary (checked on NumPy; every backend runs the same operations,
    which the cross-backend tests above compare bit for bit)."""
    hypothesis = pytest.importorskip("hypothesis")
    import array_api_compat.numpy as xnp
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    from softdist._agnostic.distances import exact_sqdist_rows

    width = 32 if dtype == "float32" else 64
    rows = hnp.arrays(dtype, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=st.floats(width=width))

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(rows, st.data())
    def check(a, data):
        b = data.draw(hnp.arrays(dtype, a.shape, elements=st.floats(width=width)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = exact_sqdist_rows(a, b, xp=xnp)
        want = np.array([_exact_sqdist(a[i : i + 1], b[i : i + 1])[0, 0] for i in range(a.shape[0])])
        hypothesis.note(f"a={[float(x).hex() for x in a.ravel()]} b={[float(x).hex() for x in b.ravel()]}")
        for i in np.flatnonzero(~((got == want) | (np.isnan(got) & np.isnan(want)))):
            # Double-float sums carry 2p bits: an exact value that close to a rounding boundary (the
            # midpoint of the two neighbours) may round either way. Anything else is a failure.
            exact = sum((fractions.Fraction(float(x)) - fractions.Fraction(float(y))) ** 2
                        for x, y in zip(a[i], b[i], strict=True))  # fmt: skip
            assert (
                np.isfinite(got[i])
                and np.isfinite(want[i])
                and abs(np.spacing(want[i])) >= abs(got[i] - want[i])
            )
            midpoint = (fractions.Fraction(float(got[i])) + fractions.Fraction(float(want[i]))) / 2
            assert abs(exact - midpoint) <= exact * fractions.Fraction(
                1, 2 ** (40 if dtype == "float32" else 96)
            )

    check()
