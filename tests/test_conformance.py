"""One conformance suite, run over every installed backend (JAX, numba, torch).

Each test takes the ``bk`` fixture (parametrized over the backends), which knows
how to make that backend's randomness, a matrix-free operator it accepts, and
many independent estimates quickly (``jit(vmap)`` on JAX, a loop of seeded
Generators on numba and torch). The checks are the same for every backend: unbiasedness
with tolerances from the analytic variance, error bars, exactness, budgets and
bad input.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from _stats import assert_mean_within, map_keys, qform_variance, variance_ratio_bounds
from scipy import stats

import sketchtrace as st
from sketchtrace.testing import check_unbiased

numba = pytest.importorskip("numba")

N = 12


def _sym(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    return a + a.T + np.diag(rng.uniform(1, 3, n))


A = _sym(N)
A_JAX = jnp.asarray(A)


@numba.njit(cache=True)
def _numba_matvec_A(v):
    # explicit loops over the module matrix (numba freezes it as a constant)
    out = np.empty(v.shape[0])
    for i in range(v.shape[0]):
        s = 0.0
        for j in range(v.shape[0]):
            s += _A_CONST[i, j] * v[j]
        out[i] = s
    return out


_A_CONST = A


class _Jax:
    name = "jax"

    @staticmethod
    def key(seed):
        return jax.random.key(seed)

    @staticmethod
    def function_op(blocks=None):
        return st.FunctionOperator(lambda v: A_JAX @ v, N, np.float64, blocks=blocks)

    @staticmethod
    def scaled_sampler(scale):
        return lambda key, shape, dtype: scale * jax.random.rademacher(key, shape, dtype=dtype)

    @staticmethod
    def estimates(op, *, sampler, trials, m, fn=st.hutchinson, seed=1234):
        keys = jax.random.split(jax.random.key(seed), trials)
        est = jax.jit(jax.vmap(lambda k: fn(k, op, num_matvecs=m, sampler=sampler)))(keys)
        return np.asarray(est.value), np.asarray(est.sem)


class _Numba:
    name = "numba"

    @staticmethod
    def key(seed):
        return np.random.default_rng(seed)

    @staticmethod
    def function_op(blocks=None):
        return st.FunctionOperator(_numba_matvec_A, N, np.float64, blocks=blocks)

    @staticmethod
    def scaled_sampler(scale):
        def sampler(rng, shape, dtype):
            return (scale * (1 - 2 * rng.integers(0, 2, shape))).astype(dtype)

        return sampler

    @staticmethod
    def estimates(op, *, sampler, trials, m, fn=st.hutchinson, seed=1234):
        op = st.as_operator(op)
        rngs = np.random.default_rng(seed).spawn(trials)
        out = [fn(r, op, num_matvecs=m, sampler=sampler) for r in rngs]
        return np.array([float(e.value) for e in out]), np.array([float(e.sem) for e in out])


class _Torch:
    name = "torch"

    @staticmethod
    def key(seed):
        return _torch().Generator().manual_seed(seed)

    @staticmethod
    def keys(trials, seed):
        seeds = np.random.default_rng(seed).integers(0, 2**62, size=trials)
        return [_torch().Generator().manual_seed(int(s)) for s in seeds]

    @staticmethod
    def function_op(blocks=None):
        from sketchtrace.operators import TorchFunctionOperator

        At = _torch().from_numpy(A)
        return TorchFunctionOperator(lambda v: At @ v, N, _torch().float64, blocks=blocks)

    @staticmethod
    def scaled_sampler(scale):
        torch = _torch()

        def sampler(gen, shape, dtype):
            return (scale * (1 - 2 * torch.randint(0, 2, shape, generator=gen))).to(dtype)

        return sampler

    @classmethod
    def estimates(cls, op, *, sampler, trials, m, fn=st.hutchinson, seed=1234):
        out = [fn(g, op, num_matvecs=m, sampler=sampler) for g in cls.keys(trials, seed)]
        return np.array([float(e.value) for e in out]), np.array([float(e.sem) for e in out])


def _torch():
    import torch

    return torch


_Numba.keys = staticmethod(lambda trials, seed: np.random.default_rng(seed).spawn(trials))

_BACKENDS = [_Jax, _Numba]
try:
    import array_api_compat  # noqa: F401
    import torch  # noqa: F401

    _BACKENDS.append(_Torch)
except ImportError:  # pragma: no cover - torch is an optional backend
    pass


@pytest.fixture(params=_BACKENDS, ids=[b.name for b in _BACKENDS])
def bk(request):
    return request.param


OPS = {
    "dense": lambda bk, blocks=None: st.as_operator(A, blocks=blocks),
    "sparse": lambda bk, blocks=None: st.as_operator(sp.csr_matrix(A), blocks=blocks),
    "function": lambda bk, blocks=None: bk.function_op(blocks),
}


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("sampler", ["rademacher", "gaussian"])
@pytest.mark.parametrize("kind", list(OPS))
def test_unbiased_with_analytic_variance(bk, kind, sampler):
    m, trials = 3, 1000
    values, _ = bk.estimates(OPS[kind](bk), sampler=sampler, trials=trials, m=m)
    var1 = qform_variance(A, sampler) / m
    assert_mean_within(values, float(np.trace(A)), var1, what=f"{bk.name}/{kind}/{sampler}")
    lo, hi = variance_ratio_bounds(trials)
    ratio = float(np.var(values, ddof=1)) / var1
    assert lo <= ratio <= hi, f"variance ratio {ratio:.3f} outside [{lo:.3f}, {hi:.3f}]"


@pytest.mark.parametrize("sampler", ["rademacher", "gaussian", "sphere"])
def test_reported_sem_matches_spread(bk, sampler):
    trials, m = 1500, 8
    values, sems = bk.estimates(st.as_operator(A), sampler=sampler, trials=trials, m=m)
    spread = float(np.std(values, ddof=1))
    reported = float(np.sqrt(np.mean(sems**2)))  # E[sem^2] = Var(value)
    lo, hi = variance_ratio_bounds(trials)
    assert lo <= (reported / spread) ** 2 <= hi
    assert lo <= spread**2 / (qform_variance(A, sampler) / m) <= hi


def test_statistical_check_fails_on_a_biased_variant(bk):
    """The check used above accepts honest probes and rejects probes scaled by 1.1 (bias +21%)."""
    trials, m = 400, 3
    truth = float(np.trace(A))
    honest, _ = bk.estimates(st.as_operator(A), sampler=bk.scaled_sampler(1.0), trials=trials, m=m)
    biased, _ = bk.estimates(st.as_operator(A), sampler=bk.scaled_sampler(1.1), trials=trials, m=m)
    assert check_unbiased(honest, truth).passed
    report = check_unbiased(biased, truth)
    assert not report.passed, report.describe(truth)
    with pytest.raises(AssertionError):
        assert_mean_within(biased, truth, qform_variance(A, "rademacher") / m)


def test_block_traces_unbiased_and_sum_to_total(bk):
    blocks = {"top": 5, "bottom": N - 5}
    op = OPS["sparse"](bk, blocks)
    m, trials = 4, 300
    for s in range(3):  # same probes: the blocks add up to the total
        per = st.block_traces(bk.key(s), op, num_matvecs=m)
        total = st.hutchinson(bk.key(s), op, num_matvecs=m)
        np.testing.assert_allclose(
            float(per["top"].value) + float(per["bottom"].value), float(total.value), rtol=1e-12, atol=1e-12
        )
    if bk.name == "jax":
        keys = jax.random.split(jax.random.key(99), trials)
        out = jax.jit(jax.vmap(lambda k: st.block_traces(k, op, num_matvecs=m)))(keys)
        vals = {b: np.asarray(out[b].value) for b in blocks}
    else:
        outs = [st.block_traces(r, op, num_matvecs=m) for r in bk.keys(trials, 99)]
        vals = {b: np.array([float(o[b].value) for o in outs]) for b in blocks}
    for b, sl in (("top", slice(0, 5)), ("bottom", slice(5, N))):
        # block b's quadratic form is v_b^T A_bb v_b + v_b^T A_b,rest v_rest; its variance:
        G = np.zeros_like(A)
        G[sl, :] = A[sl, :]
        var1 = qform_variance(0.5 * (G + G.T), "rademacher") / m
        assert_mean_within(vals[b], float(np.trace(A[sl, sl])), var1, what=f"block {b}")


# ----------------------------------------------------------------------------- exactness and budgets


@pytest.mark.parametrize("kind", list(OPS))
@pytest.mark.parametrize("extra", [0, 7])
def test_exact_when_budget_reaches_dimension(bk, kind, extra):
    est = st.hutchinson(bk.key(0), OPS[kind](bk), num_matvecs=N + extra)
    assert est.num_matvecs == N
    assert float(est.sem) == 0.0
    np.testing.assert_allclose(float(est.value), np.trace(A), rtol=1e-12)
    per = st.block_traces(bk.key(0), OPS[kind](bk, {"a": 4, "b": N - 4}), num_matvecs=N)
    np.testing.assert_allclose(float(per["a"].value), np.trace(A[:4, :4]), rtol=1e-12)
    np.testing.assert_allclose(float(per["b"].value), np.trace(A[4:, 4:]), rtol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 5, N - 1])
def test_budget_is_spent_and_reported(bk, m):
    est = _once(bk, lambda k: st.hutchinson(k, A, num_matvecs=m), bk.key(3))
    assert int(est.num_matvecs) == m
    assert math.isfinite(float(est.value))
    assert (float(est.sem) == math.inf) == (m == 1)


@pytest.mark.parametrize("kind", list(OPS))
def test_same_key_same_result_and_chunking_invariant(bk, kind):
    op = OPS[kind](bk)
    a = st.hutchinson(bk.key(11), op, num_matvecs=7)
    b = st.hutchinson(bk.key(11), op, num_matvecs=7)
    c = st.hutchinson(bk.key(11), op, num_matvecs=7, chunk_size=3)
    assert float(a.value) == float(b.value) and float(a.sem) == float(b.sem)
    np.testing.assert_allclose([float(c.value), float(c.sem)], [float(a.value), float(a.sem)], rtol=1e-12)
    assert float(st.hutchinson(bk.key(12), op, num_matvecs=7).value) != float(a.value)


def test_float32_operator_stays_float32(bk):
    est = st.hutchinson(bk.key(0), A.astype(np.float32), num_matvecs=4)
    assert np.asarray(est.value).dtype == np.float32


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [0, -3])
def test_budget_must_be_positive(bk, bad):
    with pytest.raises(ValueError, match="num_matvecs must be >= 1"):
        st.hutchinson(bk.key(0), A, num_matvecs=bad)


@pytest.mark.parametrize("bad", [2.5, "10", None, True])
def test_budget_must_be_a_python_integer(bk, bad):
    with pytest.raises(TypeError, match="num_matvecs must be a Python integer"):
        st.hutchinson(bk.key(0), A, num_matvecs=bad)


def test_chunk_size_checked(bk):
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        st.hutchinson(bk.key(0), A, num_matvecs=2, chunk_size=0)


def test_non_square_refused(bk):
    with pytest.raises(ValueError, match="op must be square"):
        st.hutchinson(bk.key(0), np.ones((3, 4)), num_matvecs=2)


def test_unknown_sampler(bk):
    with pytest.raises(ValueError, match="sampler must be one of"):
        st.hutchinson(bk.key(0), A, num_matvecs=2, sampler="uniform")


@pytest.mark.parametrize("bad_key", [None, 0, "seed", np.random.RandomState(0)])
def test_randomness_must_be_explicit(bk, bad_key):
    with pytest.raises(TypeError, match="key must be"):
        st.hutchinson(bad_key, A, num_matvecs=2, backend=bk.name)


def test_key_must_match_forced_backend(bk):
    for other in {"jax", "numba", "torch"} - {bk.name}:
        with pytest.raises(TypeError, match=f"when backend='{other}'"):
            st.hutchinson(bk.key(0), A, num_matvecs=2, backend=other)
    with pytest.raises(ValueError, match="backend must be one of"):
        st.hutchinson(bk.key(0), A, num_matvecs=2, backend="cuda")
    if bk.name != "torch":
        with pytest.raises(TypeError, match="torch.Generator"):  # torch is a backend now: its key is refused here
            st.hutchinson(bk.key(0), A, num_matvecs=2, backend="torch")


# every estimator family: a NaN from the operator is named as the operator's, whatever comes after the
# products (a Ritz eigensolver, f at the Ritz values, a Cholesky of the sketch, CG)
_NON_FINITE_CALLS = {
    "hutchinson": lambda key, op: st.hutchinson(key, op, num_matvecs=3),
    "hutchpp": lambda key, op: st.hutchpp(key, op, num_matvecs=6),
    "xtrace": lambda key, op: st.xtrace(key, op, num_matvecs=6),
    "diagonal": lambda key, op: st.diagonal(key, op, num_matvecs=4),
    "logdet": lambda key, op: st.logdet(key, op, num_matvecs=6, lanczos_steps=3),
    "trace_function": lambda key, op: st.trace_function(key, op, "exp", num_matvecs=6, lanczos_steps=3),
    "nystrom": lambda key, op: st.nystrom(key, op, 3),
    "solve": lambda key, op: st.solve(key, op, np.ones(N), damping=1e-3, rank=3),
}


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("call", sorted(_NON_FINITE_CALLS))
def test_non_finite_operator_refused(bk, kind, call):
    B = A.copy()
    B[2, 3] = B[3, 2] = np.nan
    op = st.as_operator(B if kind == "dense" else sp.csr_matrix(B))
    with pytest.raises(FloatingPointError, match="op: the operator produced non-finite"):
        _NON_FINITE_CALLS[call](bk.key(0), op)


@pytest.mark.parametrize("call", sorted(_NON_FINITE_CALLS))
def test_empty_operator_refused(bk, call):
    """A 0 x 0 operator is refused by name by every estimator family (it used to give a trace of 0 from
    some, a NumPy reduction error from logdet, ``range() arg 3 must not be zero`` from others)."""
    with pytest.raises(ValueError, match=r"op is empty \(shape \(0, 0\)\)"):
        _NON_FINITE_CALLS[call](bk.key(0), st.as_operator(np.zeros((0, 0))))


def test_block_traces_needs_blocks(bk):
    with pytest.raises(ValueError, match="op has no blocks"):
        st.block_traces(bk.key(0), A, num_matvecs=2)


def test_complex_matrix_refused(bk):
    with pytest.raises(TypeError, match="complex"):
        st.hutchinson(bk.key(0), A + 1j, num_matvecs=2)


# ----------------------------------------------------------------------------- the other estimators
# hutchpp, na_hutchpp, xtrace, xnystrace, diagonal and the adaptive trace are written
# once against the backend interface; the same checks run on both backends.


def _psd(n, decay, seed=1):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * decay ** np.arange(n)) @ q.T


P = _psd(20, 0.85)
_q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((20, 3)))
LOWRANK = (_q * np.array([3.0, 2.0, 1.0])) @ _q.T  # rank 3, PSD

ESTIMATORS = {
    "hutchpp": lambda key, op, m: st.hutchpp(key, op, num_matvecs=m),
    "na_hutchpp": lambda key, op, m: st.na_hutchpp(key, op, num_matvecs=m),
    "xtrace": lambda key, op, m: st.xtrace(key, op, num_matvecs=m),
    "xnystrace": lambda key, op, m: st.xnystrace(key, op, num_matvecs=m),
}


def _once(bk, fn, key):
    """``fn(key)``, compiled on JAX (eager dispatch of many small ops is slow), plain on numba."""
    return jax.jit(fn)(key) if bk.name == "jax" else fn(key)


def _many(bk, fn, trials, seed=77):
    if bk.name == "jax":
        keys = jax.random.split(jax.random.key(seed), trials)
        est = map_keys(fn, keys)
        return np.asarray(est.value), np.asarray(est.sem)
    out = [fn(r) for r in bk.keys(trials, seed)]
    return np.array([float(e.value) for e in out]), np.array([float(e.sem) for e in out])


@functools.cache
def _samples(backend_name, name, m=9, trials=400):
    """(values, sems) of ``trials`` estimates of tr(P); computed once per backend and estimator."""
    bk = {b.name: b for b in _BACKENDS}[backend_name]
    fn = ESTIMATORS.get(name, lambda key, op, m: st.hutchinson(key, op, num_matvecs=m))
    op = st.as_operator(sp.csr_matrix(P)) if bk.name == "numba" else st.as_operator(P)
    return _many(bk, lambda key: fn(key, op, m), trials)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_unbiased(bk, name):
    values, sems = _samples(bk.name, name)
    report = check_unbiased(values, float(np.trace(P)))
    assert report.passed, f"{bk.name}/{name}: " + report.describe(np.trace(P))
    # reported standard errors are of the size of the observed spread (factor 3 either way)
    ratio = float(np.sqrt(np.mean(sems**2))) / float(np.std(values, ddof=1))
    assert 1 / 3 <= ratio <= 3, f"{bk.name}/{name}: sem / spread = {ratio:.2f}"


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_exact_cases_and_budgets(bk, name):
    def fn(key, A, m):
        return _once(bk, lambda k: ESTIMATORS[name](k, A, m), key)

    full = fn(bk.key(0), P, 20)  # budget reaches the dimension: exact
    assert full.num_matvecs == 20 and float(full.sem) == 0.0
    np.testing.assert_allclose(float(full.value), np.trace(P), rtol=1e-10)
    # rank 3 below every method's sketch size at this budget: XNysTrace's Cholesky of the core matrix
    # fails and its eigendecomposition fallback runs on every backend (torch's error used to escape)
    low = fn(bk.key(0), LOWRANK, 19)
    np.testing.assert_allclose(float(low.value), np.trace(LOWRANK), rtol=1e-8)
    assert 0 < fn(bk.key(7), P, 7).num_matvecs <= 7  # odd budgets: never overspent


def test_diagonal_exact_and_unbiased(bk):
    exact = _once(bk, lambda k: st.diagonal(k, P, num_matvecs=20), bk.key(0))
    np.testing.assert_allclose(np.asarray(exact.value), np.diag(P), rtol=1e-10, atol=1e-14)
    xd = _once(bk, lambda k: st.diagonal(k, LOWRANK, num_matvecs=12, method="xdiag"), bk.key(0))
    np.testing.assert_allclose(np.asarray(xd.value), np.diag(LOWRANK), atol=1e-8)
    # Hutchinson diagonal: every entry unbiased; test the first entry over trials
    values, _ = _many(bk, lambda key: st.Estimate(st.diagonal(key, P, num_matvecs=6).value[0], 0.0, 6), 300)
    report = check_unbiased(values, P[0, 0])
    assert report.passed, report.describe(P[0, 0])


def test_adaptive_trace_meets_its_tolerance(bk):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "tolerance not met" would be a failure here
        est = st.trace(bk.key(0), P, rtol=1e-2, max_matvecs=40)
    assert est.num_matvecs <= 40
    # the stopping rule is a 95% interval; allow 3 half-widths before calling it a failure
    assert abs(float(est.value) - np.trace(P)) <= 3e-2 * np.trace(P)


@pytest.mark.parametrize("other", [b.name for b in _BACKENDS if b.name != "jax"])
@pytest.mark.parametrize("name", ["hutchinson"] + list(ESTIMATORS))
def test_backends_agree_in_distribution(name, other):
    """Welch t-test (two-sided, false alarm 1e-6) of the numba (torch) and JAX means on the same problem."""
    nb, _ = _samples(other, name)
    jx, _ = _samples("jax", name)
    t, p = stats.ttest_ind(nb, jx, equal_var=False)
    assert p > 1e-6, f"{name}: backends disagree (t = {t:.2f})"
