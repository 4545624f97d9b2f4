"""Input checks shared by the public functions.

Everything here reads metadata only (type, ndim, shape, dtype, device): no array values, so the checks
cost nothing on a GPU, keep Dask lazy and work under ``jax.jit``.
"""

from __future__ import annotations

import math
from typing import Any

from ._compat import array_namespace, default_dtype, device, is_array_api_obj


def _library_name(x: Any) -> str:
    name = type(x).__module__.split(".")[0]
    return "jax" if name == "jaxlib" else name  # concrete JAX arrays live in jaxlib, tracers in jax


def _unusable(x: Any) -> str | None:
    """Why the data of an array cannot be computed on as a dense array, or None (metadata only)."""
    library = _library_name(x)
    if library == "torch":
        if getattr(x, "is_nested", False):
            return "a nested torch tensor; pass a dense tensor (e.g. torch.nested.to_padded_tensor)"
        if str(x.layout) != "torch.strided":
            return f"a sparse torch tensor (layout {x.layout}); pass a dense one (x.to_dense())"
        if x.device.type == "meta":
            return "a torch meta tensor, which holds no data; pass a tensor on a real device"
    if library == "numpy" and getattr(x, "mask", None) is not None:
        # np.ma.MaskedArray: every computation here would silently drop the mask.
        return "a NumPy masked array (the mask would be ignored); pass x.filled(value) or the kept rows"
    if library == "dask" and getattr(getattr(x, "_meta", None), "mask", None) is not None:
        return "a Dask array of masked chunks (the mask would be ignored); fill it first"
    return None


def _namespace_library(xp: Any) -> str | None:
    """The library an array namespace computes with: 'numpy' for both numpy and array_api_compat.numpy."""
    name = getattr(xp, "__name__", None)
    if not isinstance(name, str):
        return None
    name = name.removeprefix("array_api_compat.")
    return name.split(".")[0]


def _device_key(x: Any, dev: Any) -> Any:
    # A JAX array sharded over several devices reports its sharding as its device; two arrays on the same
    # devices with different layouts (rows split, labels split) are on the same devices.
    devices = getattr(x, "devices", None)
    return frozenset(devices()) if callable(devices) else dev


def namespace_of(named_arrays: dict[str, Any], xp: Any = None) -> Any:
    """The array namespace shared by every non-None array in ``named_arrays``.

    Raises a TypeError naming the argument when one is not an array, when two come from different
    libraries and when ``xp`` is not their namespace; a ValueError when one holds no computable dense
    data (torch meta, sparse or nested tensors, NumPy masked arrays) and when two live on different
    devices.
    """
    present = {name: x for name, x in named_arrays.items() if x is not None}
    for name, x in present.items():
        if not is_array_api_obj(x):
            raise TypeError(
                f"{name} must be an array (NumPy, PyTorch, JAX, CuPy, Dask or any array API "
                f"library); got {type(x).__module__}.{type(x).__qualname__}"
            )
        if (why := _unusable(x)) is not None:
            raise ValueError(f"{name} must be a dense array with data; got {why}")
    libraries = {name: _library_name(x) for name, x in present.items()}
    if len(set(libraries.values())) > 1:
        got = ", ".join(f"{name} from {lib}" for name, lib in libraries.items())
        raise TypeError(f"all arrays must come from one array library; got {got}")
    inferred = array_namespace(*present.values())
    if xp is not None and _namespace_library(xp) != _namespace_library(inferred):
        first = next(iter(present))
        raise TypeError(
            f"xp must be the namespace of the arrays ({inferred.__name__} for {first} from "
            f"{libraries[first]}) or None; got {getattr(xp, '__name__', repr(xp))}"
        )
    # xp names the arrays' library; computing goes through its standard-conforming namespace (`torch`
    # itself, for one, lacks parts of the standard that array_api_compat.torch provides).
    xp = inferred
    # A device of None (a JAX tracer) is unknown, not different.
    devices = {name: dev for name, x in present.items() if (dev := device(x)) is not None}
    if not devices:
        return xp
    first_name, first_device = next(iter(devices.items()))
    first_key = _device_key(present[first_name], first_device)
    for name, dev in devices.items():
        if _device_key(present[name], dev) != first_key:
            raise ValueError(
                f"all arrays must be on one device; {first_name} is on {first_device!r} "
                f"but {name} is on {dev!r}"
            )
    return xp


