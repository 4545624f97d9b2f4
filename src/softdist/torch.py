"""PyTorch integration: softmax cross-entropy as an autograd Function whose backward is softdist's
analytic gradient (computed in the forward pass, one multiply in the backward), and an ``nn.Module``
mirroring ``nn.CrossEntropyLoss``; the fused linear head (:func:`linear_cross_entropy`,
:class:`LinearCrossEntropy`) the same way. Importing it imports torch::

    import softdist.torch
    loss_fn = softdist.torch.SoftmaxCrossEntropy(label_smoothing=0.1)
    loss_fn(model(x), y).backward()
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import linear as _linear
from . import softmax as _softmax
from ._backends._torch import is_torch_transformed

__all__ = ["LinearCrossEntropy", "SoftmaxCrossEntropy", "linear_cross_entropy", "softmax_cross_entropy"]


@dataclasses.dataclass(frozen=True)
class _Options:
    """The static options of one call, as ONE object: torch.func's generated vmap rule flattens a tuple
    argument into leaves and then fails to match the tangents to them (jacfwd(jacfwd(...)))."""

    reduction: str
    label_smoothing: float
    ignore_index: int | None
    axis: int


@dataclasses.dataclass(frozen=True)
class _LinearOptions:
    """The linear head's static options as ONE object (see _Options for why not a tuple)."""

    reduction: str
    label_smoothing: Any
    ignore_index: int | None
    z_loss: Any
    softcap: Any
    chunk_size: Any


