"""``pa.train`` with a second-order optimizer: :func:`pinn_adapters.second_order.levenberg_marquardt`
run on a problem, its history in :func:`pinn_adapters.train`'s format (``keys``: its history keys;
this module does not import ``_train``, which calls it)."""

from __future__ import annotations

import jax
import numpy as np

from .. import second_order as so


def _history(records, names, log_every, steps, keys):
    """``TrainResult`` history (lists over log steps) from the per-step records of an LM run."""
    h = {k: [] for k in keys} | {"damping": [], "accepted": [], "cg_iterations": [], "step_size": []}
    lo = hi = None
    for rec in records:
        w = rec.get("weights") or dict.fromkeys(names, 1.0)
        lo = min([*w.values()] + ([] if lo is None else [lo]))
        hi = max([*w.values()] + ([] if hi is None else [hi]))
        t = rec["step"]
        if not (t % log_every == 0 or t == steps or rec is records[-1]):
            continue
        h["step"].append(t)
        h["loss"].append(rec["loss"])
        h["weights"].append(w)
        h["min_weight"].append(lo)
        h["max_weight"].append(hi)
        h["relative_l2"].append(rec.get("relative_l2"))
        h["time"].append(rec["time"])
        for k in ("damping", "accepted", "cg_iterations", "step_size"):
            h[k].append(rec[k])
        for k in ("block_loss", "weight_error", "exact_weights", "avg_res_sq", "avg_grad_sq", "rejected"):
            h[k].append(None)  # first-order diagnostics, not computed by the second-order loop
    h["loss_per_step"] = [rec["loss"] for rec in records]
    return h


def _bar(progress, steps, name):
    """``(callback, close)``: a tqdm bar over the trial steps (loss, damping, relative L2 when logged)."""
    if not progress:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=name, leave=False)

    def callback(rec):
        if bar.n == 0 and rec["step"] > 1:  # resumed: start at the checkpoint's step
            bar.update(rec["step"] - 1)
        post = {"loss": f"{rec['loss']:.3g}", "mu": f"{rec['damping']:.2g}"}
        if rec.get("relative_l2") is not None:
            post["rel_l2"] = f"{rec['relative_l2']:.3g}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    return callback, bar.close


def train_second_order(trainer, opt: so.SecondOrder, *, keys, steps, seed, log_every, params, resume, checkpoint,
                       checkpoint_every, progress=False):  # fmt: skip
    """Run ``opt`` for ``trainer`` (its problem, weighting and ``resample``); arguments as in
    ``Trainer.train`` (``resume`` / ``checkpoint``: second-order checkpoint files; ``progress``: a tqdm
    bar). Returns the ``TrainResult`` fields ``(params, state, history, wall_time, time_per_step)``."""
    problem = trainer.problem
    base = jax.random.key(seed)
    batch0 = problem.sample_batch(jax.random.fold_in(base, 0))
    if params is None:  # the same initial parameters as a first-order run of this seed
        params = problem.init_params(jax.random.split(jax.random.fold_in(base, 10**9))[0])
    weighting = None if trainer.weighting.config.get("estimator") == "none" else trainer.weighting
    if resume is not None and not isinstance(resume, (str, bytes)) and not hasattr(resume, "__fspath__"):
        raise TypeError(f"resume: a second-order run resumes from a checkpoint file; got {type(resume).__name__}")
    callback, close = _bar(progress, steps, getattr(problem, "name", "pinn"))
    try:
        res = opt.run(
            jax.random.fold_in(base, 1),
            problem.blocks,
            params,
            batch0,
            steps=steps,
            weighting=weighting,
            sample_batch=problem.sample_batch if trainer.resample else None,
            error_fn=trainer._rel_l2,
            log_every=log_every,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            callback=callback,
        )
    finally:
        close()
    records = res.history
    times = np.diff([0.0] + [r["time"] for r in records])
    tps = float(np.median(times[1:])) if len(times) > 1 else (float(times[0]) if len(times) else 0.0)
    wall = float(records[-1]["time"]) if records else 0.0
    hist = _history(records, problem.blocks.names, log_every, steps, keys)
    return res.params, res, hist, wall, tps
