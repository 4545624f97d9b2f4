"""The backends every numeric test runs on, and how a test moves data in and out of them.

Inputs and references are built in NumPy; only the function under test runs on the backend. A backend
whose library is missing (or that needs a GPU that is absent) is still listed, with the reason it skips.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


class DaskComputeError(AssertionError):
    """Raised when code under test makes a Dask graph compute."""


def _forbid_compute(*args: Any, **kwargs: Any) -> Any:
    raise DaskComputeError("softdist triggered a Dask compute; library code must stay lazy")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_available() -> bool:
    if _has("cupy"):
        try:
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            return False
    if _has("torch"):
        import torch

        return bool(torch.cuda.is_available())
    return False


# jax.jit of each (function, options) pair a JAX-jit backend has run, least recently used first: calls
# with the same shapes reuse its compiled program, as a user's jitted step does (a new jax.jit per call
# compiled every call anew: most of the JAX tests' time). ``Backend.clear_jit_cache`` empties it; the
# ``backend`` fixture does, around every test that monkeypatches, so that no program compiled before a
# patch is used. It is deliberately not softdist's own eager table (``_backends._jax.jax_compiled``):
# this backend stands for a user's own ``jax.jit`` around softdist, one jitted function whose shapes JAX
# caches, and the eager table is what the other JAX backend tests (keyed per argument signature, sized
# by ``_config``, patched by its own tests).
_JITTED: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_JITTED_SIZE = 64


def _jitted(func: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    import functools

    import jax

    key = (func, tuple(sorted(options.items())))
    try:
        hash(key)
    except TypeError:  # an array among the options: traced as a constant of a new function
        return jax.jit(functools.partial(func, **options))
    if key not in _JITTED:
        _JITTED[key] = jax.jit(functools.partial(func, **options))
        while len(_JITTED) > _JITTED_SIZE:
            _JITTED.popitem(last=False)
    _JITTED.move_to_end(key)
    return _JITTED[key]


@dataclass(frozen=True)
class Backend:
    """One (library, device, execution mode) the tests run on; ``name`` is the test id prefix."""

    name: str
    library: str
    device_kind: str = "cpu"
    jit: bool = False
    lazy: bool = False
    needs_gpu: bool = False

    # -- availability -------------------------------------------------------------------------------
    def skip_reason(self) -> str | None:
        module = {"strict": "array_api_strict"}.get(self.library, self.library)
        if not _has(module):
            return f"{self.name}: {module} is not installed"
        if self.needs_gpu and not _gpu_for(self):
            return f"{self.name}: no CUDA device"
        return None

    # -- namespace and device -----------------------------------------------------------------------
    @property
    def xp(self) -> Any:
        from array_api_compat import array_namespace

        return array_namespace(self.asarray(np.zeros(1)))

    def device(self) -> Any:
        from array_api_compat import device

        return device(self.asarray(np.zeros(1)))

    def dtype(self, name: str) -> Any:
        return getattr(self.xp, name)

    # -- data in and out ----------------------------------------------------------------------------
    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        """A NumPy array (or nested list) put on this backend, optionally cast to ``dtype`` by name."""
        x = np.asarray(x)
        if dtype is not None:
            x = x.astype(dtype)
        lib = self.library
        if lib == "numpy":
            return x.copy()
        if lib == "strict":
            import array_api_strict as xps

            dev = xps.Device("device1") if self.device_kind == "device1" else None
            return xps.asarray(x, device=dev)
        if lib == "torch":
            import torch

            return torch.asarray(x.copy(), device=self.device_kind)
        if lib == "jax":
            import jax

            enable_jax_x64()
            platform = "gpu" if self.device_kind == "gpu" else "cpu"
            return jax.device_put(x, jax.devices(platform)[0])
        if lib == "dask":
            import dask.array as da

            chunks = tuple(max(1, math.ceil(s / 2)) for s in x.shape)  # two chunks per axis
            return da.from_array(x, chunks=chunks)
        if lib == "cupy":
            import cupy

            return cupy.asarray(x)
        raise ValueError(f"unknown backend library {lib!r}")

    def to_numpy(self, x: Any) -> np.ndarray:
        """Test-only copy of a backend array back to NumPy (library code must never do this)."""
        lib = self.library
        if lib == "strict":
            import array_api_strict as xps

            return np.asarray(xps.asarray(x, device=xps.Device("CPU_DEVICE")))
        if lib == "torch":
            return x.detach().cpu().numpy()
        if lib == "dask":
            return np.asarray(x.compute(scheduler="sync"))
        if lib == "cupy":
            return x.get()
        return np.asarray(x)

    # -- running the function under test ------------------------------------------------------------
    @staticmethod
    def clear_jit_cache() -> None:
        """Forget the JAX-jit backends' compiled functions (see ``call``)."""
        _JITTED.clear()

    def call(self, func: Callable[..., Any], *arrays: Any, **options: Any) -> Any:
        """Run ``func(*arrays, **options)`` the way a user of this backend would.

        JAX-jit backends trace the function with ``jax.jit`` (options static), one jitted function per
        (function, options) kept across calls, as a user's jitted step; Dask backends fail if the
        function computes anything.
        """
        if self.jit:
            return _jitted(func, options)(*arrays)
        with self.no_compute():
            return func(*arrays, **options)

    @contextlib.contextmanager
    def no_compute(self) -> Iterator[None]:
        if not self.lazy:
            yield
            return
        import dask

        with dask.config.set(scheduler=_forbid_compute):
            yield


