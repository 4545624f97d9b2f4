"""NumPy and PyTorch on the CPU: the in-place softmax block kernel and the linear head's in-place
workspace, for scores and buffers we own."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import _config
from .._agnostic import distances as _distances
from .._agnostic import linear as _linear
from .._agnostic import neighbors as _neighbors
from .._agnostic import softmax as _softmax
from .._lib._compat import device, is_numpy_namespace, is_torch_namespace
from ._default import scatter_subtract


# --- Softmax cross-entropy: NumPy and PyTorch on the CPU -------------------------------------------------
# Why: the generic kernel makes ~7 passes over the (n, C) scores (max, subtract, exp, sum, scale, one-hot
# mask, select). Here, on scores we own, exp runs in place WITHOUT the max shift, the row sums are a
# matrix-vector product, and the one-hot term is a scatter of n values: 3 passes. Rows where the
# unshifted exponentials could be inaccurate (sum overflowed, underflowed, or any NaN/inf) are recomputed
# by the generic kernel, so the result is the generic one (tests/test_backend_paths.py). The loss uses
# log1p(sum_{k != y} exp(z_k) * exp(-z_y)), as accurate as the shifted form and never negative.
# softmax_loss: the textbook NumPy code is 1.22-1.33x the two matrix products, this 1.10-1.17x;
# PyTorch 1.04x (softdist bench, softmax_loss).
@contextlib.contextmanager
def _quiet(xp: Any) -> Iterator[None]:
    # Overflow and NaN are expected (and repaired) here; NumPy would warn about each.
    if is_numpy_namespace(xp):
        with xp.errstate(all="ignore"):
            yield
    else:
        yield


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
        # NumPy: the row sums by einsum, not a matrix-vector product: OpenBLAS runs that on two threads
        # with a barrier, which on a busy 2-core machine took 15.6 ms for 20000 x 100 float32 against
        # 0.33 ms on one thread; einsum costs the one-thread product's CPU time (0.5-1.6 ms, 2-5M entries).
        if is_numpy_namespace(xp):
            s = xp.einsum("ij->i", e)
        else:
            s = e @ xp.ones(C, dtype=z.dtype, device=device(z))
        # loss = log(1 + sum_{k != y} exp(z_k - z_y)), not log(s * exp(-z_y)): exp(z_y) * exp(-z_y) is
        # not exactly 1 in floating point, so that ratio could fall below 1 and the loss below 0 (-1.2e-7
        # for float32 [17, 0], label 0). s - exp(z_y) is >= 0 (a rounded sum of non-negative terms is at
        # least each term), exactly 0 when C = 1, so the loss is >= 0 and log1p keeps small losses exact.
        e_y = xp.take(xp.reshape(e, (-1,)), flat)
        rest = xp.maximum(s - e_y, 0.0) * xp.exp(-z_y)  # sum_{k != y} exp(z_k - z_y)
        # Sums outside [sqrt(tiny), 1/sqrt(tiny)] lost digits to underflow, or would make the scale
        # gamma / s subnormal (exp(88) fits float32, 1/exp(88) does not): the shifted kernel redoes them.
        lowest = xp.finfo(z.dtype).smallest_normal ** 0.5
        usable = (s >= lowest) & (s <= 1 / lowest) & (rest < xp.inf)  # False for NaN too
        loss = terms.gamma * xp.log1p(rest)
        if want_grad:
            e *= (terms.gamma / s)[:, None]
            e_flat = xp.reshape(e, (-1,))
            # p_y - alpha from e_y / s (exactly 1 when C = 1: gradient exactly 0), not e_y * (gamma / s)
            e_flat[flat] = terms.gamma * (e_y / s) - terms.alpha
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


class EagerCPUKnnHooks:
    """The pruned kNN search's CPU pieces, shared by the NumPy and torch backends."""

    # Query tiles on a thread per core, single-threaded products (see knn_tile_map).
    def knn_tile_map(self, xp: Any) -> _neighbors.TileMap | None:
        return knn_tile_map(xp)

    # Each query tile's sub-tiles reuse one product and one mask buffer (see knn_screen).
    def knn_screen(self, xp: Any) -> _neighbors.Screen | None:
        return knn_screen(xp)

    # The candidates' exact distances in reused buffers (see exact_sqdist_rows): the same bits.
    def knn_exact_rows(self, xp: Any) -> Any:
        return exact_sqdist_rows


