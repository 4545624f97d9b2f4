"""PyTorch: torch.topk, the in-place CPU kernels (``_cpu``) outside autograd recording and torch.func
transforms, and the free CUDA memory as the default working memory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from .. import _config
from .._agnostic import linear as _linear
from .._agnostic import neighbors as _neighbors
from .._agnostic import softmax as _softmax
from ._cpu import EagerCPUKnnHooks, EagerCPUWorkspace, cpu_workers, eager_cpu_block, single_threaded_products
from ._default import Backend, scattering_kernel


def is_torch_transformed(arrays: list[Any]) -> bool:
    """True inside torch.func transforms (vmap, grad, jacrev...): values may be batched or abstract, so
    no Python branching on them and no in-place writes."""
    import torch

    return any(torch._C._functorch.is_functorch_wrapped_tensor(a) for a in arrays if a is not None)


def eager_cpu_fast_path_applies(arrays: list[Any]) -> bool:
    """PyTorch on the CPU while no autograd graph is recorded through us (in-place ops would break it)
    and outside torch.func transforms."""
    import torch

    present = [a for a in arrays if a is not None]
    recording = torch.is_grad_enabled() and any(a.requires_grad for a in present)
    return (
        not recording
        and not is_torch_transformed(present)
        and all(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in present)
    )


# Why: a kNN sub-tile keeps the entries D[i, j] <= limit[i], 0.1-1 % of them after the first tiles. In
# torch both steps of the plain way are slow per entry on the CPU: comparing into a bool tensor is an
# unvectorised loop (512 x 512 float32, one thread: 0.29-0.43 ms; NumPy 0.08-0.12 ms) and torch.nonzero
# costs ~3.5 ns per entry whatever the dtype (~1 ms; NumPy 0.05 ms). So the comparison runs on the
# minima of groups of 64 columns (a vectorised reduction; NaN counts as a hit), the hit groups are
# compared in full into their float dtype (vectorised), summed by octet (a small product with a 0/1
# block matrix: torch's reductions over 8 entries are slow), and nonzero runs only on the octet sums and
# the hit octets. Same indices, same order (tests/test_backend_paths.py).
def octet_blocks(dtype: Any) -> Any:
    """The (64, 8) matrix that sums a group of 64 flags by octet."""
    import torch

    return (torch.arange(64)[:, None] // 8 == torch.arange(8)[None, :]).to(dtype)


def torch_kept_positions(D: Any, limit: Any, blocks: Any | None = None) -> Any:
    """``torch.nonzero((D <= limit).reshape(-1))[:, 0]`` for a contiguous (rows, w) CPU tensor ``D`` and
    a (rows, 1) ``limit`` (``blocks``: :func:`octet_blocks` of their dtype)."""
    import torch

    w = D.shape[1]
    groups = w // 64
    main = torch.zeros((0,), dtype=torch.int64)
    if groups:
        G = D[:, : groups * 64].unflatten(1, (groups, 64))
        (hit,) = torch.nonzero(torch.gt(G.amin(2), limit).logical_not_().view(-1), as_tuple=True)
        if w == groups * 64:  # whole rows of groups: hit is the group's number in D.view(-1, 64)
            H = torch.index_select(D.view(-1, 64), 0, hit)
            bound = torch.index_select(limit.expand(-1, groups).reshape(-1), 0, hit)
            first = hit * 64  # each hit group's first flat position
        else:
            row = torch.div(hit, groups, rounding_mode="floor")
            H = G[row, hit - row * groups]
            bound = torch.index_select(limit[:, 0], 0, row)
            first = row * w + (hit - row * groups) * 64
        flags = torch.empty_like(H)
        torch.le(H, bound[:, None], out=flags)
        blocks = octet_blocks(D.dtype) if blocks is None else blocks
        (octet,) = torch.nonzero(torch.mm(flags, blocks).view(-1), as_tuple=True)
        (inside,) = torch.nonzero(torch.index_select(flags.view(-1, 8), 0, octet).view(-1), as_tuple=True)
        at = torch.index_select(octet, 0, inside >> 3) * 8 + (inside & 7)  # flat position in H
        main = torch.index_select(first, 0, at >> 6) + (at & 63)
    if w == groups * 64:
        return main
    tail_rows, tail_cols = torch.nonzero(D[:, groups * 64 :] <= limit, as_tuple=True)
    tail = tail_rows * w + tail_cols + groups * 64
    return torch.sort(torch.cat([main, tail])).values if groups else tail


def torch_knn_screen(Qa: Any, width: int) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``screen`` for :func:`softdist._agnostic.neighbors.knn_pruned` on torch (CPU): one reused product
    buffer per query tile (see _cpu.knn_screen), kept entries by :func:`torch_kept_positions`."""
    import torch

    rows = Qa.shape[0]
    values = torch.empty((rows * width,), dtype=Qa.dtype, device=Qa.device)
    blocks = octet_blocks(Qa.dtype)

    def sub_tile(Xs: Any, limit: Any) -> tuple[Any, Any]:
        D = values[: rows * Xs.shape[1]]
        torch.mm(Qa, Xs, out=D.view(rows, Xs.shape[1]))
        flat = torch_kept_positions(D.view(rows, Xs.shape[1]), limit, blocks)
        return flat, torch.index_select(D, 0, flat)

    return sub_tile


