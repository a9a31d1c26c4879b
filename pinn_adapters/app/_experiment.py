"""The main job: the wave experiment of Hirsch and Pichi (2025) end to end.

``sketchtrace pinn wave`` trains the Wang et al. wave PINN with no weights, exact NTK
weights, fresh Hutchinson weights or predictor-corrector weights; writes ``results.json``
and PNG figures; ``--compare`` runs the methods side by side with the same seed;
``--fd-bias`` measures the finite-difference sketch's bias against its step size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from sketchtrace.validation import check_int, check_output_dir, check_real

from ._checkpoint import write_text_atomic

WEIGHTS = ("none", "gradnorm", "exact", "hutchinson", "pc")
OPTIMIZERS = ("adam", "soap", "lm", "engd")  # lm / engd: second order (pinn_adapters.second_order)


@dataclasses.dataclass
class WaveConfig:
    """Configuration of one wave run (``--config FILE`` takes these keys as JSON).

    The defaults are the main job's CPU configuration: the modern recipe (64 random
    Fourier features of scale ``2 pi``, a 3 x 128 tanh MLP, 512 interior and 4 x 256
    boundary/initial points, SOAP at 1e-3 decayed by 0.9 every 2000 steps, 4000 steps) with
    grad-norm weights, the measured best (``docs/schedules.md``); ``fourier=0`` and
    ``optimizer="adam"`` give the plain MLP and the optimizer of earlier rounds. ``docs/configs/wave_full.json`` is the Wang et al.
    configuration (``width=500``, 80k steps), for a GPU.
    """

    problem: str = "wave"
    weights: str = "gradnorm"  # measured best on the recipe (docs/schedules.md)
    steps: int = 4000
    width: int = 128
    depth: int = 3
    seed: int = 0
    n_res: int = 512
    n_bc: int = 256
    learning_rate: float = 1e-3
    decay_steps: int = 2000
    decay_rate: float = 0.9
    warmup_steps: int = 0
    optimizer: str = "soap"  # 3.5x lower error than Adam on the main job (docs/schedules.md)
    fourier: int = 64  # random Fourier features of the input (0: the plain MLP of the earlier rounds)
    fourier_sigma: float = 2 * math.pi  # their scale: B ~ N(0, sigma^2), features cos(x B), sin(x B)
    rwf: bool = False  # random weight factorisation of the dense layers
    exact_every: int = 100
    gradnorm_every: int = 1000
    gradnorm_momentum: float = 0.9
    num_probes: int = 1
    gamma: float = 0.02  # the sweep (docs/schedules.md): same final error as 0.1, half the weight error
    fd: str = "forward"
    h: float | None = None
    log_every: int = 100
    track_weight_error: bool = True
    x64: bool = False

    def validate(self):
        if self.problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {sorted(PROBLEMS)}; got {self.problem!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}; got {self.weights!r}")
        for name in (
            "steps",
            "width",
            "depth",
            "n_res",
            "n_bc",
            "exact_every",
            "num_probes",
            "log_every",
            "decay_steps",
            "gradnorm_every",
        ):
            setattr(self, name, check_int(getattr(self, name), name=name, minimum=1))
        for name in ("seed", "warmup_steps", "fourier"):
            setattr(self, name, check_int(getattr(self, name), name=name, minimum=0))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        self.fourier_sigma = check_real(self.fourier_sigma, name="fourier_sigma", low=0, low_open=True)
        self.gradnorm_momentum = check_real(
            self.gradnorm_momentum, name="gradnorm_momentum", low=0, high=1, high_open=True
        )
        if not isinstance(self.rwf, bool):
            raise TypeError(f"rwf must be true or false; got {self.rwf!r}")
        self.gamma = check_real(self.gamma, name="gamma", low=0, high=1, low_open=True)
        self.learning_rate = check_real(self.learning_rate, name="learning_rate", low=0, low_open=True)
        self.decay_rate = check_real(self.decay_rate, name="decay_rate", low=0, high=1, low_open=True)
        if self.h is not None:
            self.h = check_real(self.h, name="h", low=0, low_open=True)
        if self.fd not in ("forward", "central", "jvp"):
            raise ValueError(f"fd must be 'forward', 'central' or 'jvp'; got {self.fd!r}")
        return self

    @classmethod
    def from_file(cls, path, **overrides):
        """Read a JSON object of config keys; every error names the file (and the line for bad JSON)."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise FileNotFoundError(f"--config {path}: cannot read it ({exc.strerror})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            where = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if hasattr(exc, "lineno") else str(exc)
            raise ValueError(f"--config {path}: not valid JSON ({where})") from None
        if not isinstance(data, dict):
            raise TypeError(f"--config {path}: expected a JSON object of WaveConfig keys; got a {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"--config {path}: unknown keys {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data).validate()
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"--config {path}: {exc}") from None