def _is_soft(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    return labels.shape == logits.shape and labels.is_floating_point()


def _target_grad(logits: Any, labels: Any, sample_weight: Any, class_weight: Any, options: _Options) -> Any:
    return _softmax.soft_target_grad(
        logits, labels, sample_weight=sample_weight, class_weight=class_weight, reduction=options.reduction,
        label_smoothing=options.label_smoothing, axis=options.axis,
    )  # fmt: skip


class _SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """loss = softmax_cross_entropy(logits, ...); dloss/dlogits comes from the forward pass.

    The forward returns the gradient as a second, non-differentiable output so that it can be saved
    (setup_context style, which torch.func transforms require). The backward scales it by the incoming
    gradient; when a graph of the backward is requested (double backward, hessians), it recomputes the
    gradient with differentiable operations from the saved logits. Soft targets get the gradient
    -log_softmax(logits) scaled as the loss is; ``jvp`` contracts the same two gradients with the
    tangents (forward mode). Learnt weights (``sample_weight``, ``class_weight``) get the gradient of the
    generic loss in them alone (one more forward pass, only when they require grad).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: torch.Tensor,
        labels: torch.Tensor,
        sample_weight: torch.Tensor | None,
        class_weight: torch.Tensor | None,
        options: _Options,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _softmax.softmax_cross_entropy_and_grad(
            logits,
            labels,
            sample_weight=sample_weight,
            class_weight=class_weight,
            **dataclasses.asdict(options),
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, labels, sample_weight, class_weight, options = inputs
        _, grad = output
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # else autograd fills an (N, C) zero gradient for `grad`
        ctx.save_for_backward(logits, labels, sample_weight, class_weight, grad)
        ctx.save_for_forward(logits, labels, sample_weight, class_weight, grad)
        ctx.options = options

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _: Any) -> tuple[Any, ...]:
        logits, labels, sample_weight, class_weight, grad = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None
        options = ctx.options
        weights = {"sample_weight": sample_weight, "class_weight": class_weight}
        scale = grad_loss.unsqueeze(options.axis) if options.reduction == "none" else grad_loss
        d_logits = d_labels = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph=True: make the gradient itself differentiable
                grad = _softmax.softmax_cross_entropy_and_grad(
                    logits, labels, **weights, **dataclasses.asdict(options)
                )[1]
            d_logits = grad * scale
        if ctx.needs_input_grad[1] and _is_soft(logits, labels):
            d_labels = _target_grad(logits, labels, sample_weight, class_weight, options) * scale
        d_sw = d_cw = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            d_sw, d_cw = _weight_vjp(ctx.needs_input_grad[2:4], logits, labels, sample_weight, class_weight,
                                     options, grad_loss)  # fmt: skip
        return d_logits, d_labels, d_sw, d_cw, None

    @staticmethod
    def jvp(ctx: Any, d_logits: Any, d_labels: Any, *_rest: Any) -> tuple[Any, None]:
        logits, labels, sample_weight, class_weight, grad = ctx.saved_tensors
        options = ctx.options
        dims = options.axis if options.reduction == "none" else None
        if d_logits is not None:  # recomputed differentiably, for an outer reverse mode (jacrev(jacfwd))
            weights = {"sample_weight": sample_weight, "class_weight": class_weight}
            grad = _softmax.softmax_cross_entropy_and_grad(
                logits, labels, **weights, **dataclasses.asdict(options)
            )[1]

        def contract(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a * b).sum() if dims is None else (a * b).sum(dim=dims)

        tangent = None
        if d_logits is not None:
            tangent = contract(grad, d_logits)
        if d_labels is not None and _is_soft(logits, labels):
            t = contract(_target_grad(logits, labels, sample_weight, class_weight, options), d_labels)
            tangent = t if tangent is None else tangent + t
        d_weights = _rest[:2] if len(_rest) >= 2 else (None, None)
        if any(d is not None for d in d_weights):  # learnt weights: the generic loss's own derivative
            t = _weight_jvp(logits, labels, sample_weight, class_weight, options, d_weights)
            tangent = t if tangent is None else tangent + t
        if tangent is None:  # no tangent reached the loss
            tangent = torch.zeros_like(grad.sum() if dims is None else grad.sum(dim=dims))
        return tangent, None


def _generic_loss(logits: Any, labels: Any, options: _Options) -> Any:
    def loss(sample_weight: Any, class_weight: Any) -> Any:
        return _softmax.softmax_cross_entropy(
            logits, labels, sample_weight=sample_weight, class_weight=class_weight,
            **dataclasses.asdict(options),
        )  # fmt: skip

    return loss


def _weight_vjp(
    needs: tuple[bool, bool], logits: Any, labels: Any, sample_weight: Any, class_weight: Any,
    options: _Options, grad_loss: torch.Tensor, create: bool | None = None,
) -> tuple[Any, Any]:  # fmt: skip
    """d loss / d (sample_weight, class_weight) contracted with grad_loss. Weights enter the loss through
    the weighted sum and, for "mean", its normaliser, not through the analytic logit gradient: autograd of
    the generic loss (plain array operations) in the weights alone gives it exactly, at the cost of one
    more forward pass, and only when a weight requires grad."""
    if create is None:  # a graph of the backward (double backward): keep everything attached
        create = torch.is_grad_enabled()
    with torch.enable_grad():
        if not create:
            logits, labels = logits.detach(), labels.detach()
        sw, cw = (
            w if w is None or create else w.detach().requires_grad_(need)
            for w, need in zip((sample_weight, class_weight), needs, strict=True)
        )
        loss = _generic_loss(logits, labels, options)(sw, cw)
        wanted = [w for w, need in zip((sw, cw), needs, strict=True) if need]
        grads = iter(torch.autograd.grad(loss, wanted, grad_loss, create_graph=create, allow_unused=True))
    out = [next(grads) if need else None for need in needs]
    return out[0], out[1]


def _weight_jvp(
    logits: Any, labels: Any, sample_weight: Any, class_weight: Any, options: _Options,
    tangents: tuple[Any, Any],
) -> Any:  # fmt: skip
    """The loss's tangent from the weights' tangents (forward mode; torch cannot nest forward AD here).
    "none" is bilinear in (sample_weight, class_weight), so its tangent is the loss at each tangent in
    turn; a 0-D loss's is the reverse-mode gradient of :func:`_weight_vjp` contracted with the tangents."""
    weights = (sample_weight, class_weight)
    needs = tuple(t is not None and w is not None for w, t in zip(weights, tangents, strict=True))
    loss = _generic_loss(logits.detach(), labels.detach(), options)
    if options.reduction == "none":
        parts = [loss(tangents[0], class_weight) if needs[0] else None,
                 loss(sample_weight, tangents[1]) if needs[1] else None]  # fmt: skip
    else:
        # torch.func.grad, not autograd: it composes with torch.func transforms (jacfwd in the weights)
        grads = torch.func.grad(loss, argnums=(0, 1))(sample_weight, class_weight) if all(needs) else (
            (torch.func.grad(lambda s: loss(s, class_weight))(sample_weight), None) if needs[0]
            else (None, torch.func.grad(lambda c: loss(sample_weight, c))(class_weight))
        )  # fmt: skip
        parts = [(g * t).sum() if g is not None else None for g, t in zip(grads, tangents, strict=True)]
    kept = [p for p in parts if p is not None]
    return kept[0] if len(kept) == 1 else kept[0] + kept[1]


def softmax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "mean",
    sample_weight: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`softdist.softmax_cross_entropy` on torch tensors in PyTorch's layout, differentiable through
    its analytic gradient.

    Shapes as ``F.cross_entropy``: ``logits`` (N, C), (N, C, d1, ..., dK) (classes on axis 1) or (C,)
    (unbatched); ``labels`` class indices of shape (N,), (N, d1, ..., dK) or () — or floating class
    probabilities of the logits' shape. Differentiable in ``logits`` and in probability ``labels``
    (``-log_softmax(logits)`` scaled as the loss), and in ``sample_weight`` and ``class_weight`` (through
    the generic loss, only when they require grad). Works with ``loss.backward()``,
    double backward, forward mode (``torch.func.jvp``, ``jacfwd``, ``hessian``), ``torch.func.grad`` /
    ``vmap`` and ``torch.compile`` (which runs it as one opaque call). Known gap: forward over forward
    (``jacfwd(jacfwd(f))``) is wrong — the gradient saved by the forward pass has no tangent at the outer
    level; ``hessian`` (``jacfwd(jacrev)``), ``jacrev(jacfwd)`` and ``jacrev(jacrev)`` are exact.

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C), (N, C, d1, ..., dK) or (C,)
        Floating scores, classes on axis 1 (axis 0 unbatched), on any device.
    labels : torch.Tensor
        Integer class indices of shape (N,), (N, d1, ..., dK) or (), or floating class probabilities of
        the logits' shape.
    reduction : {"mean", "sum", "none"}
    sample_weight : torch.Tensor, optional
        Per-row weights of the batch shape (not in PyTorch).
    weight : torch.Tensor, shape (C,), optional
        Class weights, as ``F.cross_entropy``'s ``weight`` and :func:`linear_cross_entropy`'s.
    label_smoothing : float in [0, 1]
    ignore_index : int, optional
        Default None: no label is ignored (PyTorch's default is -100).
    class_weight : torch.Tensor, shape (C,), optional
        ``weight`` under softdist's generic name (either, not both: a TypeError).

    Returns
    -------
    torch.Tensor
        0-D for "mean"/"sum", the batch shape for "none", in the logits' dtype and on their device.

    Raises
    ------
    ValueError, TypeError
        As :func:`softdist.softmax_cross_entropy` raises them.

    See Also
    --------
    SoftmaxCrossEntropy : the same as an ``nn.Module``.
    softdist.softmax_cross_entropy : the options, the numerics and the references.

    Examples
    --------
    >>> import torch, softdist.torch
    >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], requires_grad=True)
    >>> loss = softdist.torch.softmax_cross_entropy(logits, torch.tensor([0, 1]))
    >>> loss.backward()
    >>> round(loss.item(), 4)
    0.3185
    >>> logits.grad.round(decimals=4)
    tensor([[-0.1705,  0.1212,  0.0493],
            [ 0.0543, -0.0988,  0.0445]])
    """
    if weight is not None and class_weight is not None:
        raise TypeError(
            "softmax_cross_entropy got both weight and class_weight; pass the class weights once, as "
            "weight (PyTorch's name) or class_weight"
        )
    class_weight = weight if class_weight is None else class_weight
    options = _Options(reduction, label_smoothing, ignore_index, 0 if logits.ndim == 1 else 1)
    return _apply(logits, labels, sample_weight, class_weight, options)


# torch.compile: Dynamo would try to trace array-api-compat's dispatch and the eager fast path's
# data-dependent repair, breaking the graph several times with warnings. As one opaque call the graph
# breaks once, around the loss, and the result is the eager one.
@torch.compiler.disable
def _apply(*args: Any) -> torch.Tensor:
    return _SoftmaxCrossEntropyFunction.apply(*args)[0]


class SoftmaxCrossEntropy(torch.nn.Module):
    """Drop-in for ``nn.CrossEntropyLoss`` (any of its input shapes), backed by softdist's analytic gradient.

    Same arguments as ``nn.CrossEntropyLoss`` (``weight`` is a buffer: it follows ``.to(device)``), except
    that ``ignore_index`` defaults to None (no label ignored) rather than -100; ``forward`` also takes
    per-row ``sample_weight``. The differences from PyTorch are tabled in the documentation's numerics
    page.

    Parameters
    ----------
    weight : torch.Tensor, shape (C,), optional
        Class weights.
    ignore_index : int, optional
        Default None: no label is ignored.
    reduction : {"mean", "sum", "none"}
    label_smoothing : float in [0, 1]

    See Also
    --------
    softmax_cross_entropy : the functional form, with the shapes.

    Examples
    --------
    >>> import torch, softdist.torch
    >>> loss_fn = softdist.torch.SoftmaxCrossEntropy(label_smoothing=0.1)
    >>> logits, labels = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]]), torch.tensor([0, 1])
    >>> bool(torch.isclose(loss_fn(logits, labels),
    ...                    torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)))
    True
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
        _softmax._check_options(reduction, label_smoothing, ignore_index)  # at construction, not first use
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return softmax_cross_entropy(
            input, target, reduction=self.reduction, sample_weight=sample_weight, weight=self.weight,
            label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
        )


