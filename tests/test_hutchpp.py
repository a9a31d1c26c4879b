"""Hutch++ and NA-Hutch++: unbiasedness, honest standard errors, exactness, budgets, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_catches_scale, assert_unbiased_powered, low_variance_matrix, map_keys
from hypothesis import given, settings
from hypothesis import strategies as hst

import sketchtrace as st
from sketchtrace.backends import JaxBackend
from sketchtrace.estimators._hutchpp import hutchpp_split, na_hutchpp_split
from sketchtrace.testing import check_unbiased

N = 30


def _matrix(n=N, decay=0.85, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = decay ** np.arange(n) + shift
    a = (q * ev) @ q.T
    return 0.5 * (a + a.T), float(ev.sum())


def _many(fn, op, m, trials, seed=7, **kw):
    keys = jax.random.split(jax.random.key(seed), trials)
    return map_keys(lambda k: fn(k, op, num_matvecs=m, **kw), keys)


class Counting(st.LinearOperator):
    """Dense operator that counts the vectors it is applied to (eager calls only)."""

    def __init__(self, A, blocks=None):
        self.A = jnp.asarray(A)
        self.shape = tuple(A.shape)
        self.dtype = np.dtype(A.dtype)
        self.blocks = blocks
        self.count = 0

    def matmat(self, V):
        self.count += V.shape[0]
        return V @ self.A.T

    def quad_forms(self, V):
        self.count += V.shape[0]
        return st.operators.block_sums(V * (V @ self.A.T), self.blocks)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("fn", [st.hutchpp, st.na_hutchpp], ids=["hutchpp", "na_hutchpp"])
def test_unbiased(fn):
    A, tr = _matrix()
    est = _many(fn, jnp.asarray(A), 9, 3000)
    rep = check_unbiased(np.asarray(est.value), tr)
    assert rep.passed, rep.describe(tr)


def _biased_hutchpp(key, A, m):
    """A plausible bug: the Hutchinson phase forgets to project out the sketched range."""
    bk = JaxBackend
    k, g = hutchpp_split(m)
    V = bk.probes(key, k + g, A.shape[0], A.dtype, "rademacher")
    Q, _ = jnp.linalg.qr((V[:k] @ A.T).T)
    G = V[k:]
    return jnp.trace(Q.T @ A @ Q) + jnp.mean(jnp.sum(G * (G @ A.T), axis=1))


def test_unbiasedness_check_fails_on_biased_variant():
    A, tr = _matrix()
    keys = jax.random.split(jax.random.key(7), 3000)
    vals = map_keys(lambda k: _biased_hutchpp(k, jnp.asarray(A), 9), keys)
    rep = check_unbiased(np.asarray(vals), tr)
    assert not rep.passed, rep.describe(tr)


@pytest.mark.parametrize("fn", [st.hutchpp, st.na_hutchpp], ids=["hutchpp", "na_hutchpp"])
def test_sem_matches_observed_spread(fn):
    # The reported sem is the conditional standard deviation given the sketch; its
    # root-mean-square over trials must match the spread of the estimates. With
    # 1000 trials the sample std is within ~10% (3 sigma) of the truth; the rms of
    # sem is within ~10% as well, so a factor of 1.35 either way is a loose bound.
    A, _ = _matrix(decay=0.9)
    est = _many(fn, jnp.asarray(A), 12, 1000)
    spread = float(np.std(np.asarray(est.value), ddof=1))
    rms_sem = float(np.sqrt(np.mean(np.asarray(est.sem) ** 2)))
    assert 1 / 1.35 < rms_sem / spread < 1.35, (rms_sem, spread)


def test_hutchpp_beats_hutchinson_on_decaying_spectrum():
    A, tr = _matrix(n=60, decay=0.7)
    hpp = _many(st.hutchpp, jnp.asarray(A), 30, 200)
    hut = _many(st.hutchinson, jnp.asarray(A), 30, 200)
    err = lambda e: float(np.mean(np.abs(np.asarray(e.value) - tr)))  # noqa: E731
    assert err(hpp) < 0.1 * err(hut)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("fn", [st.hutchpp, st.na_hutchpp], ids=["hutchpp", "na_hutchpp"])
def test_exact_when_budget_reaches_dimension(fn):
    A, tr = _matrix(n=12)
    est = fn(jax.random.key(0), A, num_matvecs=15)
    assert int(est.num_matvecs) == 12 and float(est.sem) == 0.0
    np.testing.assert_allclose(float(est.value), np.trace(A), rtol=1e-12)


def test_exact_when_rank_below_sketch():
    rng = np.random.default_rng(3)
    B = rng.standard_normal((40, 4))
    A = B @ B.T  # rank 4
    est = st.hutchpp(jax.random.key(1), A, num_matvecs=15)  # k = 5 sketch vectors
    np.testing.assert_allclose(float(est.value), np.trace(A), rtol=1e-10)
    assert float(est.sem) < 1e-10 * np.trace(A)
    est = st.na_hutchpp(jax.random.key(1), A, num_matvecs=30)  # s = 5, r = 10
    np.testing.assert_allclose(float(est.value), np.trace(A), rtol=1e-8)


def test_nonsymmetric_hutchpp_unbiased():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((20, 20)) + np.diag(np.arange(20.0))
    est = _many(st.hutchpp, jnp.asarray(A), 7, 2000)
    rep = check_unbiased(np.asarray(est.value), np.trace(A))
    assert rep.passed, rep.describe(np.trace(A))


# ----------------------------------------------------------------------------- operators, jit, blocks


def _mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    u = (h @ params["w2"])[:, 0]
    return {"interior": jnp.sin(u[:5]) + u[:5] ** 2, "boundary": u[5:]}


def _jac_case():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((2, 4))),
        "b1": jnp.asarray(rng.standard_normal(4)),
        "w2": jnp.asarray(rng.standard_normal((4, 1))),
    }
    x = jnp.asarray(rng.uniform(-1, 1, (8, 2)))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = np.asarray(jax.jacfwd(lambda p: jax.flatten_util.ravel_pytree(_mlp(unravel(p), x))[0])(flat))
    return params, x, jac


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("side", ["input", "output"])
def test_gram_operators(mode, side):
    params, x, jac = _jac_case()  # J: 8 x 16, rank <= 8
    op = st.gram(st.JacobianOperator(_mlp, params, x, mode=mode), side=side)
    truth = float(np.sum(jac * jac))
    # input side: J^T J is 16 x 16 of rank 8 -> Hutch++ with k = 9 is exact
    est = st.hutchpp(jax.random.key(0), op, num_matvecs=28 if side == "input" else 8)
    np.testing.assert_allclose(float(est.value), truth, rtol=1e-9)
    blocks = st.block_traces(jax.random.key(0), op, num_matvecs=28 if side == "input" else 8, method="hutchpp")
    np.testing.assert_allclose(float(blocks["boundary"].value), np.sum(jac[:3] ** 2), rtol=1e-9)
    np.testing.assert_allclose(float(blocks["interior"].value), np.sum(jac[3:] ** 2), rtol=1e-9)


def test_block_traces_hutchpp_unbiased_per_block():
    A, _ = _matrix(n=20, decay=0.9)
    op = st.as_operator(jnp.asarray(A), blocks={"a": 8, "b": 12})
    keys = jax.random.split(jax.random.key(3), 2000)
    res = map_keys(lambda k: st.block_traces(k, op, num_matvecs=7, method="hutchpp"), keys)
    for name, (a, b) in {"a": (0, 8), "b": (8, 20)}.items():
        truth = float(np.trace(A[a:b, a:b]))
        rep = check_unbiased(np.asarray(res[name].value), truth)
        assert rep.passed, (name, rep.describe(truth))


@pytest.mark.parametrize("fn", [st.hutchpp, st.na_hutchpp], ids=["hutchpp", "na_hutchpp"])
def test_jit_matches_eager_and_is_reproducible(fn):
    A, _ = _matrix()
    k = jax.random.key(5)
    e1 = fn(k, A, num_matvecs=10)
    e2 = jax.jit(lambda kk: fn(kk, jnp.asarray(A), num_matvecs=10))(k)
    np.testing.assert_allclose(float(e1.value), float(e2.value), rtol=1e-10)
    assert float(fn(k, A, num_matvecs=10).value) == float(e1.value)
    e3 = fn(k, A, num_matvecs=10, chunk_size=3)
    np.testing.assert_allclose(float(e3.value), float(e1.value), rtol=1e-10)


# ----------------------------------------------------------------------------- budgets


@settings(max_examples=10)
@given(n=hst.integers(3, 25), m=hst.integers(3, 40))
def test_budget_never_exceeded(n, m):
    A, _ = _matrix(n=n)
    for fn in (st.hutchpp, st.na_hutchpp):
        op = Counting(A)
        est = fn(jax.random.key(0), op, num_matvecs=m)
        assert op.count == int(est.num_matvecs) <= m
        assert int(est.num_matvecs) == min(m, n)


def test_splits():
    for m in range(3, 200):
        k, g = hutchpp_split(m)
        assert k >= 1 and g >= 1 and 2 * k + g == m
        s, r, g = na_hutchpp_split(m)
        assert s >= 1 and r >= 1 and g >= 1 and s + r + g == m
    assert hutchpp_split(300) == (100, 100)
    assert na_hutchpp_split(300) == (50, 100, 150)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn,minimum", [(st.hutchpp, 3), (st.na_hutchpp, 3)])
def test_budget_too_small(fn, minimum):
    A, _ = _matrix()
    with pytest.raises(ValueError, match=f"at least {minimum}"):
        fn(jax.random.key(0), A, num_matvecs=minimum - 1)


def test_bad_arguments():
    A, _ = _matrix()
    with pytest.raises(TypeError, match="num_matvecs"):
        st.hutchpp(jax.random.key(0), A, num_matvecs=10.0)
    with pytest.raises(ValueError, match="square"):
        st.hutchpp(jax.random.key(0), np.ones((4, 5)), num_matvecs=3)
    with pytest.raises(TypeError, match="key"):
        st.na_hutchpp(0, A, num_matvecs=6)
    with pytest.raises(ValueError, match="sampler"):
        st.hutchpp(jax.random.key(0), A, num_matvecs=6, sampler="uniform")


# ----------------------------------------------------------------------------- powered unbiasedness


@pytest.mark.parametrize(
    "fn,m,trials", [(st.hutchpp, 12, 2000), (st.na_hutchpp, 18, 4000)], ids=["hutchpp", "na_hutchpp"]
)
def test_unbiased_detects_one_percent(fn, m, trials):
    """Unbiased, and the test detects a 1% bias (power 0.99, false alarm 1e-6).

    ``I + rank-3 + 0.05 E`` (n = 60): the sketch takes the low-rank part, the
    Hutchinson phase the rest. Stated detectable relative bias: Hutch++ about 0.6%,
    NA-Hutch++ about 0.7%. The same samples scaled by 1.01 fail.
    """
    A = low_variance_matrix(60, shift=1.0, rank=3)
    vals = _many(fn, jnp.asarray(A), m, trials, seed=31).value
    rep = assert_unbiased_powered(vals, np.trace(A))
    assert rep.relative_detectable_bias(np.trace(A)) <= 0.01
    assert_catches_scale(vals, np.trace(A))
