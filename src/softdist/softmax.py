"""Softmax cross-entropy loss and its analytic gradient, for logits and for a linear model."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._agnostic import softmax as _generic
from ._backends import backend_for
from ._lib._compat import array_namespace, device, is_array_api_obj
from ._lib._scalars import compare, widened_labels
from ._lib._validation import (
    check_known_shapes,
    check_matrix,
    check_vector,
    float_dtype_of,
    namespace_of,
    working_dtype,
)

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_and_grad", "softmax_loss"]

REDUCTIONS = ("mean", "sum", "none")


# -- validation ------------------------------------------------------------------------------------------
def _check_options(reduction: Any, label_smoothing: Any, ignore_index: Any) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")
    if (
        not isinstance(label_smoothing, numbers.Real)
        or isinstance(label_smoothing, bool)
        or not 0.0 <= label_smoothing <= 1.0
    ):
        raise ValueError(f"label_smoothing must be a number in [0, 1]; got {label_smoothing!r}")
    if ignore_index is not None and (
        not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool)
    ):
        raise TypeError(f"ignore_index must be an int or None; got {ignore_index!r}")


def _check_targets(labels: Any, n: Any, n_classes: Any, ignore_index: Any, xp: Any) -> bool:
    """Shape and dtype of the targets; True for soft targets (N, C), False for class indices (N,)."""
    if labels.ndim == 2:
        if tuple(labels.shape) != (n, n_classes):
            # Keras-style (N, 1) class indices: say how to pass them.
            hint = "; for class indices pass shape (N,), e.g. labels[:, 0]" if labels.shape[1] == 1 else ""
            raise ValueError(
                f"soft targets (2-D labels) must have shape (n_samples, n_classes) = ({n}, {n_classes}); "
                f"got {tuple(labels.shape)}{hint}"
            )
        if ignore_index is not None:
            raise ValueError("ignore_index applies to class-index labels only, not to soft targets")
        if not xp.isdtype(labels.dtype, "real floating"):  # PyTorch: "Expected floating point type"
            raise TypeError(
                f"labels of the logits' shape are soft targets and must be real floating-point class "
                f"probabilities; got dtype {labels.dtype} (class indices have the logits' shape without "
                f"the class axis)"
            )
        return True
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels must be class indices of shape ({n},) or soft targets of shape ({n}, {n_classes}); "
            f"got shape {tuple(labels.shape)}"
        )
    if not xp.isdtype(labels.dtype, ("integral", "real floating")):
        raise TypeError(f"labels must be integer class indices; got dtype {labels.dtype}")
    backend_for(xp).check_label_dtype(labels)
    return False


def _values_are_concrete(xp: Any, *arrays: Any) -> bool:
    """False for Dask and inside torch.func transforms, where reading a value needs a compute or is
    impossible; JAX is decided on the values themselves (see _check_label_values)."""
    return backend_for(xp).values_readable(arrays)


def _check_label_values(labels: Any, n_classes: int, ignore_index: int | None, xp: Any) -> bool:
    """Raise on labels that are not class indices; False when the values cannot be read (inside a JAX
    trace, even of constants), True when they were checked. One reduction and one host read."""
    bad = (labels < 0) | compare(labels, ">=", n_classes, xp=xp)
    if xp.isdtype(labels.dtype, "real floating"):
        bad = bad | (labels != xp.floor(labels))  # NaN too
    if ignore_index is not None:
        bad = bad & compare(labels, "!=", ignore_index, xp=xp)
    any_bad = xp.any(bad)
    if backend_for(xp).is_abstract(any_bad):
        return False
    if bool(any_bad):
        (where,) = xp.nonzero(bad)
        first = int(where[0])
        value = labels[first]
        value = float(value) if xp.isdtype(labels.dtype, "real floating") else int(value)
        allowed = f"[0, {n_classes})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        hint = ""
        if ignore_index is None and value == -100:  # PyTorch's default padding label
            hint = "; pass ignore_index=-100 to ignore such rows (softdist ignores nothing by default)"
        raise ValueError(
            f"labels must be integer class indices in {allowed}; got {where.shape[0]} invalid "
            f"value(s), first labels[{first}] = {value}{hint}"
        )
    return True


@dataclass(frozen=True)
class _Plan:
    """Everything static about one call (hashable: it keys JAX's compiled-function cache)."""

    reduction: str
    label_smoothing: float
    ignore_index: int | None
    soft: bool  # soft targets (N, C) rather than class indices (N,)
    checked: bool  # label values were validated eagerly
    dtype: Any  # the result dtype
    work: Any  # the dtype arithmetic runs in


def _plan(
    named: dict[str, Any],
    labels: Any,
    *,
    n: Any,
    n_classes: Any,
    sample_weight: Any,
    class_weight: Any,
    label_smoothing: float,
    ignore_index: int | None,
    reduction: str,
    xp: Any,
) -> _Plan:
    """Validate everything that can be checked: metadata always, label values on eager backends."""
    _check_options(reduction, label_smoothing, ignore_index)
    if n_classes == 0:
        raise ValueError("there must be at least one class; got 0 columns of logits (or of W)")
    soft = _check_targets(labels, n, n_classes, ignore_index, xp)
    if sample_weight is not None:
        check_vector("sample_weight", sample_weight, n, "(one weight per row)")
    if class_weight is not None:
        check_vector("class_weight", class_weight, n_classes, "(one weight per class)")
    dtype = float_dtype_of(named, xp)
    for name, w in (("sample_weight", sample_weight), ("class_weight", class_weight)):
        if w is not None:
            float_dtype_of({name: w}, xp)  # complex/other dtypes: TypeError naming the argument
    checked = (
        not soft
        and _values_are_concrete(xp, labels)
        and _check_label_values(labels, n_classes, ignore_index, xp)
    )
    return _Plan(
        reduction, float(label_smoothing), ignore_index, soft, checked, dtype, working_dtype(dtype, xp)
    )


def _row_terms(
    plan: _Plan, labels: Any, n_classes: int, sw: Any, cw: Any, xp: Any, total: Any = None
) -> _generic.RowTerms:
    """The per-row coefficients; ``total``: the mean's denominator when these rows are one block of a
    larger problem (see :func:`_weight_total`; an int where it is the number of rows)."""
    if isinstance(total, int):
        total = xp.asarray(total, dtype=plan.work, device=device(labels))
    options = {
        "dtype": plan.work, "reduction": plan.reduction, "label_smoothing": plan.label_smoothing, "xp": xp,
        "sample_weight": None if sw is None else xp.astype(sw, plan.work),
        "class_weight": None if cw is None else xp.astype(cw, plan.work), "total": total,
    }  # fmt: skip
    if plan.soft:
        return _generic.soft_row_terms(labels, **options)
    return _generic.index_row_terms(
        labels, n_classes=n_classes, ignore_index=plan.ignore_index, checked=plan.checked, **options
    )


def _weight_total(plan: _Plan, n_classes: int, labels: Any, sw: Any, cw: Any) -> Any:
    """0-D: these rows' share of the mean's denominator (summed over the blocks of a larger problem)."""
    xp = array_namespace(labels)
    sw = None if sw is None else xp.astype(sw, plan.work)
    if plan.soft:
        return _generic.soft_weight_total(labels, dtype=plan.work, sample_weight=sw, xp=xp)
    return _generic.index_weight_total(
        labels, n_classes=n_classes, dtype=plan.work, sample_weight=sw,
        class_weight=None if cw is None else xp.astype(cw, plan.work),
        ignore_index=plan.ignore_index, checked=plan.checked, xp=xp,
    )  # fmt: skip


def _block_weight_total(
    plan: _Plan, n_classes: int, labels: Any, sw: Any, cw: Any
) -> Callable[..., Any] | int | None:
    """The mean's denominator for a problem computed in row blocks: None without a mean; the number of
    rows where every row counts once (no weights, no ignore_index; as in
    :func:`softdist._agnostic.softmax.index_row_terms`); else the per-block function whose sum over the
    blocks it is."""
    if plan.reduction != "mean":
        return None
    n = labels.shape[0]
    if _generic.counts_every_row(sw, cw, plan.ignore_index) and isinstance(n, int):
        return n  # known without a pass over the labels (Dask: no extra tasks or graph to build)
    return functools.partial(_weight_total, plan, n_classes)


def _reduce(row_loss: Any, reduction: str, xp: Any) -> Any:
    return row_loss if reduction == "none" else xp.sum(row_loss)


def _run(core: Callable[..., Any], arrays: tuple[Any, ...], xp: Any, **static: Any) -> Any:
    """``core(*arrays, **static)``, run as the backend runs a whole computation best (eager JAX: one
    compiled function)."""
    return backend_for(xp).run(core, arrays, xp, **static)


# -- the computations, after validation ------------------------------------------------------------------
def _logits_core(
    logits: Any, labels: Any, sw: Any, cw: Any, *, plan: _Plan, want_grad: bool, xp: Any
) -> tuple[Any, Any | None]:
    backend = backend_for(xp)
    if backend.row_blocks is not None:
        n_classes = logits.shape[1]
        outputs = [("rows", (), plan.work)] + ([("rows", (n_classes,), plan.work)] if want_grad else [])
        row_loss, *grad = backend.row_blocks(
            functools.partial(_logits_block, plan=plan, want_grad=want_grad),
            _block_weight_total(plan, n_classes, labels, sw, cw), [logits, labels, sw], [], class_weight=cw,
            outputs=outputs, work=plan.work, xp=xp,
        )  # fmt: skip
        G = grad[0] if want_grad else None
    else:
        terms = _row_terms(plan, labels, logits.shape[1], sw, cw, xp)
        z = xp.astype(logits, plan.work, copy=False)
        row_loss, G = backend.softmax_kernel([logits])(z, terms, want_grad=want_grad, xp=xp)
    loss = xp.astype(_reduce(row_loss, plan.reduction, xp), plan.dtype, copy=False)
    return loss, (None if G is None else xp.astype(G, plan.dtype, copy=False))


def _logits_block(
    logits: Any, labels: Any, sw: Any, cw: Any, total: Any, *, plan: _Plan, want_grad: bool
) -> tuple[Any, ...]:
    """Row losses (and the gradient) of one block of rows, in the working dtype, eagerly."""
    xp = array_namespace(logits)
    terms = _row_terms(plan, labels, logits.shape[1], sw, cw, xp, total=total)
    z = xp.astype(logits, plan.work, copy=False)
    row_loss, G = backend_for(xp).softmax_kernel([logits])(z, terms, want_grad=want_grad, xp=xp)
    return (row_loss, G) if want_grad else (row_loss,)


def head_core(
    X: Any, W: Any, labels: Any, bias: Any, sw: Any, cw: Any, *,
    plan: _Plan, want_grad: bool, want_dX: bool, z_loss: float, softcap: float | None, chunk_rows: int,
    xp: Any,
) -> tuple[Any, ...]:  # fmt: skip
    """(loss,) or (loss, dX, dW, dbias) after validation; dX is None unless ``want_dX``, dbias None
    without a bias. The kernel of the linear head (softdist.linear) and of ``softmax_loss`` (on W.T)."""
    options = {"plan": plan, "want_grad": want_grad, "want_dX": want_dX, "z_loss": z_loss,
               "softcap": softcap, "chunk_rows": chunk_rows}  # fmt: skip
    if backend_for(xp).row_blocks is not None:
        row_loss, dX, dW, db = _head_row_blocks(X, W, labels, bias, sw, cw, xp=xp, **options)
    else:
        row_loss, dX, dW, db = _head_rows(X, W, labels, bias, sw, cw, None, xp=xp, **options)
    loss = xp.astype(_reduce(row_loss, plan.reduction, xp), plan.dtype, copy=False)
    if not want_grad:
        return (loss,)
    dW = xp.astype(dW, plan.dtype, copy=False)
    db = None if db is None else xp.astype(db, plan.dtype, copy=False)
    return loss, dX, dW, db


def _head_rows(
    X: Any, W: Any, labels: Any, bias: Any, sw: Any, cw: Any, total: Any, *,
    plan: _Plan, want_grad: bool, want_dX: bool, z_loss: float, softcap: float | None, chunk_rows: int,
    xp: Any,
) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """(row losses, dX, dW, dbias) in the working dtype (dX in the inputs'); ``total``: the mean's
    denominator when these rows are one block of a larger problem."""
    n_classes = W.shape[0]
    terms = _row_terms(plan, labels, n_classes, sw, cw, xp, total=total)
    X = _cast_input(X, plan.dtype, xp)
    W = _cast_input(W, plan.dtype, xp)
    backend = backend_for(xp)
    workspace = backend.linear_workspace(
        X, W, bias, chunk_rows=chunk_rows, work=plan.work, want_dX=want_dX, xp=xp
    )
    return backend.linear_head(
        X, W, terms, workspace, chunk_rows=chunk_rows, want_grad=want_grad, z_loss=z_loss, softcap=softcap,
        kernel=backend.softmax_kernel([X, W, bias]), xp=xp,
    )  # fmt: skip


def _head_row_blocks(
    X: Any, W: Any, labels: Any, bias: Any, sw: Any, cw: Any, *, xp: Any, **options: Any
) -> tuple[Any, Any, Any, Any]:
    """:func:`_head_rows` as one task per row block of X (the eager code on each block), dW and dbias
    summed over the blocks (Dask: softdist._backends._dask.dask_row_blocks)."""
    plan, want_grad, want_dX = options["plan"], options["want_grad"], options["want_dX"]
    n_classes, d = W.shape
    wanted = [True, want_grad and want_dX, want_grad, want_grad and bias is not None]
    outputs = [("rows", (), plan.work), ("rows", (d,), plan.dtype), ("sum", (n_classes, d), plan.work),
               ("sum", (n_classes,), plan.work)]  # fmt: skip

    def block(Xb: Any, yb: Any, swb: Any, Wb: Any, bb: Any, cwb: Any, total: Any) -> tuple[Any, ...]:
        out = _head_rows(Xb, Wb, yb, bb, swb, cwb, total, xp=array_namespace(Xb), **options)
        return tuple(o for o, keep in zip(out, wanted, strict=True) if keep)

    total = _block_weight_total(plan, n_classes, labels, sw, cw)
    results = iter(
        backend_for(xp).row_blocks(
            block, total, [X, labels, sw], [W, bias], class_weight=cw,
            outputs=[o for o, keep in zip(outputs, wanted, strict=True) if keep], work=plan.work, xp=xp,
        )
    )  # fmt: skip
    row_loss, dX, dW, db = (next(results) if keep else None for keep in wanted)
    return row_loss, dX, dW, db


def _cast_input(x: Any, dtype: Any, xp: Any) -> Any:
    return x if x.dtype == dtype else xp.astype(x, dtype)


def _linear_core(
    W: Any, X: Any, y: Any, b: Any, sw: Any, cw: Any, reg: Any, *,
    plan: _Plan, has_reg: bool, chunk_rows: int, xp: Any,
) -> tuple[Any, ...]:  # fmt: skip
    loss, _, dW, db = head_core(
        X, xp.matrix_transpose(W), y, b, sw, cw, plan=plan, want_grad=True, want_dX=False, z_loss=0.0,
        softcap=None, chunk_rows=chunk_rows, xp=xp,
    )  # fmt: skip
    dW = xp.matrix_transpose(dW)
    if has_reg and not isinstance(reg, numbers.Real):  # a 0-D array; unreadable bad values give NaN
        reg = xp.astype(reg, plan.work)
        reg = xp.where((reg >= 0) & (reg < xp.inf), reg, xp.nan)
    if has_reg:
        Ww = xp.astype(W, plan.work, copy=False)
        if plan.reduction != "none":
            loss = xp.astype(loss + reg * xp.sum(Ww * Ww), plan.dtype, copy=False)
        dW = xp.astype(dW + (2 * reg) * Ww, plan.dtype, copy=False)
    return (loss, dW) if b is None else (loss, dW, db)


# -- public API ------------------------------------------------------------------------------------------
def _loss_options(
    reduction: str, sample_weight: Any, class_weight: Any, label_smoothing: float, ignore_index: Any
) -> dict[str, Any]:
    return {"reduction": reduction, "sample_weight": sample_weight, "class_weight": class_weight,
            "label_smoothing": label_smoothing, "ignore_index": ignore_index}  # fmt: skip


def _check_axis(axis: Any, ndim: int) -> int:
    """The class axis as a non-negative int."""
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int; got {axis!r}")
    if ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis); got a 0-D array")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for logits with {ndim} dimension(s)")
    return int(axis) % ndim