# --- Linear cross-entropy head: NumPy and PyTorch on the CPU -------------------------------------------
# Why: memory. The generic workspace allocates every chunk's scores, dX rows and a (C, D) product per
# chunk, then concatenates the dX rows and adds the products: at N = 8192, D = 1024, C = 32000 float32
# that is two extra (C, D) arrays (250 MiB) and a second dX on top of the chunk. Here the scores go into
# one reused buffer (the block kernel then works in place on it), dX rows are written straight into the
# result, and dW is accumulated in place (torch: addmm_; NumPy: class blocks of at most 16 MiB,
# _config.NUMPY_CLASS_BLOCK_BYTES, through one reused buffer, as NumPy has no GEMM that accumulates).
# Same arithmetic, same order of summation over chunks as the generic path (tests/test_backend_paths.py).
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
        # Set by threaded_linear_head for its parts, whose products run on one thread: G.T @ Xc then
        # for narrow G too (see add()).
        self.single_threaded = False
        self.class_block = c
        if is_numpy_namespace(xp):
            block_bytes = _config.NUMPY_CLASS_BLOCK_BYTES
            self.class_block = max(1, min(c, block_bytes // max(1, d * xp.finfo(work).bits // 8)))

    def _allocate(self) -> None:
        xp, (c, d), dev = self.xp, self.W.shape, device(self.W)
        self.dW_out = xp.zeros((c, d), dtype=self.work, device=dev)
        self.db_out = None if self.b is None else xp.zeros((c,), dtype=self.work, device=dev)
        if is_numpy_namespace(xp):  # dW's class block, as (k, d) or transposed (d, k): see add()
            self.product = xp.empty((self.class_block * d,), dtype=self.work, device=dev)

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
            (c, d), k = self.dW_out.shape, self.class_block
            # Narrow G (more rows than classes): Xc.T @ G, as OpenBLAS (NumPy's) runs G.T @ Xc 4-6x
            # slower there (50000 x 256 x 100 float32: 740 ms against 128 ms). Wide G (the classifier
            # head, C = 32000 against 1024-row chunks): G.T @ Xc, as the transposed class blocks and
            # their strided addition took the head from 0.99x to 1.57x the three GEMMs (N=2048, D=1024).
            # On one thread (threaded_linear_head's parts) G.T @ Xc is the faster one for narrow G too,
            # and lands in dW's layout: float64 20000 x 512 x 10 14.6 ms against 31.0 ms, x 100 82 against
            # 109, 50000 x 256 x 100 110 against 138; float32 within 5%. (The 4-6x above is OpenBLAS on
            # two threads, whose G.T @ Xc took 2-7x Xc.T @ G on the busy 2-core machine.)
            narrow = Gd.shape[0] > c and not self.single_threaded
            for first in range(0, c, k):
                last = min(first + k, c)
                shape = (d, last - first) if narrow else (last - first, d)
                part = xp.reshape(self.product[: shape[0] * shape[1]], shape)
                a, b = (xp.matrix_transpose(Xc), Gd[:, first:last]) if narrow else (
                    xp.matrix_transpose(Gd[:, first:last]), Xc)  # fmt: skip
                if Gd.dtype == self.work:
                    xp.matmul(a, b, out=part)
                else:
                    part[...] = a @ b
                self.dW_out[first:last, ...] += xp.matrix_transpose(part) if narrow else part
        if self.db_out is not None:
            self.db_out += _softmax.column_sum(G, xp=xp)

    def result(self, n: int) -> tuple[Any | None, Any, Any | None]:
        if self.dW_out is None:  # no rows
            self._allocate()
        return self.dX_out, self.dW_out, self.db_out


_SINGLE_THREAD_LOCK = threading.Lock()


# --- Linear head rows on a thread per core: NumPy --------------------------------------------------------
# Why: the head's softmax passes (exp, row sums, scaling) are single-threaded NumPy ufuncs between two
# two-thread BLAS products, so one core idles through them. Rows split into one contiguous part per core,
# each run on its own thread with a single-threaded product (NumPy releases the GIL in BLAS and ufuncs),
# keep both cores busy through every pass. softmax_loss, float32, 2 cores shared with other jobs (load
# 6-8), median of interleaved runs against the two products: 50000 x 256 x 100 1.36x -> 1.16x, 20000 x
# 512 x 100 1.24x -> 1.14x; linear_cross_entropy 4096 x 256 x 8000 1.17x -> 1.10x the three products.
# Each part keeps its own dW and db, added in part order at the end (deterministic; the generic path's
# answer to rounding: tests/test_backend_paths.py), so it is done only while those copies are small next
# to the score buffer (_config.CPU_HEAD_THREAD_MEMORY_SHARE). Each part's chunk is the chunk divided by
# the parts: the score buffers together hold what one did, and at most _config.CPU_HEAD_CACHE_BYTES of X
# (a chunk stays in cache from the forward product to the backward one). A caller already on a worker
# thread (Dask's blocks, a user's pool) has its parallelism: there, the rows run in order as before.
# With cache-sized chunks and G.T @ Xc on each thread (EagerCPUWorkspace.add), softmax_loss does 0.80-1.17x
# the CPU work of the two one-thread products (thread CPU time, medians of 11, issue 15). The quiet 2-core
# VM, medians of 15 interleaved calls each started with the process's other threads idle, x the two
# products, threaded / in order: float32 20000 x 512 x 10 1.04 / 1.15, x 100 1.08 / 1.19, 50000 x 256 x
# 100 1.12 / 1.32; float64 0.80 / 1.13, 0.89 / 1.13, 0.91 / 1.22; 8192 x 128 x 100 1.47 / 1.71, but
# 4096 x 256 x 10 2.03 / 1.81 and 2048 x 512 x 10 2.20 / 1.79: hence at least 4096 rows a part
# (_config.CPU_HEAD_THREAD_MIN_ROWS). The cost it does not avoid: OpenBLAS's worker thread spins for
# ~0.1 s after each two-thread call (56-75 ms of CPU during a 0.2 s sleep after one product), taking a
# core from these threads, so a call within ~0.1 s of the caller's own two-thread product took 1.44-1.74x
# (in order: 1.03-1.25x). The path is NOT chosen by watching for that: the two paths add dW in different
# orders, and a choice made by timing would give different bits from run to run (a break test saw three
# final weights from one 20-step loop). It depends only on the shapes, the cores, BLAS's thread limit
# (threadpoolctl.threadpool_limits, OPENBLAS_NUM_THREADS: a limit of 1 keeps the rows in order) and
# whether the caller is the main thread.
def cpu_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def blas_threads() -> int:
    """The thread count BLAS (NumPy's) is set to now: threadpoolctl limits and OPENBLAS_NUM_THREADS
    included (~5 us); the cores when no BLAS library is found."""
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl is a core dependency
        return cpu_workers()
    counts = [lib.num_threads for lib in controller.select(user_api="blas").lib_controllers]
    return min(counts, default=cpu_workers())


def _threads_may_start() -> bool:
    """False in an atexit handler, where no thread may start: the caller then runs its parts itself,
    with the same one-thread products (the same bits)."""
    return threading.main_thread().is_alive()


# [(process id, threads, executor)]: kept, as starting threads on each call cost 1-10 ms on a busy machine
_HEAD_POOL: list[Any] = []


def _head_pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """A long-lived pool of at least ``threads`` threads (made anew in a forked child)."""
    with _SINGLE_THREAD_LOCK:
        if _HEAD_POOL and (_HEAD_POOL[0][0] != os.getpid() or _HEAD_POOL[0][1] < threads):
            _HEAD_POOL.clear()
        if not _HEAD_POOL:
            pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="softdist-head")
            _HEAD_POOL.append((os.getpid(), threads, pool))
        return _HEAD_POOL[0][2]


def threaded_linear_head(
    X: Any, W: Any, terms: _softmax.RowTerms, workspace: _linear.Workspace, *, chunk_rows: int,
    want_grad: bool, xp: Any, **options: Any,
) -> tuple[Any, Any | None, Any | None, Any | None]:  # fmt: skip
    """:func:`softdist._agnostic.linear.linear_head`, its rows in one part per core on threads."""
    n, d = X.shape
    chunk = min(chunk_rows, n)
    min_rows = _config.CPU_HEAD_THREAD_MIN_ROWS
    parts = 1 if min_rows is None else min(cpu_workers(), n // max(1, min_rows))
    if parts >= 2:
        parts = min(parts, blas_threads())  # the caller's limit (threadpoolctl, OPENBLAS_NUM_THREADS)
    small_copies = (parts - 1) * d * _config.CPU_HEAD_THREAD_MEMORY_SHARE <= chunk
    on_main = threading.current_thread() is threading.main_thread()
    if parts < 2 or not small_copies or not isinstance(workspace, EagerCPUWorkspace) or not on_main:
        return _linear.linear_head(
            X, W, terms, workspace, chunk_rows=chunk_rows, want_grad=want_grad, xp=xp, **options
        )
    bounds = [n * i // parts for i in range(parts + 1)]
    part_chunk = -(-chunk // parts)
    cache = _config.CPU_HEAD_CACHE_BYTES  # each part's chunk of X stays in cache between its products
    if cache is not None:
        itemsize = xp.finfo(X.dtype).bits // 8
        part_chunk = min(part_chunk, max(_config.LINEAR_MIN_AUTO_ROWS, cache // (d * itemsize)))
    dX = None
    if want_grad and workspace.want_dX:
        dX = xp.empty((n, d), dtype=W.dtype, device=device(W))

    def run(i: int) -> tuple[Any, Any | None, Any | None, Any | None]:
        start, stop = bounds[i], bounds[i + 1]
        Xp = X[start:stop, ...]
        ws = EagerCPUWorkspace(Xp, W, workspace.b, chunk_rows=part_chunk, work=workspace.work,
                               want_dX=workspace.want_dX, xp=xp)  # fmt: skip
        ws.single_threaded = True
        if dX is not None:
            ws.dX_out = dX[start:stop, ...]  # written in place: no concatenation
        return _linear.linear_head(
            Xp, W, terms.rows(start, stop), ws, chunk_rows=part_chunk, want_grad=want_grad, xp=xp, **options
        )

    with single_threaded_products(xp) as limited:
        if not limited:
            return _linear.linear_head(
                X, W, terms, workspace, chunk_rows=chunk_rows, want_grad=want_grad, xp=xp, **options
            )
        pool = _head_pool(parts - 1) if _threads_may_start() else None
        futures = [pool.submit(run, i) for i in range(1, parts)] if pool is not None else []
        try:
            first = run(0)  # the calling thread takes the first part
        finally:
            concurrent.futures.wait(futures)  # none still running once BLAS gets its threads back
        rest = [f.result() for f in futures] if pool is not None else [run(i) for i in range(1, parts)]
        results = [first, *rest]
    row_loss = xp.concat([r[0] for r in results])
    if not want_grad:
        return row_loss, None, None, None
    dW, db = results[0][2], results[0][3]
    for r in results[1:]:  # in part order: the same bits on every run
        dW += r[2]
        if db is not None:
            db += r[3]
    return row_loss, dX, dW, db


# --- k nearest neighbours: NumPy and PyTorch on the CPU ----------------------------------------------------
# Why: a kNN query tile is a product followed by single-threaded comparison, compaction and exact
# distances. Query tiles are independent and NumPy / torch release the GIL in both, so one thread per core
# runs whole tiles side by side, each with a single-threaded product (scikit-learn's brute kNN does the
# same): no BLAS barrier per small product, which a busy machine turns into waits. 10000 x 10000 x 64
# float32 on 2 shared cores: 3.3 s with 2-thread BLAS products one tile at a time, 1.0 s so (the products
# alone, 2-thread BLAS: 1.1 s). Same tiles, same arithmetic: the generic path's bits.
_BLAS_CONTROLLER: list[Any] = []


def _blas_controller() -> Any | None:
    """The process's threadpoolctl controller (finding the loaded BLAS libraries takes ~0.4 ms: once);
    None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a core dependency
        return None
    if not _BLAS_CONTROLLER:
        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0]


_SINGLE_THREAD_STATE: dict[str, dict[str, Any]] = {
    kind: {"users": 0, "restore": None} for kind in ("torch", "blas")
}


@contextlib.contextmanager
def single_threaded_products(xp: Any) -> Iterator[bool]:
    """BLAS (NumPy) or torch's intra-op pool at one thread while any caller is inside; restored when the
    last leaves (Dask blocks on threads enter and leave in any order). Yields False where that cannot
    be done (threadpoolctl missing): the caller then stays on one thread itself."""
    if is_torch_namespace(xp):
        import torch

        def limit() -> Any:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            return lambda: torch.set_num_threads(before)

    else:
        controller = _blas_controller()
        if controller is None:  # pragma: no cover - threadpoolctl is a core dependency
            yield False
            return

        def limit() -> Any:
            restore = _as_blas_controller(
                lambda: controller.limit(limits=1, user_api="blas").restore_original_limits
            )
            return lambda: _as_blas_controller(restore)

    state = _SINGLE_THREAD_STATE["torch" if is_torch_namespace(xp) else "blas"]
    with _SINGLE_THREAD_LOCK:
        if state["users"] == 0:
            state["restore"] = limit()
        state["users"] += 1
    try:
        yield True
    finally:
        with _SINGLE_THREAD_LOCK:
            state["users"] -= 1
            if state["users"] == 0:
                state["restore"]()
                state["restore"] = None


def _as_blas_controller(fn: Callable[[], Any]) -> Any:
    """``fn()`` (a threadpoolctl limit or restore) with the calling thread in control of OpenBLAS.

    threadpoolctl >= 3.8 lets only the first thread that changed a pthreads OpenBLAS's thread count
    change it again (others are silently ignored) and never releases that thread for a bare
    ``limit()``. Here the limit is set by whichever thread enters first and restored by whichever
    leaves last (Dask's worker threads, the caller's thread): each takes control for its call and
    leaves none. Without this a Dask block's BLAS kept both threads, two blocks at once oversubscribed
    the cores and knn on the threaded scheduler took 10x the synchronous one (20000^2 x 64, 2 cores).
    """
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # pragma: no cover - threadpoolctl < 3.8 has no controlling thread
        return fn()
    release = getattr(OpenBLASController, "clear_controlling_thread", None)
    if release is None:  # pragma: no cover - threadpoolctl < 3.8
        return fn()
    release(force=True)
    try:
        return fn()
    finally:
        release(force=True)


def _one_thread_here(xp: Any) -> None:
    """torch's CPU thread count is per calling thread under OpenMP: a new worker thread starts with
    every core, so it is set again there (the caller's setting is restored by the last user)."""
    if is_torch_namespace(xp):
        import torch

        torch.set_num_threads(1)


def knn_tile_map(xp: Any) -> _neighbors.TileMap | None:
    """``tile_map`` for :func:`softdist._agnostic.neighbors.knn_pruned`: query tiles on a thread per core
    with single-threaded products; None (in order) on one core."""
    workers = cpu_workers()
    if workers <= 1:
        return None

    def tile_map(fn: Callable[[int], Any], starts: list[int]) -> list[Any]:
        if len(starts) < 2:
            return [fn(q0) for q0 in starts]
        with single_threaded_products(xp) as limited:
            if not limited or not _threads_may_start():
                return [fn(q0) for q0 in starts]
            with concurrent.futures.ThreadPoolExecutor(
                min(workers, len(starts)), initializer=_one_thread_here, initargs=(xp,)
            ) as pool:
                return list(pool.map(fn, starts))

    return tile_map


# Why: a sub-tile's product and mask are fresh arrays otherwise, and allocating them costs page faults
# each time (large blocks go back to the OS on free): a 512 x 512 float64 torch addition took 2.5 ms
# with a new output against 0.22 ms into an existing one (NumPy 0.41 against 0.19 ms). One product
# buffer and one mask buffer per query tile, reused by every sub-tile. The product is the same GEMM.
# torch overrides it: no mask buffer, the kept entries found group by group (_torch.torch_knn_screen).
def knn_screen(xp: Any) -> _neighbors.Screen:
    """``screen`` for :func:`softdist._agnostic.neighbors.knn_pruned` on NumPy (CPU)."""

    def screen(Qa: Any, width: int) -> Callable[[Any, Any], tuple[Any, Any]]:
        rows = Qa.shape[0]
        values = xp.empty((rows * width,), dtype=Qa.dtype, device=device(Qa))
        flags = xp.empty((rows * width,), dtype=xp.bool, device=device(Qa))

        def sub_tile(Xs: Any, limit: Any) -> tuple[Any, Any]:
            size = rows * Xs.shape[1]
            D = values[:size]
            xp.matmul(Qa, Xs, out=xp.reshape(D, (rows, Xs.shape[1])))
            # NumPy's ufunc (array_api_compat re-exports it)
            xp.less_equal(
                xp.reshape(D, (rows, Xs.shape[1])), limit, out=xp.reshape(flags[:size], (rows, Xs.shape[1]))
            )
            (flat,) = xp.nonzero(flags[:size])  # 1-D: NumPy's 2-D nonzero is ~10x slower per entry
            return flat, xp.take(D, flat)

        return sub_tile

    return screen


# Why: the exact distances of the kNN candidates are ~35 elementwise passes over (pairs, d), each into a
# fresh temporary. On the CPU (NumPy, torch) that was a fifth to a third of kNN's time (512 x 512 float64
# torch: 2.5 ms per new-output addition against 0.22 ms in place, page faults). Here the same operations
# in the same order run into six reused buffers (``out=``): the generic kernel's bits
# (tests/test_backend_paths.py). Finite data within range only (the kNN candidates: finite rows,
# ``in_range``); everything else goes to the generic kernel.
def exact_sqdist_rows(a: Any, b: Any, *, xp: Any, finite: bool = False, in_range: bool = False,
                      eager: bool = False) -> Any:  # fmt: skip
    """:func:`softdist._agnostic.distances.exact_sqdist_rows` for rows ``a``, ``b`` we own (taken copies:
    they are overwritten)."""
    P, d = a.shape
    if not (finite and in_range and eager) or P == 0 or d < 2:
        return _distances.exact_sqdist_rows(a, b, xp=xp, finite=finite, in_range=in_range, eager=eager)
    if is_torch_namespace(xp):
        import torch

        add, sub, mul, neg, absolute = torch.add, torch.sub, torch.mul, torch.neg, torch.abs
    else:  # NumPy's ufuncs (array_api_compat re-exports them)
        add, sub, mul, neg, absolute = xp.add, xp.subtract, xp.multiply, xp.negative, xp.abs
    _, _, too_small, up = _distances._power_of_two_scales(a.dtype, d, xp=xp)
    split = 2.0 ** ((round(-math.log2(xp.finfo(a.dtype).eps)) + 2) // 2) + 1.0
    # (d, P) copies: the pairwise tree then adds contiguous row blocks instead of strided column blocks
    if is_torch_namespace(xp):
        aT, bT = a.T.contiguous(), b.T.contiguous()
    else:
        aT, bT = xp.ascontiguousarray(a.T), xp.ascontiguousarray(b.T)
    a, b = aT, bT
    # TwoSum(a, -b): s + e
    neg(b, out=b)
    s = add(a, b)
    t1 = sub(s, a)  # bb
    e = sub(s, t1)
    sub(a, e, out=e)
    sub(b, t1, out=b)
    add(e, b, out=e)
    absolute(s, out=t1)
    small = xp.max(t1, axis=0) < too_small
    scale_up = bool(xp.any(small))  # eager: one host read, as in the generic kernel
    if scale_up:
        one = xp.asarray(1.0, dtype=aT.dtype, device=device(aT))
        post = xp.where(small, xp.asarray(up, dtype=aT.dtype, device=device(aT)), one)[None, :]
        mul(s, post, out=s)
        mul(e, post, out=e)
    # Dekker's square of s: p (into a) + lo (into c); Veltkamp's hi in t1, lo in b
    hi = mul(s, s, out=a)
    mul(s, split, out=t1)
    sub(t1, s, out=b)
    sub(t1, b, out=t1)
    sub(s, t1, out=b)
    lo = mul(t1, t1)
    sub(lo, hi, out=lo)
    mul(t1, 2.0, out=t1)
    mul(t1, b, out=t1)
    add(lo, t1, out=lo)
    mul(b, b, out=b)
    add(lo, b, out=lo)
    # lo + (2 s e + e e)
    mul(s, 2.0, out=s)
    mul(s, e, out=s)
    mul(e, e, out=e)
    add(s, e, out=s)
    add(lo, s, out=lo)
    width = d
    while width > 1:  # the generic kernel's pairwise tree, level by level in the leading columns
        half = width // 2
        h1, h2, l1, l2 = hi[:half, :], hi[half : 2 * half, :], lo[:half, :], lo[half : 2 * half, :]
        t, bb, u, h = t1[:half, :], b[:half, :], s[:half, :], e[:half, :]
        add(h1, h2, out=t)
        sub(t, h1, out=bb)
        sub(t, bb, out=u)
        sub(h1, u, out=u)
        sub(h2, bb, out=bb)
        add(u, bb, out=u)  # TwoSum's error
        add(l1, l2, out=bb)
        add(u, bb, out=u)  # err
        add(t, u, out=h)  # h
        sub(h, t, out=bb)
        sub(u, bb, out=bb)  # low
        if width % 2:
            hi[half, :] = hi[width - 1, :]
            lo[half, :] = lo[width - 1, :]
        hi[:half, :] = h
        lo[:half, :] = bb
        width = half + width % 2
    total = hi[0, :] + lo[0, :]
    if scale_up:
        total = _distances.unscale_squares(total, small, 1.0 / up, xp=xp)
    return total
