"""Cost of one NTK weight update relative to one training step, and memory of exact traces.

Run: ``python benchmarks/ntk_cost.py [--quick]``. Everything is measured side by side in
one run, on the wave problem of Wang et al. (``pa.problems.wave1d``), float32:

1. ``update / step``: median wall time of one jitted ``ntk_weighting(...).update`` call
   divided by the median time of one jitted training step (residuals, VJP, Adam),
   for exact traces (chunked per-point gradients), Hutchinson with k probes, and the
   predictor-corrector (forward differences reusing the step's residuals, fixed batch:
   two extra residual evaluations; with ``subsample=0.1`` on a tenth of each block's points).
   Target: pc <= 0.3 steps, subsampled pc <= 0.15 steps.
2. Peak temporary memory (XLA's compiled memory analysis, no run needed) of exact
   traces with a fixed chunk size against unchunked per-point gradients (jaxpi's
   ``vmap`` of ``jacrev`` over all points: the n x p per-point Jacobian), as the number
   of collocation points grows. Target: flat for the chunked version.
3. Exact traces of a non-pointwise 4,000-row stencil block of a 609-parameter network, in
   gradient steps: opaque block (``min(p, rows)`` whole-block products) against
   :class:`pinn_adapters.MixedBlock`. Target: <= 20 gradient steps.
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
    print(
        "| width | n_res + n_bc points | params | step ms | exact | hutchinson-k | pc (fd, 1 probe) | pc (jvp) "
        "| pc (fd, subsample=0.1) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for width in widths:
        for n_res, n_bc in sizes:
            prob, key, params, p1, batch, opt, step, w1, R, R1 = wave_setup(width, n_res, n_bc)
            t_step = median_time(step, params, opt.init(params), batch, w1, repeats=repeats)
            row = []
            for est, kw in [
                ("exact", dict(chunk_size=128)),
                ("hutchinson", dict(num_probes=k)),
                ("pc", dict(fd="forward", subsample=None)),
                ("pc", dict(fd="jvp", subsample=None)),
                ("pc", dict(fd="forward", subsample=0.1)),
            ]:
                w = pa.ntk_weighting(prob.blocks, estimator=est, **kw)
                s = w.init(key, params, batch)
                upd = jax.jit(
                    lambda key, s, a, b, bt, r, rp, w=w: w.update(key, s, a, b, bt, residuals=r, residuals_prev=rp)
                )
                t = median_time(upd, key, s, params, p1, batch, R1, R, repeats=repeats)
                row.append(t / t_step)
            npar = sum(x.size for x in jax.tree.leaves(params))
            print(
                f"| {width} | {n_res + 4 * n_bc} | {npar} | {1e3 * t_step:.2f} | "
                + " | ".join(f"{r:.2f}" for r in row)
                + " |"
            )


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


def stencil_table(n, repeats):
    """Exact traces of a non-pointwise block (a second-difference stencil over ``n`` points of a
    2-16-16-16-1 tanh network, 609 parameters), in gradient steps of the same block."""
    layers = (2, 16, 16, 16, 1)
    keys = jax.random.split(jax.random.key(0), len(layers) - 1)
    params = [
        {"W": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, layers[:-1], layers[1:])
    ]

    def features(p, x):
        h = x
        for layer in p[:-1]:
            h = jnp.tanh(h @ layer["W"] + layer["b"])
        return (h @ p[-1]["W"] + p[-1]["b"])[:, 0]

    def mix(u, x):
        return (u[2:] - 2 * u[1:-1] + u[:-2]) * (n - 1) ** 2 + jnp.sin(x[1:-1, 0])

    t = jnp.linspace(0.0, 1.0, n)
    batch = {"fd": jnp.stack([t, jnp.sin(3 * t)], axis=1)}
    opt = optax.adam(1e-3)

    @jax.jit
    def step(p, s, b):
        g = jax.grad(lambda q: jnp.mean(jnp.square(mix(features(q, b["fd"]), b["fd"]))))(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s

    t_step = median_time(step, params, opt.init(params), batch, repeats=repeats)
    print(f"\n## exact traces of a {n - 2}-row stencil block, 609 parameters (median of {repeats})\n")
    print(f"gradient step: {1e3 * t_step:.2f} ms\n")
    print("| block | exact traces ms | gradient steps |")
    print("|---|---|---|")
    for label, blocks in [
        (
            "opaque (pointwise=False): min(p, rows) whole-block JVPs",
            pa.ResidualBlocks({"fd": lambda p, x: mix(features(p, x), x)}, pointwise=False),
        ),
        (
            "MixedBlock(features, mix): per-point gradients + p JVPs of mix",
            pa.ResidualBlocks({"fd": pa.MixedBlock(features, mix)}),
        ),
    ]:
        exact = jax.jit(lambda p, b, blocks=blocks: pa.ntk_traces(None, blocks, p, b, chunk_size=64)["fd"].value)
        blocks.pointwise_modes(params, batch)  # the one-off pointwise check, outside the timing
        t = median_time(exact, params, batch, repeats=repeats)
        print(f"| {label} | {1e3 * t:.1f} | {t / t_step:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--memory-only", action="store_true", help="only the memory table")
    ap.add_argument("--stencil-only", action="store_true", help="only the non-pointwise (stencil) table")
    args = ap.parse_args()
    if args.stencil_only:
        stencil_table(n=4002, repeats=10)
    elif args.memory_only:
        memory_table(width=128, points=(256, 1024, 4096), chunk=128)
    elif args.quick:
        cost_table(widths=(32,), sizes=((100, 25),), k=4, repeats=5)
        memory_table(width=32, points=(64, 256), chunk=32)
        stencil_table(n=202, repeats=3)
    else:
        cost_table(widths=(64, 256), sizes=((300, 100), (1200, 400)), k=8, repeats=15)
        memory_table(width=128, points=(256, 1024, 4096), chunk=128)
        stencil_table(n=4002, repeats=10)


if __name__ == "__main__":
    main()
