"""st.nystrom, st.nystrom_preconditioner and st.solve (Nystrom-preconditioned CG)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sketchtrace as st

N = 120


def _psd(spectrum, seed=0):
    n = len(spectrum)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (Q * spectrum) @ Q.T


SPECTRA = {
    "exponential": np.exp(-np.arange(N) / 3.0),
    "polynomial": (1.0 + np.arange(N)) ** -2.0,
}

KEYS = {"jax": lambda s: jax.random.key(s), "numba": lambda s: np.random.default_rng(s)}


def _dense(approx):
    U, lam = np.asarray(approx.U), np.asarray(approx.eigenvalues)
    return (U * lam) @ U.T


def _ratio_stats(A, spectrum, k, sketch, trials, approx_fn):
    best = np.sqrt(np.sum(spectrum[k:] ** 2))  # best rank-k Frobenius error (Eckart-Young)
    r = np.array([np.linalg.norm(A - _dense(approx_fn(t, sketch))) / best for t in range(trials)])
    return r.mean(), r.std(ddof=1) / np.sqrt(trials)


@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_error_within_twice_best_rank_k(name):
    """Sketch size s = 2k: E||A - Ahat||_F <= 2 ||A - [A]_k||_F on decaying spectra.

    Tropp et al. (2017) bound the expected error of the size-s Nystrom approximation by
    (1 + k/(s-k-1)) times the best rank-k tail; s = 2k gives about 2. Measured over 20 sketches:
    the mean ratio is ~0.6 (exponential) and ~1.5 (polynomial, sd ~0.26), so mean + 3 sem < 2.
    The same check fails for a sketch of size k/2 (shown below): it is not vacuous.
    """
    lam = SPECTRA[name]
    A = _psd(lam)
    op = st.as_operator(A, psd=True)
    k, trials = 10, 20

    def approx(t, s):
        return st.nystrom(np.random.default_rng(t), op, s, power_iterations=0)

    mean, sem = _ratio_stats(A, lam, k, 2 * k, trials, approx)
    assert mean + 3 * sem <= 2.0, (mean, sem)
    mean_bad, sem_bad = _ratio_stats(A, lam, k, k // 2, trials, approx)
    assert mean_bad - 3 * sem_bad > 2.0, (mean_bad, sem_bad)


@pytest.mark.parametrize("backend", sorted(KEYS))
def test_exact_on_low_rank_matches_eigendecomposition(backend):
    """A rank-8 PSD matrix is recovered by a rank-8 sketch: eigenvalues and eigenvectors to rounding."""
    lam = np.zeros(N)
    lam[:8] = np.linspace(5.0, 1.0, 8)
    A = _psd(lam, seed=3)
    approx = st.nystrom(KEYS[backend](1), st.as_operator(A, psd=True), 8)
    w, V = np.linalg.eigh(A)
    np.testing.assert_allclose(np.asarray(approx.eigenvalues), w[::-1][:8], rtol=1e-9, atol=1e-10)
    U = np.asarray(approx.U)
    np.testing.assert_allclose(np.abs(U.T @ V[:, ::-1][:, :8]), np.eye(8), atol=1e-8)
    np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e-12)
    assert approx.matvecs == 8 + 10
    assert float(approx.error) < 1e-9


@pytest.mark.parametrize("backend", ["numba"])
def test_error_estimate_brackets_true_spectral_error(backend):
    """The power-method estimate is a lower bound on ||A - Ahat||_2 and within 2x of it here."""
    A = _psd(SPECTRA["polynomial"])
    for seed in range(3):
        approx = st.nystrom(KEYS[backend](seed), st.as_operator(A, psd=True), 15)
        true = np.linalg.norm(A - _dense(approx), 2)
        assert true / 2 <= float(approx.error) <= true * (1 + 1e-10)


def test_same_key_same_result():
    op = st.as_operator(_psd(SPECTRA["exponential"]), psd=True)
    a = st.nystrom(np.random.default_rng(4), op, 12)
    b = st.nystrom(np.random.default_rng(4), op, 12)
    np.testing.assert_array_equal(a.U, b.U)
    np.testing.assert_array_equal(a.error, b.error)


def test_gram_of_jacobian_operator():
    """nystrom on J^T J from a JacobianOperator (matrix-free) agrees with the dense Gram matrix."""
    W = jax.random.normal(jax.random.key(0), (40, 30)) * (0.7 ** jnp.arange(30))

    def f(x):
        return jnp.tanh(W @ x)

    x = jnp.linspace(-1, 1, 30)
    G = st.gram(st.JacobianOperator(f, x), side="input")
    Jd = np.asarray(jax.jacfwd(f)(x))
    approx = st.nystrom(jax.random.key(2), G, 30)
    np.testing.assert_allclose(_dense(approx), Jd.T @ Jd, atol=1e-9)


def test_refusals_before_work():
    A = _psd(SPECTRA["exponential"])
    calls = []

    def mv(v):
        calls.append(1)
        return A @ v

    op = st.FunctionOperator(mv, (N, N), np.float64)
    key = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rank must be <= the dimension"):
        st.nystrom(key, op, N + 1)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        st.nystrom(key, op, 0)
    with pytest.raises(TypeError, match="rank"):
        st.nystrom(key, op, 2.5)
    with pytest.raises(ValueError, match="shift"):
        st.nystrom(key, op, 5, shift=-1.0)
    with pytest.raises(ValueError, match="declared psd=False"):
        st.nystrom(key, st.as_operator(A, psd=False), 5)
    assert not calls


@pytest.mark.parametrize("backend", ["numba"])
def test_indefinite_detected_from_the_sketch(backend):
    lam = SPECTRA["exponential"].copy()
    lam[1] = -0.5
    with pytest.raises(ValueError, match="not symmetric positive semidefinite"):
        st.nystrom(KEYS[backend](0), st.as_operator(_psd(lam)), 10)
    with pytest.raises(ValueError, match="not symmetric positive semidefinite"):
        st.solve(KEYS[backend](0), st.as_operator(_psd(lam)), np.ones(N), damping=1e-3, rank=10)


# ----------------------------------------------------------------------------- solve


@pytest.mark.parametrize(
    "backend, preconditioner", [("numba", "nystrom"), ("numba", None), ("jax", "nystrom"), ("jax", None)]
)
def test_solve_matches_numpy(backend, preconditioner):
    A = _psd(SPECTRA["polynomial"], seed=5)
    b = np.random.default_rng(9).standard_normal(N)
    mu = 1e-3
    x, info = st.solve(
        KEYS[backend](0), st.as_operator(A, psd=True), b, damping=mu, rank=20, preconditioner=preconditioner, rtol=1e-12
    )
    ref = np.linalg.solve(A + mu * np.eye(N), b)
    np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-8, atol=1e-9 * np.abs(ref).max())
    assert bool(info.converged)
    assert float(info.residual_norm) <= 2e-12 * np.linalg.norm(b)
    assert info.rank == (20 if preconditioner else 0)
    assert isinstance(x, jax.Array) == (backend == "jax")


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_solve_breakdown_is_not_converged(backend):
    """CG on an indefinite system breaks down (``p^T A p <= 0``): ``converged`` is False (it used to
    report True, the recursive residual set to 0), and a NaN under ``jax.jit`` is not converged."""
    C = np.diag(np.r_[np.ones(N // 2), -np.ones(N // 2)])
    C[0, 1] = C[1, 0] = 0.3
    x, info = st.solve(KEYS[backend](0), C, np.ones(N), damping=1e-3, preconditioner=None)
    assert not bool(info.converged) and float(info.residual_norm) > 1.0
    if backend == "jax":
        bad = _psd(SPECTRA["polynomial"])
        bad[2, 3] = bad[3, 2] = np.nan
        _, info = jax.jit(lambda k: st.solve(k, bad, jnp.ones(N), damping=1e-3, rank=5))(KEYS["jax"](0))
        assert not bool(info.converged)


def test_preconditioning_cuts_iterations_fivefold():
    """Spectrum exp(-i/3), mu = 1e-4: the Nystrom preconditioner (rank 40) needs <= 1/5 the iterations.

    Measured: 95 iterations without, 5 with (lambda_40 = 2e-6 < mu: the preconditioned system is
    well conditioned). With rank 10 (lambda_10 = 0.04 >> mu) it would not be.
    """
    A = _psd(SPECTRA["exponential"], seed=2)
    op = st.as_operator(A, psd=True)
    b = np.random.default_rng(0).standard_normal(N)
    kw = dict(damping=1e-4, rtol=1e-8)
    _, plain = st.solve(np.random.default_rng(0), op, b, preconditioner=None, **kw)
    _, pre = st.solve(np.random.default_rng(0), op, b, rank=40, **kw)
    assert bool(plain.converged) and bool(pre.converged)
    assert int(pre.iterations) * 5 <= int(plain.iterations), (int(pre.iterations), int(plain.iterations))


def test_auto_rank_meets_condition_bound():
    A = _psd(SPECTRA["exponential"], seed=1)
    b = np.random.default_rng(1).standard_normal(N)
    mu = 1e-4
    x, info = st.solve(np.random.default_rng(0), st.as_operator(A, psd=True), b, damping=mu, rank="auto", rtol=1e-10)
    lam_r = SPECTRA["exponential"][info.rank - 1]
    assert info.rank in (10, 20, 40, 80, N)
    assert (lam_r + float(info.error)) / mu <= 10 * 1.5  # the bound it stopped at, up to the sketch's error
    assert int(info.iterations) <= 20
    np.testing.assert_allclose(x, np.linalg.solve(A + mu * np.eye(N), b), rtol=1e-7)


def test_solve_under_jit():
    A = _psd(SPECTRA["exponential"], seed=1)
    b = jnp.asarray(np.random.default_rng(1).standard_normal(N))

    @jax.jit
    def run(key, op, b):
        return st.solve(key, op, b, damping=1e-3, rank=16, rtol=1e-10)

    x, info = run(jax.random.key(0), st.as_operator(A, psd=True), b)
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(A + 1e-3 * np.eye(N), np.asarray(b)), rtol=1e-7)
    assert bool(info.converged)
    x2, _ = run(jax.random.key(0), st.as_operator(A, psd=True), b)  # same key, same answer
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x2))


def test_solve_refusals():
    op = st.as_operator(_psd(SPECTRA["exponential"]), psd=True)
    key = np.random.default_rng(0)
    b = np.ones(N)
    with pytest.raises(ValueError, match="damping"):
        st.solve(key, op, b, damping=-1.0)
    with pytest.raises(ValueError, match="rank must be <= the dimension"):
        st.solve(key, op, b, damping=1.0, rank=N + 1)
    with pytest.raises(ValueError, match=r"b must be a vector of shape \(120,\)"):
        st.solve(key, op, np.ones(N - 1), damping=1.0)
    with pytest.raises(ValueError, match="b must be finite"):
        st.solve(key, op, np.full(N, np.nan), damping=1.0)
    with pytest.raises(ValueError, match="preconditioner"):
        st.solve(key, op, b, damping=1.0, preconditioner="jacobi")
    with pytest.raises(ValueError, match="needs a concrete damping > 0"):
        st.solve(key, op, b, rank="auto")
    with pytest.raises(ValueError, match="declared psd=False"):
        st.solve(key, st.as_operator(np.eye(N), psd=False), b, damping=1.0)


def test_torch_nystrom_and_solve_match_numpy():
    torch = pytest.importorskip("torch")
    A = _psd(SPECTRA["polynomial"], seed=5)
    b = np.random.default_rng(9).standard_normal(N)
    At = torch.as_tensor(A)
    approx = st.nystrom(torch.Generator().manual_seed(0), At, N)  # full rank: the eigendecomposition
    np.testing.assert_allclose(np.sort(approx.eigenvalues.numpy()), np.linalg.eigvalsh(A), rtol=1e-8, atol=1e-10)
    x, info = st.solve(torch.Generator().manual_seed(0), At, torch.as_tensor(b), damping=1e-3, rank=20, rtol=1e-12)
    assert isinstance(x, torch.Tensor) and bool(info.converged)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A + 1e-3 * np.eye(N), b), rtol=1e-8, atol=1e-9)
    lam = SPECTRA["exponential"].copy()
    lam[1] = -0.5
    with pytest.raises(ValueError, match="not symmetric positive semidefinite"):
        st.nystrom(torch.Generator().manual_seed(0), torch.as_tensor(_psd(lam)), 10)
