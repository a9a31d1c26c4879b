"""The numba backend's block Lanczos: every probe's recurrence in one sparse pass per step.

Checks that the block recurrence (column-tiled CSR products, fused row-parallel vector
updates) gives the per-probe Lanczos values to rounding, that the tiled product is the
plain CSR product bit for bit (sorted or unsorted indices), and that nothing depends on
the thread count.
"""

from __future__ import annotations

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
from sketchtrace.backends._numba_lanczos import lanczos_numba

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
