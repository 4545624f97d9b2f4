"""JAX integration: softmax cross-entropy with a custom JVP rule built on softdist's analytic gradient.

The tangent rule is linear in the tangents (``sum(dloss/dlogits * dlogits)``), so ``jax.grad``,
``jax.jvp``, ``jax.jacfwd``, ``jax.jacrev``, ``jax.hessian``, ``jax.jit`` and ``jax.vmap`` all work:
reverse mode transposes the rule, higher orders differentiate the gradient formula itself. The fused
linear head (:func:`linear_cross_entropy`) has such a rule too. Importing it imports JAX::

    import softdist.jax
    loss = softdist.jax.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from . import linear as _linear
from . import softmax as _softmax

__all__ = ["linear_cross_entropy", "softmax_cross_entropy"]


def _as_jax(like: Any, **arrays: Any) -> list[Any]:
    """The arrays as JAX arrays: NumPy arrays and scalars and Python numbers/lists (labels and weights that
    JAX code routinely closes over, and that JAX's own functions accept) become JAX arrays on ``like``'s
    device; any other library's array is a TypeError naming the argument (no silent host/device copy)."""
    out = []
    devices = None if isinstance(like, jax.core.Tracer) or not isinstance(like, jax.Array) else like.devices()
    for name, a in arrays.items():
        if a is not None and not isinstance(a, jax.Array):
            host = type(a).__module__.split(".")[0] == "numpy" or isinstance(
                a, (bool, int, float, list, tuple)
            )
            if not host:
                raise TypeError(
                    f"{name} must be a JAX array, a NumPy array or a Python number/list for softdist.jax; "
                    f"got {type(a).__module__}.{type(a).__qualname__}"
                )
            a = jnp.asarray(a)
            if devices is not None and len(devices) == 1:  # on the float input's device
                a = jax.device_put(a, next(iter(devices)))
        out.append(a)
    return out


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6, 7))
def _cross_entropy(
    logits: Any,
    labels: Any,
    sample_weight: Any,
    class_weight: Any,
    reduction: str,
    smoothing: float,
    ignore: Any,
    axis: int,
) -> Any:
    return _softmax.softmax_cross_entropy(
        logits, labels, reduction=reduction, sample_weight=sample_weight, class_weight=class_weight,
        label_smoothing=smoothing, ignore_index=ignore, axis=axis,
    )  # fmt: skip


def _cross_entropy_jvp(
    reduction: str,
    smoothing: float,
    ignore: Any,
    axis: int,
    primals: tuple[Any, ...],
    tangents: tuple[Any, ...],
) -> tuple[Any, Any]:
    logits, labels, sample_weight, class_weight = primals
    d_logits, d_labels = tangents[:2]
    options = {"reduction": reduction, "sample_weight": sample_weight, "class_weight": class_weight,
               "label_smoothing": smoothing, "axis": axis}  # fmt: skip
    loss, grad = _softmax.softmax_cross_entropy_and_grad(logits, labels, ignore_index=ignore, **options)
    # Symbolic zeros skip the unperturbed inputs (the weights, below, cost a forward pass only if perturbed).
    dims = axis if reduction == "none" else None
    tangent = jnp.zeros_like(loss)
    if not isinstance(d_logits, SymbolicZero):
        tangent = tangent + jnp.sum(grad * d_logits, axis=dims)
    soft = labels.shape == logits.shape and jnp.issubdtype(labels.dtype, jnp.floating)
    if soft and not isinstance(d_labels, SymbolicZero):  # d loss / d targets = -log_softmax, scaled
        tangent = tangent + jnp.sum(
            _softmax.soft_target_grad(logits, labels, **options) * d_labels, axis=dims
        )
    tangent = tangent + _weight_tangent(
        lambda sw, cw: _softmax.softmax_cross_entropy(
            logits, labels, reduction=reduction, sample_weight=sw, class_weight=cw, label_smoothing=smoothing,
            ignore_index=ignore, axis=axis,
        ),
        (sample_weight, class_weight), tangents[2:4],
    )  # fmt: skip
    return loss, tangent


