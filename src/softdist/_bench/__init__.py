"""`softdist bench`: softdist against the backend's own lower bound and the peers, on every installed
backend, device and float dtype; speed, memory and accuracy in one table (Markdown + JSON + plots).

The cases are defined in ``_cases.py``; timing and memory in ``_measure.py``; output in ``_report.py``.
"""

from __future__ import annotations

import datetime
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._harness import Backend
from ._cases import CASES, Case, Method, close_cluster
from ._measure import Timed, synchronizer, time_methods
from ._report import device_name, peak_tflops, write_results

# Seconds each method may take to time (after its warm-up), and the most repeats.
BUDGET = {"quick": (0.1, 5), "full": (1.5, 21)}
# A method whose call, scaled from its previous size by the work, would take longer than this is left
# out with a line saying so (JAX's float64 top_k on the CPU is ~100x its float32 one, for example).
MAX_CALL_SECONDS = {"quick": 10.0, "full": 60.0}


def _put(backend: Backend, x: np.ndarray, dtype: str) -> Any:
    """A NumPy input on the backend: floats cast to ``dtype``; on Dask split by rows only (tasks of
    whole rows, as a user would chunk a data matrix)."""
    if x.dtype.kind == "f":
        x = x.astype(dtype)
    if backend.lazy:
        import dask.array as da

        parts = max(1, min(8, x.shape[0] // 2048))
        return da.from_array(x, chunks=(math.ceil(x.shape[0] / parts), *x.shape[1:]))
    return backend.asarray(x)


def _to_numpy(backend: Backend, x: Any) -> np.ndarray:
    """Peers may return NumPy (or Python numbers) on any backend; the backend converts its own arrays."""
    if isinstance(x, (int, float, np.ndarray, np.generic)):
        return np.asarray(x)
    return backend.to_numpy(x)


def device_of(backend: Backend) -> str:
    """The device class a backend runs on, as `--device` and the results name it."""
    return "cuda" if backend.needs_gpu else "cpu"


def _one_line(exc: BaseException) -> str:
    message = str(exc).splitlines()
    return f"{type(exc).__name__}: {message[0][:200]}" if message else type(exc).__name__


def _outputs(backend: Backend, out: Any) -> list[np.ndarray]:
    out = out if isinstance(out, (tuple, list)) else (out,)
    arrays = [_to_numpy(backend, o) for o in out]
    return [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]


def _compiled(backend: Backend, method: Method) -> Any:
    if backend.jit and method.jit:
        import jax

        return jax.jit(method.fn)
    return method.fn


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.budget, self.max_repeats = BUDGET["quick" if quick else "full"]
        self.max_call = MAX_CALL_SECONDS["quick" if quick else "full"]
        self.previous: dict[tuple[str, str, str, str], tuple[float, float, str]] = {}
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.failures: list[str] = []

    def _note_skip(self, line: str) -> None:
        if line not in self.skipped:
            self.skipped.append(line)

    def _affordable(self, case: Case, size: tuple[int, ...], dtype: str, backend: Backend, m: Method) -> bool:
        """False (with a skip line) when the last size's time, scaled by the work, exceeds the cap."""
        last = self.previous.get((case.name, backend.name, dtype, m.name))
        if last is None:
            return True
        work, seconds, label = last
        estimate = seconds * case.work(size) / work
        if estimate <= self.max_call:
            return True
        where = f"{m.name} on {backend.name} {dtype} at {case.size_label(size)}"
        self.skipped.append(f"{where}: about {estimate:.0f} s a call (scaled from {label}), over the "
                            f"{self.max_call:.0f} s cap")  # fmt: skip
        return False

    def group(self, case: Case, size: tuple[int, ...], dtype: str, backend: Backend, data: dict,
              probe: dict, reference: Any) -> None:  # fmt: skip
        """Time every method of one (case, size, dtype, backend) and score its accuracy."""
        methods, skipped = case.methods(backend, dtype, size, self.quick)
        for line in skipped:
            self._note_skip(line)
        methods = [m for m in methods if self._affordable(case, size, dtype, backend, m)]
        arrays = [_put(backend, x, dtype) for x in data.values()]
        probe_arrays = [_put(backend, x, dtype) for x in probe.values()]
        sync = synchronizer(backend)
        compiled = {m.name: _compiled(backend, m) for m in methods}
        thunks = {m.name: (lambda f=compiled[m.name]: sync(f(*arrays))) for m in methods}
        where = f"{case.name} {case.size_label(size)} {backend.name} {dtype}"

        def on_error(name: str, exc: BaseException) -> None:
            role = next(m.role for m in methods if m.name == name)
            (self.failures if role == "softdist" else self.skipped).append(
                f"{name} on {where} failed: {_one_line(exc)}"
            )

        timed = time_methods(thunks, backend, self.budget, self.max_repeats, on_error)
        bounds = [timed[m.name].seconds for m in methods if m.role == "bound" and m.name in timed]
        bound = bounds[0] if bounds else math.nan
        peak = peak_tflops(backend, dtype)
        for m in methods:
            if m.name not in timed:
                continue
            self.previous[(case.name, backend.name, dtype, m.name)] = (
                case.work(size),
                timed[m.name].seconds,
                case.size_label(size),
            )
            if not m.in_process:
                timed[m.name].peak_mb = None
            accuracy, accuracy_text = math.nan, "—"
            if m.role != "bound":
                try:
                    outputs = _outputs(backend, compiled[m.name](*probe_arrays))
                    accuracy, accuracy_text = case.accuracy(outputs, reference)
                except Exception as exc:  # reported; the run goes on
                    on_error(m.name, exc)
            self.rows.append(self._row(case, size, dtype, backend, m, timed[m.name], bound, peak, accuracy,
                                       accuracy_text))  # fmt: skip
        close_cluster()  # idle Dask workers would take CPU time from the groups that follow

    def _row(self, case, size, dtype, backend, method, timed: Timed, bound, peak, accuracy, accuracy_text):
        flops = case.flops(size)
        tflops = flops / timed.seconds / 1e12 if flops else None
        return {
            "case": case.name, "backend": backend.name, "device": device_of(backend),
            "dtype": dtype, "size": list(size), "size_label": case.size_label(size), "work": case.work(size),
            "method": method.name, "role": method.role, "seconds": timed.seconds, "repeats": timed.repeats,
            "ratio_to_bound": timed.seconds / bound, "tflops": tflops,
            "fraction_of_peak": tflops / peak if tflops and peak else None, "peak_mb": timed.peak_mb,
            "accuracy": accuracy, "accuracy_text": accuracy_text,
        }  # fmt: skip


def _progress(done: int, total: int, label: str, elapsed: float) -> None:
    sys.stderr.write(f"[{done:>3}/{total} {elapsed:5.0f} s] {label}\n")
    sys.stderr.flush()


def bench(cases: list[str], backends: list[Backend], dtypes: list[str], quick: bool, out: Path,
          plots: bool) -> int:  # fmt: skip
    """Run the chosen cases; write bench.md, bench.json and one PNG per case into ``out``."""
    started = time.perf_counter()
    run = Bench(quick)
    jobs = [(CASES[c], size) for c in cases for size in (CASES[c].quick_sizes if quick else CASES[c].sizes)]
    total = len(jobs) * len(dtypes) * len(backends)
    done = 0
    interrupted = False
    try:
        for case, size in jobs:
            data = case.data(size)
            probe = case.probe(data)
            for dtype in dtypes:
                cast = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in probe.items()}
                reference = case.reference(cast)
                for backend in backends:
                    done += 1
                    _progress(
                        done,
                        total,
                        f"{case.name} {case.size_label(size)} {backend.name} {dtype}",
                        time.perf_counter() - started,
                    )
                    try:
                        run.group(case, size, dtype, backend, data, probe, reference)
                    except Exception as exc:  # one line; the run goes on
                        where = f"{case.name} {case.size_label(size)} {backend.name} {dtype}"
                        run.failures.append(f"{where} failed: {_one_line(exc)}")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a time limit: keep what was measured
        interrupted = True
        run.failures.append(f"interrupted after {done - 1} of {total} groups; the rows above are complete")
    finally:
        close_cluster()
    meta = _meta(quick, backends, time.perf_counter() - started)
    meta["interrupted"] = interrupted
    written = write_results(out, run.rows, run.skipped, run.failures, meta, plots)
    for line in run.skipped:
        print(f"skipped {line}")
    print(f"wrote {', '.join(str(p) for p in written)} ({meta['seconds']:.0f} s)")
    for line in run.failures:
        print(line, file=sys.stderr)
    return 130 if interrupted else int(bool(run.failures))


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in ("softdist", "numpy", "torch", "jax", "dask", "cupy-cuda13x", "cupy-cuda12x", "scikit-learn",
                 "scipy", "faiss-cpu", "optax", "array-api-strict"):  # fmt: skip
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _meta(quick: bool, backends: list[Backend], seconds: float) -> dict:
    import os
    import resource

    gpus = sorted({device_name(b) for b in backends if b.needs_gpu})
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["softdist", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "softdist bench",
        "quick": quick, "machine": platform.machine(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "versions": _versions(), "gpus": gpus,
        "backends": [b.name for b in backends], "seconds": seconds,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
    }  # fmt: skip
