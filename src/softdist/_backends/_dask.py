"""Dask: lazy block-wise distances and kNN (refinement needs data-dependent shapes, which Dask only has
per chunk), its row blocks as the linear head's chunks, and a tree-summed dW. Nothing computes until the
user asks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from .. import _config
from .._agnostic import distances as _generic
from .._agnostic import linear as _linear
from .._agnostic import neighbors as _neighbors
from .._lib._compat import array_namespace
from ._cpu import single_threaded_products
from ._default import Backend
from ._numpy import NumpyBackend

# The chunks of a Dask array are NumPy arrays: each block runs NumPy's eager paths.
_CHUNKS = NumpyBackend()


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


# Why: one task per (query chunk, reference group) keeps every block bounded; each block finds its exact
# k best (the eager pruned search on NumPy chunks), and the per-block lists are merged pairwise,
# log2(#groups) levels deep: a lazy tree reduction, nothing computes until asked. Adjacent reference
# chunks are grouped up to _config.DASK_KNN_REFERENCE_BYTES: each block pays a fixed setup (centring,
# augmented operands, a sampled bound) and its pruning bound comes from its own references only, so
# 4 x 4 blocks of 10000^2 x 64 float32 did 2.4x the single-threaded work of the whole search; one reference
# group per query chunk does the whole search's work, split by query rows.
def dask_knn(Q: Any, X: Any, *, k: int, exclude_self: bool, index_dtype: Any) -> tuple[Any, Any]:
    import dask.array as da

    Q = Q.rechunk({1: -1})
    X = X.rechunk({1: -1})
    row_bytes = max(1, X.shape[1] * X.dtype.itemsize)
    X = X.rechunk({0: reference_groups(X.chunks[0], max(1, _config.DASK_KNN_REFERENCE_BYTES // row_bytes))})
    # Global row numbers, chunked like the rows: each block reads its offsets from their first entry.
    q_rows = da.arange(Q.shape[0], chunks=(Q.chunks[0],))
    x_rows = da.arange(X.shape[0], chunks=(X.chunks[0],))
    widths = tuple(min(k, c) for c in X.chunks[0])

    def block(q: Any, x: Any, q0: Any, j0: Any) -> Any:
        xb = array_namespace(q)
        select = _CHUNKS.smallest_selector(xb)
        q0, j0 = int(q0[0]), int(j0[0])
        if k < x.shape[0]:  # the eager pruned search, placed in the whole problem by the offsets
            # Blocks already run one per scheduler thread: single-threaded products in each (2-thread
            # BLAS in two blocks at once measured several times slower on 2 busy cores).
            with single_threaded_products(xb):
                dist, index = _neighbors.knn_pruned(
                    q, x, k=k, exclude_self=exclude_self, tile_rows=_config.DASK_KNN_TILE_ROWS,
                    tile_cols=_config.DASK_KNN_TILE_COLUMNS, xp=xb, select=select,
                    operands=_CHUNKS.augmented_operands, row_offset=q0, col_offset=j0,
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


def reference_groups(chunks: tuple[int, ...], rows: int) -> tuple[int, ...]:
    """Adjacent chunk sizes summed while a group stays within ``rows`` (a larger chunk stays alone,
    never split): the reference blocks of :func:`dask_knn`."""
    groups: list[int] = []
    for size in chunks:
        if groups and groups[-1] + size <= rows:
            groups[-1] += size
        else:
            groups.append(size)
    return tuple(groups)


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


# --- Dask: the softmax losses, one task per row block ------------------------------------------------------
# Why: op by op, the generic kernel builds ~30 lazy operations, each one task per chunk and each
# materialising an (n, C) block between tasks: Dask's logits cross-entropy + grad took 1.7x the textbook
# formula's time (20000-100000 x 100, float32, two row chunks), softmax_loss 1.5-1.6x. Here each row block
# is one task running the eager code (the NumPy fast kernel on NumPy chunks) on the whole block, and
# the mean's denominator is a tree sum of per-block totals computed first. Same arithmetic as the
# generic path (tests/test_backend_paths.py); nothing computes until the user asks.
def dask_row_blocks(
    fn: Callable[..., tuple[Any, ...]],
    row_args: list[Any | None],
    whole_args: list[Any | None],
    *,
    outputs: list[tuple[str, tuple[int, ...], Any]],
    xp: Any,
) -> list[Any]:
    """``fn(*row_blocks, *whole)`` once per row block of ``row_args[0]``, lazily.

    ``row_args`` are chunked along their first axis like the first of them (a 2-D one's column chunks
    are joined in the task); ``whole_args`` reach every task whole; None and ints stay as they are.
    ``fn`` returns one array per entry of ``outputs``, ``(how, trailing_shape, dtype)``: ``how``
    "rows" concatenates the blocks' arrays (block rows x trailing_shape), "sum" adds them
    (trailing_shape; a pairwise tree).
    """
    import dask
    import dask.array as da
    from dask.array.utils import meta_from_array

    first = row_args[0]
    rows = first.chunks[0]

    def blocks(x: Any) -> list[Any]:
        if x is None:
            return [None] * len(rows)
        # Column chunks stay as they are, and the task joins them (_one_thread): a Dask rechunk would
        # copy the same bytes in extra tasks.
        x = x.rechunk({0: rows} | {i: -1 for i in range(2, x.ndim)})
        # One Delayed per block: keys, no compute. Unoptimised: compute() optimises the whole graph
        # once (optimising here too cost ~1 ms per input at every call).
        grid = x.to_delayed(optimize_graph=False).reshape(len(rows), -1)
        return [list(parts) if len(parts) > 1 else parts[0] for parts in grid]

    def whole(x: Any) -> Any:
        if x is None or isinstance(x, int):
            return x
        return (x.rechunk(-1) if x.ndim else x).to_delayed(optimize_graph=False).reshape(-1)[0]

    per_row = [blocks(first)] + [blocks(x) for x in row_args[1:]]
    shared = [whole(x) for x in whole_args]
    run = dask.delayed(functools.partial(_one_thread, fn), pure=True, nout=len(outputs))
    results: list[list[Any]] = [[] for _ in outputs]
    for i, n_rows in enumerate(rows):
        parts = run(*[b[i] for b in per_row], *shared)
        for j, (how, tail, dtype) in enumerate(outputs):
            shape = ((n_rows,) if how == "rows" else ()) + tuple(tail)
            meta = meta_from_array(first, ndim=len(shape), dtype=dtype)
            results[j].append(da.from_delayed(parts[j], shape=shape, dtype=dtype, meta=meta))
    out = []
    for (how, _, _), parts in zip(outputs, results, strict=True):
        if how == "rows":
            out.append(parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0))
        else:
            out.append(_linear._tree_sum(parts, xp=xp))
    return out


# Blocks run one per scheduler thread: each with single-threaded products, as in dask_knn (2-thread BLAS
# in two blocks at once: softmax_loss 20000 x 512 x 100 float32 in 8 row chunks took 1.0-1.6x the textbook
# formula on Dask, single-threaded 0.83x; 2 busy cores).
# A row block that arrives in column chunks is joined here, in the task.
def _one_thread(fn: Callable[..., tuple[Any, ...]], *args: Any) -> tuple[Any, ...]:
    args = tuple(array_namespace(*a).concat(a, axis=1) if isinstance(a, list) else a for a in args)
    with single_threaded_products(array_namespace(args[0])):
        return fn(*args)


def dask_softmax_rows(
    block: Callable[..., tuple[Any, ...]],
    weight_total: Callable[..., Any] | int | None,
    row_args: list[Any | None],
    whole_args: list[Any | None],
    *,
    class_weight: Any | None,
    outputs: list[tuple[str, tuple[int, ...], Any]],
    work: Any,
    xp: Any,
) -> list[Any]:
    """``block(*row_blocks, *whole, class_weight, total)`` per row block (:func:`dask_row_blocks`):
    row_args are (scores input, labels, sample weight); ``total`` is the mean's denominator over all
    rows: ``weight_total`` itself where it is an int, else the tree sum of ``weight_total(labels,
    sample_weight, class_weight)`` over the row blocks (None without ``weight_total``)."""
    total = weight_total if isinstance(weight_total, int) else None
    if callable(weight_total):

        def partial_total(*args: Any) -> tuple[Any]:
            return (weight_total(*args),)

        (total,) = dask_row_blocks(
            partial_total, row_args[1:], [class_weight], outputs=[("sum", (), work)], xp=xp
        )
    return dask_row_blocks(block, row_args, [*whole_args, class_weight, total], outputs=outputs, xp=xp)


class DaskBackend(Backend):
    name = "dask"
    # The softmax losses run one task per row block (dask_softmax_rows).
    row_blocks = staticmethod(dask_softmax_rows)

    def values_readable(self, arrays: Iterable[Any]) -> bool:
        return False  # reading a value would compute the graph

    def unique_inverse(self, y: Any, *, xp: Any) -> tuple[Any, Any]:
        # The class count is data-dependent (a nan-sized lazy array breaks every array sized by it):
        # computed at fit, as scikit-learn's fit computes it. The indices stay lazy, of y's chunks.
        classes, inverse = xp.unique_inverse(y)
        return xp.asarray(classes.compute()), inverse

    def in_memory(self, x: Any) -> Any:
        # Each minibatch step of a lazy fit would grow the parameters' graph for the whole fit: the
        # estimators train on the computed data, as scikit-learn fits in memory.
        return x.compute()

    def pairwise_sqdist(self, A: Any, B: Any | None, *, dtype: Any, xp: Any) -> Any:
        return dask_pairwise_sqdist(A, B, dtype=dtype, xp=xp)

    def knn(
        self, Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
        sqdist: Any, dtype: Any, index_dtype: Any, xp: Any,
    ) -> tuple[Any, Any]:  # fmt: skip
        return dask_knn(Q, X, k=k, exclude_self=exclude_self, index_dtype=index_dtype)

    # Dask: its row blocks are the chunks (each task holds one block of logits; dW is a tree sum).
    def linear_chunks(
        self, X: Any, labels: Any, sample_weight: Any, *, n: Any, n_classes: int, chunk_size: Any,
        work: Any, xp: Any,
    ) -> tuple[Any, Any, Any, int]:  # fmt: skip
        if chunk_size != "auto":
            X = X.rechunk({0: chunk_size, 1: -1})
        # Row-wise inputs follow X's row blocks: blocks that differ would be aligned into slivers.
        rows_of_x = {0: X.chunks[0]}
        labels = labels.rechunk(rows_of_x | ({1: -1} if labels.ndim == 2 else {}))
        if sample_weight is not None:
            sample_weight = sample_weight.rechunk(rows_of_x)
        rows = max(1, n) if isinstance(n, int) else 1
        return X, labels, sample_weight, rows

    def linear_workspace(
        self, X: Any, W: Any, b: Any | None, *, chunk_rows: int, work: Any, want_dX: bool, xp: Any
    ) -> _linear.Workspace:
        return _linear.Workspace(X, W, b, work=work, want_dX=want_dX, tree=True, xp=xp)