# -- the fused linear head --------------------------------------------------------------------------------
class _LinearCrossEntropyFunction(torch.autograd.Function):
    """loss = linear_cross_entropy(X, W, target, bias, ...); dX, dW, dbias come from the forward pass.

    "mean"/"sum": the forward computes the loss and the three gradients chunk by chunk and keeps the
    gradients (no logits); the first backward scales them in place and hands them over, so autograd takes
    them as ``.grad`` without a gradient-sized copy (a fresh ``g * grad_loss`` plus the kept ``g`` raised
    the peak by one dW: 193 -> 161 MiB beyond the inputs and gradients at N=8192, D=1024, C=32000,
    ``python benchmarks/linear_head.py memory``). A second backward of a retained graph recomputes them.
    "none": the forward computes the loss only, and the backward recomputes with
    ``sample_weight * grad_loss`` (each row's loss is linear in its weight), which is exactly the
    vector-Jacobian product. A graph of the backward (double backward) recomputes the gradients with
    differentiable operations. Under torch.func transforms the gradients are saved the usual way
    (``save_for_backward``) and scaled into new tensors.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        X: torch.Tensor, W: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None,
        sample_weight: torch.Tensor | None, class_weight: torch.Tensor | None, options: _LinearOptions,
    ) -> tuple[Any, ...]:  # fmt: skip
        opts = dataclasses.asdict(options)
        if opts["reduction"] == "none":
            loss = _linear.linear_cross_entropy(
                X, W, target, bias=bias, sample_weight=sample_weight, class_weight=class_weight, **opts
            )
            return loss, None, None, None
        out = _linear.linear_cross_entropy_and_grad(
            X, W, target, bias=bias, sample_weight=sample_weight, class_weight=class_weight, **opts
        )
        return out if bias is not None else (*out, None)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        X, W, target, bias, sample_weight, class_weight, options = inputs
        _, dX, dW, db = output
        ctx.mark_non_differentiable(*(g for g in (dX, dW, db) if g is not None))
        ctx.set_materialize_grads(False)
        ctx.options = options
        ctx.grads = None
        if torch._C._are_functorch_transforms_active():  # wrapped tensors: the documented way
            ctx.save_for_backward(X, W, target, bias, sample_weight, class_weight, dX, dW, db)
            return
        ctx.save_for_backward(X, W, target, bias, sample_weight, class_weight)
        if dW is not None:  # detached aliases: the function's outputs are not referenced (no cycle)
            ctx.grads = tuple(None if g is None else g.detach() for g in (dX, dW, db))

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        X, W, target, bias, sample_weight, class_weight = saved[:6]
        if grad_loss is None:
            return (None,) * 7
        opts = dataclasses.asdict(ctx.options)
        none = opts["reduction"] == "none"
        dX, dW, db = saved[6:] if len(saved) > 6 else (None, None, None)
        handed, ctx.grads = ctx.grads, None  # kept gradients go out once, scaled in place
        if handed is not None and not torch.is_grad_enabled():
            return _scaled_in_place(handed, grad_loss)
        if none or dW is None or torch.is_grad_enabled():  # recompute (differentiably for a graph)
            sw = sample_weight
            if none:
                sw = grad_loss if sample_weight is None else sample_weight * grad_loss
            out = _linear.linear_cross_entropy_and_grad(
                X, W, target, bias=bias, sample_weight=sw, class_weight=class_weight, **opts
            )
            dX, dW, db = out[1], out[2], (out[3] if bias is not None else None)
            if none:
                return dX, dW, None, db, None, None, None
            if not torch.is_grad_enabled():  # fresh gradients (a retained graph's later backward)
                return _scaled_in_place((dX, dW, db), grad_loss)
        scaled = [None if g is None else g * grad_loss for g in (dX, dW, db)]
        return scaled[0], scaled[1], None, scaled[2], None, None, None


def _scaled_in_place(grads: tuple[Any, ...], grad_loss: torch.Tensor) -> tuple[Any, ...]:
    """(dX, dW, db) of our own, scaled by grad_loss without a copy, as backward's seven results."""
    dX, dW, db = grads
    if grad_loss.device.type != "cpu" or not bool(grad_loss == 1):  # CPU: reading it costs nothing
        for g in grads:
            if g is not None:
                g.mul_(grad_loss)
    return dX, dW, None, db, None, None, None


