"""Independent NumPy references: explicit differences in extended precision, never the expansion trick."""

from __future__ import annotations

import numpy as np

# The accuracy pairwise_sqdist promises against the exact distance of the (rounded) inputs, by dtype name
# (README, "Accuracy of the distances"): stated here, not imported from the library's own constant.
SQDIST_RTOL = {"float32": 1e-4, "float64": 1e-10}


def _as_numpy_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.longdouble)


def reference_sqdist(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """Exact-as-possible squared distances: ``sum((A_i - B_j)**2)`` in long double, returned as float64.

    Parameters
    ----------
    A : numpy.ndarray, shape (n, d)
    B : numpy.ndarray, shape (m, d), optional
        ``None`` means A against itself.

    Returns
    -------
    numpy.ndarray, shape (n, m), float64
        Explicit differences, never the norm expansion, in bounded-memory row blocks.

    Examples
    --------
    >>> import numpy as np
    >>> from softdist.testing import reference_sqdist
    >>> reference_sqdist(np.array([[1e4, 0.0], [1e4 + 1, 0.0]], dtype=np.float32))
    array([[0., 1.],
           [1., 0.]])
    """
    A_ = _as_numpy_float(A)
    B_ = A_ if B is None else _as_numpy_float(B)
    out = np.empty((A_.shape[0], B_.shape[0]), dtype=np.float64)
    rows = max(1, (1 << 21) // max(1, B_.shape[0] * max(1, A_.shape[1])))
    for start in range(0, A_.shape[0], rows):
        diff = A_[start : start + rows, None, :] - B_[None, :, :]
        out[start : start + rows] = np.sum(diff * diff, axis=-1)
    return out


def reference_distances(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """``sqrt`` of :func:`reference_sqdist`: Euclidean distances, float64, shape (n, m)."""
    return np.sqrt(reference_sqdist(A, B))


def hard_datasets(
    rng: np.random.Generator, *, n: int, m: int, d: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Data sets on which the plain norm expansion loses accuracy, as float64 (A, B) pairs.

    Centred Gaussian data; a common offset of 1e3 and 1e5; raw pixel values 0-255; near-duplicates and
    exact duplicates at magnitude 1e4; tight clusters far apart from each other.

    Parameters
    ----------
    rng : numpy.random.Generator
    n, m, d : int
        Rows of A, rows of B, columns of both.

    Returns
    -------
    dict of str to (A, B)
        A of shape (n, d), B of shape (m, d), float64, keyed by the data set's name.

    Examples
    --------
    >>> import numpy as np
    >>> from softdist.testing import hard_datasets
    >>> sorted(hard_datasets(np.random.default_rng(0), n=4, m=3, d=2))
    ['centred', 'near-duplicates-1e4', 'offset-1e+03', 'offset-1e+05', 'pixels-0-255', 'tight-clusters']
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out["centred"] = (rng.standard_normal((n, d)), rng.standard_normal((m, d)))
    for offset in (1e3, 1e5):
        out[f"offset-{offset:.0e}"] = (
            rng.standard_normal((n, d)) + offset,
            rng.standard_normal((m, d)) + offset,
        )
    out["pixels-0-255"] = (
        rng.integers(0, 256, (n, d)).astype(np.float64),
        rng.integers(0, 256, (m, d)).astype(np.float64),
    )
    base = rng.standard_normal((n, d)) + 1e4
    near = base[rng.integers(0, n, m)] + 0.05 * rng.standard_normal((m, d))
    near[: m // 4] = base[: m // 4]  # exact duplicates too
    out["near-duplicates-1e4"] = (base, near)
    centres = 1e4 * rng.standard_normal((5, d))
    out["tight-clusters"] = (
        centres[rng.integers(0, 5, n)] + 0.1 * rng.standard_normal((n, d)),
        centres[rng.integers(0, 5, m)] + 0.1 * rng.standard_normal((m, d)),
    )
    return out


def reference_cross_entropy(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    reduction: str = "mean",
    sample_weight: np.ndarray | None = None,
    class_weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and gradient with respect to the logits, from the textbook definitions in long double.

    Targets are spelled out as a dense (N, C) matrix T (one-hot or soft, smoothed, class-weighted);
    row loss = -sum_c T_ic log p_ic, gradient = sum_c T_ic (p_i - e_c). PyTorch's reduction rules; an
    all-ignored batch gives 0. Rows whose logits are all -inf give 0.

    Parameters
    ----------
    logits : numpy.ndarray, shape (N, C)
    labels : numpy.ndarray, shape (N,) or (N, C)
        Class indices or soft targets.
    reduction, sample_weight, class_weight, label_smoothing, ignore_index
        As for :func:`softdist.softmax_cross_entropy`.

    Returns
    -------
    loss : numpy.float64 or numpy.ndarray, shape (N,)
    grad : numpy.ndarray, shape (N, C), float64

    Examples
    --------
    >>> import numpy as np
    >>> from softdist.testing import reference_cross_entropy
    >>> loss, grad = reference_cross_entropy(np.zeros((1, 2)), np.array([0]))
    >>> round(float(loss), 6), grad.tolist()
    (0.693147, [[-0.5, 0.5]])
    """
    z = np.asarray(logits, dtype=np.longdouble)
    n, c = z.shape
    m = np.max(z, axis=1, keepdims=True)
    m = np.where(np.isneginf(m), 0, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
    p = np.exp(logp)
    cw = np.ones(c) if class_weight is None else np.asarray(class_weight, dtype=np.longdouble)
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.longdouble)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        T = labels.astype(np.longdouble)
        counted = np.ones(n, dtype=bool)
        T = (1 - label_smoothing) * T + label_smoothing / c
        denominator = np.sum(sw)
    else:
        counted = np.ones(n, dtype=bool) if ignore_index is None else labels != ignore_index
        safe = np.where(counted, labels, 0).astype(np.int64)
        T = np.zeros((n, c), dtype=np.longdouble)
        T[np.arange(n), safe] = 1
        T = (1 - label_smoothing) * T + label_smoothing / c
        denominator = np.sum((sw * cw[safe])[counted])
    T = T * cw[None, :] * sw[:, None] * counted[:, None]
    with np.errstate(invalid="ignore"):
        row_loss = -np.sum(np.where(T != 0, T * logp, 0), axis=1)
    grad = np.sum(T, axis=1, keepdims=True) * p - T
    dead = np.all(np.isneginf(z), axis=1)
    row_loss[dead] = 0
    grad[dead] = 0
    if reduction == "none":
        return row_loss.astype(np.float64), grad.astype(np.float64)
    scale = 1.0 if reduction == "sum" else (1 / denominator if denominator != 0 else 0.0)
    return np.float64(np.sum(row_loss) * scale), (grad * scale).astype(np.float64)


def reference_softmax_loss(
    W: np.ndarray, X: np.ndarray, y: np.ndarray, *, reg: float = 0.0, b: np.ndarray | None = None, **options
) -> tuple[np.ndarray, ...]:
    """(loss, dW[, db]) of the linear model ``X @ W + b`` from :func:`reference_cross_entropy` and the
    chain rule, in long double, returned as float64; the arguments as for :func:`softdist.softmax_loss`."""
    W_, X_ = np.asarray(W, dtype=np.longdouble), np.asarray(X, dtype=np.longdouble)
    scores = X_ @ W_ + (0 if b is None else np.asarray(b, dtype=np.longdouble))
    loss, G = reference_cross_entropy(scores, y, **options)
    G = G.astype(np.longdouble)
    dW = X_.T @ G + 2 * reg * W_
    if options.get("reduction", "mean") != "none":
        loss = loss + reg * np.sum(W_ * W_)
    out = (np.asarray(loss, dtype=np.float64), dW.astype(np.float64))
    return out if b is None else (*out, np.sum(G, axis=0).astype(np.float64))
