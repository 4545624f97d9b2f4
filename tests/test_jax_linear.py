"""softdist.jax.linear_cross_entropy: its custom JVP rule against jax.grad of the plain formula, under
grad, jit, vmap, jvp, jacfwd and Hessian-vector products, and the compiled temporaries' size."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import softdist.jax as sj  # noqa: E402

N, D, C = 21, 5, 11


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((N, D)))
    W = jnp.asarray(rng.standard_normal((C, D)))
    b = jnp.asarray(rng.standard_normal(C))
    y = jnp.asarray(rng.integers(0, C, N))
    return X, W, b, y


def _plain(X, W, b, y, reduction="mean", z_loss=0.05, softcap=3.0):
    z = softcap * jnp.tanh((X @ W.T + b) / softcap)
    lse = jax.scipy.special.logsumexp(z, axis=1)
    rows = lse - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0] + z_loss * lse**2
    return {"mean": jnp.mean, "sum": jnp.sum, "none": lambda r: r}[reduction](rows)


def _ours(X, W, b, y, reduction="mean"):
    return sj.linear_cross_entropy(
        X, W, y, bias=b, reduction=reduction, z_loss=0.05, softcap=3.0, chunk_size=4
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_jit_and_hvp(reduction):
    X, W, b, y = _data()
    got = jax.jit(jax.grad(_ours, argnums=(0, 1, 2)), static_argnums=4)(X, W, b, y, reduction)
    want = jax.grad(_plain, argnums=(0, 1, 2))(X, W, b, y, reduction)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    v = tuple(jnp.ones_like(a) for a in (X, W, b))
    hv = jax.jvp(lambda *p: jax.grad(_ours, argnums=(0, 1, 2))(*p, y, reduction), (X, W, b), v)[1]
    hv_want = jax.jvp(lambda *p: jax.grad(_plain, argnums=(0, 1, 2))(*p, y, reduction), (X, W, b), v)[1]
    for g, w in zip(hv, hv_want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


def test_none_jvp_jacfwd_and_vmap():
    X, W, b, y = _data(1)
    got = jax.jacfwd(_ours, argnums=1)(X, W, b, y, "none")
    want = jax.jacfwd(_plain, argnums=1)(X, W, b, y, "none")
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    got_vjp = jax.grad(lambda X: jnp.sum(jnp.arange(N) * _ours(X, W, b, y, "none")))(X)
    want_vjp = jax.grad(lambda X: jnp.sum(jnp.arange(N) * _plain(X, W, b, y, "none")))(X)
    np.testing.assert_allclose(got_vjp, want_vjp, rtol=1e-10, atol=1e-12)
    batched = jax.vmap(lambda X: _ours(X, W, b, y))(jnp.stack([X, 2 * X]))
    np.testing.assert_allclose(batched, [_plain(X, W, b, y), _plain(2 * X, W, b, y)], rtol=1e-12)


def test_compiled_temporaries_are_one_chunk_not_the_logits():
    rng = np.random.default_rng(2)
    n, d, c, rows = 1024, 32, 4096, 128
    X = jnp.asarray(rng.standard_normal((n, d)), dtype=jnp.float32)
    W = jnp.asarray(rng.standard_normal((c, d)), dtype=jnp.float32)
    y = jnp.asarray(rng.integers(0, c, n))

    def f(X, W):
        return sj.linear_cross_entropy(X, W, y, chunk_size=rows)

    compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(X, W).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    logits = n * c * 4
    # a handful of chunk-sized arrays (scores, exponentials, gradient) plus dX and dW: far below the logits
    assert temp <= logits / 2, f"{temp / 2**20:.1f} MiB of temporaries for {logits / 2**20:.0f} MiB of logits"
