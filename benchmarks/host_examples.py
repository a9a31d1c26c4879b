"""The PyTorch hosts' own examples with and without loss weighting (docs/adapters.md's tables).

DeepXDE: ``examples/pinn_forward/Burgers.py`` (PyTorch backend; 2,540 domain, 80 boundary, 160
initial points; [2, 20, 20, 20, 1] tanh; Adam 1e-3), error against the Cole-Hopf solution.
PINA: tutorial 2's Poisson problem (``Poisson2DSquareProblem``; 25 x 25 grid, boundary 25 per
side; ``FeedForward`` [10, 10] Softplus; Adam; train 80 %, test 20 %), error against its exact
solution. Cost: each refresh's wall time against the training steps of the same run (interleaved
in one process, medians), so the ratio survives a loaded machine.

    nice -n 15 python benchmarks/host_examples.py deepxde --iterations 2000 --arms none,pc,exact,gradnorm
    nice -n 15 python benchmarks/host_examples.py pina --epochs 1000 --arms none,pina_ntk,pc,exact25,gradnorm

Writes one JSON line per arm to stdout (and ``--out FILE``, appended).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

NU = 0.01 / np.pi


def cole_hopf(t, x, nodes=120):
    """Burgers' u_t + u u_x = nu u_xx, u(0, x) = -sin(pi x), by Gauss-Hermite quadrature of Cole-Hopf."""
    z, wz = np.polynomial.hermite.hermgauss(nodes)
    t = np.maximum(np.asarray(t, float), 1e-12)[..., None]
    x = np.asarray(x, float)[..., None]
    eta = np.sqrt(4 * NU * t) * z
    phase = -np.cos(np.pi * (x - eta)) / (2 * np.pi * NU)
    f = np.exp(phase - phase.max(axis=-1, keepdims=True)) * wz
    return -np.sum(np.sin(np.pi * (x - eta)) * f, -1) / np.sum(f, -1)


def _timed_callback(base_cls, times):
    class Timed(base_cls):
        def on_batch_begin(self):
            t0 = time.perf_counter()
            n = len(self.history)
            super().on_batch_begin()
            if len(self.history) > n:
                times.append(time.perf_counter() - t0)

    return Timed


def deepxde_run(arm, iterations, seed=0, period=None):
    os.environ["DDE_BACKEND"] = "pytorch"
    import deepxde as dde
    import torch

    from pinn_adapters.torch.deepxde import NTKWeights

    dde.config.set_random_seed(seed)
    geomtime = dde.geometry.GeometryXTime(dde.geometry.Interval(-1, 1), dde.geometry.TimeDomain(0, 0.99))

    def pde(x, y):
        dy_x = dde.grad.jacobian(y, x, i=0, j=0)
        dy_t = dde.grad.jacobian(y, x, i=0, j=1)
        dy_xx = dde.grad.hessian(y, x, i=0, j=0)
        return dy_t + y * dy_x - NU * dy_xx

    bc = dde.icbc.DirichletBC(geomtime, lambda x: 0, lambda _, on_boundary: on_boundary)
    ic = dde.icbc.IC(geomtime, lambda x: -np.sin(np.pi * x[:, 0:1]), lambda _, on_initial: on_initial)
    data = dde.data.TimePDE(geomtime, pde, [bc, ic], num_domain=2540, num_boundary=80, num_initial=160)
    net = dde.nn.FNN([2] + [20] * 3 + [1], "tanh", "Glorot normal")
    model = dde.Model(data, net)
    model.compile("adam", lr=1e-3)
    refresh, cbs = [], []
    if arm != "none":
        est, default = {"pc": ("pc", None), "exact": ("exact", 100), "gradnorm": ("gradnorm", None)}[arm]
        cbs = [_timed_callback(NTKWeights, refresh)(est, period=period or default, seed=seed)]
    step_times = []

    class StepTimer(dde.callbacks.Callback):
        def on_batch_begin(self):
            self.t0 = time.perf_counter()

        def on_batch_end(self):
            step_times.append(time.perf_counter() - self.t0)

    t0 = time.perf_counter()
    model.train(iterations=iterations, callbacks=cbs + [StepTimer()], display_every=10**9, verbose=0)
    wall = time.perf_counter() - t0
    xs, ts = np.meshgrid(np.linspace(-1, 1, 256), np.linspace(0, 0.99, 100))
    X = np.stack([xs.ravel(), ts.ravel()], 1)
    u = cole_hopf(X[:, 1], X[:, 0])
    with torch.no_grad():
        pred = model.predict(X).ravel()
    err = float(np.linalg.norm(pred - u) / np.linalg.norm(u))
    return _row("deepxde", arm, err, wall, step_times, refresh, iterations)


