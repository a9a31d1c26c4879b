"""Diagonal estimation: Hutchinson-type and XDiag (unbiased, direct comparison, exact, blocks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_catches_scale, assert_unbiased_powered, low_variance_matrix, map_keys
from test_hutchpp import Counting, _jac_case, _matrix, _mlp

import sketchtrace as st
from sketchtrace.backends import JaxBackend
from sketchtrace.testing import check_power, check_unbiased


def _runs(method, A, m, trials, seed=0):
    keys = jax.random.split(jax.random.key(seed), trials)
    return map_keys(lambda k: st.diagonal(k, jnp.asarray(A), num_matvecs=m, method=method), keys)


def _max_z(vals, truth):
    """Largest |mean - truth| / sem over the entries (Bonferroni over n entries)."""
    vals = np.asarray(vals)
    sem = vals.std(axis=0, ddof=1) / np.sqrt(vals.shape[0])
    return float(np.max(np.abs(vals.mean(axis=0) - truth) / sem))


# z = 5.5 per entry with 20 entries: family-wise false alarm < 20 * 4e-8 (normal approximation)
Z_MAX = 5.5


@pytest.mark.parametrize("method", ["hutchinson", "xdiag"])
def test_unbiased_per_entry(method):
    A, _ = _matrix(n=20, decay=0.85)
    est = _runs(method, A, 6, 3000)
    assert _max_z(est.value, np.diag(A)) < Z_MAX


def test_unbiasedness_check_fails_on_biased_variant():
    # an off-by-one normalisation (sum over m probes divided by m + 1): 1/7 too small
    A, _ = _matrix(n=20, decay=0.85)
    keys = jax.random.split(jax.random.key(0), 3000)

    def biased(k):
        V = JaxBackend.probes(k, 6, 20, jnp.float64, "rademacher")
        return jnp.sum(V * (V @ jnp.asarray(A).T), axis=0) / 7.0

    vals = map_keys(biased, keys)
    assert _max_z(vals, np.diag(A)) > Z_MAX


@pytest.mark.parametrize("method", ["hutchinson", "xdiag"])
def test_sem_matches_spread(method):
    # rms of the per-entry sem vs the per-entry spread over 1000 seeds, averaged over entries
    A, _ = _matrix(n=30, decay=0.9)
    est = _runs(method, A, 16, 1000)
    spread = np.asarray(est.value).std(axis=0, ddof=1)
    rms = np.sqrt(np.mean(np.asarray(est.sem) ** 2, axis=0))
    ratio = float(np.median(rms / spread))
    assert 1 / 1.6 < ratio < 1.6, ratio


def slow_xdiag(A, Om):
    n, k = Om.shape
    Y = A @ Om
    D = []
    for i in range(k):
        Qi, _ = np.linalg.qr(np.delete(Y, i, axis=1))
        P = Qi @ Qi.T
        D.append(np.diag(P @ A) + Om[:, i] * ((np.eye(n) - P) @ A @ Om[:, i]))
    D = np.array(D)
    return D.mean(axis=0), D.std(axis=0, ddof=1) / np.sqrt(k)


def test_xdiag_matches_direct_leave_one_out():
    A, _ = _matrix(n=30, decay=0.9)
    key = jax.random.key(4)
    est = st.diagonal(key, A, num_matvecs=16, method="xdiag")
    Om = np.asarray(JaxBackend.probes(key, 8, 30, jnp.float64, "rademacher")).T
    ref_v, ref_s = slow_xdiag(A, Om)
    np.testing.assert_allclose(np.asarray(est.value), ref_v, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(est.sem), ref_s, rtol=1e-6, atol=1e-12)
    assert int(est.num_matvecs) == 16


def test_xdiag_more_accurate_on_decaying_spectrum():
    A, _ = _matrix(n=60, decay=0.7)
    err = lambda e: float(np.mean(np.abs(np.asarray(e.value) - np.diag(A))))  # noqa: E731
    assert err(_runs("xdiag", A, 30, 50)) < 0.1 * err(_runs("hutchinson", A, 30, 50))


@pytest.mark.parametrize("method", ["hutchinson", "xdiag"])
def test_exact_paths(method):
    A, _ = _matrix(n=12)
    op = Counting(A)
    est = st.diagonal(jax.random.key(0), op, num_matvecs=20, method=method)
    np.testing.assert_allclose(np.asarray(est.value), np.diag(A), rtol=1e-12, atol=1e-14)
    assert int(est.num_matvecs) == 12 == op.count and float(np.max(est.sem)) == 0.0
    rng = np.random.default_rng(0)
    B = rng.standard_normal((40, 3))
    L = B @ B.T
    e = st.diagonal(jax.random.key(0), L, num_matvecs=10, method="xdiag")  # k = 5 > rank 3
    np.testing.assert_allclose(np.asarray(e.value), np.diag(L), rtol=1e-9, atol=1e-10)


class _SymmetricCounting(Counting):
    symmetric = True  # declared structure: XDiag uses (A Q)^T for Q^T A


class _TransposeCounting(Counting):
    def rmatmat(self, U):  # A^T products count as matvecs too
        self.count += U.shape[0]
        return U @ self.A


def test_budget_counts():
    A, _ = _matrix(n=30)
    cases = (("hutchinson", 7, 7, Counting), ("xdiag", 9, 8, _SymmetricCounting), ("xdiag", 9, 8, _TransposeCounting))
    for method, m, spent, cls in cases:
        op = cls(A)
        est = st.diagonal(jax.random.key(0), op, num_matvecs=m, method=method)
        assert op.count == int(est.num_matvecs) == spent


def test_xdiag_refuses_operator_without_transpose_or_declared_symmetry():
    op = Counting(_matrix(n=30)[0])
    with pytest.raises(ValueError, match="needs Q\\^T A.*symmetric.*rmatmat"):
        st.diagonal(jax.random.key(0), op, num_matvecs=8, method="xdiag")
    assert op.count == 0  # refused before any work
    fn = st.FunctionOperator(lambda v: v.copy(), 30, np.float64)  # NumPy callable, numba backend: no transpose
    with pytest.raises(ValueError, match="transpose"):
        st.diagonal(np.random.default_rng(0), fn, num_matvecs=8, method="xdiag")


def test_xdiag_nonsymmetric_torch():
    torch = pytest.importorskip("torch")
    from sketchtrace.operators import TorchFunctionOperator, as_torch_operator

    rng = np.random.default_rng(1)
    M = rng.standard_normal((50, 9)) @ rng.standard_normal((9, 50))
    T = torch.tensor(M)
    with_transpose = TorchFunctionOperator(lambda v: v @ T.T, (50, 50), torch.float64, rmatvec=lambda u: u @ T)
    for op in (as_torch_operator(T), as_torch_operator(T.to_sparse_csr()), with_transpose):
        est = st.diagonal(torch.Generator().manual_seed(0), op, num_matvecs=20, method="xdiag")
        np.testing.assert_allclose(np.asarray(est.value), np.diag(M), rtol=1e-8, atol=1e-8)
    no_transpose = TorchFunctionOperator(lambda v: v @ T.T, (50, 50), torch.float64)
    with pytest.raises(ValueError, match="transpose"):
        st.diagonal(torch.Generator().manual_seed(0), no_transpose, num_matvecs=20, method="xdiag")


def test_xdiag_exact_on_nonsymmetric_low_rank():
    """matfree's case: a non-symmetric rank-9 50 x 50 ``A B``, 20 matvecs (10 test vectors > rank)."""
    rng = np.random.default_rng(1)
    M = rng.standard_normal((50, 9)) @ rng.standard_normal((9, 50))
    for key in (jax.random.key(2), np.random.default_rng(2)):
        est = st.diagonal(key, M, num_matvecs=20, method="xdiag")
        np.testing.assert_allclose(np.asarray(est.value), np.diag(M), rtol=1e-8, atol=1e-8)


