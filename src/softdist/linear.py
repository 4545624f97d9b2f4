"""The fused linear cross-entropy head: ``cross_entropy(X @ W.T + bias, labels)`` and its gradients for
X, W and bias, without ever holding the (N, C) logits."""

from __future__ import annotations

import math
import numbers
from typing import Any

from . import softmax as _softmax
from ._backends import backend_for
from ._lib._compat import device
from ._lib._scalars import widened_labels
from ._lib._validation import check_known_shapes, check_matrix, check_vector, namespace_of

__all__ = ["linear_cross_entropy", "linear_cross_entropy_and_grad"]


def _check_head_options(z_loss: Any, softcap: Any, chunk_size: Any) -> None:
    if not isinstance(z_loss, numbers.Real) or isinstance(z_loss, bool) or not 0 <= z_loss < math.inf:
        raise ValueError(f"z_loss must be a finite number >= 0; got {z_loss!r}")
    if softcap is not None and (
        not isinstance(softcap, numbers.Real) or isinstance(softcap, bool) or not 0 < softcap < math.inf
    ):
        raise ValueError(f"softcap must be None or a finite number > 0; got {softcap!r}")
    if isinstance(chunk_size, str) and chunk_size == "auto":
        pass
    elif not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool):
        raise TypeError(f'chunk_size must be "auto" or a positive int; got {chunk_size!r}')
    elif chunk_size < 1:
        raise ValueError(f'chunk_size must be "auto" or a positive int; got {chunk_size!r}')


def _head(
    X: Any, W: Any, labels: Any, *, bias: Any, reduction: str, sample_weight: Any, class_weight: Any,
    label_smoothing: float, ignore_index: Any, z_loss: float, softcap: Any, chunk_size: Any, xp: Any,
    want_grad: bool,
) -> tuple[Any, ...]:  # fmt: skip
    named = {"X": X, "W": W, "bias": bias}
    others = {"labels": labels, "sample_weight": sample_weight, "class_weight": class_weight}
    xp = namespace_of(named | others, xp)
    check_known_shapes(named | others)
    check_matrix("X", X, what="(n_samples, n_features)")
    check_matrix("W", W, what="(n_classes, n_features)")
    n, d = X.shape
    n_classes, d_w = W.shape
    if d != d_w:
        raise ValueError(
            f"X has {d} features (shape {tuple(X.shape)}) but W has {d_w} columns (shape {tuple(W.shape)}); "
            "W must have shape (n_classes, n_features), the layout of nn.Linear.weight"
        )
    if bias is not None:
        check_vector("bias", bias, n_classes, "(one bias per class, C = W.shape[0])")
    _check_head_options(z_loss, softcap, chunk_size)
    options = _softmax._loss_options(reduction, sample_weight, class_weight, label_smoothing, ignore_index)
    labels = widened_labels(labels, xp) if labels.ndim == 1 else labels  # as softmax_loss does
    plan = _softmax._plan(named, labels, n=n, n_classes=n_classes, xp=xp, **options)
    X, labels, sample_weight, rows = backend_for(xp).linear_chunks(
        X, labels, sample_weight, n=n, n_classes=n_classes, chunk_size=chunk_size, work=plan.work, xp=xp
    )
    static = {"plan": plan, "want_grad": want_grad, "want_dX": want_grad, "z_loss": float(z_loss),
              "softcap": None if softcap is None else float(softcap), "chunk_rows": rows}  # fmt: skip
    out = _softmax._run(_softmax.head_core, (X, W, labels, bias, sample_weight, class_weight), xp, **static)
    if not want_grad:
        return out
    loss, dX, dW, db = out
    if n == 0:
        dX = xp.zeros(X.shape, dtype=plan.dtype, device=device(X))
    return (loss, dX, dW) if bias is None else (loss, dX, dW, db)


