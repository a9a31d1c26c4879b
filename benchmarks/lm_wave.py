"""Levenberg-Marquardt on the wave (or Burgers) problem with many more residual rows than parameters.

``python benchmarks/lm_wave.py --minutes 40 --out docs/sweeps/lm/wave_dense.json`` trains
``pinn_adapters.problems.wave1d`` (c = 2, Wang et al.'s problem; ``--problem burgers``:
``pinn_adapters.problems.burgers``, ``n = n_res + 3 n_bc``) with
``pa.train(..., optimizer=pa.second_order.lm(...))``: a small Fourier-feature tanh MLP (about a
thousand parameters, the size the LM literature uses), float64, dense Gauss-Newton steps,
Nielsen damping, a fresh collocation batch every ``--resample-every`` accepted steps, and
``n = n_res + 4 n_bc`` residual rows several times the parameter count ``p`` (the earlier LM runs
had ``n < p`` and interpolated the collocation points). It stops at ``--minutes`` of wall time and
writes the history (step, time, loss, relative L2, damping) as one JSON file, atomically.

The measured best (``docs/second-order.md``): ``--weights exact`` on the wave problem (exact NTK
weights every ``--weights-every`` = 100 accepted steps: 5e-5 in 15 minutes) and ``--problem burgers
--rad 8`` (residual-based adaptive sampling of the interior points from 8 uniform batches: 8e-5).

``python benchmarks/lm_wave.py --plot OUT.png RUN.json [RUN.json ...] [--soap results.json]`` draws
relative L2 against wall time for such runs (and, with ``--soap``, a first-order ``results.json``
of ``sketchtrace pinn wave``, e.g. ``docs/sweeps/wave_45min/results.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import pinn_adapters as pa  # noqa: E402
from pinn_adapters import second_order as so  # noqa: E402


def _write(path, payload):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def plot(out, runs, soap=None):
    """Relative L2 against wall time (minutes) of LM runs (their JSON) and a first-order run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.0, 4.4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors[: max(2, len(runs) + 1)])  # no colour repeats
    for path in runs:
        d = json.load(open(path))
        h, c = d["history"], d["config"]
        w = c.get("weights", "none")
        w = "" if w == "none" else f", {w} weights /{c.get('weights_every', 1)}"
        w += f", RAD pool {c['rad']}" if c.get("rad") else ""
        label = f"LM dense, {c.get('problem', 'wave')}, p={c['p']}, n={c['n']}, seed {c.get('seed', 0)}{w}"
        style = "--" if c.get("problem", "wave") == "burgers" else "-"
        ax.semilogy([t / 60 for t in h["time"]], h["relative_l2"], style, lw=1.0, label=label)
    if soap is not None:
        d = json.load(open(soap))
        h, c = d["history"], d["config"]
        ok = [(t, e) for t, e in zip(h["time"], h["relative_l2"]) if e is not None]
        ax.semilogy([t / 60 for t, _ in ok], [e for _, e in ok],
                    label=f"{c.get('optimizer', '')} + {c.get('weights', '')} weights, {c.get('problem', 'wave')}, width {c.get('width')}")  # fmt: skip
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("relative L2 error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, not over the curves
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--plot":
        ap = argparse.ArgumentParser(description="plot LM runs")
        ap.add_argument("out")
        ap.add_argument("runs", nargs="+")
        ap.add_argument("--soap", default=None)
        a = ap.parse_args(argv[1:])
        return plot(a.out, a.runs, a.soap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", choices=("wave", "burgers"), default="wave")
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--width", type=int, default=20)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--fourier", type=int, default=16, help="random Fourier frequencies (0: none)")
    ap.add_argument("--sigma", type=float, default=2 * math.pi)
    ap.add_argument("--n-res", type=int, default=2400)
    ap.add_argument("--n-bc", type=int, default=400)
    ap.add_argument("--weights", choices=("none", "exact", "pc", "gradnorm"), default="none")
    ap.add_argument("--weights-every", type=int, default=100, help="refresh the weights every k accepted steps")
    ap.add_argument("--resample-every", type=int, default=100)
    ap.add_argument("--rad", type=int, default=0, metavar="POOL",
                    help="residual-based adaptive sampling of the interior points from POOL uniform batches (0: uniform)")  # fmt: skip
    ap.add_argument("--rad-k", type=float, default=1.0)
    ap.add_argument("--rad-c", type=float, default=1.0)
    ap.add_argument("--method", default="dense")
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--out", default="docs/sweeps/lm/wave_dense.json")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar (loss, damping, relative L2)")
    a = ap.parse_args(argv)
    fourier = {"num": a.fourier, "sigma": a.sigma} if a.fourier else None
    d_in = 2
    net = pa.nets.mlp((d_in, *([a.width] * a.depth), 1), fourier=fourier, dtype="float64")
    make = pa.problems.wave1d if a.problem == "wave" else pa.problems.burgers
    problem = make(network=net, n_res=a.n_res, n_bc=a.n_bc)
    p = sum(x.size for x in jax.tree_util.tree_leaves(problem.init_params(jax.random.key(0))))
    n = sum(problem.blocks.sizes(problem.sample_batch(jax.random.key(0))).values())
    weighting = None
    if a.weights != "none":
        weighting = pa.ntk_weighting(problem.blocks, estimator=a.weights, every=a.weights_every)
    rad = {"block": "res", "pool": a.rad, "k": a.rad_k, "c": a.rad_c} if a.rad else None
    opt = so.lm(method=a.method, damping=a.damping, resample_every=a.resample_every, time_limit=60 * a.minutes,
                adaptive_sampling=rad)  # fmt: skip
    t0 = time.perf_counter()
    res = pa.train(problem, weighting=weighting, optimizer=opt, steps=10**7, seed=a.seed, log_every=a.log_every,
                   progress=not a.no_progress)  # fmt: skip
    h = res.history
    payload = {
        "config": vars(a) | {"p": int(p), "n": int(n)},
        "load_average_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
        "steps": h["step"][-1] if h["step"] else 0,
        "final_relative_l2": h["relative_l2"][-1] if h["relative_l2"] else None,
        "best_relative_l2": min(x for x in h["relative_l2"] if x is not None) if h["relative_l2"] else None,
        "history": {k: h[k] for k in ("step", "time", "loss", "relative_l2", "damping", "accepted")}
        | ({"weights": h["weights"]} if weighting is not None else {}),
        "final_weights": h["weights"][-1] if h.get("weights") else None,
    }
    _write(a.out, payload)
    print(json.dumps({k: payload[k] for k in ("config", "steps", "final_relative_l2", "best_relative_l2", "wall_s")}))


if __name__ == "__main__":
    sys.exit(main())