def _weight_tangent(loss: Any, weights: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
    """The loss's tangent from the tangents of the weights (and of the linear head's soft targets): they
    enter through the weighted sum and the "mean" normaliser, not the analytic logit gradient, so the
    generic loss (plain jnp operations) is differentiated in them alone — only for the perturbed ones."""
    which = [i for i, (w, t) in enumerate(zip(weights, tangents, strict=True))
             if w is not None and t is not None and not isinstance(t, SymbolicZero)
             and jnp.issubdtype(jnp.result_type(w), jnp.inexact)]  # fmt: skip
    if not which:
        return 0.0

    def in_perturbed(*perturbed: Any) -> Any:
        full = list(weights)
        for i, w in zip(which, perturbed, strict=True):
            full[i] = w
        return loss(*full)

    return jax.jvp(in_perturbed, tuple(weights[i] for i in which), tuple(tangents[i] for i in which))[1]


_cross_entropy.defjvp(_cross_entropy_jvp, symbolic_zeros=True)


def softmax_cross_entropy(
    logits: Any,
    labels: Any,
    *,
    reduction: str = "mean",
    sample_weight: Any | None = None,
    class_weight: Any | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    axis: int = -1,
) -> Any:
    """:func:`softdist.softmax_cross_entropy` on JAX arrays, differentiated by its analytic gradient.

    Differentiable in ``logits`` and in soft targets (floating ``labels`` of the logits' shape, whose
    gradient is ``-log_softmax(logits)`` scaled as the loss), and in ``sample_weight`` and
    ``class_weight`` (the generic loss differentiated in them, only when they are perturbed). Any batch
    shape, the classes on ``axis`` (-1, as in optax). Same options and conventions
    as :func:`softdist.softmax_cross_entropy`. NumPy arrays and Python numbers/lists (labels, weights)
    become JAX arrays on the logits' device, eagerly and under ``jax.jit``; other libraries' arrays are a
    TypeError naming the argument.

    Parameters
    ----------
    logits : jax.Array, any shape with the classes along ``axis``
    labels : jax.Array
        Integer class indices of the batch shape (the logits' shape without ``axis``), or floating soft
        targets of the logits' shape.
    reduction, sample_weight, class_weight, label_smoothing, ignore_index, axis
        As for :func:`softdist.softmax_cross_entropy`.

    Returns
    -------
    jax.Array
        0-D for "mean"/"sum", the batch shape for "none".

    Raises
    ------
    ValueError, TypeError
        As :func:`softdist.softmax_cross_entropy` raises them (under ``jax.jit``, invalid label values
        give NaN rows instead of a ValueError).

    See Also
    --------
    softdist.softmax_cross_entropy : the options, the numerics and the references.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np, softdist.jax
    >>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> labels = jnp.array([0, 1])
    >>> round(float(softdist.jax.softmax_cross_entropy(logits, labels)), 4)
    0.3185
    >>> print(np.asarray(jax.grad(softdist.jax.softmax_cross_entropy)(logits, labels)).round(4))
    [[-0.1705  0.1212  0.0493]
     [ 0.0543 -0.0988  0.0445]]
    >>> jax.jit(jax.hessian(softdist.jax.softmax_cross_entropy))(logits, labels).shape
    (2, 3, 2, 3)
    """
    (logits,) = _as_jax(None, logits=logits)
    labels, sample_weight, class_weight = _as_jax(
        logits, labels=labels, sample_weight=sample_weight, class_weight=class_weight
    )
    return _cross_entropy(
        logits, labels, sample_weight, class_weight, reduction, float(label_smoothing), ignore_index, axis
    )


# -- the fused linear head --------------------------------------------------------------------------------
@functools.partial(jax.custom_jvp, nondiff_argnums=(6,))
def _linear_head(X: Any, W: Any, labels: Any, bias: Any, sample_weight: Any, class_weight: Any,
                 options: tuple[tuple[str, Any], ...]) -> Any:  # fmt: skip
    return _linear.linear_cross_entropy(
        X, W, labels, bias=bias, sample_weight=sample_weight, class_weight=class_weight, **dict(options)
    )


def _linear_head_jvp(
    options: tuple[tuple[str, Any], ...], primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Any, Any]:
    X, W, labels, bias, sample_weight, class_weight = primals
    tX, tW, t_labels, tb, t_sw, t_cw = tangents
    opts = dict(options)

    def plain(X: Any, W: Any, labels: Any, bias: Any, sample_weight: Any, class_weight: Any) -> Any:
        return _linear.linear_cross_entropy(
            X, W, labels, bias=bias, sample_weight=sample_weight, class_weight=class_weight, **opts
        )

    # Soft targets and weights: the chunked loss differentiated in them alone, only when perturbed.
    rest = _weight_tangent(
        lambda labels, sw, cw: plain(X, W, labels, bias, sw, cw),
        (labels, sample_weight, class_weight), (t_labels, t_sw, t_cw),
    )  # fmt: skip
    perturbed = [(p, t) for p, t in ((X, tX), (W, tW), (bias, tb))
                 if p is not None and not isinstance(t, SymbolicZero)]  # fmt: skip
    if not perturbed:
        loss = plain(X, W, labels, bias, sample_weight, class_weight)
        return loss, jnp.zeros_like(loss) + rest
    if opts["reduction"] == "none":
        # Per-row tangents need each row's logit gradient: differentiate the chunked code itself.
        def in_head(X: Any, W: Any, bias: Any) -> Any:
            return plain(X, W, labels, bias, sample_weight, class_weight)

        zero = [jnp.zeros_like(p) if isinstance(t, SymbolicZero) and p is not None else t
                for p, t in ((X, tX), (W, tW), (bias, tb))]  # fmt: skip
        loss, tangent = jax.jvp(in_head, (X, W, bias), tuple(zero))
        return loss, tangent + rest
    out = _linear.linear_cross_entropy_and_grad(
        X, W, labels, bias=bias, sample_weight=sample_weight, class_weight=class_weight, **opts
    )
    # Linear in the tangents: reverse mode transposes it, keeping only dX, dW (and dbias) as residuals.
    grads = (out[1], out[2], out[3] if bias is not None else None)
    tangent = rest
    for p, t, g in zip((X, W, bias), (tX, tW, tb), grads, strict=True):
        if p is not None and not isinstance(t, SymbolicZero):
            tangent = tangent + jnp.vdot(g, t)
    return out[0], tangent


_linear_head.defjvp(_linear_head_jvp, symbolic_zeros=True)


def linear_cross_entropy(
    X: Any,
    W: Any,
    labels: Any,
    *,
    bias: Any | None = None,
    reduction: str = "mean",
    sample_weight: Any | None = None,
    class_weight: Any | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | str = "auto",
) -> Any:
    """:func:`softdist.linear_cross_entropy` on JAX arrays, differentiable in X, W and bias through a
    ``jax.custom_jvp`` rule built on the chunked gradients: ``grad``, ``jit``, ``vmap``, ``jvp``,
    ``jacfwd`` and Hessian-vector products work, and reverse mode keeps only dX, dW and dbias as
    residuals (no (N, C) array). Soft targets and weights are differentiated through the chunked loss,
    only when perturbed; class-index labels are constants. ``reduction="none"`` differentiates the
    chunked computation itself (its reverse mode stores each chunk's intermediates). NumPy arguments
    become JAX arrays, as for :func:`softmax_cross_entropy`.

    Parameters
    ----------
    X : jax.Array, shape (N, D)
    W : jax.Array, shape (C, D)
    labels : jax.Array, shape (N,) or (N, C)
    bias, reduction, sample_weight, class_weight, label_smoothing, ignore_index, z_loss, softcap, chunk_size
        As for :func:`softdist.linear_cross_entropy`.

    Returns
    -------
    jax.Array
        0-D, or (N,) for ``reduction="none"``.

    Raises
    ------
    ValueError, TypeError
        As :func:`softdist.linear_cross_entropy` raises them.

    See Also
    --------
    softdist.linear_cross_entropy_and_grad : the algorithm and its references.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, softdist.jax
    >>> X, W = jnp.ones((8, 4)), jnp.zeros((10, 4))
    >>> labels = jnp.arange(8)
    >>> dX, dW = jax.grad(softdist.jax.linear_cross_entropy, argnums=(0, 1))(X, W, labels)
    >>> dW.shape
    (10, 4)
    """
    options = (
        ("reduction", reduction), ("label_smoothing", float(label_smoothing)), ("ignore_index", ignore_index),
        ("z_loss", float(z_loss)), ("softcap", None if softcap is None else float(softcap)),
        ("chunk_size", chunk_size),
    )  # fmt: skip
    X, W = _as_jax(None, X=X, W=W)
    labels, bias, sample_weight, class_weight = _as_jax(
        X, labels=labels, bias=bias, sample_weight=sample_weight, class_weight=class_weight
    )
    return _linear_head(X, W, labels, bias, sample_weight, class_weight, options)