def test_by_block():
    A, _ = _matrix(n=20)
    op = st.as_operator(jnp.asarray(A), blocks={"a": 5, "b": 15})
    res = st.diagonal(jax.random.key(0), op, num_matvecs=8, by_block=True)
    full = st.diagonal(jax.random.key(0), op, num_matvecs=8)
    np.testing.assert_array_equal(np.asarray(res["a"].value), np.asarray(full.value)[:5])
    np.testing.assert_array_equal(np.asarray(res["b"].sem), np.asarray(full.sem)[5:])
    # Gram operator on the output side: blocks of J J^T's diagonal are ||row of J_b||^2
    params, x, jac = _jac_case()
    g = st.gram(st.JacobianOperator(_mlp, params, x), side="output")
    res = st.diagonal(jax.random.key(0), g, num_matvecs=8, by_block=True)  # exact: n = 8
    np.testing.assert_allclose(np.asarray(res["boundary"].value), np.sum(jac[:3] ** 2, axis=1), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res["interior"].value), np.sum(jac[3:] ** 2, axis=1), rtol=1e-10)
    gi = st.gram(st.JacobianOperator(_mlp, params, x), side="input")
    with pytest.raises(ValueError, match="side='output'"):
        st.diagonal(jax.random.key(0), gi, num_matvecs=4, by_block=True)
    with pytest.raises(ValueError, match="blocks"):
        st.diagonal(jax.random.key(0), A, num_matvecs=4, by_block=True)


