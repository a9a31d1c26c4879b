"""``sketchtrace pinn sweep PROBLEM``: which weighting schedule should I use? Measured.

Runs a grid of weighting schedules (none; exact every 1, 10, 100, 1000 steps;
Hutchinson every 10 steps with 8 probes; predictor-corrector every step and every
4 steps, all rows and subsampled rows, for several gammas) for several seeds at a
fixed step budget, one JSON file per run (written atomically, so an interrupted sweep
resumes without rerunning finished runs), and summarises them in ``sweep.json``,
``sweep.md`` and ``pareto.png`` (final error against wall time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sketchtrace.validation import check_int

from ._experiment import PROBLEMS, WaveConfig, make_optimizer, make_problem

GAMMAS = (0.02, 0.1)
SUBSAMPLE = 0.1  # fraction of each block's points for the subsampled pc schedules


def default_schedules(gammas=GAMMAS, subsample=SUBSAMPLE) -> dict:
    """Schedule name -> :func:`~pinn_adapters.ntk_weighting` keyword arguments (the issue's grid)."""
    grid = {"none": {"estimator": "none"}}
    for every in (100, 1000):  # jaxpi's grad-norm weighting (momentum 0.9)
        grid[f"gradnorm/{every}"] = {"estimator": "gradnorm", "every": every, "ema": 0.9}
    for every in (1, 10, 100, 1000):
        grid[f"exact/{every}"] = {"estimator": "exact", "every": every}
    grid["hutchinson8/10"] = {"estimator": "hutchinson", "num_probes": 8, "every": 10}
    for every in (1, 4):
        for g in gammas:
            grid[f"pc/{every} g={g:g}"] = {
                "estimator": "pc",
                "every": every,
                "gamma": g,
                "subsample": None,
            }
            grid[f"pc-sub/{every} g={g:g}"] = {
                "estimator": "pc",
                "every": every,
                "gamma": g,
                "subsample": subsample,
            }
    return grid


def second_order_schedules() -> dict:
    """Second-order schedules (an ``"optimizer"`` entry replaces the base configuration's): run only
    when named (``--schedules lm,lm+exact``); each of their steps is a Gauss-Newton solve."""
    return {
        "lm": {"estimator": "none", "optimizer": "lm"},
        "lm+exact": {"estimator": "exact", "every": 1, "optimizer": "lm"},
        "lm+pc": {"estimator": "pc", "every": 1, "gamma": 0.02, "subsample": None, "optimizer": "lm"},
        "engd": {"estimator": "none", "optimizer": "engd"},
    }


def _trainer(prob, base: WaveConfig, kw: dict):
    """The :class:`~pinn_adapters.app.Trainer` of one schedule (its ``optimizer`` entry, if any, replaces
    the base configuration's; its ``steps`` entry is read by :func:`run_sweep`)."""
    from .._weighting import ntk_weighting
    from ._train import Trainer

    kw = dict(kw)
    kw.pop("steps", None)
    opt = kw.pop("optimizer", None)
    cfg = base if opt is None else dataclasses.replace(base, optimizer=opt)
    return Trainer(prob, weighting=ntk_weighting(prob.blocks, **kw), optimizer=make_optimizer(cfg))


@dataclasses.dataclass
class SweepConfig:
    """What a sweep runs: the problem's base configuration, schedules and seeds."""

    base: WaveConfig
    schedules: dict
    seeds: int = 3
    out: str = "runs/sweep"


def check_sweep(cfg: SweepConfig) -> Path:
    """Every argument checked before any training; returns the (created, writable) output folder."""
    cfg.base.validate()
    cfg.seeds = check_int(cfg.seeds, name="seeds", minimum=1, maximum=MAX_SEEDS)
    if not cfg.schedules:
        raise ValueError("schedules: the sweep needs at least one schedule")
    out = Path(cfg.out)
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out / "runs", prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"sweep output folder {str(out)!r} is not writable: {exc.strerror or exc}") from None
    return out


