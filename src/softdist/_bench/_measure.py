"""How `softdist bench` times a call and reads its memory: warm-up, device synchronisation, median of
interleaved repeats, each started once the process's other threads are idle; peak resident memory sampled
on CPU, the allocator's peak on a GPU."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._harness import Backend

# Longest wait for the process's other threads to go idle before a timed call (seconds, polled every
# SETTLE_POLL_S). OpenBLAS's workers spin for ~0.1 s after each multi-threaded call (56-75 ms of CPU on
# the 2-core VM): without the wait, each interleaved repeat would run with the previous method's spinning
# workers on its cores, which costs a method that brings its own threads up to 1.7x (softdist's NumPy
# linear head); a program that calls the method in a loop of its own has no such neighbour.
SETTLE_MAX_S = 0.25
SETTLE_POLL_S = 0.002


def other_threads_running() -> bool | None:
    """Whether another thread of this process is running or runnable now (Linux: each thread's state in
    /proc/self/task, ~12 us for a handful of threads); None where that cannot be read.

    A BLAS or OpenMP pool's worker that spins after its last call shows as running: OpenBLAS's spins for
    ~0.1 s after every multi-threaded call (threads of torch's and XLA's pools for shorter)."""
    here = threading.get_native_id()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        if task == str(here):
            continue
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        end = stat.rfind(b")")  # the state follows the command name, which may hold spaces and ')'
        if stat[end + 2 : end + 3] == b"R":
            return True
    return False


def settle(backend: Backend) -> None:
    """Wait (CPU backends, at most SETTLE_MAX_S) until no other thread of this process is running."""
    if backend.device_kind in ("cuda", "gpu"):
        return
    deadline = time.perf_counter() + SETTLE_MAX_S
    while other_threads_running() and time.perf_counter() < deadline:
        time.sleep(SETTLE_POLL_S)


def synchronizer(backend: Backend) -> Callable[[Any], Any]:
    """A function that waits until ``out`` is really computed: GPUs and JAX run asynchronously, Dask
    lazily, so a timer stopped at the return of the call would measure only the launch."""
    if backend.lazy:
        import dask

        return lambda out: dask.compute(out)
    if backend.library == "jax":
        import jax

        return jax.block_until_ready
    if backend.library == "torch" and backend.device_kind == "cuda":
        import torch

        def torch_sync(out: Any) -> Any:
            torch.cuda.synchronize()
            return out

        return torch_sync
    if backend.library == "cupy":
        import cupy

        def cupy_sync(out: Any) -> Any:
            cupy.cuda.get_current_stream().synchronize()
            return out

        return cupy_sync
    return lambda out: out


class _RssSampler:
    """Peak resident set size of this process while the block runs, sampled every half millisecond from
    /proc (Linux); the sampler sleeps between reads, so it costs the timed code next to nothing."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _read(self, statm: Any) -> int:
        statm.seek(0)
        return int(statm.read().split()[1]) * self._page

    def _loop(self, statm: Any) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read(statm))
            time.sleep(0.0005)

    @contextlib.contextmanager
    def sample(self) -> Iterator[None]:
        _trim_heap()
        with open("/proc/self/statm") as statm:
            self.base = self.peak = self._read(statm)
            thread = threading.Thread(target=self._loop, args=(statm,), daemon=True)
            thread.start()
            try:
                yield
            finally:
                self._stop.set()
                thread.join()
                self.peak = max(self.peak, self._read(statm))


def _trim_heap() -> None:
    """Give freed heap memory back to the system first (glibc keeps it resident), so that memory the call
    allocates shows up as growth instead of reusing pages the previous call left behind."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: growth is then a lower bound
        pass


def rss_available() -> bool:
    return os.path.exists("/proc/self/statm")


@contextlib.contextmanager
def peak_memory(backend: Backend, into: dict[str, float | None]) -> Iterator[None]:
    """Stores in ``into["peak_mb"]`` how far memory rose above its level before the block: device memory
    for GPU backends (where the library reports it), resident memory for CPU backends."""
    into["peak_mb"] = None
    if backend.library == "torch" and backend.device_kind == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield
        into["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 1e6
    elif backend.library == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()  # the pool then only grows to the block's high-water mark
        base = pool.used_bytes()
        yield
        into["peak_mb"] = (pool.total_bytes() - base) / 1e6
    elif backend.needs_gpu or not rss_available():
        yield  # JAX's GPU allocator has no resettable peak
    else:
        sampler = _RssSampler()
        with sampler.sample():
            yield
        into["peak_mb"] = (sampler.peak - sampler.base) / 1e6


@dataclass
class Timed:
    """One method's measurement: median seconds of its repeats and the peak memory of the last one."""

    seconds: float = float("nan")
    repeats: int = 0
    peak_mb: float | None = None
    samples: list[float] = field(default_factory=list)


def time_methods(
    thunks: dict[str, Callable[[], Any]],
    backend: Backend,
    budget_s: float,
    max_repeats: int,
    on_error: Callable[[str, BaseException], None],
) -> dict[str, Timed]:
    """Median wall time of each thunk (which must include its own synchronisation).

    Each thunk runs once as a warm-up (caches, thread pools, JIT compilation); its repeat count then
    fits ``budget_s`` (at least 3, or 1 when one call takes over a second), and the repeats are
    interleaved across thunks so that machine load hits them all alike, each started once the
    process's other threads are idle (:func:`settle`). Memory is read during each
    thunk's last repeat. A thunk that raises is reported through ``on_error`` and left out.
    """
    results: dict[str, Timed] = {}
    plan: dict[str, int] = {}
    for name, thunk in thunks.items():
        start = time.perf_counter()
        try:
            thunk()
        except Exception as exc:  # one failing method must not end the run
            on_error(name, exc)
            continue
        warm = time.perf_counter() - start
        plan[name] = max(1 if warm > 1.0 else 3, min(max_repeats, round(budget_s / max(warm, 1e-6))))
        results[name] = Timed()
    for round_ in range(max(plan.values(), default=0)):
        for name, repeats in plan.items():
            if round_ >= repeats:
                continue
            memory: dict[str, float | None] = {}
            last = round_ == repeats - 1
            settle(backend)
            with peak_memory(backend, memory) if last else contextlib.nullcontext():
                start = time.perf_counter()
                thunks[name]()
                results[name].samples.append(time.perf_counter() - start)
            if last:
                results[name].peak_mb = memory["peak_mb"]
    for timed in results.values():
        timed.seconds = float(np.median(timed.samples))
        timed.repeats = len(timed.samples)
    return results