_PARAMETERS = """
    Parameters
    ----------
    X : array, shape (N, D)
        Hidden states (the input of the linear layer); any array API library (NumPy, PyTorch, JAX, CuPy,
        Dask, ...). Real floating dtype; float16/bfloat16 run the matrix products in their own dtype and
        the softmax in float32; integer and boolean features compute in the default floating dtype.
    W : array, shape (C, D)
        The linear layer's weight, in the layout of ``torch.nn.Linear.weight``; same library and device.
    labels : array, shape (N,) or (N, C)
        Integer class indices in [0, C) (or ``ignore_index``), or soft targets (rows of class
        probabilities, which need not sum to 1).
    bias : array, shape (C,), optional
        The linear layer's bias: ``logits = X @ W.T + bias``.
    reduction : {"mean", "sum", "none"}
        As for :func:`softdist.softmax_cross_entropy`: "mean" divides by the total effective weight of the
        counted rows (N, or the sum of ``sample_weight``, for soft targets); a batch with nothing to count
        has loss 0 and zero gradients. "none" gives the (N,) per-row losses.
    sample_weight : array, shape (N,), optional
        Per-row weights.
    class_weight : array, shape (C,), optional
        Per-class weights (PyTorch's ``weight``).
    label_smoothing : float in [0, 1]
        Mixes the targets with the uniform distribution, as PyTorch does.
    ignore_index : int, optional
        Rows with this label get loss 0 and gradient 0 and do not count in the mean. Default: none.
    z_loss : float >= 0
        Adds ``z_loss * lse_i**2`` to each counted row's loss (``lse_i`` the log-sum-exp of row i's
        (capped) logits), with the same row weight and normaliser as its cross-entropy term (PaLM's
        auxiliary loss).
    softcap : float > 0, optional
        Replaces the logits by ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2).
    chunk_size : "auto" or int
        Rows of logits held at a time. "auto": as many as fit in 128 MiB (on a GPU at most a quarter of
        the free memory, and 1 GiB), but at least 256 rows, where the matrix products run at full speed.
        An int is honoured exactly. On Dask the row blocks of X are the chunks (an int rechunks them).
    xp : namespace, optional
        Inferred from the inputs when omitted.
"""
_RAISES = """
    Raises
    ------
    ValueError
        Mismatched shapes (D of X and W; N of X and labels or ``sample_weight``; C of W and ``bias``,
        ``class_weight`` or soft targets), labels outside [0, C) on eager backends, an unknown reduction,
        ``label_smoothing`` outside [0, 1], ``z_loss < 0``, ``softcap <= 0``, ``chunk_size < 1``, or arrays
        on two devices.
    TypeError
        Arrays from two libraries, non-array inputs, complex dtypes, or ``chunk_size`` that is neither
        "auto" nor an int.
"""
_REFERENCES = """
    References
    ----------
    .. [1] E. Wijmans, B. Huval, A. Hertzberg, V. Koltun and P. Krähenbühl, "Cut Your Losses in
       Large-Vocabulary Language Models", ICLR 2025 (a cross-entropy head that never materialises the
       logits).
    .. [2] P.-L. Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024, and its
       fused linear cross-entropy: chunks of rows whose gradients are computed in the forward pass,
       as here.
    .. [3] A. Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", JMLR 2023 (z-loss).
    .. [4] Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024 (logit
       soft-capping).
    .. [5] ``torch.nn.functional.linear_cross_entropy`` (PyTorch 2.13), whose layout and conventions this
       follows.
"""


def linear_cross_entropy(
    X: Any,
    W: Any,
    labels: Any,
    /,
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
    xp: Any | None = None,
) -> Any:
    return _head(
        X, W, labels, bias=bias, reduction=reduction, sample_weight=sample_weight, class_weight=class_weight,
        label_smoothing=label_smoothing, ignore_index=ignore_index, z_loss=z_loss, softcap=softcap,
        chunk_size=chunk_size, xp=xp, want_grad=False,
    )[0]  # fmt: skip


def linear_cross_entropy_and_grad(
    X: Any,
    W: Any,
    labels: Any,
    /,
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
    xp: Any | None = None,
) -> tuple[Any, ...]:
    return _head(
        X, W, labels, bias=bias, reduction=reduction, sample_weight=sample_weight, class_weight=class_weight,
        label_smoothing=label_smoothing, ignore_index=ignore_index, z_loss=z_loss, softcap=softcap,
        chunk_size=chunk_size, xp=xp, want_grad=True,
    )  # fmt: skip


