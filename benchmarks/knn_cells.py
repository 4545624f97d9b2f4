"""Issue-15 kNN cells in one quick run (about 5 minutes on 2 quiet CPUs), without the full
`softdist bench --case knn` (33 minutes): torch CPU against NumPy at 20000² and 50000² (float32 and
float64), JAX float64 at 5000² against the bench's blocked-product bound, eager and under jit, and
exact-tie-heavy data (all rows equal; 10 distinct rows, each repeated) and data with rows far from the
others (one outlier, a far tight cluster, two clusters far apart) or near-duplicates against random
data of the same shape on NumPy and torch. Candidates interleaved in one process, medians.

    python benchmarks/knn_cells.py [torch] [jax] [ties] [far]
"""

import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

jax.config.update("jax_enable_x64", True)
import softdist  # noqa: E402
from softdist._bench._cases import _blocked_products  # noqa: E402


def medians(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Milliseconds per call: one warm-up each, then ``reps`` rounds of every candidate in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def torch_against_numpy(rng: np.random.Generator) -> None:
    for n, reps in ((20000, 5), (50000, 3)):
        for dtype in (np.float32, np.float64):
            X = rng.standard_normal((n, 64)).astype(dtype)
            Q = rng.standard_normal((n, 64)).astype(dtype)
            tX, tQ = torch.from_numpy(X), torch.from_numpy(Q)
            r = medians({"numpy": lambda Q=Q, X=X: softdist.knn(Q, X, k=10),
                         "torch": lambda tQ=tQ, tX=tX: softdist.knn(tQ, tX, k=10)}, reps)  # fmt: skip
            print(f"knn {n}^2 x 64 {dtype.__name__}: numpy {r['numpy']:.0f} ms, torch {r['torch']:.0f} ms, "
                  f"torch/numpy {r['torch'] / r['numpy']:.2f}", flush=True)  # fmt: skip


def jax_float64(rng: np.random.Generator) -> None:
    jQ, jX = (jnp.asarray(rng.standard_normal((5000, 64))) for _ in range(2))
    knn_jit = jax.jit(lambda q, x: softdist.knn(q, x, k=10))
    bound_jit = jax.jit(_blocked_products)
    r = medians({"bound": lambda: jax.block_until_ready(_blocked_products(jQ, jX)),
                 "eager": lambda: jax.block_until_ready(softdist.knn(jQ, jX, k=10)),
                 "bound-jit": lambda: jax.block_until_ready(bound_jit(jQ, jX)),
                 "jit": lambda: jax.block_until_ready(knn_jit(jQ, jX))}, 9)  # fmt: skip
    print(f"jax knn 5000^2 x 64 float64: eager {r['eager']:.1f} ms = {r['eager'] / r['bound']:.2f}x the "
          f"bound ({r['bound']:.1f} ms); jit {r['jit']:.1f} ms = {r['jit'] / r['bound-jit']:.2f}x the bound "
          f"({r['bound-jit']:.1f} ms)", flush=True)  # fmt: skip


def against_random(data: dict[str, np.ndarray]) -> None:
    """Self kNN of each data set (the first: random rows) on NumPy and torch, times and x random."""
    fns = {}
    for name, X in data.items():
        tX = torch.from_numpy(X)
        fns[f"numpy {name}"] = lambda X=X: softdist.knn(X, k=10)
        fns[f"torch {name}"] = lambda tX=tX: softdist.knn(tX, k=10)
    r = medians(fns, 3)
    n, d = next(iter(data.values())).shape
    for lib in ("numpy", "torch"):
        base = r[f"{lib} random"]
        print(f"knn {n} x {d} float32 self, {lib}: " + ", ".join(
            f"{name} {r[f'{lib} {name}']:.0f} ms ({r[f'{lib} {name}'] / base:.2f}x random)" for name in data
        ), flush=True)  # fmt: skip


def tie_heavy(rng: np.random.Generator) -> None:
    n = 20000
    distinct = rng.standard_normal((10, 64)).astype(np.float32)
    against_random({"random": rng.standard_normal((n, 64)).astype(np.float32),
                    "all equal": np.zeros((n, 64), dtype=np.float32),
                    "10 distinct": distinct[rng.integers(0, 10, n)]})  # fmt: skip


def far_rows(rng: np.random.Generator) -> None:
    n = 20000
    X = rng.standard_normal((n, 64)).astype(np.float32)
    outlier, cluster, two = X.copy(), X.copy(), X.copy()
    outlier[n // 3] *= 1000.0
    cluster[rng.permutation(n)[: n // 10]] = 500.0 + 0.01 * rng.standard_normal((n // 10, 64))
    two[rng.permutation(n)[: n // 2]] += 1000.0
    near = X[:10][rng.integers(0, 10, n)] + np.float32(1e-5) * rng.standard_normal((n, 64), dtype=np.float32)
    against_random({"random": X, "one row x1000": outlier, "a tenth at 500 +- 0.01": cluster,
                    "two clusters 1000 apart": two, "10 rows + 1e-5 noise": near})  # fmt: skip


if __name__ == "__main__":
    wanted = sys.argv[1:] or ["torch", "jax", "ties", "far"]
    rng = np.random.default_rng(0)
    if "torch" in wanted:
        torch_against_numpy(rng)
    if "jax" in wanted:
        jax_float64(rng)
    if "ties" in wanted:
        tie_heavy(rng)
    if "far" in wanted:
        far_rows(rng)
