"""Oracle tests: every estimator against its formula recomputed in plain NumPy.

Each test draws the SAME probes the estimator draws (same key, through the public
sampler API: ``st.probe_rows`` over ``jax.random.split(key, num)`` for JAX keys, the
numba backend's ``probes`` for a ``numpy.random.Generator``), evaluates the
estimator's published formula directly (dense NumPy, no downdating, no shared
code with the estimator) and requires agreement to rounding in ``value``, ``sem``
and ``num_matvecs``. There is no statistical noise, so a 1% scale, an off-by-one
budget split or a dropped term fails at once.
"""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import orth, x_mean_sem, xnystrace_loo_samples, xtrace_loo_samples
from scipy import stats

import sketchtrace as st
from sketchtrace.backends import backend_named

RTOL = 1e-9
N = 24


def _matrix(n=N, seed=0, nonsym=False):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * (0.8 ** np.arange(n) + 0.05)) @ Q.T
    A = 0.5 * (A + A.T)
    if nonsym:
        A = A + 0.3 * rng.standard_normal((n, n)) / np.sqrt(n)
    return A


class Draw:
    """Randomness for the estimator and the same probes for the oracle, per backend."""

    def __init__(self, backend, seed=3):
        self.backend, self.seed = backend, seed

    def key(self):
        if self.backend == "jax":
            return jax.random.key(self.seed)
        return np.random.default_rng(self.seed)

    def rows(self, num, n, sampler, key=None):
        """``(num, n)`` probe rows drawn from ``key`` (default: a fresh copy of :meth:`key`)."""
        key = self.key() if key is None else copy.deepcopy(key)
        if self.backend == "jax":
            return np.asarray(st.probe_rows(jax.random.split(key, num), n, jnp.float64, sampler))
        return np.asarray(backend_named("numba").probes(key, num, n, np.float64, sampler))


BACKENDS = ["jax", "numba"]


def _mean_sem(samples, axis=0):
    samples = np.asarray(samples, dtype=float)
    k = samples.shape[axis]
    if k == 1:  # one sample: the spread is unknown
        return samples.mean(axis=axis), np.full(samples.mean(axis=axis).shape, np.inf)
    return samples.mean(axis=axis), samples.std(axis=axis, ddof=1) / math.sqrt(k)


def assert_matches(est, value, sem, spent):
    np.testing.assert_allclose(np.asarray(est.value), value, rtol=RTOL, atol=RTOL * np.max(np.abs(value)))
    np.testing.assert_allclose(np.asarray(est.sem), sem, rtol=1e-7, atol=RTOL * np.max(np.abs(value)))
    assert int(est.num_matvecs) == spent


