"""Scaling of sharded probes / collocation points over 1, 2, 4, ... devices.

For each workload the script times the jitted single-device run (``mesh=None``) and
the same call with ``mesh=make_mesh(D)`` for each device count ``D``, side by side
in one process, and prints the time ratio to the unsharded run and the largest
relative difference of the results (summation order only).

Workloads
---------
* ``hutchinson``: Hutchinson on a dense ``n x n`` matrix, ``--probes`` probes
  (probes sharded).
* ``xtrace``: XTrace (sketch columns sharded, dense algebra replicated), if this
  sketchtrace has ``mesh=`` on xtrace.
* ``ntk-exact``: exact NTK block traces of an MLP PINN residual, ``--points`` points
  per block (collocation points sharded, per-device sums combined with psum).
* ``ntk-hutchinson``: sketched NTK traces on the parameter side (probes sharded).

On a CPU the script re-runs itself with
``XLA_FLAGS=--xla_force_host_platform_device_count=<max D>`` so that ``D`` host
devices exist. Those devices share the machine's cores: on a 2-core machine this
measures correctness and the overhead of sharding, NOT a speed-up. On a machine
with several GPUs it runs unchanged (``jax.devices()`` are the GPUs) and then shows
the real scaling; raise the sizes with ``--n``, ``--points`` and ``--width``.

Usage::

    python benchmarks/sharding_scaling.py                 # 1, 2, 4 devices, small sizes
    python benchmarks/sharding_scaling.py --devices 1,2,4,8 --n 8192 --probes 256 --points 8192 --width 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="1,2,4", help="comma-separated device counts (default 1,2,4)")
    p.add_argument("--n", type=int, default=2000, help="matrix size for hutchinson/xtrace")
    p.add_argument("--probes", type=int, default=64, help="probes (matvecs)")
    p.add_argument("--points", type=int, default=1024, help="collocation points per NTK block")
    p.add_argument("--width", type=int, default=32, help="MLP width (two hidden layers)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    p.add_argument("--x64", action="store_true", help="run in float64")
    return p.parse_args()


def maybe_reexec(counts):
    """Restart with enough forced host devices (the flag must be set before jax is imported).

    The flag only affects the CPU platform: on a GPU machine ``jax.devices()`` still
    lists the GPUs, so the script runs unchanged there.
    """
    if os.environ.get("_SHARDING_BENCH_CHILD"):
        return
    env = dict(os.environ, _SHARDING_BENCH_CHILD="1")
    flag = f"--xla_force_host_platform_device_count={max(counts)}"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
    sys.exit(subprocess.call([sys.executable] + sys.argv, env=env))


def timeit(fn, repeats):
    import jax

    jax.block_until_ready(fn())  # compile and warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def maxrel(a, b):
    import jax
    import numpy as np

    la = [np.asarray(x, float) for x in jax.tree.leaves(a)]
    lb = [np.asarray(x, float) for x in jax.tree.leaves(b)]
    scale = max(max(float(np.max(np.abs(y))) for y in lb), 1e-300)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(la, lb)) / scale


def main():
    args = parse()
    counts = sorted({int(c) for c in args.devices.split(",")})
    maybe_reexec(counts)

    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import inspect

    import pinn_adapters as pa
    import sketchtrace as st

    devs = jax.devices()
    counts = [c for c in counts if c <= len(devs)]
    print(
        f"platform={devs[0].platform} devices visible={len(devs)} ({devs[0].device_kind}); "
        f"device counts {counts}; jax {jax.__version__}"
    )
    if devs[0].platform == "cpu":
        print(
            f"NOTE: {len(devs)} forced host devices share {os.cpu_count()} CPU core(s): the ratios below show "
            "the overhead of sharding, not a speed-up. Run on several GPUs for real scaling."
        )

    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    G = rng.standard_normal((args.n, args.n)) / np.sqrt(args.n)
    A = jnp.asarray(G @ G.T + np.eye(args.n), jnp.float64 if args.x64 else jnp.float32)

    # a small PINN: u(x, t) = MLP, residual u_t - u_xx on "res", u on "bc"
    w = args.width
    ks = jax.random.split(jax.random.key(1), 4)
    params = {
        "W1": jax.random.normal(ks[0], (2, w)) / np.sqrt(2),
        "W2": jax.random.normal(ks[1], (w, w)) / np.sqrt(w),
        "W3": jax.random.normal(ks[2], (w, 1)) / np.sqrt(w),
    }

    def u(p, x, t):
        h = jnp.tanh(jnp.stack([x, t]) @ p["W1"])
        h = jnp.tanh(h @ p["W2"])
        return (h @ p["W3"])[0]

    def res(p, pts):
        return jax.vmap(lambda z: jax.grad(u, 2)(p, z[0], z[1]) - jax.grad(jax.grad(u, 1), 1)(p, z[0], z[1]))(pts)

    blocks = pa.ResidualBlocks({"res": res, "bc": lambda p, pts: jax.vmap(lambda z: u(p, z[0], z[1]))(pts)})
    batch = {"res": jax.random.uniform(ks[3], (args.points, 2)), "bc": jax.random.uniform(ks[0], (args.points, 2))}

    workloads = {
        "hutchinson": lambda mesh: jax.jit(lambda k, M: st.hutchinson(k, M, num_matvecs=args.probes, mesh=mesh)),
        "ntk-exact": lambda mesh: jax.jit(
            lambda k, p: pa.ntk_traces(None, blocks, p, batch, method="exact", chunk_size=64, mesh=mesh)
        ),
        "ntk-hutchinson": lambda mesh: jax.jit(
            lambda k, p: pa.ntk_traces(
                k, blocks, p, batch, method="hutchinson", num_matvecs=args.probes, side="params", mesh=mesh
            )
        ),
    }
    if "mesh" in inspect.signature(st.xtrace).parameters:
        workloads["xtrace"] = lambda mesh: jax.jit(lambda k, M: st.xtrace(k, M, num_matvecs=args.probes, mesh=mesh))
    inputs = {"hutchinson": A, "xtrace": A, "ntk-exact": params, "ntk-hutchinson": params}

    header = f"{'workload':<16}{'devices':>8}{'median s':>12}{'vs none':>10}{'max rel diff':>14}"
    print(header)
    print("-" * len(header))
    for name, make in workloads.items():
        x = inputs[name]
        f0 = make(None)
        ref = f0(key, x)
        t0 = timeit(lambda: f0(key, x), args.repeats)
        print(f"{name:<16}{'none':>8}{t0:>12.4g}{1.0:>10.2f}{0.0:>14.1e}")
        for d in counts:
            fd = make(st.make_mesh(d))
            diff = maxrel(fd(key, x), ref)
            td = timeit(lambda: fd(key, x), args.repeats)
            print(f"{name:<16}{d:>8}{td:>12.4g}{td / t0:>10.2f}{diff:>14.1e}")


if __name__ == "__main__":
    main()