def _logits_loss(
    logits: Any, labels: Any, options: dict[str, Any], xp: Any, *, want_grad: bool, axis: Any = -1
) -> tuple[Any, Any | None]:
    sw, cw = options["sample_weight"], options["class_weight"]
    named = {"logits": logits, "labels": labels, "sample_weight": sw, "class_weight": cw}
    xp = namespace_of(named, xp)
    check_known_shapes(named)
    axis = _check_axis(axis, logits.ndim)
    if logits.ndim == 2 and axis == 1:
        return _matrix_loss(logits, labels, options, xp, want_grad=want_grad)
    return _any_batch_loss(logits, labels, options, xp, want_grad=want_grad, axis=axis)


def _any_batch_loss(
    logits: Any, labels: Any, options: dict[str, Any], xp: Any, *, want_grad: bool, axis: int
) -> tuple[Any, Any | None]:
    """Any batch shape: the class axis moved last and the batch flattened into rows, the (N, C) loss,
    and the results shaped back. A view where the layout allows (class axis last); Dask stays lazy."""
    shape = tuple(logits.shape)
    n_classes = shape[axis]
    batch = shape[:axis] + shape[axis + 1 :]
    order = (*range(axis), *range(axis + 1, len(shape)), axis)
    rows = math.prod(batch)

    def to_rows(x: Any) -> Any:
        if axis != len(shape) - 1:
            x = xp.permute_dims(x, order)
        return xp.reshape(x, (rows, n_classes))

    if tuple(labels.shape) == shape:
        labels = to_rows(labels)
    elif tuple(labels.shape) == batch:
        labels = xp.reshape(labels, (rows,))
    else:
        raise ValueError(
            f"labels must be class indices of shape {batch} (the logits' shape without the class axis "
            f"{axis}) or soft targets of the logits' shape {shape}; got shape {tuple(labels.shape)}"
        )
    sw = options["sample_weight"]
    if sw is not None:
        if tuple(sw.shape) != batch:
            raise ValueError(
                f"sample_weight must have the logits' batch shape {batch} (one weight per row); "
                f"got shape {tuple(sw.shape)}"
            )
        options = options | {"sample_weight": xp.reshape(sw, (rows,))}
    loss, G = _matrix_loss(to_rows(logits), labels, options, xp, want_grad=want_grad)
    if options["reduction"] == "none":
        loss = xp.reshape(loss, batch)
    if G is not None:
        G = xp.reshape(G, tuple(shape[i] for i in order))
        if axis != len(shape) - 1:
            G = xp.permute_dims(G, tuple(order.index(i) for i in range(len(shape))))
    return loss, G


