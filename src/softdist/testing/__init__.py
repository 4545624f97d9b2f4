"""Testing helpers for softdist and for code built on it.

- independent NumPy references (explicit differences in extended precision);
- the backends every numeric test runs on, with skip reasons for the missing ones;
- assertions that check namespace, device, dtype and shape before values.
"""

from .._harness import (
    BACKENDS,
    CPU_BACKENDS,
    GPU_BACKENDS,
    JAX_X64_ENV,
    SQDIST_RTOL,
    Backend,
    DaskComputeError,
    backend_by_name,
    enable_jax_x64,
    hard_datasets,
    jax_x64_wanted,
    reference_cross_entropy,
    reference_distances,
    reference_softmax_loss,
    reference_sqdist,
)
from ._assertions import assert_matches_reference, assert_same_kind

__all__ = [
    "BACKENDS",
    "CPU_BACKENDS",
    "GPU_BACKENDS",
    "JAX_X64_ENV",
    "SQDIST_RTOL",
    "Backend",
    "DaskComputeError",
    "assert_matches_reference",
    "assert_same_kind",
    "backend_by_name",
    "enable_jax_x64",
    "hard_datasets",
    "jax_x64_wanted",
    "reference_cross_entropy",
    "reference_distances",
    "reference_softmax_loss",
    "reference_sqdist",
]
