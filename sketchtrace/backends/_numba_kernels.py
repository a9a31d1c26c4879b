"""numba kernels of the CPU backend.

Everything here is thread-count independent: a parallel loop only ever writes
its own slots of an output array, over a partition of the work that is fixed in
advance (row chunks of :data:`CHUNK_ROWS` rows, or one probe per iteration), and
every reduction across slots runs serially in a fixed order
(:func:`reduce_chunks`). No ``prange`` reduction variable is used, so the
floating-point summation order, and therefore the result, is the same for any
``NUMBA_NUM_THREADS``.

Dtypes are decided in Python before a kernel is called; each kernel compiles
once per argument dtype (``cache=True`` keeps the machine code between runs,
except for the kernels that take a user's matvec, which compile once per matvec).

Rademacher probes are carried as bits: probe ``p``'s entry ``j`` is ``-1`` when bit
``p % 64`` of ``WT[j, p // 64]`` is set and ``+1`` otherwise. One row of ``WT`` is
then 8 bytes for up to 64 probes (instead of 512 bytes of float64), so the probe
block stays in cache while the sparse matrix streams through memory.
"""

from __future__ import annotations

import weakref

import numpy as np
from numba import njit, prange

#: Rows per work item of the row-parallel sparse kernels (fixed: never derived
#: from the thread count).
CHUNK_ROWS = 2048

_UINT64_MAX = np.iinfo(np.uint64).max


# ----------------------------------------------------------------------------- partitions


def row_chunks(num_rows: int, blocks) -> tuple[np.ndarray, np.ndarray]:
    """Fixed partition of ``range(num_rows)`` into chunks that never straddle a block.

    Returns ``starts`` (``C + 1`` boundaries) and ``chunk_block`` (block index of each chunk).
    """
    bounds = [(0, num_rows)] if blocks is None else [(a, b) for _, a, b in blocks]
    starts, owner = [], []
    for bi, (a, b) in enumerate(bounds):
        for s in range(a, b, CHUNK_ROWS):
            starts.append(s)
            owner.append(bi)
    starts.append(num_rows)
    return np.asarray(starts, np.int64), np.asarray(owner, np.int64)


@njit(nogil=True, cache=True)
def reduce_chunks(partials, chunk_block, num_blocks, out):
    """``out[p, b] = sum of partials[c, p] over chunks c of block b`` (serial, fixed order)."""
    C, k = partials.shape
    for p in range(k):
        for b in range(num_blocks):
            out[p, b] = 0.0
    for c in range(C):
        b = chunk_block[c]
        for p in range(k):
            out[p, b] += partials[c, p]


# ----------------------------------------------------------------------------- Rademacher bits