def _versions():
    import jax

    import sketchtrace

    out = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "sketchtrace": sketchtrace.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
    }
    try:
        import optax

        out["optax"] = optax.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def make_network(cfg: WaveConfig, d_in: int, d_out: int, **fourier_extra):
    """The network of a run: an MLP of ``depth x width`` tanh layers, with the recipe's options.

    ``fourier > 0`` puts ``fourier`` random Fourier features of scale ``fourier_sigma``
    in front (``fourier_extra`` adds e.g. a periodic embedding); ``rwf`` factorises the
    dense layers (random weight factorisation).
    """
    from .. import nets

    layers = (d_in,) + (cfg.width,) * cfg.depth + (d_out,)
    fourier = dict(fourier_extra)
    if cfg.fourier:
        fourier.update(num=cfg.fourier, sigma=cfg.fourier_sigma, seed=cfg.seed)
    rwf = {"mean": 1.0, "std": 0.1} if cfg.rwf else None
    return nets.mlp(layers, fourier=fourier or None, rwf=rwf)


def make_optimizer(cfg: WaveConfig):
    """Adam or SOAP with ``learning_rate``, a linear warm-up over ``warmup_steps`` and step decay; or
    a second-order optimizer (``"lm"``: Levenberg-Marquardt with the grid line search, ``"engd"``),
    for which ``steps`` counts trial steps and the learning-rate fields are not used."""
    import optax

    if cfg.optimizer in ("lm", "engd"):
        from .. import second_order

        return second_order.lm(line_search="grid") if cfg.optimizer == "lm" else second_order.engd()

    decay = optax.exponential_decay(
        cfg.learning_rate, transition_steps=cfg.decay_steps, decay_rate=cfg.decay_rate, staircase=True
    )
    schedule = decay
    if cfg.warmup_steps:
        warm = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        schedule = optax.join_schedules([warm, decay], [cfg.warmup_steps])
    if cfg.optimizer == "soap":
        from .. import optim

        return optim.soap(schedule)
    return optax.adam(schedule)


def _make_wave(cfg: WaveConfig):
    from .. import problems

    return problems.wave1d(
        n_res=cfg.n_res,
        n_bc=cfg.n_bc,
        learning_rate=cfg.learning_rate,
        network=make_network(cfg, 2, 1),
    )


def _wave_figures(out: Path, prob, params, hist, label):
    from . import _plots

    xs, ts, pred, exact = solution_grid(prob, params)
    _plots.solution_figures(out, xs, ts, pred, exact)


def _make_burgers(cfg: WaveConfig):
    from .. import problems

    return problems.burgers(
        n_res=cfg.n_res, n_bc=cfg.n_bc, learning_rate=cfg.learning_rate, network=make_network(cfg, 2, 1)
    )


def _make_allen_cahn(cfg: WaveConfig):
    from .. import problems

    # jaxpi's periodic embedding of x (period 2) in front of the random features
    net = make_network(cfg, 2, 1, periodic={0: 2.0})
    return problems.allen_cahn(n_res=cfg.n_res, n_bc=cfg.n_bc, learning_rate=cfg.learning_rate, network=net)


def _xt_figures(domain):
    def figures(out: Path, prob, params, hist, label):
        from . import _plots

        xs, ts, pred, exact = solution_grid(prob, params, x_range=domain)
        _plots.solution_figures(out, xs, ts, pred, exact)

    return figures


