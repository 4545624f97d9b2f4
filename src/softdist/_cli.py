"""`softdist` / `python -m softdist`: `demo` (the default) runs the classifiers on every installed backend;
`check` compares softmax_loss and pairwise_sqdist with NumPy references in extended precision; `bench`
times softdist against the bound and the peers."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

import numpy as np

from . import pairwise_sqdist, softmax_loss
from ._harness import (
    BACKENDS,
    SQDIST_RTOL,
    Backend,
    finish,
    hard_datasets,
    reference_softmax_loss,
    reference_sqdist,
)

# Normwise relative error the softmax loss and gradients promise (README "Softmax cross-entropy").
SOFTMAX_RTOL = {"float32": 1e-5, "float64": 1e-12}


def _check_sqdist(backend: Backend, dtype: str, data: dict) -> tuple[float, float]:
    A, B = data["A"], data["B"]
    exact = reference_sqdist(A.astype(dtype), B.astype(dtype))
    A_b, B_b = backend.asarray(A, dtype), backend.asarray(B, dtype)
    start = time.perf_counter()
    got = backend.to_numpy(backend.call(pairwise_sqdist, A_b, B_b)).astype(np.float64)
    seconds = time.perf_counter() - start
    nonzero = exact > 0
    rel = float(np.max(np.abs(got - exact)[nonzero] / exact[nonzero])) if nonzero.any() else 0.0
    if np.any(got[~nonzero] != 0):
        rel = float("inf")
    return rel, seconds


def _check_softmax(backend: Backend, dtype: str, data: dict) -> tuple[float, float]:
    W, X, y, b, cw = (data[k].astype(dtype) if k != "y" else data[k] for k in ("W", "X", "y", "b", "cw"))
    options = {"reg": 1e-2, "label_smoothing": 0.1}
    want = reference_softmax_loss(W, X, y, b=b, class_weight=cw, **options)
    args = [backend.asarray(a) for a in (W, X, y)]
    start = time.perf_counter()
    got = backend.call(softmax_loss, *args, b=backend.asarray(b), class_weight=backend.asarray(cw), **options)
    got = [backend.to_numpy(g).astype(np.float64) for g in got]
    seconds = time.perf_counter() - start
    return max(
        float(np.max(np.abs(g - w)) / np.max(np.abs(w))) for g, w in zip(got, want, strict=True)
    ), seconds


def _data() -> dict:
    rng = np.random.default_rng(0)
    # Distances: near-duplicates and exact duplicates at magnitude 1e4, where the plain expansion fails.
    A, B = hard_datasets(rng, n=300, m=200, d=32)["near-duplicates-1e4"]
    # Softmax: confident, large logits (|scores| ~ 100), class weights, smoothing, a penalty and a bias.
    X = 10 * rng.standard_normal((2000, 32))
    return {"A": A, "B": B, "X": X, "W": rng.standard_normal((32, 10)), "y": rng.integers(0, 10, 2000),
            "b": rng.standard_normal(10), "cw": rng.random(10) + 0.5}  # fmt: skip


CHECKS = {
    "softmax_loss": (_check_softmax, SOFTMAX_RTOL, "(loss, dW, db) of a 2000 x 32 -> 10 linear model"),
    "pairwise_sqdist": (_check_sqdist, SQDIST_RTOL, "300 x 200 points at magnitude 1e4 with duplicates"),
}


class _Parser(argparse.ArgumentParser):
    """Bad options end in one line on stderr (no usage block, no traceback) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _backend_names(parser: argparse.ArgumentParser, names: list[str] | None) -> None:
    known = {b.name for b in BACKENDS}
    for name in names or []:
        if name not in known:
            parser.error(f"unknown backend {name!r}; choose from {', '.join(sorted(known))}")


# What to install for each backend library that is missing.
INSTALL_HINT = {
    "torch": "pip install torch==2.13.0 (CPU) or a CUDA build of torch",
    "jax": "pip install 'softdist[jax]' (or jax[cuda13] for GPUs)",
    "dask": "pip install 'softdist[dask]'",
    "cupy": "pip install 'softdist[cupy]' on a machine with CUDA",
    "strict": "pip install array-api-strict",
}


def _device_class(backend: Backend, device: str) -> bool:
    """Whether ``backend`` runs on the `--device` choice: gpu and cuda both mean a CUDA device; demo's
    device1 is array-api-strict's second device."""
    if device in ("cuda", "gpu"):
        return backend.needs_gpu
    if device == "device1":
        return backend.device_kind == "device1"
    return not backend.needs_gpu


