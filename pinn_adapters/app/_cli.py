"""``sketchtrace pinn ...``: registered with the sketchtrace command line as a plugin.

``pyproject.toml`` names :func:`register` in the ``sketchtrace.commands``
entry-point group; sketchtrace's command line calls it with its subparsers.

``sketchtrace pinn PROBLEM [options]`` has one subcommand per entry of
:data:`~pinn_adapters.app._experiment.PROBLEMS` and ``sketchtrace pinn sweep``
its own (``--help`` on each). Every :class:`WaveConfig` field is a flag
(``--learning-rate`` for ``learning_rate``), checked by ``WaveConfig.validate`` as
it is parsed, so a new field is a new flag; :data:`HELP` gives it a help line and
:data:`FLAG_NAMES` another name. Options that the chosen mode or weighting does not
use are refused (exit status 2), never dropped.
"""

from __future__ import annotations

import argparse

from sketchtrace.validation import check_output_dir

from ._experiment import COMPARE_RUNS, PROBLEMS, WaveConfig, compare, fd_bias, run_wave
from ._flags import WEIGHT_FIELDS, add_config_flags, flag_of, given_fields
from ._sweep import register as register_sweep

FD_BIAS_FIELDS = ("width", "depth", "seed")  # all that --fd-bias uses


def register(sub):
    """Add ``sketchtrace pinn PROBLEM ...`` and ``sketchtrace pinn sweep ...`` to sketchtrace's subparsers."""
    pinn = sub.add_parser(
        "pinn",
        help="the main job: train a PINN with NTK weights (see docs/pinn-wave.md)",
        description="Train a PINN with NTK loss weights: 'sketchtrace pinn PROBLEM [options]', or sweep weighting "
        "schedules: 'sketchtrace pinn sweep PROBLEM [options]'. 'sketchtrace pinn PROBLEM --help' lists the options.",
    )
    problems = pinn.add_subparsers(dest="problem", metavar="PROBLEM", required=True)
    for name in PROBLEMS:
        p = problems.add_parser(name, help=f"train on the {name} problem", description=f"Train a PINN on {name}.")
        add_config_flags(p)
        p.add_argument("--config", default=None, help="JSON file with WaveConfig keys (flags override it)")
        p.add_argument("--out", default=None, help=f"output directory (default runs/{name})")
        p.add_argument(
            "--compare", action="store_true", help="run " + ", ".join(label for label, _ in COMPARE_RUNS) + " alike"
        )
        p.add_argument("--fd-bias", action="store_true", help="only the finite-difference bias-vs-h experiment (wave)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("extra", nargs="*", help=argparse.SUPPRESS)  # named in a clear error, not dropped
        p.set_defaults(func=run_pinn, unknown_hint=_hint)
    register_sweep(problems)  # sketchtrace pinn sweep PROBLEM
    return pinn


def _hint(args):
    if getattr(args, "extra", None):
        return f"and {args.extra[0]!r} after the problem: did you mean 'sketchtrace pinn sweep PROBLEM'?"
    return f"not options of 'sketchtrace pinn {args.problem}'; see 'sketchtrace pinn {args.problem} --help'"


def _refuse(flag, why):
    raise ValueError(f"{flag} {why}")


def check_mode(args, cfg: WaveConfig, given: dict) -> None:
    """Refuse the options that the chosen mode (a run, --compare, --fd-bias) or weighting would ignore."""
    if args.compare and args.fd_bias:
        _refuse("--compare", "and --fd-bias are two different runs; give one of them")
    if args.fd_bias:
        if args.problem != "wave":
            _refuse("--fd-bias", f"is an experiment on the wave network; got problem {args.problem!r}")
        for field in given:
            if field not in FD_BIAS_FIELDS:
                _refuse(flag_of(field), f"is not used by --fd-bias (it uses {', '.join(map(flag_of, FD_BIAS_FIELDS))})")
        if args.no_progress:
            _refuse("--no-progress", "is not used by --fd-bias (it shows no progress bar)")
        return
    if args.compare:
        fixed = sorted({k for _, change in COMPARE_RUNS for k in change})
        for field in given:
            if field in fixed:
                runs = ", ".join(label for label, _ in COMPARE_RUNS)
                _refuse(flag_of(field), f"is not used with --compare (it runs {runs})")
        return
    for field in given:
        users = WEIGHT_FIELDS.get(field)
        if users is not None and cfg.weights not in users:
            _refuse(flag_of(field), f"is for --weights {'/'.join(users)}; this run uses --weights {cfg.weights}")


def run_pinn(args):
    if args.problem not in PROBLEMS:
        raise ValueError(f"PROBLEM must be one of {sorted(PROBLEMS)}; got {args.problem!r}")
    if args.extra:
        raise ValueError(
            f"unexpected argument {args.extra[0]!r} after the problem (did you mean 'sketchtrace pinn sweep PROBLEM'?)"
        )
    given = given_fields(args)
    overrides = {"problem": args.problem, **given}
    if args.config:
        cfg = WaveConfig.from_file(args.config, **overrides)
    else:
        cfg = WaveConfig(**overrides).validate()
    check_mode(args, cfg, given)
    args.out = args.out or f"runs/{args.problem}"
    check_output_dir(args.out, name="--out")  # before any training
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
