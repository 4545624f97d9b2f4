"""softmax_loss (loss and dW) against the two matrix products it cannot avoid, and against the peers;
softdist.torch.SoftmaxCrossEntropy against nn.CrossEntropyLoss (forward + backward on logits).

Every row is a ratio to the same backend's ``X @ W`` plus ``X.T @ G`` measured in the same run (medians
of interleaved repeats), so machine load affects numerator and denominator alike. Each backend is timed
in its own block (NumPy's and PyTorch's thread pools fight when interleaved).

    python benchmarks/bench_softmax.py            # writes benchmarks/results/softmax_cpu.{md,json}
    python benchmarks/bench_softmax.py --repeats 31 --classes 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _timing import timed  # benchmarks/ is the script directory

import softdist

RESULTS = Path(__file__).parent / "results"


def cs231n_numpy(W, X, y, reg):
    """The hand-written vectorised NumPy version every ML course teaches."""
    n = X.shape[0]
    scores = X @ W
    scores -= scores.max(axis=1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(n), y]).sum() / n + reg * np.sum(W * W)
    p[np.arange(n), y] -= 1
    return loss, X.T @ p / n + 2 * reg * W


def numpy_methods(W, X, y, G, reg) -> dict[str, Callable[[], object]]:
    methods: dict[str, Callable[[], object]] = {
        "X @ W + X.T @ G (bound)": lambda: (X @ W, X.T @ G),
        "softdist.softmax_loss": lambda: softdist.softmax_loss(W, X, y, reg=reg),
        "softdist.softmax_loss(chunk_size=4096)": lambda: softdist.softmax_loss(W, X, y, reg=reg,
                                                                                 chunk_size=4096),
        "hand-written NumPy (CS231n)": lambda: cs231n_numpy(W, X, y, reg),
    }  # fmt: skip
    try:
        from sklearn._loss.loss import HalfMultinomialLoss
        from sklearn.linear_model._linear_loss import LinearModelLoss

        lml = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=W.shape[1]), fit_intercept=False)
        coef = np.ascontiguousarray(W.T)  # sklearn's (C, D) layout
        yf = y.astype(X.dtype)
        methods["sklearn LinearModelLoss.loss_gradient"] = lambda: lml.loss_gradient(
            coef, X, yf, l2_reg_strength=2 * reg
        )
    except ImportError:  # pragma: no cover - sklearn is in the bench extra
        pass
    return methods


def torch_methods(W, X, y, G, reg) -> dict[str, Callable[[], object]]:
    import torch
    import torch.nn.functional as F

    tW, tX, ty, tG = (torch.from_numpy(a) for a in (W, X, y, G))

    def autograd():
        w = tW.detach().requires_grad_()
        loss = F.cross_entropy(tX @ w, ty) + reg * (w * w).sum()
        loss.backward()
        return loss, w.grad

    return {
        "X @ W + X.T @ G (bound)": lambda: (tX @ tW, tX.T @ tG),
        "softdist.softmax_loss": lambda: softdist.softmax_loss(tW, tX, ty, reg=reg),
        "softdist.softmax_loss(chunk_size=4096)": lambda: softdist.softmax_loss(tW, tX, ty, reg=reg,
                                                                                 chunk_size=4096),
        "torch F.cross_entropy + autograd": autograd,
    }  # fmt: skip


def jax_methods(W, X, y, G, reg) -> dict[str, Callable[[], object]]:
    import jax
    import jax.numpy as jnp

    jW, jX, jy, jG = (jnp.asarray(a) for a in (W, X, y, G))

    def plain(w, x, labels):
        logp = jax.nn.log_softmax(x @ w)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)) + reg * jnp.sum(w * w)

    grad = jax.jit(jax.value_and_grad(plain))
    bound = jax.jit(lambda w, x, g: (x @ w, x.T @ g))
    ours = jax.jit(lambda w, x, labels: softdist.softmax_loss(w, x, labels, reg=reg))

    def block(f):
        return lambda: jax.block_until_ready(f())

    return {
        "X @ W + X.T @ G (bound)": block(lambda: bound(jW, jX, jG)),
        "softdist.softmax_loss (jax.jit)": block(lambda: ours(jW, jX, jy)),
        "jax.value_and_grad(log_softmax) (jit)": block(lambda: grad(jW, jX, jy)),
    }


def torch_module_rows(n: int, c: int, repeats: int) -> list[dict]:
    """forward + backward of softdist.torch.SoftmaxCrossEntropy against nn.CrossEntropyLoss on logits."""
    try:
        import torch

        import softdist.torch as st
    except ImportError:
        return []
    logits = torch.randn(n, c, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(1))

    def step(loss_fn):
        def run():
            z = logits.detach().requires_grad_()
            loss_fn(z, labels).backward()
            return z.grad

        return run

    methods = {"nn.CrossEntropyLoss (bound)": step(torch.nn.CrossEntropyLoss()),
               "softdist.torch.SoftmaxCrossEntropy": step(st.SoftmaxCrossEntropy())}  # fmt: skip
    times = timed(methods, repeats)
    bound = times["nn.CrossEntropyLoss (bound)"]
    return [
        {"backend": "torch-cpu", "method": f"{name}, forward + backward", "n": n, "d": "—", "c": c,
         "dtype": "float32", "seconds": t, "ratio_to_bound": t / bound}
        for name, t in times.items()
    ]  # fmt: skip


def peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak NumPy memory allocated during ``fn`` (tracemalloc sees NumPy's allocations)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def bench_case(n: int, d: int, c: int, repeats: int, backends: list[str]) -> list[dict]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    W = (0.01 * rng.standard_normal((d, c))).astype(np.float32)
    y = rng.integers(0, c, n)
    G = rng.standard_normal((n, c), dtype=np.float32)
    reg = 1e-3
    rows = []
    builders = {"numpy": numpy_methods, "torch-cpu": torch_methods, "jax-cpu": jax_methods}
    for backend in backends:
        try:
            methods = builders[backend](W, X, y, G, reg)
        except ImportError:
            continue
        times = timed(methods, repeats)
        bound = times["X @ W + X.T @ G (bound)"]
        for name, seconds in times.items():
            rows.append({"backend": backend, "method": name, "n": n, "d": d, "c": c, "dtype": "float32",
                         "seconds": seconds, "ratio_to_bound": seconds / bound})  # fmt: skip
    return rows


def memory_rows(n: int, d: int, c: int) -> list[dict]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    W = (0.01 * rng.standard_normal((d, c))).astype(np.float32)
    y = rng.integers(0, c, n)
    out = []
    for chunk in (None, 65536, 4096):
        mib = peak_extra_mib(lambda chunk=chunk: softdist.softmax_loss(W, X, y, chunk_size=chunk))
        out.append({"n": n, "d": d, "c": c, "chunk_size": chunk, "peak_extra_mib": mib,
                    "scores_mib": n * c * 4 / 2**20})  # fmt: skip
    return out


def to_markdown(rows: list[dict], memory: list[dict]) -> str:
    lines = ["| backend | N, D, C | method | ms | × bound |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['n']}, {r['d']}, {r['c']} | {r['method']} "
                     f"| {r['seconds'] * 1e3:.1f} | {r['ratio_to_bound']:.2f} |")  # fmt: skip
    lines += ["", "| N, D, C (NumPy float32) | chunk_size | peak extra MiB | (N, C) scores MiB |",
              "|---|---|---:|---:|"]  # fmt: skip
    for m in memory:
        chunk = "default" if m["chunk_size"] is None else m["chunk_size"]
        lines.append(f"| {m['n']}, {m['d']}, {m['c']} | {chunk} | {m['peak_extra_mib']:.1f} "
                     f"| {m['scores_mib']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 10])
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch-cpu", "jax-cpu"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for c in args.classes:
        rows += bench_case(20000, 512, c, args.repeats, args.backends)
    if "torch-cpu" in args.backends:
        for c in args.classes:
            rows += torch_module_rows(20000, c, args.repeats)
    memory = memory_rows(200_000, 64, 100)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "softmax_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows, "memory": memory},
                                                          indent=1))  # fmt: skip
    table = to_markdown(rows, memory)
    (args.out / "softmax_cpu.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
