"""Softmax cross-entropy and its analytic gradient, written once against the array API standard.

Every loss is expressed through per-row coefficients computed once per call (O(N) work), so that one
kernel serves integer labels, soft targets, class and sample weights, label smoothing, ignored rows and
every reduction:

    loss_i = gamma_i * lse_i - linear_i            dloss_i/dz_i = gamma_i * softmax(z_i) - target_i

index labels:  linear_i = alpha_i * z_iy + beta_i * (z_i . cw),   target_i = alpha_i * e_y + beta_i * cw
soft targets:  linear_i = alpha_i * (z_i . q_i),                  target_i = alpha_i * q_i
with gamma_i the total target mass of row i. The mean reduction's 1/denominator is folded into the
coefficients, so the kernel's gradient is already scaled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .._lib._compat import default_dtype, device
from .._lib._scalars import compare

Scatter = Callable[..., Any]


@dataclass(frozen=True)
class RowTerms:
    """Per-row coefficients of the loss for a block of rows (see the module docstring)."""

    alpha: Any  # (n,) weight of the target logit (index) or of the soft target row
    gamma: Any  # (n,) total target mass: the coefficient of log-sum-exp and of softmax in the gradient
    labels: Any | None = None  # (n,) class indices, clipped into [0, C) so gathers are always safe
    beta: Any | None = None  # (n,) label-smoothing weight (index labels with label_smoothing > 0)
    soft: Any | None = None  # (n, C) class-weighted, smoothed soft targets
    zero_rows: Any | None = None  # (n,) rows forced to an exact 0 loss and gradient (ignore_index)
    class_weight: Any | None = None  # (C,), shared by every block
    weight: Any | None = None  # (n,) the row's weight, normaliser folded in (sw * cw[label]; z_loss's)

    def rows(self, start: int, stop: int) -> RowTerms:
        return self._map(lambda a: a[start:stop, ...])

    def take(self, rows: Any, xp: Any) -> RowTerms:
        return self._map(lambda a: xp.take(a, rows, axis=0))

    def _map(self, f: Callable[[Any], Any]) -> RowTerms:
        fields = ("alpha", "gamma", "labels", "beta", "soft", "zero_rows", "weight")
        return replace(self, **{k: f(getattr(self, k)) for k in fields if getattr(self, k) is not None})


# -- building the coefficients ---------------------------------------------------------------------------
def _mean_scale(effective_weights: Any, *, xp: Any) -> Any:
    return _scale_of_total(xp.sum(effective_weights), xp=xp)


def _scale_of_total(total: Any, *, xp: Any) -> Any:
    # 1/sum of weights, and 0 (not inf or NaN) when nothing counts: an all-ignored batch has loss 0.
    return xp.where(total != 0, 1.0 / xp.where(total != 0, total, 1.0), 0.0)


def _index_weights(
    labels: Any, *, n_classes: int, dtype: Any, sample_weight: Any | None, class_weight: Any | None,
    ignore_index: int | None, checked: bool, xp: Any,
) -> tuple[Any, ...]:  # fmt: skip
    """(safe labels, valid, counted, ignored, row weight, class weight of the label) for index labels;
    valid/counted/ignored are None where every row is (or none is) so."""
    index_dtype = default_dtype(xp, "integral", device=device(labels))
    # compare(): ignore_index and n_classes may not fit the labels' dtype (uint8 labels, ignore_index -100)
    ignored = None if ignore_index is None else compare(labels, "==", ignore_index, xp=xp)
    if checked and ignored is None:  # every label is a class index: no masks needed
        valid = counted = None
        safe = xp.astype(labels, index_dtype, copy=False)
    else:
        valid = (labels >= 0) & compare(labels, "<", n_classes, xp=xp)
        if xp.isdtype(labels.dtype, "real floating"):
            valid = valid & (labels == xp.floor(labels))
        if ignored is not None:
            valid = valid | ignored
        counted = valid if ignored is None else valid & ~ignored
        safe = xp.astype(xp.where(counted, labels, 0), index_dtype)
    weight = (
        xp.ones(labels.shape, dtype=dtype, device=device(labels)) if sample_weight is None else sample_weight
    )
    cw_y = None
    if class_weight is not None:
        cw_y = xp.take(class_weight, safe, axis=0)
        weight = weight * cw_y
    return safe, valid, counted, ignored, weight, cw_y


def counts_every_row(sample_weight: Any | None, class_weight: Any | None, ignore_index: int | None) -> bool:
    """Whether the mean's denominator is the row count: no weights and no ignore_index (a row whose label
    is not a class, NaN, counts too)."""
    return sample_weight is None and class_weight is None and ignore_index is None


def index_weight_total(
    labels: Any, *, n_classes: int, dtype: Any, sample_weight: Any | None, class_weight: Any | None,
    ignore_index: int | None, checked: bool, xp: Any,
) -> Any:  # fmt: skip
    """0-D: the total effective weight of the counted rows, the mean's denominator. Summed over the
    blocks of a larger problem, it is the ``total`` that :func:`index_row_terms` takes."""
    _, _, counted, _, weight, _ = _index_weights(
        labels, n_classes=n_classes, dtype=dtype, sample_weight=sample_weight, class_weight=class_weight,
        ignore_index=ignore_index, checked=checked, xp=xp,
    )  # fmt: skip
    return xp.sum(weight if counted is None else xp.where(counted, weight, 0.0))


def soft_weight_total(targets: Any, *, dtype: Any, sample_weight: Any | None, xp: Any) -> Any:
    """0-D: the soft-target mean's denominator, N or the sum of the sample weights."""
    if sample_weight is None:
        return xp.asarray(targets.shape[0], dtype=dtype, device=device(targets))
    return xp.sum(sample_weight)


