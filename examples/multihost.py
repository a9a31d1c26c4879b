"""Trace estimation and NTK traces across several hosts with ``jax.distributed``.

Every process runs this same script with the same seed. After
``jax.distributed.initialize`` JAX sees the devices of every host as one list,
``sketchtrace.make_mesh()`` spans them all, and ``mesh=`` splits the probes
(Hutchinson, XTrace) or the collocation points (exact NTK traces) across every
device of every host; per-device partial results are combined with XLA collectives.
Each process then holds the same (replicated) result and checks it against the
single-device run it computes locally with the same key.

Run it
------
On each of N hosts (process ids 0..N-1, the coordinator is host 0)::

    python examples/multihost.py --coordinator HOST0:1234 --num-processes N --process-id I

On a cluster that ``jax.distributed.initialize()`` detects by itself (SLURM, Open MPI,
Cloud TPU)::

    python examples/multihost.py

On one machine, without a cluster:

* ``--dry-run``: a single process with ``--devices`` forced host devices (CPU) and no
  ``jax.distributed``: the same sharded program, checked against one device;
* ``--local-processes P``: really multi-process: starts P processes on this machine
  (coordinator on localhost, CPU collectives over gloo), each with ``--devices``
  host devices, and waits for them.

Exit status 0 when every process agrees with its single-device reference.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys


def parse(argv=None):
    p = argparse.ArgumentParser(description="sketchtrace across hosts with jax.distributed")
    p.add_argument("--dry-run", action="store_true", help="one process, forced host devices, no jax.distributed")
    p.add_argument("--local-processes", type=int, default=0, help="spawn this many processes on localhost")
    p.add_argument("--devices", type=int, default=None, help="host (CPU) devices per process (dry run / local)")
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (omit for auto-detection)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="the same on every process")
    p.add_argument("--n", type=int, default=200, help="matrix size")
    p.add_argument("--probes", type=int, default=30, help="probes (matvecs); padded when the mesh does not divide it")
    p.add_argument("--points", type=int, default=50, help="collocation points per NTK block")
    p.add_argument("--quick", action="store_true", help="only Hutchinson and exact NTK traces (for tests)")
    return p.parse_args(argv)


def force_cpu_devices(count):
    """Must run before jax is imported."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    flag = f"--xla_force_host_platform_device_count={count}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def spawn_local(args):
    """Start ``args.local_processes`` copies of this script with a localhost coordinator."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(args.local_processes):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--coordinator",
            f"localhost:{port}",
            "--num-processes",
            str(args.local_processes),
            "--process-id",
            str(pid),
            "--devices",
            str(args.devices or 2),
            "--seed",
            str(args.seed),
            "--n",
            str(args.n),
            "--probes",
            str(args.probes),
            "--points",
            str(args.points),
        ] + (["--quick"] if args.quick else [])
        procs.append(subprocess.Popen(cmd, env=dict(os.environ, _MULTIHOST_LOCAL="1")))
    codes = [p.wait(timeout=600) for p in procs]
    print(f"local processes exited with {codes}")
    return max(codes, key=abs)


def main(argv=None):
    args = parse(argv)
    if args.local_processes:
        return spawn_local(args)
    local_cpu = args.dry_run or os.environ.get("_MULTIHOST_LOCAL")
    if local_cpu:
        force_cpu_devices(args.devices or 4)

    import jax

    if not args.dry_run:
        if local_cpu:  # CPU collectives between processes
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import pinn_adapters as pa
    import sketchtrace as st

    me = jax.process_index()
    mesh = st.make_mesh()  # every device of every process
    print(
        f"[process {me}/{jax.process_count()}] local devices {[d.id for d in jax.local_devices()]}, "
        f"mesh of {mesh.size} devices",
        flush=True,
    )

    # the same data on every process (deterministic from the seed)
    rng = np.random.default_rng(args.seed)
    G = rng.standard_normal((args.n, args.n)) / np.sqrt(args.n)
    A = (G @ G.T).astype(np.float32)
    key = jax.random.key(args.seed)

    def u(p, x):
        return (jnp.tanh(x @ p["W1"]) @ p["W2"])[0]

    blocks = pa.ResidualBlocks(
        {
            "res": lambda p, pts: jax.vmap(lambda x: jnp.trace(jax.hessian(u, 1)(p, x)))(pts),
            "bc": lambda p, pts: jax.vmap(lambda x: u(p, x))(pts),
        }
    )
    k1, k2, k3, k4 = jax.random.split(jax.random.key(args.seed + 1), 4)
    params = {"W1": jax.random.normal(k1, (2, 16)) / 2, "W2": jax.random.normal(k2, (16, 1)) / 4}
    batch = {"res": jax.random.uniform(k3, (args.points, 2)), "bc": jax.random.uniform(k4, (args.points // 2, 2))}

    runs = {
        "hutchinson": lambda m: st.hutchinson(key, A, num_matvecs=args.probes, mesh=m),
        "hutchpp": lambda m: st.hutchpp(key, A, num_matvecs=args.probes, mesh=m),
        "ntk exact (points sharded)": lambda m: pa.ntk_traces(None, blocks, params, batch, method="exact", mesh=m),
        "ntk hutchinson (probes sharded)": lambda m: pa.ntk_traces(
            key, blocks, params, batch, method="hutchinson", num_matvecs=args.probes, side="params", mesh=m
        ),
    }
    if args.quick:
        runs = {k: v for k, v in runs.items() if k in ("hutchinson", "ntk exact (points sharded)")}
    worst = 0.0
    for name, run in runs.items():
        sharded = jax.jit(lambda: run(mesh))()
        single = run(None)  # this process, one device
        diffs = []
        for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
            a, b = np.asarray(a, float), np.asarray(b, float)  # replicated: every process can read it
            diffs.append(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)))
        rel = max(diffs)
        worst = max(worst, rel)
        values = jax.tree.map(lambda x: float(np.asarray(x)), sharded)
        if me == 0:
            shown = (
                {k: round(v.value, 4) for k, v in values.items()}
                if isinstance(values, dict)
                else round(values.value, 4)
            )
            print(f"  {name:<32} {shown}   rel. diff to one device {rel:.1e}", flush=True)
    ok = worst <= 1e-5  # float32, different summation order
    print(f"[process {me}] {'OK' if ok else 'MISMATCH'} (worst relative difference {worst:.1e})", flush=True)
    if not args.dry_run:
        jax.distributed.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
