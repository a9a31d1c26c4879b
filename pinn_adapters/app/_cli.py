"""``sketchtrace pinn ...``: registered with the sketchtrace command line as a plugin.

``pyproject.toml`` names :func:`register` in the ``sketchtrace.commands``
entry-point group; sketchtrace's command line calls it with its subparsers.
"""

from __future__ import annotations

from sketchtrace.validation import check_output_dir, option_int

from ._experiment import PROBLEMS, WaveConfig, compare, fd_bias, run_wave
from ._sweep import register as register_sweep


def register(sub):
    """Add the ``pinn`` subcommand to sketchtrace's ``argparse`` subparsers."""
    w = sub.add_parser("pinn", help="the main job: train a PINN with NTK weights (see docs/pinn-wave.md)")
    w.add_argument(
        "problem", help="built-in problem: wave (Wang et al. 1D wave equation) or qtensor (2D Q-tensor flow)"
    )
    w.add_argument("--weights", choices=("none", "exact", "hutchinson", "pc"), default=None, help="default pc")
    w.add_argument(
        "--exact-every", type=option_int(1), default=None, help="refresh exact weights every N steps (default 100)"
    )
    w.add_argument("--steps", type=option_int(1), default=None, help="Adam steps (default 3000)")
    w.add_argument("--width", type=option_int(1), default=None, help="hidden width (default 64)")
    w.add_argument("--depth", type=option_int(1), default=None, help="hidden layers (default 3)")
    w.add_argument("--seed", type=option_int(0), default=None)
    w.add_argument("--log-every", type=option_int(1), default=None)
    w.add_argument("--n-res", type=option_int(1), default=None, help="interior points per batch (default 300)")
    w.add_argument("--n-bc", type=option_int(1), default=None, help="points per boundary/initial piece (default 100)")
    w.add_argument("--gamma", type=float, default=None, help="predictor-corrector damping (default 0.02)")
    w.add_argument("--probes", dest="num_probes", type=option_int(1), default=None, help="probes per step (default 1)")
    w.add_argument("--config", default=None, help="JSON file with WaveConfig keys (flags override it)")
    w.add_argument("--out", default=None, help="output directory (default runs/PROBLEM)")
    w.add_argument("--compare", action="store_true", help="run none, exact/100, exact/1 and pc with the same seed")
    w.add_argument("--fd-bias", action="store_true", help="only run the finite-difference bias-vs-h experiment")
    w.add_argument("--x64", action="store_true", help="train in float64")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.set_defaults(func=run_pinn)
    register_sweep(w)  # sketchtrace pinn sweep PROBLEM
    return w


def run_pinn(args):
    if args.problem not in PROBLEMS:
        raise ValueError(f"PROBLEM must be one of {sorted(PROBLEMS)}; got {args.problem!r}")
    args.out = args.out or f"runs/{args.problem}"
    check_output_dir(args.out, name="--out")  # before any training
    overrides = {
        "problem": args.problem,
        "weights": args.weights,
        "exact_every": args.exact_every,
        "steps": args.steps,
        "width": args.width,
        "depth": args.depth,
        "seed": args.seed,
        "log_every": args.log_every,
        "gamma": args.gamma,
        "num_probes": args.num_probes,
        "x64": True if args.x64 else None,
        "n_res": args.n_res,
        "n_bc": args.n_bc,
    }
    if args.config:
        cfg = WaveConfig.from_file(args.config, **overrides)
    else:
        cfg = WaveConfig(**{k: v for k, v in overrides.items() if v is not None}).validate()
    if args.fd_bias:
        return fd_bias(args.out, width=cfg.width, depth=cfg.depth, seed=cfg.seed)
    if args.compare:
        return compare(cfg, args.out, progress=not args.no_progress)
    result = run_wave(cfg, args.out, progress=not args.no_progress)
    m = result["metrics"]
    err = m["median_weight_rel_error"]
    print(
        f"{cfg.problem}, weights={cfg.weights}: relative L2 {m['relative_l2']:.3e}, wall {m['wall_time_s']:.1f} s, "
        f"{1e3 * m['time_per_step_s']:.2f} ms/step"
        + ("" if err is None else f", median weight rel. error vs exact {err:.3f}")
    )
    print(f"wrote {args.out}/results.json and figures")
    return result