@torch.compiler.disable  # one opaque call for torch.compile, as for softmax_cross_entropy
def _apply_linear(*args: Any) -> torch.Tensor:
    return _LinearCrossEntropyFunction.apply(*args)[0]


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | str = "auto",
) -> torch.Tensor:
    """:func:`softdist.linear_cross_entropy` on torch tensors, differentiable in ``input``,
    ``linear_weight`` and ``linear_bias`` without the (N, C) logits (targets and weights are constants:
    one that requires grad is a ValueError).

    A superset of ``torch.nn.functional.linear_cross_entropy``'s signature (``weight`` is the class
    weight): existing calls port by a rename, except that ``ignore_index`` defaults to None (nothing
    ignored), not -100 — pass ``ignore_index=-100`` where labels use -100 for padding (a -100 label
    without it is a ValueError that says so). Backward gives
    dX, dW and dbias from the forward pass, handed to autograd without a copy; a second backward of a
    ``retain_graph=True`` graph recomputes them (three more products, no memory kept for it);
    double backward, ``torch.func.grad`` and ``torch.compile`` (one graph break) work. Under
    ``torch.no_grad()`` (or when nothing requires a gradient) only the loss is computed.

    Parameters
    ----------
    input : torch.Tensor, shape (N, D)
        Hidden states.
    linear_weight : torch.Tensor, shape (C, D)
        The output layer's weight (``nn.Linear.weight``).
    target : torch.Tensor, shape (N,) or (N, C)
        Class indices or class probabilities.
    linear_bias : torch.Tensor, shape (C,), optional
    weight : torch.Tensor, shape (C,), optional
        Class weights.
    reduction, ignore_index, label_smoothing, sample_weight, z_loss, softcap, chunk_size
        As for :func:`softdist.linear_cross_entropy` (``sample_weight``, ``z_loss`` and ``softcap`` are
        not in PyTorch).

    Returns
    -------
    torch.Tensor
        0-D, or (N,) for ``reduction="none"``.

    Raises
    ------
    ValueError, TypeError
        As :func:`softdist.linear_cross_entropy` raises them.

    See Also
    --------
    LinearCrossEntropy : the same as an ``nn.Module``.
    softdist.linear_cross_entropy_and_grad : the algorithm and its references.

    Examples
    --------
    >>> import torch, softdist.torch
    >>> head = torch.nn.Linear(16, 100)
    >>> hidden = torch.randn(32, 16, requires_grad=True)
    >>> loss = softdist.torch.linear_cross_entropy(hidden, head.weight, torch.randint(0, 100, (32,)),
    ...                                            linear_bias=head.bias, z_loss=1e-4)
    >>> loss.backward()
    >>> head.weight.grad.shape
    torch.Size([100, 16])
    """
    # Passed as given: softdist's own checks name the argument (float() here would accept z_loss=True).
    options = _LinearOptions(reduction, label_smoothing, ignore_index, z_loss, softcap, chunk_size)
    if torch.is_grad_enabled():  # a silent None gradient would be a trap (distillation, learnt weights)
        for name, t in (("target", target), ("weight", weight), ("sample_weight", sample_weight)):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise ValueError(
                    f"{name} requires grad, but softdist.torch.linear_cross_entropy differentiates only "
                    f"input, linear_weight and linear_bias; pass {name}.detach(), or use "
                    "softdist.torch.softmax_cross_entropy on the logits for a gradient in the soft targets"
                )
    differentiable = [t for t in (input, linear_weight, linear_bias) if t is not None]
    if not (
        (torch.is_grad_enabled() and any(t.requires_grad for t in differentiable))
        or is_torch_transformed(differentiable)
    ):  # nothing to differentiate: the loss alone, one matrix product per chunk
        return _linear.linear_cross_entropy(
            input, linear_weight, target, bias=linear_bias, sample_weight=sample_weight, class_weight=weight,
            **dataclasses.asdict(options),
        )  # fmt: skip
    return _apply_linear(input, linear_weight, target, linear_bias, sample_weight, weight, options)


