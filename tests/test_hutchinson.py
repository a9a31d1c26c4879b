"""Statistical and exactness tests of Hutchinson and block traces (JAX backend)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from _stats import (
    assert_catches_scale,
    assert_mean_within,
    assert_unbiased_powered,
    low_variance_matrix,
    qform_variance,
    variance_ratio_bounds,
)
from scipy.sparse.linalg import aslinearoperator

import sketchtrace as st
from sketchtrace.testing import check_unbiased

SAMPLERS = ["rademacher", "gaussian", "sphere"]
N = 12  # operator size
M = 3  # probes per estimate


def _sym(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    return a + a.T + np.diag(rng.uniform(1, 3, n))


def _mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    u = (h @ params["w2"])[:, 0]
    return {"interior": jnp.sin(u[:5]) + u[:5] ** 2, "boundary": u[5:]}


def _mlp_case(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(rng.standard_normal((2, 4))),
        "b1": jnp.asarray(rng.standard_normal(4)),
        "w2": jnp.asarray(rng.standard_normal((4, 1))),
    }
    x = jnp.asarray(rng.uniform(-1, 1, (8, 2)))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = np.asarray(jax.jacfwd(lambda p: jax.flatten_util.ravel_pytree(_mlp(unravel(p), x))[0])(flat))
    return params, x, jac  # rows: boundary (3) then interior (5) -- sorted dict keys


def _cases():
    """(name, op factory, effective per-block matrices, block names, n_trials)."""
    A = _sym(N)
    params, x, jac = _mlp_case()
    blocks_rows = {"boundary": slice(0, 3), "interior": slice(3, 8)}
    in_side = {b: jac[s].T @ jac[s] for b, s in blocks_rows.items()}
    out_side = {b: jac[s] @ jac[s].T for b, s in blocks_rows.items()}
    return [
        ("dense", lambda: st.as_operator(A), {"total": A}),
        ("jax-dense", lambda: st.as_operator(jnp.asarray(A)), {"total": A}),
        ("sparse", lambda: st.as_operator(sp.csr_matrix(A)), {"total": A}),
        ("function", lambda: st.FunctionOperator(lambda v: jnp.asarray(A) @ v, N, np.float64), {"total": A}),
        ("gram-input-jvp", lambda: st.gram(st.JacobianOperator(_mlp, params, x, mode="fwd"), side="input"), in_side),
        ("gram-input-vjp", lambda: st.gram(st.JacobianOperator(_mlp, params, x, mode="bwd"), side="input"), in_side),
        ("gram-output-jvp", lambda: st.gram(st.JacobianOperator(_mlp, params, x, mode="fwd"), side="output"), out_side),
        ("gram-output-vjp", lambda: st.gram(st.JacobianOperator(_mlp, params, x, mode="bwd"), side="output"), out_side),
    ]


CASES = _cases()


def _estimates(op, sampler, num_trials, m=M, fn=st.hutchinson):
    keys = jax.random.split(jax.random.key(1234), num_trials)
    return jax.jit(jax.vmap(lambda k: fn(k, op, num_matvecs=m, sampler=sampler)))(keys)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("name,make,mats", CASES, ids=[c[0] for c in CASES])
def test_hutchinson_unbiased_with_analytic_variance(name, make, mats, sampler):
    op = make()
    trials = 2000
    est = _estimates(op, sampler, trials)
    truth = sum(float(np.trace(g)) for g in mats.values())
    # per-block quadratic forms use disjoint (output side) or shared (input side) probes;
    # the total's single-probe variance is that of v^T G v with G the sum (input) or blockdiag (output)
    if name.startswith("gram-output"):
        var1 = sum(qform_variance(g, sampler) for g in mats.values()) if sampler != "sphere" else None
    else:
        var1 = qform_variance(sum(mats.values()), sampler)
    if var1 is None:  # sphere probes restricted to blocks are not independent: use the t-test
        rep = check_unbiased(np.asarray(est.value), truth)
        assert rep.passed, rep.describe(truth)
        return
    assert_mean_within(np.asarray(est.value), truth, var1 / M, what=f"{name}/{sampler}")
    # the spread of the estimates matches the analytic variance
    lo, hi = variance_ratio_bounds(trials)
    ratio = float(np.var(np.asarray(est.value), ddof=1)) / (var1 / M)
    assert lo <= ratio <= hi, f"variance ratio {ratio:.3f} outside [{lo:.3f}, {hi:.3f}]"
    assert int(est.num_matvecs[0]) == M


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_reported_sem_matches_spread(sampler):
    A = _sym(N, seed=3)
    trials, m = 4000, 8
    est = _estimates(st.as_operator(A), sampler, trials, m=m)
    spread = float(np.std(np.asarray(est.value), ddof=1))
    reported = float(np.sqrt(np.mean(np.asarray(est.sem) ** 2)))  # E[sem^2] = Var(value)
    lo, hi = variance_ratio_bounds(trials)
    assert lo <= (reported / spread) ** 2 <= hi
    analytic = np.sqrt(qform_variance(A, sampler) / m)
    assert lo <= (spread / analytic) ** 2 <= hi


def test_one_probe_sem_is_inf_and_value_finite(key):
    est = st.hutchinson(key, _sym(N), num_matvecs=1)
    assert np.isinf(est.sem) and np.isfinite(est.value) and est.num_matvecs == 1


@pytest.mark.parametrize("name,make,mats", CASES, ids=[c[0] for c in CASES])
def test_exact_when_budget_reaches_dimension(name, make, mats, key):
    op = make()
    truth = sum(float(np.trace(g)) for g in mats.values())
    est = st.hutchinson(key, op, num_matvecs=op.probe_dim + 5)
    assert est.num_matvecs == op.probe_dim
    assert float(est.sem) == 0.0
    np.testing.assert_allclose(float(est.value), truth, rtol=1e-10)
    if op.blocks is not None:
        blocks = st.block_traces(key, op, num_matvecs=op.probe_dim)
        for b, g in mats.items():
            np.testing.assert_allclose(float(blocks[b].value), np.trace(g), rtol=1e-10)


def test_scipy_linear_operator_unbiased():
    A = _sym(N, seed=5)
    op = st.as_operator(aslinearoperator(A))
    trials = 300  # host callbacks are slower
    est = _estimates(op, "rademacher", trials)
    assert_mean_within(np.asarray(est.value), np.trace(A), qform_variance(A, "rademacher") / M)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, None])
def test_chunking_does_not_change_the_result(chunk_size, key):
    A = _sym(40, seed=2)
    ref = st.hutchinson(key, A, num_matvecs=11)
    est = st.hutchinson(key, A, num_matvecs=11, chunk_size=chunk_size)
    np.testing.assert_allclose(float(est.value), float(ref.value), rtol=1e-12)
    np.testing.assert_allclose(float(est.sem), float(ref.sem), rtol=1e-12)


def test_jit_matches_eager_and_same_key_same_result(key):
    A = jnp.asarray(_sym(30, seed=4))
    eager = st.hutchinson(key, A, num_matvecs=7, sampler="gaussian")
    jitted = jax.jit(lambda k, a: st.hutchinson(k, st.as_operator(a), num_matvecs=7, sampler="gaussian"))(key, A)
    np.testing.assert_allclose(float(jitted.value), float(eager.value), rtol=1e-12)
    again = st.hutchinson(key, A, num_matvecs=7, sampler="gaussian")
    assert float(again.value) == float(eager.value)
    other = st.hutchinson(jax.random.key(1), A, num_matvecs=7, sampler="gaussian")
    assert float(other.value) != float(eager.value)


def test_legacy_uint32_keys_work():
    A = _sym(10)
    est = st.hutchinson(jax.random.PRNGKey(0), A, num_matvecs=3)
    assert np.isfinite(est.value)


@pytest.mark.parametrize("side", ["input", "output"])
@pytest.mark.parametrize("sampler", ["rademacher", "gaussian"])
def test_block_traces_unbiased_and_sum_to_total(side, sampler):
    params, x, jac = _mlp_case(seed=7)
    op = st.gram(st.JacobianOperator(_mlp, params, x), side=side)
    trials = 2000
    keys = jax.random.split(jax.random.key(99), trials)
    blocks = jax.jit(jax.vmap(lambda k: st.block_traces(k, op, num_matvecs=M, sampler=sampler)))(keys)
    total = jax.jit(jax.vmap(lambda k: st.hutchinson(k, op, num_matvecs=M, sampler=sampler)))(keys)
    np.testing.assert_allclose(
        np.asarray(blocks["boundary"].value) + np.asarray(blocks["interior"].value),
        np.asarray(total.value),
        rtol=1e-10,
    )
    for b, rows in {"boundary": slice(0, 3), "interior": slice(3, 8)}.items():
        Jb = jac[rows]
        G = Jb.T @ Jb if side == "input" else Jb @ Jb.T
        assert_mean_within(np.asarray(blocks[b].value), np.trace(G), qform_variance(G, sampler) / M, what=b)


def test_block_traces_of_a_blocked_matrix(key):
    A = _sym(9, seed=8)
    op = st.as_operator(A, blocks={"a": 4, "b": 5})
    exact = st.block_traces(key, op, num_matvecs=9)
    np.testing.assert_allclose(float(exact["a"].value), np.trace(A[:4, :4]), rtol=1e-12)
    np.testing.assert_allclose(float(exact["b"].value), np.trace(A[4:, 4:]), rtol=1e-12)


def test_statistical_check_rejects_a_biased_estimator():
    """The tolerance used above catches a 20% bias (probes with E[v v^T] = 1.2 I; ~10 sd here)."""
    A = _sym(N)

    def biased_sampler(k, shape, dtype):
        return jnp.sqrt(1.2) * jax.random.rademacher(k, shape, dtype=dtype)

    est = _estimates(st.as_operator(A), biased_sampler, 2000)
    var1 = qform_variance(A, "rademacher") * 1.2**2
    with pytest.raises(AssertionError, match="sd off"):
        assert_mean_within(np.asarray(est.value), np.trace(A), var1 / M)
    rep = check_unbiased(np.asarray(est.value), np.trace(A))
    assert not rep.passed


def test_float32_operator_keeps_float32(key):
    A = np.asarray(_sym(10), dtype=np.float32)
    est = st.hutchinson(key, A, num_matvecs=4)
    assert est.value.dtype == jnp.float32


# ----------------------------------------------------------------------------- powered unbiasedness


@pytest.mark.parametrize("sampler,m,trials", [("rademacher", 4, 2000), ("sphere", 4, 2000), ("gaussian", 16, 4000)])
def test_unbiased_detects_one_percent(sampler, m, trials):
    """Unbiased, and the test detects a 1% bias (power 0.99 at false-alarm 1e-6).

    Stated detectable relative bias on ``2 I + 0.05 E`` (n = 30): rademacher and sphere
    about 0.05%, gaussian (m = 16) about 0.8%. The same samples scaled by 1.01 fail.
    """
    A = low_variance_matrix(30)
    keys = jax.random.split(jax.random.key(2024), trials)
    vals = jax.jit(jax.vmap(lambda k: st.hutchinson(k, A, num_matvecs=m, sampler=sampler).value))(keys)
    rep = assert_unbiased_powered(vals, np.trace(A))
    assert rep.relative_detectable_bias(np.trace(A)) <= 0.01
    assert_catches_scale(vals, np.trace(A))


def test_block_traces_unbiased_detects_one_percent():
    """Each block's trace: detectable relative bias about 0.1% (2000 trials, 4 Rademacher probes)."""
    A = low_variance_matrix(30, seed=1)
    op = st.as_operator(A, blocks={"a": 12, "b": 18})
    keys = jax.random.split(jax.random.key(7), 2000)
    out = jax.jit(jax.vmap(lambda k: st.block_traces(k, op, num_matvecs=4)))(keys)
    for name, sl in (("a", slice(0, 12)), ("b", slice(12, 30))):
        truth = np.trace(A[sl, sl])
        assert_unbiased_powered(out[name].value, truth, what=name)
        assert_catches_scale(out[name].value, truth)
