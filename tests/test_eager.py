"""Eager JAX calls run one cached compiled program per estimator and configuration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sketchtrace as st
from sketchtrace.estimators import _compiled

N = 60
A = jax.random.normal(jax.random.key(1), (N, N), jnp.float32)
A = A @ A.T / N + jnp.eye(N)
KEY = jax.random.key(0)


def _traces(name):
    return _compiled.TRACES[name]


@pytest.mark.parametrize("est", [st.hutchinson, st.xtrace])
def test_eager_call_compiles_once_and_equals_the_jitted_call(est):
    est.cache_clear()
    before = _traces(est.__name__)
    eager = [est(jax.random.key(s), A, num_matvecs=12) for s in range(4)]
    assert _traces(est.__name__) == before + 1  # four keys, one program
    jitted = jax.jit(lambda k, a: est(k, a, num_matvecs=12))
    for s, e in enumerate(eager):
        j = jitted(jax.random.key(s), A)
        assert float(e.value) == float(j.value) and float(e.sem) == float(j.sem)
        assert e.num_matvecs == 12 and isinstance(e.num_matvecs, int)
    assert _traces(est.__name__) == before + 1  # under the user's jit: traced through, not cached
    B = A + 0.5 * jnp.eye(N)  # a new matrix of the same shape: the same program
    assert float(est(KEY, B, num_matvecs=12).value) == float(jitted(KEY, B).value)
    assert _traces(est.__name__) == before + 1
    est(KEY, A, num_matvecs=10)  # a new configuration: one more program
    assert _traces(est.__name__) == before + 2


def test_vmap_traces_through():
    st.hutchinson.cache_clear()
    before = _traces("hutchinson")
    keys = jax.random.split(KEY, 5)
    v = jax.vmap(lambda k: st.hutchinson(k, A, num_matvecs=8).value)(keys)
    assert v.shape == (5,)
    assert _traces("hutchinson") == before
    for k, val in zip(keys, v):
        assert float(val) == pytest.approx(float(st.hutchinson(k, A, num_matvecs=8).value), rel=1e-5)


def test_operators_holding_other_user_functions_run_eagerly():
    """A Jacobian operator's function is not traced per call here: the call runs eagerly, as before."""
    st.hutchinson.cache_clear()
    W = jax.random.normal(jax.random.key(3), (8, 8)) / 8
    x = jax.random.normal(jax.random.key(10), (8,))
    before = _traces("hutchinson")
    e = st.hutchinson(KEY, st.JacobianOperator(lambda x: jnp.tanh(W @ x), x), num_matvecs=8)  # exact: tr J(x)
    np.testing.assert_allclose(float(e.value), float(jnp.trace(jax.jacfwd(lambda x: jnp.tanh(W @ x))(x))), rtol=1e-5)
    assert _traces("hutchinson") == before


def test_function_operator_rebuilt_per_call_reuses_one_program():
    """A closure rebuilt per call (a new function object): traced each call, compiled once; what it reads
    (closed-over or global arrays) is an input, so a changed array gives the new value, never a stale one."""
    st.hutchinson.cache_clear()
    before = _traces("hutchinson")
    for s in range(3):
        c = jnp.float32(s)
        op = st.FunctionOperator(lambda v, c=c: A @ v + c * v, shape=N, dtype=jnp.float32)
        e = st.hutchinson(KEY, op, num_matvecs=N)
        np.testing.assert_allclose(float(e.value), float(jnp.trace(A)) + s * N, rtol=1e-5)
    global G
    op = st.FunctionOperator(_reads_global, shape=N, dtype=jnp.float32)
    for s in range(3):
        G = jnp.full((N,), float(s), jnp.float32)  # rebinding the global the function reads
        np.testing.assert_allclose(float(st.hutchinson(KEY, op, num_matvecs=N).value), float(jnp.trace(A)) + s * N)
    assert _traces("hutchinson") == before + 2  # one program per function (two codes), not per call


