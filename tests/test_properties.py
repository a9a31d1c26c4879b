"""Hypothesis properties that hold exactly."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hst

import sketchtrace as st
from sketchtrace.testing import strategies as sts


@given(
    a=sts.symmetric_matrices(sizes=hst.integers(2, 12)),
    seed=hst.integers(0, 2**20),
    alpha=hst.floats(-3, 3),
    beta=hst.floats(-3, 3),
    m=hst.integers(1, 12),
    sampler=hst.sampled_from(["rademacher", "gaussian", "sphere"]),
)
def test_linear_in_the_operator_with_shared_probes(a, seed, alpha, beta, m, sampler):
    n = a.matrix.shape[0]
    b = np.random.default_rng(seed).standard_normal((n, n))
    key = jax.random.key(seed)
    lhs = st.hutchinson(key, alpha * a.matrix + beta * b, num_matvecs=m, sampler=sampler)
    ra = st.hutchinson(key, a.matrix, num_matvecs=m, sampler=sampler)
    rb = st.hutchinson(key, b, num_matvecs=m, sampler=sampler)
    scale = (
        1
        + abs(alpha) * abs(float(ra.value))
        + abs(beta) * abs(float(rb.value))
        + np.abs(b).sum()
        + np.abs(a.matrix).sum()
    )
    np.testing.assert_allclose(float(lhs.value), alpha * float(ra.value) + beta * float(rb.value), atol=1e-11 * scale)


@given(
    case=sts.psd_matrices(sizes=hst.integers(1, 20)),
    m=hst.integers(1, 40),
    chunk=hst.one_of(hst.none(), hst.integers(1, 50)),
)
def test_budget_never_exceeded_and_exact_at_dimension(case, m, chunk):
    est = st.hutchinson(jax.random.key(m), case.op, num_matvecs=m, chunk_size=chunk)
    n = case.matrix.shape[0]
    assert est.num_matvecs <= m and est.num_matvecs <= n
    if m >= n:
        assert float(est.sem) == 0.0
        np.testing.assert_allclose(float(est.value), case.trace, rtol=1e-9, atol=1e-12)
    else:
        assert est.num_matvecs == m


@given(dtype=hst.sampled_from([jnp.float32, jnp.float64]), n=hst.integers(2, 10), m=hst.integers(1, 5))
def test_dtype_preserved(dtype, n, m):
    A = jnp.eye(n, dtype=dtype) * 2
    est = st.hutchinson(jax.random.key(0), A, num_matvecs=m)
    assert est.value.dtype == dtype and est.sem.dtype == dtype


@settings(max_examples=5)  # each example compiles a new network
@given(case=sts.mlp_jacobians())
def test_gram_trace_of_mlp_jacobian_is_exact_at_full_budget(case):
    J = st.JacobianOperator(case.f, case.params, case.x)
    for side in ("input", "output"):
        G = st.gram(J, side=side)
        est = st.hutchinson(jax.random.key(0), G, num_matvecs=G.probe_dim)
        np.testing.assert_allclose(float(est.value), case.gram_trace, rtol=1e-9)


@given(case=sts.psd_matrices(sizes=hst.integers(2, 15), spectrum="poly"))
def test_strategy_cases_are_consistent(case):
    w = np.linalg.eigvalsh(case.matrix)
    assert w.min() > -1e-10
    np.testing.assert_allclose(case.trace, np.trace(case.matrix))
    np.testing.assert_allclose(case.frobenius_sq, np.sum(case.matrix**2))