# ----------------------------------------------------------------------------- Hutchinson family


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["rademacher", "gaussian", "sphere"])
@pytest.mark.parametrize("m", [1, 7])
def test_hutchinson(backend, sampler, m):
    A, d = _matrix(), Draw(backend)
    est = st.hutchinson(d.key(), A, num_matvecs=m, sampler=sampler)
    V = d.rows(m, N, sampler)
    q = np.einsum("ij,jk,ik->i", V, A, V)
    sem = np.inf if m == 1 else q.std(ddof=1) / math.sqrt(m)
    assert_matches(est, q.mean(), sem, m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_traces(backend):
    A, d, m = _matrix(), Draw(backend), 9
    op = st.as_operator(A, blocks={"a": 10, "b": 14})
    out = st.block_traces(d.key(), op, num_matvecs=m)
    V = d.rows(m, N, "rademacher")
    W = V * (V @ A.T)  # v_j (A v)_j
    for name, sl in (("a", slice(0, 10)), ("b", slice(10, N))):
        mean, sem = _mean_sem(W[:, sl].sum(axis=1))
        assert_matches(out[name], mean, sem, m)


def _hutchpp_split(m):
    k = min(math.ceil(m / 3), (m - 1) // 2)
    return k, m - 2 * k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [3, 10, 13])  # 3 and 10: k = (m-1)//2 (at least one probe left); 13: k = ceil(m/3)
@pytest.mark.parametrize("nonsym", [False, True])
def test_hutchpp(backend, m, nonsym):
    A, d = _matrix(nonsym=nonsym), Draw(backend)
    est = st.hutchpp(d.key(), A, num_matvecs=m)
    k, g = _hutchpp_split(m)
    V = d.rows(k + g, N, "rademacher")
    Q = orth(A @ V[:k].T)
    P = np.eye(N) - Q @ Q.T
    G = V[k:] @ P  # rows (I - QQ^T) g_j
    resid = np.einsum("ij,jk,ik->i", G, A, G)
    mean, sem = _mean_sem(resid)
    assert_matches(est, np.trace(Q.T @ A @ Q) + mean, sem, m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_traces_hutchpp(backend):
    A, d, m = _matrix(), Draw(backend), 11
    op = st.as_operator(A, blocks={"a": 10, "b": 14})
    out = st.block_traces(d.key(), op, num_matvecs=m, method="hutchpp")
    k, g = _hutchpp_split(m)
    V = d.rows(k + g, N, "rademacher")
    Q = orth(A @ V[:k].T)
    G = V[k:] @ (np.eye(N) - Q @ Q.T)
    for name, sl in (("a", slice(0, 10)), ("b", slice(10, N))):
        low = np.trace((Q.T @ A)[:, sl] @ Q[sl])  # tr(Q^T A_b Q), A_b = rows of the block
        resid = np.sum(G[:, sl] * (G @ A.T)[:, sl], axis=1)
        mean, sem = _mean_sem(resid)
        assert_matches(out[name], low + mean, sem, m)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [3, 12, 17])
def test_na_hutchpp(backend, m):
    A, d = _matrix(), Draw(backend)
    est = st.na_hutchpp(d.key(), A, num_matvecs=m)
    s, r = max(1, m // 6), max(1, m // 3)
    V = d.rows(m, N, "rademacher")
    S, R, G = V[:s].T, V[s : s + r].T, V[s + r :].T
    Z, W = A @ R, A @ S
    Ahat = Z @ np.linalg.pinv(S.T @ Z) @ W.T
    resid = np.einsum("ji,jk,ki->i", G, A - Ahat, G)
    mean, sem = _mean_sem(resid)
    assert_matches(est, np.trace(Ahat) + mean, sem, m)


# ----------------------------------------------------------------------------- XTrace family


_TV = {
    "improved": ("sphere", True),
    "sphere": ("sphere", False),
    "rademacher": ("rademacher", False),
    "gaussian": ("gaussian", False),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["improved", "sphere", "rademacher", "gaussian"])
@pytest.mark.parametrize("m", [4, 11])
def test_xtrace(backend, sampler, m):
    A, d = _matrix(nonsym=True), Draw(backend)
    est = st.xtrace(d.key(), A, num_matvecs=m, sampler=sampler)
    probe, improved = _TV[sampler]
    k = m // 2
    mean, sem = x_mean_sem(xtrace_loo_samples, A, d.rows(k, N, probe).T, improved)
    assert_matches(est, mean, sem, 2 * k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["improved", "rademacher", "gaussian"])
@pytest.mark.parametrize("m", [2, 9])
def test_xnystrace(backend, sampler, m):
    A, d = _matrix(), Draw(backend)  # PSD
    est = st.xnystrace(d.key(), A, num_matvecs=m, sampler=sampler)
    probe, improved = _TV[sampler]
    mean, sem = x_mean_sem(xnystrace_loo_samples, A, d.rows(m, N, probe).T, improved)
    assert_matches(est, mean, sem, m)


# ----------------------------------------------------------------------------- diagonal


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["rademacher", "gaussian"])
def test_diagonal_hutchinson(backend, sampler):
    A, d, m = _matrix(nonsym=True), Draw(backend), 6
    est = st.diagonal(d.key(), A, num_matvecs=m, sampler=sampler)
    V = d.rows(m, N, sampler)
    mean, sem = _mean_sem(V * (V @ A.T))
    assert_matches(est, mean, sem, m)


def xdiag_samples(A, Om):
    """Direct leave-one-out XDiag samples ``(k, n)``: ``diag(P_i A) + omega_i * ((I - P_i) A omega_i)``."""
    n, k = Om.shape
    Y = A @ Om
    D = np.empty((k, n))
    for i in range(k):
        Qi = orth(np.delete(Y, i, axis=1))
        Pi = Qi @ Qi.T
        D[i] = np.diag(Pi @ A) + Om[:, i] * (Y[:, i] - Pi @ Y[:, i])
    return D


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonsym", [False, True])
@pytest.mark.parametrize("m", [4, 13])
def test_diagonal_xdiag(backend, nonsym, m):
    A, d = _matrix(nonsym=nonsym), Draw(backend)
    est = st.diagonal(d.key(), A, num_matvecs=m, method="xdiag")
    k = m // 2
    mean, sem = _mean_sem(xdiag_samples(A, d.rows(k, N, "rademacher").T))
    assert_matches(est, mean, sem, 2 * k)


# ----------------------------------------------------------------------------- adaptive trace


def _stops(value, sem, k, *, rtol, sem_factor, confidence=0.95):
    half = sem_factor * stats.t.ppf((1 + confidence) / 2, k - 1) * sem
    return half, rtol * abs(value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["xtrace", "xnystrace"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # xnystrace runs out of budget: the last estimate
def test_adaptive_x_family(backend, method):
    """Doubling rounds of fresh test vectors (a split key per round) until the interval meets rtol."""
    A, d, rtol, first, cap = _matrix(n=60), Draw(backend), 1e-3, 8, 56
    est = st.trace(d.key(), A, method=method, stop=st.StoppingRule(rtol=rtol, max_matvecs=cap, first_matvecs=first))
    per = 2 if method == "xtrace" else 1
    fn = xtrace_loo_samples if method == "xtrace" else xnystrace_loo_samples
    bk, key, cols, k = backend_named(backend), d.key(), [], 0
    k_next = first // per
    while True:
        key, rk = bk.split(key, 2)
        cols.append(d.rows(k_next - k, 60, "sphere", key=rk))
        k = k_next
        mean, sem = x_mean_sem(fn, A, np.concatenate(cols).T, True)
        half, tol = _stops(mean, sem, k, rtol=rtol, sem_factor=1.0)
        k_next = min(2 * k, (cap - per * k) // per + k, 59 // per)
        if half <= tol or k_next <= k:
            break
    assert len(cols) >= 2  # the case exercises extension of the sketch
    assert_matches(est, mean, sem, per * k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rtol", [0.01, 0.004])  # met after growing; budget runs out (a warning)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_adaptive_hutchinson(backend, rtol):
    """Batches sized from the standard error: ``ceil(1.2 k (half/tol)^2)`` rounded up to ``first * 2^j``."""
    A, d, first, cap = _matrix(n=200), Draw(backend), 8, 150
    A = A + 0.2 * np.eye(200)
    stop = st.StoppingRule(rtol=rtol, max_matvecs=cap, first_matvecs=first)
    est = st.trace(d.key(), A, method="hutchinson", stop=stop)
    bk, key, q, k = backend_named(backend), d.key(), [], 0
    k_next = first
    while True:
        key, rk = bk.split(key, 2)
        V = d.rows(k_next - k, 200, "rademacher", key=rk)
        q.append(np.einsum("ij,jk,ik->i", V, A, V))
        k = k_next
        mean, sem = _mean_sem(np.concatenate(q))
        half, tol = _stops(mean, sem, k, rtol=rtol, sem_factor=1.0)
        want, k_want = math.ceil(1.2 * k * (half / tol) ** 2), first
        while k_want < want and k_want < 4 * k:
            k_want *= 2
        k_next = min(max(k_want, 2 * k), cap)
        if half <= tol or k_next <= k:
            break
    assert len(q) >= 2
    assert_matches(est, mean, sem, k)


# ----------------------------------------------------------------------------- predictor-corrector


def _pc_sequence(n=N):
    A0 = _matrix(n)
    E = _matrix(n, seed=5, nonsym=True)
    return [A0 + 0.05 * t * (E + E.T) for t in range(4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_probes,sem", [(3, "replicas"), (1, "recursion"), (3, "recursion")])
@pytest.mark.parametrize("sampler", ["gaussian", "rademacher"])
def test_predictor_corrector(backend, num_probes, sem, sampler):
    """``T <- (1 - g)(T - v^T A_t v) + v^T A_{t+1} v`` per replica; sem from replicas or the variance recursion."""
    gamma, m0, seq = 0.25, 4, _pc_sequence()
    pc = st.predictor_corrector(
        num_probes=num_probes, gamma=gamma, sampler=sampler, init_matvecs=m0 * num_probes, sem=sem
    )
    seeds = [Draw(backend, seed=s) for s in (10, 11, 12, 13)]
    state = pc.init(seeds[0].key(), seq[0])
    V0 = seeds[0].rows(m0 * num_probes, N, sampler)
    q0 = np.einsum("ij,jk,ik->i", V0, seq[0], V0)
    T = q0.reshape(num_probes, m0).mean(axis=1)
    var, c_prev = q0.var(ddof=1) / q0.size, None
    for t in (1, 2, 3):
        est, state = pc.update(seeds[t].key(), state, seq[t - 1], seq[t])
        V = seeds[t].rows(num_probes, N, sampler)
        x, y = (np.einsum("ij,jk,ik->i", V, seq[s], V) for s in (t - 1, t))
        c = y - (1 - gamma) * x
        T = (1 - gamma) * T + c
        if num_probes >= 2:
            s2 = c.var(ddof=1)
        else:
            s2 = c[0] ** 2 if c_prev is None else 0.5 * (c[0] - c_prev) ** 2
        var, c_prev = (1 - gamma) ** 2 * var + s2 / num_probes, c[0]
        want_sem = T.std(ddof=1) / math.sqrt(num_probes) if sem == "replicas" else math.sqrt(var)
        assert_matches(est, T.mean(), want_sem, 2 * num_probes)
    assert int(state.matvecs) == m0 * num_probes + 6 * num_probes


# ----------------------------------------------------------------------------- matrix functions (SLQ)


_F = {"log": np.log, "inv": lambda t: 1.0 / t, "exp": np.exp, "sqrt": np.sqrt}


def _gauss_quadrature(A, z, steps, f):
    """``||z||^2 e1^T f(T) e1`` with ``T = Q^T A Q`` for an orthonormal basis ``Q`` of the Krylov
    space ``[z, Az, ..., A^(s-1) z]`` (QR of the Krylov matrix, not a Lanczos recursion)."""
    K = np.empty((z.size, steps))
    K[:, 0] = z
    for j in range(1, steps):
        K[:, j] = A @ K[:, j - 1]
    Q = np.linalg.qr(K)[0]
    theta, V = np.linalg.eigh(Q.T @ A @ Q)
    return (z @ z) * np.sum(V[0] ** 2 * f(theta))


# the oracle checks the 4-node quadrature itself; its (expected) quadrature warning is not the subject
@pytest.mark.filterwarnings("ignore::sketchtrace.QuadratureWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fname", ["log", "inv", "exp", "sqrt"])
@pytest.mark.parametrize("reorth", [False, True])
def test_trace_function_slq(backend, fname, reorth):
    """SLQ: ``m // s`` probes, each the ``s``-node Gauss quadrature of ``z^T f(A) z``."""
    A, d, m, steps = _matrix(), Draw(backend), 14, 4  # 3 probes, 2 matvecs unspent
    est = st.trace_function(d.key(), A, fname, num_matvecs=m, lanczos_steps=steps, reorthogonalize=reorth)
    Z = d.rows(m // steps, N, "rademacher")
    mean, sem = _mean_sem([_gauss_quadrature(A, z, steps, _F[fname]) for z in Z])
    np.testing.assert_allclose(float(est.value), mean, rtol=1e-8)
    np.testing.assert_allclose(float(est.sem), sem, rtol=1e-6)
    assert int(est.num_matvecs) == (m // steps) * steps


# the oracle checks the 4-node quadrature itself; its (expected) quadrature warning is not the subject
@pytest.mark.filterwarnings("ignore::sketchtrace.QuadratureWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_logdet_is_trace_function_log(backend):
    A, d = _matrix(), Draw(backend)
    a = st.logdet(d.key(), A, num_matvecs=12, lanczos_steps=4)
    Z = d.rows(3, N, "rademacher")
    mean, sem = _mean_sem([_gauss_quadrature(A, z, 4, np.log) for z in Z])
    assert_matches(a, mean, sem, 12)


def test_trace_function_deflated():
    """Krylov-aware deflation: ``tr(E^T f(T) E)`` on the first two blocks of a depth-4 block Krylov
    space from ``b`` vectors (key split in two: sketch, probes), plus SLQ on probes projected off them."""
    A, m, steps, depth = _matrix(), 20, 3, 4
    key = jax.random.key(8)
    est = st.trace_function(key, A, "log", num_matvecs=m, lanczos_steps=steps, method="deflated")
    b = min(max(1, (m // 2) // depth), max(1, N // (2 * depth)))
    g = (m - b * depth) // steps
    k_sketch, k_probe = jax.random.split(key, 2)
    Om = np.asarray(st.probe_rows(jax.random.split(k_sketch, b), N, jnp.float64, "rademacher")).T
    K = np.concatenate([np.linalg.matrix_power(A, j) @ Om for j in range(depth)], axis=1)
    Q = np.linalg.qr(K)[0]
    theta, V = np.linalg.eigh(Q.T @ A @ Q)
    low = np.sum((V[: 2 * b] ** 2) @ np.log(theta))
    P = Q[:, : 2 * b]
    G = np.asarray(st.probe_rows(jax.random.split(k_probe, g), N, jnp.float64, "rademacher"))
    G = G - (G @ P) @ P.T
    mean, sem = _mean_sem([_gauss_quadrature(A, z, steps, np.log) for z in G])
    assert_matches(est, low + mean, sem, b * depth + g * steps)
