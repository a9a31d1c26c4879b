"""Tests of the dynamic trace estimators (predictor-corrector, moving average, gamma rule).

Statistical checks use many independent seeds (vmap over keys, lax.scan over the
steps of a synthetic sequence A_t with known traces) and tolerances derived from
the estimators' variances; each check is shown to fail on a deliberately wrong
variant.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy import stats

import sketchtrace as st
from sketchtrace.testing import check_unbiased

N = 16


def _orth(n, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _sym(n, seed):
    g = np.random.default_rng(seed).standard_normal((n, n))
    return (g + g.T) / 2


# A_t = A0 + sin(t / 20) B + (t / 200) C: traces, Frobenius norms and changes known exactly
A0 = (_orth(N, 1) * np.linspace(1.0, 3.0, N)) @ _orth(N, 1).T
B = 0.5 * _sym(N, 2)
C = np.diag(np.linspace(0.5, 1.5, N))


def seq(t):
    t = jnp.asarray(t, jnp.float64)
    return jnp.asarray(A0) + jnp.sin(t / 20.0) * jnp.asarray(B) + (t / 200.0) * jnp.asarray(C)


def seq_np(t):
    return A0 + math.sin(t / 20.0) * B + (t / 200.0) * C


def truth(t):
    return float(np.trace(seq_np(t)))


def run(est, num_seeds, num_steps, *, seed=0, blocks=None, record=(50, 100)):
    """Run ``est`` over ``num_seeds`` independent seeds for ``num_steps`` steps.

    Returns dict t -> (values (S, B), sems (S, B)) at the recorded steps (0 = init).
    """
    record = tuple(record)

    def op(t):
        return st.as_operator(seq(t), blocks=blocks)

    def one_seed(key):
        k0, ks = jax.random.split(key)
        state = est.init(k0, op(0))

        def body(state, inp):
            t, k = inp
            e, state = est.update(k, state, op(t - 1), op(t))
            leaves = [e] if isinstance(e, st.Estimate) else list(e.values())
            vals = jnp.stack([x.value for x in leaves])
            sems = jnp.stack([x.sem for x in leaves])
            return state, (vals, sems)

        ts = jnp.arange(1, num_steps + 1)
        _, (vals, sems) = jax.lax.scan(body, state, (ts, jax.random.split(ks, num_steps)))
        e0 = est.estimate(state)
        v0 = jnp.atleast_1d(e0.value)[None]
        s0 = jnp.atleast_1d(e0.sem)[None]
        vals = jnp.concatenate([v0, vals])
        sems = jnp.concatenate([s0, sems])
        idx = jnp.asarray(record)
        return vals[idx], sems[idx]

    keys = jax.random.split(jax.random.key(seed), num_seeds)
    vals, sems = jax.jit(jax.vmap(one_seed))(keys)
    vals, sems = np.asarray(vals), np.asarray(sems)
    return {t: (vals[:, i], sems[:, i]) for i, t in enumerate(record)}


@functools.cache
def run_pc(num_probes, gamma, num_seeds=2000, num_steps=100, record=(50, 100)):
    """Cached runs shared by several tests (each configuration compiles once)."""
    pc = st.predictor_corrector(num_probes=num_probes, gamma=gamma, init_matvecs=4 * num_probes)
    return run(pc, num_seeds, num_steps, record=record)


def exact_variance(gamma, num_probes, steps, init_var):
    """The exact variance recursion for Gaussian probes: Var q(M) = 2 ||M||_F^2."""
    v = [init_var]
    for t in range(1, steps + 1):
        M = seq_np(t) - (1 - gamma) * seq_np(t - 1)
        v.append((1 - gamma) ** 2 * v[-1] + 2 * np.sum(M * M) / num_probes)
    return np.asarray(v)


# ----------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize("num_probes, gamma", [(1, 0.1), (4, 0.3)])
def test_unbiased_at_late_steps(num_probes, gamma):
    out = run_pc(num_probes, gamma)
    for t in (50, 100):
        rep = check_unbiased(out[t][0][:, 0], truth(t))
        assert rep.passed, rep.describe(truth(t))


def test_unbiased_check_fails_on_lagging_moving_average():
    # the same check on a biased estimator (moving average lags a drifting trace)
    ma = st.moving_average(beta=0.1, init_matvecs=4)
    out = run(ma, 2000, 100)
    rep = check_unbiased(out[100][0][:, 0], truth(100))
    assert not rep.passed, rep.describe(truth(100))


def test_moving_average_lag_matches_prediction():
    # for a trace drifting linearly by delta per step the stationary lag is delta (1 - beta) / beta;
    # use a sequence without the oscillating part
    beta = 0.2
    rate = 0.05
    delta = rate * float(np.trace(C))
    ma = st.moving_average(beta=beta, init_matvecs=4)

    def one_seed(key):
        k0, ks = jax.random.split(key)
        state = ma.init(k0, st.as_operator(jnp.asarray(A0)))

        def body(state, inp):
            t, k = inp
            A = jnp.asarray(A0) + (rate * t) * jnp.asarray(C)
            e, state = ma.update(k, state, None, st.as_operator(A))
            return state, e.value

        _, vals = jax.lax.scan(body, state, (jnp.arange(1, 101.0), jax.random.split(ks, 100)))
        return vals[-1]

    vals = np.asarray(jax.jit(jax.vmap(one_seed))(jax.random.split(jax.random.key(7), 2000)))
    tr100 = float(np.trace(A0 + 100 * rate * C))
    # transient of the initial value decays like (1 - beta)^100: negligible
    rep = check_unbiased(vals, tr100 - delta * (1 - beta) / beta)
    assert rep.passed, rep.describe(tr100 - delta * (1 - beta) / beta)
    assert not check_unbiased(vals, tr100).passed


def test_block_version_unbiased_per_block():
    blocks = {"a": 5, "b": 7, "c": 4}
    pc = st.predictor_corrector(num_probes=1, gamma=0.2, init_matvecs=4)
    out = run(pc, 1000, 50, blocks=blocks, record=(50,))
    vals = out[50][0]
    A = seq_np(50)
    starts = np.cumsum([0] + list(blocks.values()))
    for i in range(3):
        tb = float(np.trace(A[starts[i] : starts[i + 1], starts[i] : starts[i + 1]]))
        rep = check_unbiased(vals[:, i], tb)
        assert rep.passed, rep.describe(tb)
    # shared probes: the block values add up to the plain estimator's value for the same keys
    key = jax.random.key(4)
    plain = st.predictor_corrector(num_probes=1, gamma=0.2, init_matvecs=4)
    sb, sp = pc.init(key, st.as_operator(seq(0), blocks=blocks)), plain.init(key, seq(0))
    for t in (1, 2):
        k = jax.random.fold_in(key, t)
        eb, sb = pc.update(k, sb, st.as_operator(seq(t - 1), blocks=blocks), st.as_operator(seq(t), blocks=blocks))
        ep, sp = plain.update(k, sp, seq(t - 1), seq(t))
        np.testing.assert_allclose(sum(float(e.value) for e in eb.values()), float(ep.value), rtol=1e-10)
    # and a wrong block truth is detected
    assert not check_unbiased(vals[:, 0], float(np.trace(A[:6, :6]))).passed


def test_block_result_is_dict_of_estimates(key):
    op = st.as_operator(seq(0), blocks={"u": 10, "r": 6})
    pc = st.predictor_corrector(num_probes=2)
    s = pc.init(key, op)
    e, s = pc.update(jax.random.key(1), s, op, st.as_operator(seq(1), blocks={"u": 10, "r": 6}))
    assert set(e) == {"u", "r"} and all(isinstance(v, st.Estimate) for v in e.values())
    assert e["u"].num_matvecs == 4
    assert set(pc.estimate(s, block_names=("u", "r"))) == {"u", "r"}


# ----------------------------------------------------------------------------- variance


@pytest.mark.parametrize("gamma", [0.05, 0.3])
def test_variance_matches_recursion_and_stays_bounded(gamma):
    m0 = 8
    pc = st.predictor_corrector(num_probes=1, gamma=gamma, init_matvecs=m0)
    steps = (100, 500, 1000)
    out = run(pc, 600, 1000, record=steps)
    v = exact_variance(gamma, 1, 1000, 2 * np.sum(A0 * A0) / m0)
    bound = max(2 * np.sum((seq_np(t) - (1 - gamma) * seq_np(t - 1)) ** 2) for t in range(1, 1001)) / (
        1 - (1 - gamma) ** 2
    )
    bound = max(bound, v[0])
    for t in steps:
        x = out[t][0][:, 0]
        s2 = x.var(ddof=1)
        kurt = stats.kurtosis(x, fisher=False)
        tol = 5 * math.sqrt((kurt - 1) / x.size)
        assert abs(s2 / v[t] - 1) <= tol, (t, s2, v[t], tol)
        assert s2 <= bound * (1 + tol)


def test_undamped_recursion_variance_grows():
    # the deliberately wrong variant (gamma -> 0, no damping) fails the bounded-variance check:
    # the errors of each step's correction accumulate like a random walk
    gamma = 0.05
    bound = max(2 * np.sum((seq_np(t) - (1 - gamma) * seq_np(t - 1)) ** 2) for t in range(1, 1001)) / (
        1 - (1 - gamma) ** 2
    )

    def one_seed(key):
        V = jax.random.normal(key, (1000, N))
        T0 = 0.0

        def body(T, inp):
            t, v = inp
            return T - v @ seq(t - 1) @ v + v @ seq(t) @ v, None

        T, _ = jax.lax.scan(body, T0, (jnp.arange(1, 1001.0), V))
        return T

    x = np.asarray(jax.jit(jax.vmap(one_seed))(jax.random.split(jax.random.key(3), 600)))
    assert x.var(ddof=1) > 2 * bound


# ----------------------------------------------------------------------------- standard errors


@pytest.mark.parametrize("num_probes, gamma", [(1, 0.1), (1, 0.5), (4, 0.3)])
def test_reported_sem_matches_spread_over_seeds(num_probes, gamma):
    out = run_pc(num_probes, gamma)
    for t in (50, 100):
        vals, sems = out[t][0][:, 0], out[t][1][:, 0]
        assert np.all(np.isfinite(sems)) and np.all(sems >= 0)
        ratio, tol = _sem_ratio(vals, sems)
        # the one-probe recursion uses consecutive differences: conservative by (drift)^2 / 2
        assert 1 - tol <= ratio <= 1 + tol + 0.1, (t, ratio, tol)


def _sem_ratio(vals, sems):
    """mean(reported sem^2) / observed variance, with a 5-sigma tolerance from the data."""
    obs = vals.var(ddof=1)
    rep = np.mean(sems**2)
    kurt = stats.kurtosis(vals, fisher=False)
    tol_obs = math.sqrt((kurt - 1) / vals.size)
    tol_rep = np.std(sems**2, ddof=1) / math.sqrt(vals.size) / rep
    return rep / obs, 5 * math.hypot(tol_obs, tol_rep)


def test_sem_check_fails_without_carried_variance():
    # deliberately wrong: report only the newest correction's variance (forget (1-gamma)^2 V_t)
    gamma = 0.1
    out = run_pc(1, gamma)
    vals, sems = out[100][0][:, 0], out[100][1][:, 0]
    wrong = sems * math.sqrt(1 - (1 - gamma) ** 2)  # stationary V times (1 - (1-gamma)^2) = one step's
    ratio, tol = _sem_ratio(vals, wrong)
    assert not (1 - tol <= ratio <= 1 + tol + 0.1)


def test_sem_replicas_inf_for_one_probe(key):
    pc = st.predictor_corrector(num_probes=1, sem="replicas")
    s = pc.init(key, seq(0))
    e, _ = pc.update(key, s, seq(0), seq(1))
    assert math.isinf(float(e.sem))


# ----------------------------------------------------------------------------- gamma = 1


def test_gamma_one_is_hutchinson_with_same_key(key):
    pc = st.predictor_corrector(num_probes=3, gamma=1.0)
    s = pc.init(key, seq(0))
    for t in range(1, 4):
        k = jax.random.fold_in(key, t)
        e, s = pc.update(k, s, seq(t - 1), seq(t))
        h = st.hutchinson(k, seq(t), num_matvecs=3, sampler="gaussian")
        np.testing.assert_allclose(float(e.value), float(h.value), rtol=1e-12)
        assert e.num_matvecs == 3  # op_prev is never needed at gamma = 1


def test_gamma_one_reproduces_hutchinson_distribution():
    pc = st.predictor_corrector(num_probes=1, gamma=1.0, init_matvecs=1)
    vals = run(pc, 2000, 5, record=(5,))[5][0][:, 0]
    keys = jax.random.split(jax.random.key(99), 2000)
    ref = np.asarray(jax.vmap(lambda k: st.hutchinson(k, seq(5), num_matvecs=1, sampler="gaussian").value)(keys))
    assert stats.ks_2samp(vals, ref).pvalue > 1e-6
    # the same test tells a different distribution apart (Rademacher probes have a smaller spread)
    rad = np.asarray(jax.vmap(lambda k: st.hutchinson(k, seq(5), num_matvecs=1, sampler="rademacher").value)(keys))
    assert stats.ks_2samp(vals, rad).pvalue < 1e-6


# ----------------------------------------------------------------------------- exact identities


@settings(max_examples=6)
@given(
    gamma=hst.sampled_from([0.3, 1.0, "auto"]),
    num_probes=hst.just(2),
    seed=hst.integers(0, 2**31 - 1),
    scale=hst.floats(-2.0, 2.0),
)
def test_update_is_the_recursion_on_hutchinson_probes(gamma, num_probes, seed, scale):
    # same key -> same probes as st.hutchinson: the new mean is exactly
    # (1 - gamma) (T - H(op_prev)) + H(op_next), H = Hutchinson's per-probe forms on those probes
    key = jax.random.key(seed)
    pc = st.predictor_corrector(num_probes=num_probes, gamma=gamma, init_matvecs=2 * num_probes)
    s = pc.init(jax.random.fold_in(key, 1), seq(0))
    prev, nxt = seq(3), seq(4) + scale * jnp.asarray(B)
    e, s2 = pc.update(key, s, prev, nxt)
    g = np.asarray(s.gamma)[0]
    # per-probe forms of the probes st.hutchinson(key, op, num_matvecs=R) draws
    from sketchtrace.backends import JaxBackend

    qp = np.asarray(JaxBackend.quad_forms(key, st.as_operator(prev), num_probes, "gaussian", None))[:, 0]
    qn = np.asarray(JaxBackend.quad_forms(key, st.as_operator(nxt), num_probes, "gaussian", None))[:, 0]
    hn = float(st.hutchinson(key, nxt, num_matvecs=num_probes, sampler="gaussian").value)
    np.testing.assert_allclose(qn.mean(), hn, rtol=1e-12)
    if gamma == 1.0:
        qp = np.zeros_like(qp)
    want = (1 - g) * (np.asarray(s.estimate)[:, 0] - qp) + qn
    np.testing.assert_allclose(np.asarray(s2.estimate)[:, 0], want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(e.value), want.mean(), rtol=1e-10, atol=1e-10)
    assert int(s2.matvecs) == int(s.matvecs) + (num_probes if gamma == 1.0 else 2 * num_probes)


# ----------------------------------------------------------------------------- gamma rule


@given(
    a=hst.floats(0.1, 10.0),
    rel=hst.floats(1e-4, 3.0),
    corr=hst.floats(-0.5, 0.5),
)
def test_optimal_gamma_minimises_stationary_variance(a, rel, corr):
    d = rel * a
    c = corr * math.sqrt(a * d)  # Cov(q(A), q(dA)) within Cauchy-Schwarz
    s = a + c
    g = float(st.optimal_gamma(d, s))
    grid = np.linspace(1e-4, 1.0, 20001)

    def f(x):
        return (x * x * a + 2 * x * c + d) / (x * (2 - x))

    best = grid[np.argmin(f(grid))]
    assert f(g) <= f(best) * (1 + 1e-6) + 1e-12
    assert 1e-4 <= g <= 1.0


def test_optimal_gamma_small_change_is_relative_size():
    assert float(st.optimal_gamma(1e-6, 1.0)) == pytest.approx(1e-3, rel=2e-3)
    assert float(st.optimal_gamma(1.0, 0.0)) == 1.0


def test_auto_gamma_tracks_optimal_and_stays_unbiased():
    # constant relative change: A_t = A0 + t * D with ||D|| small
    D = 0.02 * _sym(N, 5)
    pc = st.predictor_corrector(num_probes=1, gamma="auto", init_matvecs=8)

    def one_seed(key):
        k0, ks = jax.random.split(key)
        state = pc.init(k0, jnp.asarray(A0))

        def body(state, inp):
            t, k = inp
            e, state = pc.update(k, state, st.as_operator(A0 + (t - 1) * D), st.as_operator(A0 + t * D))
            return state, e.value

        state, vals = jax.lax.scan(body, state, (jnp.arange(1, 201.0), jax.random.split(ks, 200)))
        return vals[-1], state.gamma[0]

    vals, gammas = jax.jit(jax.vmap(one_seed))(jax.random.split(jax.random.key(11), 1000))
    A200, A199 = A0 + 200 * D, A0 + 199 * D
    oracle = float(st.optimal_gamma(2 * np.sum(D * D), 2 * np.sum(A199 * A200)))
    med = float(np.median(np.asarray(gammas)))
    assert oracle / 2 <= med <= oracle * 2, (med, oracle)
    rep = check_unbiased(np.asarray(vals), float(np.trace(A200)))
    assert rep.passed, rep.describe(np.trace(A200))


# ----------------------------------------------------------------------------- state handling


def test_state_is_pytree_jit_and_savez_roundtrip(tmp_path, key):
    pc = st.predictor_corrector(num_probes=2, gamma=0.2)
    s = pc.init(key, seq(0))
    e1, s1 = pc.update(jax.random.key(5), s, seq(0), seq(1))
    path = tmp_path / "state.npz"
    np.savez(path, **s._asdict())
    with np.load(path) as z:
        restored = st.DynamicState(**{k: jnp.asarray(z[k]) for k in z.files})
    e2, s2 = pc.update(jax.random.key(5), restored, seq(0), seq(1))
    assert float(e1.value) == float(e2.value)
    jitted = jax.jit(lambda k, s, a, b: pc.update(k, s, st.as_operator(a), st.as_operator(b)))
    e3, s3 = jitted(jax.random.key(5), s, seq(0), seq(1))
    np.testing.assert_allclose(float(e3.value), float(e1.value), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s3)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_init_counts_matvecs_and_exact_path(key):
    pc = st.predictor_corrector(num_probes=2, gamma=0.1, init_matvecs=6)
    s = pc.init(key, seq(0))
    assert int(s.matvecs) == 6
    ex = st.predictor_corrector(num_probes=2, init_matvecs=100).init(key, seq(0))
    assert int(ex.matvecs) == N
    np.testing.assert_allclose(np.asarray(ex.estimate), truth(0), rtol=1e-12)
    assert float(st.predictor_corrector(num_probes=2, init_matvecs=100).estimate(ex).sem) == 0.0
    default = st.predictor_corrector(gamma=0.5)  # ceil((2 - 0.5) / 0.5) = 3 probes
    assert int(default.init(key, seq(0)).matvecs) == 3


def test_generic_quad_form_hook(key):
    class Minimal:
        """Only the documented hook: probe_dim, blocks, block_names, jax_dtype, quad_forms."""

        def __init__(self, A):
            self.A = A
            self.probe_dim = A.shape[0]
            self.blocks = None
            self.block_names = None
            self.jax_dtype = A.dtype

        def quad_forms(self, V):
            return jnp.sum(V * (V @ self.A), axis=1, keepdims=True)

    pc = st.predictor_corrector(num_probes=2)
    with pytest.warns(DeprecationWarning, match="LinearOperator"):
        s = pc.init(key, Minimal(seq(0)))
        e, _ = pc.update(key, s, Minimal(seq(0)), Minimal(seq(1)))
    s_ref = pc.init(key, seq(0))
    e_ref, _ = pc.update(key, s_ref, seq(0), seq(1))
    np.testing.assert_allclose(float(e.value), float(e_ref.value), rtol=1e-12)


def test_quad_form_only_operator(key):
    class QuadOnly(st.LinearOperator):
        """The operator contract with quadratic forms only (like FiniteDifferenceGram)."""

        products = frozenset({"quad_forms"})

        def __init__(self, A):
            self.A, self.shape, self.dtype = A, A.shape, np.dtype(A.dtype)

        def quad_forms(self, V):
            return jnp.sum(V * (V @ self.A), axis=1, keepdims=True)

    pc = st.predictor_corrector(num_probes=2)
    s = pc.init(key, QuadOnly(seq(0)))
    e, _ = pc.update(key, s, QuadOnly(seq(0)), QuadOnly(seq(1)))
    e_ref, _ = pc.update(key, pc.init(key, seq(0)), seq(0), seq(1))
    np.testing.assert_allclose(float(e.value), float(e_ref.value), rtol=1e-12)
    with pytest.raises(ValueError, match="matmat"):  # refused before any work
        st.xtrace(key, QuadOnly(seq(0)), num_matvecs=8)
    assert (
        st.trace(key, QuadOnly(seq(0)), stop=st.StoppingRule(rtol=0.5, max_matvecs=12, first_matvecs=4)).num_matvecs
        <= 12
    )  # auto: hutchinson


def _numba_available():
    try:
        st.hutchinson(np.random.default_rng(0), np.eye(3), num_matvecs=1)
    except (ImportError, NotImplementedError):
        return False
    return True


numba_only = pytest.mark.skipif(not _numba_available(), reason="numba backend not available")


@numba_only
def test_numba_backend_gamma_one_is_hutchinson():
    pc = st.predictor_corrector(num_probes=3, gamma=1.0)
    s = pc.init(np.random.default_rng(0), A0)
    assert isinstance(s.estimate, np.ndarray)
    e, s = pc.update(np.random.default_rng(5), s, A0, seq_np(1))
    h = st.hutchinson(np.random.default_rng(5), seq_np(1), num_matvecs=3, sampler="gaussian")
    np.testing.assert_allclose(float(e.value), float(h.value), rtol=1e-12)


@numba_only
def test_numba_backend_unbiased_and_same_semantics():
    import scipy.sparse as sp

    pc = st.predictor_corrector(num_probes=1, gamma=0.2, init_matvecs=4)
    vals = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        s = pc.init(rng, A0)
        for t in range(1, 11):  # NumPy arrays and scipy.sparse matrices, one Generator throughout
            prev, nxt = seq_np(t - 1), seq_np(t)
            if t % 2:
                prev, nxt = sp.csr_matrix(prev), sp.csr_matrix(nxt)
            e, s = pc.update(rng, s, prev, nxt)
        vals.append(float(e.value))
    rep = check_unbiased(vals, truth(10))
    assert rep.passed, rep.describe(truth(10))
    assert int(s.matvecs) == 4 + 2 * 10
    # same configuration checks as on JAX
    with pytest.raises(ValueError, match="num_probes"):
        st.predictor_corrector(num_probes=2).update(np.random.default_rng(0), s, A0, A0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("gamma", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_gamma_value(gamma):
    with pytest.raises(ValueError, match="gamma"):
        st.predictor_corrector(gamma=gamma)


@pytest.mark.parametrize("gamma", [True, "fast", None, jnp.asarray(0.1)])
def test_bad_gamma_type(gamma):
    with pytest.raises((TypeError, ValueError), match="gamma"):
        st.predictor_corrector(gamma=gamma)


def test_bad_configuration():
    with pytest.raises(ValueError, match="beta"):
        st.moving_average(beta=0.0)
    with pytest.raises(ValueError, match="init_matvecs"):
        st.predictor_corrector(num_probes=4, init_matvecs=2)
    with pytest.raises(ValueError, match="num_probes"):
        st.predictor_corrector(num_probes=0)
    with pytest.raises(ValueError, match="sem"):
        st.predictor_corrector(sem="bootstrap")
    with pytest.raises(ValueError, match="sampler"):
        st.predictor_corrector(sampler="cauchy")


def test_bad_operators(key):
    pc = st.predictor_corrector()
    s = pc.init(key, seq(0))
    with pytest.raises(ValueError, match="same shape"):
        pc.update(key, s, jnp.eye(N + 1), seq(1))
    with pytest.raises(ValueError, match="square"):
        pc.update(key, s, jnp.ones((N, N + 1)), seq(1))
    with pytest.raises(ValueError, match="same blocks"):
        pc.update(key, s, st.as_operator(seq(0), blocks={"a": 8, "b": 8}), seq(1))
    with pytest.raises(ValueError, match="same dtype"):
        pc.update(key, s, seq(0).astype(jnp.float32), seq(1))
    with pytest.raises(TypeError, match="op_prev"):
        pc.update(key, s, None, seq(1))
    with pytest.raises(TypeError, match="key"):
        pc.update(0, s, seq(0), seq(1))
    with pytest.raises(FloatingPointError):
        pc.update(key, s, seq(0), seq(1).at[0, 0].set(jnp.nan))


def test_state_from_other_configuration(key):
    pc = st.predictor_corrector(num_probes=1, gamma=0.1)
    s = pc.init(key, seq(0))
    with pytest.raises(ValueError, match="num_probes"):
        st.predictor_corrector(num_probes=2).update(key, s, seq(0), seq(1))
    # the configuration (gamma, kind, sampler) lives in the estimator, not in the state (optax's
    # shape): only a state of another shape can be told apart
    with pytest.raises(ValueError, match="num_blocks"):
        blk = st.as_operator(seq(0), blocks={"a": 8, "b": 8})
        pc.update(key, s, blk, blk)
    with pytest.raises(TypeError, match="DynamicState"):
        pc.update(key, (s.estimate,), seq(0), seq(1))
    batched = jax.vmap(lambda k: pc.init(k, seq(0)))(jax.random.split(key, 3))
    with pytest.raises(ValueError, match="vmap"):
        pc.update(key, batched, seq(0), seq(1))


# ----------------------------------------------------------------------------- powered unbiasedness


def _low_variance_sequence(t):
    """``2 I + 0.05 (E + t/4 F)`` (n = 30): small Rademacher variance, a drifting trace."""
    from _stats import low_variance_matrix

    E = low_variance_matrix(30, shift=0.0, noise=1.0, seed=3)
    F = np.diag(np.linspace(-1.0, 2.0, 30)) + low_variance_matrix(30, shift=0.0, noise=1.0, seed=4)
    return 2.0 * np.eye(30) + 0.05 * (E + 0.25 * t * F)


@pytest.mark.parametrize("num_probes,gamma", [(1, 0.3), (3, 0.1)])
def test_unbiased_detects_one_percent(num_probes, gamma):
    """Unbiased at every step, and the test detects a 1% bias (power 0.99, false alarm 1e-6).

    Rademacher probes on a slowly drifting ``2 I + 0.05 (E + t F / 4)``, 1000 seeds,
    5 steps: stated detectable relative bias about 0.05%. The same samples scaled by
    1.01 fail.
    """
    from _stats import assert_catches_scale, assert_unbiased_powered

    mats = [jnp.asarray(_low_variance_sequence(t)) for t in range(6)]
    pc = st.predictor_corrector(num_probes=num_probes, gamma=gamma, sampler="rademacher")

    def one_seed(key):
        ks = jax.random.split(key, 6)
        state = pc.init(ks[0], mats[0])
        vals = []
        for t in range(1, 6):
            e, state = pc.update(ks[t], state, mats[t - 1], mats[t])
            vals.append(e.value)
        return jnp.stack(vals)

    vals = np.asarray(jax.jit(jax.vmap(one_seed))(jax.random.split(jax.random.key(99), 1000)))
    for t in range(1, 6):
        truth = float(np.trace(_low_variance_sequence(t)))
        rep = assert_unbiased_powered(vals[:, t - 1], truth, false_alarm=1e-6 / 5, what=f"step {t}")
        assert rep.relative_detectable_bias(truth) <= 0.01
    assert_catches_scale(vals[:, -1], truth)