def _matrix_loss(
    logits: Any, labels: Any, options: dict[str, Any], xp: Any, *, want_grad: bool
) -> tuple[Any, Any | None]:
    sw, cw = options["sample_weight"], options["class_weight"]
    n, n_classes = logits.shape
    labels = widened_labels(labels, xp) if labels.ndim == 1 else labels
    plan = _plan({"logits": logits}, labels, n=n, n_classes=n_classes, xp=xp, **options)
    if n == 0:  # nothing to reduce over (Dask cannot even build the graph of a max over 0 rows)
        G = xp.zeros(logits.shape, dtype=plan.dtype, device=device(logits))
        shape = (0,) if plan.reduction == "none" else ()
        return xp.zeros(shape, dtype=plan.dtype, device=device(logits)), G
    return _run(_logits_core, (logits, labels, sw, cw), xp, plan=plan, want_grad=want_grad)


def soft_target_grad(
    logits: Any,
    targets: Any,
    /,
    *,
    reduction: str = "mean",
    sample_weight: Any | None = None,
    class_weight: Any | None = None,
    label_smoothing: float = 0.0,
    axis: int = -1,
    xp: Any | None = None,
) -> Any:
    """The gradient of :func:`softmax_cross_entropy` with respect to soft ``targets`` (of the logits'
    shape), ``-log_softmax(logits)`` scaled as the loss is; for ``reduction="none"``, of the sum of the
    per-row losses. Private to softdist.torch and softdist.jax, which validate through the loss first."""
    xp = namespace_of({"logits": logits, "labels": targets}, xp)
    axis = _check_axis(axis, logits.ndim)
    dtype = float_dtype_of({"logits": logits}, xp)
    work = working_dtype(dtype, xp)
    sw = None if sample_weight is None else xp.astype(sample_weight, work)
    cw = None if class_weight is None else xp.astype(class_weight, work)
    grad = _generic.soft_target_grad(
        xp.astype(logits, work, copy=False), axis=axis, sample_weight=sw, class_weight=cw,
        label_smoothing=float(label_smoothing), reduction=reduction, xp=xp,
    )  # fmt: skip
    return xp.astype(grad, targets.dtype, copy=False)