def select_schedules(names, grid=None) -> dict:
    """The named schedules of ``grid`` (all of them for ``names=None``) or of
    :func:`second_order_schedules`; unknown names are refused."""
    grid = default_schedules() if grid is None else grid
    if names is None:
        return dict(grid)
    grid = {**second_order_schedules(), **grid}
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise ValueError(f"unknown schedule(s) {unknown}; known: {list(grid)}")
    return {n: grid[n] for n in names}


def _slug(name: str) -> str:
    return name.replace("/", "-every").replace(" ", "_").replace("=", "")


def _run_path(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / f"{_slug(name)}__seed{seed}.json"


def _write_atomic(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finished(path: Path, key: dict):
    """The stored run if it exists, parses and was made with the same configuration, else ``None``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("key") == key else None


def _one_run(trainer, base: WaveConfig, seed: int, steps=None) -> dict:
    """Train one seed for ``steps`` (default ``base.steps``) with a :class:`~pinn_adapters.app.Trainer`
    (after a one-step warm-up that compiles, so wall time is training time)."""
    kw = {"seed": seed, "log_every": base.log_every, "progress": False}
    tracked = trainer.weighting.config["estimator"] not in ("none", "exact", "gradnorm")
    # compile the step and the weight-error check first (the trainer keeps both for the timed run)
    trainer.train(steps=1, track_weight_error=tracked, **kw)
    t0 = time.perf_counter()
    res = trainer.train(steps=base.steps if steps is None else steps, track_weight_error=tracked, **kw)
    wall = time.perf_counter() - t0
    hist = res.history
    errs = [e for e in hist["weight_error"] if e is not None]
    return {
        "relative_l2": hist["relative_l2"][-1],
        "wall_time_s": wall,
        "time_per_step_s": res.time_per_step,
        "median_weight_rel_error": float(np.median(errs)) if errs else None,
        "final_weights": hist["weights"][-1],
        "relative_l2_history": hist["relative_l2"],
        "steps_logged": hist["step"],
    }


def run_sweep(cfg: SweepConfig, *, progress=True, cost_repeats=0) -> dict:
    """Run (or resume) the grid; write ``runs/*.json``, ``sweep.json``, ``sweep.md`` and ``pareto.png``."""
    out = check_sweep(cfg)
    base = dataclasses.asdict(cfg.base)
    prob = make_problem(cfg.base)
    # every schedule's configuration is checked here, before any training; one trainer per schedule
    trainers = {name: _trainer(prob, cfg.base, kw) for name, kw in cfg.schedules.items()}
    todo = [(n, s) for n in cfg.schedules for s in range(cfg.seeds)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sweep", unit="run")
    records = []
    try:
        for name, seed in todo:
            key = {
                "schedule": name,
                "weighting": _jsonable(cfg.schedules[name]),
                "seed": seed,
                "base": base,
            }
            path = _run_path(out, name, seed)
            rec = _finished(path, key)
            if rec is None:
                if bar is not None:
                    bar.set_postfix_str(f"{name} seed {seed}")
                rec = {
                    "key": key,
                    "metrics": _one_run(trainers[name], cfg.base, seed, cfg.schedules[name].get("steps")),
                }
                _write_atomic(path, rec)
            records.append(rec)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    costs = _costs(out, cfg, cost_repeats) if cost_repeats else None
    return write_summary(out, records, cfg, costs)


def _jsonable(kw):
    return json.loads(json.dumps(kw))


# ----------------------------------------------------------------------------- interleaved step costs


def step_costs(cfg: SweepConfig, *, repeats=5, chunk=100) -> dict:
    """Seconds per training step of every schedule, measured interleaved (robust to a loaded machine).

    Each round runs ``chunk`` compiled steps of every schedule in turn (one exact refresh per
    chunk for ``exact/100``; ``exact/1000`` refreshes are outside the chunks, about 1 % of a
    step each); the result is the median over ``repeats`` rounds, divided by ``chunk``.
    """
    import jax

    prob = make_problem(cfg.base)
    batch0 = prob.sample_batch(jax.random.key(0))
    runs = {}
    for name, kw in cfg.schedules.items():
        trainer = _trainer(prob, cfg.base, kw)
        if trainer.second_order is not None:  # whole trial steps through Trainer.train (2 per round)
            trainer.train(steps=1, progress=False)
            runs[name] = [None, trainer]
            continue
        step_fn, _ = trainer._step_fns()
        state = trainer.initial_state(0, batch0=batch0)
        runs[name] = [
            step_fn,
            jax.block_until_ready(step_fn(state, batch0)[0]),
        ]  # compiled and warm
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            if run[0] is None:
                t0 = time.perf_counter()
                run[1].train(steps=2, progress=False)
                times[name].append((time.perf_counter() - t0) / 2)
                continue
            t0 = time.perf_counter()
            state = run[1]
            for _ in range(chunk):
                state = run[0](state, batch0)[0]
            run[1] = jax.block_until_ready(state)
            times[name].append((time.perf_counter() - t0) / chunk)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def _costs(out: Path, cfg: SweepConfig, repeats: int):
    """The interleaved step costs, measured once per configuration (``costs.json``; resumable too)."""
    key = {
        "base": dataclasses.asdict(cfg.base),
        "schedules": _jsonable(cfg.schedules),
        "repeats": repeats,
    }
    path = out / "costs.json"
    done = _finished(path, key)
    if done is None:
        done = {"key": key, "seconds_per_step": step_costs(cfg, repeats=repeats)}
        _write_atomic(path, done)
    return done["seconds_per_step"]


# ----------------------------------------------------------------------------- summary


def summarize(records, costs=None, steps=None) -> list:
    """Per schedule (grid order): median and min/max over seeds of error, wall time, time/step, weight error."""
    by, own_steps = {}, {}
    for r in records:
        by.setdefault(r["key"]["schedule"], []).append(r["metrics"])
        own_steps[r["key"]["schedule"]] = r["key"]["weighting"].get("steps", steps)  # --second-order-steps
    rows = []
    for name, ms in by.items():
        row = {"schedule": name, "seeds": len(ms)}
        for k in (
            "relative_l2",
            "wall_time_s",
            "time_per_step_s",
            "median_weight_rel_error",
        ):
            vals = [m[k] for m in ms if m[k] is not None]
            row[k] = _stats(vals)
        rows.append(row)
    front = pareto_front([(r["wall_time_s"]["median"], r["relative_l2"]["median"]) for r in rows])
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    if costs:
        ref = costs.get("none", min(costs.values()))
        for r in rows:
            r["step_cost_vs_none"] = costs[r["schedule"]] / ref
            r["interleaved_time_s"] = costs[r["schedule"]] * own_steps[r["schedule"]]
        front = pareto_front([(r["interleaved_time_s"], r["relative_l2"]["median"]) for r in rows])
        for i, r in enumerate(rows):
            r["pareto_interleaved"] = i in front
    return rows


def _stats(vals):
    if not vals:
        return None
    return {
        "median": float(np.median(vals)),
        "min": float(np.min(vals)),
        "max": float(np.max(vals)),
    }


def pareto_front(points) -> list:
    """Indices of the points not dominated in (time, error), both minimised, sorted by time."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in idx:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def format_markdown(rows, cfg: SweepConfig) -> str:
    b = cfg.base
    opt = {"soap": "SOAP", "adam": "Adam"}.get(b.optimizer, b.optimizer)
    embed = f"{b.fourier} Fourier features (scale {b.fourier_sigma:.3g}) + " if b.fourier else ""
    head = (
        f"{b.problem}, {embed}MLP width {b.width} x {b.depth}{' (RWF)' if b.rwf else ''}, {b.steps} {opt} steps "
        f"(lr {b.learning_rate:g} x {b.decay_rate:g} every {b.decay_steps} steps), batch {b.n_res} interior + "
        f"{b.n_bc} per boundary piece (redrawn every step), {cfg.seeds} seeds; median [min, max] over seeds. "
        + "".join(f"{n}: {kw['steps']} trial steps. " for n, kw in cfg.schedules.items() if "steps" in kw)
        + "Wall time: the training call after a one-step compile warm-up (includes the logging every "
        f"{b.log_every} steps and, for estimated weights, the exact weights computed at each log step for the "
        "weight error, so compare costs in the interleaved columns). Weight error: median over log steps of the max over blocks of "
        "|w - w_exact| / w_exact (estimators that are not exact only). * = on the error-vs-time Pareto front "
        "(medians). Step cost: seconds per step measured interleaved across schedules in one process "
        "(100-step chunks, median of rounds), relative to none; its front uses steps x that cost.\n\n"
    )
    lines = [
        (
            "| schedule | final relative L2 | wall time (s) | time/step (ms) | weight error vs exact | front "
            "| step cost vs none (interleaved) | front (interleaved) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]

    def f(s, fmt, scale=1.0):
        if s is None:
            return "-"
        return f"{s['median'] * scale:{fmt}} [{s['min'] * scale:{fmt}}, {s['max'] * scale:{fmt}}]"

    for r in rows:
        lines.append(
            f"| {r['schedule']} | {f(r['relative_l2'], '.3e')} | {f(r['wall_time_s'], '.1f')} | "
            f"{f(r['time_per_step_s'], '.2f', 1e3)} | {f(r['median_weight_rel_error'], '.3f')} | "
            f"{'*' if r['pareto'] else ''} | "
            + (
                f"{r['step_cost_vs_none']:.2f} | {'*' if r['pareto_interleaved'] else ''} |"
                if "step_cost_vs_none" in r
                else "- | - |"
            )
        )
    return head + "\n".join(lines) + "\n"


def write_summary(out: Path, records, cfg: SweepConfig, costs=None) -> dict:
    rows = summarize(records, costs, cfg.base.steps)
    from ._experiment import _versions

    summary = {
        "config": {
            "base": dataclasses.asdict(cfg.base),
            "schedules": cfg.schedules,
            "seeds": cfg.seeds,
        },
        "summary": rows,
        "seconds_per_step_interleaved": costs,
        "runs": records,
        "versions": _versions(),
    }
    _write_atomic(out / "sweep.json", summary)
    md = format_markdown(rows, cfg)
    (out / "sweep.md").write_text(md)
    pareto_figure(out / "pareto.png", records, rows)
    print(md)
    return summary


def pareto_figure(path: Path, records, rows) -> None:
    """Final error against wall time: one marker per run, schedule medians joined along the front."""
    from .._mpl import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    colors = plt.get_cmap("tab20")
    for i, r in enumerate(rows):
        ms = [x["metrics"] for x in records if x["key"]["schedule"] == r["schedule"]]
        c = colors(i % 20)
        ax.scatter(
            [m["wall_time_s"] for m in ms],
            [m["relative_l2"] for m in ms],
            s=14,
            color=c,
            alpha=0.5,
        )
        ax.scatter(
            [r["wall_time_s"]["median"]],
            [r["relative_l2"]["median"]],
            s=60,
            color=c,
            edgecolor="k",
            marker="D" if r["pareto"] else "o",
            label=r["schedule"],
        )
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["wall_time_s"]["median"])
    ax.plot(
        [r["wall_time_s"]["median"] for r in front],
        [r["relative_l2"]["median"] for r in front],
        "k--",
        lw=1,
        label="Pareto front (medians)",
    )
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("wall time (s)"), ax.set_ylabel("final relative L2 error")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def register(problems):
    """Add ``sketchtrace pinn sweep PROBLEM [options]`` to the ``pinn`` subcommands (its own parser and help).

    The base configuration takes every :class:`WaveConfig` flag except those the grid
    sets per schedule (the weighting's) and those the sweep sets itself (``--seed``:
    runs use seeds ``0 .. N-1`` of ``--seeds N``; ``--x64``, ``--track-weight-error``).
    """
    from sketchtrace.validation import option_int, option_real

    from ._flags import WEIGHT_FIELDS, add_config_flags

    sweep = problems.add_parser(
        "sweep",
        help="run a grid of weighting schedules over seeds (docs/schedules.md)",
        description="Run a grid of weighting schedules over seeds for one problem and write sweep.json, sweep.md "
        "and pareto.png (final error against wall time); finished runs are kept, so an interrupted sweep resumes.",
    )
    sweep.add_argument("sweep_problem", metavar="PROBLEM", help=f"the problem to sweep, one of {sorted(PROBLEMS)}")
    sweep.add_argument("--seeds", type=_seeds, default=3, help="runs per schedule (seeds 0 .. N-1; default 3)")
    sweep.add_argument(
        "--schedules", default=None, help="comma-separated schedule names (default: the whole grid, docs/schedules.md)"
    )
    sweep.add_argument("--gammas", default=None, help="comma-separated pc gammas in (0, 1] (default 0.02,0.1)")
    sweep.add_argument(
        "--cost-repeats",
        type=option_int(0),
        default=5,
        help="rounds of the interleaved step-cost measurement after the runs (0: skip; default 5)",
    )
    sweep.add_argument(
        "--subsample",
        type=option_real(0, 1, low_open=True),
        default=SUBSAMPLE,
        help=f"point fraction in (0, 1] of the pc-sub schedules (default {SUBSAMPLE})",
    )
    sweep.add_argument(
        "--second-order-steps",
        type=option_int(1),
        default=None,
        help="trial steps of the second-order schedules (lm, lm+exact, lm+pc, engd; default --steps: "
        "a Gauss-Newton step costs hundreds of first-order steps)",
    )
    sweep.add_argument("--out", default=None, help="output directory (default runs/sweep-PROBLEM)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(sweep, exclude=set(WEIGHT_FIELDS) | SWEEP_SETS)
    sweep.set_defaults(func=run_cli)
    return sweep


MAX_SEEDS = 10_000


def _seeds(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_SEEDS:
        raise argparse.ArgumentTypeError(
            f"seeds must be a positive integer (runs per schedule) of at most {MAX_SEEDS}; got {text!r}"
        )
    return value


SWEEP_SETS = {"weights", "seed", "x64", "track_weight_error"}  # fields the sweep itself sets


def _gammas(text):
    from sketchtrace.validation import check_real

    try:
        values = tuple(float(g) for g in text.split(","))
    except ValueError:
        raise ValueError(f"--gammas must be comma-separated numbers; got {text!r}") from None
    return tuple(check_real(g, name="--gammas entry", low=0, high=1, low_open=True) for g in values)


def config_from_args(args) -> SweepConfig:
    """The sweep configuration of ``sketchtrace pinn sweep PROBLEM ...`` (errors before any training)."""
    from ._flags import given_fields

    problem = args.sweep_problem
    if problem not in PROBLEMS:
        raise ValueError(f"sketchtrace pinn sweep: PROBLEM must be one of {sorted(PROBLEMS)}; got {problem!r}")
    base = WaveConfig(**{**given_fields(args), "problem": problem}).validate()
    gammas = _gammas(args.gammas) if args.gammas else GAMMAS
    grid = default_schedules(gammas, args.subsample)
    names = None if args.schedules is None else [s.strip() for s in args.schedules.split(",") if s.strip()]
    if names == []:
        raise ValueError("--schedules is empty; give comma-separated schedule names")
    schedules = select_schedules(names, grid)
    if args.second_order_steps is not None:
        second = [n for n, kw in schedules.items() if "optimizer" in kw]
        if not second:
            raise ValueError(
                "--second-order-steps: no second-order schedule selected (name lm, lm+exact, lm+pc or engd)"
            )
        schedules = {n: kw | {"steps": args.second_order_steps} if n in second else kw for n, kw in schedules.items()}
    return SweepConfig(
        base=base,
        schedules=schedules,
        seeds=args.seeds,
        out=args.out or f"runs/sweep-{problem}",
    )


def run_cli(args):
    cfg = config_from_args(args)
    return run_sweep(cfg, progress=not args.no_progress, cost_repeats=args.cost_repeats)
