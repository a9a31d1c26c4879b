"""The torch backend: a torch.Generator key runs every estimator unchanged on torch tensors.

Conformance: unbiasedness (t-test whose tolerance comes from the estimator's own spread,
shown to catch a deliberately biased estimator), agreement in distribution with the JAX and
numba backends, exact paths, reproducibility and clear errors.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax
import scipy.sparse as sp
from scipy import stats

import sketchtrace as st
from sketchtrace.backends import get_backend
from sketchtrace.operators import (
    TorchFunctionOperator,
    TorchJacobianOperator,
    as_torch_operator,
    module_jacobian,
    torch_gram,
)
from sketchtrace.testing import assert_unbiased

N = 24


def gen(seed):
    return torch.Generator().manual_seed(int(seed))


@pytest.fixture(scope="module")
def spd():
    rng = np.random.default_rng(1)
    G = rng.standard_normal((N, N))
    A = G @ G.T / N + np.diag(np.linspace(0.1, 3.0, N))
    return A


@pytest.fixture(scope="module")
def At(spd):
    return torch.from_numpy(spd)


def test_import_does_not_import_torch():
    code = "import sys, sketchtrace, sketchtrace.operators, sketchtrace.backends; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_generator_selects_torch_backend(At):
    bk, op = get_backend(gen(0), At)
    assert bk.name == "torch" and op.dtype == torch.float64 and op.device.type == "cpu"
    with pytest.raises(TypeError, match="torch.Generator"):
        st.hutchinson(gen(0), At, num_matvecs=4, backend="jax")
    with pytest.raises(TypeError, match="torch.Generator"):
        st.hutchinson(np.random.default_rng(0), At.numpy(), num_matvecs=4, backend="torch")
    with pytest.raises(ValueError, match="mesh"):
        st.hutchinson(gen(0), At, num_matvecs=4, mesh=object())


def test_results_are_torch_and_follow_dtype(At):
    est = st.hutchinson(gen(0), At.float(), num_matvecs=5)
    assert isinstance(est.value, torch.Tensor) and est.value.dtype == torch.float32


# ----------------------------------------------------------------------------- unbiasedness

ESTIMATORS = {
    "hutchinson": lambda g, A: st.hutchinson(g, A, num_matvecs=6),
    "hutchinson_gaussian": lambda g, A: st.hutchinson(g, A, num_matvecs=6, sampler="gaussian"),
    "hutchpp": lambda g, A: st.hutchpp(g, A, num_matvecs=9),
    "na_hutchpp": lambda g, A: st.na_hutchpp(g, A, num_matvecs=12),
    "xtrace": lambda g, A: st.xtrace(g, A, num_matvecs=8),
    "xnystrace": lambda g, A: st.xnystrace(g, A, num_matvecs=8),
    "diagonal": lambda g, A: st.diagonal(g, A, num_matvecs=4).value.sum(),
    "block_traces": lambda g, A: st.block_traces(g, as_torch_operator(A, blocks={"a": 10, "b": N - 10}), num_matvecs=5)[
        "b"
    ],
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_unbiased(name, At):
    fn = ESTIMATORS[name]
    truth = float(torch.trace(At[10:, 10:])) if name == "block_traces" else float(torch.trace(At))
    assert_unbiased(lambda s: fn(gen(s), At), truth, num_trials=150)


def test_biased_estimator_is_caught(At):
    # the same test rejects an estimator biased by 3% (about 1.5 of its standard deviations / sqrt(150) * 12)
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(
            lambda s: 1.03 * st.hutchinson(gen(s), At, num_matvecs=6).value, float(torch.trace(At)), num_trials=150
        )


def test_predictor_corrector_unbiased(At):
    A1 = At + 0.1 * torch.eye(N, dtype=At.dtype)
    pc = st.predictor_corrector(num_probes=2, gamma=0.3, init_matvecs=4)

    def run(s):
        g = gen(s)
        state = pc.init(g, At)
        est, state = pc.update(g, state, At, A1)
        return est

    assert_unbiased(run, float(torch.trace(A1)), num_trials=150)


# ----------------------------------------------------------------------------- across backends


def _samples(key_of, A, num=300):
    return np.array([float(st.hutchinson(key_of(s), A, num_matvecs=3).value) for s in range(num)])


def test_agrees_in_distribution_with_jax_and_numba(spd, At):
    t = _samples(gen, At)
    j = _samples(lambda s: jax.random.key(s), spd)
    nb = _samples(np.random.default_rng, spd)
    for other in (j, nb):
        assert stats.ks_2samp(t, other).pvalue > 1e-4
    # the spread matches Hutchinson's Rademacher variance 2 (||A||_F^2 - sum a_ii^2) / m
    var = 2 * (np.sum(spd**2) - np.sum(np.diag(spd) ** 2)) / 3
    assert 0.7 < t.var(ddof=1) / var < 1.4
    # and the two-sample test has power: the same samples shifted by half a standard deviation are told apart
    assert stats.ks_2samp(t, j + 0.5 * j.std()).pvalue < 1e-4


# ----------------------------------------------------------------------------- exact paths and operators


def _operators(spd):
    A = torch.from_numpy(spd)
    S = sp.random(N, N, density=0.3, random_state=2, format="csr") + sp.eye(N)
    return {
        "dense": (A, np.trace(spd)),
        "coo": (A.to_sparse(), np.trace(spd)),
        "csr": (A.to_sparse_csr(), np.trace(spd)),
        "numpy": (spd, np.trace(spd)),
        "scipy": (S, S.diagonal().sum()),
        "function": (TorchFunctionOperator(lambda v: A @ v, N, torch.float64), np.trace(spd)),
        "function_loop": (TorchFunctionOperator(lambda v: A @ v, N, torch.float64, vectorized=False), np.trace(spd)),
    }


@pytest.mark.parametrize("name", ["dense", "coo", "csr", "numpy", "scipy", "function", "function_loop"])
def test_exact_paths(name, spd):
    op, truth = _operators(spd)[name]
    for est in (
        st.hutchinson(gen(0), op, num_matvecs=N),
        st.hutchpp(gen(0), op, num_matvecs=N),
        st.na_hutchpp(gen(0), op, num_matvecs=N),
        st.xtrace(gen(0), op, num_matvecs=N),
    ):
        assert float(est.sem) == 0 and est.num_matvecs == N
        np.testing.assert_allclose(float(est.value), truth, rtol=1e-12)
    d = st.diagonal(gen(0), op, num_matvecs=N)
    dense = op.to_dense() if isinstance(op, torch.Tensor) else None
    if dense is not None:
        np.testing.assert_allclose(d.value.numpy(), torch.diagonal(dense).numpy(), rtol=1e-12)


def test_sparse_products_match_dense(At):
    V = torch.randn(3, N, dtype=torch.float64, generator=gen(3))
    dense = as_torch_operator(At)
    for layout in (At.to_sparse(), At.to_sparse_csr()):
        op = as_torch_operator(layout)
        torch.testing.assert_close(op.matmat(V), dense.matmat(V))
        torch.testing.assert_close(op.rmatmat(V), dense.rmatmat(V))


def test_reproducible_and_chunk_invariant(At):
    for sampler in ("rademacher", "gaussian", "sphere"):
        a = st.hutchinson(gen(5), At, num_matvecs=7, sampler=sampler)
        b = st.hutchinson(gen(5), At, num_matvecs=7, sampler=sampler, chunk_size=2)
        assert float(a.value) == float(b.value)
    assert float(st.xtrace(gen(5), At, num_matvecs=8).value) == float(st.xtrace(gen(5), At, num_matvecs=8).value)


def _whole_ops_draw(g, num, dim, dtype, sampler):
    """The probe draw as whole-tensor ops (the formulas of the torch backend's module docstring)."""
    if sampler == "rademacher":
        return torch.randint(0, 2, (num, dim), generator=g, dtype=torch.int8).to(dtype).mul_(-2).add_(1)
    u = torch.rand((num, 2, dim), generator=g, dtype=torch.float64)
    V = torch.sqrt(-2.0 * torch.log1p(-u[:, 0])) * torch.cos(2.0 * math.pi * u[:, 1])
    if sampler == "sphere":
        V = V * (math.sqrt(dim) / torch.linalg.vector_norm(V, dim=1, keepdim=True))
    return V.to(dtype)


@pytest.mark.parametrize("shape", [(64, 3000), (1000, 1000), (5, 40000), (3, 10)])
def test_inline_draw_and_quad_forms_are_bitwise_the_whole_ops(shape):
    """Probes and quadratic forms computed in row blocks (inline, no intra-op threads) equal the
    whole-tensor ops bit for bit, at two threads (where torch would split the whole ops)."""
    from sketchtrace.backends._torch import draw
    from sketchtrace.operators._torch import serial_rows, torch_block_sums

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        k, n = shape
        for sampler in ("rademacher", "gaussian", "sphere"):
            for dtype in (torch.float32, torch.float64):
                ours = draw(gen(3), k, n, dtype, sampler)
                assert torch.equal(ours, _whole_ops_draw(gen(3), k, n, dtype, sampler)), (shape, sampler, dtype)
        m = min(n, 600)
        A = torch.randn(m, m, dtype=torch.float64, generator=gen(1))
        op = as_torch_operator(A, blocks={"a": m // 3, "b": m - m // 3})
        V = torch.randn(k, m, dtype=torch.float64, generator=gen(2))
        assert torch.equal(op.quad_forms(V), torch_block_sums(V * op.matmat(V), op.blocks))
        calls = []
        serial_rows(lambda t: calls.append(t.shape[0]) or t.sum(dim=1), torch.zeros(64, 3000))
        assert len(calls) == 7 and max(calls) * 3000 < 32768  # row blocks below torch's parallel grain
    finally:
        torch.set_num_threads(threads)


def test_cholesky_or_nan_and_rank_deficient_xnystrace(spd, monkeypatch):
    """The torch namespace's Cholesky gives NaNs where torch would raise, so XNysTrace on a
    rank-deficient sketch takes the eigendecomposition fallback and agrees with NumPy's."""
    from sketchtrace.backends import _torch

    H = torch.from_numpy(spd)
    torch.testing.assert_close(_torch.xp.cholesky_or_nan(H), torch.linalg.cholesky(H))
    assert bool(torch.isnan(_torch.xp.cholesky_or_nan(-H)).all())
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((N, 3)))
    low = torch.from_numpy((q * np.array([3.0, 2.0, 1.0])) @ q.T)  # rank 3, PSD
    with monkeypatch.context() as m:  # this sketch's core matrix is singular: a raising Cholesky escapes
        m.setattr(_torch._Namespace, "cholesky_or_nan", staticmethod(torch.linalg.cholesky))
        with pytest.raises(torch.linalg.LinAlgError):
            st.xnystrace(gen(0), low, num_matvecs=N - 1)
    est = st.xnystrace(gen(0), low, num_matvecs=N - 1)
    ref = st.xnystrace(np.random.default_rng(0), low.numpy(), num_matvecs=N - 1)
    np.testing.assert_allclose(float(est.value), float(torch.trace(low)), rtol=1e-8)
    np.testing.assert_allclose(float(est.value), float(ref.value), rtol=1e-8)


def test_adaptive_trace_and_xdiag(At):
    est = st.trace(gen(0), At, rtol=0.2, max_matvecs=N)
    assert abs(float(est.value) - float(torch.trace(At))) <= 0.2 * float(torch.trace(At)) or float(est.sem) == 0
    d = st.diagonal(gen(0), as_torch_operator(At, symmetric=True), num_matvecs=8, method="xdiag")
    assert d.value.shape == (N,) and bool(torch.all(torch.isfinite(d.value)))


# ----------------------------------------------------------------------------- Jacobians


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()


def test_jacobian_operator_and_gram_blocks():
    net = _mlp()
    x = torch.linspace(-1, 1, 10, dtype=torch.float64).reshape(5, 2)

    def f(model, pts):
        out = model(pts).reshape(-1)
        return {"interior": out[:3], "boundary": 2 * out[3:]}

    J = module_jacobian(net, f, x)
    assert J.block_names == ("interior", "boundary") and J.shape == (5, sum(p.numel() for p in net.parameters()))
    params = dict(net.named_parameters())
    full = torch.autograd.functional.jacobian(
        lambda *leaves: torch.cat(
            list(f(lambda inp: torch.func.functional_call(net, dict(zip(params, leaves)), (inp,)), x).values())
        ),
        tuple(p.detach() for p in params.values()),
    )
    Jd = torch.cat([j.reshape(5, -1) for j in full], dim=1)
    V = torch.randn(4, J.shape[1], dtype=torch.float64, generator=gen(1))
    U = torch.randn(4, 5, dtype=torch.float64, generator=gen(2))
    torch.testing.assert_close(J.matmat(V), V @ Jd.T)
    torch.testing.assert_close(J.rmatmat(U), U @ Jd)
    truth = {"interior": float(Jd[:3].square().sum()), "boundary": float(Jd[3:].square().sum())}
    for side in ("input", "output"):
        K = torch_gram(J, side=side)
        ex = st.block_traces(gen(0), K, num_matvecs=K.shape[0])
        for name, t in truth.items():
            np.testing.assert_allclose(float(ex[name].value), t, rtol=1e-10)
    assert_unbiased(
        lambda s: st.block_traces(gen(s), torch_gram(J, side="input"), num_matvecs=3)["boundary"],
        truth["boundary"],
        num_trials=100,
    )


def test_jacobian_of_tensor_input():
    J = TorchJacobianOperator(lambda x: torch.sin(x) * x.sum(), torch.linspace(0, 1, 4, dtype=torch.float64))
    assert J.shape == (4, 4) and J.blocks is None


# ----------------------------------------------------------------------------- errors


def test_clear_errors(At):
    with pytest.raises(TypeError, match="complex"):
        as_torch_operator(torch.zeros(3, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="2-D"):
        as_torch_operator(torch.zeros(3, 3, 3))
    with pytest.raises(TypeError, match="FunctionOperator"):
        st.hutchinson(gen(0), lambda v: v, num_matvecs=3)
    with pytest.raises(TypeError, match="floating torch dtype"):
        TorchFunctionOperator(lambda v: v, 3, np.float64)
    bad = TorchFunctionOperator(lambda v: v[:2], 3, torch.float64)
    with pytest.raises(ValueError, match="must return shape"):
        st.hutchinson(gen(0), bad, num_matvecs=2)
    with pytest.raises(ValueError, match="sampler returned"):
        st.hutchinson(gen(0), At, num_matvecs=2, sampler=lambda g, shape, dtype: torch.zeros(1))
    nan = At.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        st.hutchinson(gen(0), nan, num_matvecs=3)
    with pytest.raises(TypeError, match="got Tensor"):  # a JAX key does not take torch tensors
        st.hutchinson(jax.random.key(0), At, num_matvecs=3)


def test_matrix_functions_on_torch(At):
    # SLQ with 12 Lanczos steps is exact to rounding for this well-conditioned 24 x 24 matrix,
    # so the estimator is unbiased for log det up to a negligible quadrature error
    truth = float(torch.logdet(At))
    assert_unbiased(lambda s: st.logdet(gen(s), At, num_matvecs=36, lanczos_steps=12), truth, num_trials=100)
    exact = st.trace_function(gen(0), At, "log", num_matvecs=N * 12, lanczos_steps=12)
    assert float(exact.sem) == 0
    np.testing.assert_allclose(float(exact.value), truth, rtol=1e-10)
