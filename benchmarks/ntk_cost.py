"""Cost of one NTK weight update relative to one training step, and memory of exact traces.

Run: ``python benchmarks/ntk_cost.py [--quick]``. Everything is measured side by side in
one run, on the wave problem of Wang et al. (``pa.problems.wave1d``), float32:

1. ``update / step``: median wall time of one jitted ``ntk_weighting(...).update`` call
   divided by the median time of one jitted training step (residuals, VJP, Adam),
   for exact traces (chunked per-point gradients), Hutchinson with k probes, and the
   predictor-corrector (forward differences reusing the step's residuals, fixed batch:
   two extra residual evaluations). Target: pc <= 0.3 steps.
2. Peak temporary memory (XLA's compiled memory analysis, no run needed) of exact
   traces with a fixed chunk size against unchunked per-point gradients (jaxpi's
   ``vmap`` of ``jacrev`` over all points: the n x p per-point Jacobian), as the number
   of collocation points grows. Target: flat for the chunked version.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pinn_adapters as pa


def median_time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile and warm up
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def wave_setup(width, n_res, n_bc):
    """The wave problem at one size: problem, key, params, nearby params, batch, Adam, compiled
    training step, unit weights and the residuals at both parameter points."""
    prob = pa.problems.wave1d(layers=(2, width, width, width, 1), n_res=n_res, n_bc=n_bc, dtype=jnp.float32)
    key = jax.random.key(0)
    params = prob.init_params(key)
    p1 = jax.tree.map(lambda a: a * 1.001, params)
    batch = prob.sample_batch(jax.random.key(1))
    opt = optax.adam(1e-3)
    step = step_and_residuals(prob, opt)
    w1 = {n: jnp.float32(1.0) for n in prob.blocks.names}
    R = prob.blocks.residuals(params, batch)
    R1 = prob.blocks.residuals(p1, batch)
    return prob, key, params, p1, batch, opt, step, w1, R, R1


def step_and_residuals(prob, opt):
    blocks = prob.blocks

    @jax.jit
    def step(params, opt_state, batch, weights):
        R, vjp = jax.vjp(lambda p: blocks.residuals(p, batch), params)
        cot = {n: weights[n] * 2.0 * R[n] / R[n].shape[0] for n in blocks.names}
        (g,) = vjp(cot)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, R

    return step


def cost_table(widths, sizes, k, repeats):
    print(f"\n## weight update cost / training step cost (median of {repeats}; k = {k} probes)\n")
    print("| width | n_res + n_bc points | params | step ms | exact | hutchinson-k | pc (fd, 1 probe) | pc (jvp) |")
    print("|---|---|---|---|---|---|---|---|")
    for width in widths:
        for n_res, n_bc in sizes:
            prob, key, params, p1, batch, opt, step, w1, R, R1 = wave_setup(width, n_res, n_bc)
            t_step = median_time(step, params, opt.init(params), batch, w1, repeats=repeats)
            row = []
            for est, kw in [("exact", dict(chunk_size=128)), ("hutchinson", dict(num_probes=k)),
                            ("pc", dict(fd="forward")), ("pc", dict(fd="jvp"))]:
                w = pa.ntk_weighting(prob.blocks, estimator=est, **kw)
                s = w.init(key, params, batch)
                upd = jax.jit(lambda key, s, a, b, bt, r, rp, w=w: w.update(key, s, a, b, bt, residuals=r,
                                                                           residuals_prev=rp))
                t = median_time(upd, key, s, params, p1, batch, R1, R, repeats=repeats)
                row.append(t / t_step)
            npar = sum(x.size for x in jax.tree.leaves(params))
            print(f"| {width} | {n_res + 4 * n_bc} | {npar} | {1e3 * t_step:.2f} | "
                  + " | ".join(f"{r:.2f}" for r in row) + " |")


def memory_table(width, points, chunk):
    print(f"\n## peak temporary memory of exact traces (width {width}, chunk_size {chunk}), MiB\n")
    print("| points (res) | chunked exact | unchunked per-point gradients (jaxpi) | n x p floats |")
    print("|---|---|---|---|")
    for n in points:
        prob = pa.problems.wave1d(layers=(2, width, width, width, 1), n_res=n, n_bc=8, dtype=jnp.float32)
        params = prob.init_params(jax.random.key(0))
        batch = prob.sample_batch(jax.random.key(1))
        blocks = prob.blocks
        exact = jax.jit(lambda p, b: pa.ntk_traces(None, blocks, p, b, method="exact", chunk_size=chunk))

        def full(p, b):  # what jaxpi does: vmap of per-point jacrev over all points at once (n x p)
            return blocks.point_grad_sq_norms(p, b, chunk_size=10**9)

        def peak(f):
            m = jax.jit(f).lower(params, batch).compile().memory_analysis()
            return (m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20

        npar = sum(x.size for x in jax.tree.leaves(params))
        print(f"| {n} | {peak(exact):.1f} | {peak(full):.1f} | {n * npar * 4 / 2**20:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--memory-only", action="store_true", help="only the memory table")
    args = ap.parse_args()
    if args.memory_only:
        memory_table(width=128, points=(256, 1024, 4096), chunk=128)
    elif args.quick:
        cost_table(widths=(32,), sizes=((100, 25),), k=4, repeats=5)
        memory_table(width=32, points=(64, 256), chunk=32)
    else:
        cost_table(widths=(64, 256), sizes=((300, 100), (1200, 400)), k=8, repeats=15)
        memory_table(width=128, points=(256, 1024, 4096), chunk=128)


if __name__ == "__main__":
    main()
