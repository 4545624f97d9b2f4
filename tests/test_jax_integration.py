"""softdist.jax under every JAX transform, an optax training step, and the generic functions under
jit/vmap with full-precision matrix products."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import softdist  # noqa: E402
import softdist.jax as sj  # noqa: E402
from softdist.testing import enable_jax_x64  # noqa: E402

enable_jax_x64()
N, C = 9, 4
OPTIONS = {
    "plain": {},
    "all": {"class_weight": np.linspace(0.5, 1.5, C), "sample_weight": np.linspace(1, 2, N),
            "label_smoothing": 0.1, "ignore_index": 1},
    "none": {"reduction": "none", "label_smoothing": 0.2},
}  # fmt: skip


def _data(seed: int):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((N, C))), jnp.asarray(rng.integers(0, C, N))


def _plain(labels, options):
    """-sum(T * log_softmax(z)) / denominator: the textbook formula for JAX to differentiate."""
    cw = jnp.asarray(options.get("class_weight", np.ones(C)))
    sw = jnp.asarray(options.get("sample_weight", np.ones(N)))
    eps = options.get("label_smoothing", 0.0)
    ignore = options.get("ignore_index")
    counted = labels != ignore if ignore is not None else jnp.ones(N, bool)
    safe = jnp.where(counted, labels, 0)
    T = ((1 - eps) * jax.nn.one_hot(safe, C) + eps / C) * cw * (sw * counted)[:, None]

    def f(z):
        rows = -jnp.sum(T * jax.nn.log_softmax(z), axis=1)
        if options.get("reduction") == "none":
            return rows
        return jnp.sum(rows) / jnp.sum(jnp.where(counted, sw * cw[safe], 0))

    return f


def _ours(labels, options):
    opts = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    return lambda z: sj.softmax_cross_entropy(z, labels, **opts)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_transform_matches_the_plain_formula(name):
    z, y = _data(0)
    ours, plain = _ours(y, OPTIONS[name]), _plain(y, OPTIONS[name])
    tangent = jnp.asarray(np.random.default_rng(1).standard_normal((N, C)))
    _close(ours(z), plain(z))
    _close(jax.jvp(ours, (z,), (tangent,))[1], jax.jvp(plain, (z,), (tangent,))[1])
    _close(jax.jacfwd(ours)(z), jax.jacfwd(plain)(z))
    _close(jax.jacrev(ours)(z), jax.jacrev(plain)(z))
    _close(jax.jit(jax.jacrev(ours))(z), jax.jacrev(plain)(z))
    batch = jnp.stack([z, 2 * z, z - 1])
    _close(jax.vmap(ours)(batch), jax.vmap(plain)(batch))
    if OPTIONS[name].get("reduction") != "none":
        _close(jax.grad(ours)(z), jax.grad(plain)(z))
        _close(jax.hessian(ours)(z), jax.hessian(plain)(z))
        _close(jax.vmap(jax.grad(ours))(batch), jax.vmap(jax.grad(plain))(batch))


def test_optax_training_step_under_jit():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(2)
    X = jnp.asarray(rng.standard_normal((128, 6)), dtype=jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 128))

    def train(loss_of_logits):
        params = {"W": jnp.zeros((6, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
        opt = optax.adam(0.1)
        state = opt.init(params)

        @jax.jit
        def step(params, state):
            loss, grads = jax.value_and_grad(lambda p: loss_of_logits(X @ p["W"] + p["b"]))(params)
            updates, state = opt.update(grads, state)
            return optax.apply_updates(params, updates), state, loss

        losses = []
        for _ in range(30):
            params, state, loss = step(params, state)
            losses.append(float(loss))
        return np.array(losses)

    ours = train(lambda z: sj.softmax_cross_entropy(z, y))
    theirs = train(lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert ours[-1] < ours[0]


def test_generic_functions_under_jit_and_vmap():
    rng = np.random.default_rng(3)
    W, X = jnp.asarray(rng.standard_normal((5, C))), jnp.asarray(rng.standard_normal((3, N, 5)))
    y = jnp.asarray(rng.integers(0, C, N))
    batched = jax.jit(jax.vmap(lambda x: softdist.softmax_loss(W, x, y, reg=0.1)))(X)
    for i in range(3):
        eager = softdist.softmax_loss(W, X[i], y, reg=0.1)
        _close(batched[0][i], eager[0])
        _close(batched[1][i], eager[1])
    D = jax.jit(jax.vmap(softdist.pairwise_sqdist))(X)
    for i in range(3):
        np.testing.assert_allclose(
            np.asarray(D[i]), np.asarray(softdist.pairwise_sqdist(X[i])), rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize("func", ["softmax_loss", "pairwise_sqdist"])
def test_matrix_products_request_highest_precision(func):
    W, X, y = jnp.ones((3, C)), jnp.ones((N, 3)), jnp.zeros(N, dtype=int)
    call = {
        "softmax_loss": lambda: softdist.softmax_loss(W, X, y),
        "pairwise_sqdist": lambda: softdist.pairwise_sqdist(X),
    }
    jaxpr = str(jax.make_jaxpr(call[func])())
    dots = jaxpr.count("dot_general")
    assert dots > 0
    assert jaxpr.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == dots


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_soft_target_tangents_match_the_plain_formula(reduction):
    """d loss / d targets = -log_softmax(logits) scaled as the loss (weights, smoothing, reduction), through
    the custom_jvp rule: jax.jvp in both arguments, and jax.grad / jacrev with respect to the targets."""
    rng = np.random.default_rng(4)
    shape = (3, 2, C)  # any batch shape, classes last (optax's axis=-1)
    z, t = jnp.asarray(rng.standard_normal(shape)), jnp.asarray(rng.random(shape))
    cw, sw = jnp.linspace(0.5, 1.5, C), jnp.asarray(rng.random(shape[:-1]) + 0.5)
    eps = 0.1

    def plain(z, t):
        rows = -jnp.sum(((1 - eps) * t + eps / C) * cw * jax.nn.log_softmax(z, axis=-1), axis=-1) * sw
        return rows if reduction == "none" else jnp.sum(rows) / (jnp.sum(sw) if reduction == "mean" else 1)

    def ours(z, t):
        return sj.softmax_cross_entropy(
            z, t, reduction=reduction, class_weight=cw, sample_weight=sw, label_smoothing=eps
        )

    dz, dt = jnp.asarray(rng.standard_normal(shape)), jnp.asarray(rng.standard_normal(shape))
    _close(jax.jvp(ours, (z, t), (dz, dt))[1], jax.jvp(plain, (z, t), (dz, dt))[1])
    _close(jax.jvp(lambda t: ours(z, t), (t,), (dt,))[1], jax.jvp(lambda t: plain(z, t), (t,), (dt,))[1])
    _close(jax.jacrev(ours, argnums=1)(z, t), jax.jacrev(plain, argnums=1)(z, t))
    _close(jax.jacfwd(ours, argnums=(0, 1))(z, t), jax.jacfwd(plain, argnums=(0, 1))(z, t))
    if reduction != "none":
        _close(jax.grad(ours, argnums=1)(z, t), jax.grad(plain, argnums=1)(z, t))
        _close(jax.jit(jax.grad(ours, argnums=(0, 1)))(z, t), jax.grad(plain, argnums=(0, 1))(z, t))
        _close(jax.hessian(ours, argnums=(0, 1))(z, t), jax.hessian(plain, argnums=(0, 1))(z, t))


def test_class_axis_matches_optax():
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(5)
    z, t = jnp.asarray(rng.standard_normal((2, C, 3))), jnp.asarray(rng.dirichlet(np.ones(C), (2, 3)))
    t = jnp.moveaxis(t, -1, 1)
    got = sj.softmax_cross_entropy(z, t, axis=1, reduction="none")
    _close(got, optax.softmax_cross_entropy(z, t, axis=1))
    y = jnp.asarray(rng.integers(0, C, (2, 3)))
    _close(
        sj.softmax_cross_entropy(z, y, axis=1, reduction="none"),
        optax.softmax_cross_entropy_with_integer_labels(z, y, axis=1),
    )


def _textbook(z, labels, sw, cw, reduction, eps, ignore):
    """The weighted smoothed cross-entropy written out, for JAX to differentiate in the weights."""
    counted = labels != ignore if ignore is not None else jnp.ones(labels.shape, bool)
    safe = jnp.where(counted, labels, 0)
    T = ((1 - eps) * jax.nn.one_hot(safe, C) + eps / C) * cw * (sw * counted)[:, None]
    rows = -jnp.sum(T * jax.nn.log_softmax(z), axis=1)
    if reduction == "none":
        return rows
    return (
        jnp.sum(rows) if reduction == "sum" else jnp.sum(rows) / jnp.sum(jnp.where(counted, sw * cw[safe], 0))
    )


FD = {"rtol": 1e-7, "atol": 1e-8}  # central differences, h = 1e-6, in float64


def _central_differences(f, x, h=1e-6):
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        out.flat[i] = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * h)
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps, ignore", [(0.0, None), (0.2, 3)])
def test_sample_and_class_weight_gradients(reduction, eps, ignore):
    # jax.grad in the weights was silently zero (break test): now the true gradient, grad/jit/jacfwd.
    z, labels = _data(21)
    rng = np.random.default_rng(22)
    sw, cw = jnp.asarray(rng.random(N) + 0.5), jnp.asarray(rng.random(C) + 0.5)
    up = jnp.linspace(0.5, 2, N)

    def scalar(f):
        return lambda s, c: jnp.sum(
            f(z, labels, s, c, reduction, eps, ignore) * (up if reduction == "none" else 1)
        )

    def ours(z, labels, s, c, reduction, eps, ignore):
        return sj.softmax_cross_entropy(z, labels, sample_weight=s, class_weight=c, reduction=reduction,
                                        label_smoothing=eps, ignore_index=ignore)  # fmt: skip

    got = jax.grad(scalar(ours), argnums=(0, 1))(sw, cw)
    for a, b in zip(got, jax.grad(scalar(_textbook), argnums=(0, 1))(sw, cw), strict=True):
        _close(a, b)
    for a, b in zip(jax.jit(jax.jacfwd(scalar(ours), argnums=(0, 1)))(sw, cw), got, strict=True):
        _close(a, b)
    np.testing.assert_allclose(got[0], _central_differences(lambda s: scalar(ours)(s, cw), sw), **FD)
    np.testing.assert_allclose(got[1], _central_differences(lambda c: scalar(ours)(sw, c), cw), **FD)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_head_weight_and_soft_target_gradients(reduction):
    # The fused head's labels and weights were constants (zero cotangents): now differentiated.
    rng = np.random.default_rng(23)
    X, W = jnp.asarray(rng.standard_normal((N, 3))), jnp.asarray(rng.standard_normal((C, 3)))
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((N, C))))
    sw, cw = jnp.asarray(rng.random(N) + 0.5), jnp.asarray(rng.random(C) + 0.5)
    labels = jnp.asarray(rng.integers(0, C, N))
    up = jnp.linspace(0.5, 2, N) if reduction == "none" else 1

    def loss(X, target, s, c):
        out = sj.linear_cross_entropy(X, W, target, sample_weight=s, class_weight=c, reduction=reduction,
                                      label_smoothing=0.1)  # fmt: skip
        return jnp.sum(out * up)

    got = jax.grad(loss, argnums=(0, 2, 3))(X, labels, sw, cw)
    want = jax.grad(lambda X, s, c: jnp.sum(_textbook(X @ W.T, labels, s, c, reduction, 0.1, None) * up),
                    argnums=(0, 1, 2))(X, sw, cw)  # fmt: skip
    for a, b in zip(got, want, strict=True):
        _close(a, b)
    dp, ds = jax.jit(jax.grad(loss, argnums=(1, 2)))(X, probs, sw, cw)
    np.testing.assert_allclose(ds, _central_differences(lambda s: loss(X, probs, s, cw), sw), **FD)
    np.testing.assert_allclose(dp, _central_differences(lambda p: loss(X, p, sw, cw), probs), **FD)


def test_numpy_labels_and_weights_are_accepted_eager_and_under_jit():
    # array_api_compat's "Multiple namespaces" TypeError named no argument (break test): JAX's own
    # functions take NumPy arrays, and JAX code closes over NumPy labels; they become JAX arrays.
    z, labels = _data(31)
    y, sw, cw = np.asarray(labels), np.linspace(1, 2, N), np.linspace(0.5, 1.5, C)
    options = {"sample_weight": sw, "class_weight": cw, "label_smoothing": 0.1}
    want = _plain(labels, options)(z)

    def ours(z):
        return sj.softmax_cross_entropy(z, y, sample_weight=sw, class_weight=list(cw), label_smoothing=0.1)

    for f in (ours, jax.jit(ours)):
        got = f(z)
        assert isinstance(got, jax.Array)
        _close(got, want)
    _close(jax.jit(jax.grad(ours))(z), jax.grad(_plain(labels, options))(z))
    X, W = z[:, :3], jnp.asarray(np.random.default_rng(32).standard_normal((C, 3)))

    def head(X):
        return sj.linear_cross_entropy(X, np.asarray(W), y, bias=np.zeros(C), sample_weight=sw)

    for f in (head, jax.jit(head)):
        _close(f(X), _plain(labels, {"sample_weight": sw})(X @ W.T))


def test_another_librarys_array_is_named():
    torch = pytest.importorskip("torch")
    z, labels = _data(33)
    with pytest.raises(TypeError, match=r"labels must be a JAX array.*torch"):
        sj.softmax_cross_entropy(z, torch.tensor(np.array(labels)))
    with pytest.raises(TypeError, match="sample_weight must be a JAX array"):
        sj.linear_cross_entropy(z, z, labels, sample_weight=torch.ones(N))