# problem name -> (builder from the config, solution figures); other experiments register here
PROBLEMS = {
    "wave": (_make_wave, _wave_figures),
    "burgers": (_make_burgers, _xt_figures((-1.0, 1.0))),
    "allen-cahn": (_make_allen_cahn, _xt_figures((-1.0, 1.0))),
}


def _make_qtensor(cfg: WaveConfig):
    from ..problems._qtensor2d import from_config

    return from_config(cfg)


def _qtensor_figures(out: Path, prob, params, hist, label):
    from ..problems._qtensor2d import write_figures

    write_figures(out, prob, params, hist, label)


PROBLEMS["qtensor"] = (_make_qtensor, _qtensor_figures)


def make_problem(cfg: WaveConfig):
    prob = PROBLEMS[cfg.problem][0](cfg)
    return dataclasses.replace(prob, decay_steps=cfg.decay_steps, decay_rate=cfg.decay_rate)


def make_weighting(cfg: WaveConfig, blocks):
    from .._weighting import ntk_weighting

    if cfg.weights == "none":
        return ntk_weighting(blocks, estimator="none")
    if cfg.weights == "gradnorm":
        return ntk_weighting(blocks, estimator="gradnorm", every=cfg.gradnorm_every, ema=cfg.gradnorm_momentum)
    if cfg.weights == "exact":
        return ntk_weighting(blocks, estimator="exact", every=cfg.exact_every)
    if cfg.weights == "hutchinson":
        return ntk_weighting(blocks, estimator="hutchinson", num_probes=cfg.num_probes)
    return ntk_weighting(blocks, estimator="pc", num_probes=cfg.num_probes, gamma=cfg.gamma, fd=cfg.fd, h=cfg.h)


def run_wave(cfg: WaveConfig, out=None, *, progress=True, label=None, figures=True) -> dict:
    """Train once; return (and write to ``out``) the results dictionary.

    ``cfg.x64`` runs in float64 inside a scoped ``jax.enable_x64`` (the global JAX
    configuration is left as it was).
    """
    import jax

    cfg.validate()
    if out is not None:
        check_output_dir(out, name="out")  # before training, not after it
    with jax.enable_x64(bool(cfg.x64) or bool(jax.config.jax_enable_x64)):
        return _run_wave(cfg, out, progress=progress, label=label, figures=figures)


def _run_wave(cfg: WaveConfig, out, *, progress, label, figures) -> dict:
    import jax

    from ._train import train

    prob = make_problem(cfg)
    weighting = make_weighting(cfg, prob.blocks)
    t0 = time.perf_counter()
    res = train(
        prob,
        weighting=weighting,
        optimizer=make_optimizer(cfg),
        steps=cfg.steps,
        seed=cfg.seed,
        log_every=cfg.log_every,
        track_weight_error=cfg.track_weight_error and cfg.weights in ("hutchinson", "pc"),
        progress=progress,
    )
    wall = time.perf_counter() - t0
    hist = res.history
    errs = [e for e in hist["weight_error"] if e is not None]
    result = {
        "label": label or cfg.weights,
        "config": dataclasses.asdict(cfg),
        "metrics": {
            "relative_l2": hist["relative_l2"][-1],
            "wall_time_s": wall,
            "time_per_step_s": res.time_per_step,
            "median_weight_rel_error": float(np.median(errs)) if errs else None,
            "final_weights": hist["weights"][-1],
            "avg_res_sq": hist["avg_res_sq"][-1],
            "avg_grad_sq": hist["avg_grad_sq"][-1],
            "min_weight": hist["min_weight"][-1],
            "max_weight": hist["max_weight"][-1],
            "num_params": int(sum(np.size(x) for x in jax.tree.leaves(res.params))),
        },
        "history": {k: v for k, v in hist.items() if k != "loss_per_step"},
        "versions": _versions(),
    }
    extra = prob.info.get("metrics") if isinstance(prob.info, dict) else None
    if callable(extra):  # problem-specific metrics, e.g. qtensor's relative L2 of q1 and q2
        result["metrics"].update(extra(res.params))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "results.json", json.dumps(result, indent=1))
        if figures:
            write_figures(out, prob, res.params, hist, result["label"], cfg.problem)
    return result


