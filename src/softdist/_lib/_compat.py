"""The one place softdist imports array-api-compat and array-api-extra from."""

from array_api_compat import (
    array_namespace,
    device,
    is_array_api_obj,
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
    is_writeable_array,
)
from array_api_extra import argpartition, at, default_dtype

__all__ = [
    "argpartition",
    "array_namespace",
    "at",
    "default_dtype",
    "device",
    "is_array_api_obj",
    "is_array_api_strict_namespace",
    "is_cupy_namespace",
    "is_dask_namespace",
    "is_jax_namespace",
    "is_numpy_namespace",
    "is_torch_namespace",
    "is_writeable_array",
]