def draw_rademacher_words(rng: np.random.Generator, num: int, dim: int) -> np.ndarray:
    """``(num, ceil(dim / 64))`` uint64 words; probe ``p`` is row ``p`` (bit ``j % 64`` of word ``j // 64``).

    Each word is one raw 64-bit draw, consumed probe after probe, so drawing the
    probes in several chunks gives the same probes as drawing them at once.
    """
    return rng.integers(0, _UINT64_MAX, size=(num, -(-dim // 64)), dtype=np.uint64, endpoint=True)


def words_to_rows(words: np.ndarray, dim: int, dtype) -> np.ndarray:
    """Unpack probe-major words into a ``(num, dim)`` array of +-1 entries."""
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little", count=dim)
    out = np.ones(bits.shape, dtype)
    out[bits.astype(bool)] = -1
    return out


@njit(nogil=True, inline="always")
def _transpose64(A):
    """In-place transpose of a 64 x 64 bit matrix: bit ``c`` of ``A[r]`` <-> bit ``r`` of ``A[c]``."""
    j = 32
    m = np.uint64(0x00000000FFFFFFFF)
    while j != 0:
        sj = np.uint64(j)
        k = 0
        while k < 64:
            t = ((A[k] >> sj) ^ A[k + j]) & m
            A[k + j] ^= t
            A[k] ^= t << sj
            k = (k + j + 1) & ~j
        j >>= 1
        m ^= m << np.uint64(j)


# Each kernel is written once as a per-work-item function (``*_item``: one row chunk,
# one 64-row group or one probe) and driven by a parallel loop (``prange``) or, for
# small problems where starting threads costs more than the work, a serial loop.
# Both drivers run the same items with the same arithmetic, so they agree bit for bit.

_JIT = dict(nogil=True, cache=True)
_PJIT = dict(nogil=True, cache=True, parallel=True)

#: Below this many multiply-adds a kernel runs serially (thread start-up dominates).
SERIAL_WORK = 1 << 21


@njit(**_JIT)
def _bit_transpose_item(c, words, dim, WT):
    num = words.shape[0]
    A = np.empty(64, np.uint64)
    j0 = c * 64
    jmax = min(64, dim - j0)
    for g in range(WT.shape[1]):
        for r in range(64):
            p = g * 64 + r
            A[r] = words[p, c] if p < num else np.uint64(0)
        _transpose64(A)
        for b in range(jmax):
            WT[j0 + b, g] = A[b]


@njit(**_PJIT)
def _bit_transpose_par(words, dim, WT):
    for c in prange(words.shape[1]):
        _bit_transpose_item(c, words, dim, WT)


@njit(**_JIT)
def _bit_transpose_ser(words, dim, WT):
    for c in range(words.shape[1]):
        _bit_transpose_item(c, words, dim, WT)


def rademacher_bits_T(words: np.ndarray, dim: int) -> np.ndarray:
    """Probe-major bits ``words`` (num, ceil(dim/64)) -> entry-major bits ``WT`` (dim, ceil(num/64))."""
    WT = np.empty((dim, -(-words.shape[0] // 64)), np.uint64)
    run = _bit_transpose_par if dim * WT.shape[1] * 64 >= SERIAL_WORK else _bit_transpose_ser
    run(words, dim, WT)
    return WT


# ----------------------------------------------------------------------------- CSR kernels


@njit(**_JIT)
def _csr_quad_bits_item(c, indptr, indices, data, WT, starts, k, partials):
    ng = WT.shape[1]
    part = np.zeros(ng * 64, data.dtype)
    acc = np.empty(ng * 64, data.dtype)
    for i in range(starts[c], starts[c + 1]):
        acc[:] = 0.0
        for jj in range(indptr[i], indptr[i + 1]):
            a = data[jj]
            na = -a
            col = indices[jj]
            for g in range(ng):
                x = WT[col, g]
                base = g * 64
                for q in range(64):
                    acc[base + q] += na if (x >> np.uint64(q)) & np.uint64(1) else a
        for g in range(ng):
            x = WT[i, g]
            base = g * 64
            for q in range(64):
                v = acc[base + q]
                part[base + q] += -v if (x >> np.uint64(q)) & np.uint64(1) else v
    for p in range(k):
        partials[c, p] = part[p]


@njit(**_PJIT)
def _csr_quad_bits_par(indptr, indices, data, WT, starts, k, partials):
    for c in prange(starts.size - 1):
        _csr_quad_bits_item(c, indptr, indices, data, WT, starts, k, partials)


@njit(**_JIT)
def _csr_quad_bits_ser(indptr, indices, data, WT, starts, k, partials):
    for c in range(starts.size - 1):
        _csr_quad_bits_item(c, indptr, indices, data, WT, starts, k, partials)


def csr_quad_bits(indptr, indices, data, WT, starts, k, partials):
    """Fused ``v_p . (A v_p)`` per row chunk for Rademacher bit probes; ``A v`` is never stored.

    ``partials[c, p]`` receives chunk ``c``'s share of probe ``p``'s quadratic form.
    """
    run = _csr_quad_bits_par if data.size * WT.shape[1] * 64 >= SERIAL_WORK else _csr_quad_bits_ser
    run(indptr, indices, data, WT, starts, k, partials)


@njit(**_JIT)
def _csr_quad_dense_item(c, indptr, indices, data, VT, starts, partials):
    k = VT.shape[1]
    part = np.zeros(k, data.dtype)
    acc = np.empty(k, data.dtype)
    for i in range(starts[c], starts[c + 1]):
        acc[:] = 0.0
        for jj in range(indptr[i], indptr[i + 1]):
            a = data[jj]
            col = indices[jj]
            for p in range(k):
                acc[p] += a * VT[col, p]
        for p in range(k):
            part[p] += VT[i, p] * acc[p]
    for p in range(k):
        partials[c, p] = part[p]


@njit(**_PJIT)
def _csr_quad_dense_par(indptr, indices, data, VT, starts, partials):
    for c in prange(starts.size - 1):
        _csr_quad_dense_item(c, indptr, indices, data, VT, starts, partials)


@njit(**_JIT)
def _csr_quad_dense_ser(indptr, indices, data, VT, starts, partials):
    for c in range(starts.size - 1):
        _csr_quad_dense_item(c, indptr, indices, data, VT, starts, partials)


def csr_quad_dense(indptr, indices, data, VT, starts, partials):
    """Fused ``v_p . (A v_p)`` per row chunk for probes stored entry-major ``VT`` (n, k)."""
    run = _csr_quad_dense_par if data.size * VT.shape[1] >= SERIAL_WORK else _csr_quad_dense_ser
    run(indptr, indices, data, VT, starts, partials)


@njit(**_JIT)
def _csr_matmat_item(c, indptr, indices, data, VT, starts, out):
    k = VT.shape[1]
    for i in range(starts[c], starts[c + 1]):
        for p in range(k):
            out[i, p] = 0.0
        for jj in range(indptr[i], indptr[i + 1]):
            a = data[jj]
            col = indices[jj]
            for p in range(k):
                out[i, p] += a * VT[col, p]


@njit(**_PJIT)
def _csr_matmat_par(indptr, indices, data, VT, starts, out):
    for c in prange(starts.size - 1):
        _csr_matmat_item(c, indptr, indices, data, VT, starts, out)


@njit(**_JIT)
def _csr_matmat_ser(indptr, indices, data, VT, starts, out):
    for c in range(starts.size - 1):
        _csr_matmat_item(c, indptr, indices, data, VT, starts, out)


def csr_matmat(indptr, indices, data, VT, starts, out):
    """``out = A @ VT`` for entry-major probes ``VT`` (n, k); ``out`` is (m, k).

    A probe block larger than the cache (``VT.nbytes > 2 TILE_BYTES``) is multiplied by
    column tiles (:func:`csr_matmat_tiled`) when the rows' column indices are sorted: the
    same additions in the same order, so the same bits, with the random reads of ``VT``
    served from cache.
    """
    parallel = data.size * VT.shape[1] >= SERIAL_WORK
    if parallel and VT.nbytes > 2 * TILE_BYTES:
        splits = tile_splits(indptr, indices, VT.shape[0], tile_width(VT), starts)
        if splits is not None:
            _csr_matmat_tiled_par(splits, indices, data, VT, starts, out)
            return
    (_csr_matmat_par if parallel else _csr_matmat_ser)(indptr, indices, data, VT, starts, out)


# ----------------------------------------------------------------------------- column-tiled CSR product
# A random sparsity pattern makes ``A @ VT`` read a random row of ``VT`` per nonzero; once
# ``VT`` outgrows the cache every read waits on memory. The tiled product walks the
# matrix once per column tile ``[t w, (t + 1) w)`` (a ``w``-row slice of ``VT``, about
# ``TILE_BYTES``, stays in cache) and adds tile ``t``'s terms of every row onto ``out``.
# With sorted column indices, tile after tile is the row's own order: the same sums.

#: Bytes of the probe block one column tile covers (a share of a last-level cache).
TILE_BYTES = 4 << 20

_SPLITS: dict = {}  # id(indices) -> (weakref(indices), width, splits or None)


def tile_width(VT) -> int:
    """Rows of ``VT`` per column tile: ``TILE_BYTES`` of it (fixed by ``k`` and the dtype, not by threads)."""
    return max(CHUNK_ROWS, TILE_BYTES // max(1, VT.shape[1] * VT.itemsize))


@njit(**_JIT)
def _tile_splits_item(c, indptr, indices, width, starts, splits, unsorted):
    ntiles = splits.shape[0] - 1
    for i in range(starts[c], starts[c + 1]):
        jj, end = indptr[i], indptr[i + 1]
        for q in range(jj + 1, end):
            if indices[q] < indices[q - 1]:
                unsorted[c] = 1
        for t in range(ntiles):
            splits[t, i] = jj
            lim = (t + 1) * width
            while jj < end and indices[jj] < lim:
                jj += 1
        splits[ntiles, i] = end


@njit(**_PJIT)
def _tile_splits_par(indptr, indices, width, starts, splits, unsorted):
    for c in prange(starts.size - 1):
        _tile_splits_item(c, indptr, indices, width, starts, splits, unsorted)


def tile_splits(indptr, indices, num_cols, width, starts):
    """``splits[t, i]``: first entry of row ``i`` in column tile ``t`` (``(T + 1, m)``), or ``None`` when
    some row's indices are unsorted. Computed once per matrix and tile width (kept while ``indices`` lives)."""
    hit = _SPLITS.get(id(indices))
    if hit is not None and hit[0]() is indices and hit[1] == width:
        return hit[2]
    ntiles = -(-num_cols // width)
    splits = np.empty((ntiles + 1, indptr.size - 1), indptr.dtype)
    unsorted = np.zeros(starts.size - 1, np.uint8)
    _tile_splits_par(indptr, indices, width, starts, splits, unsorted)
    result = None if unsorted.any() else splits
    if len(_SPLITS) >= 8:
        _SPLITS.pop(next(iter(_SPLITS)))
    _SPLITS[id(indices)] = (weakref.ref(indices), width, result)
    return result


@njit(**_JIT)
def _csr_matmat_tile_item(c, t, splits, indices, data, VT, starts, out):
    k = VT.shape[1]
    for i in range(starts[c], starts[c + 1]):
        if t == 0:
            for p in range(k):
                out[i, p] = 0.0
        for jj in range(splits[t, i], splits[t + 1, i]):
            a = data[jj]
            col = indices[jj]
            for p in range(k):
                out[i, p] += a * VT[col, p]


@njit(**_PJIT)
def _csr_matmat_tiled_par(splits, indices, data, VT, starts, out):
    for t in range(splits.shape[0] - 1):
        for c in prange(starts.size - 1):
            _csr_matmat_tile_item(c, t, splits, indices, data, VT, starts, out)


@njit(**_JIT)
def _csr_matmat_tiled_ser(splits, indices, data, VT, starts, out):
    for t in range(splits.shape[0] - 1):
        for c in range(starts.size - 1):
            _csr_matmat_tile_item(c, t, splits, indices, data, VT, starts, out)


def csr_matmat_tiled(splits, indices, data, VT, starts, out, *, parallel=True):
    """``out = A @ VT`` tile by tile (``splits`` from :func:`tile_splits`); bitwise :func:`csr_matmat`'s."""
    (_csr_matmat_tiled_par if parallel else _csr_matmat_tiled_ser)(splits, indices, data, VT, starts, out)


# ----------------------------------------------------------------------------- user numba matvecs
# These take the user's dispatcher as an argument, so they compile once per matvec
# (and are not cached on disk).


@njit(nogil=True)
def _func_quad_item(p, fn, V, m, bounds, out, status):
    y = fn(V[p])
    if y.shape[0] != m:
        status[p] = y.shape[0]
        return
    status[p] = -1
    for b in range(bounds.size - 1):
        s = 0.0
        for i in range(bounds[b], bounds[b + 1]):
            s += V[p, i] * y[i]
        out[p, b] = s


@njit(nogil=True, parallel=True)
def _func_quad_par(fn, V, m, bounds, out, status):
    for p in prange(V.shape[0]):
        _func_quad_item(p, fn, V, m, bounds, out, status)


@njit(nogil=True)
def _func_quad_ser(fn, V, m, bounds, out, status):
    for p in range(V.shape[0]):
        _func_quad_item(p, fn, V, m, bounds, out, status)


def func_quad(fn, V, m, bounds, out, status, *, parallel):
    """Call the numba matvec ``fn`` on each probe row of ``V``; per-block quad forms into ``out``.

    ``bounds`` holds the ``B + 1`` block boundaries over the output rows. A probe
    whose output length is not ``m`` sets ``status[p]`` to that length (else -1).
    """
    (_func_quad_par if parallel else _func_quad_ser)(fn, V, m, bounds, out, status)


@njit(nogil=True)
def _func_matmat_item(p, fn, V, out, status):
    y = fn(V[p])
    m = out.shape[1]
    if y.shape[0] != m:
        status[p] = y.shape[0]
        return
    status[p] = -1
    for i in range(m):
        out[p, i] = y[i]


@njit(nogil=True, parallel=True)
def _func_matmat_par(fn, V, out, status):
    for p in prange(V.shape[0]):
        _func_matmat_item(p, fn, V, out, status)


@njit(nogil=True)
def _func_matmat_ser(fn, V, out, status):
    for p in range(V.shape[0]):
        _func_matmat_item(p, fn, V, out, status)


def func_matmat(fn, V, out, status, *, parallel):
    """``out[p] = fn(V[p])`` over the probe rows, with the output-length check of :func:`func_quad`."""
    (_func_matmat_par if parallel else _func_matmat_ser)(fn, V, out, status)