def softmax_cross_entropy(
    logits: Any,
    labels: Any,
    /,
    *,
    reduction: str = "mean",
    sample_weight: Any | None = None,
    class_weight: Any | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    axis: int = -1,
    xp: Any | None = None,
) -> Any:
    """Softmax cross-entropy of ``logits`` against ``labels``.

    Parameters
    ----------
    logits : array, shape (N, C), or any shape with the classes along ``axis``
        Unnormalised scores, any array API library (NumPy, PyTorch, JAX, CuPy, Dask, ...). ``-inf``
        masks a class. float16/bfloat16 are reduced in float32. The other axes form the batch: (N,)
        for (N, C), (N, d1, ...) for (N, d1, ..., C), () for (C,).
    labels : array, of the batch shape or of the logits' shape
        Integer class indices in [0, C) (the batch shape), or floating soft targets (the logits' shape:
        class probabilities along ``axis``; they need not sum to 1). Same library and device as
        ``logits``. Integer labels of the logits' shape are a TypeError, as in PyTorch.
    reduction : {"mean", "sum", "none"}
        "mean" divides by the total effective weight of the counted rows (sample weight times the class
        weight of the label; ignored rows do not count), as PyTorch does; soft targets divide by N (or
        the sum of ``sample_weight``). A batch with nothing to count has loss 0, not NaN.
    sample_weight : array, the batch shape, optional
        Per-row weights (not in PyTorch).
    class_weight : array, shape (C,), optional
        Per-class weights, PyTorch's ``weight``.
    label_smoothing : float in [0, 1]
        Mixes the targets with the uniform distribution, as PyTorch does.
    ignore_index : int, optional
        Rows with this label get loss 0 and gradient 0 and do not count in the mean. Default: none
        (PyTorch's default is -100).
    axis : int
        The class axis of ``logits`` (and of soft targets), -1 by default as in optax and the array API's
        reductions; ``softdist.torch`` passes PyTorch's axis 1 (0 for an unbatched (C,) input).
    xp : namespace, optional
        Inferred from the inputs when omitted.

    Returns
    -------
    loss : array
        0-D for "mean"/"sum", the batch shape for "none"; in the logits' library, device and floating
        dtype. Logits of any magnitude give a finite loss (the log-sum-exp is shifted); ``-inf`` logits
        mask their class; a row of all ``-inf`` logits, an ignored row and an all-ignored batch give 0,
        never NaN; a NaN logit makes only its own row NaN. Invalid labels raise ValueError on eager
        backends; under ``jax.jit`` and Dask (where values cannot be read without a sync) their rows are
        NaN instead, never a silent wrap-around.

    Raises
    ------
    ValueError
        Labels outside [0, C) that are not ``ignore_index`` (eager backends), labels, ``sample_weight``
        or ``class_weight`` of the wrong shape, ``ignore_index`` with soft targets, an unknown
        ``reduction``, ``label_smoothing`` outside [0, 1], 0-D logits or an ``axis`` out of range, zero
        classes, arrays on two devices, Dask arrays of unknown size, arrays without computable data.
    TypeError
        Integer labels of the logits' shape (soft targets must be floating), labels that are neither
        integer nor floating, torch uint64 labels, ``ignore_index`` or ``axis`` not an int, inputs that
        are not arrays or come from two libraries, ``xp`` that is not their namespace, complex dtypes.

    See Also
    --------
    softmax_cross_entropy_and_grad : the loss and its gradient in one pass.
    softmax_loss : the loss of a linear model ``X @ W + b`` with dW and db.
    softdist.torch.softmax_cross_entropy, softdist.jax.softmax_cross_entropy : autodiff integrations.

    Notes
    -----
    Row i's loss is ``gamma_i * lse(z_i) - sum_j t_ij z_ij``, with ``t_i`` the (weighted, smoothed)
    target and ``gamma_i`` its total mass. The log-sum-exp is shifted by the row maximum,
    ``lse(z) = m + log(sum_j exp(z_j - m))`` with ``m = max_j z_j``: every exponent is <= 0, so nothing
    overflows, and the sum is at least 1, so nothing underflows to ``log(0)`` [1]_. The shifted values
    ``z - m`` are reused in the linear term, so logits with a large common offset keep their accuracy.
    On NumPy and PyTorch CPU arrays a faster kernel exponentiates without the shift and redoes, with the
    shift, every row whose unshifted sum could overflow, underflow or lose accuracy; its results equal
    the shifted kernel's (tested). Reductions, class weights, label smoothing and ``ignore_index``
    follow ``torch.nn.functional.cross_entropy`` [2]_.

    References
    ----------
    .. [1] P. Blanchard, D. J. Higham and N. J. Higham, "Accurately computing the log-sum-exp and softmax
       functions", *IMA Journal of Numerical Analysis* 41(4), 2311-2330, 2021.
    .. [2] PyTorch, ``torch.nn.functional.cross_entropy``, whose conventions are followed (the
       differences: no default ``ignore_index``, per-row ``sample_weight``, 0 rather than NaN for a
       batch with nothing to count).

    Examples
    --------
    >>> import numpy as np, softdist
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> labels = np.array([0, 1])
    >>> round(float(softdist.softmax_cross_entropy(logits, labels)), 4)
    0.3185
    >>> softdist.softmax_cross_entropy(logits, labels, reduction="none").round(4)
    array([0.417, 0.22 ])

    Soft targets (rows of class probabilities), huge and masked logits:

    >>> targets = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    >>> round(float(softdist.softmax_cross_entropy(logits, targets)), 4)
    0.5135
    >>> float(softdist.softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1])))
    1000.0
    >>> float(softdist.softmax_cross_entropy(np.array([[0.0, -np.inf, 0.0]]), np.array([0])))
    0.6931471805599453

    Labels that are not class indices are an error on eager backends:

    >>> softdist.softmax_cross_entropy(logits, np.array([0, 3]))
    Traceback (most recent call last):
    ...
    ValueError: labels must be integer class indices in [0, 3); got 1 invalid value(s), ...
    """
    options = _loss_options(reduction, sample_weight, class_weight, label_smoothing, ignore_index)
    return _logits_loss(logits, labels, options, xp, want_grad=False, axis=axis)[0]


