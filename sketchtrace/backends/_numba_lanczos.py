"""Batched Lanczos for the numba backend: fused, row-parallel vector updates.

A square CSR operator (the backend's own product, no basis kept) takes
:func:`lanczos_csr`, the fused recurrence described further down: one pass over the
matrix and one over the vectors per step. Every other operator takes
:func:`lanczos_numba`, below.

The ``k`` Lanczos vectors are kept entry-major, ``(n, k)`` C-ordered (the layout the
CSR kernels read and write), and handed to the backend's ``matmat`` as the
transposed ``(k, n)`` view, so no probe block is copied between steps. Each step
after the product makes two passes over the vectors:

1. ``alpha_j = q_j . w`` (row-chunk partial sums);
2. ``w -= alpha_j q_j + beta_{j-1} q_{j-1}`` in place, with the partial sums of ``|w|^2``,

then scales ``w`` into the next vector. As in :mod:`._numba_kernels`, the row chunks
are fixed (``CHUNK_ROWS`` rows) and partial sums are reduced serially, so results do
not depend on the thread count. Small blocks (``n k < SERIAL_WORK / 4``), full
reorthogonalisation and kept bases use the generic NumPy driver
(:func:`sketchtrace.backends._krylov.lanczos_numpy`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _numba_kernels as K
from ._krylov import breakdown_tol, lanczos_numpy
from ._numba_kernels import CHUNK_ROWS, SERIAL_WORK


def _dot_partials(Q, W, out):
    n, k = Q.shape
    for c in prange(out.shape[0]):
        for p in range(k):
            out[c, p] = 0.0
        for i in range(c * CHUNK_ROWS, min(n, (c + 1) * CHUNK_ROWS)):
            for p in range(k):
                out[c, p] += Q[i, p] * W[i, p]


def _three_term(W, Q, Qp, alpha, beta, out):
    """``W -= alpha Q + beta Qp`` in place; ``out[c, p]`` partial sums of ``W[:, p]^2``."""
    n, k = Q.shape
    for c in prange(out.shape[0]):
        for p in range(k):
            out[c, p] = 0.0
        for i in range(c * CHUNK_ROWS, min(n, (c + 1) * CHUNK_ROWS)):
            for p in range(k):
                w = W[i, p] - alpha[p] * Q[i, p] - beta[p] * Qp[i, p]
                W[i, p] = w
                out[c, p] += w * w


def _scale(W, inv):
    n, k = W.shape
    for c in prange((n + CHUNK_ROWS - 1) // CHUNK_ROWS):
        for i in range(c * CHUNK_ROWS, min(n, (c + 1) * CHUNK_ROWS)):
            for p in range(k):
                W[i, p] *= inv[p]


_PJIT = njit(nogil=True, cache=True, parallel=True)
_dot_partials, _three_term, _scale = _PJIT(_dot_partials), _PJIT(_three_term), _PJIT(_scale)


def lanczos_numba(matmat, Z, num_steps, *, reorthogonalize=False, keep_basis=False):
    """Same contract as :func:`sketchtrace.backends._krylov.lanczos_numpy` (numba-parallel updates)."""
    k, n = Z.shape
    if reorthogonalize or keep_basis or n * k < SERIAL_WORK // 4:  # small blocks: NumPy beats waking threads
        return lanczos_numpy(matmat, Z, num_steps, reorthogonalize=reorthogonalize, keep_basis=keep_basis)
    dt = Z.dtype
    QT = np.ascontiguousarray(Z.T)  # (n, k) entry-major
    norms = np.sqrt(np.einsum("ip,ip->p", QT, QT))
    _scale(QT, np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(dt))
    QpT = np.zeros_like(QT)
    partials = np.empty(((n + CHUNK_ROWS - 1) // CHUNK_ROWS, k), dt)
    alpha, beta = np.zeros((k, num_steps), dt), np.zeros((k, num_steps), dt)
    b_prev = np.zeros(k, dt)
    tol = breakdown_tol(dt, n)
    for j in range(num_steps):
        WT = np.ascontiguousarray(np.asarray(matmat(QT.T), dtype=dt).T)  # a view for CSR products: no copy
        _dot_partials(QT, WT, partials)
        a = partials.sum(axis=0)
        _three_term(WT, QT, QpT, a, b_prev, partials)
        b = np.sqrt(partials.sum(axis=0))
        alive = b > tol * (np.abs(a) + b_prev + b)
        b = np.where(alive, b, 0.0).astype(dt)
        _scale(WT, np.where(alive, 1.0 / np.where(alive, b, 1.0), 0.0).astype(dt))
        alpha[:, j], beta[:, j] = a, b
        QpT, QT, b_prev = QT, WT, b
    return alpha, beta, None, norms


# ----------------------------------------------------------------------------- fused CSR recurrence
# For a CSR operator the whole step runs in two parallel passes over fixed row bands,
# with no allocation and no separate dot, update or scaling pass:
#
# 1. product: ``W = A R_j``, column tile after column tile (every band's terms of one tile,
#    then the next tile), so the random reads of ``R_j`` come from a cache-sized slice; with
#    the last tile, per row while it is in cache, ``W *= s_j`` (``A q_j`` with ``q_j = s_j R_j``)
#    and the partial sums of ``alpha_j = q_j . W``;
# 2. update: ``W -= alpha_j q_j + beta_{j-1} q_{j-1}`` with the partial sums of ``|W|^2``.
#
# The vectors are kept unscaled (``R_j``, with ``q_j = s_j R_j``, ``s_j = 1 / beta_{j-1}``),
# so normalising costs no pass over them. Bands are fixed (``BAND_ROWS``), each writes its
# own rows and its own partial sums, and the partials are reduced serially: the results do
# not depend on the thread count. With sorted column indices each row's sum runs in the
# row's own order (tile after tile), as in the plain product.

#: Rows per work item (band) of the fused recurrence (fixed, not from the threads).
BAND_ROWS = 4 * CHUNK_ROWS


def _product_item(b, t, splits, indices, data, R, s, W, apart):
    """Band ``b``'s terms of column tile ``t``; after the last tile the scaling and the ``alpha`` partials."""
    n, k = R.shape
    r0, r1 = b * BAND_ROWS, min(n, (b + 1) * BAND_ROWS)
    last = t == splits.shape[0] - 2
    acc = np.zeros(k, W.dtype)
    row = np.empty(k, W.dtype)  # the row's sums, local (no aliasing with R: kept in registers)
    for i in range(r0, r1):
        for p in range(k):
            row[p] = 0.0 if t == 0 else W[i, p]
        for jj in range(splits[t, i], splits[t + 1, i]):
            a = data[jj]
            col = indices[jj]
            for p in range(k):
                row[p] += a * R[col, p]
        if last:
            for p in range(k):
                w = row[p] * s[p]
                W[i, p] = w
                acc[p] += (s[p] * R[i, p]) * w
        else:
            for p in range(k):
                W[i, p] = row[p]
    if last:
        for p in range(k):
            apart[b, p] = acc[p]