class LinearCrossEntropy(torch.nn.Module):
    """The fused output layer's loss as a module holding the options (``weight``, the class weights, is a
    buffer); ``forward(input, linear_weight, target, linear_bias=None, sample_weight=None)``.

    Parameters
    ----------
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size
        As for :func:`linear_cross_entropy`.

    Examples
    --------
    >>> import torch, softdist.torch
    >>> head = torch.nn.Linear(16, 100)
    >>> loss_fn = softdist.torch.LinearCrossEntropy(z_loss=1e-4)
    >>> loss = loss_fn(torch.randn(32, 16), head.weight, torch.randint(0, 100, (32,)), head.bias)
    >>> loss.backward()
    >>> head.bias.grad.shape
    torch.Size([100])
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | str = "auto",
    ) -> None:
        super().__init__()
        _softmax._check_options(reduction, label_smoothing, ignore_index)  # at construction, not first use
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        _linear._check_head_options(z_loss, softcap, chunk_size)
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = chunk_size

    def forward(
        self,
        input: torch.Tensor,
        linear_weight: torch.Tensor,
        target: torch.Tensor,
        linear_bias: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            sample_weight=sample_weight, z_loss=self.z_loss, softcap=self.softcap, chunk_size=self.chunk_size,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}, "
            f"chunk_size={self.chunk_size!r}"
        )