def index_row_terms(
    labels: Any,
    *,
    n_classes: int,
    dtype: Any,
    sample_weight: Any | None,
    class_weight: Any | None,
    label_smoothing: float,
    ignore_index: int | None,
    reduction: str,
    checked: bool,
    xp: Any,
    total: Any | None = None,
) -> RowTerms:
    """Coefficients for integer class labels (any integer or integral-valued floating dtype).

    Labels that are not class indices (negative, >= C, non-integral, NaN) make their rows NaN; the eager
    public functions raise before getting here (``checked``), so this happens under jax.jit and Dask.
    ``total``: the mean's denominator when these rows are one block of a larger problem (Dask: the sum
    of :func:`index_weight_total` over the blocks); None, from these rows.
    """
    safe, valid, counted, ignored, weight, cw_y = _index_weights(
        labels, n_classes=n_classes, dtype=dtype, sample_weight=sample_weight, class_weight=class_weight,
        ignore_index=ignore_index, checked=checked, xp=xp,
    )  # fmt: skip
    a = sample_weight
    if a is None:
        a = weight if cw_y is None else xp.ones(labels.shape, dtype=dtype, device=device(labels))
    if reduction == "mean":
        n = labels.shape[0]
        every_row = counts_every_row(sample_weight, class_weight, ignore_index)
        if total is None and every_row and isinstance(n, int):
            # Every row counts once, a row whose label is not a class (NaN) too, on every backend: the
            # row count, exact, with no pass over the labels (Dask's row blocks need no extra tasks).
            total = xp.asarray(n, dtype=dtype, device=device(labels))
        elif total is None:
            total = xp.sum(weight if counted is None else xp.where(counted, weight, 0.0))
        a = a * _scale_of_total(total, xp=xp)
    if counted is not None:
        a = xp.where(counted, a, 0.0)
        a = xp.where(valid, a, xp.nan)  # invalid labels: NaN rows, never a wrap-around to another class

    alpha = a * (1.0 - label_smoothing)
    if cw_y is not None:
        alpha = alpha * cw_y
    beta = None
    gamma = alpha
    if label_smoothing > 0:
        beta = a * (label_smoothing / n_classes)
        mass = float(n_classes) if class_weight is None else xp.sum(class_weight)
        gamma = alpha + beta * mass
    return RowTerms(
        alpha=alpha, gamma=gamma, labels=safe, beta=beta, zero_rows=ignored, class_weight=class_weight,
        weight=a if cw_y is None else a * cw_y,
    )  # fmt: skip


def soft_row_terms(
    targets: Any,
    *,
    dtype: Any,
    sample_weight: Any | None,
    class_weight: Any | None,
    label_smoothing: float,
    reduction: str,
    xp: Any,
    total: Any | None = None,
) -> RowTerms:
    """Coefficients for soft targets (N, C); the mean divides by N (or the sum of sample weights), or
    by ``total`` when these rows are one block of a larger problem (:func:`soft_weight_total`)."""
    n, n_classes = targets.shape
    q = xp.astype(targets, dtype)
    if label_smoothing > 0:
        q = q * (1.0 - label_smoothing) + label_smoothing / n_classes
    if class_weight is not None:
        q = q * class_weight
    alpha = xp.ones(n, dtype=dtype, device=device(q)) if sample_weight is None else sample_weight
    if reduction == "mean":
        alpha = alpha * (_mean_scale(alpha, xp=xp) if total is None else _scale_of_total(total, xp=xp))
    return RowTerms(
        alpha=alpha, gamma=alpha * xp.sum(q, axis=1), soft=q, class_weight=class_weight, weight=alpha
    )


