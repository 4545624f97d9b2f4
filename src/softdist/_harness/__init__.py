"""What the tests, the CLI and the benchmark share, without depending on one another: the backends they
run on (with NumPy conversion in and out) and the independent NumPy references. NumPy is allowed here.

``softdist.testing`` re-exports it for tests and for code built on softdist; the CLI and the benchmark
import it from here, so they do not depend on the test helpers.
"""

from ._backends import (
    BACKENDS,
    CPU_BACKENDS,
    GPU_BACKENDS,
    JAX_X64_ENV,
    Backend,
    DaskComputeError,
    backend_by_name,
    enable_jax_x64,
    jax_x64_wanted,
)
from ._exit import finish
from ._references import (
    SQDIST_RTOL,
    hard_datasets,
    reference_cross_entropy,
    reference_distances,
    reference_softmax_loss,
    reference_sqdist,
)

__all__ = [
    "BACKENDS",
    "CPU_BACKENDS",
    "GPU_BACKENDS",
    "JAX_X64_ENV",
    "SQDIST_RTOL",
    "Backend",
    "DaskComputeError",
    "backend_by_name",
    "enable_jax_x64",
    "finish",
    "hard_datasets",
    "jax_x64_wanted",
    "reference_cross_entropy",
    "reference_distances",
    "reference_softmax_loss",
    "reference_sqdist",
]
