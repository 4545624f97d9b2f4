"""Peak memory and time of the fused linear cross-entropy head (issue 13) on the CPU.

    python benchmarks/linear_head.py memory   # N=8192, D=1024, C=32000, chunk_size=1024, one process each
    python benchmarks/linear_head.py time     # N=2048, D=1024, C=32000, default chunking, vs the 3 GEMMs
    python benchmarks/linear_head.py accuracy # float32 vs float64 at chunk sizes 1, 7, 256, N
    python benchmarks/linear_head.py gpu      # N=8192, D=4096, C=128256 bfloat16 on CUDA (benchmarks/gpu.sh)

Memory is the process's resident high-water mark (ru_maxrss) minus the resident size once the inputs
exist, minus the returned gradients (dX, dW): what the call needs beyond what it must hold anyway.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

MEMORY_SIZE = (8192, 1024, 32000)
TIME_SIZE = (2048, 1024, 32000)
METHODS = ("numpy", "torch", "torch-wrapper", "torch-plain", "torch-F-default", "torch-F-chunked")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((c, d), dtype=np.float32) / np.float32(np.sqrt(d))
    y = rng.integers(0, c, n)
    return X, W, y


def _call(method: str, X, W, y, chunk_size):
    import softdist

    if method == "numpy":
        return softdist.linear_cross_entropy_and_grad(X, W, y, chunk_size=chunk_size)
    import torch

    F = torch.nn.functional
    if method == "torch":
        return softdist.linear_cross_entropy_and_grad(X, W, y, chunk_size=chunk_size)
    Xr, Wr = X.detach().requires_grad_(), W.detach().requires_grad_()
    if method == "torch-wrapper":
        import softdist.torch

        loss = softdist.torch.linear_cross_entropy(Xr, Wr, y, chunk_size=chunk_size)
    elif method == "torch-plain":
        loss = F.cross_entropy(F.linear(Xr, Wr), y)
    elif method == "torch-F-default":
        loss = F.linear_cross_entropy(Xr, Wr, y)
    else:  # torch-F-chunked
        from torch.nn import LinearCrossEntropyOptions

        options = LinearCrossEntropyOptions(batch_chunk_size=1024)
        loss = F.linear_cross_entropy(Xr, Wr, y, options=options)
    loss.backward()
    return loss, Xr.grad, Wr.grad


def _child_memory(method: str, warm_gemm: bool) -> None:
    n, d, c = MEMORY_SIZE
    X, W, y = _inputs(n, d, c)
    if method != "numpy":
        import torch

        X, W, y = torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(y)
        torch.set_num_threads(os.cpu_count() or 1)
    _call(method, X[:64], W[:100], (y[:64] % 100), 32)  # warm the libraries up on a tiny problem
    if warm_gemm:  # the BLAS's one-time buffers for a chunk-sized product (MKL: 31 MiB), before the baseline
        X[:1024] @ W.T
    baseline = _rss()
    out = _call(method, X, W, y, 1024)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grads = 4 * (n * d + c * d)
    print(json.dumps({"method": method, "after_warm_gemm": warm_gemm,
                      "extra_MiB": (peak - baseline - grads) / 2**20,
                      "peak_over_inputs_MiB": (peak - baseline) / 2**20, "loss": float(out[0])}))  # fmt: skip


def memory() -> None:
    """Each method in a fresh process, then again after one bare chunk-sized GEMM (X[:1024] @ W.T) before
    the baseline: the second figure leaves out the BLAS's one-time buffers, which any product of that
    shape allocates (torch's MKL keeps 31 MiB), so it is what the call itself needs."""
    for warm in ("", "warm"):
        for method in METHODS:
            if method == "torch-F-default":
                continue  # materialises the logits like torch-plain
            r = subprocess.run(
                [sys.executable, __file__, "_child", method, warm], capture_output=True, text=True
            )
            print(r.stdout.strip() or f"{method}: {r.stderr.strip().splitlines()[-1]}")


def _median_time(f, repeats: int = 3) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timing() -> None:
    import torch

    import softdist

    n, d, c = TIME_SIZE
    X, W, y = _inputs(n, d, c)
    G = np.ones((n, c), dtype=np.float32) / c
    Xt, Wt, yt, Gt = (torch.from_numpy(a) for a in (X, W, y, G))
    rows = {
        "numpy 3 GEMMs": lambda: (X @ W.T, G @ W, G.T @ X),
        "numpy softdist": lambda: softdist.linear_cross_entropy_and_grad(X, W, y),
        "numpy softdist loss only": lambda: softdist.linear_cross_entropy(X, W, y),
        "torch 3 GEMMs": lambda: (Xt @ Wt.T, Gt @ Wt, Gt.T @ Xt),
        "torch softdist": lambda: softdist.linear_cross_entropy_and_grad(Xt, Wt, yt),
        "torch wrapper fwd+bwd": lambda: _call("torch-wrapper", Xt, Wt, yt, "auto"),
        "torch F.linear_cross_entropy chunked 1024": lambda: _call("torch-F-chunked", Xt, Wt, yt, None),
        "torch plain F.linear + F.cross_entropy": lambda: _call("torch-plain", Xt, Wt, yt, None),
    }
    results = {name: _median_time(f) for name, f in rows.items()}
    for name, t in results.items():
        bound = results["numpy 3 GEMMs" if name.startswith("numpy") else "torch 3 GEMMs"]
        print(f"{name:45s} {t * 1e3:9.1f} ms  {t / bound:5.2f}x the GEMMs")


def accuracy() -> None:
    import softdist

    n, d, c = 512, 256, 4000
    X, W, y = _inputs(n, d, c, seed=1)
    X64, W64 = X.astype(np.float64), W.astype(np.float64)
    z = X64 @ W64.T  # the plain formula in float64
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    G = np.exp(z - lse[:, None])
    G[np.arange(n), y] -= 1
    G /= n
    want = [np.mean(lse - z[np.arange(n), y]), G @ W64, G.T @ X64]
    for chunk in (1, 7, 256, n):
        got = softdist.linear_cross_entropy_and_grad(X, W, y, chunk_size=chunk)
        errs = [float(np.linalg.norm(g - w) / np.linalg.norm(w)) for g, w in zip(got, want, strict=True)]
        print(
            f"chunk {chunk:4d}: loss {errs[0]:.2e}  dX {errs[1]:.2e}  dW {errs[2]:.2e} (relative, Frobenius)"
        )


def gpu() -> None:
    """One row per method: fwd + bwd time and the allocator's peak beyond inputs, bfloat16 on CUDA."""
    import torch

    import softdist.torch as st

    F = torch.nn.functional
    n, d, c = 8192, 4096, 128256
    g = torch.Generator(device="cuda").manual_seed(0)
    X = torch.randn(n, d, device="cuda", generator=g).to(torch.bfloat16)
    W = (torch.randn(c, d, device="cuda", generator=g) / d**0.5).to(torch.bfloat16)
    y = torch.randint(0, c, (n,), device="cuda", generator=g)
    methods = {
        "softdist.torch.linear_cross_entropy": lambda X, W: st.linear_cross_entropy(X, W, y),
        "softdist.torch.linear_cross_entropy chunk 1024": lambda X, W: st.linear_cross_entropy(
            X, W, y, chunk_size=1024
        ),
        "F.linear + F.cross_entropy": lambda X, W: F.cross_entropy(F.linear(X, W).float(), y),
    }
    if hasattr(F, "linear_cross_entropy"):
        from torch.nn import LinearCrossEntropyOptions

        chunked = LinearCrossEntropyOptions(batch_chunk_size=1024)
        methods["F.linear_cross_entropy (chunked 1024)"] = lambda X, W: F.linear_cross_entropy(
            X, W, y, options=chunked
        )
    for name, f in methods.items():
        try:
            Xr, Wr = X.detach().requires_grad_(), W.detach().requires_grad_()
            f(Xr, Wr).backward()  # warm-up
            Xr.grad = Wr.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            loss = f(Xr, Wr)
            loss.backward()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            print(f"{name:45s} {ms:9.1f} ms  peak {peak:8.0f} MiB beyond inputs  loss {loss.item():.6f}")
        except Exception as e:  # one method failing (out of memory) does not stop the others
            print(f"{name:45s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "time"
    if mode == "_child":
        _child_memory(sys.argv[2], sys.argv[3:] == ["warm"])
    else:
        {"memory": memory, "time": timing, "accuracy": accuracy, "gpu": gpu}[mode]()