def soft_target_grad(
    z: Any,
    *,
    axis: int,
    sample_weight: Any | None,
    class_weight: Any | None,
    label_smoothing: float,
    reduction: str,
    xp: Any,
) -> Any:
    """d loss / d targets for soft targets of z's shape: ``-log_softmax(z)`` times the weight each target
    entry carries in the loss, ``(1 - label_smoothing) * sample_weight * class_weight`` (divided by the
    mean's denominator). Computed in z's own layout (``sample_weight`` has z's shape without ``axis``)."""
    m = xp.max(z, axis=axis, keepdims=True)
    d = z - xp.where(m == -xp.inf, 0.0, m)
    log_p = d - xp.log(xp.sum(xp.exp(d), axis=axis, keepdims=True))
    batch = tuple(s for i, s in enumerate(z.shape) if i != axis)
    if sample_weight is not None or reduction == "mean":
        a = xp.ones(batch, dtype=z.dtype, device=device(z)) if sample_weight is None else sample_weight
        if reduction == "mean":
            a = a * _mean_scale(a, xp=xp)
        log_p = log_p * xp.expand_dims(a, axis=axis)
    if class_weight is not None:
        log_p = log_p * xp.reshape(class_weight, tuple(-1 if i == axis else 1 for i in range(z.ndim)))
    return log_p * -(1.0 - label_smoothing)


# -- the kernel ------------------------------------------------------------------------------------------
def gather_labels(z: Any, labels: Any, *, xp: Any) -> Any:
    """z[i, labels[i]] for every row."""
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(z, labels[:, None], axis=1)[:, 0]
    # Dask has no take_along_axis: select with a one-hot mask (an extra pass, lazily chunked).
    return xp.sum(xp.where(_onehot_mask(labels, z, xp=xp), z, 0.0), axis=1)


def _onehot_mask(labels: Any, like: Any, *, xp: Any) -> Any:
    classes = xp.arange(like.shape[1], dtype=labels.dtype, device=device(like))
    return labels[:, None] == classes[None, :]


def subtract_onehot(G: Any, labels: Any, values: Any, *, xp: Any) -> Any:
    """G - values[i] at (i, labels[i]), standard-only (a mask over G; backends with scatter do better)."""
    return xp.where(_onehot_mask(labels, G, xp=xp), G - values[:, None], G)


def times(coefficient: Any, x: Any, *, xp: Any) -> Any:
    """coefficient * x, where a zero coefficient (ignored row) contributes 0 even where x is not finite
    (a -inf masked target, an inf log-sum-exp)."""
    return coefficient * xp.where(coefficient == 0, 0.0, x)


def block_loss_and_grad(
    z: Any,
    terms: RowTerms,
    *,
    want_grad: bool,
    xp: Any,
    scatter: Scatter | None = None,
    recompute: Callable[[Any], Any] | None = None,
) -> tuple[Any, Any | None]:
    """Per-row losses (n,) and, if wanted, the gradient (n, C) of their sum, for one block of scores.

    Shift by the row maximum: every exponent is <= 0, so nothing overflows; the shifted logits are reused
    for the loss so that offset logits keep their accuracy. Rows whose logits are all -inf give exactly 0.
    """
    m = xp.max(z, axis=1)
    dead = m == -xp.inf
    m = xp.where(dead, 0.0, m)
    d = z - m[:, None]
    e = xp.exp(d)
    s = xp.where(dead, 1.0, xp.sum(e, axis=1))
    if terms.soft is not None:
        # 0 * (-inf) is NaN: a class with zero target mass contributes nothing, even when masked.
        q = terms.soft
        linear = terms.alpha * xp.sum(xp.where(q != 0, q * d, 0.0), axis=1)
    else:
        linear = times(terms.alpha, gather_labels(d, terms.labels, xp=xp), xp=xp)
        if terms.beta is not None:
            cw = terms.class_weight
            linear = linear + times(terms.beta, xp.sum(d, axis=1) if cw is None else d @ cw, xp=xp)
    loss = xp.where(dead, 0.0, terms.gamma * xp.log(s) - linear)
    if terms.zero_rows is not None:
        loss = xp.where(terms.zero_rows, 0.0, loss)
    if not want_grad:
        return loss, None

    G = e * xp.where(dead, 0.0, terms.gamma / s)[:, None]
    alpha = xp.where(dead, 0.0, terms.alpha)
    if terms.soft is not None:
        G = G - alpha[:, None] * terms.soft
    else:
        G = (scatter or subtract_onehot)(G, terms.labels, alpha, xp=xp)
        if terms.beta is not None:
            beta = xp.where(dead, 0.0, terms.beta)[:, None]
            G = G - (beta if terms.class_weight is None else beta * terms.class_weight)
    if terms.zero_rows is not None:
        G = xp.where(terms.zero_rows[:, None], 0.0, G)
    return loss, G


Kernel = Callable[..., tuple[Any, Any | None]]


def column_sum(G: Any, *, xp: Any, block: int = 256) -> Any:
    """Sum over rows in blocks of ``block`` rows, then over the block sums: rounding error grows like
    (block + N / block) eps rather than N eps (NumPy sums down a column one row at a time: at N = 2000 the
    bias gradient lost 1.6e-5 in float32, 50x more than PyTorch's cascade sum)."""
    n, c = G.shape
    if n <= block:
        return xp.sum(G, axis=0)
    k = n // block
    partial = xp.sum(xp.reshape(G[: k * block, ...], (k, block, c)), axis=1)
    total = column_sum(partial, xp=xp, block=block)
    return total if k * block == n else total + xp.sum(G[k * block :, ...], axis=0)
