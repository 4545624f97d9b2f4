"""What `softdist bench` measures: four cases, each with its sizes, its data, softdist's call, the lower
bound (the backend's own products, or one elementwise pass where there is no product), the peers a user
would pick instead, and how accuracy is scored against a float64 (long double) reference.

Every method takes the case's arrays, already on the backend, and returns the case's outputs there;
accuracy is read on a small "probe" problem of the same kind with harder data (offsets, large logits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import (
    knn,
    linear_cross_entropy_and_grad,
    pairwise_sqdist,
    softmax_cross_entropy_and_grad,
    softmax_loss,
)
from .._harness import Backend, reference_cross_entropy, reference_softmax_loss, reference_sqdist
from .._lib._compat import array_namespace, device, is_dask_namespace, is_jax_namespace

# Peers that materialise an (n, m) matrix run only while it stays this small (bytes).
MATERIALISE_LIMIT = 4 * 2**30
# scipy's cdist is a plain C loop (no BLAS): beyond this many multiply-adds it dominates a run.
CDIST_WORK_LIMIT = 5e8
K = 10  # neighbours in the knn case
REG = 1e-3  # L2 penalty in the softmax_loss case


@dataclass(frozen=True)
class Method:
    """One timed row. ``role`` is "softdist", "bound" or "peer"; ``jit``: compile with jax.jit on the
    JAX-jit backends (peers that compile themselves, and the blocked bound, say False)."""

    name: str
    role: str
    fn: Callable[..., Any]
    jit: bool = True
    in_process: bool = True  # False: the work runs in other processes, so this one's memory says nothing


def _matmul(a: Any, b: Any) -> Any:
    """``a @ b``; JAX at full float32 precision, as softdist computes (its GPU default is TF32)."""
    if is_jax_namespace(array_namespace(a)):
        import jax.numpy as jnp

        return jnp.matmul(a, b, precision="highest")
    return a @ b


def _normwise(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Largest normwise relative error over the outputs (loss, gradient ...)."""
    errs = []
    for g, w in zip(got, want, strict=True):
        scale = float(np.max(np.abs(w)))
        errs.append(float(np.max(np.abs(np.asarray(g, np.float64) - w))) / (scale or 1.0))
    return max(errs)


