"""Traces of matrix functions (stochastic Lanczos quadrature): st.trace_function, st.logdet, st.trace_inverse."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sketchtrace as st
from sketchtrace.backends import JaxBackend, backend_named
from sketchtrace.testing import assert_unbiased, check_unbiased, detectable_bias

NUMPY_F = {"log": np.log, "inv": lambda x: 1.0 / x, "exp": np.exp, "sqrt": np.sqrt}


def spd(n, lam, seed=0):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (Q * lam) @ Q.T, Q


def exact_tr(lam, f):
    return float(np.sum(NUMPY_F[f](lam)))


def qforms(A, Z, f):
    w, Q = np.linalg.eigh(A)
    F = (Q * NUMPY_F[f](w)) @ Q.T
    return np.einsum("ki,ij,kj->k", Z, F, Z)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("f", ["log", "inv", "exp", "sqrt"])
def test_quadrature_exact_when_steps_reach_dimension_numba(f):
    n, g = 12, 5
    A, _ = spd(n, np.linspace(0.5, 3.0, n))
    est = st.trace_function(
        np.random.default_rng(3), A, f, num_matvecs=g * n, lanczos_steps=n, reorthogonalize=True, allow_exact=False
    )
    Z = backend_named("numba").probes(np.random.default_rng(3), g, n, np.float64)
    assert est.num_matvecs == g * n
    np.testing.assert_allclose(est.value, qforms(A, Z, f).mean(), rtol=1e-9)


def test_quadrature_exact_when_steps_reach_dimension_jax_callable_f():
    n, g = 10, 4
    A, _ = spd(n, np.linspace(0.5, 2.0, n), seed=1)
    key = jax.random.key(5)
    est = jax.jit(
        lambda k: st.trace_function(
            k,
            A,
            lambda x: jnp.log(x) ** 2,
            num_matvecs=g * n,
            lanczos_steps=n,
            reorthogonalize=True,
            allow_exact=False,
        )
    )(key)
    Z = np.asarray(JaxBackend.probes(key, g, n, jnp.float64))
    w, Q = np.linalg.eigh(A)
    F = (Q * np.log(w) ** 2) @ Q.T
    np.testing.assert_allclose(est.value, np.einsum("ki,ij,kj->k", Z, F, Z).mean(), rtol=1e-9)


@pytest.mark.parametrize("key", [jax.random.key(0), np.random.default_rng(0)], ids=["jax", "numba"])
def test_budget_reaching_dimension_is_exact(key):
    n = 16
    lam = np.linspace(1.0, 5.0, n)
    A, _ = spd(n, lam)
    est = st.logdet(key, A, num_matvecs=n, lanczos_steps=4)
    assert est.num_matvecs == n and float(est.sem) == 0.0
    np.testing.assert_allclose(est.value, exact_tr(lam, "log"), rtol=1e-10)


def test_breakdown_gives_exact_quadrature():
    """Three distinct eigenvalues: the Krylov space is invariant after 3 steps; more steps stay exact."""
    n, g = 30, 4
    lam = np.repeat([1.0, 2.0, 4.0], 10)
    A, _ = spd(n, lam, seed=2)
    for reorth in (False, True):
        est = st.logdet(
            np.random.default_rng(1), A, num_matvecs=8 * g, lanczos_steps=8, reorthogonalize=reorth, allow_exact=False
        )
        Z = backend_named("numba").probes(np.random.default_rng(1), g, n, np.float64)
        np.testing.assert_allclose(est.value, qforms(A, Z, "log").mean(), rtol=1e-9)


def test_exponential_convergence_in_lanczos_steps():
    """Gauss quadrature error for analytic f on a spectrum in [1, 4] falls at least like 1/(3+2sqrt(3))^(2s)... in practice x10 per step."""
    n = 80
    lam = np.linspace(1.0, 4.0, n)
    A, _ = spd(n, lam)
    Z = backend_named("numba").probes(np.random.default_rng(0), 1, n, np.float64)
    for f in ("log", "exp"):
        truth = qforms(A, Z, f)[0]
        errs = []
        for s in range(1, 9):
            est = st.trace_function(np.random.default_rng(0), A, f, num_matvecs=s, lanczos_steps=s, allow_exact=False)
            errs.append(abs(float(est.value) - truth) / abs(truth))
        # kappa = 4: Chebyshev bound rho = (sqrt(4)-1)/(sqrt(4)+1) = 1/3, error ~ rho^(2s) = 1/9 per step
        for s in range(1, 7):
            assert errs[s] <= max(errs[s - 1] / 5.0, 1e-13), (f, errs)
        assert errs[7] < 1e-7, (f, errs)


# ----------------------------------------------------------------------------- statistics


def _slq_numba(A, steps, g, biased_by=0.0):
    def run(seed):
        est = st.logdet(np.random.default_rng(seed), A, num_matvecs=g * steps, lanczos_steps=steps, allow_exact=False)
        return float(est.value) * (1.0 + biased_by)

    return run


def test_unbiased_over_probes_and_fails_when_biased():
    n = 40
    lam = np.linspace(1.0, 3.0, n) ** 3
    A, _ = spd(n, lam)
    truth = exact_tr(lam, "log")  # 14 steps on kappa=27: quadrature error ~1e-9, far below the test's resolution
    report = assert_unbiased(_slq_numba(A, 14, 2), truth, num_trials=300)
    # a bias of 3x what the test detects with probability 0.99 must be caught
    delta = 3.0 * detectable_bias(report.std, 300) / truth
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(_slq_numba(A, 14, 2, biased_by=delta), truth, num_trials=300)
    # one Lanczos step is the Rayleigh-quotient rule log(z'Az/n): biased upwards by Jensen's inequality
    with pytest.warns(st.QuadratureWarning, match="one Lanczos step gives no quadrature error estimate"):
        one_step = check_unbiased([_slq_numba(A, 1, 28)(s) for s in range(300)], truth)
    assert not one_step.passed and one_step.z > 0


def test_sem_matches_spread():
    n = 40
    lam = np.linspace(1.0, 3.0, n)
    A, _ = spd(n, lam)
    ests = [
        st.trace_inverse(np.random.default_rng(s), A, num_matvecs=80, lanczos_steps=8, allow_exact=False)
        for s in range(60)
    ]
    spread = np.std([float(e.value) for e in ests], ddof=1)
    mean_sem = np.sqrt(np.mean([float(e.sem) ** 2 for e in ests]))
    assert 0.6 < mean_sem / spread < 1.6  # sample-variance ratio over 60 trials, 10 probes each


def test_reproducible():
    A, _ = spd(20, np.linspace(1, 2, 20))
    a = st.logdet(np.random.default_rng(7), A, num_matvecs=30, lanczos_steps=5)
    b = st.logdet(np.random.default_rng(7), A, num_matvecs=30, lanczos_steps=5)
    assert float(a.value) == float(b.value)
    k = jax.random.key(7)
    assert float(st.logdet(k, A, num_matvecs=30, lanczos_steps=5).value) == float(
        st.logdet(k, A, num_matvecs=30, lanczos_steps=5).value
    )


# ----------------------------------------------------------------------------- JAX: jit, vmap, gradient


def test_jit_and_vmap_over_keys_match_eager():
    A, _ = spd(20, np.linspace(1, 2, 20))
    keys = jax.random.split(jax.random.key(1), 3)

    def run(k):
        return st.logdet(k, A, num_matvecs=12, lanczos_steps=4).value

    batched = jax.vmap(jax.jit(run))(keys)
    one_by_one = [float(jax.jit(run)(k)) for k in keys]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-10)


def test_mesh_matches_single_device():
    A, _ = spd(20, np.linspace(1, 2, 20))
    kw = {"num_matvecs": 12, "lanczos_steps": 4, "allow_exact": False}
    a = jax.jit(lambda k: st.logdet(k, A, mesh=st.make_mesh(1), **kw))(jax.random.key(3))
    b = jax.jit(lambda k: st.logdet(k, A, **kw))(jax.random.key(3))
    np.testing.assert_allclose(a.value, b.value, rtol=1e-12)


def _kernel(theta, x, nugget=0.5):
    d2 = (x[:, None] - x[None, :]) ** 2
    return jnp.exp(-0.5 * d2 / theta**2) + nugget * jnp.eye(x.size)


def test_gradient_of_logdet_is_unbiased_for_exact_gradient():
    x = jnp.linspace(0.0, 3.0, 30)
    theta = 0.7
    exact = float(jax.grad(lambda t: jnp.linalg.slogdet(_kernel(t, x))[1])(theta))

    def value(t, key, scale):
        # matrix-free: the matvec closes over the traced length scale
        op = st.FunctionOperator(lambda v: _kernel(t, x) @ v, shape=30, dtype=jnp.float64)
        return scale * st.logdet(key, op, num_matvecs=40, lanczos_steps=10, allow_exact=False).value

    grad = jax.jit(jax.grad(value))
    keys = jax.random.split(jax.random.key(0), 200)
    samples = [float(grad(theta, k, 1.0)) for k in keys]
    report = assert_unbiased(lambda i: samples[i], exact, num_trials=200)
    assert report.std > 0
    delta = 3.0 * detectable_bias(report.std, 200) / abs(exact)
    biased = [float(grad(theta, k, 1.0 + delta)) for k in keys]
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(lambda i: biased[i], exact, num_trials=200)


# ----------------------------------------------------------------------------- deflation


def test_deflated_halves_the_error_on_polynomial_decay():
    n = 150
    lam = 1.0 + 100.0 * np.arange(1, n + 1) ** -2.0
    A, _ = spd(n, lam)
    truth = exact_tr(lam, "log")
    trials = 40
    err2 = {}
    for method in ("slq", "deflated"):
        vals = np.array(
            [
                float(
                    st.logdet(
                        np.random.default_rng(s), A, num_matvecs=120, lanczos_steps=10, method=method, allow_exact=False
                    ).value
                )
                for s in range(trials)
            ]
        )
        err2[method] = (vals - truth) ** 2

    # one-sided comparison of mean squared errors with 4 standard errors of margin on each side
    def upper(e):
        return e.mean() + 4 * e.std(ddof=1) / math.sqrt(e.size)

    def lower(e):
        return e.mean() - 4 * e.std(ddof=1) / math.sqrt(e.size)

    assert math.sqrt(upper(err2["deflated"])) < 0.5 * math.sqrt(max(lower(err2["slq"]), 0.0)), err2


def test_deflated_jax_matches_numba_statistics():
    n = 60
    lam = 1.0 + 50.0 * np.arange(1, n + 1) ** -2.0
    A, _ = spd(n, lam)
    est = jax.jit(lambda k: st.logdet(k, A, num_matvecs=40, lanczos_steps=6, method="deflated", allow_exact=False))(
        jax.random.key(0)
    )
    assert est.num_matvecs <= 40
    assert abs(float(est.value) - exact_tr(lam, "log")) < 6 * float(est.sem) + 1e-6


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("key", [jax.random.key(0), np.random.default_rng(0)], ids=["jax", "numba"])
def test_indefinite_operator_is_refused_for_log(key):
    A, _ = spd(20, np.linspace(-1.0, 2.0, 20))
    with pytest.raises(ValueError, match="positive definite for f='log'"):
        st.logdet(key, A, num_matvecs=20, lanczos_steps=5, allow_exact=False)
    with pytest.raises(ValueError, match="positive definite for f='inv'"):
        st.trace_inverse(key, A, num_matvecs=40, lanczos_steps=5)  # exact path too


def test_bad_arguments():
    A, _ = spd(10, np.linspace(1, 2, 10))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="lanczos_steps must be >= 1"):
        st.logdet(rng, A, num_matvecs=5, lanczos_steps=0)
    with pytest.raises(ValueError, match="smaller than lanczos_steps"):
        st.logdet(rng, A, num_matvecs=3, lanczos_steps=5)
    with pytest.raises(ValueError, match="f must be one of"):
        st.trace_function(rng, A, "cos", num_matvecs=5, lanczos_steps=5)
    with pytest.raises(ValueError, match="method must be one of"):
        st.logdet(rng, A, num_matvecs=5, lanczos_steps=5, method="chebyshev")
    with pytest.raises(TypeError, match="reorthogonalize"):
        st.logdet(rng, A, num_matvecs=5, lanczos_steps=5, reorthogonalize="yes")
    with pytest.raises(ValueError, match="returned non-finite"), np.errstate(invalid="ignore"):
        st.trace_function(rng, A, lambda x: np.log(x - 1.5), num_matvecs=5, lanczos_steps=5, allow_exact=False)
    with pytest.raises(ValueError, match="too small for method='deflated'"):
        st.logdet(rng, A, num_matvecs=6, lanczos_steps=5, method="deflated")


def test_non_symmetric_operator_is_refused():
    M = np.triu(np.ones((10, 10)))
    op = st.FunctionOperator(lambda v: M @ v, shape=10, dtype=np.float64, symmetric=False)  # declared structure
    with pytest.raises(ValueError, match="symmetric"):
        st.logdet(np.random.default_rng(0), op, num_matvecs=5, lanczos_steps=5)
    with pytest.raises(ValueError, match="must be symmetric"):  # detected when the matrix is assembled
        st.logdet(np.random.default_rng(0), M, num_matvecs=10, lanczos_steps=5)


def test_numba_fused_lanczos_matches_numpy_driver():
    """A block large enough for the fused row-parallel numba updates agrees with the NumPy driver."""
    import scipy.sparse as sp

    from sketchtrace.backends._krylov import lanczos_numpy
    from sketchtrace.backends._numba_lanczos import lanczos_numba

    n, k = 70_000, 8
    rng = np.random.default_rng(0)
    R = sp.coo_matrix((rng.standard_normal(3 * n), (np.repeat(np.arange(n), 3), rng.integers(0, n, 3 * n))), (n, n))
    C = (R + R.T + sp.diags(np.full(n, 8.0))).tocsr()
    bk = backend_named("numba")
    op = bk.prepare(C)
    Z = bk.probes(rng, k, n, np.float64)
    a1, b1, _, n1 = lanczos_numba(lambda V: bk.matmat(op, V), Z, 6)
    a2, b2, _, n2 = lanczos_numpy(lambda V: bk.matmat(op, V), Z, 6)
    np.testing.assert_allclose(a1, a2, rtol=1e-10)
    np.testing.assert_allclose(b1, b2, rtol=1e-10)
    np.testing.assert_allclose(n1, n2, rtol=1e-12)