def softmax_cross_entropy_and_grad(
    logits: Any,
    labels: Any,
    /,
    *,
    reduction: str = "mean",
    sample_weight: Any | None = None,
    class_weight: Any | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    axis: int = -1,
    xp: Any | None = None,
) -> tuple[Any, Any]:
    """The loss of :func:`softmax_cross_entropy` and its gradient with respect to ``logits``.

    The gradient is ``gamma_i * softmax(logits_i) - target_i`` scaled like the loss: for plain labels and
    the mean, ``(softmax(logits) - onehot(labels)) / N``; for soft targets ``sum(t_i) p_i - t_i`` (exact
    even when rows do not sum to 1). It comes from the same pass as the loss, with no autodiff graph.

    Parameters
    ----------
    logits, labels, reduction, sample_weight, class_weight, label_smoothing, ignore_index, axis, xp
        As for :func:`softmax_cross_entropy`.

    Returns
    -------
    loss : array
        As :func:`softmax_cross_entropy` returns it.
    dlogits : array
        The gradient of the loss, of the logits' shape, library, device and floating dtype. With
        ``reduction="none"`` row i holds the gradient of loss i. Masked (``-inf``) classes, ignored rows
        and rows of all ``-inf`` logits get exactly 0.

    Raises
    ------
    ValueError, TypeError
        As for :func:`softmax_cross_entropy`.

    See Also
    --------
    softmax_cross_entropy : the loss alone, its options and the references.

    Examples
    --------
    >>> import numpy as np, softdist
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> loss, dlogits = softdist.softmax_cross_entropy_and_grad(logits, np.array([0, 1]))
    >>> dlogits.round(4)
    array([[-0.1705,  0.1212,  0.0493],
           [ 0.0543, -0.0988,  0.0445]])
    >>> logits = np.zeros((2, 3, 4))  # (N, C, d1): PyTorch's layout, classes on axis 1
    >>> loss, grad = softdist.softmax_cross_entropy_and_grad(logits, np.zeros((2, 4), int), axis=1)
    >>> round(float(loss), 4), grad.shape
    (1.0986, (2, 3, 4))
    """
    options = _loss_options(reduction, sample_weight, class_weight, label_smoothing, ignore_index)
    return _logits_loss(logits, labels, options, xp, want_grad=True, axis=axis)  # type: ignore[return-value]