def _update_item(b, W, R, s, Rp, sp, alpha, beta_prev, bpart):
    n, k = R.shape
    acc = np.zeros(k, W.dtype)
    for i in range(b * BAND_ROWS, min(n, (b + 1) * BAND_ROWS)):
        for p in range(k):
            w = W[i, p] - alpha[p] * (s[p] * R[i, p]) - beta_prev[p] * (sp[p] * Rp[i, p])
            W[i, p] = w
            acc[p] += w * w
    for p in range(k):
        bpart[b, p] = acc[p]


def _product_par(splits, indices, data, R, s, W, apart):
    for t in range(splits.shape[0] - 1):
        for b in prange(apart.shape[0]):
            _product_item(b, t, splits, indices, data, R, s, W, apart)


def _product_ser(splits, indices, data, R, s, W, apart):
    for t in range(splits.shape[0] - 1):
        for b in range(apart.shape[0]):
            _product_item(b, t, splits, indices, data, R, s, W, apart)


def _update_par(W, R, s, Rp, sp, alpha, beta_prev, bpart):
    for b in prange(bpart.shape[0]):
        _update_item(b, W, R, s, Rp, sp, alpha, beta_prev, bpart)


def _update_ser(W, R, s, Rp, sp, alpha, beta_prev, bpart):
    for b in range(bpart.shape[0]):
        _update_item(b, W, R, s, Rp, sp, alpha, beta_prev, bpart)


_SJIT = njit(nogil=True, cache=True)
_product_item, _update_item = _SJIT(_product_item), _SJIT(_update_item)
_product_par, _update_par = _PJIT(_product_par), _PJIT(_update_par)
_product_ser, _update_ser = _SJIT(_product_ser), _SJIT(_update_ser)


def csr_tiles(indptr, indices, num_cols, k, itemsize):
    """``splits`` (``(T + 1, m)``, see :func:`._numba_kernels.tile_splits`) for ``k`` probes: column tiles
    of about ``TILE_BYTES`` of the probe block when the indices are sorted, else one tile (the rows)."""
    m = indptr.size - 1
    width = max(CHUNK_ROWS, K.TILE_BYTES // max(1, k * itemsize))
    splits = None
    if num_cols > width:
        splits = K.tile_splits(indptr, indices, num_cols, width, K.row_chunks(m, None)[0])
    return np.stack([indptr[:-1], indptr[1:]]) if splits is None else splits


def lanczos_csr(indptr, indices, data, Z, num_steps):
    """Lanczos on a square CSR matrix, all probes in one fused pass per step: ``(alpha, beta, None, norms)``.

    Same contract as :func:`sketchtrace.backends._krylov.lanczos_numpy` without a basis; the
    values agree with it to rounding (the products are scaled after the sum, see above).
    """
    k, n = Z.shape
    dt = Z.dtype
    splits = csr_tiles(indptr, indices, n, k, dt.itemsize)
    nb = -(-n // BAND_ROWS)
    parallel = data.size * k >= SERIAL_WORK
    product, update = (_product_par, _update_par) if parallel else (_product_ser, _update_ser)
    R, Rp, W = np.ascontiguousarray(Z.T), np.zeros((n, k), dt), np.empty((n, k), dt)
    norms = np.sqrt(np.einsum("ip,ip->p", R, R))
    s, sp = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(dt), np.zeros(k, dt)
    apart, bpart = np.empty((nb, k), dt), np.empty((nb, k), dt)
    alpha, beta = np.zeros((k, num_steps), dt), np.zeros((k, num_steps), dt)
    b_prev = np.zeros(k, dt)
    tol = breakdown_tol(dt, n)
    for j in range(num_steps):
        product(splits, indices, data, R, s, W, apart)
        a = apart.sum(axis=0)
        update(W, R, s, Rp, sp, a, b_prev, bpart)
        b = np.sqrt(bpart.sum(axis=0))
        alive = b > tol * (np.abs(a) + b_prev + b)
        b = np.where(alive, b, 0.0).astype(dt)
        alpha[:, j], beta[:, j] = a, b
        Rp, R, W = R, W, Rp
        sp, s, b_prev = s, np.where(alive, 1.0 / np.where(alive, b, 1.0), 0.0).astype(dt), b
    return alpha, beta, None, norms