# Why: array_api_compat's torch ``take`` first maps negative indices (torch.lt, add and where over the
# index array: three more passes per call, and the pruned search takes ~50 times per query tile); its
# indices are never negative. knn 20000^2 x 64 float32, 2 threads: 1.465 -> 1.404 s (medians of 3);
# 20000 all-equal rows, whose first pool update takes every entry of a sub-tile: 6.2 -> 3.3 s. Same
# values (tests/test_backend_paths.py).
def index_select_namespace(xp: Any) -> Any:
    """``xp`` (array_api_compat.torch) with ``take`` as torch.index_select, for non-negative indices."""
    import types

    import torch

    def take(x: Any, indices: Any, /, *, axis: int | None = None) -> Any:
        return torch.index_select(x, 0 if axis is None else axis, indices)

    namespace = types.ModuleType(xp.__name__)
    namespace.__dict__.update(vars(xp))
    namespace.take = take  # type: ignore[attr-defined]
    return namespace


# Why: torch.isfinite on the CPU is ~40x NumPy's (50000 x 64 float32: 22 ms against 0.6 ms, and the
# rows' all() another 26 ms), a third of torch's kNN setup. X - X is +0 where X is finite and NaN
# elsewhere, and a row's sum of those is NaN exactly when one is: two vectorised passes (~3 ms). Same
# values (tests/test_backend_paths.py).
def torch_finite_rows(A: Any, *, xp: Any) -> Any:
    """``xp.all(xp.isfinite(A), axis=1)`` for a 2-D torch tensor."""
    import torch

    return torch.sum(A - A, dim=1) == 0


# Why: the search's setup (finite rows, scale, mean, augmented operands: elementwise passes and reductions
# over the whole of Q and X) ran on torch's two OpenMP threads, whose barriers a busy machine turns into
# waits: 50000 x 64 float32 on 2 shared cores, 620-635 ms against 68-81 ms with one thread (NumPy, whose
# ufuncs are single-threaded: 30-70 ms). The query tiles already run a thread per core with one-thread
# products (knn_tile_map). Same operations: the same bits.
def knn_pruned_context(xp: Any) -> contextlib.AbstractContextManager[Any]:
    """On more than one core: one intra-op thread through the whole pruned search."""
    if cpu_workers() > 1:
        return single_threaded_products(xp)
    return contextlib.nullcontext()