def test_function_operator_rebuilt_around_the_same_arrays_is_not_retraced(monkeypatch):
    """``FunctionOperator(lambda v: M @ v, ...)`` typed per call over the same JAX array: its function is
    traced once (the memo keys on the code and the objects it reads); a new array, or a NumPy array
    changed in place (mutable: traced on every call), gives today's value."""
    calls = []
    real = _compiled._TraceMemo._trace
    monkeypatch.setattr(_compiled._TraceMemo, "_trace", staticmethod(lambda f, arg: calls.append(1) or real(f, arg)))
    st.hutchinson.cache_clear()

    def estimate(M):
        return float(
            st.hutchinson(KEY, st.FunctionOperator(lambda v: M @ v, shape=N, dtype=M.dtype), num_matvecs=N).value
        )

    for _ in range(3):
        np.testing.assert_allclose(estimate(A), float(jnp.trace(A)), rtol=1e-5)
    assert len(calls) == 1
    B = A + jnp.eye(N, dtype=A.dtype)
    np.testing.assert_allclose(estimate(B), float(jnp.trace(A)) + N, rtol=1e-5)
    assert len(calls) == 2
    H = np.asarray(A).copy()
    first = estimate(H)
    H += np.eye(N, dtype=H.dtype)  # mutated in place: the same object, new values
    np.testing.assert_allclose(estimate(H), first + N, rtol=1e-5)
    assert len(calls) == 4


G = jnp.zeros((N,), jnp.float32)


def _reads_global(v):
    return A @ v + G * v


def test_eager_errors_are_the_eager_errors():
    with pytest.raises(ValueError, match="num_matvecs"):
        st.hutchinson(KEY, A, num_matvecs=0)
    with pytest.raises(ValueError, match="square"):
        st.hutchinson(KEY, jnp.ones((3, 4)), num_matvecs=2)
    bad = A.at[0, 0].set(jnp.nan)
    st.hutchinson(KEY, A, num_matvecs=5)  # compiled for this configuration first
    with pytest.raises(FloatingPointError, match="non-finite"):
        st.hutchinson(KEY, bad, num_matvecs=5)  # the same program, then the eager check
    indefinite = A - 3.0 * jnp.eye(N) * jnp.max(jnp.diag(A))
    with pytest.raises(ValueError, match="not positive semidefinite"):
        st.xnystrace(KEY, indefinite, num_matvecs=12, check_psd=True)  # inspects values: eager


def test_a_check_skipped_by_tracing_still_fails_the_eager_call():
    """The finiteness check that the compiled program cannot raise travels out with its result: an
    estimator whose arithmetic hides the operator's NaN (here ``nan_to_num``; XNysTrace's ``nu > 0``
    guard used to) still raises the eager error instead of returning a finite wrong value. Checks
    inside a nested loop body are not collected (no tracer leaks out of it)."""
    from sketchtrace.backends import JaxBackend

    runs = []  # Python runs of the body: tracing the program once, then only eager reruns

    def masking(key, op, *, num_matvecs):
        runs.append(key)
        op = st.as_operator(op)  # as the estimators do: the eager rerun gets the user's array
        V = jax.random.normal(key, (num_matvecs, op.shape[0]), op.dtype)
        Y = op.matmat(V)
        JaxBackend.check_finite("op", Y)
        jax.lax.map(lambda y: (JaxBackend.check_finite("op", y), y)[1], Y)  # nested: not collected
        return jnp.sum(jnp.nan_to_num(Y * V)) / num_matvecs

    est = _compiled.eager_compiled(masking)
    first = float(est(KEY, A, num_matvecs=4))
    assert float(est(KEY, A, num_matvecs=4)) == first and len(runs) == 1  # compiled once, run twice
    assert all(isinstance(k, jax.core.Tracer) for k in runs)
    bad = A.at[3, 5].set(jnp.nan)
    with pytest.raises(FloatingPointError, match="op: the operator produced non-finite"):
        est(KEY, bad, num_matvecs=4)  # the same compiled program, its check failed: rerun eagerly
    assert len(runs) == 2 and not isinstance(runs[1], jax.core.Tracer)
    jitted = jax.jit(masking, static_argnames="num_matvecs")
    assert np.isfinite(float(jitted(KEY, bad, num_matvecs=4)))  # what the program alone returns: NaN hidden


def test_xnystrace_propagates_the_operators_nan_under_jit():
    bad = A.at[3, 5].set(jnp.nan).at[5, 3].set(jnp.nan)
    value = jax.jit(lambda k: st.xnystrace(k, bad, num_matvecs=12).value)(KEY)
    assert np.isnan(float(value))  # not 0: the A Omega = 0 guard keeps a NaN shift's NaN
    with pytest.raises(FloatingPointError, match="non-finite"):
        st.xnystrace(KEY, bad, num_matvecs=12)


def test_numpy_keys_call_through():
    st.hutchinson.cache_clear()
    before = _traces("hutchinson")
    e = st.hutchinson(np.random.default_rng(0), np.asarray(A, np.float64), num_matvecs=6)
    assert np.isfinite(float(e.value))
    assert _traces("hutchinson") == before
