"""The fused linear cross-entropy head, written once against the array API standard.

``logits = X @ W.T + bias`` is never formed whole: rows are processed in chunks. Each chunk's scores go
through the same block kernel as ``softmax_cross_entropy`` (see ``softmax.py``: the per-row coefficients
carry every option), then

    dX_c = G_c @ W,    dW += G_c.T @ X_c,    dbias += sum(G_c)

so peak extra memory is one chunk of scores, whatever N is. Two more options act on the chunk's scores:

    softcap s:  z -> s * tanh(z / s) before the softmax; G is multiplied by 1 - tanh(z / s)**2.
    z_loss λ:   loss_i += λ w_i lse_i**2 with w_i the row's weight (RowTerms.weight), and its gradient
                2 λ w_i lse_i softmax(z_i) is added to G (one more chunk-sized array while z_loss > 0).

Half-precision inputs: the matrix products run in the input dtype, the softmax in ``work`` (float32), and
dW and dbias are accumulated in ``work`` across chunks and rounded once at the end.
"""

from __future__ import annotations

from typing import Any

from .._lib._compat import device
from .softmax import Kernel, RowTerms, column_sum, times


class Workspace:
    """Where one call's scores are computed and its gradients accumulated (standard operations only).

    Backends subclass it to reuse buffers and write in place (``softdist._backends``).
    """

    def __init__(
        self, X: Any, W: Any, b: Any | None, *, work: Any, want_dX: bool, tree: bool, xp: Any
    ) -> None:
        self.X, self.W, self.b, self.work, self.want_dX, self.tree, self.xp = X, W, b, work, want_dX, tree, xp
        self.bw = None if b is None else xp.astype(b, work, copy=False)
        self.dX: list[Any] = []
        self.dW: list[Any] = []
        self.db: list[Any] = []

    def scores(self, Xc: Any, *, fresh: bool = False) -> Any:
        """Xc @ W.T + b in the working dtype (``fresh``: never a reused buffer)."""
        xp = self.xp
        z = xp.astype(Xc @ xp.matrix_transpose(self.W), self.work, copy=False)
        return z if self.bw is None else z + self.bw

    def add(self, start: int, stop: int, Xc: Any, G: Any) -> None:
        """Take the gradient G (rows start:stop, working dtype) of the chunk's scores."""
        xp = self.xp
        Gd = xp.astype(G, self.W.dtype, copy=False)  # the products run in the input dtype
        if self.want_dX:
            self.dX.append(Gd @ self.W)
        # Narrow G (more rows than classes): (Xc.T @ G).T, as OpenBLAS (behind NumPy and
        # array-api-strict) runs G.T @ Xc 4-6x slower there; wide G: G.T @ Xc, whose result adds
        # without a strided pass (see softdist._backends._cpu).
        if Gd.shape[0] > Gd.shape[1]:
            self._accumulate(self.dW, xp.matrix_transpose(xp.matrix_transpose(Xc) @ Gd))
        else:
            self._accumulate(self.dW, xp.matrix_transpose(Gd) @ Xc)
        if self.b is not None:
            self._accumulate(self.db, column_sum(G, xp=xp))

    def _accumulate(self, parts: list[Any], x: Any) -> None:
        # In place after the first chunk (JAX rebinds): `total = total + x.astype(work)` held two more
        # (C, D) float32 arrays per chunk, 8.6 GiB beyond the inputs for bfloat16 at N=8192, D=4096,
        # C=128256 on an H200 (benchmarks/gpu.sh). A half-precision product is widened by the addition.
        if self.tree or not parts:
            parts.append(self.xp.astype(x, self.work, copy=False))
        else:
            parts[0] += x

    def result(self, n: int) -> tuple[Any | None, Any, Any | None]:
        """(dX, dW, db): dW and db in the working dtype, summed pairwise in tree mode (Dask)."""
        xp, W = self.xp, self.W
        dX = None
        if self.want_dX:
            if self.dX:
                dX = self.dX[0] if len(self.dX) == 1 else xp.concat(self.dX)
            else:
                dX = xp.zeros((n, W.shape[1]), dtype=W.dtype, device=device(W))
        dW = _tree_sum(self.dW, xp=xp)
        if dW is None:
            dW = xp.zeros(W.shape, dtype=self.work, device=device(W))
        db = None
        if self.b is not None:
            db = _tree_sum(self.db, xp=xp)
            if db is None:
                db = xp.zeros(self.b.shape, dtype=self.work, device=device(W))
        return dX, dW, db


def _tree_sum(parts: list[Any], *, xp: Any) -> Any | None:
    while len(parts) > 1:
        pairs = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0] if parts else None


def row_logsumexp(z: Any, *, xp: Any) -> Any:
    """log(sum(exp(z_i))) per row, shifted by the row maximum; 0 for rows that are all -inf."""
    m = xp.max(z, axis=1)
    dead = m == -xp.inf
    m = xp.where(dead, 0.0, m)
    lse = m + xp.log(xp.sum(xp.exp(z - m[:, None]), axis=1))
    return xp.where(dead, 0.0, lse)


def linear_head(
    X: Any,
    W: Any,
    terms: RowTerms,
    workspace: Workspace,
    *,
    chunk_rows: int,
    want_grad: bool,
    z_loss: float,
    softcap: float | None,
    kernel: Kernel,
    xp: Any,
) -> tuple[Any, Any | None, Any | None, Any | None]:
    """Per-row losses (N,) and, when ``want_grad``, (dX, dW, db) of their sum (dW, db in working dtype).

    X (N, D) and W (C, D) share one floating dtype; ``terms`` holds the per-row coefficients.
    """
    n = X.shape[0]
    losses = []
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        Xc = X[start:stop, ...]
        rows = terms.rows(start, stop)
        z = workspace.scores(Xc)
        t = None
        if softcap is not None:
            t = xp.tanh(z / softcap)
            z = softcap * t

        def recompute(idx: Any, Xc: Any = Xc) -> Any:
            zr = workspace.scores(xp.take(Xc, idx, axis=0), fresh=True)
            return zr if softcap is None else softcap * xp.tanh(zr / softcap)

        z_term = None
        if z_loss > 0:  # before the kernel, which may overwrite z with G
            lse = row_logsumexp(z, xp=xp)
            z_term = times(rows.weight, z_loss * (lse * lse), xp=xp)
            if want_grad:
                softmax = xp.exp(z - lse[:, None])
                z_grad = times(rows.weight, (2 * z_loss) * lse, xp=xp)[:, None] * softmax
        loss_c, G = kernel(z, rows, want_grad=want_grad, xp=xp, recompute=recompute)
        if z_term is not None:
            loss_c = loss_c + z_term
        if want_grad:
            if z_term is not None:
                G = G + z_grad
            if t is not None:
                G = G * (1.0 - t * t)
            workspace.add(start, stop, Xc, G)
        losses.append(loss_c)
    if not losses:
        losses.append(xp.zeros((0,), dtype=workspace.work, device=device(X)))
    row_loss = losses[0] if len(losses) == 1 else xp.concat(losses)
    if not want_grad:
        return row_loss, None, None, None
    return (row_loss, *workspace.result(n))