def chosen_backends(
    parser: argparse.ArgumentParser, names: list[str] | None, devices: list[str] | None
) -> tuple[list[Backend], list[str]]:
    """The backends a command runs, and skip lines for the ones it leaves out. A backend or device the
    user named that cannot run here is a one-line error (exit 2) that says what to install or choose."""
    chosen = [
        b
        for b in BACKENDS
        if (not names or b.name in names) and (not devices or any(_device_class(b, d) for d in devices))
    ]
    runnable, skipped = [], []
    for b in chosen:
        reason = b.skip_reason()
        if reason is None:
            runnable.append(b)
        elif names and b.name in names:
            no_gpu = b.needs_gpu and "CUDA" in reason
            hint = "run on a GPU machine or choose a CPU backend" if no_gpu else INSTALL_HINT[b.library]
            parser.error(f"backend {reason}; {hint}")
        else:
            skipped.append(reason)
    wanted_gpu = [d for d in devices or [] if d in ("cuda", "gpu")]
    if wanted_gpu and not any(b.needs_gpu for b in runnable):
        parser.error(f"--device {wanted_gpu[0]}: no CUDA device is visible to cupy, torch or jax here; "
                     "run on a GPU machine or choose --device cpu")  # fmt: skip
    if not runnable:
        parser.error("no backend left to run; choose from " + ", ".join(b.name for b in BACKENDS))
    return runnable, skipped


def _writable_folder(parser: argparse.ArgumentParser, out: Path) -> None:
    """`bench --out`: create the folder and try a file in it before running anything."""
    probe = out / ".softdist-bench-write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        parser.error(f"--out {out}: cannot write there ({exc.strerror or type(exc).__name__}); choose "
                     "another folder")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="softdist",
        description="softdist on every installed array backend. Default command: demo.",
    )
    commands = parser.add_subparsers(dest="command")
    demo_p = commands.add_parser(
        "demo", help="train the softmax and kNN classifiers on the bundled digits on every backend"
    )
    check_p = commands.add_parser(
        "check", help="check softmax_loss and pairwise_sqdist against extended-precision references"
    )
    for sub in (demo_p, check_p):
        sub.add_argument("--backend", action="append", help="only these backends (repeatable)")
        sub.add_argument("--dtype", choices=["float32", "float64"], action="append")
    demo_p.add_argument("--device", action="append", choices=["cpu", "cuda", "gpu", "device1"],
                        help="only backends on these devices (repeatable)")  # fmt: skip
    demo_p.add_argument("--quick", action="store_true", help="fewer training steps")
    bench_p = commands.add_parser(
        "bench", help="time softdist against the backend's own products and the peers; write tables and plots"
    )
    _bench_options(bench_p)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("demo", "check", "bench", "-h", "--help"):
        argv = ["demo", *argv]  # `softdist` / `python -m softdist`: the demo
    args = parser.parse_args(argv)
    _backend_names(parser, args.backend)
    dtypes = args.dtype or ["float32", "float64"]
    if args.command == "demo":
        from ._demo import demo

        return demo(*chosen_backends(demo_p, args.backend, args.device), dtypes, args.quick)
    if args.command == "bench":
        return _run_bench(bench_p, args, dtypes)
    return check(*chosen_backends(check_p, args.backend, None), dtypes)


def _bench_options(bench_p: argparse.ArgumentParser) -> None:
    from ._bench._cases import CASES

    bench_p.add_argument("--case", action="append", choices=list(CASES), help="only these cases (repeatable)")
    bench_p.add_argument("--backend", action="append", help="only these backends (repeatable)")
    bench_p.add_argument("--device", action="append", choices=["cpu", "cuda", "gpu"],
                         help="only backends on these devices (repeatable; gpu = cuda)")  # fmt: skip
    bench_p.add_argument("--dtype", choices=["float32", "float64"], action="append")
    bench_p.add_argument("--quick", action="store_true",
                         help="small sizes, short timing (~11 min on 2 slow CPUs)")  # fmt: skip
    bench_p.add_argument("--out", type=Path, default=Path("bench-results"),
                         help="results folder (default: ./bench-results)")  # fmt: skip
    bench_p.add_argument("--no-plots", action="store_true", help="tables only")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _run_bench(parser: argparse.ArgumentParser, args: argparse.Namespace, dtypes: list[str]) -> int:
    from ._bench import bench
    from ._bench._cases import CASES

    backends, skipped = chosen_backends(parser, args.backend, args.device)
    _writable_folder(parser, args.out)
    plots = not args.no_plots
    if plots and not _has_matplotlib():
        skipped.append("plots: matplotlib is not installed (pip install 'softdist[bench]')")
        plots = False
    for line in skipped:
        print(f"skipped {line}")
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout` on a lent GPU: still write what was measured
    return bench(args.case or list(CASES), backends, dtypes, args.quick, args.out, plots)


def check(backends: list[Backend], skipped: list[str], dtypes: list[str]) -> int:
    data = _data()
    for name, (_, _, what) in CHECKS.items():
        print(f"{name}: {what}")
    print(
        f"{'function':<16} {'backend':<16} {'dtype':<8} {'max rel err':>12} {'seconds':>8}  agrees with NumPy"
    )
    failures = 0
    for backend in backends:
        for name, (check, rtol, _) in CHECKS.items():
            for dtype in dtypes:
                rel, seconds = check(backend, dtype, data)
                ok = rel <= rtol[dtype]
                failures += not ok
                print(f"{name:<16} {backend.name:<16} {dtype:<8} {rel:>12.2e} {seconds:>8.3f}  "
                      f"{'yes' if ok else 'NO'}")  # fmt: skip
    return finish(skipped, f"{failures} backend/dtype combinations disagree with NumPy" if failures else "")


if __name__ == "__main__":
    sys.exit(main())