def _check_reg(reg: Any, xp: Any) -> None:
    """A finite number >= 0, or a 0-D real array of the inputs' library and device (namespace_of checked
    that) whose value is checked where it can be read; under jax.jit and Dask a bad value gives NaN."""
    if isinstance(reg, numbers.Real) and not isinstance(reg, bool):
        if not reg >= 0 or reg == float("inf"):
            raise ValueError(f"reg must be a finite number >= 0; got {reg!r}")
        return
    if not is_array_api_obj(reg):
        raise TypeError(f"reg must be a number (or a 0-D array); got {type(reg).__name__}")
    if reg.ndim != 0:
        raise ValueError(f"reg must be a number or a 0-D array; got an array of shape {tuple(reg.shape)}")
    if not xp.isdtype(reg.dtype, ("real floating", "integral")):
        raise TypeError(f"reg must be real; got an array of dtype {reg.dtype}")
    concrete = _values_are_concrete(xp, reg) and not backend_for(xp).is_abstract(reg)
    if concrete and not bool((reg >= 0) & (reg < xp.inf)):  # eager only: one host read of a 0-D array
        raise ValueError(f"reg must be a finite number >= 0; got an array holding {float(reg)!r}")


def softmax_loss(
    W: Any,
    X: Any,
    y: Any,
    /,
    *,
    reg: float = 0.0,
    b: Any | None = None,
    reduction: str = "mean",
    sample_weight: Any | None = None,
    class_weight: Any | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    chunk_size: int | None = None,
    xp: Any | None = None,
) -> tuple[Any, ...]:
    """Loss and gradients of the linear softmax classifier ``scores = X @ W (+ b)``.

    Parameters
    ----------
    W : array, shape (D, C)
    X : array, shape (N, D)
        Integer and boolean features are computed in the default floating dtype.
    y : array, shape (N,) or (N, C)
        Class indices or soft targets, as for :func:`softmax_cross_entropy`.
    reg : float or 0-D array
        L2 penalty ``reg * sum(W * W)`` (the bias is never penalised); its gradient is ``2 * reg * W``.
        A 0-D array must be of the inputs' library and device; a negative or non-finite value raises
        ValueError eagerly and makes the loss and ``dW`` NaN under ``jax.jit`` and Dask.
    b : array, shape (C,), optional
        Bias; when given, its gradient is returned too.
    chunk_size : int, optional
        Rows per block: peak extra memory is O(chunk_size * C + D * C) instead of O(N * C), and the result
        equals the unchunked one to rounding. Default: the whole batch (cache-sized blocks measured no
        faster on NumPy or PyTorch; Dask blocks by its own chunks).
    reduction, sample_weight, class_weight, label_smoothing, ignore_index, xp
        As for :func:`softmax_cross_entropy`. With ``reduction="none"`` the loss is the (N,) vector of
        per-row data losses and ``dW`` is the gradient of their sum plus the penalty.

    Returns
    -------
    loss : array
        0-D for "mean"/"sum": the data loss plus ``reg * sum(W * W)``; (N,) for ``reduction="none"``:
        the per-row data losses, without the penalty (``dW`` still includes it). It and the gradients
        are in the library and device of W and X, in the promoted floating dtype of W, X, b.
    dW : array, shape (D, C)
        ``X.T @ dscores + 2 * reg * W``.
    db : array, shape (C,)
        Only when ``b`` is given: the column sums of ``dscores``.

    Raises
    ------
    ValueError
        W or X not 2-D, X's columns not W's rows, ``b`` not of shape (C,), ``reg`` negative or not
        finite (eagerly), ``chunk_size`` an int < 1, and everything
        :func:`softmax_cross_entropy` refuses.
    TypeError
        ``reg`` neither a number nor a 0-D real array, ``chunk_size`` neither None nor an int (a bool
        included), and everything :func:`softmax_cross_entropy` refuses.

    See Also
    --------
    softmax_cross_entropy : the options, the numerics and the references.
    linear_cross_entropy_and_grad : the same loss for ``X @ W.T + bias`` (W in ``nn.Linear``'s layout),
        with dX too; this function runs on its kernel.

    Examples
    --------
    >>> import numpy as np, softdist
    >>> W = np.zeros((3, 2))
    >>> X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> loss, dW = softdist.softmax_loss(W, X, np.array([0, 1]), reg=0.1)
    >>> round(float(loss), 4)
    0.6931
    >>> dW
    array([[-0.25,  0.25],
           [ 0.25, -0.25],
           [ 0.  ,  0.  ]])

    A gradient-descent step of a softmax classifier with a bias:

    >>> b = np.zeros(2)
    >>> loss, dW, db = softdist.softmax_loss(W, X, np.array([0, 1]), b=b)
    >>> W, b = W - 0.5 * dW, b - 0.5 * db
    >>> bool(softdist.softmax_loss(W, X, np.array([0, 1]), b=b)[0] < loss)
    True
    """
    options = _loss_options(reduction, sample_weight, class_weight, label_smoothing, ignore_index)
    named = {"W": W, "X": X, "b": b}
    others = {"y": y, "sample_weight": sample_weight, "class_weight": class_weight}
    xp = namespace_of(named | others | {"reg": reg if is_array_api_obj(reg) else None}, xp)
    check_known_shapes(named | others)
    check_matrix("W", W, what="(n_features, n_classes)")
    check_matrix("X", X, what="(n_samples, n_features)")
    n, n_features = X.shape
    d, n_classes = W.shape
    if n_features != d:
        raise ValueError(
            f"X has {n_features} features (shape {tuple(X.shape)}) but W has {d} rows (shape "
            f"{tuple(W.shape)}); W must have shape (n_features, n_classes)"
        )
    if b is not None:
        check_vector("b", b, n_classes, "(one bias per class, C = W.shape[1])")
    _check_reg(reg, xp)
    if chunk_size is not None:
        if not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool):
            raise TypeError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    y = widened_labels(y, xp) if y.ndim == 1 else y
    plan = _plan(named, y, n=n, n_classes=n_classes, xp=xp, **options)
    has_reg = not (isinstance(reg, numbers.Real) and reg == 0)
    rows = max(1, min(chunk_size or n, n))
    return _run(
        _linear_core, (W, X, y, b, sample_weight, class_weight, reg), xp,
        plan=plan, has_reg=has_reg, chunk_rows=rows,
    )  # fmt: skip
