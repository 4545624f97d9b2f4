"""`softdist demo`: the same code on every installed backend, on scikit-learn's bundled digits.

Trains the softmax classifier (full-batch gradient descent on ``softmax_loss``) and runs a 5-nearest-
neighbour vote (``knn``) on each backend and device, and compares everything with the NumPy run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from . import knn, softmax_loss
from ._harness import BACKENDS, Backend, finish

# How far a backend may be from the NumPy run (normwise relative) before the demo fails.
DEMO_RTOL = {"float32": 1e-3, "float64": 1e-9}


@dataclass
class Result:
    backend: str
    device: str
    dtype: str
    softmax_accuracy: float
    knn_accuracy: float
    fit_seconds: float
    predict_seconds: float
    W: np.ndarray
    knn_index: np.ndarray
    knn_sqdist: np.ndarray
    max_diff: float = 0.0


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised digits (8x8 images), a fixed 75/25 split."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    cut = len(y) * 3 // 4
    train, test = order[:cut], order[cut:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    std[std == 0] = 1.0
    X = (X - mean) / std
    return X[train], y[train], X[test], y[test]


def run_backend(backend: Backend, dtype: str, data: tuple, steps: int) -> Result:
    X_train, y_train, X_test, y_test = data
    Xtr, ytr, Xte = backend.asarray(X_train, dtype), backend.asarray(y_train), backend.asarray(X_test, dtype)
    n_classes = int(y_train.max()) + 1
    W = backend.asarray(np.zeros((X_train.shape[1], n_classes)), dtype)
    b = backend.asarray(np.zeros(n_classes), dtype)

    def step(W, b, X, y):
        _, dW, db = softmax_loss(W, X, y, reg=1e-3, b=b)
        return W - 0.5 * dW, b - 0.5 * db

    if backend.jit:
        import jax

        step = jax.jit(step)
    start = time.perf_counter()
    for _ in range(steps):
        W, b = step(W, b, Xtr, ytr)
        if backend.lazy:  # keep Dask's graph one step deep
            import dask

            W, b = dask.persist(W, b)
    W_np = backend.to_numpy(W).astype(np.float64)
    fit = time.perf_counter() - start

    start = time.perf_counter()
    scores = backend.to_numpy(Xte @ W + b)
    sqdist, index = backend.call(knn, Xte, Xtr, k=5)
    sqdist, index = backend.to_numpy(sqdist).astype(np.float64), backend.to_numpy(index)
    predict = time.perf_counter() - start
    votes = np.apply_along_axis(lambda r: np.bincount(r, minlength=n_classes), 1, y_train[index])
    return Result(
        backend.name, backend.device_kind, dtype,
        softmax_accuracy=float(np.mean(scores.argmax(axis=1) == y_test)),
        knn_accuracy=float(np.mean(votes.argmax(axis=1) == y_test)),
        fit_seconds=fit, predict_seconds=predict, W=W_np, knn_index=index, knn_sqdist=sqdist,
    )  # fmt: skip


def _difference(result: Result, reference: Result) -> float:
    """Largest normwise relative difference from the NumPy run (weights, kNN distances); inf if the kNN
    indices differ."""
    if not np.array_equal(result.knn_index, reference.knn_index):
        return float("inf")
    w = np.max(np.abs(result.W - reference.W)) / np.max(np.abs(reference.W))
    d = np.max(np.abs(result.knn_sqdist - reference.knn_sqdist)) / np.max(np.abs(reference.knn_sqdist))
    return float(max(w, d))


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<28}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def demo(runnable: list[Backend], skipped: list[str], dtypes: list[str], quick: bool) -> int:
    try:
        data = digits_split()
    except ImportError:
        print(
            "softdist demo needs scikit-learn (for the bundled digits): pip install scikit-learn",
            file=sys.stderr,
        )
        return 2
    steps = 30 if quick else 100  # Dask pays ~0.1 s of graph overhead per step: the demo stays < 60 s
    jobs = [(b, dt) for b in runnable for dt in dtypes]
    numpy = next(b for b in BACKENDS if b.name == "numpy")
    references = {dt: run_backend(numpy, dt, data, steps) for dt in dtypes}
    results = []
    for i, (b, dt) in enumerate(jobs):
        _progress(i, len(jobs), f"{b.name} {dt}")
        result = references[dt] if b.name == "numpy" else run_backend(b, dt, data, steps)
        result.max_diff = _difference(result, references[dt])
        results.append(result)
    _progress(len(jobs), len(jobs), "done")

    print(f"digits: {len(data[1])} training and {len(data[3])} test images, 64 features, 10 classes; "
          f"softmax: {steps} gradient steps on softmax_loss; kNN: 5 neighbours via knn")  # fmt: skip
    header = (f"{'backend':<16} {'device':<8} {'dtype':<8} {'softmax acc':>11} {'kNN acc':>8} "
              f"{'fit s':>7} {'predict s':>9} {'max diff vs NumPy':>18}")  # fmt: skip
    print(header)
    failures = []
    for r in results:
        ok = r.max_diff <= DEMO_RTOL[r.dtype]
        if not ok:
            failures.append(f"{r.backend} {r.dtype}")
        flag = "" if ok else "  DISAGREES"
        timing = f"{r.fit_seconds:>7.2f} {r.predict_seconds:>9.3f}"
        print(f"{r.backend:<16} {r.device:<8} {r.dtype:<8} {r.softmax_accuracy:>11.3f} "
              f"{r.knn_accuracy:>8.3f} {timing} {r.max_diff:>18.1e}{flag}")  # fmt: skip
    disagree = (
        f"these backends disagree with NumPy beyond tolerance: {', '.join(failures)}" if failures else ""
    )
    return finish(skipped, disagree)
