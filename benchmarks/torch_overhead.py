"""Torch backend: Hutchinson against the bare matvecs it performs (dense and torch.func JVP operators).

Run: ``python benchmarks/torch_overhead.py [--quick] [--repeats 21]``

For each operator, ``sketchtrace.hutchinson(torch.Generator, op, num_matvecs=k)`` (drawing
the probes, applying the operator, the per-probe quadratic forms and the reduction) is
timed against the bare products with ``k`` pre-drawn probes: ``V @ A.T`` for a dense
matrix, ``vmap(jvp)`` of an MLP's residuals for the Jacobian operator (Hutchinson on
``J^T J`` uses one JVP per probe). Calls alternate, medians are compared (target <= 1.1).
The dense case runs at torch's default thread count and at one thread, interleaved in one
loop, with Hutchinson's parts (the probe draw, the quadratic forms' row sums) timed beside it.
Also: pc NTK weights against one training step of PINA's Poisson example (``--no-pina`` skips it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.func import jvp, vmap

import sketchtrace as st
from sketchtrace.operators import as_torch_operator, module_jacobian, torch_gram


def interleaved(contenders, repeats, warmup=2, threads=None):
    """Median seconds per contender (contenders alternate every repeat, in reversed order every other one).

    ``threads``: ``{name: torch thread count}`` (``None``: the default). Contenders are grouped by
    thread count; each repeat sets each group's count (``torch.set_num_threads``) and makes one untimed
    call of the group's first contender before timing the group, so that no contender pays for the
    switch (waking or parking the intra-op threads). The default count is restored at the end.
    """
    default = torch.get_num_threads()
    threads = threads or {}
    groups = {}
    for name in contenders:
        groups.setdefault(threads.get(name) or default, []).append(name)
    times = {name: [] for name in contenders}
    try:
        for rep in range(warmup + repeats):
            for count, names in groups.items():
                torch.set_num_threads(count)
                contenders[names[0]]()  # untimed: the first call after a switch
                for name in names if rep % 2 else names[::-1]:
                    t0 = time.perf_counter()
                    contenders[name]()
                    if rep >= warmup:
                        times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(default)
    return {name: statistics.median(t) for name, t in times.items()}


def _whole_ops_hutchinson(A, k):
    """Hutchinson's arithmetic as whole-tensor torch ops (the torch backend before issue 27's fix)."""
    g = torch.Generator().manual_seed(1)
    V = torch.randint(0, 2, (k, A.shape[0]), generator=g, dtype=torch.int8).to(A.dtype).mul_(-2).add_(1)
    Q = (V * (V @ A.T)).sum(dim=-1, keepdim=True)
    return Q.mean(), Q.std() / k**0.5


def dense_case(n, k, repeats, thread_counts=(None, 1)):
    """``{threads: {contender: median s}}``: Hutchinson, the bare products and Hutchinson's parts.

    Every contender runs at every thread count (``None``: torch's default), all interleaved in one
    loop. The parts: the probe draw alone and the quadratic forms' row sums ``sum(V * W)``.
    """
    from sketchtrace.backends._torch import draw
    from sketchtrace.operators._torch import _row_quad_forms

    g = torch.Generator().manual_seed(0)
    A = torch.randn(n, n, dtype=torch.float64, generator=g)
    op = as_torch_operator(A)
    V = (1 - 2 * torch.randint(0, 2, (k, n), generator=g)).to(torch.float64)
    W = V @ A.T
    parts = {
        "bare": lambda: V @ A.T,
        "hutchinson": lambda: st.hutchinson(torch.Generator().manual_seed(1), op, num_matvecs=k),
        "probe draw": lambda: draw(torch.Generator().manual_seed(1), k, n, torch.float64, "rademacher"),
        "row sums (ours)": lambda: _row_quad_forms(V, W, None),
        "row sums (one torch op)": lambda: (V * W).sum(dim=-1, keepdim=True),
        "whole-op hutchinson": lambda: _whole_ops_hutchinson(A, k),
    }
    contenders, threads = {}, {}
    for t in thread_counts:
        for name, fn in parts.items():
            contenders[(t, name)] = fn
            threads[(t, name)] = t
    med = interleaved(contenders, repeats, threads=threads)
    default = torch.get_num_threads()
    return {t or default: {name: med[(t, name)] for name in parts} for t in thread_counts}


def jvp_case(width, points, k, repeats):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, 1),
    ).double()
    x = torch.rand(points, 2, dtype=torch.float64)
    J = module_jacobian(net, lambda model, pts: model(pts).reshape(-1), x)
    K = torch_gram(J, side="input")
    V = torch.randn(k, J.shape[1], dtype=torch.float64)
    xf = J.x_flat

    def bare():
        with torch.no_grad():
            return vmap(lambda v: jvp(J.flat_f, (xf,), (v,))[1])(V)

    med = interleaved(
        {"hutchinson": lambda: st.hutchinson(torch.Generator().manual_seed(1), K, num_matvecs=k), "bare": bare},
        repeats,
    )
    return med["hutchinson"], med["bare"], J.shape


def pina_case(repeats):
    """pc NTK weights (one refresh) and one PINA training step on the Poisson example."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from pina import Trainer
    from pina.model import FeedForward
    from pina.problem.zoo import Poisson2DSquareProblem
    from pina.solver import PhysicsInformedSingleModelSolver

    from pinn_adapters.torch.pina import NTKWeighting

    def build(weighting):
        torch.manual_seed(0)
        problem = Poisson2DSquareProblem()
        problem.discretise_domain(n=20, mode="grid", domains="D")
        problem.discretise_domain(n=20, mode="grid", domains="boundary")
        model = FeedForward(input_dimensions=2, output_dimensions=1, inner_size=20, n_layers=2)
        return PhysicsInformedSingleModelSolver(problem, model, weighting=weighting)

    def train(solver, epochs):
        trainer = Trainer(
            solver,
            max_epochs=epochs,
            accelerator="cpu",
            batch_size=None,
            train_size=1.0,
            val_size=0.0,
            test_size=0.0,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
        )
        t0 = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0

    plain = build(None)
    epochs = 2 * repeats
    t_plain = (train(plain, epochs + 1) - train(build(None), 1)) / epochs  # per step, setup cancelled out
    contenders = {}
    for name, opts in (("pc (defaults: subsample='auto')", {}), ("pc, all points", {"subsample": None})):
        w = NTKWeighting("pc", **opts)
        solver = build(w)
        train(solver, 1)  # init (exact first estimate) and one step
        losses = {n: torch.zeros(()) for n in solver.problem.conditions}
        solver.train()  # the hook refreshes only while training, once per epoch: force a refresh per call

        def refresh(w=w, losses=losses):
            w._last_epoch = None
            return w.update_weights(losses)

        contenders[name] = refresh
    med = interleaved(contenders, repeats)
    n_pts = sum(w.batch()[n].shape[0] for n in w.batch())
    return med, t_plain, n_pts


def run(quick=False, repeats=None, pina=True):
    repeats = repeats or (5 if quick else 21)
    n, k = (400, 16) if quick else (3000, 64)
    width, points = (32, 64) if quick else (256, 512)
    load0 = os.getloadavg()[0]
    dense = dense_case(n, k, repeats)
    jh, jb, shape = jvp_case(width, points, k, repeats)
    load1 = os.getloadavg()[0]
    lines = [
        f"torch {torch.__version__}, default {torch.get_num_threads()} threads, float64, {repeats} interleaved "
        f"repeats (medians), load average {load0:.1f} -> {load1:.1f}",
    ]
    rows = []
    for threads, med in dense.items():
        th, tb = med["hutchinson"], med["bare"]
        lines.append(
            f"dense {n} x {n}, {k} Rademacher probes, {threads} thread(s): hutchinson {th * 1e3:.2f} ms, bare "
            f"V @ A.T {tb * 1e3:.2f} ms, ratio {th / tb:.3f} (target <= 1.1); parts: probe draw "
            f"{med['probe draw'] * 1e3:.2f} ms, row sums {med['row sums (ours)'] * 1e3:.2f} ms (as one torch op: "
            f"{med['row sums (one torch op)'] * 1e3:.2f} ms); the same arithmetic as whole torch ops (before): "
            f"{med['whole-op hutchinson'] * 1e3:.2f} ms, ratio {med['whole-op hutchinson'] / tb:.3f}"
        )
        rows.append((f"torch Hutchinson / bare matvecs, dense, {threads} thread(s)", th / tb, "hutch_bare"))
    lines.append(
        f"torch.func JVP operator J^T J, J {shape[0]} x {shape[1]}, {k} probes: hutchinson {jh * 1e3:.2f} ms, "
        f"bare vmap(jvp) {jb * 1e3:.2f} ms, ratio {jh / jb:.3f} (target <= 1.1)"
    )
    rows.append(("torch Hutchinson / bare JVPs, torch.func Jacobian", jh / jb, "hutch_bare"))
    if not pina:
        return lines, rows
    try:
        med, ts, npts = pina_case(max(3, repeats // 3))
        for name, tp in med.items():
            lines.append(
                f"PINA Poisson ({npts} points): {name} weights (1 probe, forward differences) {tp * 1e3:.1f} "
                f"ms, training step {ts * 1e3:.1f} ms, ratio {tp / ts:.3f} (target <= 0.2)"
            )
            rows.append((f"torch {name} weights / PINA training step", tp / ts, "torch_pc_pina"))
    except ImportError as exc:
        lines.append(f"PINA case skipped: {exc}")
    return lines, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-pina", action="store_true", help="skip the PINA pc-weights case")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lines, _ = run(args.quick, args.repeats, pina=not args.no_pina)
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
