"""scikit-learn estimators on softdist: a softmax (multinomial logistic) classifier trained by minibatch
gradient descent on :func:`softdist.softmax_loss`, and k-nearest-neighbour classification on
:func:`softdist.knn`.

NumPy input (and lists, pandas) goes through scikit-learn's own validation; an array from another array
API library (PyTorch, JAX, CuPy, array-api-strict, Dask) stays in that library and on its device: the
fitted attributes and the predictions are arrays of it. Dask: fit computes the class count, and
SoftmaxClassifier trains on the computed data (in memory); predictions stay lazy.
"""

from __future__ import annotations

import numbers
from typing import Any

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._backends import backend_for
from ._lib._compat import array_namespace, device, is_array_api_obj
from ._lib._scalars import widened_labels
from ._lib._validation import check_matrix, float_dtype_of, namespace_of
from .neighbors import knn
from .softmax import softmax_loss

__all__ = ["KNeighborsClassifier", "SoftmaxClassifier"]


def _is_foreign_array(x: Any) -> bool:
    """An array of an array API library other than NumPy: kept in its library and on its device."""
    return is_array_api_obj(x) and not backend_for(array_namespace(x)).sklearn_native


def _library_of(X: Any) -> tuple[Any, Any]:
    """The namespace and device ``X`` is computed in: NumPy (on the CPU) for NumPy arrays and
    array-likes (lists, pandas), else the array's own."""
    if _is_foreign_array(X):
        return array_namespace(X), device(X)
    return None, None


