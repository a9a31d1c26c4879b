"""numba backend specifics: operator kinds, kernels, reproducibility, optional dependency, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats
from scipy.sparse.linalg import aslinearoperator

import sketchtrace as st

numba = pytest.importorskip("numba")

from sketchtrace.backends._numba import NumbaBackend as NB  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 150


def _sparse_sym(n, seed=0, per_row=6):
    rng = np.random.default_rng(seed)
    R = sp.coo_matrix(
        (rng.standard_normal(per_row * n), (np.repeat(np.arange(n), per_row), rng.integers(0, n, per_row * n))),
        shape=(n, n),
    )
    return (R + R.T + sp.diags(rng.uniform(1, 2, n))).tocsr()


S = _sparse_sym(N)
D = S.toarray()


@numba.njit(cache=True)
def _csr_matvec(v):
    out = np.zeros(_IP.size - 1)
    for i in range(out.size):
        for jj in range(_IP[i], _IP[i + 1]):
            out[i] += _DATA[jj] * v[_IX[jj]]
    return out


_IP, _IX, _DATA = S.indptr, S.indices, S.data


@numba.njit(cache=True)
def _stencil(v):
    # matrix-free 1-D stencil: (2 + sin i) v_i - v_{i-1} - v_{i+1}; trace = sum_i (2 + sin i)
    n = v.shape[0]
    out = np.empty(n)
    for i in range(n):
        s = (2.0 + np.sin(i)) * v[i]
        if i > 0:
            s -= v[i - 1]
        if i + 1 < n:
            s -= v[i + 1]
        out[i] = s
    return out


@numba.njit(cache=True)
def _short_matvec(v):
    return v[:-1].copy()


@numba.njit(cache=True)
def _matrix_valued(v):
    return np.outer(v, v)


def _direct_quad(V, M, blocks=None):
    W = V * (V @ M.T)
    if blocks is None:
        return W.sum(axis=1, keepdims=True)
    return np.stack([W[:, a:b].sum(axis=1) for a, b in blocks], axis=1)


# ----------------------------------------------------------------------------- operator kinds


KINDS = {
    "csr": lambda: S,
    "csc": lambda: S.tocsc(),
    "coo": lambda: S.tocoo(),
    "dense": lambda: D,
    "dense-fortran": lambda: np.asfortranarray(D),
    "dense-strided": lambda: np.repeat(D, 2, axis=1)[:, ::2],
    "jax-array": lambda: jax.numpy.asarray(D),
    "scipy-linop": lambda: aslinearoperator(S),
    "numba-fn": lambda: st.FunctionOperator(_csr_matvec, N, np.float64),
    "python-fn": lambda: st.FunctionOperator(lambda v: S @ v, N, np.float64),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("sampler", ["rademacher", "gaussian"])
def test_every_operator_kind_gives_the_direct_quadratic_forms(kind, sampler):
    op = NB.prepare(KINDS[kind]())
    V = NB.probes(np.random.default_rng(5), 70, N, np.float64, sampler)
    Q = NB.quad_forms(np.random.default_rng(5), op, 70, sampler, None)  # same stream -> same probes
    np.testing.assert_allclose(Q, _direct_quad(V, D), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(NB.quad_forms_of(op, V), Q, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(NB.matmat(op, V), V @ D.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["csr", "csc", "coo", "scipy-linop", "numba-fn"])
def test_sparse_inputs_agree_bitwise(kind):
    ref = st.hutchinson(np.random.default_rng(9), S, num_matvecs=40)
    est = st.hutchinson(np.random.default_rng(9), KINDS[kind](), num_matvecs=40)
    if kind in ("csc", "coo"):  # converted once to the same CSR: the same kernel, bit for bit
        assert (est.value, est.sem) == (ref.value, ref.sem)
    else:
        np.testing.assert_allclose([est.value, est.sem], [ref.value, ref.sem], rtol=1e-10)


def test_blocks_on_every_kind():
    blocks = {"a": 40, "b": 60, "c": N - 100}
    V = NB.probes(np.random.default_rng(1), 9, N, np.float64, "rademacher")
    want = _direct_quad(V, D, [(0, 40), (40, 100), (100, N)])
    for kind in ("csr", "dense", "scipy-linop", "numba-fn", "python-fn"):
        op = NB.prepare(st.as_operator(KINDS[kind](), blocks=blocks))
        np.testing.assert_allclose(
            NB.quad_forms(np.random.default_rng(1), op, 9, "rademacher", 4), want, rtol=1e-10, atol=1e-10
        )
        exact = NB.exact_quad_forms(op, 64).sum(axis=0)
        np.testing.assert_allclose(
            exact, [np.trace(D[:40, :40]), np.trace(D[40:100, 40:100]), np.trace(D[100:, 100:])], rtol=1e-12
        )


def test_many_blocks_and_chunk_boundaries():
    # a larger matrix so several row chunks (CHUNK_ROWS rows each) fall inside one block
    n = 5000
    M = _sparse_sym(n, seed=3, per_row=3)
    blocks = {"x": 1, "y": 2047, "z": 2049, "w": n - 4097}
    op = st.as_operator(M, blocks=blocks)
    V = NB.probes(np.random.default_rng(2), 65, n, np.float64, "rademacher")
    Q = NB.quad_forms(np.random.default_rng(2), op, 65, "rademacher", None)
    MV = (M @ V.T).T
    bounds = [(0, 1), (1, 2048), (2048, 4097), (4097, n)]
    np.testing.assert_allclose(Q, np.stack([(V * MV)[:, a:b].sum(1) for a, b in bounds], 1), rtol=1e-10, atol=1e-9)


def test_matrix_free_numba_stencil():
    n = 30000  # large enough that the probes are processed by the parallel loop
    op = st.FunctionOperator(_stencil, n, np.float64)
    truth = float(np.sum(2.0 + np.sin(np.arange(n))))
    est = st.hutchinson(np.random.default_rng(0), op, num_matvecs=40)
    # Rademacher variance of one probe: 2 * (sum of squared off-diagonal entries) = 4 (n - 1)
    sd = np.sqrt(4.0 * (n - 1) / 40)
    assert abs(float(est.value) - truth) <= 5.3 * sd  # two-sided false-failure rate 1e-7
    assert float(est.sem) == pytest.approx(sd, rel=0.5)
    V = NB.probes(np.random.default_rng(1), 8, n, np.float64, "gaussian")
    L = sp.diags([-np.ones(n - 1), 2.0 + np.sin(np.arange(n)), -np.ones(n - 1)], [-1, 0, 1])
    np.testing.assert_allclose(NB.matmat(op, V), (L @ V.T).T, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("sampler", ["rademacher", "gaussian", "sphere"])
@pytest.mark.parametrize("kind", ["csr", "numba-fn"])
def test_chunk_size_does_not_change_a_bit(kind, sampler):
    op = KINDS[kind]()
    ref = st.hutchinson(np.random.default_rng(4), op, num_matvecs=100, sampler=sampler)
    for cs in (1, 7, 64, 99):
        est = st.hutchinson(np.random.default_rng(4), op, num_matvecs=100, sampler=sampler, chunk_size=cs)
        assert (est.value, est.sem) == (ref.value, ref.sem)


_THREAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, scipy.sparse as sp, numba
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    import sketchtrace as st
    from test_numba_backend import S, _sparse_sym, _stencil
    assert numba.config.NUMBA_NUM_THREADS == int(sys.argv[1]), numba.config.NUMBA_NUM_THREADS
    big = _sparse_sym(20000, seed=1, per_row=5)
    out = {{}}
    for name, op in [("small", S), ("big", big), ("stencil", st.FunctionOperator(_stencil, 30000, np.float64)),
                     ("blocks", st.as_operator(big, blocks={{"a": 7000, "b": 13000}}))]:
        for sampler in ("rademacher", "gaussian"):
            e = st.hutchinson(np.random.default_rng(123), op, num_matvecs=150, sampler=sampler)
            out[name + sampler] = [float(e.value).hex(), float(e.sem).hex()]
    per = st.block_traces(np.random.default_rng(5), st.as_operator(big, blocks={{"a": 7000, "b": 13000}}), num_matvecs=70)
    out["per"] = [float(per[b].value).hex() for b in ("a", "b")]
    print(json.dumps(out))
    """
)