def test_bad_input():
    A, _ = _matrix(n=20)
    with pytest.raises(ValueError, match="method"):
        st.diagonal(jax.random.key(0), A, num_matvecs=4, method="xtrace")
    with pytest.raises(ValueError, match="at least 4"):
        st.diagonal(jax.random.key(0), A, num_matvecs=3, method="xdiag")
    with pytest.raises(ValueError, match="square"):
        st.diagonal(jax.random.key(0), np.ones((3, 4)), num_matvecs=2)


def test_jit_reproducible():
    A, _ = _matrix(n=20)
    k = jax.random.key(9)
    for method in ("hutchinson", "xdiag"):
        e1 = st.diagonal(k, A, num_matvecs=8, method=method)
        e2 = jax.jit(lambda kk: st.diagonal(kk, jnp.asarray(A), num_matvecs=8, method=method))(k)
        np.testing.assert_allclose(np.asarray(e1.value), np.asarray(e2.value), rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- powered unbiasedness


@pytest.mark.parametrize("method,shift,rank,m,trials", [("hutchinson", 2.0, 0, 4, 1000), ("xdiag", 1.0, 3, 12, 2000)])
def test_unbiased_detects_one_percent(method, shift, rank, m, trials):
    """Every entry unbiased (Bonferroni over the n entries) and the diagonal's sum detects a 1% bias.

    Hutchinson on ``2 I + 0.05 E`` (n = 30): each entry's test detects a relative bias of
    about 0.5%. XDiag on ``I + rank-3 + 0.05 E``: per entry only about 10% (its
    per-entry spread is large), so the 1% statement is for the diagonal as a whole (its
    sum, about 0.8% with 2000 trials). The same samples scaled by 1.01 fail.
    """
    n = 30 if method == "hutchinson" else 60
    A = low_variance_matrix(n, shift=shift, rank=rank)
    vals = np.asarray(_runs(method, A, m, trials, seed=5).value)
    for j in range(n):
        rep = check_unbiased(vals[:, j], A[j, j], false_alarm=1e-6 / n)
        assert rep.passed, f"entry {j}: " + rep.describe(A[j, j])
        if method == "hutchinson":
            check_power(rep, A[j, j], 0.01)
    assert_unbiased_powered(vals.sum(axis=1), np.trace(A))
    assert_catches_scale(vals.sum(axis=1), np.trace(A))