def solution_grid(prob, params, n=101, x_range=(0.0, 1.0)):
    import jax
    import jax.numpy as jnp

    xs, ts = np.linspace(*x_range, n), np.linspace(0, 1, n)
    X, T = np.meshgrid(xs, ts, indexing="ij")
    dt = jax.tree.leaves(params)[0].dtype
    pts = jnp.asarray(np.stack([X.ravel(), T.ravel()], axis=1), dtype=dt)
    pred = np.asarray(jax.vmap(lambda p: prob.apply(params, p)[0])(pts)).reshape(n, n)
    exact = np.asarray(prob.exact_solution(pts[:, 0], pts[:, 1])).reshape(n, n)
    return xs, ts, pred, exact


def write_figures(out: Path, prob, params, hist, label, problem="wave"):
    from . import _plots

    PROBLEMS[problem][1](out, prob, params, hist, label)
    _plots.training_figures(out, hist, label)


COMPARE_RUNS = (
    ("none", {"weights": "none"}),
    ("grad-norm (every 1000)", {"weights": "gradnorm", "gradnorm_every": 1000}),
    ("exact (every 100)", {"weights": "exact", "exact_every": 100}),
    ("pc (every step)", {"weights": "pc"}),
)


def compare(cfg: WaveConfig, out, *, progress=True) -> dict:
    """Run none / grad-norm every 1000 / exact NTK every 100 / pc NTK every step with the same seed."""
    out = Path(check_output_dir(out, name="out"))
    runs = {}
    for label, change in COMPARE_RUNS:
        sub = dataclasses.replace(cfg, **change)
        slug = label.split(" (")[0] + (
            "" if "(" not in label else "_" + label.split("every ")[1].rstrip(")").replace(" ", "")
        )
        print(f"--- {label}", flush=True)
        runs[label] = run_wave(sub, out / slug, progress=progress, label=label)
    base = runs["none"]["metrics"]["time_per_step_s"]
    rows = []
    for label, r in runs.items():
        m = r["metrics"]
        rows.append(
            {
                "run": label,
                "relative_l2": m["relative_l2"],
                "wall_time_s": m["wall_time_s"],
                "time_per_step_ms": 1e3 * m["time_per_step_s"],
                "step_time_vs_none": m["time_per_step_s"] / base,
                "median_weight_rel_error": m["median_weight_rel_error"],
                **{k: v for k, v in m.items() if k.startswith("relative_l2_")},
            }
        )
    table = format_table(rows, cfg)
    print(table)
    summary = {"config": dataclasses.asdict(cfg), "table": rows, "versions": _versions()}
    write_text_atomic(out / "compare.json", json.dumps(summary, indent=1))
    write_text_atomic(out / "compare.md", table + "\n")
    from . import _plots

    _plots.compare_figure(out, {k: v["history"] for k, v in runs.items()})
    return summary


def describe(cfg: WaveConfig) -> str:
    """One line naming the network, the optimizer and the batch of a configuration."""
    d_in, d_out, pts = (2, 1, f"4 x {cfg.n_bc} boundary/initial")
    if cfg.problem == "qtensor":
        d_in, d_out, pts = (3, 2, f"{cfg.n_bc} initial + 4 x {cfg.n_bc} boundary")
    elif cfg.problem != "wave":
        d_in, d_out, pts = (2, 1, f"{cfg.n_bc} per initial/boundary piece")
    net = f"MLP [{d_in}, {', '.join([str(cfg.width)] * cfg.depth)}, {d_out}] tanh"
    if cfg.fourier and cfg.problem != "qtensor":
        net = f"{cfg.fourier} Fourier features (sigma {cfg.fourier_sigma:.3g}) + " + net
    if cfg.rwf:
        net += " with RWF"
    warm = f", {cfg.warmup_steps} warm-up steps" if cfg.warmup_steps else ""
    opt = (
        f"{cfg.steps} {'SOAP' if cfg.optimizer == 'soap' else 'Adam'} steps (lr {cfg.learning_rate:g} x "
        f"{cfg.decay_rate:g} every {cfg.decay_steps}{warm})"
    )
    if cfg.optimizer in ("lm", "engd"):
        opt = f"{cfg.steps} {'Levenberg-Marquardt' if cfg.optimizer == 'lm' else 'ENGD'} steps (grid line search)"
    return f"{cfg.problem}, {net}, {opt}, seed {cfg.seed}, batch {cfg.n_res} interior + {pts} points (redrawn)"


