"""The scikit-learn estimators: scikit-learn's own estimator checks, digits accuracy, and fits on other
array libraries that stay in them and agree with the NumPy fit."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

from softdist import KNeighborsClassifier, SoftmaxClassifier
from softdist.testing import Backend, assert_same_kind

ESTIMATORS = [SoftmaxClassifier(random_state=0, max_iter=100), KNeighborsClassifier()]


# scikit-learn's checks fit tiny or degenerate data sets, where minibatch training may stop at max_iter.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0)


def test_digits_accuracy(digits):
    X_train, X_test, y_train, y_test = digits
    assert SoftmaxClassifier(random_state=0).fit(X_train, y_train).score(X_test, y_test) >= 0.95
    for weights in ("uniform", "distance"):
        knn = KNeighborsClassifier(weights=weights).fit(X_train, y_train)
        assert knn.score(X_test, y_test) >= 0.97


# Dask: fit computes the class count (SoftmaxClassifier trains on the computed data); predict is lazy.
ARRAY_API_BACKENDS = ["strict", "strict-device1", "torch-cpu", "jax-cpu", "dask", "cupy-cuda", "torch-cuda"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    "make", [lambda: SoftmaxClassifier(random_state=0, max_iter=20), KNeighborsClassifier]
)
def test_fit_on_other_libraries_stays_there_and_matches_numpy(backend: Backend, make, rng):
    if backend.name not in ARRAY_API_BACKENDS:
        pytest.skip("NumPy is the reference; jit is not an estimator input")
    X = rng.standard_normal((60, 4))
    y = rng.integers(0, 3, 60)
    X[y == 1] += 2.0
    reference = make().fit(X, y)
    Xb, yb = backend.asarray(X), backend.asarray(y)
    fitted = make().fit(Xb, yb)
    assert_same_kind(fitted.classes_, yb)
    for method in ("predict_proba", "predict"):
        got, want = getattr(fitted, method)(Xb), getattr(reference, method)(X)
        assert_same_kind(got, Xb if method == "predict_proba" else yb)
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-9, atol=1e-12)
    if isinstance(fitted, SoftmaxClassifier):
        assert_same_kind(fitted.coef_, Xb)
        np.testing.assert_allclose(backend.to_numpy(fitted.coef_), reference.coef_, rtol=1e-9, atol=1e-12)
        assert fitted.n_iter_ == reference.n_iter_


def test_convergence_warning_and_n_iter():
    X = np.random.default_rng(0).standard_normal((50, 3))
    y = (X[:, 0] > 0).astype(int)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        clf = SoftmaxClassifier(max_iter=2, tol=0).fit(X, y)
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2


def test_knn_needs_enough_training_points():
    knn = KNeighborsClassifier(n_neighbors=5).fit(np.zeros((3, 2)), [0, 1, 1])
    with pytest.raises(ValueError, match="n_neighbors = 5, n_samples_fit = 3"):
        knn.predict(np.zeros((1, 2)))


# -- arrays of another library at predict time, bad y --------------------------------------------------
FOREIGN = ["strict", "strict-device1", "torch-cpu", "jax-cpu", "dask"]
METHODS = ["predict", "predict_proba", "predict_log_proba", "decision_function", "score"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("make", [lambda: SoftmaxClassifier(max_iter=5), KNeighborsClassifier],
                         ids=["softmax", "knn"])  # fmt: skip
@pytest.mark.parametrize("fit_on", ["numpy", *FOREIGN])
@pytest.mark.parametrize("predict_on", ["numpy", "list", *FOREIGN])
def test_predict_with_another_library_is_scikit_learns_error(make, fit_on, predict_on):
    from softdist.testing import backend_by_name

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 3)), np.arange(20) % 3
    names = {fit_on, predict_on} - {"list"}
    for name in names:
        if (reason := backend_by_name(name).skip_reason()) is not None:
            pytest.skip(reason)
    fit_b = backend_by_name(fit_on)
    est = make().fit(fit_b.asarray(X), fit_b.asarray(y))
    Xp = X.tolist() if predict_on == "list" else backend_by_name(predict_on).asarray(X)
    same = fit_on == predict_on or (fit_on == "numpy" and predict_on == "list")
    for method in METHODS:
        if not hasattr(est, method):
            continue
        args = (Xp, y) if method == "score" else (Xp,)
        if same:
            if method != "score":  # score: scikit-learn's accuracy_score on foreign arrays, not ours
                getattr(est, method)(*args)
            continue
        where = "predict" if method == "score" else method
        with pytest.raises(
            ValueError, match=rf"{type(est).__name__}\.{where}\(\) must use the same namespace"
        ):
            getattr(est, method)(*args)


def test_scikit_learns_own_same_namespace_check():
    pytest.importorskip("array_api_strict")
    from sklearn.utils.estimator_checks import check_array_api_same_namespace

    for est in (SoftmaxClassifier(max_iter=5), KNeighborsClassifier()):
        with _no_warning_filter():
            check_array_api_same_namespace(type(est).__name__, est, "array_api_strict")


def _no_warning_filter():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            yield

    return ctx()


def test_fit_with_y_from_another_library_names_y():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library; got X from torch, y from numpy"):
        KNeighborsClassifier().fit(torch.zeros(4, 2), np.array([0, 1, 0, 1]))


@pytest.mark.parametrize("backend_name", FOREIGN)
def test_continuous_y_is_unknown_label_type_everywhere(backend_name):
    from softdist.testing import backend_by_name

    b = backend_by_name(backend_name)
    if (reason := b.skip_reason()) is not None:
        pytest.skip(reason)
    X, y = np.zeros((4, 2)), np.array([0.5, 1.0, 0.25, 2.0])
    for make in (SoftmaxClassifier, KNeighborsClassifier):
        with pytest.raises(ValueError, match="Unknown label type: continuous"):
            make().fit(X, y)  # NumPy: scikit-learn's own message
        with pytest.raises(ValueError, match="Unknown label type: continuous"):
            make().fit(b.asarray(X), b.asarray(y))
    with pytest.raises(ValueError, match="y contains NaN"):
        KNeighborsClassifier().fit(b.asarray(X), b.asarray(np.array([0.0, np.nan, 1.0, 1.0])))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int8", "int16", "float32"])
def test_narrow_label_dtypes_on_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((30, 3)), (np.arange(30) % 3 + 250 if dtype != "int8" else np.arange(30) % 3)
    y = y.astype(dtype)
    X[y == y[1]] += 3
    for make in (lambda: SoftmaxClassifier(random_state=0, max_iter=20), KNeighborsClassifier):
        want = make().fit(X, y).predict(X)
        got = make().fit(torch.asarray(X), torch.asarray(y)).predict(torch.asarray(X))
        assert got.dtype == torch.asarray(y).dtype
        np.testing.assert_array_equal(got.to(torch.float64).numpy(), want.astype(np.float64))


def test_distance_weights_with_queries_on_training_points(backend: Backend, rng):
    # A query that duplicates training points: no division by zero (the suite turns warnings into
    # errors), those points outvote the rest, as in scikit-learn (the reference).
    if backend.name not in [*ARRAY_API_BACKENDS, "numpy"]:
        pytest.skip("NumPy and array API arrays are the estimator inputs")
    from sklearn.neighbors import KNeighborsClassifier as SkKNN

    X = rng.standard_normal((40, 3))
    X[5] = X[6]  # a duplicated training point; same label, so which of the two a tie keeps cannot matter
    y = rng.integers(0, 3, 40)
    y[5] = y[6]
    queries = np.concatenate([X[:12], rng.standard_normal((5, 3))])
    want = SkKNN(n_neighbors=4, weights="distance").fit(X, y).predict_proba(queries)
    fitted = KNeighborsClassifier(n_neighbors=4, weights="distance").fit(
        backend.asarray(X), backend.asarray(y)
    )
    got = fitted.predict_proba(backend.asarray(queries))
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-9, atol=1e-12)
