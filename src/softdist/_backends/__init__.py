"""The backend layer: every library-specific path of softdist, behind one dispatch point.

``backend_for(xp)`` gives the :class:`Backend` of a namespace: an object whose methods are that
library's fast paths where it has them and the generic ``_agnostic`` code everywhere else. The public
modules ask it and never test the namespace themselves. Each fast path says why it exists (with the
measured figure) and is tested equal to the generic path (tests/test_backend_paths.py).

A new backend: one module with a :class:`Backend` subclass, and one line in ``_REGISTRY``. A new fast
path: one method override in the library's module.

Nothing here imports a library at import time: a library is imported only when the user already handed
us one of its arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._lib._compat import (
    is_cupy_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)
from ._cupy import CupyBackend
from ._dask import DaskBackend
from ._default import Backend
from ._jax import JaxBackend
from ._numpy import NumpyBackend
from ._torch import TorchBackend

__all__ = ["Backend", "backend_for"]

# (is this the library's namespace?, its backend); the first match wins, else the generic backend
# (array-api-strict and any other standard library).
_REGISTRY: tuple[tuple[Callable[[Any], bool], Backend], ...] = (
    (is_numpy_namespace, NumpyBackend()),
    (is_torch_namespace, TorchBackend()),
    (is_jax_namespace, JaxBackend()),
    (is_dask_namespace, DaskBackend()),
    (is_cupy_namespace, CupyBackend()),
)
_GENERIC = Backend()
_BY_NAMESPACE: dict[Any, Backend] = {}


def backend_for(xp: Any) -> Backend:
    """The backend of the array namespace ``xp`` (as given by ``array_namespace``)."""
    try:
        return _BY_NAMESPACE[xp]
    except KeyError:
        pass
    backend = next((b for matches, b in _REGISTRY if matches(xp)), _GENERIC)
    _BY_NAMESPACE[xp] = backend
    return backend