linear_cross_entropy.__doc__ = f"""Softmax cross-entropy of the logits ``X @ W.T + bias`` against ``labels``,
    computed in chunks of rows: the (N, C) logits are never held whole.

    Loss only: one matrix product per chunk and no gradient work.
    {_PARAMETERS}
    Returns
    -------
    array
        0-D for "mean"/"sum", shape (N,) for "none"; in the inputs' library, device and floating dtype.
        Invalid labels raise on eager backends; under ``jax.jit`` and Dask their rows are NaN.
    {_RAISES}
    See Also
    --------
    linear_cross_entropy_and_grad : the same loss with its gradients.
    softdist.softmax_cross_entropy : the same loss on precomputed logits.
    {_REFERENCES}
    Examples
    --------
    >>> import numpy as np
    >>> import softdist
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> W = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    >>> labels = np.array([0, 1, 2])
    >>> loss = softdist.linear_cross_entropy(X, W, labels, chunk_size=2)
    >>> bool(np.isclose(loss, softdist.softmax_cross_entropy(X @ W.T, labels)))
    True
    """

linear_cross_entropy_and_grad.__doc__ = f"""The loss of :func:`linear_cross_entropy` and its gradients
    with respect to X, W and bias, in chunks of rows: peak extra memory is one chunk of logits.

    For a chunk of rows with logits gradient G (see :func:`softdist.softmax_cross_entropy_and_grad`):
    ``dX = G @ W``, ``dW += G.T @ X``, ``dbias += sum(G)``. dW and dbias accumulate in float32 (or the
    input's dtype, if wider) across chunks and are rounded once at the end. Deterministic: no atomics,
    the same summation order on every run.
    {_PARAMETERS}
    Returns
    -------
    (loss, dX, dW) or (loss, dX, dW, dbias)
        ``dbias`` only when ``bias`` is given. dX has shape (N, D), dW (C, D), dbias (C,), all in the
        inputs' library, device and floating dtype. With ``reduction="none"`` the loss has shape (N,),
        row i of dX is the gradient of loss i, and dW and dbias are the gradients of the losses' sum.
    {_RAISES}
    See Also
    --------
    linear_cross_entropy : the loss alone (a third of the work).
    softdist.torch.linear_cross_entropy, softdist.jax.linear_cross_entropy : autodiff integrations.

    Notes
    -----
    For each chunk c of rows the logits ``Z_c = X_c @ W.T + bias`` go through the softmax kernel of
    :func:`softdist.softmax_cross_entropy` (the shifted log-sum-exp), which turns them in place into
    the logits' gradient ``G_c``; then ``dX_c = G_c @ W``, ``dW += G_c.T @ X_c`` and
    ``dbias += sum(G_c, axis=0)``, and the chunk is dropped. ``softcap`` s maps ``z -> s tanh(z / s)``
    and multiplies ``G`` by ``1 - tanh(z / s)**2``; ``z_loss`` adds ``2 z_loss w_i lse_i softmax(z_i)``
    to ``G``. The work is the three matrix products of the unfused head, ``X W^T``, ``G W`` and
    ``G^T X`` (the loss alone: the first), and the memory one chunk of logits instead of N x C [1]_ [2]_.
    {_REFERENCES}
    Examples
    --------
    >>> import numpy as np
    >>> import softdist
    >>> rng = np.random.default_rng(0)
    >>> X, W, b = rng.normal(size=(6, 4)), rng.normal(size=(5, 4)), rng.normal(size=5)
    >>> labels = np.array([0, 1, 2, 3, 4, 0])
    >>> loss, dX, dW, db = softdist.linear_cross_entropy_and_grad(X, W, labels, bias=b, chunk_size=4)
    >>> dX.shape, dW.shape, db.shape
    ((6, 4), (5, 4), (5,))
    >>> loss_g, G = softdist.softmax_cross_entropy_and_grad(X @ W.T + b, labels)
    >>> bool(np.allclose(dX, G @ W) and np.allclose(dW, G.T @ X) and np.allclose(db, G.sum(0)))
    True
    """
