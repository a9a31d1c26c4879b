"""Batched Lanczos for the numba backend: fused, row-parallel vector updates.

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
