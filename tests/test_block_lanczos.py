"""The numba backend's block Lanczos: every probe's recurrence in one sparse pass per step.

Checks that the block recurrence (column-tiled CSR products, fused row-parallel vector
updates) gives the per-probe Lanczos values to rounding, that the tiled product is the
plain CSR product bit for bit (sorted or unsorted indices), and that nothing depends on
the thread count.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
import scipy.sparse as sp

import sketchtrace as st
from sketchtrace.backends import _numba_kernels as K
from sketchtrace.backends._krylov import lanczos_numpy
from sketchtrace.backends._numba import NumbaBackend
from sketchtrace.backends._numba_lanczos import lanczos_csr, lanczos_numba

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spd(n, per_row=6, seed=0):
    rng = np.random.default_rng(seed)
    R = sp.coo_matrix(
        (rng.standard_normal(per_row * n), (np.repeat(np.arange(n), per_row), rng.integers(0, n, per_row * n))),
        shape=(n, n),
    )
    C = (R + R.T).tocsr()
    C.sum_duplicates()
    return (C + sp.diags(np.asarray(abs(C).sum(axis=1)).ravel() + 1.0)).tocsr()


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 2,048 columns, so a test-sized probe block takes the tiled path."""
    monkeypatch.setattr(K, "TILE_BYTES", 1 << 14)


C = _spd(20_000)  # nnz ~ 260,000: with 10 probes the products run in parallel (>= SERIAL_WORK)


def _plain(M, VT):
    indptr, indices, data = M.indptr, M.indices, M.data
    out = np.empty((M.shape[0], VT.shape[1]))
    K._csr_matmat_ser(indptr, indices, data, VT, K.row_chunks(M.shape[0], None)[0], out)
    return out