def format_table(rows, cfg) -> str:
    extra = [k for k in (rows[0] if rows else {}) if k.startswith("relative_l2_")]
    head = (
        f"{describe(cfg)}\n\n"
        "| run | relative L2 | "
        + "".join(f"rel. L2 {k[12:]} | " for k in extra)
        + "wall time (s) | time/step (ms) | step time vs none | median weight rel. error vs exact |\n"
        "|---|---|---|---|---|---|" + "---|" * len(extra)
    )
    lines = [head]
    for r in rows:
        err = "-" if r["median_weight_rel_error"] is None else f"{r['median_weight_rel_error']:.3f}"
        lines.append(
            f"| {r['run']} | {r['relative_l2']:.3e} | "
            + "".join(f"{r[k]:.3e} | " for k in extra)
            + f"{r['wall_time_s']:.1f} | {r['time_per_step_ms']:.2f} | {r['step_time_vs_none']:.2f} | {err} |"
        )
    return "\n".join(lines)


def fd_bias(out, *, width=64, depth=3, seed=0, num_probes=16, hs=None) -> list:
    """Relative bias of the finite-difference ``||J_b v||^2`` (summed over blocks) vs ``h``.

    Runs in float32 and float64 (inside a scoped ``jax.enable_x64``; the global JAX
    configuration is left as it was) on the wave network at its initialisation, for
    forward and central differences.
    """
    import jax

    with jax.enable_x64(True):
        return _fd_bias(out, width=width, depth=depth, seed=seed, num_probes=num_probes, hs=hs)


def _fd_bias(out, *, width, depth, seed, num_probes, hs) -> list:
    import jax
    import jax.numpy as jnp

    import sketchtrace as st

    from .. import problems

    hs = list(np.logspace(-1, -8, 15)) if hs is None else list(hs)
    rows = []
    layers = (2,) + (width,) * depth + (1,)
    for dtype in (jnp.float32, jnp.float64):
        prob = problems.wave1d(layers=layers, dtype=dtype)
        key = jax.random.key(seed)
        params = prob.init_params(key)
        batch = prob.sample_batch(jax.random.fold_in(key, 1))
        for scheme in ("forward", "central"):
            r = st.finite_difference_bias(
                jax.random.fold_in(key, 2),
                prob.blocks.residuals,
                params,
                batch,
                h=hs,
                scheme=scheme,
                num_probes=num_probes,
            )
            exact_total = np.asarray(r.exact).sum(axis=1)
            fd_total = np.asarray(r.fd).sum(axis=2)
            rel = (fd_total.mean(axis=1) - exact_total.mean()) / exact_total.mean()
            rows.append(
                {
                    "dtype": jnp.dtype(dtype).name,
                    "scheme": scheme,
                    "h": hs,
                    "relative_bias": rel.tolist(),
                    "default_h": st.default_step(dtype, scheme),
                }
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "fd_bias.json", json.dumps(rows, indent=1))
    from . import _plots

    _plots.fd_bias_figure(out, rows)
    print("relative bias of finite-difference ||J v||^2 (wave network, summed over blocks)")
    print("h         " + "  ".join(f"{r['dtype'][-2:]}/{r['scheme'][:3]:>3}" for r in rows))
    for i, h in enumerate(hs):
        print(f"{h:8.1e}  " + "  ".join(f"{r['relative_bias'][i]:+9.1e}" for r in rows))
    return rows
