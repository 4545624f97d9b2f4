"""CuPy: argpartition, a static top-k per kNN tile (no host sync), and the free device memory as the
default working memory."""

from __future__ import annotations

from typing import Any

from .. import _config
from ._default import Backend


class CupyBackend(Backend):
    name = "cupy"

    def default_working_memory(self, x: Any, *, cpu_default: int) -> int:
        import cupy

        return int(cupy.cuda.Device().mem_info[0] // _config.GPU_FREE_MEMORY_DIVISOR)

    # Why: top-k selection is the other big cost after the distance tiles; CuPy's argpartition is the
    # routine array-api-extra's generic one wraps, without its NaN pass: NaN already sorts last.
    def select_smallest(self, D: Any, count: int, *, xp: Any) -> Any:
        return xp.argpartition(D, count - 1, axis=1)[:, :count]

    def knn_pruning_applies(self, x: Any) -> bool:
        return False  # pruning needs one host read per tile: a device sync on a GPU