def pina_run(arm, epochs, seed=0, period=None):
    import torch
    from lightning.pytorch.callbacks import Callback
    from pina import Trainer
    from pina.model import FeedForward
    from pina.problem.zoo import Poisson2DSquareProblem
    from pina.solver import PhysicsInformedSingleModelSolver
    from pina.weighting import NeuralTangentKernelWeighting

    from pinn_adapters.torch.pina import NTKWeighting

    torch.manual_seed(seed)
    problem = Poisson2DSquareProblem()
    problem.discretise_domain(n=25, mode="grid", domains="boundary")
    problem.discretise_domain(n=25, mode="grid", domains="D")
    model = FeedForward(input_dimensions=2, output_dimensions=1, inner_size=10, n_layers=2, func=torch.nn.Softplus)
    refresh = []
    if arm == "none":
        weighting = None
    elif arm == "pina_ntk":
        weighting = NeuralTangentKernelWeighting()
    else:
        # "<arm>_mean": per-row (mean-normalised) traces, the default before the measurement in docs/adapters.md
        base, mean = (arm[: -len("_mean")], True) if arm.endswith("_mean") else (arm, False)
        est, every = {"pc": ("pc", 1), "exact25": ("exact", 25), "gradnorm": ("gradnorm", 1000)}[base]

        class Timed(NTKWeighting):
            def update_weights(self, losses):
                t0, n = time.perf_counter(), self.refreshes
                out = super().update_weights(losses)
                if self.refreshes > n:
                    refresh.append(time.perf_counter() - t0)
                return out

        weighting = Timed(
            est,
            update_every_n_epochs=every if period is None or est == "pc" else period,
            seed=seed,
            normalize="mean" if mean else "sum",
        )
    kw = {} if weighting is None else {"weighting": weighting}
    solver = PhysicsInformedSingleModelSolver(problem, model, **kw)
    step_times = []

    class StepTimer(Callback):
        def on_train_batch_start(self, *a):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *a):
            step_times.append(time.perf_counter() - self.t0)

    trainer = Trainer(
        solver,
        max_epochs=epochs,
        accelerator="cpu",
        batch_size=None,
        train_size=0.8,
        val_size=0.0,
        test_size=0.2,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=[StepTimer()],
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    g = torch.linspace(0, 1, 101)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    from pina import LabelTensor

    pts = LabelTensor(torch.stack([xx.ravel(), yy.ravel()], 1), ["x", "y"])
    with torch.no_grad():
        pred = solver(pts).as_subclass(torch.Tensor).ravel()
    u = problem.solution(pts).as_subclass(torch.Tensor).ravel()
    err = float(torch.linalg.norm(pred - u) / torch.linalg.norm(u))
    # the hook runs inside the training step: the step's own cost is the batch time minus the refresh
    return _row("pina", arm, err, wall, step_times, refresh, epochs, refresh_inside_step=True)


def _row(host, arm, err, wall, steps, refresh, n, refresh_inside_step=False):
    steps = list(steps)
    if refresh_inside_step and refresh:
        # PINA: the refreshes ran inside the first batches they served; drop those batches
        steps = sorted(steps)[: max(1, len(steps) - len(refresh))]
    step = statistics.median(steps) if steps else float("nan")
    ref = statistics.median(refresh) if refresh else 0.0
    per_step = sum(refresh) / n
    load = os.getloadavg()[0]
    return {
        "host": host,
        "arm": arm,
        "rel_l2": round(err, 4),
        "wall_s": round(wall, 1),
        "step_ms": round(1e3 * step, 3),
        "refreshes": len(refresh),
        "refresh_ms": round(1e3 * ref, 2),
        "refresh_over_step": round(ref / step, 3) if steps else None,
        "weighting_per_step_over_step": round(per_step / step, 3) if steps else None,
        "load1": round(load, 2),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host", choices=["deepxde", "pina"])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--arms", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--period", type=int, default=None, help="refresh period of the exact/gradnorm arms (cost runs)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    default = "none,pc,exact,gradnorm" if a.host == "deepxde" else "none,pina_ntk,pc,exact25,gradnorm"
    rows = []
    for arm in (a.arms or default).split(","):
        if a.host == "deepxde":
            row = deepxde_run(arm, a.iterations, a.seed, a.period)
        else:
            row = pina_run(arm, a.epochs, a.seed, a.period)
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
