"""Backend-specific paths, all in one place. Each says why it exists and is tested equal to the generic path.

Nothing here imports a backend at module import time: a backend is imported only when the user already
handed us one of its arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from .._agnostic import distances as _generic
from .._agnostic import linear as _linear
from .._agnostic import neighbors as _neighbors
from .._agnostic import softmax as _softmax
from ._compat import (
    array_namespace,
    at,
    device,
    is_cupy_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)


# --- NumPy: build the augmented GEMM operands in place -----------------------------------------------
# Why: NumPy evaluates each elementwise step into a fresh temporary, single-threaded. Writing the centred
# rows straight into the augmented operand saves four (n, d) temporaries: 1.5x -> 1.3x the plain A @ B.T
# at n = m = 4000, d = 256 (softdist bench, pairwise_sqdist). Same arithmetic as
# softdist._agnostic.distances.augmented_operands.
def numpy_augmented_operands(A: Any, B: Any, mean: Any, *, xp: Any) -> tuple[Any, Any, Any, Any]:
    # xp is array_api_compat.numpy, whose ufuncs are NumPy's own (with `out=`): no NumPy import here.
    def augmented(X: Any, scale: float, norms_first: bool) -> tuple[Any, Any]:
        n, d = X.shape
        out = xp.empty((n, d + 2), dtype=X.dtype)
        centred = out[:, :d]
        xp.subtract(X, mean, out=centred)
        norms = xp.einsum("ij,ij->i", centred, centred)
        if scale != 1.0:
            centred *= scale
        out[:, d], out[:, d + 1] = (norms, 1) if norms_first else (1, norms)
        return out, norms

    A_aug, ra = augmented(A, -2.0, True)
    B_aug, rb = augmented(B, 1.0, False)
    return A_aug, B_aug, ra, rb


def is_jax_tracer(x: Any) -> bool:
    """True inside jax.jit / grad / vmap, where values are abstract (array_api_compat calls every JAX
    array lazy, eager ones too)."""
    import jax

    return isinstance(x, jax.core.Tracer)


# --- JAX ----------------------------------------------------------------------------------------------
# Why: the generic refinement needs data-dependent shapes (nonzero), which tracing forbids, and JAX's
# eager mode compiles every operation anew for every new shape (seconds per call). Here the flagged
# entries are found with a static-size nonzero: the first `budget` of them (row-major) are recomputed.
# Under a user's jit/grad/vmap the budget is n + m and the rest keep the centred-expansion value (the
# documented, weaker jit bound). Eagerly, one compiled function runs with budget n + m and, if more
# entries were flagged, once more with a budget that covers them all: the full eager guarantee.
def jax_refine_static(
    D: Any, A: Any, B: Any, ra: Any, rb: Any, *, tau: float, xp: Any, budget: int, counts: list
) -> Any:
    import jax
    import jax.numpy as jnp

    n, m = D.shape
    symmetric = A is B  # the generic caller passes A twice for B=None
    row = jnp.arange(n)[:, None]
    col = jnp.arange(m)[None, :]
    budget = min(budget, n * m)
    count_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)  # int32 unless x64 is enabled

    def flags(D: Any) -> Any:
        flagged = D <= tau * ra[:, None] + tau * rb[None, :]  # <=: overflowed (inf) and underflowed (0) norms
        # B=None: refine the upper triangle only, then mirror it, so the result stays symmetric
        return flagged & (row < col) if symmetric else flagged

    def refine(D: Any) -> tuple[Any, Any]:
        flat_flagged = jnp.reshape(flags(D), (-1,))
        (idx,) = jnp.nonzero(flat_flagged, size=budget, fill_value=0)
        exact = _generic.direct_sqdist_pairs(A, B, idx // m, idx % m, xp=xp)
        flat = jnp.reshape(D, (-1,))
        flat = flat.at[idx].set(jnp.where(flat_flagged[idx], exact, flat[idx]))
        D = jnp.reshape(flat, (n, m))
        return (jnp.where(row < col, D, D.T) if symmetric else D), jnp.sum(flat_flagged, dtype=count_dtype)

    def keep(D: Any) -> tuple[Any, Any]:
        return D, jnp.zeros((), dtype=count_dtype)

    # Well-separated data flags nothing: one fused test skips the static nonzero, whose prefix sum over
    # all n * m entries costs XLA's CPU backend about ten times the matrix product itself.
    D = jnp.maximum(D, 0.0)
    D, count = jax.lax.cond(jnp.any(jnp.any(flags(D), axis=1)), refine, keep, D)
    counts.append(count)
    return D


def _jax_sqdist_with_count(A: Any, B: Any | None, *, xp: Any, budget: int) -> tuple[Any, Any]:
    counts: list = []

    def refine(*args: Any, **kwargs: Any) -> Any:
        return jax_refine_static(*args, **kwargs, budget=budget, counts=counts)

    def set_nonfinite(D: Any, A: Any, B: Any, bad_a: Any, bad_b: Any, *, xp: Any) -> Any:
        # Finite data (the usual case) skips the two indicator products.
        def fix(D: Any) -> Any:
            return _generic.set_nonfinite_static(D, A, B, bad_a, bad_b, xp=xp)

        return jax.lax.cond(jnp.any(bad_a) | jnp.any(bad_b), fix, lambda D: D, D)

    import jax
    import jax.numpy as jnp

    D = _generic.pairwise_sqdist(A, B, xp=xp, refine=refine, set_nonfinite=set_nonfinite, eager=False)
    return D, counts[0]


_JAX_JITTED: dict[bool, Any] = {}


def jax_pairwise_sqdist(A: Any, B: Any | None, *, xp: Any) -> Any:
    n = A.shape[0]
    m = n if B is None else B.shape[0]
    if is_jax_tracer(A) or is_jax_tracer(B):
        return _jax_sqdist_with_count(A, B, xp=xp, budget=n + m)[0]
    import jax

    symmetric = B is None
    if symmetric not in _JAX_JITTED:

        def run(A: Any, B: Any, budget: int) -> tuple[Any, Any]:
            return _jax_sqdist_with_count(A, None if symmetric else B, xp=xp, budget=budget)

        _JAX_JITTED[symmetric] = jax.jit(run, static_argnames="budget")
    jitted = _JAX_JITTED[symmetric]
    B_ = A if symmetric else B
    D, count = jitted(A, B_, budget=n + m)
    if is_jax_tracer(count):  # concrete inputs inside someone's trace (closed-over constants)
        return D
    count = int(count)  # eager-only path: the size of the second pass depends on the data
    if count > n + m:
        D, _ = jitted(A, B_, budget=1 << (count - 1).bit_length())
    return D


@contextlib.contextmanager
def highest_matmul_precision(xp: Any) -> Iterator[None]:
    """Matrix products at full float32 precision: JAX's default on GPUs/TPUs may use TF32 or bfloat16
    passes, which would silently void the accuracy softdist promises. Nothing to do elsewhere."""
    if not is_jax_namespace(xp):
        yield
        return
    import jax

    with jax.default_matmul_precision("highest"):
        yield


_JAX_COMPILED: dict[Any, Any] = {}


def jax_compiled(core: Callable[..., Any], **static: Any) -> Callable[..., Any]:
    """``core`` with its keyword options fixed, compiled once per option set (JAX's eager mode compiles
    every operation for every new shape: one compiled function is 10-100x faster than op by op)."""
    key = (core, tuple(sorted(static.items(), key=lambda kv: kv[0])))
    if key not in _JAX_COMPILED:
        import functools

        import jax

        _JAX_COMPILED[key] = jax.jit(functools.partial(core, **static))
    return _JAX_COMPILED[key]


# --- Dask --------------------------------------------------------------------------------------------
# Why: refinement needs data-dependent shapes, which Dask only has per chunk, and a single (n, m) chunk
# would defeat Dask's purpose. Each output block (i, j) runs the eager generic code on the chunks of A and
# B (features concatenated), centred on the global mean, so blocks are bounded by the input chunks and
# nothing computes until the user asks.
def dask_pairwise_sqdist(A: Any, B: Any | None, *, dtype: Any, xp: Any) -> Any:
    import dask.array as da
    from dask.array.utils import meta_from_array

    symmetric = B is None
    B_ = A if symmetric else B
    scale = _generic.overflow_scale(A, B, xp=xp)
    mean = (
        _generic.column_mean(A * scale, None if symmetric else B * scale, xp=xp, eager=False) / scale
    )  # lazy

    def block(a: Any, b: Any, mu: Any, sc: Any) -> Any:
        return _generic.pairwise_sqdist(a, b, xp=array_namespace(a), mean=mu, scale=sc[0])

    D = da.blockwise(
        block, "ij", A, "ik", B_, "jk", mean, "k", xp.reshape(scale, (1,)), "z",
        concatenate=True, dtype=dtype, meta=meta_from_array(A, ndim=2, dtype=dtype),
    )  # fmt: skip
    if symmetric:
        # Blocks (i, j) and (j, i) are computed separately: average them for exact symmetry, and write
        # the diagonal's exact zeros (a NaN row's own entry would be NaN in its block).
        rows = da.arange(A.shape[0], chunks=(A.chunks[0],))
        D = xp.where(rows[:, None] == rows[None, :], 0.0, _generic.symmetrize(D, xp=xp))
    return D


# --- Softmax cross-entropy: NumPy and PyTorch on the CPU -------------------------------------------------
# Why: the generic kernel makes ~7 passes over the (n, C) scores (max, subtract, exp, sum, scale, one-hot
# mask, select). Here, on scores we own, exp runs in place WITHOUT the max shift, the row sums are a
# matrix-vector product, and the one-hot term is a scatter of n values: 3 passes. Rows where the
# unshifted exponentials could be inaccurate (sum overflowed, underflowed, or any NaN/inf) are recomputed
# by the generic kernel, so the result is the generic one (tests/test_backend_paths.py). The loss uses
# log(sum_k exp(z_k) * exp(-z_y)), as accurate as the shifted form. softmax_loss: the textbook NumPy code
# is 1.22-1.33x the two matrix products, this 1.10-1.17x; PyTorch 1.04x (softdist bench, softmax_loss).
def is_torch_transformed(arrays: list[Any]) -> bool:
    """True inside torch.func transforms (vmap, grad, jacrev...): values may be batched or abstract, so
    no Python branching on them and no in-place writes."""
    import torch

    return any(torch._C._functorch.is_functorch_wrapped_tensor(a) for a in arrays if a is not None)


def eager_cpu_fast_path_applies(arrays: list[Any], *, xp: Any) -> bool:
    """NumPy, or PyTorch on the CPU while no autograd graph is recorded through us (in-place ops would
    break it) and outside torch.func transforms."""
    if is_numpy_namespace(xp):
        return True
    import torch

    present = [a for a in arrays if a is not None]
    recording = torch.is_grad_enabled() and any(a.requires_grad for a in present)
    return (
        not recording
        and not is_torch_transformed(present)
        and all(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in present)
    )


@contextlib.contextmanager
def _quiet(xp: Any) -> Iterator[None]:
    # Overflow and NaN are expected (and repaired) here; NumPy would warn about each.
    if is_numpy_namespace(xp):
        with xp.errstate(all="ignore"):
            yield
    else:
        yield


def scatter_subtract(G: Any, labels: Any, values: Any, *, xp: Any) -> Any:
    """G[i, labels[i]] -= values[i] by scatter (NumPy, PyTorch, CuPy, JAX): n writes instead of a mask
    pass over G. G must be a temporary of ours (modified in place where the library allows)."""
    rows = xp.arange(G.shape[0], device=device(G))
    return at(G, (rows, labels)).subtract(values)


def eager_cpu_block(
    z: Any,
    terms: _softmax.RowTerms,
    *,
    want_grad: bool,
    xp: Any,
    recompute: Callable[[Any], Any] | None = None,
) -> tuple[Any, Any | None]:
    """The generic block kernel's result, computed in place on ``z`` when ``recompute`` is given (the
    scores are ours and can be recomputed for the rows that need repair); else into a new array."""
    if terms.soft is not None or terms.beta is not None:
        return _softmax.block_loss_and_grad(z, terms, want_grad=want_grad, xp=xp, scatter=scatter_subtract)
    n, C = z.shape
    flat = xp.arange(n, device=device(z)) * C + terms.labels
    z_y = xp.take(xp.reshape(z, (-1,)), flat)
    original = z if recompute is None else None
    e = xp.empty(z.shape, dtype=z.dtype, device=device(z)) if recompute is None else z
    with _quiet(xp):
        xp.exp(z, out=e)
        s = e @ xp.ones(C, dtype=z.dtype, device=device(z))
        ratio = s * xp.exp(-z_y)  # sum_k exp(z_k - z_y) >= 1 for a usable row
        # Sums outside [sqrt(tiny), 1/sqrt(tiny)] lost digits to underflow, or would make the scale
        # gamma / s subnormal (exp(88) fits float32, 1/exp(88) does not): the shifted kernel redoes them.
        lowest = xp.finfo(z.dtype).smallest_normal ** 0.5
        usable = (s >= lowest) & (s <= 1 / lowest) & (ratio < xp.inf)  # False for NaN too
        loss = terms.gamma * xp.log(ratio)
        if want_grad:
            e *= (terms.gamma / s)[:, None]
            e_flat = xp.reshape(e, (-1,))
            e_flat[flat] -= terms.alpha
        if not bool(xp.all(usable)):  # eager CPU only: reading this flag costs no device sync
            (bad,) = xp.nonzero(~usable)
            z_bad = recompute(bad) if recompute is not None else xp.take(original, bad, axis=0)
            loss_bad, G_bad = _softmax.block_loss_and_grad(
                z_bad, terms.take(bad, xp), want_grad=want_grad, xp=xp, scatter=scatter_subtract
            )
            loss[bad] = loss_bad
            if want_grad:
                e[bad, ...] = G_bad
    return loss, (e if want_grad else None)


# --- k nearest neighbours ----------------------------------------------------------------------------
# Why: top-k selection is the other big cost after the distance tiles; each library's own selection
# beats array-api-extra's generic argpartition (torch.topk, jax.lax.top_k; NumPy/CuPy argpartition is
# the same routine). Each returns the same column set as the generic path (tests/test_backend_paths.py).
def smallest_selector(xp: Any) -> Callable[[Any, int], Any]:
    """``select(D, count)``: column indices of the ``count`` smallest entries of each row, NaN last."""

    def select(D: Any, count: int) -> Any:
        if count >= D.shape[1]:
            return _neighbors.select_smallest(D, count, xp=xp)
        if is_numpy_namespace(xp) or is_cupy_namespace(xp):  # NaN sorts last in argpartition
            return xp.argpartition(D, count - 1, axis=1)[:, :count]
        if is_torch_namespace(xp):  # topk treats NaN as the largest value
            import torch

            return torch.topk(D, count, dim=1, largest=False, sorted=False).indices
        if is_jax_namespace(xp):
            import jax

            return jax.lax.top_k(-xp.where(xp.isnan(D), xp.inf, D), count)[1]
        return _neighbors.select_smallest(D, count, xp=xp)

    return select


# --- JAX kNN ---------------------------------------------------------------------------------------------
# Why: traced, the generic loop over query tiles unrolls into one copy of the tile program per tile
# (hundreds at 50k queries): minutes of compilation, and a 50k x 50k float32 search under jax.jit ran
# over 10 minutes on 2 CPU cores. lax.map runs one compiled tile body over every query tile instead.
def jax_knn(Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int, sqdist: Any,
            dtype: Any, xp: Any) -> tuple[Any, Any]:  # fmt: skip
    """Same result as the generic static knn; compiled once per shape and option set when eager."""
    options = {"k": k, "exclude_self": exclude_self, "tile_rows": tile_rows, "tile_cols": tile_cols,
               "sqdist": sqdist, "dtype": dtype, "xp": xp}  # fmt: skip
    if is_jax_tracer(Q) or is_jax_tracer(X):
        return _jax_knn_mapped(Q, X, **options)
    return jax_compiled(_jax_knn_mapped, **options)(Q, X)


def _jax_knn_mapped(Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
                    sqdist: Any, dtype: Any, xp: Any) -> tuple[Any, Any]:  # fmt: skip
    import functools

    import jax
    import jax.numpy as jnp

    nq, d = Q.shape
    tiles = -(-nq // tile_rows)
    padded = jnp.concatenate([Q, jnp.zeros((tiles * tile_rows - nq, d), dtype=Q.dtype)])  # rows ignored

    def one_tile(args: tuple[Any, Any]) -> tuple[Any, Any]:
        Qt, q0 = args
        return _neighbors.query_tile_neighbours(
            Qt, X, q0, k=k, exclude_self=exclude_self, tile_cols=tile_cols, xp=xp,
            sqdist=functools.partial(sqdist, dtype=dtype, xp=xp), select=smallest_selector(xp),
        )  # fmt: skip

    starts = jnp.arange(tiles) * tile_rows
    dist, index = jax.lax.map(one_tile, (jnp.reshape(padded, (tiles, tile_rows, d)), starts))
    kept = dist.shape[-1]
    return jnp.reshape(dist, (-1, kept))[:nq], jnp.reshape(index, (-1, kept))[:nq]


def knn_pruning_applies(x: Any, *, xp: Any) -> bool:
    """Pruning (data-dependent shapes, one host read per tile) suits eager CPU backends; GPUs and JAX
    select a static top-k per tile instead (no sync, static shapes)."""
    if is_numpy_namespace(xp):
        return True
    if is_torch_namespace(xp):
        return x.device.type == "cpu" and not is_torch_transformed([x])
    return not (is_jax_namespace(xp) or is_cupy_namespace(xp))


def default_working_memory(x: Any, *, xp: Any, cpu_default: int) -> int:
    """A quarter of the free device memory on a GPU; ``cpu_default`` elsewhere."""
    if is_torch_namespace(xp) and x.device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(x.device)[0] // 4)
    if is_cupy_namespace(xp):
        import cupy

        return int(cupy.cuda.Device().mem_info[0] // 4)
    return cpu_default


# Why: one task per (query chunk, reference chunk) keeps every block bounded by the input chunks; each
# block finds its exact k best (the eager code on NumPy chunks), and the per-block lists are merged
# pairwise, log2(#reference chunks) levels deep: a lazy tree reduction, nothing computes until asked.
def dask_knn(Q: Any, X: Any, *, k: int, exclude_self: bool, index_dtype: Any) -> tuple[Any, Any]:
    import dask.array as da

    Q = Q.rechunk({1: -1})
    X = X.rechunk({1: -1})
    # Global row numbers, chunked like the rows: each block reads its offsets from their first entry.
    q_rows = da.arange(Q.shape[0], chunks=(Q.chunks[0],))
    x_rows = da.arange(X.shape[0], chunks=(X.chunks[0],))
    widths = tuple(min(k, c) for c in X.chunks[0])

    def block(q: Any, x: Any, q0: Any, j0: Any) -> Any:
        xb = array_namespace(q)
        select = smallest_selector(xb)
        q0, j0 = int(q0[0]), int(j0[0])
        if k < x.shape[0]:  # the eager pruned search, placed in the whole problem by the offsets
            dist, index = _neighbors.knn_pruned(
                q, x, k=k, exclude_self=exclude_self, tile_rows=512, tile_cols=8192, xp=xb, select=select,
                operands=numpy_augmented_operands, row_offset=q0, col_offset=j0,
            )  # fmt: skip
        else:  # a block narrower than k: all of it, exactly, sorted (own row last as NaN)

            def sqdist(a: Any, b: Any) -> Any:
                return _generic.pairwise_sqdist(a, b, xp=xb)

            dist, index = _neighbors.tile_neighbours(
                q, x, q0, j0, k=k, exclude_self=exclude_self, xp=xb, sqdist=sqdist, select=select
            )
        # float64 carries both: float32 distances exactly, indices exactly up to 2**53.
        return xb.stack([xb.astype(dist, xb.float64), xb.astype(index, xb.float64)], axis=2)

    pairs = da.blockwise(
        block, "ijz", Q, "if", X, "jf", q_rows, "i", x_rows, "j",
        new_axes={"z": 2}, adjust_chunks={"j": widths}, concatenate=True, dtype="float64",
    )  # fmt: skip
    while pairs.numblocks[1] > 1:
        pairs = _merge_adjacent(pairs, k)
    return pairs[:, :, 0], pairs[:, :, 1].astype(index_dtype)


def _merge_adjacent(pairs: Any, k: int) -> Any:
    sizes = pairs.chunks[1]
    grouped = tuple(sum(sizes[i : i + 2]) for i in range(0, len(sizes), 2))
    merged = tuple(min(k, g) for g in grouped)

    def merge(block: Any) -> Any:
        xb = array_namespace(block)
        dist, index = _neighbors.sorted_smallest(block[..., 0], block[..., 1], k, xp=xb)
        return xb.stack([dist, index], axis=2)

    return pairs.rechunk({1: grouped}).map_blocks(
        merge, chunks=(pairs.chunks[0], merged, (2,)), dtype=pairs.dtype
    )


# --- Linear cross-entropy head: NumPy and PyTorch on the CPU -------------------------------------------
# Why: memory. The generic workspace allocates every chunk's scores, dX rows and a (C, D) product per
# chunk, then concatenates the dX rows and adds the products: at N = 8192, D = 1024, C = 32000 float32
# that is two extra (C, D) arrays (250 MiB) and a second dX on top of the chunk. Here the scores go into
# one reused buffer (the block kernel then works in place on it), dX rows are written straight into the
# result, and dW is accumulated in place (torch: addmm_; NumPy: class blocks of at most 16 MiB through
# one reused buffer, as NumPy has no GEMM that accumulates). Same arithmetic, same order of summation
# over chunks as the generic path (tests/test_backend_paths.py).
class EagerCPUWorkspace(_linear.Workspace):
    def __init__(self, X: Any, W: Any, b: Any | None, *, chunk_rows: int, work: Any, want_dX: bool,
                 xp: Any) -> None:  # fmt: skip
        super().__init__(X, W, b, work=work, want_dX=want_dX, tree=False, xp=xp)
        n, d = X.shape
        c = W.shape[0]
        dev = device(W)
        self.buffer = xp.empty((min(chunk_rows, n), c), dtype=work, device=dev)
        self.dX_out = xp.empty((n, d), dtype=W.dtype, device=dev) if want_dX else None
        self.dW_out: Any = None  # allocated by the first gradient: a loss-only call never holds one
        self.db_out: Any = None
        self.class_block = c
        if is_numpy_namespace(xp):
            self.class_block = max(1, min(c, (16 << 20) // max(1, d * xp.finfo(work).bits // 8)))

    def _allocate(self) -> None:
        xp, (c, d), dev = self.xp, self.W.shape, device(self.W)
        self.dW_out = xp.zeros((c, d), dtype=self.work, device=dev)
        self.db_out = None if self.b is None else xp.zeros((c,), dtype=self.work, device=dev)
        if is_numpy_namespace(xp):
            self.product = xp.empty((self.class_block, d), dtype=self.work, device=dev)

    def scores(self, Xc: Any, *, fresh: bool = False) -> Any:
        if fresh:
            return super().scores(Xc)
        xp = self.xp
        z = self.buffer[: Xc.shape[0], ...]
        if Xc.dtype == self.work:
            xp.matmul(Xc, xp.matrix_transpose(self.W), out=z)
        else:  # half precision: the product in the input dtype, then widened into the buffer
            z[...] = xp.astype(Xc @ xp.matrix_transpose(self.W), self.work)
        if self.bw is not None:
            z += self.bw
        return z

    def add(self, start: int, stop: int, Xc: Any, G: Any) -> None:
        xp = self.xp
        if self.dW_out is None:
            self._allocate()
        Gd = xp.astype(G, self.W.dtype, copy=False)
        if self.dX_out is not None:
            xp.matmul(Gd, self.W, out=self.dX_out[start:stop, ...])
        if is_torch_namespace(xp):
            if Gd.dtype == self.work:
                self.dW_out.addmm_(Gd.T, Xc)
            else:
                self.dW_out += (Gd.T @ Xc).to(self.work)
        else:
            c, k = self.dW_out.shape[0], self.class_block
            for first in range(0, c, k):
                last = min(first + k, c)
                part = self.product[: last - first, ...]
                if Gd.dtype == self.work:
                    xp.matmul(xp.matrix_transpose(Gd[:, first:last]), Xc, out=part)
                else:
                    part[...] = xp.matrix_transpose(Gd[:, first:last]) @ Xc
                self.dW_out[first:last, ...] += part
        if self.db_out is not None:
            self.db_out += _softmax.column_sum(G, xp=xp)

    def result(self, n: int) -> tuple[Any | None, Any, Any | None]:
        if self.dW_out is None:  # no rows
            self._allocate()
        return self.dX_out, self.dW_out, self.db_out


def linear_workspace(X: Any, W: Any, b: Any | None, *, chunk_rows: int, work: Any, want_dX: bool,
                     xp: Any) -> _linear.Workspace:  # fmt: skip
    """The eager CPU workspace where it applies, else the generic one (Dask: tree-summed dW)."""
    if (is_numpy_namespace(xp) or is_torch_namespace(xp)) and eager_cpu_fast_path_applies([X, W, b], xp=xp):
        return EagerCPUWorkspace(X, W, b, chunk_rows=chunk_rows, work=work, want_dX=want_dX, xp=xp)
    return _linear.Workspace(X, W, b, work=work, want_dX=want_dX, tree=is_dask_namespace(xp), xp=xp)


# --- Linear cross-entropy head: JAX ----------------------------------------------------------------------
# Why: memory. Traced, the generic Python loop over chunks unrolls, and XLA is free to schedule every
# chunk's logits at once: jax.grad at N = 1024, C = 4096, 128-row chunks compiled to 18 MiB of temporaries
# (the whole logits are 16 MiB). lax.scan runs one chunk body at a time (rows padded with zero weights,
# which contribute exactly 0), so the temporaries are one chunk's. The body is the generic one.
def jax_linear_head(
    X: Any, W: Any, terms: _softmax.RowTerms, workspace: _linear.Workspace, *,
    chunk_rows: int, want_grad: bool, xp: Any, **options: Any,
) -> tuple[Any, ...]:  # fmt: skip
    import jax
    import jax.numpy as jnp

    n, d = X.shape
    chunks = -(-n // chunk_rows)
    if chunks <= 1:
        return _linear.linear_head(
            X, W, terms, workspace, chunk_rows=chunk_rows, want_grad=want_grad, xp=xp, **options
        )
    pad = chunks * chunk_rows

    def blocked(a: Any) -> Any:
        a = jnp.concatenate([a, jnp.zeros((pad - n, *a.shape[1:]), dtype=a.dtype)])
        return jnp.reshape(a, (chunks, chunk_rows, *a.shape[1:]))

    names = [k for k in ("alpha", "gamma", "labels", "beta", "soft", "zero_rows", "weight")
             if getattr(terms, k) is not None]  # fmt: skip
    b, work, want_dX = workspace.b, workspace.work, workspace.want_dX

    def body(carry: Any, xs: Any) -> tuple[Any, Any]:
        Xc, fields = xs
        rows = dataclasses.replace(terms, **dict(zip(names, fields, strict=True)))
        ws = _linear.Workspace(Xc, W, b, work=work, want_dX=want_dX, tree=False, xp=xp)
        loss_c, dX_c, dW_c, db_c = _linear.linear_head(
            Xc, W, rows, ws, chunk_rows=chunk_rows, want_grad=want_grad, xp=xp, **options
        )
        if not want_grad:
            return carry, (loss_c, None)
        return (carry[0] + dW_c, None if b is None else carry[1] + db_c), (loss_c, dX_c)

    init = (jnp.zeros(W.shape, dtype=work), None if b is None else jnp.zeros(b.shape, dtype=work))
    xs = (blocked(X), [blocked(getattr(terms, k)) for k in names])
    (dW, db), (loss, dX) = jax.lax.scan(body, init if want_grad else (None, None), xs)
    loss = jnp.reshape(loss, (-1,))[:n]
    if not want_grad:
        return loss, None, None, None
    dX = None if dX is None else jnp.reshape(dX, (-1, d))[:n]
    return loss, dX, dW, db


def linear_head_runner(xp: Any) -> Callable[..., tuple[Any, ...]]:
    """The chunk loop: lax.scan on JAX, the generic Python loop elsewhere."""
    return jax_linear_head if is_jax_namespace(xp) else _linear.linear_head
