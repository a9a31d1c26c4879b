"""An optax training loop for NTK-weighted PINNs, with diagnostics and bit-exact resume."""

from __future__ import annotations

import dataclasses
import pickle
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._ntk import ntk_traces, ntk_weights, residual_rows
from .._weighting import NTKWeighting, ntk_weighting


class TrainState(NamedTuple):
    """Everything needed to continue training bit for bit (a pytree of arrays)."""

    step: Any
    params: Any
    params_prev: Any
    opt_state: Any
    weighting: Any
    key: Any  # raw uint32 key data
    sum_res_sq: Any
    sum_grad_sq: Any
    min_weight: Any
    max_weight: Any
    residuals: Any  # residual dict of the last step (reused by pc when the batch is fixed)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    params : pytree
        Final parameters.
    state : TrainState
        Final state (pass it to ``train(..., resume=...)`` or :func:`save_checkpoint`).
    history : dict
        Lists over log steps: ``step``, ``loss`` (weighted), ``block_loss`` (dict per
        block, unweighted), ``weights`` (dict), ``weight_error`` (max over blocks of
        ``|w - w_exact| / w_exact`` against exact weights at the same parameters, or
        ``None``), ``exact_weights`` (those exact weights, dict, or ``None``),
        ``avg_res_sq`` and ``avg_grad_sq`` (running averages of
        ``||R||^2`` and ``||grad L||^2`` since step 0: the diagnostics of the
        convergence theorem), ``min_weight`` / ``max_weight`` (extremes seen so far),
        ``relative_l2`` (if the problem has an exact solution), ``time`` (seconds).
        ``loss_per_step`` holds the weighted loss of every step.
    wall_time : float
        Seconds spent in this call.
    time_per_step : float
        Median seconds per step, excluding the first (compiling) step of this call.
    """

    params: Any
    state: TrainState
    history: dict
    wall_time: float
    time_per_step: float


def save_checkpoint(path, state: TrainState):
    """Write a :class:`TrainState` to ``path`` (pickle of NumPy arrays; exact bits)."""
    with open(path, "wb") as f:
        pickle.dump(jax.device_get(state), f)


def load_checkpoint(path) -> TrainState:
    """Read a state written by :func:`save_checkpoint` (only load files you trust: pickle)."""
    with open(path, "rb") as f:
        state = pickle.load(f)
    if not isinstance(state, TrainState):
        raise ValueError(f"{path}: not a pinn_adapters training checkpoint")
    return jax.tree.map(jnp.asarray, state)


def _make_weighting(weighting, blocks):
    if isinstance(weighting, NTKWeighting):
        return weighting
    if weighting is None:
        weighting = "none"
    if isinstance(weighting, str):
        return ntk_weighting(blocks, estimator=weighting)
    raise TypeError(f"weighting must be None, an estimator name or pa.ntk_weighting(...); got {weighting!r}")


def _keys_at(raw_key, step):
    k = jax.random.fold_in(jax.random.wrap_key_data(raw_key), step)
    return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


_CACHE: list = []  # [(objects, compiled)]: reuse compiled steps across train() calls (resume, sweeps)


def _cached(objects, build):
    for objs, fns in _CACHE:
        if len(objs) == len(objects) and all(a is b for a, b in zip(objs, objects)):
            return fns
    fns = build()
    _CACHE.append((objects, fns))
    del _CACHE[:-8]
    return fns


def _jitted_rel_l2(problem):
    if not hasattr(problem, "relative_l2"):
        return None
    return _cached((problem, "rel_l2"), lambda: jax.jit(problem.relative_l2))


def _compiled(problem, w, optimizer, resample, reuse_residuals):
    return _cached((problem, w, optimizer, resample, reuse_residuals),
                   lambda: _build(problem, w, optimizer, resample, reuse_residuals))


def _build(problem, w, optimizer, resample, reuse_residuals):
    import optax

    blocks = problem.blocks
    names = blocks.names
    mean = blocks.reduction == "mean"
    cfg = w.config

    @jax.jit
    def step_fn(state, batch0):
        kb, kw = _keys_at(state.key, state.step)
        batch = problem.sample_batch(kb) if resample else batch0
        R, vjp = jax.vjp(lambda p: blocks.residuals(p, batch), state.params)
        extra = {}
        if reuse_residuals:
            extra["residuals"] = R
            if not resample:  # same batch as the previous step: its residuals are R(params_prev)
                first = state.step == 0
                extra["residuals_prev"] = {n: jnp.where(first, R[n], state.residuals[n]) for n in names}
        weights, ws = w.update(kw, state.weighting, state.params_prev, state.params, batch, **extra)
        losses = blocks.losses(R)
        loss = sum(weights[n] * losses[n] for n in names)
        cot = {n: weights[n] * 2.0 * R[n] / (R[n].shape[0] if mean else 1) for n in names}
        (grads,) = vjp(cot)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        gsq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
        wv = jnp.stack([weights[n] for n in names])
        new = TrainState(
            state.step + 1, new_params, state.params, opt_state, ws, state.key,
            state.sum_res_sq + sum(losses.values()), state.sum_grad_sq + gsq,
            jnp.minimum(state.min_weight, jnp.min(wv)), jnp.maximum(state.max_weight, jnp.max(wv)), R,
        )
        return new, loss, losses, weights

    @jax.jit
    def exact_weight_error(params, batch, traces):
        rows = residual_rows(blocks, params, batch)
        tr = ntk_traces(None, blocks, params, batch, method="exact", chunk_size=cfg.get("chunk_size", 256))
        sizes = rows if cfg.get("rule", "wang2022") == "jaxpi" else None
        kw = dict(rule=cfg.get("rule", "wang2022"), eps=cfg.get("eps", 1e-6), sizes=sizes)
        exact_w = ntk_weights({n: tr[n].value for n in names}, **kw)
        if cfg.get("normalize") == "mean":
            traces = {n: traces[n] * rows[n] for n in names}
        est_w = ntk_weights(traces, **kw)
        err = jnp.max(jnp.stack([jnp.abs(est_w[n] - exact_w[n]) / exact_w[n] for n in names]))
        return err, exact_w

    return step_fn, exact_weight_error


def train(
    problem,
    *,
    weighting=None,
    steps,
    optimizer=None,
    seed=0,
    log_every=100,
    params=None,
    resample=True,
    track_weight_error=False,
    resume=None,
    checkpoint=None,
    checkpoint_every=None,
    progress=True,
    reuse_residuals=True,
):
    """Train a physics-informed network with (optionally) NTK-weighted losses.

    Each step: residuals ``R`` at the current parameters on the step's batch (one
    forward pass, shared by the weighting and the gradient), weights from
    ``weighting.update(key, state, params_prev, params, batch, residuals=R)``, the
    gradient of ``sum_b w_b reduce(r_b^2)`` with the weights held fixed, and an optax
    update.

    Parameters
    ----------
    problem : pinn_adapters.problems.Problem
        Or any object with ``blocks``, ``init_params(key)``, ``sample_batch(key)``
        (and optionally ``relative_l2(params)`` and ``default_optimizer()``).
    weighting : NTKWeighting or {"none", "exact", "hutchinson", "pc"} or None
        The loss weighting (a name uses :func:`ntk_weighting`'s defaults).
    steps : int
        Total number of optimizer steps (when resuming: the total, counting the
        steps already done).
    optimizer : optax.GradientTransformation, optional
        Default: ``problem.default_optimizer()`` (Adam with step decay).
    seed : int
        Seeds the initial parameters, the batches and the probes (step ``t`` uses
        ``fold_in(key, t)``, so a resumed run draws the same randomness).
    log_every : int
        Record the history every ``log_every`` steps (and at the last step).
    params : pytree, optional
        Initial parameters (default ``problem.init_params``).
    resample : bool
        Draw a new batch every step (``True``) or keep the first one.
    track_weight_error : bool
        At log steps, compute exact weights (chunked per-point gradients) and record
        the relative error of the estimator's weights (before ``ema``).
    resume : TrainState or path, optional
        Continue from a state (bit-for-bit identical to an uninterrupted run with
        the same arguments).
    checkpoint : path, optional
        Write the state there every ``checkpoint_every`` steps and at the end.
    progress : bool
        Show a tqdm progress bar.
    reuse_residuals : bool
        Pass the training residuals to the weighting (saves an evaluation for
        finite-difference pc); with ``resample=False`` the previous step's
        residuals are passed as ``residuals_prev`` too.

    Returns
    -------
    TrainResult

    References
    ----------
    M. Hirsch, F. Pichi, arXiv:2511.15530 (2025) (diagnostics: running averages of
    ``||R||^2`` and ``||grad L||^2``).
    """
    import optax

    blocks = problem.blocks
    w = _make_weighting(weighting, blocks)
    if optimizer is None:
        optimizer = problem.default_optimizer() if hasattr(problem, "default_optimizer") else optax.adam(1e-3)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int; got {steps!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive int; got {log_every!r}")
    names = blocks.names
    base = jax.random.key(seed)
    batch0 = problem.sample_batch(jax.random.fold_in(base, 0))

    if resume is not None:
        state = load_checkpoint(resume) if isinstance(resume, (str, bytes)) or hasattr(resume, "__fspath__") else resume
        state = jax.tree.map(jnp.asarray, state)
    else:
        k_init, k_w = jax.random.split(jax.random.fold_in(base, 10**9))
        p0 = problem.init_params(k_init) if params is None else params
        ws = _cached((w, "init"), lambda: jax.jit(w.init))(k_w, p0, batch0)
        dtype = ravel_pytree(p0)[0].dtype
        wv = jnp.stack([ws.weights[n] for n in names])
        r0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(blocks.residuals, p0, batch0))
        state = TrainState(
            jnp.zeros((), jnp.int32), p0, p0, optimizer.init(p0), ws, jax.random.key_data(base),
            jnp.zeros((), dtype), jnp.zeros((), dtype), jnp.min(wv), jnp.max(wv), r0,
        )

    step_fn, exact_weight_error = _compiled(problem, w, optimizer, resample, reuse_residuals)
    rel_l2 = _jitted_rel_l2(problem)

    def batch_at(raw_key, step):
        return problem.sample_batch(_keys_at(raw_key, step)[0]) if resample else batch0

    history = {k: [] for k in ("step", "loss", "block_loss", "weights", "weight_error", "exact_weights", "avg_res_sq",
                               "avg_grad_sq", "min_weight", "max_weight", "relative_l2", "time")}
    history["loss_per_step"] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=int(state.step), desc=f"{getattr(problem, 'name', 'pinn')}", leave=False)
    start = time.perf_counter()
    step_times = []
    losses_dev = []
    while int(state.step) < steps:
        t0 = time.perf_counter()
        state, loss, losses, weights = step_fn(state, batch0)
        losses_dev.append(loss)
        t = int(state.step)
        if t % log_every == 0 or t == steps:
            loss_v = float(loss)
            if not np.isfinite(loss_v):
                raise FloatingPointError(
                    f"train: the loss became non-finite ({loss_v}) at step {t}; lower the learning rate "
                    "or check the residuals"
                )
            history["step"].append(t)
            history["loss"].append(loss_v)
            history["block_loss"].append({n: float(losses[n]) for n in names})
            history["weights"].append({n: float(weights[n]) for n in names})
            err = exact_w = None
            if track_weight_error and w.config.get("estimator", "none") not in ("none", "exact"):
                batch = batch_at(state.key, t - 1)
                err, exact_w = exact_weight_error(state.params_prev, batch, state.weighting.traces)
                err, exact_w = float(err), {n: float(exact_w[n]) for n in names}
            history["weight_error"].append(err)
            history["exact_weights"].append(exact_w)
            history["avg_res_sq"].append(float(state.sum_res_sq) / t)
            history["avg_grad_sq"].append(float(state.sum_grad_sq) / t)
            history["min_weight"].append(float(state.min_weight))
            history["max_weight"].append(float(state.max_weight))
            rel = float(rel_l2(state.params)) if rel_l2 is not None else None
            history["relative_l2"].append(rel)
            history["time"].append(time.perf_counter() - start)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_v:.3e}", rel_l2=f"{rel:.2e}" if rel is not None else "-")
        else:
            jax.block_until_ready(loss)
        step_times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
        if checkpoint is not None and checkpoint_every and t % checkpoint_every == 0:
            save_checkpoint(checkpoint, state)
    if bar is not None:
        bar.close()
    if checkpoint is not None:
        save_checkpoint(checkpoint, state)
    history["loss_per_step"] = [float(x) for x in losses_dev]
    wall = time.perf_counter() - start
    tps = float(np.median(step_times[1:])) if len(step_times) > 1 else (step_times[0] if step_times else 0.0)
    return TrainResult(state.params, state, history, wall, tps)
