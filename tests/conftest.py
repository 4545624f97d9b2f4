"""The cross-backend fixtures every numeric test uses.

``backend`` runs over every backend in ``softdist.testing.BACKENDS`` (missing libraries and absent GPUs
skip with a reason, never silently), ``float_dtype`` over float32 and float64. Ids read like
``test_matches_reference[torch-cpu-float32]``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from softdist.testing import BACKENDS, Backend, enable_jax_x64, jax_x64_wanted


def pytest_configure(config: pytest.Config) -> None:
    try:
        enable_jax_x64()  # before any JAX array exists, so float64 tests really run in float64
    except ImportError:
        pass


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    b: Backend = request.param
    reason = b.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    # A test that monkeypatches may change what a compiled JAX function would trace: it starts and
    # leaves with no compiled function cached (the jit backends' and softdist's eager JAX table).
    patches = "monkeypatch" in request.fixturenames and b.library == "jax"
    if patches:
        _forget_compiled()
    yield b
    if patches:
        _forget_compiled()


def _forget_compiled() -> None:
    from softdist._backends import _jax

    Backend.clear_jit_cache()
    _jax._JAX_COMPILED.clear()


@pytest.fixture(params=["float32", "float64"])
def float_dtype(request: pytest.FixtureRequest) -> str:
    backend = getattr(request.node, "callspec", None) and request.node.callspec.params.get("backend")
    if request.param == "float64" and not jax_x64_wanted() and getattr(backend, "library", "") == "jax":
        # JAX's documented default: float64 requests give float32 arrays (tests/test_jax_x64_off.py
        # checks that behaviour); float64 accuracy cannot be asked of them.
        pytest.skip("JAX x64 is off: float64 arrays are float32")
    return request.param


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    # Seeded per test so failures reproduce.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# Relative tolerance of each float dtype against the float64 reference: the promise of the README
# ("Accuracy of the distances"), written out here so that loosening the library cannot loosen the tests.
RTOL = {"float32": 1e-4, "float64": 1e-10}
