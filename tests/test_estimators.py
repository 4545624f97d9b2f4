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


ARRAY_API_BACKENDS = ["strict", "strict-device1", "torch-cpu", "jax-cpu", "cupy-cuda", "torch-cuda"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    "make", [lambda: SoftmaxClassifier(random_state=0, max_iter=20), KNeighborsClassifier]
)
def test_fit_on_other_libraries_stays_there_and_matches_numpy(backend: Backend, make, rng):
    if backend.name not in ARRAY_API_BACKENDS:
        pytest.skip("NumPy is the reference; jit/Dask are not estimator inputs")
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