def _gpu_for(backend: Backend) -> bool:
    if backend.library == "jax":
        try:
            import jax

            return bool(jax.devices("gpu"))
        except Exception:
            return False
    if backend.library == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return _cuda_available()


# Set to "0" to run the suite with JAX's default 32-bit mode (tests/test_jax_x64_off.py does, in a
# subprocess: x64 is process-global and must be chosen before JAX makes its first array).
JAX_X64_ENV = "SOFTDIST_TEST_JAX_X64"


def jax_x64_wanted() -> bool:
    return os.environ.get(JAX_X64_ENV, "1") != "0"


def enable_jax_x64() -> None:
    """Turn on JAX's 64-bit mode, unless SOFTDIST_TEST_JAX_X64=0 asks for JAX's default (32-bit) mode."""
    if not jax_x64_wanted():
        return
    import jax

    jax.config.update("jax_enable_x64", True)


BACKENDS: tuple[Backend, ...] = (
    Backend("numpy", "numpy"),
    Backend("strict", "strict"),
    Backend("strict-device1", "strict", device_kind="device1"),
    Backend("torch-cpu", "torch", device_kind="cpu"),
    Backend("jax-cpu", "jax", device_kind="cpu"),
    Backend("jax-jit-cpu", "jax", device_kind="cpu", jit=True),
    Backend("dask", "dask", lazy=True),
    Backend("cupy-cuda", "cupy", device_kind="cuda", needs_gpu=True),
    Backend("torch-cuda", "torch", device_kind="cuda", needs_gpu=True),
    Backend("jax-gpu", "jax", device_kind="gpu", needs_gpu=True),
    Backend("jax-jit-gpu", "jax", device_kind="gpu", jit=True, needs_gpu=True),
)
CPU_BACKENDS = tuple(b for b in BACKENDS if not b.needs_gpu)
GPU_BACKENDS = tuple(b for b in BACKENDS if b.needs_gpu)


def backend_by_name(name: str) -> Backend:
    """The :class:`Backend` called ``name`` (``"numpy"``, ``"torch-cpu"``, ...); ValueError listing the
    names otherwise."""
    for b in BACKENDS:
        if b.name == name:
            return b
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(b.name for b in BACKENDS)}")
