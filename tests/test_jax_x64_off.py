"""JAX in its default 32-bit mode (x64 off), which is how most users run it.

The suite turns x64 on in tests/conftest.py, and x64 is process-global, fixed before JAX makes its first
array. So `test_suite_with_jax_x64_off` runs the float32 JAX tests of every public function, and the
x64-off checks below, in a second pytest process with SOFTDIST_TEST_JAX_X64=0. There, float64 tests on
JAX skip: JAX's documented behaviour with x64 off is to give float32 (and int32) arrays for float64
(int64) requests, with a warning; `test_float64_requests_compute_in_float32` checks softdist follows it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import softdist
from softdist.testing import JAX_X64_ENV, jax_x64_wanted, reference_cross_entropy, reference_sqdist

pytest.importorskip("jax")
TESTS = Path(__file__).parent
SUBSET = ["test_softmax.py", "test_common.py", "test_distances.py", "test_knn.py", Path(__file__).name]
inside = pytest.mark.skipif(jax_x64_wanted(), reason="runs in the x64-off subprocess")


@pytest.mark.skipif(not jax_x64_wanted(), reason="this is the x64-off run")
def test_suite_with_jax_x64_off():
    env = os.environ | {JAX_X64_ENV: "0", "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    selection = "((jax-cpu or jax-jit-cpu) and float32) or x64_off"
    files = [str(TESTS / f) for f in SUBSET]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection, *files]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


@inside
def test_x64_off_is_really_off():
    import jax.numpy as jnp

    assert jnp.asarray(np.zeros(2)).dtype == jnp.float32
    assert jnp.asarray(np.zeros(2, np.int64)).dtype == jnp.int32


@inside
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype:UserWarning")
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_float64_requests_compute_in_float32_x64_off(jit):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((9, 4)), rng.integers(0, 4, 9)
    A = rng.standard_normal((7, 3)) + 100
    zj, yj, Aj = jnp.asarray(z, dtype=jnp.float64), jnp.asarray(y), jnp.asarray(A, dtype=jnp.float64)
    assert zj.dtype == jnp.float32  # JAX's downcast
    run = jax.jit if jit else (lambda f: f)
    loss, grad = run(softdist.softmax_cross_entropy_and_grad)(zj, yj)
    D = run(softdist.pairwise_sqdist)(Aj)
    dist, idx = run(lambda a: softdist.knn(a, k=2))(Aj)
    assert loss.dtype == grad.dtype == D.dtype == dist.dtype == jnp.float32 and idx.dtype == jnp.int32
    want_loss, want_grad = reference_cross_entropy(z.astype(np.float32), y)
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)
    want_D = reference_sqdist(A.astype(np.float32))
    np.testing.assert_allclose(np.asarray(D), want_D, rtol=1e-4, atol=1e-3)


@inside
@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32"])
@pytest.mark.parametrize("ignore_index", [None, -100, 1, 2**31, 2**40])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_label_dtypes_x64_off(dtype, ignore_index, jit):
    """Index dtype int32: uint32 labels cannot widen into it and are compared with the class count and
    ignore_index as they are (2**31 fits uint32, not int32)."""
    import jax
    import jax.numpy as jnp

    top = min(299, np.iinfo(dtype).max)
    labels = np.array([0, 1, top, 0], dtype=dtype)
    if ignore_index is not None and np.iinfo(dtype).min <= ignore_index <= np.iinfo(dtype).max:
        labels[-1] = ignore_index
    z = np.random.default_rng(1).standard_normal((4, 300)).astype(np.float32)
    want = reference_cross_entropy(z, labels.astype(np.int64), reduction="none", ignore_index=ignore_index)[0]
    f = softdist.softmax_cross_entropy
    run = jax.jit(lambda a, b: f(a, b, reduction="none", ignore_index=ignore_index)) if jit else (
        lambda a, b: f(a, b, reduction="none", ignore_index=ignore_index))  # fmt: skip
    got = run(jnp.asarray(z), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
