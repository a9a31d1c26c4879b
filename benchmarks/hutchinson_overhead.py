"""Hutchinson against the bare probe matvecs it performs, and peak memory with/without chunk_size.

Run: ``python benchmarks/hutchinson_overhead.py [--n 3000] [--probes 64] [--repeats 30]``

1. Time of ``jit(hutchinson)`` on a dense n x n operator divided by the time of the bare
   product ``V @ A.T`` for a pre-drawn (probes x n) block (target: at most 1.1). Both are
   compiled first; timings are interleaved and the medians compared.
2. XLA's compiled temporary memory (``memory_analysis().temp_size_in_bytes``) of Hutchinson on
   a matrix-free operator of size 1e6 with 256 probes, with and without ``chunk_size``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import sketchtrace as st


def _timeit(fn, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def overhead(n, probes, repeats):
    A = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=jnp.float32)
    key = jax.random.key(0)
    V = jax.random.rademacher(jax.random.key(1), (probes, n), dtype=jnp.float32)
    hutch = jax.jit(lambda k, a: st.hutchinson(k, st.as_operator(a), num_matvecs=probes))
    bare = jax.jit(lambda v, a: v @ a.T)
    hutch(key, A), bare(V, A)  # compile
    th, tb = [], []
    for _ in range(repeats):  # interleaved
        th.append(_timeit(hutch, key, A))
        tb.append(_timeit(bare, V, A))
    mh, mb = statistics.median(th), statistics.median(tb)
    print(f"dense {n} x {n}, {probes} Rademacher probes, float32, jit, {repeats} interleaved repeats")
    print(f"  hutchinson (draw probes + products + reduction): median {mh * 1e3:8.3f} ms")
    print(f"  bare products V @ A.T (probes pre-drawn):        median {mb * 1e3:8.3f} ms")
    print(f"  ratio hutchinson / bare matvecs: {mh / mb:.3f}   (target <= 1.1)")
    return mh / mb


def memory(n=1_000_000, probes=256, chunk=16):
    d = jnp.linspace(1.0, 2.0, n, dtype=jnp.float32)
    op = st.FunctionOperator(lambda v: d * v + 0.5 * jnp.roll(v, 1) + 0.5 * jnp.roll(v, -1), n, jnp.float32)
    out = {}
    for cs in (None, chunk):
        f = jax.jit(lambda k: st.hutchinson(k, op, num_matvecs=probes, chunk_size=cs))
        mem = f.lower(jax.random.key(0)).compile().memory_analysis()
        out[cs] = mem.temp_size_in_bytes if mem is not None else float("nan")
    print(f"matrix-free tridiagonal operator n = {n:,}, {probes} probes, float32")
    print(f"  XLA temp memory without chunk_size: {out[None] / 2**20:10.1f} MiB")
    print(f"  XLA temp memory with chunk_size={chunk}:  {out[chunk] / 2**20:10.1f} MiB")
    print(f"  one probe block of {probes} x n floats is {probes * n * 4 / 2**20:.1f} MiB")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--probes", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    overhead(a.n, a.probes, a.repeats)
    memory()
