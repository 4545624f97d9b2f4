"""PyTorch integration: softmax cross-entropy as an autograd Function whose backward is softdist's
analytic gradient (computed in the forward pass, one multiply in the backward), and an ``nn.Module``
mirroring ``nn.CrossEntropyLoss``.

    import softdist.torch
    loss_fn = softdist.torch.SoftmaxCrossEntropy(label_smoothing=0.1)
    loss_fn(model(x), y).backward()
"""

from __future__ import annotations

from typing import Any

import torch

from . import softmax as _softmax

__all__ = ["SoftmaxCrossEntropy", "softmax_cross_entropy"]


class _SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """loss = softmax_cross_entropy(logits, ...); dloss/dlogits comes from the forward pass.

    The forward returns the gradient as a second, non-differentiable output so that it can be saved
    (setup_context style, which torch.func transforms require). The backward scales it by the incoming
    gradient; when a graph of the backward is requested (double backward, hessians), it recomputes the
    gradient with differentiable operations from the saved logits.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: torch.Tensor,
        labels: torch.Tensor,
        sample_weight: torch.Tensor | None,
        class_weight: torch.Tensor | None,
        options: tuple[tuple[str, Any], ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _softmax.softmax_cross_entropy_and_grad(
            logits, labels, sample_weight=sample_weight, class_weight=class_weight, **dict(options)
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, labels, sample_weight, class_weight, options = inputs
        _, grad = output
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # else autograd fills an (N, C) zero gradient for `grad`
        ctx.save_for_backward(logits, labels, sample_weight, class_weight, grad)
        ctx.options = options

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _: Any) -> tuple[Any, ...]:
        logits, labels, sample_weight, class_weight, grad = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None
        options = dict(ctx.options)
        if torch.is_grad_enabled():  # create_graph=True: make the gradient itself differentiable
            grad = _softmax.softmax_cross_entropy_and_grad(
                logits, labels, sample_weight=sample_weight, class_weight=class_weight, **options
            )[1]
        scale = grad_loss[..., None] if options["reduction"] == "none" else grad_loss
        return grad * scale, None, None, None, None


def softmax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "mean",
    sample_weight: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """:func:`softdist.softmax_cross_entropy` on torch tensors, differentiable in ``logits`` through its
    analytic gradient (labels and weights are constants). Works with ``loss.backward()``, double
    backward, ``torch.func.grad``/``vmap`` and ``torch.compile`` (which runs it as one opaque call)."""
    options = (
        ("reduction", reduction), ("label_smoothing", float(label_smoothing)), ("ignore_index", ignore_index),
    )  # fmt: skip
    return _apply(logits, labels, sample_weight, class_weight, options)


# torch.compile: Dynamo would try to trace array-api-compat's dispatch and the eager fast path's
# data-dependent repair, breaking the graph several times with warnings. As one opaque call the graph
# breaks once, around the loss, and the result is the eager one.
@torch.compiler.disable
def _apply(*args: Any) -> torch.Tensor:
    return _SoftmaxCrossEntropyFunction.apply(*args)[0]


class SoftmaxCrossEntropy(torch.nn.Module):
    """Drop-in for ``nn.CrossEntropyLoss`` on (N, C) logits, backed by softdist's analytic gradient.

    Same arguments as ``nn.CrossEntropyLoss`` (``weight`` is a buffer: it follows ``.to(device)``), except
    that ``ignore_index`` defaults to None (no label ignored) rather than -100; ``forward`` also takes
    per-row ``sample_weight``. See the README's table of differences from PyTorch.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return softmax_cross_entropy(
            input, target, reduction=self.reduction, sample_weight=sample_weight, class_weight=self.weight,
            label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
        )
