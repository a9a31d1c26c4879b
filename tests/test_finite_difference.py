"""Tests of finite-difference JVPs and finite-difference Gram quadratic forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sketchtrace as st


def mlp(params, x):
    """A small tanh network with a dict output (two residual blocks)."""
    h = jnp.tanh(x[:, None] * params["w1"] + params["b1"])
    u = h @ params["w2"]
    return {"interior": u[:-3] ** 2 + jnp.sin(u[:-3]), "boundary": u[-3:]}


def make_params(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "w1": jax.random.normal(k1, (6,)),
        "b1": 0.1 * jax.random.normal(k2, (6,)),
        "w2": jax.random.normal(k3, (6,)) / math.sqrt(6),
    }


X = jnp.linspace(-1.0, 1.0, 9)


def slope(hs, errs):
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


# ----------------------------------------------------------------------------- JVPs


@pytest.mark.parametrize("scheme, tol", [("forward", 1e-6), ("central", 1e-9)])
def test_jvp_matches_autodiff(scheme, tol):
    p = make_params()
    v = jax.tree.map(lambda a: jnp.ones_like(a) * 0.7, p)
    f = lambda q: mlp(q, X)  # noqa: E731
    exact = jax.jvp(f, (p,), (v,))[1]
    fd = st.finite_difference_jvp(f, p, v, scheme=scheme)
    assert jax.tree.structure(fd) == jax.tree.structure(exact)
    for a, b in zip(jax.tree.leaves(fd), jax.tree.leaves(exact)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_forward_reuses_fx():
    calls = []

    def f(x):
        calls.append(1)
        return jnp.sin(x)

    x = jnp.arange(3.0)
    v = jnp.ones(3)
    a = st.finite_difference_jvp(f, x, v, h=1e-6)
    n_without = len(calls)
    calls.clear()
    b = st.finite_difference_jvp(f, x, v, h=1e-6, fx=f(x))
    assert n_without == 2 and len(calls) == 2  # one of which is the caller's f(x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "scheme, order, hs",
    [
        ("forward", 1, np.logspace(-6, -2, 9)),
        ("central", 2, np.logspace(-4, -1.5, 9)),
    ],
)
def test_pathwise_error_order(scheme, order, hs):
    # per-probe error of ||J v||^2 shrinks like h (forward) and h^2 (central) in float64
    b = st.finite_difference_bias(jax.random.key(0), mlp, make_params(), X, h=hs, scheme=scheme, num_probes=8)
    for i in range(b.pathwise.shape[1]):
        s = slope(hs, np.asarray(b.pathwise[:, i]))
        assert abs(s - order) < 0.15, (scheme, i, s)


def test_order_check_fails_on_wrong_scheme():
    # the central-difference order check rejects forward differences (slope 1, not 2)
    hs = np.logspace(-4, -1.5, 9)
    b = st.finite_difference_bias(jax.random.key(0), mlp, make_params(), X, h=hs, scheme="forward", num_probes=8)
    s = slope(hs, np.asarray(b.pathwise[:, 0]))
    assert abs(s - 2) >= 0.15


def test_rounding_takes_over_at_tiny_steps():
    hs = np.asarray([1e-14, 1e-12, 1e-10, 1e-8])
    b = st.finite_difference_bias(jax.random.key(1), mlp, make_params(), X, h=hs, scheme="forward", num_probes=8)
    err = np.asarray(b.pathwise[:, 0])
    assert err[0] > err[1] > err[2] > err[3]  # below sqrt(eps) the error grows like eps / h
    assert slope(hs[:3], err[:3]) < -0.5


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_default_step_is_near_optimal(scheme):
    p = make_params()
    hs = np.logspace(-12, -1, 23)
    b = st.finite_difference_bias(jax.random.key(2), mlp, p, X, h=hs, scheme=scheme, num_probes=8)
    best = float(np.min(np.asarray(b.pathwise[:, 0])))
    G = st.FiniteDifferenceGram(mlp, p, X, scheme=scheme)
    exact = b.exact
    V = st.probe_rows(jax.random.split(jax.random.key(2), 8), G.shape[1], jnp.float64, "gaussian")
    err = float(jnp.mean(jnp.abs(G.quad_forms(V)[:, 0] - exact[:, 0])) / jnp.mean(exact[:, 0]))
    assert err <= 30 * best, (err, best)


def test_default_step_values():
    assert st.default_step(jnp.float64, "forward") == pytest.approx(1.49e-8, rel=1e-2)
    assert st.default_step(jnp.float64, "central") == pytest.approx(6.06e-6, rel=1e-2)
    assert st.default_step(jnp.float32, "forward") == pytest.approx(3.45e-4, rel=1e-2)
    assert st.default_step(np.float32, "central") == pytest.approx(4.92e-3, rel=1e-2)


def test_expected_bias_second_order_for_symmetric_probes():
    # per probe the forward error is O(h), but h <J v, f''[v,v]> is odd in v: with antithetic
    # probes (v, -v) the O(h) parts cancel exactly and the averaged bias is O(h^2)
    p = make_params()
    hs = np.logspace(-4, -2, 5)
    V = jax.random.normal(jax.random.key(3), (4, 18))
    V = jnp.concatenate([V, -V])
    J = st.gram(st.JacobianOperator(mlp, p, X), side="input")
    exact = J.quad_forms(V).mean(axis=0)
    errs = []
    for h in hs:
        G = st.FiniteDifferenceGram(mlp, p, X, h=float(h), scheme="forward")
        errs.append(float(jnp.abs(G.quad_forms(V).mean(axis=0) - exact)[0]))
    assert abs(slope(hs, errs) - 2) < 0.2


# ----------------------------------------------------------------------------- Gram operator


def test_gram_block_traces_match_jvp(key):
    p = make_params()
    G = st.FiniteDifferenceGram(mlp, p, X, scheme="central")
    J = st.gram(st.JacobianOperator(mlp, p, X), side="input")
    assert G.shape == J.shape and G.blocks == J.blocks
    a = st.block_traces(key, G, num_matvecs=8, sampler="gaussian")
    b = st.block_traces(key, J, num_matvecs=8, sampler="gaussian")
    for name in a:
        np.testing.assert_allclose(float(a[name].value), float(b[name].value), rtol=1e-8)
    # exact path (budget >= probe dimension): basis vectors, ||J e_i||^2 by finite differences
    ex = st.block_traces(key, G, num_matvecs=100)
    Jfull = jax.jacfwd(lambda q: jax.flatten_util.ravel_pytree(mlp(q, X))[0])(p)
    Jflat = np.concatenate([np.asarray(x).reshape(X.size, -1) for x in jax.tree.leaves(Jfull)], axis=1)
    # dict outputs flatten in sorted key order: "boundary" (3 rows) comes first
    np.testing.assert_allclose(float(ex["boundary"].value), np.sum(Jflat[:3] ** 2), rtol=1e-8)
    np.testing.assert_allclose(float(ex["interior"].value), np.sum(Jflat[3:] ** 2), rtol=1e-8)


def test_gram_value_reuse_counts_evaluations():
    calls = []

    def f(p, x):
        calls.append(1)
        return mlp(p, x)

    p = make_params()
    value = mlp(p, X)
    G = st.FiniteDifferenceGram(f, p, X, value=value)
    assert len(calls) == 0
    V = jnp.ones((3, G.shape[1]))
    G.quad_forms(V)  # traced once under vmap: one evaluation per probe
    assert len(calls) == 1
    st.FiniteDifferenceGram(f, p, X)
    assert len(calls) == 2  # computes f(x) once itself


def test_gram_in_predictor_corrector(key):
    # the PINN use: the same probe at consecutive parameters, finite-difference quadratic forms
    p0 = make_params(0)
    p1 = jax.tree.map(lambda a, b: a + 1e-3 * b, p0, make_params(1))
    pc = st.predictor_corrector(num_probes=2, gamma=0.5, init_matvecs=4)

    @jax.jit
    def both(p0, p1):
        s = pc.init(key, st.FiniteDifferenceGram(mlp, p0, X))
        e, _ = pc.update(jax.random.key(1), s, st.FiniteDifferenceGram(mlp, p0, X), st.FiniteDifferenceGram(mlp, p1, X))
        J0 = st.gram(st.JacobianOperator(mlp, p0, X), side="input")
        J1 = st.gram(st.JacobianOperator(mlp, p1, X), side="input")
        e_ref, _ = pc.update(jax.random.key(1), pc.init(key, J0), J0, J1)
        return e, e_ref

    e, e_ref = both(p0, p1)
    assert set(e) == {"boundary", "interior"}
    for name in e:
        np.testing.assert_allclose(float(e[name].value), float(e_ref[name].value), rtol=1e-6)
        assert e[name].num_matvecs == 4


def test_gram_has_no_matmat():
    G = st.FiniteDifferenceGram(mlp, make_params(), X)
    with pytest.raises(NotImplementedError, match="quad_forms"):
        G.matmat(jnp.ones((1, G.shape[1])))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("h", [0.0, -1e-3, float("nan"), float("inf"), jnp.asarray(-1.0)])
def test_bad_step(h):
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="h must be"):
        st.finite_difference_jvp(jnp.sin, x, x, h=h)
    with pytest.raises(ValueError, match="h must be"):
        st.FiniteDifferenceGram(lambda q: jnp.sin(q), x, h=h)


@pytest.mark.parametrize("h", [True, "small", jnp.ones(2)])
def test_bad_step_type(h):
    x = jnp.ones(3)
    with pytest.raises((TypeError, ValueError), match="h must be"):
        st.finite_difference_jvp(jnp.sin, x, x, h=h)


def test_bad_arguments():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="scheme"):
        st.finite_difference_jvp(jnp.sin, x, x, scheme="backward")
    with pytest.raises(ValueError, match="v must have"):
        st.finite_difference_jvp(jnp.sin, x, jnp.ones(4))
    with pytest.raises(TypeError, match="f must be callable"):
        st.finite_difference_jvp(3, x, x)
    with pytest.raises(TypeError, match="dtype"):
        st.finite_difference_jvp(jnp.sin, jnp.ones(3, int), jnp.ones(3, int))
    with pytest.raises(TypeError, match="dtype"):
        st.default_step(jnp.int32)


def test_traced_step_under_jit():
    x = jnp.linspace(0, 1, 4)
    f = jax.jit(lambda h: st.finite_difference_jvp(jnp.sin, x, jnp.ones(4), h=h, scheme="central"))
    np.testing.assert_allclose(f(1e-4), jnp.cos(x), rtol=1e-7)
