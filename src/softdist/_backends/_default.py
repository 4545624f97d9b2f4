"""The generic backend: the pure-standard ``_agnostic`` code for every decision, and the base class the
library backends override where they have a faster or safer path."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any

from .. import _config
from .._agnostic import distances as _distances
from .._agnostic import linear as _linear
from .._agnostic import neighbors as _neighbors
from .._agnostic import softmax as _softmax
from .._lib._compat import at, device


def scatter_subtract(G: Any, labels: Any, values: Any, *, xp: Any) -> Any:
    """G[i, labels[i]] -= values[i] by scatter (NumPy, PyTorch, CuPy, JAX): n writes instead of a mask
    pass over G. G must be a temporary of ours (modified in place where the library allows)."""
    rows = xp.arange(G.shape[0], device=device(G))
    return at(G, (rows, labels)).subtract(values)


# The generic block kernel with the one-hot term as a scatter (libraries with a scatter: torch, JAX).
scattering_kernel = functools.partial(_softmax.block_loss_and_grad, scatter=scatter_subtract)


def auto_chunk_rows(n: int, n_classes: int, itemsize: int, memory: int) -> int:
    """Rows per chunk so that one chunk of logits fits in ``memory`` bytes, but at least
    ``_config.LINEAR_MIN_AUTO_ROWS``."""
    return max(1, min(n, max(_config.LINEAR_MIN_AUTO_ROWS, memory // max(1, n_classes * itemsize))))


class Backend:
    """What softdist asks of a library. Every method here is the generic path; a library's subclass
    overrides a method only for a fast path (with a comment saying why and by how much) or where the
    library needs a different strategy (no data-dependent shapes, lazy chunks)."""

    name = "generic"
    # NumPy input goes through scikit-learn's own validation in the estimators; other arrays stay in
    # their library.
    sklearn_native = False
    # ``operands(A, B, mean, xp=)`` of the distance expansion (see _agnostic.distances.augmented_operands).
    augmented_operands: Callable[..., tuple[Any, Any, Any, Any]] = staticmethod(_distances.augmented_operands)

    # ``row_blocks(block, weight_total, row_args, whole_args, *, class_weight, outputs, work, xp)``: the
    # softmax losses as one task per row block (Dask); None where the whole arrays are computed at once.
    row_blocks: Callable[..., list[Any]] | None = None

    def __repr__(self) -> str:
        return f"<softdist backend {self.name}>"

    # -- values, tracing and precision ------------------------------------------------------------------
    def values_readable(self, arrays: Iterable[Any]) -> bool:
        """Whether Python may read these arrays' values now (eager validation). JAX decides on the
        values themselves: see :meth:`is_abstract`."""
        return True

    def is_abstract(self, x: Any) -> bool:
        """True for a value without a concrete value (a JAX tracer)."""
        return False

    def matmul_precision(self) -> contextlib.AbstractContextManager[None]:
        """A context in which matrix products run at the dtype's full precision."""
        return contextlib.nullcontext()

    def run(self, core: Callable[..., Any], arrays: tuple[Any, ...], xp: Any, **static: Any) -> Any:
        """``core(*arrays, xp=xp, **static)``, the way this library runs a whole computation best."""
        return core(*arrays, xp=xp, **static)

    def default_working_memory(self, x: Any, *, cpu_default: int) -> int:
        """Bytes of temporaries when the caller gave none: ``cpu_default`` on a CPU."""
        return cpu_default

    # -- validation -------------------------------------------------------------------------------------
    def check_label_dtype(self, labels: Any) -> None:
        """Raise TypeError for class-index dtypes this library cannot compute with."""

    # -- estimators -------------------------------------------------------------------------------------
    def unique_inverse(self, y: Any, *, xp: Any) -> tuple[Any, Any]:
        """(the sorted distinct labels, each label's index among them): the estimators' class encoding."""
        return xp.unique_inverse(y)

    def in_memory(self, x: Any) -> Any:
        """``x`` as an array whose values exist now (the estimators' minibatch training loop)."""
        return x

    # -- distances ---------------------------------------------------------------------------------------
    def pairwise_sqdist(self, A: Any, B: Any | None, *, dtype: Any, xp: Any) -> Any:
        """Squared distances of non-empty A and B, already in the working dtype ``dtype``."""
        return _distances.pairwise_sqdist(A, B, xp=xp, operands=self.augmented_operands)

    # -- k nearest neighbours ---------------------------------------------------------------------------
    def select_smallest(self, D: Any, count: int, *, xp: Any) -> Any:
        """Column indices of the ``count`` smallest entries of each row, NaN last; count < D.shape[1]."""
        return _neighbors.select_smallest(D, count, xp=xp)

    def smallest_selector(self, xp: Any) -> Callable[[Any, int], Any]:
        """``select(D, count)``: column indices of the ``count`` smallest entries of each row, NaN last."""

        def select(D: Any, count: int) -> Any:
            if count >= D.shape[1]:
                return _neighbors.select_smallest(D, count, xp=xp)
            return self.select_smallest(D, count, xp=xp)

        return select

    def knn_pruning_applies(self, x: Any) -> bool:
        """Pruning (data-dependent shapes, one host read per tile) suits eager CPU backends; GPUs and
        JAX select a static top-k per tile instead (no sync, static shapes)."""
        return True

    def knn_tile_map(self, xp: Any) -> _neighbors.TileMap | None:
        """How the pruned search runs its independent query tiles: None is in order, on this thread."""
        return None

    def knn_flat_nonzero(self, xp: Any) -> Callable[[Any], Any] | None:
        """``flat_nonzero(mask)`` for the pruned search: indices of the True entries of a 1-D mask, in
        order; None is ``xp.nonzero(mask)[0]``."""
        return None

    def knn_screen(self, xp: Any) -> _neighbors.Screen | None:
        """``screen`` for the pruned search (see _agnostic.neighbors.Screen); None is the generic one."""
        return None

    def knn_exact_rows(self, xp: Any) -> Callable[..., Any] | None:
        """The pruned search's exact-distance kernel (same bits as
        _agnostic.distances.exact_sqdist_rows, which None means)."""
        return None

    def knn_pruned_context(self, xp: Any) -> contextlib.AbstractContextManager[Any]:
        """Entered around the whole pruned search (its setup included)."""
        return contextlib.nullcontext()

    def knn_kth_smallest(self, xp: Any) -> _neighbors.KthSmallest | None:
        """``kth_smallest(E, k)`` for the pruned search: each row's k-th smallest value, NaN counting as
        largest; None is by ``select`` (the k smallest, then their maximum)."""
        return None

    def knn_subtile_entries(self, xp: Any) -> int:
        """Entries of one sub-tile of the pruned search (its product and screen at once)."""
        return _config.KNN_SUBTILE_ENTRIES

    def knn_namespace(self, xp: Any) -> Any:
        """The namespace the pruned search computes with (the same functions, same results)."""
        return xp

    def knn_finite_rows(self, xp: Any) -> Callable[..., Any] | None:
        """``finite_rows(A, xp=)`` for the pruned search (the rows with no NaN or inf); None is
        _agnostic.distances.finite_rows."""
        return None

    def knn(
        self, Q: Any, X: Any, *, k: int, exclude_self: bool, tile_rows: int, tile_cols: int,
        sqdist: Callable[..., Any], dtype: Any, index_dtype: Any, xp: Any,
    ) -> tuple[Any, Any]:  # fmt: skip
        """(distances, indices) of the k nearest rows of X for every row of Q (inputs in ``dtype``, the
        working dtype); ``sqdist(A, B, dtype=, xp=)`` is the public distance kernel."""
        tiles = {"k": k, "exclude_self": exclude_self, "tile_rows": tile_rows, "tile_cols": tile_cols}
        select = self.smallest_selector(xp)
        with self.matmul_precision():
            if self.knn_pruning_applies(Q) and (X is Q or self.knn_pruning_applies(X)):
                with self.knn_pruned_context(xp):
                    return _neighbors.knn_pruned(
                        Q, X, operands=self.augmented_operands, select=select, xp=self.knn_namespace(xp),
                        tile_map=self.knn_tile_map(xp), flat_nonzero=self.knn_flat_nonzero(xp),
                        screen=self.knn_screen(xp), exact_rows=self.knn_exact_rows(xp),
                        finite_rows=self.knn_finite_rows(xp),
                        subtile_entries=self.knn_subtile_entries(xp),
                        kth_smallest=self.knn_kth_smallest(xp), **tiles,
                    )  # fmt: skip
            sqdist = functools.partial(sqdist, dtype=dtype, xp=xp)
            return _neighbors.knn(Q, X, sqdist=sqdist, select=select, xp=xp, **tiles)

    # -- softmax cross-entropy ---------------------------------------------------------------------------
    def softmax_kernel(self, arrays: list[Any]) -> _softmax.Kernel:
        """The block kernel (loss and gradient of a block of scores) for a call on ``arrays``."""
        return _softmax.block_loss_and_grad

    # -- linear cross-entropy head ----------------------------------------------------------------------
    def linear_chunks(
        self, X: Any, labels: Any, sample_weight: Any, *, n: Any, n_classes: int, chunk_size: Any,
        work: Any, xp: Any,
    ) -> tuple[Any, Any, Any, int]:  # fmt: skip
        """(X, labels, sample_weight, rows per chunk) for the chunked head."""
        if chunk_size == "auto":
            memory = min(
                _config.LINEAR_GPU_WORKING_MEMORY,
                self.default_working_memory(X, cpu_default=_config.LINEAR_CPU_WORKING_MEMORY),
            )
            return X, labels, sample_weight, auto_chunk_rows(n, n_classes, xp.finfo(work).bits // 8, memory)
        return X, labels, sample_weight, max(1, min(chunk_size, n))

    def linear_workspace(
        self, X: Any, W: Any, b: Any | None, *, chunk_rows: int, work: Any, want_dX: bool, xp: Any
    ) -> _linear.Workspace:
        """Where the head's scores are computed and its gradients accumulated."""
        return _linear.Workspace(X, W, b, work=work, want_dX=want_dX, tree=False, xp=xp)

    def linear_head(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """The chunk loop (arguments of _agnostic.linear.linear_head)."""
        return _linear.linear_head(*args, **kwargs)