class Case:
    """A benchmark case. Subclasses fill in the class attributes and the methods below."""

    name: str
    title: str
    work_label: str  # the x axis of the plot
    sizes: tuple[tuple[int, ...], ...]
    quick_sizes: tuple[tuple[int, ...], ...]
    accuracy_label: str

    def size_label(self, size: tuple[int, ...]) -> str:
        return " × ".join(str(s) for s in size)

    def work(self, size: tuple[int, ...]) -> float:
        return float(math.prod(size))

    def flops(self, size: tuple[int, ...]) -> float:
        """Floating-point operations of the unavoidable products (0 where there is none)."""
        return 0.0

    def data(self, size: tuple[int, ...]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def probe(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reference(self, probe: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    def accuracy(self, outputs: list[np.ndarray], reference: Any) -> tuple[float, str]:
        raise NotImplementedError

    def methods(self, backend: Backend, dtype: str, size: tuple[int, ...], quick: bool) -> tuple[
        list[Method], list[str]
    ]:  # fmt: skip
        """The rows for this backend and dtype, and a reason for each peer left out."""
        raise NotImplementedError


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


# -- pairwise_sqdist ---------------------------------------------------------------------------------


def _textbook_sqdist(A: Any, B: Any) -> tuple[Any]:
    """The usual shortcut ‖a‖² + ‖b‖² − 2a·b, written once against the standard."""
    xp = array_namespace(A, B)
    return (xp.sum(A * A, axis=1)[:, None] + xp.sum(B * B, axis=1)[None, :] - 2 * _matmul(A, B.T),)


class _PointPairs(Case):
    """Two standard-normal point sets, (n, d) and (m, d); the work is the n · m · d product."""

    names: tuple[str, str]

    def flops(self, size):
        n, m, d = size
        return 2.0 * n * m * d

    def data(self, size):
        n, m, d = size
        rng = _rng()
        return {self.names[0]: rng.standard_normal((n, d)), self.names[1]: rng.standard_normal((m, d))}


class PairwiseSqdist(_PointPairs):
    names = ("A", "B")
    name = "pairwise_sqdist"
    title = "pairwise_sqdist(A, B): the (n, m) squared distances"
    work_label = "n · m · d (multiply-adds)"
    sizes = ((1000, 1000, 64), (2000, 2000, 64), (4000, 4000, 64), (8000, 8000, 64), (4000, 4000, 256),
             (20000, 1000, 16))  # fmt: skip
    quick_sizes = ((500, 500, 32), (2000, 2000, 64))
    accuracy_label = "max rel err (data offset 1e3)"

    def probe(self, data):
        # Offset data: where the shortcut loses every digit in float32 (well-separated, |x|² ~ 1e6 d).
        return {"A": data["A"][:400] + 1e3, "B": data["B"][:300] + 1e3}

    def reference(self, probe):
        return reference_sqdist(probe["A"], probe["B"])

    def accuracy(self, outputs, reference):
        (D,) = outputs
        nonzero = reference > 0
        rel = float(np.max(np.abs(D - reference)[nonzero] / reference[nonzero]))
        return rel, f"{rel:.1e}"

    def methods(self, backend, dtype, size, quick):
        rows = [
            Method("A @ B.T", "bound", lambda A, B: _matmul(A, B.T)),
            Method("softdist.pairwise_sqdist", "softdist", lambda A, B: (pairwise_sqdist(A, B),)),
            Method("textbook ‖a‖²+‖b‖²−2a·b", "peer", _textbook_sqdist),
        ]
        skipped: list[str] = []
        n, m, d = size
        if backend.name == "numpy":
            try:
                from sklearn.metrics.pairwise import euclidean_distances

                rows.append(Method("sklearn euclidean_distances(squared=True)", "peer",
                                   lambda A, B: (euclidean_distances(A, B, squared=True),)))  # fmt: skip
            except ImportError:
                skipped.append("sklearn euclidean_distances: scikit-learn is not installed")
            try:
                from scipy.spatial.distance import cdist

                if n * m * d <= CDIST_WORK_LIMIT:
                    rows.append(Method("scipy cdist('sqeuclidean')", "peer",
                                       lambda A, B: (cdist(A, B, "sqeuclidean"),)))  # fmt: skip
            except ImportError:
                skipped.append("scipy cdist: scipy is not installed")
        if backend.library == "torch":
            import torch

            rows.append(Method("torch.cdist(A, B)**2", "peer", lambda A, B: (torch.cdist(A, B) ** 2,)))
        if backend.library == "cupy":
            try:
                from cupyx.scipy.spatial.distance import cdist as cupy_cdist

                rows.append(Method("cupyx cdist('sqeuclidean')", "peer",
                                   lambda A, B: (cupy_cdist(A, B, "sqeuclidean"),)))  # fmt: skip
            except ImportError as exc:
                skipped.append(f"cupyx cdist: {exc}")
        return rows, skipped


# -- knn ---------------------------------------------------------------------------------------------


def _blocked_products(Q: Any, X: Any) -> Any:
    """Every product Q_i · X_j, in row blocks of at most 256 MiB (the full matrix may not fit): the
    floating-point work any exact kNN must do. Returns only the last block (or, on Dask, one column of
    each block), so nothing else is kept."""
    if is_dask_namespace(array_namespace(Q)):  # one task per block pair: product and first column
        import dask.array as da

        def first_column(q: Any, x: Any) -> Any:  # a copy: a view would keep the whole block alive
            return array_namespace(q).asarray((q @ x.T)[:, :1], copy=True)

        return da.blockwise(first_column, "ij", Q, "ik", X, "jk", dtype=Q.dtype, concatenate=True,
                            adjust_chunks={"j": 1})  # fmt: skip
    n, m = Q.shape[0], X.shape[0]
    rows = max(1, 2**28 // (m * array_namespace(Q).finfo(Q.dtype).bits // 8))
    XT = X.T
    into = _product_into(Q)
    # NumPy and torch on the CPU: every block into one reused output, so the bound is the GEMMs and not
    # the page faults of a fresh 256 MiB output per block (torch's CPU allocator returns large blocks to
    # the OS: 1024 x 64 @ 64 x 50000 float32 took 102 ms into a new output, 42 ms into an existing one).
    buffer = None if into is None else into.empty((min(rows, n), m), dtype=Q.dtype)
    last = None
    for start in range(0, n, rows):
        block = Q[start : min(start + rows, n), :]
        if into is None:
            last = _matmul(block, XT)
        else:
            last = into.matmul(block, XT, out=buffer[: block.shape[0]])
    return last


def _product_into(Q: Any) -> Any:
    """NumPy or torch (the module) when ``Q`` is one of their CPU arrays, whose matmul takes ``out=``;
    else None."""
    if isinstance(Q, np.ndarray):
        return np
    if type(Q).__module__.startswith("torch") and Q.device.type == "cpu":
        import torch

        return torch
    return None


class Knn(_PointPairs):
    names = ("Q", "X")
    name = "knn"
    title = f"knn(Q, X, k={K}): exact nearest neighbours"
    work_label = "nq · m · d (multiply-adds)"
    # d = 3: a point cloud, where the products are cheap and the selection is most of the work; there
    # the same points are also searched sorted along x (the order sorted or clustered data arrives in).
    sizes = ((5000, 5000, 64), (20000, 20000, 64), (50000, 50000, 64), (50000, 50000, 3))
    quick_sizes = ((1000, 1000, 32), (3000, 3000, 32), (2000, 2000, 3))
    accuracy_label = "recall, max rel err of distances (offset 100)"

    def probe(self, data):
        return {"Q": data["Q"][:200] + 100.0, "X": data["X"][:4000] + 100.0}

    def reference(self, probe):
        exact = reference_sqdist(probe["Q"], probe["X"])
        order = np.argsort(exact, axis=1, kind="stable")[:, :K]
        return order, np.take_along_axis(exact, order, axis=1)

    def accuracy(self, outputs, reference):
        sqdist, index = outputs
        order, nearest = reference
        pairs = zip(index.astype(np.int64), order, strict=True)
        hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in pairs]
        recall = sum(hits) / order.size
        rel = float(np.max(np.abs(np.sort(sqdist, axis=1) - nearest) / nearest))
        return rel, f"recall {recall:.4f}, {rel:.1e}"

    def methods(self, backend, dtype, size, quick):
        rows = [
            Method("all products Q·Xᵀ, blocked", "bound", _blocked_products, jit=False),
            Method("softdist.knn", "softdist", lambda Q, X: knn(Q, X, k=K)),
        ]
        skipped: list[str] = []
        n, m, d = size
        if d <= 3 and not backend.lazy:
            rows.append(Method("softdist.knn, the same points sorted along x", "softdist", _sorted_knn))
        small = n * m * np.dtype(dtype).itemsize <= MATERIALISE_LIMIT
        too_big = f"would materialise the {n} × {m} matrix ({n * m * np.dtype(dtype).itemsize / 1e9:.0f} GB)"
        if backend.name == "numpy":
            rows += _numpy_knn_peers(dtype, skipped)
        if backend.library == "torch":
            import torch

            if small:
                rows.append(Method("torch.cdist + topk", "peer", lambda Q, X: _torch_topk(torch, Q, X)))
            else:
                skipped.append(f"torch.cdist + topk at {n} × {m}: {too_big}")
        if backend.library == "jax" and backend.jit:
            import jax

            def top_k(Q, X):
                (D,) = _textbook_sqdist(Q, X)
                neg, index = jax.lax.top_k(-D, K)
                return -neg, index

            if small:
                rows.append(Method("jax.lax.top_k of the textbook distances (jit)", "peer", top_k))
            else:
                skipped.append(f"jax.lax.top_k at {n} × {m}: {too_big}")
        if backend.lazy and not quick:
            rows += _cluster_knn(skipped)
        return rows, skipped


def _sorted_knn(Q: Any, X: Any) -> tuple[Any, Any]:
    """knn of Q and X with both sorted along the first coordinate (the sort is timed too, a few ms),
    answered in the caller's row order and indices."""
    xp = array_namespace(Q)
    by_q, by_x = xp.argsort(Q[:, 0]), xp.argsort(X[:, 0])
    dist, index = knn(xp.take(Q, by_q, axis=0), xp.take(X, by_x, axis=0), k=K)
    back = xp.argsort(by_q)
    return xp.take(dist, back, axis=0), xp.take(
        xp.reshape(xp.take(by_x, xp.reshape(index, (-1,))), index.shape), back, axis=0
    )


def _torch_topk(torch: Any, Q: Any, X: Any) -> tuple[Any, Any]:
    return torch.topk(torch.cdist(Q, X) ** 2, K, largest=False)


def _numpy_knn_peers(dtype: str, skipped: list[str]) -> list[Method]:
    rows = []
    try:
        import faiss

        if dtype == "float32":

            def flat(Q, X):
                index = faiss.IndexFlatL2(X.shape[1])
                index.add(X)
                return index.search(Q, K)

            rows.append(Method("faiss IndexFlatL2", "peer", flat))
        else:
            skipped.append("faiss IndexFlatL2 float64: faiss searches float32 only")
    except ImportError:
        skipped.append("faiss IndexFlatL2: faiss is not installed (pip install faiss-cpu)")
    try:
        from sklearn.neighbors import NearestNeighbors

        def brute(Q, X):
            distance, index = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(X).kneighbors(Q)
            return distance**2, index

        rows.append(Method("sklearn NearestNeighbors(brute)", "peer", brute))
    except ImportError:
        skipped.append("sklearn NearestNeighbors: scikit-learn is not installed")
    return rows


_CLUSTER: list[Any] = []  # one LocalCluster per run, closed by close_cluster()
CLUSTER_SPEC = (2, "1GiB")


def _cluster_knn(skipped: list[str]) -> list[Method]:
    """softdist.knn computed on a local Dask cluster whose workers hold far less than the distance matrix."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        skipped.append("knn on a Dask LocalCluster: distributed is not installed")
        return []

    def on_cluster(Q, X):
        if not _CLUSTER:
            workers, memory = CLUSTER_SPEC
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, memory_limit=memory,
                                   dashboard_address=None, processes=True)  # fmt: skip
            _CLUSTER.extend([cluster, Client(cluster, set_as_default=False)])
        import warnings

        with warnings.catch_warnings():  # the inputs travel inside the graph, as in-memory data would
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            return _CLUSTER[1].compute(knn(Q, X, k=K), sync=True)

    workers, memory = CLUSTER_SPEC
    name = f"softdist.knn on a LocalCluster ({workers} workers × {memory})"
    return [Method(name, "softdist", on_cluster, in_process=False)]


def close_cluster() -> None:
    while _CLUSTER:
        _CLUSTER.pop().close()


# -- softmax cross-entropy on logits -------------------------------------------------------------------


def _textbook_cross_entropy(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Log-softmax with the max shift, a one-hot mask, mean: what one writes by hand."""
    xp = array_namespace(logits)
    n, c = logits.shape
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    logp = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    onehot = xp.astype(labels[:, None] == xp.arange(c, device=device(logits))[None, :], logits.dtype)
    loss = -xp.sum(onehot * logp) / n
    return loss, (xp.exp(logp) - onehot) / n


class CrossEntropy(Case):
    name = "softmax_cross_entropy_and_grad"
    title = "softmax_cross_entropy_and_grad(logits, labels): mean loss and its gradient"
    work_label = "N · C (logits)"
    sizes = ((20000, 10), (20000, 100), (100000, 100), (10000, 1000))
    quick_sizes = ((5000, 10), (20000, 100))
    accuracy_label = "normwise rel err (logits × 10)"

    def data(self, size):
        n, c = size
        rng = _rng()
        return {"logits": 3 * rng.standard_normal((n, c)), "labels": rng.integers(0, c, n)}

    def probe(self, data):
        return {"logits": 10 * data["logits"][:2000], "labels": data["labels"][:2000]}

    def reference(self, probe):
        return reference_cross_entropy(probe["logits"], probe["labels"])

    def accuracy(self, outputs, reference):
        rel = _normwise(outputs, list(reference))
        return rel, f"{rel:.1e}"

    def methods(self, backend, dtype, size, quick):
        rows = [
            Method("exp(logits): one elementwise pass", "bound", lambda z, y: array_namespace(z).exp(z)),
            Method("softdist.softmax_cross_entropy_and_grad", "softdist", softmax_cross_entropy_and_grad),
            Method("textbook log-softmax + one-hot", "peer", _textbook_cross_entropy),
        ]
        skipped: list[str] = []
        if backend.name == "numpy":
            try:
                from sklearn._loss.loss import HalfMultinomialLoss

                def sklearn_loss(z, y):
                    n, c = z.shape
                    loss, grad = HalfMultinomialLoss(n_classes=c).loss_gradient(y.astype(z.dtype), z)
                    return loss.mean(), grad / n

                rows.append(Method("sklearn HalfMultinomialLoss.loss_gradient", "peer", sklearn_loss))
            except ImportError:
                skipped.append("sklearn HalfMultinomialLoss: scikit-learn is not installed")
        if backend.library == "torch":
            rows += _torch_logits_rows()
        if backend.library == "jax":
            rows += _optax_rows(skipped, linear=False, jit=backend.jit)
        return rows, skipped


def _torch_logits_rows() -> list[Method]:
    import torch.nn.functional as F

    import softdist.torch as st

    def backward(loss_fn):
        def run(z, y):
            z = z.detach().requires_grad_()
            loss = loss_fn(z, y)
            loss.backward()
            return loss.detach(), z.grad

        return run

    module = st.SoftmaxCrossEntropy()
    return [
        Method("softdist.torch.SoftmaxCrossEntropy, fwd + bwd", "softdist", backward(module), jit=False),
        Method("F.cross_entropy + autograd, fwd + bwd", "peer", backward(F.cross_entropy), jit=False),
    ]


OPTAX = "jax.value_and_grad(optax loss) (jit)"
OPTAX_EAGER = "jax.value_and_grad(optax loss) (eager)"


def _optax_rows(skipped: list[str], *, linear: bool, jit: bool = True) -> list[Method]:
    """optax's integer-label cross-entropy under jax.value_and_grad: compiled on the JAX-jit backends,
    op by op (as a user calling it eagerly would) on eager JAX."""
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        skipped.append("jax.value_and_grad of optax's loss: optax is not installed")
        return []

    def mean_loss(z, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, y))

    if linear:

        def model_loss(W, X, y):
            return mean_loss(jnp.matmul(X, W, precision="highest"), y) + REG * jnp.sum(W * W)

        model_grad = jax.value_and_grad(model_loss)
        model_grad = jax.jit(model_grad) if jit else model_grad
        return [Method(OPTAX if jit else OPTAX_EAGER, "peer", lambda W, X, y, G: model_grad(W, X, y),
                       jit=False)]  # fmt: skip
    logits_grad = jax.value_and_grad(mean_loss)
    return [Method(OPTAX if jit else OPTAX_EAGER, "peer", jax.jit(logits_grad) if jit else logits_grad,
                   jit=False)]  # fmt: skip


# -- softmax_loss of a linear model --------------------------------------------------------------------


def _textbook_softmax_loss(W: Any, X: Any, y: Any, G: Any) -> tuple[Any, Any]:
    """The vectorised course version: scores, textbook cross-entropy, Xᵀ(P − Y)/N + 2·reg·W."""
    xp = array_namespace(W, X)
    loss, dscores = _textbook_cross_entropy(_matmul(X, W), y)
    return loss + REG * xp.sum(W * W), _matmul(X.T, dscores) + 2 * REG * W


class SoftmaxLoss(Case):
    name = "softmax_loss"
    title = f"softmax_loss(W, X, y, reg={REG}): loss and dW of a linear softmax classifier"
    work_label = "N · D · C (multiply-adds per product)"
    sizes = ((20000, 512, 10), (20000, 512, 100), (50000, 256, 100), (5000, 1024, 1000))
    quick_sizes = ((5000, 128, 10), (20000, 256, 100))
    accuracy_label = "normwise rel err (scores ~ ±20)"

    def flops(self, size):
        n, d, c = size
        return 4.0 * n * d * c  # X @ W and Xᵀ @ G

    def data(self, size):
        n, d, c = size
        rng = _rng()
        return {"W": 0.01 * rng.standard_normal((d, c)), "X": rng.standard_normal((n, d)),
                "y": rng.integers(0, c, n), "G": rng.standard_normal((n, c))}  # fmt: skip

    def probe(self, data):
        d = data["W"].shape[0]
        return {"W": data["W"] * 20 / math.sqrt(d) / 0.01, "X": data["X"][:2000], "y": data["y"][:2000],
                "G": data["G"][:2000]}  # fmt: skip

    def reference(self, probe):
        return reference_softmax_loss(probe["W"], probe["X"], probe["y"], reg=REG)

    def accuracy(self, outputs, reference):
        rel = _normwise(outputs, list(reference))
        return rel, f"{rel:.1e}"

    def methods(self, backend, dtype, size, quick):
        rows = [
            Method("X @ W + Xᵀ @ G", "bound", lambda W, X, y, G: (_matmul(X, W), _matmul(X.T, G))),
            Method("softdist.softmax_loss", "softdist", lambda W, X, y, G: softmax_loss(W, X, y, reg=REG)),
            Method("textbook (CS231n, vectorised)", "peer", _textbook_softmax_loss),
        ]
        skipped: list[str] = []
        if backend.name == "numpy":
            chunked = Method("softdist.softmax_loss(chunk_size=4096)", "softdist",
                             lambda W, X, y, G: softmax_loss(W, X, y, reg=REG, chunk_size=4096))  # fmt: skip
            rows.append(chunked)
            try:
                from sklearn._loss.loss import HalfMultinomialLoss
                from sklearn.linear_model._linear_loss import LinearModelLoss

                def sklearn_loss(W, X, y, G):
                    base = HalfMultinomialLoss(n_classes=W.shape[1])
                    lml = LinearModelLoss(base_loss=base, fit_intercept=False)
                    loss, grad = lml.loss_gradient(np.ascontiguousarray(W.T), X, y.astype(X.dtype),
                                                   l2_reg_strength=2 * REG)  # fmt: skip
                    return loss, grad.T

                rows.append(Method("sklearn LinearModelLoss.loss_gradient", "peer", sklearn_loss))
            except ImportError:
                skipped.append("sklearn LinearModelLoss: scikit-learn is not installed")
        if backend.library == "torch":
            import torch.nn.functional as F

            def autograd(W, X, y, G):
                W = W.detach().requires_grad_()
                loss = F.cross_entropy(X @ W, y) + REG * (W * W).sum()
                loss.backward()
                return loss.detach(), W.grad

            rows.append(Method("F.cross_entropy(X @ W) + autograd", "peer", autograd, jit=False))
        if backend.library == "jax":
            rows += _optax_rows(skipped, linear=True, jit=backend.jit)
        return rows, skipped


# -- the fused linear cross-entropy head ------------------------------------------------------------------
def _reference_linear_head(X: np.ndarray, W: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Mean loss, dX and dW of the plain formula in long double."""
    X, W = X.astype(np.longdouble), W.astype(np.longdouble)
    n = X.shape[0]
    z = X @ W.T
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    G = np.exp(z - lse[:, None])
    G[np.arange(n), y] -= 1
    G /= n
    return [np.asarray(np.mean(lse - z[np.arange(n), y]), np.float64), (G @ W).astype(np.float64),
            (G.T @ X).astype(np.float64)]  # fmt: skip


def _textbook_linear_head(X: Any, W: Any, y: Any, G: Any) -> tuple[Any, Any, Any]:
    """logits = X Wᵀ, the textbook cross-entropy on them, then both products: holds the (N, C) logits."""
    loss, dz = _textbook_cross_entropy(_matmul(X, W.T), y)
    return loss, _matmul(dz, W), _matmul(dz.T, X)


class LinearHead(Case):
    name = "linear_cross_entropy"
    title = "linear_cross_entropy_and_grad(X, W, y): mean loss, dX and dW of a classifier head"
    work_label = "N · D · C (multiply-adds per product)"
    sizes = ((4096, 256, 8000), (2048, 1024, 32000))
    quick_sizes = ((512, 64, 1000), (1024, 128, 4000))
    accuracy_label = "normwise rel err (logits ~ ±10)"

    def flops(self, size):
        n, d, c = size
        return 6.0 * n * d * c  # X Wᵀ, G W and Gᵀ X

    def data(self, size):
        n, d, c = size
        rng = _rng()
        return {"X": rng.standard_normal((n, d)), "W": rng.standard_normal((c, d)) / math.sqrt(d),
                "y": rng.integers(0, c, n), "G": rng.standard_normal((n, c))}  # fmt: skip

    def probe(self, data):
        return {"X": data["X"][:512], "W": 10 * data["W"][:2000], "y": data["y"][:512] % 2000,
                "G": data["G"][:512, :2000]}  # fmt: skip

    def reference(self, probe):
        return _reference_linear_head(probe["X"], probe["W"], probe["y"])

    def accuracy(self, outputs, reference):
        rel = _normwise(outputs, list(reference))
        return rel, f"{rel:.1e}"

    def methods(self, backend, dtype, size, quick):
        rows = [
            Method("X Wᵀ + G W + Gᵀ X", "bound",
                   lambda X, W, y, G: (_matmul(X, W.T), _matmul(G, W), _matmul(G.T, X))),
            Method("softdist.linear_cross_entropy_and_grad", "softdist",
                   lambda X, W, y, G: linear_cross_entropy_and_grad(X, W, y)),
        ]  # fmt: skip
        skipped: list[str] = []
        n, _, c = size
        if n * c * 8 * 3 <= MATERIALISE_LIMIT:
            rows.append(Method("textbook: logits, cross-entropy, products", "peer", _textbook_linear_head))
        else:
            skipped.append("textbook: the logits would exceed the materialisation limit")
        if backend.library == "torch":
            rows += _torch_linear_rows(skipped)
        if backend.library == "jax" and backend.jit:
            rows += _optax_head_rows(skipped)
        return rows, skipped


def _torch_linear_rows(skipped: list[str]) -> list[Method]:
    import torch.nn.functional as F

    import softdist.torch as st

    def backward(loss_fn):
        def run(X, W, y, G):
            X, W = X.detach().requires_grad_(), W.detach().requires_grad_()
            loss = loss_fn(X, W, y)
            loss.backward()
            return loss.detach(), X.grad, W.grad

        return run

    rows = [
        Method("softdist.torch.linear_cross_entropy, fwd + bwd", "softdist",
               backward(st.linear_cross_entropy), jit=False),
        Method("F.linear + F.cross_entropy + autograd", "peer",
               backward(lambda X, W, y: F.cross_entropy(F.linear(X, W), y)), jit=False),
    ]  # fmt: skip
    if hasattr(F, "linear_cross_entropy"):
        from torch.nn import LinearCrossEntropyOptions

        chunked = LinearCrossEntropyOptions(batch_chunk_size=1024)
        rows += [
            Method("F.linear_cross_entropy (default), fwd + bwd", "peer",
                   backward(F.linear_cross_entropy), jit=False),
            Method("F.linear_cross_entropy (chunked 1024), fwd + bwd", "peer",
                   backward(lambda X, W, y: F.linear_cross_entropy(X, W, y, options=chunked)), jit=False),
        ]  # fmt: skip
    else:
        skipped.append("F.linear_cross_entropy: needs torch >= 2.13")
    return rows


def _optax_head_rows(skipped: list[str]) -> list[Method]:
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        skipped.append("jax.value_and_grad of optax's loss: optax is not installed")
        return []
    import softdist.jax as sj

    def plain(X, W, y):
        z = jnp.matmul(X, W.T, precision="highest")
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, y))

    plain_grad = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))
    ours_grad = jax.jit(jax.value_and_grad(sj.linear_cross_entropy, argnums=(0, 1)))

    def flat(f):
        def run(X, W, y, G):
            loss, (dX, dW) = f(X, W, y)
            return loss, dX, dW

        return run

    return [
        Method("jax.value_and_grad(softdist.jax.linear_cross_entropy) (jit)", "softdist", flat(ours_grad),
               jit=False),
        Method(OPTAX + " of X Wᵀ", "peer", flat(plain_grad), jit=False),
    ]  # fmt: skip


CASES: dict[str, Case] = {
    c.name: c for c in (PairwiseSqdist(), Knn(), CrossEntropy(), SoftmaxLoss(), LinearHead())
}