class TorchBackend(EagerCPUKnnHooks, Backend):
    name = "torch"

    def values_readable(self, arrays: Iterable[Any]) -> bool:
        return not is_torch_transformed(list(arrays))

    def check_label_dtype(self, labels: Any) -> None:
        import torch

        if labels.dtype == torch.uint64:  # no lossless widening, no torch comparisons
            raise TypeError("labels of dtype torch.uint64 are not supported (torch cannot compare them); "
                            "convert them to torch.int64")  # fmt: skip

    def default_working_memory(self, x: Any, *, cpu_default: int) -> int:
        if x.device.type == "cuda":
            import torch

            return int(torch.cuda.mem_get_info(x.device)[0] // _config.GPU_FREE_MEMORY_DIVISOR)
        return cpu_default

    # Why: top-k selection is the other big cost after the distance tiles; torch.topk beats
    # array-api-extra's generic argpartition, and treats NaN as the largest value (NaN last).
    def select_smallest(self, D: Any, count: int, *, xp: Any) -> Any:
        import torch

        return torch.topk(D, count, dim=1, largest=False, sorted=False).indices

    # On the CPU outside torch.func transforms; knn (below) hands it detached tensors only, as the
    # pruned search writes into buffers (matmul out=), which autograd refuses.
    def knn_pruning_applies(self, x: Any) -> bool:
        return x.device.type == "cpu" and not is_torch_transformed([x])

    def knn_finite_rows(self, xp: Any) -> Any:
        return torch_finite_rows

    # Why: while autograd records, the pruned search cannot run (it writes into buffers), and the tiled
    # search's per-tile torch.topk keeps arbitrary indices among more than 2k exact ties (50 all-equal
    # rows, k = 3: 31, 32, 33 where no_grad gives 1, 2, 3). On the CPU the indices come from the pruned
    # search on detached tensors, and the distances from the tiled search's own differentiable exact
    # kernel at those indices: the no-grad call's indices and bits (tests/test_knn_autograd.py). When
    # autograd does not record, the search gets detached tensors too: its query tiles run on worker
    # threads, where torch.no_grad (thread-local) does not reach, and its in-place kernels raised on
    # tensors that require grad.
    def knn(
        self, Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
        sqdist: Callable[..., Any], dtype: Any, index_dtype: Any, xp: Any,
    ) -> tuple[Any, Any]:  # fmt: skip
        import torch

        options = {"k": k, "exclude_self": exclude_self, "tile_rows": tile_rows, "tile_cols": tile_cols,
                   "sqdist": sqdist, "dtype": dtype, "index_dtype": index_dtype, "xp": xp}  # fmt: skip
        recording = torch.is_grad_enabled() and (Q.requires_grad or X.requires_grad)
        on_cpu = Q.device.type == "cpu" and X.device.type == "cpu"
        if is_torch_transformed([Q, X]) or (recording and not on_cpu):
            return super().knn(Q, X, **options)
        Qd = Q.detach()
        if not recording:
            return super().knn(Qd, Qd if X is Q else X.detach(), **options)
        with torch.no_grad():
            _, index = super().knn(Qd, Qd if X is Q else X.detach(), **options)
        return _neighbors.exact_sqdist(Q, X, index, xp=xp), index

    def knn_screen(self, xp: Any) -> Any:
        return torch_knn_screen

    def knn_namespace(self, xp: Any) -> Any:
        return index_select_namespace(xp)

    def knn_pruned_context(self, xp: Any) -> contextlib.AbstractContextManager[Any]:
        return knn_pruned_context(xp)

    # Why: per-call overhead (see _config.KNN_TORCH_SUBTILE_ENTRIES)
    def knn_subtile_entries(self, xp: Any) -> int:
        return _config.KNN_TORCH_SUBTILE_ENTRIES

    # The in-place CPU kernel where it applies (see _cpu.eager_cpu_block); the scatter elsewhere.
    def softmax_kernel(self, arrays: list[Any]) -> _softmax.Kernel:
        if eager_cpu_fast_path_applies(arrays):
            return eager_cpu_block
        if is_torch_transformed(arrays):
            return _softmax.block_loss_and_grad  # no in-place scatter on vmap-batched tensors
        return scattering_kernel

    def linear_workspace(
        self, X: Any, W: Any, b: Any | None, *, chunk_rows: int, work: Any, want_dX: bool, xp: Any
    ) -> _linear.Workspace:
        if eager_cpu_fast_path_applies([X, W, b]):
            return EagerCPUWorkspace(X, W, b, chunk_rows=chunk_rows, work=work, want_dX=want_dX, xp=xp)
        return super().linear_workspace(X, W, b, chunk_rows=chunk_rows, work=work, want_dX=want_dX, xp=xp)
