"""JAX integration: softmax cross-entropy with a custom JVP rule built on softdist's analytic gradient.

The tangent rule is linear in the tangents (``sum(dloss/dlogits * dlogits)``), so ``jax.grad``,
``jax.jvp``, ``jax.jacfwd``, ``jax.jacrev``, ``jax.hessian``, ``jax.jit`` and ``jax.vmap`` all work:
reverse mode transposes the rule, higher orders differentiate the gradient formula itself.

    import softdist.jax
    loss = softdist.jax.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from . import softmax as _softmax

__all__ = ["softmax_cross_entropy"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _cross_entropy(
    logits: Any,
    labels: Any,
    sample_weight: Any,
    class_weight: Any,
    reduction: str,
    smoothing: float,
    ignore: Any,
) -> Any:
    return _softmax.softmax_cross_entropy(
        logits, labels, reduction=reduction, sample_weight=sample_weight, class_weight=class_weight,
        label_smoothing=smoothing, ignore_index=ignore,
    )  # fmt: skip


@_cross_entropy.defjvp
def _cross_entropy_jvp(
    reduction: str, smoothing: float, ignore: Any, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Any, Any]:
    logits, labels, sample_weight, class_weight = primals
    loss, grad = _softmax.softmax_cross_entropy_and_grad(
        logits, labels, reduction=reduction, sample_weight=sample_weight, class_weight=class_weight,
        label_smoothing=smoothing, ignore_index=ignore,
    )  # fmt: skip
    # Labels and weights are constants: only the logits' tangent enters (README, "Use with JAX").
    d_logits = tangents[0]
    if reduction == "none":
        return loss, jnp.sum(grad * d_logits, axis=-1)
    return loss, jnp.sum(grad * d_logits)


def softmax_cross_entropy(
    logits: Any,
    labels: Any,
    *,
    reduction: str = "mean",
    sample_weight: Any | None = None,
    class_weight: Any | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
) -> Any:
    """:func:`softdist.softmax_cross_entropy` on JAX arrays, differentiated by its analytic gradient.

    Differentiable in ``logits``; labels and weights are treated as constants (their tangents are
    ignored). Same options and conventions as :func:`softdist.softmax_cross_entropy`.
    """
    return _cross_entropy(
        logits, labels, sample_weight, class_weight, reduction, float(label_smoothing), ignore_index
    )