def test_tiled_product_is_the_plain_product_bit_for_bit(small_tiles):
    VT = np.random.default_rng(1).standard_normal((C.shape[0], 10))
    starts = K.row_chunks(C.shape[0], None)[0]
    splits = K.tile_splits(C.indptr, C.indices, C.shape[1], K.tile_width(VT), starts)
    assert splits is not None and splits.shape[0] - 1 == -(-C.shape[1] // K.tile_width(VT)) > 2
    out = np.empty_like(VT)
    for parallel in (True, False):
        K.csr_matmat_tiled(splits, C.indices, C.data, VT, starts, out, parallel=parallel)
        assert np.array_equal(out, _plain(C, VT))
    K.csr_matmat(C.indptr, C.indices, C.data, VT, starts, out)  # the dispatcher picks the tiled path here
    assert np.array_equal(out, _plain(C, VT))
    np.testing.assert_allclose(out, C @ VT, rtol=1e-12, atol=1e-12)


def test_unsorted_indices_fall_back_to_the_plain_product(small_tiles):
    U = C.copy()
    for i in range(0, U.shape[0], 3):  # reverse some rows' entries: still a valid CSR matrix
        a, b = U.indptr[i], U.indptr[i + 1]
        U.indices[a:b], U.data[a:b] = U.indices[a:b][::-1].copy(), U.data[a:b][::-1].copy()
    VT = np.random.default_rng(2).standard_normal((U.shape[0], 10))
    starts = K.row_chunks(U.shape[0], None)[0]
    assert K.tile_splits(U.indptr, U.indices, U.shape[1], K.tile_width(VT), starts) is None
    out = np.empty_like(VT)
    K.csr_matmat(U.indptr, U.indices, U.data, VT, starts, out)
    assert np.array_equal(out, _plain(U, VT))


@pytest.mark.parametrize("tiled", [True, False])
def test_block_lanczos_matches_per_probe_lanczos(tiled, monkeypatch):
    if tiled:
        monkeypatch.setattr(K, "TILE_BYTES", 1 << 14)
    Z = 1.0 - 2.0 * np.random.default_rng(3).integers(0, 2, (10, C.shape[0])).astype(np.float64)
    op = st.as_operator(C)
    matmat = lambda V: NumbaBackend.matmat(op, V)  # noqa: E731
    alpha, beta, basis, norms = lanczos_numba(matmat, Z, 12)
    assert basis is None
    for p in range(Z.shape[0]):  # one probe at a time: SciPy products, NumPy updates
        a1, b1, _, n1 = lanczos_numpy(lambda V: (C @ V.T).T, Z[p : p + 1], 12)
        np.testing.assert_allclose(alpha[p], a1[0], rtol=1e-10)
        np.testing.assert_allclose(beta[p], b1[0], rtol=1e-8)
        np.testing.assert_allclose(norms[p], n1[0], rtol=1e-14)


def _fused(M, Z, steps):
    """``NumbaBackend.lanczos`` as the estimators call it: the fused CSR recurrence."""
    return NumbaBackend.lanczos(
        functools.partial(NumbaBackend.matmat, NumbaBackend.prepare(st.as_operator(M))), Z, steps
    )


@pytest.mark.parametrize("tiled", [True, False])
def test_fused_csr_lanczos_matches_per_probe_lanczos(tiled, monkeypatch):
    if tiled:
        monkeypatch.setattr(K, "TILE_BYTES", 1 << 14)
    Z = 1.0 - 2.0 * np.random.default_rng(4).integers(0, 2, (10, C.shape[0])).astype(np.float64)
    Z[6] = 0.0  # a zero probe stays zero (norm 0, coefficients 0)
    splits = K.tile_splits(C.indptr, C.indices, C.shape[1], K.tile_width(Z.T), K.row_chunks(C.shape[0], None)[0])
    assert (splits.shape[0] > 2) == tiled
    alpha, beta, basis, norms = _fused(C, Z, 12)
    assert basis is None and not alpha[6].any() and not beta[6].any() and norms[6] == 0
    for p in range(Z.shape[0]):  # one probe at a time: SciPy products, NumPy updates
        a1, b1, _, n1 = lanczos_numpy(lambda V: (C @ V.T).T, Z[p : p + 1], 12)
        np.testing.assert_allclose(alpha[p], a1[0], rtol=1e-10)
        np.testing.assert_allclose(beta[p], b1[0], rtol=1e-8)
        np.testing.assert_allclose(norms[p], n1[0], rtol=1e-14)


def test_fused_csr_lanczos_breakdown_matches_the_numpy_driver():
    """Four distinct eigenvalues: every run breaks down after 4 steps and stays at zero, as in NumPy's."""
    n = 30_000
    D = sp.diags(np.tile([1.0, 2.0, 3.0, 5.0], n // 4 + 1)[:n]).tocsr()
    Z = 1.0 - 2.0 * np.random.default_rng(5).integers(0, 2, (8, n)).astype(np.float64)
    alpha, beta, _, norms = _fused(D, Z, 7)
    a1, b1, _, n1 = lanczos_numpy(lambda V: (D @ V.T).T, Z, 7)
    np.testing.assert_allclose(alpha, a1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(beta, b1, rtol=1e-10, atol=1e-12)
    assert not beta[:, 3:].any() and not alpha[:, 4:].any()


def test_fused_csr_lanczos_is_identical_at_one_and_two_threads(small_tiles):
    Z = 1.0 - 2.0 * np.random.default_rng(6).integers(0, 2, (10, C.shape[0])).astype(np.float64)
    before = numba.get_num_threads()
    try:
        outs = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            outs.append(_fused(C, Z, 10)[:2])
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(x, y) for x, y in zip(*outs))


def test_logdet_takes_the_fused_path_and_matches_the_block_products():
    """st.logdet on a CSR operator runs ``lanczos_csr``; its value is the generic block Lanczos's to rounding."""
    op = st.as_operator(C)
    kw = dict(num_matvecs=100, lanczos_steps=10, allow_exact=False)
    fused = st.logdet(np.random.default_rng(7), op, **kw).value
    Z = NumbaBackend.probes(np.random.default_rng(7), 10, C.shape[0], np.float64)
    a, b, _, _ = lanczos_numba(lambda V: NumbaBackend.matmat(op, V), Z, 10)
    a2, b2, _, _ = lanczos_csr(C.indptr, C.indices, C.data, Z, 10)
    np.testing.assert_allclose(a2, a, rtol=1e-12)
    np.testing.assert_allclose(b2, b, rtol=1e-10)
    dense = st.logdet(
        np.random.default_rng(7),
        st.FunctionOperator(lambda v: C @ v, shape=C.shape[0], dtype=np.float64, symmetric=True),
        **kw,
    ).value
    np.testing.assert_allclose(fused, dense, rtol=1e-11)


def test_one_pass_reorthogonalisation_keeps_the_basis_orthonormal():
    """Full reorthogonalisation (three-term recurrence, then one blocked Gram-Schmidt pass) keeps
    ``Q Q^T = I`` to rounding on an ill-conditioned spectrum where plain Lanczos loses it."""
    n, steps = 120, 60
    Q, _ = np.linalg.qr(np.random.default_rng(8).standard_normal((n, n)))
    A = (Q * np.geomspace(1e-4, 1.0, n)) @ Q.T
    Z = np.random.default_rng(9).standard_normal((3, n))
    for reorth, bound in ((True, 1e-12), (False, None)):
        basis = lanczos_numpy(lambda V: V @ A, Z, steps, reorthogonalize=reorth, keep_basis=True)[2]
        loss = max(np.abs(B @ B.T - np.eye(steps)).max() for B in basis)
        if reorth:
            assert loss < bound
        else:
            assert loss > 1e-3  # the check above can fail: without reorthogonalisation it does


def test_block_lanczos_differs_from_a_perturbed_recurrence():
    """The comparison above can fail: one flipped probe sign changes that probe's coefficients."""
    Z = 1.0 - 2.0 * np.random.default_rng(3).integers(0, 2, (10, C.shape[0])).astype(np.float64)
    op = st.as_operator(C)
    alpha = lanczos_numba(lambda V: NumbaBackend.matmat(op, V), Z, 6)[0]
    Z[4, :100] *= -1
    a1 = lanczos_numpy(lambda V: (C @ V.T).T, Z[4:5], 6)[0]
    assert not np.allclose(alpha[4], a1[0], rtol=1e-10)


def test_logdet_is_identical_at_one_and_two_threads_in_process(small_tiles):
    op = st.as_operator(C)
    kw = dict(num_matvecs=120, lanczos_steps=12, allow_exact=False)
    before = numba.get_num_threads()
    try:
        values = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            values.append(float(st.logdet(np.random.default_rng(9), op, **kw).value).hex())
    finally:
        numba.set_num_threads(before)
    assert values[0] == values[1]


_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    import sketchtrace as st
    from sketchtrace.backends import _numba_kernels as K
    import test_block_lanczos as T
    K.TILE_BYTES = 1 << 14
    op = st.as_operator(T.C)
    e = st.logdet(np.random.default_rng(9), op, num_matvecs=120, lanczos_steps=12, allow_exact=False)
    print(float(e.value).hex(), float(e.sem).hex())
    """
)


def test_logdet_is_identical_for_any_numba_num_threads():
    code = _SCRIPT.format(repo=REPO, tests=os.path.join(REPO, "tests"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=dict(os.environ, NUMBA_NUM_THREADS=t, JAX_PLATFORMS="cpu"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t in ("1", "2")
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out.strip().splitlines()[-1])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("reorth", [False, True])
def test_jax_lanczos_on_columns_matches_the_numpy_driver(reorth):
    """The JAX driver carries (n, k) columns; its coefficients and basis are the row driver's to rounding."""
    jax = pytest.importorskip("jax")
    from sketchtrace.backends._krylov import lanczos_jax

    jax.config.update("jax_enable_x64", True)
    n, steps = 90, 30 if reorth else 8  # without reorthogonalisation rounding grows chaotically over many steps
    Q, _ = np.linalg.qr(np.random.default_rng(10).standard_normal((n, n)))
    A = (Q * np.geomspace(1e-3, 1.0, n)) @ Q.T
    Z = np.random.default_rng(11).standard_normal((4, n))
    Z[2] = 0.0
    want = lanczos_numpy(lambda V: V @ A, Z, steps, reorthogonalize=reorth, keep_basis=True)
    got = jax.jit(lambda Z: lanczos_jax(lambda V: V @ A, Z, steps, reorthogonalize=reorth, keep_basis=True))(Z)
    scale = np.abs(want[0]).max()
    for w, g in zip(want, got):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-7, atol=1e-9 * scale)
