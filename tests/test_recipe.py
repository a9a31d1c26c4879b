"""The parts of a modern PINN recipe: embeddings, RWF, PirateNets (nets), causal weights, schedules."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinn_adapters as pa
from pinn_adapters import causal, nets
from pinn_adapters.problems import mlp_apply, mlp_init

LAYERS = (2, 8, 8, 1)


def _points(n=5, d=2, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, d))


# ----------------------------------------------------------------------------- nets


def test_plain_mlp_equals_problems_mlp(key):
    assert pa.nets is nets
    net = nets.mlp(LAYERS)
    p, q = net.init(key), mlp_init(key, LAYERS)
    assert jax.tree.structure(p) == jax.tree.structure(q)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        np.testing.assert_array_equal(a, b)
    for x in _points():
        np.testing.assert_array_equal(net.apply(p, x), mlp_apply(q, x))
    assert net.apply(p, _points()[0]).shape == (1,)


def test_rwf_reproduces_plain_weight(key):
    plain, fact = nets.mlp(LAYERS), nets.mlp(LAYERS, rwf={"mean": 1.0, "std": 0.1})
    p, q = plain.init(key), fact.init(key)
    for a, b in zip(p, q):
        assert set(b) == {"s", "V", "b"} and b["s"].shape == (a["W"].shape[1],)
        np.testing.assert_allclose(nets.dense_weight(b), a["W"], rtol=1e-12)
        assert not np.allclose(b["V"], a["W"])  # the factorisation is not the identity
    x = _points()
    np.testing.assert_allclose(jax.vmap(lambda z: fact.apply(q, z))(x), jax.vmap(lambda z: plain.apply(p, z))(x))
    # trained: the gradient reaches s and V
    g = jax.grad(lambda q: jnp.sum(fact.apply(q, x[0]) ** 2))(q)
    assert all(float(jnp.abs(layer["s"]).sum()) > 0 for layer in g)


def test_rwf_scale_distribution(key):
    # s ~ N(1, 0.1^2) over 400 units: mean within 5 standard errors (0.1 / 20), std within 5 (0.1 / sqrt(800))
    s = np.asarray(nets.mlp((2, 400, 1), rwf={"mean": 1.0, "std": 0.1}).init(key)[0]["s"])
    assert abs(s.mean() - 1.0) < 5 * 0.1 / 20 and abs(s.std() - 0.1) < 5 * 0.1 / math.sqrt(800)


def test_rwf_std_zero_is_constant_scale(key):
    q = nets.mlp(LAYERS, rwf={"mean": 0.5, "std": 0.0}).init(key)
    np.testing.assert_allclose(q[0]["s"], 0.5)


def test_fourier_features_convention():
    ff = nets.fourier_features(2, 16, sigma=2.0, seed=3)
    B = 2.0 * jax.random.normal(jax.random.key(3), (2, 16))
    x = jnp.array([0.3, -0.7])
    np.testing.assert_allclose(ff(x), jnp.concatenate([jnp.cos(x @ B), jnp.sin(x @ B)]), rtol=1e-12)
    assert ff.d_out == 32
    np.testing.assert_allclose(np.std(np.asarray(B)), 2.0, rtol=0.35)


def test_fourier_mlp_is_plain_mlp_of_features(key):
    fourier = {"num": 4, "sigma": 1.0, "seed": 0}
    net = nets.mlp((2, 8, 1), fourier=fourier)
    p = net.init(key)
    assert p[0]["W"].shape == (8, 8)  # 2 * num features in
    ff = nets.fourier_features(2, 4)
    plain = nets.mlp((8, 8, 1))
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(plain.init(key))):
        np.testing.assert_array_equal(a, b)
    for x in _points():
        np.testing.assert_allclose(net.apply(p, x), plain.apply(p, ff(x)), rtol=1e-12)
    # B is fixed: not a parameter, and the same for every init
    assert len(jax.tree.leaves(p)) == 4


def test_periodic_embedding_is_periodic(key):
    net = nets.mlp((2, 8, 1), fourier={"periodic": {0: 2.0}, "harmonics": 2})
    p = net.init(key)
    assert p[0]["W"].shape == (5, 8)  # 4 features for x_0, t passes through
    x = jnp.array([-0.4, 0.3])
    np.testing.assert_allclose(net.apply(p, x), net.apply(p, x + jnp.array([2.0, 0.0])), rtol=1e-10)
    assert not np.allclose(net.apply(p, x), net.apply(p, x + jnp.array([1.0, 0.0])))
    emb = nets.periodic_embedding(2, {0: 2.0}, harmonics=2)
    z = 2 * math.pi / 2.0 * jnp.array([1.0, 2.0]) * x[0]
    np.testing.assert_allclose(emb(x), jnp.concatenate([jnp.cos(z), jnp.sin(z), x[1:]]), rtol=1e-12)


def test_periodic_then_fourier(key):
    net = nets.mlp((2, 8, 1), fourier={"periodic": {"0": 1.0}, "num": 3})
    p = net.init(key)
    assert p[0]["W"].shape == (6, 8)
    x = jnp.array([0.1, 0.2])
    np.testing.assert_allclose(net.apply(p, x), net.apply(p, x + jnp.array([1.0, 0.0])), rtol=1e-10)


def _grad_check(net, params, x):
    """Directional derivative of sum(apply) against a central finite difference (float64)."""
    f = jax.jit(lambda p: jnp.sum(net.apply(p, x) ** 2))
    g = jax.jit(jax.grad(f))(params)
    d = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape, a.dtype), params)
    h = 1e-6
    plus = f(jax.tree.map(lambda a, b: a + h * b, params, d))
    minus = f(jax.tree.map(lambda a, b: a - h * b, params, d))
    fd = (plus - minus) / (2 * h)
    an = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
    np.testing.assert_allclose(an, fd, rtol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_mlp_gradient_check(key, activation):
    net = nets.mlp(LAYERS, activation=activation, fourier={"num": 3}, rwf={"mean": 1.0, "std": 0.1})
    _grad_check(net, net.init(key), jnp.array([0.2, 0.6]))


def test_config_is_json_and_rebuilds(key):
    net = nets.mlp(LAYERS, fourier={"num": 3, "periodic": {0: 2.0}}, rwf={"mean": 1.0, "std": 0.1})
    cfg = json.loads(json.dumps(net.config))
    again = nets.from_config(cfg)
    p = net.init(key)
    x = jnp.array([0.2, 0.6])
    np.testing.assert_array_equal(net.apply(p, x), again.apply(again.init(key), x))
    assert cfg["kind"] == "mlp" and cfg["layers"] == list(LAYERS)


def test_dtype(key):
    net = nets.mlp(LAYERS, fourier={"num": 3}, rwf={}, dtype=jnp.float32)
    p = net.init(key)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(p))
    assert net.apply(p, jnp.zeros(2, jnp.float32)).dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": (2,)}, "layers"),
        ({"layers": (2, 0, 1)}, "layers"),
        ({"layers": LAYERS, "activation": "cube"}, "activation"),
        ({"layers": LAYERS, "fourier": {"num": 0}}, "fourier num"),
        ({"layers": LAYERS, "fourier": {"nmu": 3}}, "fourier"),
        ({"layers": LAYERS, "fourier": {"sigma": 1.0}}, "fourier"),
        ({"layers": LAYERS, "fourier": {"num": 3, "sigma": -1.0}}, "fourier sigma"),
        ({"layers": LAYERS, "fourier": {"periodic": {2: 1.0}}}, "periodic input index"),
        ({"layers": LAYERS, "fourier": {"periodic": {0: 0.0}}}, "period of input 0"),
        ({"layers": LAYERS, "rwf": {"mean": 1.0, "sd": 0.1}}, "rwf"),
        ({"layers": LAYERS, "rwf": {"std": -0.1}}, "rwf std"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nets.mlp(**kwargs)


def test_pirate_net_starts_linear_in_embedding(key):
    net = nets.pirate_net(2, 1, width=8, num_blocks=2, fourier={"num": 4, "sigma": 1.0, "seed": 0})
    p = net.init(key)
    assert [float(b["alpha"]) for b in p["blocks"]] == [0.0, 0.0]
    ff = nets.fourier_features(2, 4)
    for x in _points():
        want = nets.dense_apply(p["out"], ff(x))
        np.testing.assert_allclose(net.apply(p, x), want, rtol=1e-12)
    assert net.apply(p, _points()[0]).shape == (1,)
    # alpha receives a gradient, so the blocks switch on during training
    g = jax.grad(lambda q: jnp.sum(net.apply(q, jnp.array([0.3, 0.4])) ** 2))(p)
    assert all(abs(float(b["alpha"])) > 0 for b in g["blocks"])


def test_pirate_net_block_by_hand(key):
    net = nets.pirate_net(2, 3, width=5, num_blocks=1, fourier=None, rwf=None, alpha=0.7)
    p = net.init(key)
    x = jnp.array([0.3, -0.2])
    W = lambda layer: layer["W"]  # noqa: E731
    U = jnp.tanh(x @ W(p["U"]) + p["U"]["b"])
    V = jnp.tanh(x @ W(p["V"]) + p["V"]["b"])
    l1, l2, l3 = p["blocks"][0]["dense"]
    f = jnp.tanh(x @ W(l1))
    z = f * U + (1 - f) * V
    g = jnp.tanh(z @ W(l2))
    z = g * U + (1 - g) * V
    h = 0.7 * jnp.tanh(z @ W(l3)) + 0.3 * x
    np.testing.assert_allclose(net.apply(p, x), h @ W(p["out"]), rtol=1e-12)


def test_pirate_net_gradient_check_and_config(key):
    net = nets.pirate_net(2, 1, width=6, num_blocks=2, alpha=0.3, fourier={"num": 3, "periodic": {0: 2.0}})
    p = net.init(key)
    _grad_check(net, p, jnp.array([0.2, 0.6]))
    again = nets.from_config(json.loads(json.dumps(net.config)))
    np.testing.assert_array_equal(
        again.apply(again.init(key), jnp.array([0.2, 0.6])), net.apply(p, jnp.array([0.2, 0.6]))
    )
    assert net.config["rwf"] == {"mean": 1.0, "std": 0.1}


def test_pirate_net_bad_input():
    with pytest.raises(ValueError, match="width"):
        nets.pirate_net(2, 1, width=0)
    with pytest.raises(ValueError, match="num_blocks"):
        nets.pirate_net(2, 1, num_blocks=-1)


# ----------------------------------------------------------------------------- causal weights


def _toy_residual(params, pts):
    """Pointwise: r_i = a * sin(3 t_i) + b * x_i + x_i t_i (two parameters)."""
    x, t = pts[:, 0], pts[:, 1]
    return params["a"] * jnp.sin(3 * t) + params["b"] * x + x * t


TOY = {"a": jnp.asarray(0.7), "b": jnp.asarray(-1.3)}


def _by_hand(r, t, M, eps, t_range=(0.0, 1.0)):
    r, t = np.asarray(r, float), np.asarray(t, float)
    c = np.clip(np.floor(M * (t - t_range[0]) / (t_range[1] - t_range[0])).astype(int), 0, M - 1)
    L = np.array([np.mean(r[c == k] ** 2) if np.any(c == k) else 0.0 for k in range(M)])
    w = np.array([math.exp(-eps * L[:k].sum()) for k in range(M)])
    counts = np.array([np.sum(c == k) for k in range(M)])
    return c, L, w, counts


def test_causal_weights_formula():
    L = jnp.array([0.5, 0.1, 2.0, 0.0])
    np.testing.assert_allclose(
        causal.causal_weights(L, 2.0), [1.0, math.exp(-1.0), math.exp(-1.2), math.exp(-5.2)], rtol=1e-12
    )
    # held fixed: no gradient flows into the losses
    assert float(jnp.abs(jax.grad(lambda L: causal.causal_weights(L, 1.0).sum())(L)).sum()) == 0.0


def test_causal_block_by_hand_evenly_spread():
    M, eps, n_per = 4, 3.0, 5
    t = (np.arange(M * n_per) + 0.5) / (M * n_per)  # equal counts per chunk
    x = np.linspace(-1, 1, t.size)
    pts = jnp.asarray(np.stack([x, t], 1))
    blk = causal.CausalBlock(_toy_residual, time=1, t_range=(0.0, 1.0), num_chunks=M, eps=eps)
    r = _toy_residual(TOY, pts)
    c, L, w, _ = _by_hand(r, t, M, eps)
    np.testing.assert_allclose(blk.losses(TOY, pts), L, rtol=1e-12)
    np.testing.assert_allclose(blk.weights(TOY, pts), w, rtol=1e-12)
    out = blk(TOY, pts)
    np.testing.assert_allclose(out, np.asarray(r) * np.sqrt(w[c]), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(blk)(TOY, pts), out, rtol=1e-12)
    np.testing.assert_allclose(jnp.mean(out**2), np.mean(w * L), rtol=1e-12)  # = (1/M) sum_k w_k L_k
    assert 0 < float(blk.weights(TOY, pts).min()) < 1


def test_causal_block_random_points_and_empty_chunk():
    M, eps = 5, 1.5
    t = np.asarray(jax.random.uniform(jax.random.key(2), (40,), minval=0.0, maxval=2.0))
    t = t[(t < 0.8) | (t >= 1.2)]  # chunk 2 of [0, 2] is empty
    pts = jnp.asarray(np.stack([np.cos(7 * t), t], 1))
    r = _toy_residual(TOY, pts)
    c, L, w, counts = _by_hand(r, t, M, eps, (0.0, 2.0))
    assert counts[2] == 0 and L[2] == 0.0
    plain = causal.CausalBlock(_toy_residual, time=1, t_range=(0.0, 2.0), num_chunks=M, eps=eps)
    np.testing.assert_allclose(plain.weights(TOY, pts), w, rtol=1e-12)
    n = t.size
    np.testing.assert_allclose(jnp.mean(plain(TOY, pts) ** 2), np.sum(w * counts * L) / n, rtol=1e-12)
    bal = causal.CausalBlock(_toy_residual, time=lambda p: p[:, 1], t_range=(0.0, 2.0), num_chunks=M, eps=eps,
                             balance=True)  # fmt: skip
    np.testing.assert_allclose(jnp.mean(bal(TOY, pts) ** 2), np.mean(w * L), rtol=1e-12)


def test_causal_gradient_holds_weights_fixed():
    M, eps = 3, 2.0
    pts = jnp.asarray(np.stack([np.linspace(0, 1, 12), (np.arange(12) + 0.5) / 12], 1))
    blk = causal.CausalBlock(_toy_residual, time=1, t_range=(0.0, 1.0), num_chunks=M, eps=eps)
    c, _, w, _ = _by_hand(_toy_residual(TOY, pts), pts[:, 1], M, eps)
    g = jax.grad(lambda p: jnp.mean(blk(p, pts) ** 2))(TOY)
    want = jax.grad(lambda p: jnp.mean(jnp.asarray(w[c]) * _toy_residual(p, pts) ** 2))(TOY)
    for k in TOY:
        np.testing.assert_allclose(g[k], want[k], rtol=1e-12)


def test_causal_block_exact_ntk_traces(key):
    M, eps = 4, 1.0
    net = nets.mlp((2, 6, 1))
    params = net.init(key)

    def res(p, pts):
        return jax.vmap(lambda z: net.apply(p, z)[0])(pts) - pts[:, 0]

    pts = _points(16)
    blk = causal.CausalBlock(res, time=1, t_range=(0.0, 1.0), num_chunks=M, eps=eps)
    blocks = pa.ResidualBlocks({"res": blk})
    tr = pa.ntk_traces(key, blocks, params, {"res": pts}, method="exact")["res"].value
    c, _, w, _ = _by_hand(res(params, pts), pts[:, 1], M, eps)
    jac = jax.jacrev(res)(params, pts)
    row_sq = sum(jnp.sum(leaf.reshape(16, -1) ** 2, axis=1) for leaf in jax.tree.leaves(jac))
    np.testing.assert_allclose(tr, np.sum(w[c] * np.asarray(row_sq)), rtol=1e-10)


def test_causal_bad_input():
    with pytest.raises(ValueError, match="t1 > t0"):
        causal.CausalBlock(_toy_residual, time=1, t_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="num_chunks"):
        causal.CausalBlock(_toy_residual, time=1, t_range=(0.0, 1.0), num_chunks=0)
    with pytest.raises(ValueError, match="eps"):
        causal.CausalBlock(_toy_residual, time=1, t_range=(0.0, 1.0), eps=-1.0)
    with pytest.raises(TypeError, match="time"):
        causal.CausalBlock(_toy_residual, time="t", t_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="chunk_losses"):
        causal.causal_weights(jnp.ones((2, 2)), 1.0)