def _is_known(n: Any) -> bool:
    return n is not None and not (isinstance(n, float) and math.isnan(n))


def check_known_shapes(named_arrays: dict[str, Any]) -> None:
    """A ValueError naming the first array whose size is unknown (a Dask array after boolean indexing):
    row offsets, class counts and block shapes need it, and finding it out would compute the array."""
    for name, x in named_arrays.items():
        if x is not None and not all(_is_known(s) for s in x.shape):
            raise ValueError(
                f"{name} has unknown chunk sizes (shape {tuple(x.shape)}), as Dask arrays do after boolean "
                f"indexing; call {name}.compute_chunk_sizes() first (or index with known sizes)"
            )


def check_matrix(name: str, x: Any, *, what: str = "(n_samples, n_features)") -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array {what}; got shape {tuple(x.shape)}")


def check_same_features(name_a: str, a: Any, name_b: str, b: Any) -> None:
    da, db = a.shape[1], b.shape[1]
    if _is_known(da) and _is_known(db) and da != db:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of features (columns); "
            f"{name_a} has shape {tuple(a.shape)} and {name_b} has shape {tuple(b.shape)}"
        )


def float_dtype_of(named_arrays: dict[str, Any], xp: Any) -> Any:
    """The floating dtype the result is returned in.

    Real floating inputs keep their (promoted) dtype; integer and boolean inputs use the namespace's
    default real floating dtype, so integer arithmetic (uint8 pixels) never overflows. Complex: TypeError.
    """
    floats = []
    for name, x in named_arrays.items():
        if x is None:
            continue
        if xp.isdtype(x.dtype, "complex floating"):
            raise TypeError(f"{name} must be real; complex dtype {x.dtype} is not supported")
        if xp.isdtype(x.dtype, "real floating"):
            floats.append(x.dtype)
        elif not xp.isdtype(x.dtype, ("integral", "bool")):
            raise TypeError(f"{name} must have a real numeric dtype; got {x.dtype}")
    if floats:
        return xp.result_type(*floats)
    first = next(x for x in named_arrays.values() if x is not None)
    return default_dtype(xp, "real floating", device=device(first))


def check_distance_dtype(named_arrays: dict[str, Any], dtype: Any, func: str, xp: Any) -> None:
    """TypeError for extended precision (NumPy's longdouble): the distance kernels' power-of-two
    scalings and error bounds are derived for the IEEE binary formats up to float64 (the softmax
    functions do compute in longdouble)."""
    if xp.finfo(dtype).bits <= 64:
        return
    name = next(
        (n for n, x in named_arrays.items() if x is not None and xp.isdtype(x.dtype, "real floating")
         and xp.finfo(x.dtype).bits > 64),
        "the input",
    )  # fmt: skip
    raise TypeError(
        f"{func} does not support extended-precision floats: {name} has dtype {dtype}; expected float16, "
        f"bfloat16, float32, float64 or an integer/bool dtype (cast with {name}.astype('float64'))"
    )


def working_dtype(dtype: Any, xp: Any) -> Any:
    """The dtype arithmetic runs in: half precision (float16, bfloat16) computes in float32, where squares
    and sums of exponentials do not overflow at 6.5e4; results are cast back to ``dtype``."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def check_vector(name: str, x: Any, length: Any, what: str) -> None:
    if x.ndim != 1 or (_is_known(length) and _is_known(x.shape[0]) and x.shape[0] != length):
        raise ValueError(
            f"{name} must be a 1-D array of shape ({length},) {what}; got shape {tuple(x.shape)}"
        )
