"""NumPy: the augmented GEMM operands built in place, argpartition, the in-place CPU softmax kernel and
linear-head workspace (shared with PyTorch, in ``_cpu``)."""

from __future__ import annotations

from typing import Any

from .._agnostic import linear as _linear
from .._agnostic import softmax as _softmax
from ._cpu import EagerCPUKnnHooks, EagerCPUWorkspace, eager_cpu_block, threaded_linear_head
from ._default import Backend


# --- NumPy: build the augmented GEMM operands in place -----------------------------------------------
# Why: NumPy evaluates each elementwise step into a fresh temporary, single-threaded. Writing the centred
# rows straight into the augmented operand saves four (n, d) temporaries: 1.5x -> 1.3x the plain A @ B.T
# at n = m = 4000, d = 256 (softdist bench, pairwise_sqdist). Same arithmetic as
# softdist._agnostic.distances.augmented_operands.
def numpy_augmented_operands(A: Any, B: Any, mean: Any, *, xp: Any) -> tuple[Any, Any, Any, Any]:
    # xp is array_api_compat.numpy, whose ufuncs are NumPy's own (with `out=`): no NumPy import here.
    def augmented(X: Any, scale: float, norms_first: bool) -> tuple[Any, Any]:
        n, d = X.shape
        out = xp.empty((n, d + 2), dtype=X.dtype)
        centred = out[:, :d]
        xp.subtract(X, mean, out=centred)
        norms = xp.einsum("ij,ij->i", centred, centred)
        if scale != 1.0:
            centred *= scale
        out[:, d], out[:, d + 1] = (norms, 1) if norms_first else (1, norms)
        return out, norms

    A_aug, ra = augmented(A, -2.0, True)
    B_aug, rb = augmented(B, 1.0, False)
    return A_aug, B_aug, ra, rb


class NumpyBackend(EagerCPUKnnHooks, Backend):
    name = "numpy"
    sklearn_native = True
    augmented_operands = staticmethod(numpy_augmented_operands)

    # Why: top-k selection is the other big cost after the distance tiles; NumPy's argpartition is the
    # routine array-api-extra's generic one wraps, without its NaN pass: NaN already sorts last.
    def select_smallest(self, D: Any, count: int, *, xp: Any) -> Any:
        return xp.argpartition(D, count - 1, axis=1)[:, :count]

    # Why: the pruned kNN's bound is each row's k-th smallest value. NumPy's partition gives it at once,
    # 2-4x faster than argpartition, a gather and a maximum (512 x 1024 float32, k = 10: 1.09 against
    # 2.16 ms; 512 x 200: 0.34 against 1.48 ms). NaN sorts last in both. The same values.
    def knn_kth_smallest(self, xp: Any) -> Any:
        return lambda E, k: xp.partition(E, k - 1, axis=1)[:, k - 1]

    # Eager and on the CPU: always the in-place kernel (see _cpu.eager_cpu_block: 3 passes instead of 7).
    def softmax_kernel(self, arrays: list[Any]) -> _softmax.Kernel:
        return eager_cpu_block

    def linear_workspace(
        self, X: Any, W: Any, b: Any | None, *, chunk_rows: int, work: Any, want_dX: bool, xp: Any
    ) -> _linear.Workspace:
        return EagerCPUWorkspace(X, W, b, chunk_rows=chunk_rows, work=work, want_dX=want_dX, xp=xp)

    # Rows in one part per core on threads, single-threaded products (see _cpu.threaded_linear_head).
    def linear_head(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return threaded_linear_head(*args, **kwargs)