class _ArrayAPIClassifier(ClassifierMixin, BaseEstimator):
    """Input validation and label encoding shared by the estimators, for NumPy and foreign arrays."""

    def _fit_inputs(self, X: Any, y: Any) -> tuple[Any, Any, Any]:
        """(X as floats, y as class indices, xp); sets n_features_in_ and classes_."""
        if _is_foreign_array(X):
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
            xp = namespace_of({"X": X, "y": y})  # y from another library: a TypeError naming y
            X = self._foreign_X(X, xp, reset=True)
            if y.ndim != 1 or y.shape[0] != X.shape[0]:
                raise ValueError(f"y must have shape ({X.shape[0]},); got {tuple(y.shape)}")
            self.classes_, y_idx = _encode_foreign_labels(y, xp)
            self._fitted_on = _library_of(X)
            return X, y_idx, xp
        X, y = validate_data(self, X, y, dtype=["float64", "float32"])
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        self._fitted_on = _library_of(X)
        xp = array_namespace(X)
        return X, xp.asarray(encoder.transform(y)), xp

    def _predict_inputs(self, X: Any, method: str) -> tuple[Any, Any]:
        check_is_fitted(self)
        self._check_same_library(X, method)
        if _is_foreign_array(X):
            xp = array_namespace(X)
            return self._foreign_X(X, xp, reset=False), xp
        X = validate_data(self, X, dtype=["float64", "float32"], reset=False)
        return X, array_namespace(X)

    def _check_same_library(self, X: Any, method: str) -> None:
        """scikit-learn's rule for array API estimators (``check_same_namespace``): a method gets arrays
        of the library and device that fit() got, else a ValueError saying so."""
        (fit_xp, fit_device), (xp, dev) = self._fitted_on, _library_of(X)
        if fit_xp is xp and fit_device == dev:
            return
        name = "numpy (array-like)" if xp is None else xp.__name__
        fit_name = "numpy (array-like)" if fit_xp is None else fit_xp.__name__
        differ = (
            f"Array namespaces used during fit ({fit_name}) and {method} ({name}) differ."
            if fit_xp is not xp
            else f"Devices used during fit ({fit_device}) and {method} ({dev}) differ."
        )
        raise ValueError(
            f"Inputs passed to {type(self).__name__}.{method}() must use the same namespace and the same "
            f"device as those passed to fit(). {differ} Convert X, or fit the estimator on X's library."
        )

    def _foreign_X(self, X: Any, xp: Any, *, reset: bool) -> Any:
        check_matrix("X", X)
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        X = xp.astype(X, float_dtype_of({"X": X}, xp), copy=False)
        if not bool(xp.all(xp.isfinite(X))):  # one host read per call, as scikit-learn's own check
            raise ValueError("Input X contains NaN or infinity.")
        return X

    def _take_classes(self, indices: Any, xp: Any) -> Any:
        if backend_for(xp).sklearn_native:
            return self.classes_[indices]
        # torch has no take for uint16/32/64: take from the widened classes, then back to their dtype
        taken = xp.take(widened_labels(self.classes_, xp), indices, axis=0)
        return xp.astype(taken, self.classes_.dtype, copy=False)

    def predict(self, X: Any) -> Any:
        """The most probable class of each row, in the type of ``classes_``."""
        X, xp = self._predict_inputs(X, "predict")
        return self._take_classes(xp.argmax(self._proba(X, xp), axis=1), xp)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``; in
        the library, device and floating dtype of the training data."""
        X, xp = self._predict_inputs(X, "predict_proba")
        return self._proba(X, xp)

    def _proba(self, X: Any, xp: Any) -> Any:
        raise NotImplementedError


def _encode_foreign_labels(y: Any, xp: Any) -> tuple[Any, Any]:
    """(classes_, y as class indices) for labels of another array library, with scikit-learn's rules:
    floating labels must be integral (else "Unknown label type: continuous"), finite."""
    if xp.isdtype(y.dtype, "real floating"):
        if not bool(xp.all(xp.isfinite(y))):  # eager validation: one host read
            raise ValueError("Input y contains NaN or infinity.")
        if not bool(xp.all(y == xp.floor(y))):
            raise ValueError(
                "Unknown label type: continuous. Maybe you are trying to fit a classifier, which expects "
                "discrete classes on a regression target with continuous values."
            )
    elif not xp.isdtype(y.dtype, ("integral", "bool")):
        raise ValueError(f"Unknown label type: y has dtype {y.dtype}; expected integer or integral labels")
    # torch has no unique for uint16/32/64: encode the widened labels, keep classes_ in y's dtype
    classes, y_idx = backend_for(xp).unique_inverse(widened_labels(y, xp), xp=xp)
    return xp.astype(classes, y.dtype, copy=False), y_idx


class SoftmaxClassifier(_ArrayAPIClassifier):
    """Multinomial logistic regression trained by minibatch gradient descent on ``softmax_loss``.

    Parameters
    ----------
    reg : float, default=1e-4
        L2 penalty ``reg * sum(W**2)`` added to the mean cross-entropy (the bias is not penalised).
    learning_rate : float, default=0.01
    solver : {"adam", "momentum"}, default="adam"
        Adam (beta1 0.9, beta2 0.999), or SGD with Nesterov momentum 0.9.
    max_iter : int, default=200
        Maximum number of epochs (passes over the data).
    batch_size : int, default=200
        Rows per minibatch (capped at n_samples).
    tol : float, default=1e-4
        Stop when the epoch's mean loss has not improved by ``tol`` for ``n_iter_no_change`` epochs.
    n_iter_no_change : int, default=5
    fit_intercept : bool, default=True
    random_state : int, RandomState or None
        Seeds the minibatch order (the same order on every array library, so fits agree).

    Attributes
    ----------
    coef_ : array, shape (n_classes, n_features)
        In the library and on the device of the training data, in its floating dtype.
    intercept_ : array, shape (n_classes,)
    classes_ : array, shape (n_classes,)
        The sorted class labels, in the library and dtype of ``y``.
    n_features_in_ : int
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        The mean loss of each epoch.

    See Also
    --------
    softdist.softmax_loss : the loss and gradients each step uses.
    sklearn.linear_model.LogisticRegression : scikit-learn's (NumPy) multinomial logistic regression.

    Notes
    -----
    Fit it on PyTorch, JAX, CuPy, array-api-strict or Dask arrays (Dask: trained on the computed data)
    and the fitted attributes and predictions stay in that library and on that device, equal to the
    NumPy fit with the same ``random_state`` (the minibatch order is drawn on the host). A method given
    arrays of another library than ``fit`` raises scikit-learn's "must use the same namespace"
    ValueError. Passes scikit-learn's ``parametrize_with_checks``. Warns with ``ConvergenceWarning`` when
    ``max_iter`` epochs end before the loss stops improving.

    References
    ----------
    .. [1] D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    .. [2] Y. Nesterov, "A method for solving the convex programming problem with convergence rate
       O(1/k^2)", *Soviet Mathematics Doklady* 27, 372-376, 1983 (the momentum variant).

    Examples
    --------
    >>> import numpy as np, softdist
    >>> X, y = np.array([[0.0], [1.0], [10.0], [11.0]]), np.array([0, 0, 1, 1])
    >>> clf = softdist.SoftmaxClassifier(learning_rate=0.1, random_state=0).fit(X, y)
    >>> clf.predict(np.array([[0.5], [10.5]]))
    array([0, 1])
    >>> clf.coef_.shape, clf.score(X, y)
    ((2, 1), 1.0)
    """

    _parameter_constraints: dict = {  # noqa: RUF012 - scikit-learn's convention
        "reg": [Interval(numbers.Real, 0, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "solver": [StrOptions({"adam", "momentum"})],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "fit_intercept": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        reg: float = 1e-4,
        learning_rate: float = 0.01,
        solver: str = "adam",
        max_iter: int = 200,
        batch_size: int = 200,
        tol: float = 1e-4,
        n_iter_no_change: int = 5,
        fit_intercept: bool = True,
        random_state: Any = None,
    ) -> None:
        self.reg = reg
        self.learning_rate = learning_rate
        self.solver = solver
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.fit_intercept = fit_intercept
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> SoftmaxClassifier:
        """Train on X (n_samples, n_features) and labels y (n_samples,) of any array API library;
        returns self."""
        self._validate_params()
        X, y_idx, fit_xp = self._fit_inputs(X, y)
        fit_device = device(X)
        # Trained on values that exist now (a Dask array is computed: NumPy), returned in X's library.
        X, y_idx = backend_for(fit_xp).in_memory(X), backend_for(fit_xp).in_memory(y_idx)
        xp = array_namespace(X)
        n, d = X.shape
        c = self.classes_.shape[0]
        dev = device(X)
        params = [xp.zeros((d, c), dtype=X.dtype, device=dev), xp.zeros((c,), dtype=X.dtype, device=dev)]
        state = [[xp.zeros_like(p) for p in params], [xp.zeros_like(p) for p in params]]
        rng = check_random_state(self.random_state)
        batch = min(self.batch_size, n)
        self.loss_curve_, best, stale, step = [], float("inf"), 0, 0
        for _ in range(self.max_iter):
            order = xp.asarray(rng.permutation(n), device=dev)  # host-drawn: identical on every library
            total = 0.0
            for start in range(0, n, batch):
                rows = order[start : min(start + batch, n)]
                b = params[1] if self.fit_intercept else None
                out = softmax_loss(
                    params[0], xp.take(X, rows, axis=0), xp.take(y_idx, rows), reg=self.reg, b=b
                )
                step += 1
                self._update(params, list(out[1:]), state, step, xp)
                total = total + out[0] * rows.shape[0]
            self.loss_curve_.append(float(total) / n)  # one host read per epoch
            if self.loss_curve_[-1] > best - self.tol:
                stale += 1
            else:
                stale = 0
            best = min(best, self.loss_curve_[-1])
            if stale >= self.n_iter_no_change:
                break
        else:
            _warn_not_converged(self.max_iter)
        self.n_iter_ = len(self.loss_curve_)
        self.coef_ = xp.matrix_transpose(params[0])
        self.intercept_ = params[1]
        if xp is not fit_xp:
            self.coef_ = fit_xp.asarray(self.coef_, device=fit_device)
            self.intercept_ = fit_xp.asarray(self.intercept_, device=fit_device)
        return self

    def _update(self, params: list, grads: list, state: list, step: int, xp: Any) -> None:
        lr = self.learning_rate
        for i, g in enumerate(grads):
            if self.solver == "adam":
                m = state[0][i] = 0.9 * state[0][i] + 0.1 * g
                v = state[1][i] = 0.999 * state[1][i] + 0.001 * (g * g)
                m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
                params[i] = params[i] - lr * m_hat / (xp.sqrt(v_hat) + 1e-8)
            else:  # Nesterov momentum
                velocity = state[0][i] = 0.9 * state[0][i] - lr * g
                params[i] = params[i] + 0.9 * velocity - lr * g

    def decision_function(self, X: Any) -> Any:
        """Class scores ``X @ coef_.T + intercept_``; for two classes, the score of the second class
        minus the first's (shape (n,)), as scikit-learn's linear classifiers."""
        X, xp = self._predict_inputs(X, "decision_function")
        scores = X @ xp.matrix_transpose(self.coef_) + self.intercept_
        return scores[:, 1] - scores[:, 0] if self.classes_.shape[0] == 2 else scores

    def _proba(self, X: Any, xp: Any) -> Any:
        scores = X @ xp.matrix_transpose(self.coef_) + self.intercept_
        e = xp.exp(scores - xp.max(scores, axis=1, keepdims=True))
        return e / xp.sum(e, axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> Any:
        """The logarithm of :meth:`predict_proba`."""
        X, xp = self._predict_inputs(X, "predict_log_proba")
        return xp.log(self._proba(X, xp))


class KNeighborsClassifier(_ArrayAPIClassifier):
    """k-nearest-neighbour vote on exact Euclidean distances (:func:`softdist.knn`).

    Parameters
    ----------
    n_neighbors : int, default=5
    weights : {"uniform", "distance"}, default="uniform"
        "distance" weighs each neighbour by 1 / distance; a query that coincides with training points
        takes the vote of those points only.
    working_memory : int, optional
        In **bytes**, not MiB as scikit-learn's ``working_memory`` (``64 * 2**20`` for 64 MiB): the
        distance tiles at a time (see :func:`softdist.knn`); memory never grows with
        n_queries x n_samples_fit.

    Attributes
    ----------
    classes_ : array, shape (n_classes,)
        The sorted class labels, in the library and dtype of ``y``.
    n_features_in_ : int

    See Also
    --------
    softdist.knn : the exact neighbours this classifier votes with.
    sklearn.neighbors.KNeighborsClassifier : scikit-learn's (NumPy) classifier.

    Notes
    -----
    Neighbours are exact and ties go to the lower training index on every backend (:func:`softdist.knn`);
    predictions stay in the training data's library and on its device. Passes scikit-learn's
    ``parametrize_with_checks``.

    References
    ----------
    .. [1] T. M. Cover and P. E. Hart, "Nearest neighbor pattern classification", *IEEE Transactions on
       Information Theory* 13(1), 21-27, 1967.

    Examples
    --------
    >>> import numpy as np, softdist
    >>> X, y = np.array([[0.0], [1.0], [10.0], [11.0]]), np.array([0, 0, 1, 1])
    >>> knn = softdist.KNeighborsClassifier(n_neighbors=2).fit(X, y)
    >>> knn.predict(np.array([[0.5], [10.5]]))
    array([0, 1])
    >>> knn.predict_proba(np.array([[0.5], [6.0]]))
    array([[1. , 0. ],
           [0.5, 0.5]])
    """

    _parameter_constraints: dict = {  # noqa: RUF012 - scikit-learn's convention
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "weights": [StrOptions({"uniform", "distance"})],
        "working_memory": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self, n_neighbors: int = 5, weights: str = "uniform", working_memory: int | None = None
    ) -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.working_memory = working_memory

    def fit(self, X: Any, y: Any) -> KNeighborsClassifier:
        """Store X (n_samples, n_features) and labels y (n_samples,) of any array API library; returns
        self."""
        self._validate_params()
        self._fit_X, self._fit_y, _ = self._fit_inputs(X, y)
        return self

    def _proba(self, X: Any, xp: Any) -> Any:
        n_fit, k, c = self._fit_X.shape[0], self.n_neighbors, self.classes_.shape[0]
        if k > n_fit:
            raise ValueError(
                f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, n_samples_fit = {n_fit}"
            )
        if X.shape[0] == 0:
            return xp.zeros((0, c), dtype=X.dtype, device=device(X))
        # Exact neighbours in bounded memory, ties to the lower training index (softdist.knn).
        sqdist, nearest = knn(X, xp.astype(self._fit_X, X.dtype), k=k, working_memory=self.working_memory)
        dist = xp.sqrt(sqdist)
        labels = xp.reshape(xp.take(self._fit_y, xp.reshape(nearest, (-1,)), axis=0), dist.shape)
        if self.weights == "uniform":
            w = xp.ones(dist.shape, dtype=dist.dtype, device=device(dist))
        else:  # coinciding training points outvote everything else, as in scikit-learn
            exact = dist == 0
            # double where: 1 / dist only on non-zero distances (NumPy warns on 1 / 0, and -W error raises)
            inverse = 1 / xp.where(exact, 1.0, dist)
            w = xp.where(xp.any(exact, axis=1, keepdims=True), xp.astype(exact, dist.dtype), inverse)
        onehot = xp.astype(labels[..., None] == xp.arange(c, device=device(dist)), dist.dtype)
        votes = xp.sum(onehot * w[..., None], axis=1)
        return votes / xp.sum(votes, axis=1, keepdims=True)


def _warn_not_converged(max_iter: int) -> None:
    import warnings

    warnings.warn(
        f"SoftmaxClassifier reached max_iter={max_iter} epochs before the loss stopped improving; "
        "increase max_iter or learning_rate.",
        ConvergenceWarning,
        stacklevel=3,
    )