def test_results_are_bitwise_identical_for_any_thread_count():
    code = _THREAD_SCRIPT.format(repo=REPO, tests=os.path.join(REPO, "tests"))
    procs = [  # both at once (they compile the same things)
        subprocess.Popen(
            [sys.executable, "-c", code, threads],
            env=dict(os.environ, NUMBA_NUM_THREADS=threads, JAX_PLATFORMS="cpu"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for threads in ("1", "2")
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]


def test_same_problem_agrees_with_the_jax_backend():
    """Welch t-test: numba and JAX estimates of the same trace have the same mean (false alarm 1e-6)."""
    trials, m = 300, 4
    nb = [float(st.hutchinson(r, S, num_matvecs=m).value) for r in np.random.default_rng(0).spawn(trials)]
    keys = jax.random.split(jax.random.key(0), trials)
    jx = np.asarray(jax.jit(jax.vmap(lambda k: st.hutchinson(k, D, num_matvecs=m).value))(keys))
    t, p = stats.ttest_ind(nb, jx, equal_var=False)
    assert p > 1e-6, f"backends disagree: t = {t:.2f}"
    # and the spreads agree (F-test, two-sided 1e-6)
    f = np.var(nb, ddof=1) / np.var(jx, ddof=1)
    lo, hi = stats.f.ppf([5e-7, 1 - 5e-7], trials - 1, trials - 1)
    assert lo <= f <= hi


def test_bits_path_matches_probe_rows():
    # the fused bit kernel and the generic kernel on unpacked probes give the same forms
    for k in (1, 63, 64, 65, 130):
        words_q = NB.quad_forms(np.random.default_rng(k), S, k, "rademacher", None)
        V = NB.probes(np.random.default_rng(k), k, N, np.float64, "rademacher")
        assert set(np.unique(V)) == {-1.0, 1.0}
        np.testing.assert_allclose(words_q, _direct_quad(V, D), rtol=1e-12, atol=1e-10)


def test_probes_are_isotropic():
    V = NB.probes(np.random.default_rng(0), 4000, 6, np.float64, "rademacher")
    # E[v v^T] = I: entries of the empirical second moment within 6 standard errors (1/sqrt(4000))
    assert np.abs(V.T @ V / 4000 - np.eye(6)).max() < 6 / np.sqrt(4000)
    G = NB.probes(np.random.default_rng(0), 10, 50, np.float32, "sphere")
    assert G.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(G, axis=1), np.sqrt(50), rtol=1e-5)


def test_split_gives_independent_reproducible_children():
    a = [g.integers(1 << 62) for g in NB.split(np.random.default_rng(3), 3)]
    b = [g.integers(1 << 62) for g in NB.split(np.random.default_rng(3), 3)]
    assert a == b and len(set(a)) == 3


# ----------------------------------------------------------------------------- dtypes and layouts


def test_float32_sparse_computes_in_float32():
    est = st.hutchinson(np.random.default_rng(0), S.astype(np.float32), num_matvecs=30)
    ref = st.hutchinson(np.random.default_rng(0), S, num_matvecs=30)
    assert np.asarray(est.value).dtype == np.float32
    np.testing.assert_allclose(est.value, ref.value, rtol=1e-4)


def test_float16_and_integer_inputs_are_upcast():
    est16 = st.hutchinson(np.random.default_rng(0), D.astype(np.float16), num_matvecs=N)
    assert np.asarray(est16.value).dtype == np.float32
    np.testing.assert_allclose(est16.value, np.trace(D.astype(np.float16).astype(np.float32)), rtol=1e-5)
    I = np.arange(16).reshape(4, 4)
    assert st.hutchinson(np.random.default_rng(0), I, num_matvecs=4).value == np.trace(I)
    assert st.hutchinson(np.random.default_rng(0), D.astype(">f8"), num_matvecs=N).value == pytest.approx(np.trace(D))


def test_int64_indices_are_accepted():
    S64 = S.copy()
    S64.indices = S64.indices.astype(np.int64)
    S64.indptr = S64.indptr.astype(np.int64)
    a = st.hutchinson(np.random.default_rng(2), S64, num_matvecs=20)
    b = st.hutchinson(np.random.default_rng(2), S, num_matvecs=20)
    assert (a.value, a.sem) == (b.value, b.sem)


# ----------------------------------------------------------------------------- bad input


def test_numba_matvec_with_wrong_output_length():
    op = st.FunctionOperator(_short_matvec, N, np.float64)
    with pytest.raises(ValueError, match=r"returned shape \(149,\).*declared shape is \(150, 150\)"):
        st.hutchinson(np.random.default_rng(0), op, num_matvecs=5)
    with pytest.raises(ValueError, match="declared shape is"):
        NB.matmat(op, np.ones((2, N)))


def test_numba_matvec_returning_a_matrix():
    op = st.FunctionOperator(_matrix_valued, N, np.float64)
    with pytest.raises(ValueError, match=r"must return a 1-D float array of shape \(150,\)"):
        st.hutchinson(np.random.default_rng(0), op, num_matvecs=5)


def test_numba_matvec_with_explicit_signatures():
    @numba.njit("float64[:](float64[:])")
    def double(v):
        return 2.0 * v

    est = st.hutchinson(np.random.default_rng(0), st.FunctionOperator(double, 10, np.float64), num_matvecs=10)
    assert float(est.value) == 20.0 and float(est.sem) == 0.0

    @numba.njit("float32[:](float32[:])")
    def f32_only(v):
        return v * np.float32(2)

    # declared float64 but compiled for float32 only: refused before any call
    with pytest.raises(TypeError, match=r"no signature accepting a probe of type array\(float64"):
        st.hutchinson(np.random.default_rng(0), st.FunctionOperator(f32_only, 10, np.float64), num_matvecs=3)


def test_python_matvec_with_wrong_output_shape():
    op = st.FunctionOperator(lambda v: np.ones(N + 1), N, np.float64)
    with pytest.raises(ValueError, match=r"returned shape \(151,\); expected \(150,\)"):
        st.hutchinson(np.random.default_rng(0), op, num_matvecs=5)


def test_scipy_linear_operator_with_wrong_output_shape():
    from scipy.sparse.linalg import LinearOperator

    L = LinearOperator((N, N), matvec=lambda v: np.ones(N), matmat=lambda X: np.ones((N + 2, X.shape[1])), dtype=float)
    with pytest.raises(ValueError, match="expected"):
        st.hutchinson(np.random.default_rng(0), L, num_matvecs=5)


def test_jax_only_operators_refused_with_a_hint():
    J = st.JacobianOperator(lambda x: jax.numpy.sin(x), jax.numpy.ones(3))
    with pytest.raises(TypeError, match="JAX-only.*jax.random key"):
        st.hutchinson(np.random.default_rng(0), st.gram(J), num_matvecs=2)


def test_legacy_random_state_and_missing_generator():
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        st.hutchinson(np.random.RandomState(0), S, num_matvecs=2)
    with pytest.raises(TypeError, match="key must be"):
        st.hutchinson(None, S, num_matvecs=2)
    with pytest.raises(TypeError, match="key must be"):
        st.hutchinson(S, S, num_matvecs=2)  # forgot the randomness, passed the matrix twice


def test_bad_probe_blocks_and_samplers():
    with pytest.raises(ValueError, match=r"V must be a \(k, 150\) block"):
        NB.matmat(S, np.ones((3, N + 1)))
    with pytest.raises(ValueError, match="sampler returned shape"):
        st.hutchinson(np.random.default_rng(0), S, num_matvecs=3, sampler=lambda rng, shape, dtype: np.ones(3))


def test_jax_samplers_are_accepted_by_name():
    a = st.hutchinson(np.random.default_rng(0), S, num_matvecs=5, sampler=st.sampler_gaussian)
    b = st.hutchinson(np.random.default_rng(0), S, num_matvecs=5, sampler="gaussian")
    assert a.value == b.value


def test_without_numba_the_error_says_how_to_install():
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["numba"] = None  # simulate numba not installed
        sys.path.insert(0, {REPO!r})
        import numpy as np, jax
        import sketchtrace as st
        A = np.eye(3)
        assert float(st.hutchinson(jax.random.key(0), A, num_matvecs=3).value) == 3.0  # JAX still works
        try:
            st.hutchinson(np.random.default_rng(0), A, num_matvecs=2)
        except ImportError as exc:
            print("MSG:", exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MSG:" in proc.stdout and "pip install 'sketchtrace[numba]'" in proc.stdout
