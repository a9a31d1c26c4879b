"""Hutchinson on a large sparse matrix: numba backend vs the plain SciPy path vs the JAX backend.

Problem (issue 4): a symmetric CSR matrix, n = 400,000, about 20 nonzeros per row
(random column pattern), 64 Rademacher probes. Every contender is timed in this
one run, after a warm-up call (so no compilation is timed), interleaved repeat by
repeat, and we print medians and ratios.

Contenders
- numba: ``st.hutchinson(rng, op, num_matvecs=64)`` (draws the probes, fused CSR kernel).
- scipy: ``V`` drawn with NumPy (+-1 float64, n x 64), ``C @ V``, ``einsum``.
- jax:   ``st.hutchinson`` with a JAX key on the same matrix (BCOO, converted once), eager.

Bandwidth bound: one pass over the CSR arrays (indptr, indices, data) plus one
pass over the probe block as our kernel stores it (1 bit per entry) divided by
the machine's read bandwidth, measured here with a parallel numba sum over a
512 MB array (all threads); a NumPy copy is printed for reference. We also time
our kernel's plain sparse product ``C @ V`` (float64 probes, the n x 64 result
written out) and the same product restricted to one pass.

Run: ``python benchmarks/numba_vs_scipy.py [--n 400000] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from numba import njit, prange  # noqa: E402

import sketchtrace as st  # noqa: E402
from sketchtrace.backends import _numba_kernels as K  # noqa: E402
from sketchtrace.backends._numba import NumbaBackend  # noqa: E402


def symmetric_csr(n, per_row=10, seed=0):
    """``R + R^T`` with ``per_row`` random entries per row of R: about ``2 per_row`` nonzeros per row."""
    rng = np.random.default_rng(seed)
    R = sp.coo_matrix(
        (rng.standard_normal(per_row * n), (np.repeat(np.arange(n), per_row), rng.integers(0, n, per_row * n))),
        shape=(n, n),
    )
    C = (R + R.T).tocsr()
    C.sum_duplicates()
    return C


@njit(parallel=True, nogil=True)
def _parallel_sum(x, nchunks):
    part = np.zeros(nchunks)
    size = -(-x.size // nchunks)
    for c in prange(nchunks):
        s = 0.0
        for i in range(c * size, min(x.size, (c + 1) * size)):
            s += x[i]
        part[c] = s
    return part.sum()


def scipy_path(C, k, rng):
    V = 2.0 * rng.integers(0, 2, size=(C.shape[0], k), dtype=np.int8) - 1.0
    q = np.einsum("ij,ij->j", V, C @ V)
    return q.mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--probes", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-jax", action="store_true")
    args = ap.parse_args()
    n, k = args.n, args.probes

    C = symmetric_csr(n)
    op = st.as_operator(C)
    print(
        f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (timings scale with it; ratios less so)"
    )
    print(
        f"matrix: n = {n:,}, nnz = {C.nnz:,} ({C.nnz / n:.1f} per row), indices {C.indices.dtype}, "
        f"{k} Rademacher probes, NUMBA_NUM_THREADS = {numba.get_num_threads()}"
    )

    prepared = NumbaBackend.prepare(op)
    indptr, indices, data = prepared.data
    starts, _ = prepared.row_chunks
    V64 = 2.0 * np.random.default_rng(1).integers(0, 2, size=(n, k), dtype=np.int8) - 1.0
    out = np.empty((n, k))
    words = K.draw_rademacher_words(np.random.default_rng(2), k, n)
    WT = K.rademacher_bits_T(words, n)
    partials = np.empty((starts.size - 1, k))

    jax_fn = None
    if not args.no_jax:
        import jax

        jax.config.update("jax_enable_x64", True)
        jop = st.as_operator(C)  # the matrix as a JAX BCOO, converted once (cached on the operator)
        jop.bcoo  # noqa: B018 - convert outside the timing

        def jax_fn(seed):
            # eager call (jit would embed the 8M-entry matrix as a constant and constant-fold it)
            return st.hutchinson(jax.random.key(seed), jop, num_matvecs=k).value.block_until_ready()

    contenders = {
        "numba hutchinson (ours, end to end)": lambda s: st.hutchinson(np.random.default_rng(s), op, num_matvecs=k),
        "scipy path (draw V, C @ V, einsum)": lambda s: scipy_path(C, k, np.random.default_rng(s)),
        "scipy C @ V only": lambda s: C @ V64,
        "ours: draw probe bits": lambda s: K.draw_rademacher_words(np.random.default_rng(s), k, n),
        "ours: bit transpose": lambda s: K.rademacher_bits_T(words, n),
        "ours: fused CSR quad-form kernel": lambda s: K.csr_quad_bits(indptr, indices, data, WT, starts, k, partials),
        "ours: plain product C @ V (float64 V)": lambda s: K.csr_matmat(indptr, indices, data, V64, starts, out),
    }
    if jax_fn is not None:
        contenders["jax backend hutchinson (BCOO)"] = jax_fn

    x = np.ones(64 * 1024 * 1024)  # 512 MB
    y = np.empty_like(x)
    contenders["bandwidth: parallel sum 512 MB"] = lambda s: _parallel_sum(x, 64)
    contenders["bandwidth: numpy copy 512 MB"] = lambda s: np.copyto(y, x)

    for fn in contenders.values():  # warm-up: compile everything, touch memory
        fn(0)
    times = {name: [] for name in contenders}
    for r in range(args.repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn(r + 1)
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}

    print(f"\nmedian of {args.repeats} interleaved repeats (after warm-up):")
    for name, t in med.items():
        print(f"  {name:42s} {t * 1e3:9.2f} ms")

    bw_read = x.nbytes / med["bandwidth: parallel sum 512 MB"]
    bw_copy = 2 * x.nbytes / med["bandwidth: numpy copy 512 MB"]
    csr_bytes = indptr.nbytes + indices.nbytes + data.nbytes
    probe_bits = WT.nbytes
    probe_f64 = V64.nbytes
    t_bw = (csr_bytes + probe_bits) / bw_read
    t_bw_f64 = (csr_bytes + 2 * probe_f64) / bw_read  # read V once, write C @ V once
    ours = med["numba hutchinson (ours, end to end)"]
    print(f"\nread bandwidth (parallel sum): {bw_read / 1e9:.1f} GB/s; numpy copy: {bw_copy / 1e9:.1f} GB/s")
    print(
        f"bytes of one pass: CSR {csr_bytes / 1e6:.1f} MB + probe bits {probe_bits / 1e6:.1f} MB "
        f"-> bandwidth bound {t_bw * 1e3:.2f} ms (with float64 probes and output: {t_bw_f64 * 1e3:.2f} ms)"
    )
    print("\nratios (> 1 means ours is faster):")
    print(
        f"  scipy path / ours                      {med['scipy path (draw V, C @ V, einsum)'] / ours:6.2f}x   (target >= 1.5x)"
    )
    print(f"  scipy C @ V only / ours                {med['scipy C @ V only'] / ours:6.2f}x")
    if jax_fn is not None:
        print(f"  jax backend / ours                     {med['jax backend hutchinson (BCOO)'] / ours:6.2f}x")
    print(f"  our plain product C @ V / ours         {med['ours: plain product C @ V (float64 V)'] / ours:6.2f}x")
    print(f"  ours / bandwidth bound (bits)          {ours / t_bw:6.2f}   (target <= 1.1)")
    print(f"  ours / bandwidth bound (float64 V)     {ours / t_bw_f64:6.2f}")
    print(f"  fused kernel / bandwidth bound (bits)  {med['ours: fused CSR quad-form kernel'] / t_bw:6.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    flops = 2 * C.nnz * k
    print(
        f"\narithmetic: {C.nnz:,} nonzeros x {k} probes = {flops / 1e9:.2f} Gflop per pass; "
        f"fused kernel runs at {flops / med['ours: fused CSR quad-form kernel'] / 1e9:.1f} Gflop/s"
    )


if __name__ == "__main__":
    main()
