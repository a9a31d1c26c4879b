"""An optax training loop for NTK-weighted PINNs, with diagnostics and bit-exact resume.

Checkpoints (:func:`save_checkpoint`) are arrays plus a JSON manifest, written
atomically (see :mod:`pinn_adapters.app._checkpoint`); a non-finite loss, weight
or parameter stops training at the step where it first appears
(:class:`NonFiniteError`), and non-finite state is never checkpointed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from sketchtrace.validation import check_bool, check_int

from .._ntk import ntk_traces, ntk_weights, residual_rows
from .._weighting import NTKWeighting, ntk_weighting
from . import _checkpoint as ckpt


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
    bad_step: Any  # 0, or the first step (1-based) whose loss, weights or parameters were not finite
    bad_block: Any  # index of the block blamed for it (len(blocks) = the parameters/optimizer)


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss, weight or parameter.

    Attributes
    ----------
    step : int
        The step (1-based, as in ``history["step"]``) that produced it.
    block : str
        The residual block blamed (its loss, weight or gradient was not finite), or
        ``"parameters"`` when every block was finite but the optimizer update was not.
    state : TrainState
        The last finite state (after step ``step - 1``), with the non-finite flag
        cleared, so it can be saved or resumed from (e.g. with a lower learning rate).
    """

    def __init__(self, message, step, block, state):
        super().__init__(message)
        self.step, self.block, self.state = step, block, state


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
        ``rejected`` (weight refreshes rejected so far because their traces were not
        finite), ``relative_l2`` (if the problem has an exact solution), ``time``
        (seconds). ``loss_per_step`` holds the weighted loss of every step.
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


HISTORY_KEYS = (
    "step",
    "loss",
    "block_loss",
    "weights",
    "weight_error",
    "exact_weights",
    "avg_res_sq",
    "avg_grad_sq",
    "min_weight",
    "max_weight",
    "rejected",
    "relative_l2",
    "time",
)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, state: TrainState, *, manifest=None):
    """Write a :class:`TrainState` to ``path``, atomically, in a format that runs no code on load.

    One ``.npz`` archive: the state's arrays (exact bits) plus a JSON manifest with the
    format version, the library versions, the leaf paths/shapes/dtypes and
    ``manifest`` (what :func:`train` records: the problem, the architecture, the
    weighting configuration and the seed). The file is written next to ``path``,
    fsynced and renamed over it, so the previous checkpoint survives until the new
    one is complete. Non-finite parameters or optimizer state are refused.
    """
    path = ckpt.check_writable(path)
    bad = int(np.asarray(state.bad_step))
    finite = all(
        bool(np.all(np.isfinite(np.asarray(x))))
        for x in jax.tree.leaves((state.params, state.opt_state))
        if np.issubdtype(np.asarray(x).dtype, np.inexact)
    )
    if bad or not finite:
        raise ValueError(f"save_checkpoint: refusing to write non-finite training state to {path!r}")
    ckpt.write_checkpoint(path, state, {"step": int(np.asarray(state.step)), **ckpt.jsonable(manifest or {})})


def load_checkpoint(path, like, *, expect=None) -> TrainState:
    """Read a state written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path
    like : TrainState
        A template with the expected structure, shapes and dtypes (arrays or
        ``jax.ShapeDtypeStruct``; :func:`train` builds it with ``jax.eval_shape``).
    expect : dict, optional
        Manifest fields (``problem``, ``architecture``, ``weighting``, ``training``)
        that must match; a mismatch raises ``ValueError`` naming the field.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing, truncated, corrupt or foreign file, or a mismatch, with ``path`` named.
    """
    manifest, leaves = ckpt.read_checkpoint(path)
    ckpt.check_manifest(os.fspath(path), manifest, expect or {})
    return ckpt.restore_leaves(os.fspath(path), manifest, leaves, like)


def _run_manifest(problem, w, params_template, seed, resample, reuse_residuals) -> dict:
    """What a checkpoint records about the run (compared field by field on resume)."""
    info = getattr(problem, "info", None)
    return {
        "problem": {
            "name": getattr(problem, "name", type(problem).__name__),
            "batch_sizes": getattr(problem, "batch_sizes", None),
            "info": info if isinstance(info, dict) else None,
            "blocks": list(problem.blocks.names),
        },
        "architecture": {"layers": getattr(problem, "layers", None), "params": ckpt.leaf_table(params_template)},
        "weighting": dict(w.config),
        "training": {"seed": seed, "resample": resample, "reuse_residuals": reuse_residuals},
    }


# ----------------------------------------------------------------------------- argument checks


def _check_int(name, value, minimum, *, optional=False):
    if optional and value is None:
        return None
    return check_int(value, name=name, minimum=minimum)  # NumPy integers are accepted


def _make_weighting(weighting, blocks):
    if isinstance(weighting, NTKWeighting):
        return weighting
    if weighting is None:
        weighting = "none"
    if isinstance(weighting, str):
        return ntk_weighting(blocks, estimator=weighting)
    raise TypeError(f"weighting must be None, an estimator name or pa.ntk_weighting(...); got {weighting!r}")


def _is_path(x) -> bool:
    return isinstance(x, (str, bytes)) or hasattr(x, "__fspath__")


def _keys_at(raw_key, step):
    k = jax.random.fold_in(jax.random.wrap_key_data(raw_key), step)
    return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


def _rel_l2_fn(fn):
    """``relative_l2`` as documented: a function of the parameters returning a Python float or a
    scalar array. It is jitted when it traces; one that leaves JAX (``float(...)``, NumPy) runs as given."""
    jitted = jax.jit(fn)

    def call(params):
        nonlocal jitted
        if jitted is not None:
            try:
                return _scalar_l2(jitted(params))
            except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
                jitted = None  # not traceable: call it eagerly from now on
        return _scalar_l2(fn(params))

    return call


def _scalar_l2(value):
    if np.ndim(value) != 0:
        raise ValueError(f"problem.relative_l2 must return a scalar; got shape {np.shape(value)}")
    return value


def _all_finite(tree):
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def _guard(state, new, losses, weights, names):
    """Keep ``state`` (flagging the step and the block) unless ``new`` is entirely finite.

    Once a step was flagged, every later step is a no-op, so the state stays the last
    finite one until the host reads the flag (at log and checkpoint steps).
    """
    bad = jnp.stack(
        [~(jnp.isfinite(losses[n]) & jnp.isfinite(weights[n]) & jnp.isfinite(weights[n] * losses[n])) for n in names]
    )
    finite = ~jnp.any(bad) & _all_finite((new.params, new.opt_state))
    take = finite & (state.bad_step == 0)
    out = jax.tree.map(lambda a, b: jnp.where(take, a, b), new, state)
    first = (state.bad_step == 0) & ~finite
    block = jnp.where(jnp.any(bad), jnp.argmax(bad), len(names)).astype(jnp.int32)
    return out._replace(
        bad_step=jnp.where(first, state.step + 1, state.bad_step).astype(jnp.int32),
        bad_block=jnp.where(first, block, state.bad_block).astype(jnp.int32),
    )


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
            state.step + 1,
            new_params,
            state.params,
            opt_state,
            ws,
            state.key,
            state.sum_res_sq + sum(losses.values()),
            state.sum_grad_sq + gsq,
            jnp.minimum(state.min_weight, jnp.min(wv)),
            jnp.maximum(state.max_weight, jnp.max(wv)),
            R,
            state.bad_step,
            state.bad_block,
        )
        return _guard(state, new, losses, weights, names), loss, losses, weights

    @jax.jit
    def exact_weight_error(params, batch, traces):
        rows = residual_rows(blocks, params, batch)
        tr = ntk_traces(None, blocks, params, batch, method="exact", chunk_size=cfg.get("chunk_size", 256))
        sizes = rows if cfg.get("rule", "wang2022") == "jaxpi" else None
        kw = {"rule": cfg.get("rule", "wang2022"), "eps": cfg.get("eps", 1e-6), "sizes": sizes}
        exact_w = ntk_weights({n: tr[n].value for n in names}, **kw)
        if cfg.get("normalize") == "mean":
            traces = {n: traces[n] * rows[n] for n in names}
        est_w = ntk_weights(traces, **kw)
        err = jnp.max(jnp.stack([jnp.abs(est_w[n] - exact_w[n]) / exact_w[n] for n in names]))
        return err, exact_w

    return step_fn, exact_weight_error


# ----------------------------------------------------------------------------- state


def _init_state(problem, w_init, optimizer, params, base, batch0):
    """The state of step 0 (also evaluated abstractly, as the template a checkpoint must match);
    ``w_init`` is the weighting's ``init`` (jitted by :class:`Trainer`)."""
    names = problem.blocks.names
    k_init, k_w = jax.random.split(jax.random.fold_in(base, 10**9))
    p0 = problem.init_params(k_init) if params is None else params
    ws = w_init(k_w, p0, batch0)
    dtype = ravel_pytree(p0)[0].dtype
    wv = jnp.stack([ws.weights[n] for n in names])
    r0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(problem.blocks.residuals, p0, batch0))
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        zero,
        p0,
        p0,
        optimizer.init(p0),
        ws,
        jax.random.key_data(base),
        jnp.zeros((), dtype),
        jnp.zeros((), dtype),
        jnp.min(wv),
        jnp.max(wv),
        r0,
        zero,
        zero,
    )


def _resumed_state(resume, template, manifest):
    """The state to continue from: a checkpoint file (checked against the manifest) or a TrainState."""
    if _is_path(resume):
        return load_checkpoint(resume, template, expect=manifest)
    if not isinstance(resume, TrainState):
        raise TypeError(f"resume must be a checkpoint path or a TrainState; got {type(resume).__name__}")
    want, got = ckpt.leaf_table(template), ckpt.leaf_table(resume)
    if want != got:
        diff = next(((g, t) for g, t in zip(got, want) if g != t), (len(got), len(want)))
        raise ValueError(f"resume: the TrainState does not match this run's state (first difference: {diff})")
    return jax.tree.map(jnp.asarray, resume)


def _blame(problem, state, batch):
    """The block whose gradient is not finite at ``state`` (host-side diagnosis after a failure)."""
    blocks = problem.blocks
    for n in blocks.names:
        g = jax.grad(lambda p, n=n: blocks.losses(blocks.residuals(p, batch))[n])(state.params)
        if not bool(_all_finite(g)):
            return n
    return "parameters"


def _raise_non_finite(problem, state, batch_at, checkpoint):
    """Raise :class:`NonFiniteError` for a flagged state (which holds the last finite step)."""
    names = problem.blocks.names
    step, code = int(state.bad_step), int(state.bad_block)
    block = names[code] if code < len(names) else _blame(problem, state, batch_at(state.key, step - 1))
    what = "loss or weight" if code < len(names) else "gradient or parameter update"
    saved = f"; the last checkpoint ({checkpoint}) is finite" if checkpoint is not None else ""
    raise NonFiniteError(
        f"train: non-finite {what} at step {step} in block {block!r}: training stopped there and the last finite "
        f"state (after step {step - 1}) is in this error's .state{saved}. Lower the learning rate or check the "
        f"residuals and points of block {block!r}",
        step,
        block,
        state._replace(bad_step=jnp.zeros((), jnp.int32), bad_block=jnp.zeros((), jnp.int32)),
    )


# ----------------------------------------------------------------------------- the loop


class _Run(NamedTuple):
    """What the loop needs besides the state (built once per :func:`train` call)."""

    problem: Any
    w: Any
    step_fn: Any
    exact_weight_error: Any
    rel_l2: Any
    batch_at: Any
    track_weight_error: bool
    checkpoint: Any
    checkpoint_every: Any
    manifest: dict


def _record(run, history, state, loss, losses, weights, start):
    """Append the log-step entries of ``history`` (host transfers happen only here)."""
    names = run.problem.blocks.names
    t = int(state.step)
    history["step"].append(t)
    history["loss"].append(float(loss))
    history["block_loss"].append({n: float(losses[n]) for n in names})
    history["weights"].append({n: float(weights[n]) for n in names})
    err = exact_w = None
    if run.track_weight_error and run.w.config.get("estimator", "none") not in ("none", "exact", "gradnorm"):
        err, exact_w = run.exact_weight_error(state.params_prev, run.batch_at(state.key, t - 1), state.weighting.traces)
        err, exact_w = float(err), {n: float(exact_w[n]) for n in names}
    history["weight_error"].append(err)
    history["exact_weights"].append(exact_w)
    history["avg_res_sq"].append(float(state.sum_res_sq) / t)
    history["avg_grad_sq"].append(float(state.sum_grad_sq) / t)
    history["min_weight"].append(float(state.min_weight))
    history["max_weight"].append(float(state.max_weight))
    rejected = getattr(state.weighting, "rejected", None)
    history["rejected"].append(None if rejected is None else int(rejected))
    history["relative_l2"].append(float(run.rel_l2(state.params)) if run.rel_l2 is not None else None)
    history["time"].append(time.perf_counter() - start)


def _postfix(history):
    rel, rej = history["relative_l2"][-1], history["rejected"][-1]
    return {
        "loss": f"{history['loss'][-1]:.3e}",
        "rel_l2": "-" if rel is None else f"{rel:.2e}",
        "rejected": "-" if rej is None else rej,
    }


def _loop(run, state, batch0, steps, log_every, bar):
    """Run the steps; read the non-finite flag only at log steps, checkpoint steps and the end."""
    history = {k: [] for k in HISTORY_KEYS}
    start = time.perf_counter()
    step_times, losses_dev = [], []
    for t in range(int(state.step) + 1, steps + 1):
        t0 = time.perf_counter()
        state, loss, losses, weights = run.step_fn(state, batch0)
        losses_dev.append(loss)
        log = t % log_every == 0 or t == steps
        save = run.checkpoint is not None and (t == steps or (run.checkpoint_every and t % run.checkpoint_every == 0))
        if log or save:
            if int(state.bad_step):
                _raise_non_finite(run.problem, state, run.batch_at, run.checkpoint)
            if log:
                _record(run, history, state, loss, losses, weights, start)
                if bar is not None:
                    bar.set_postfix(_postfix(history))
            if save:
                save_checkpoint(run.checkpoint, state, manifest=run.manifest)
        else:
            jax.block_until_ready(loss)
        step_times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    if int(state.bad_step):
        _raise_non_finite(run.problem, state, run.batch_at, run.checkpoint)
    history["loss_per_step"] = [float(x) for x in losses_dev]
    return state, history, step_times, time.perf_counter() - start


class Trainer:
    """One training configuration, compiled once and run as often as needed.

    ``Trainer(problem, weighting=..., optimizer=...)`` holds the jitted training step, the
    weighting's ``init``, the exact-weight check and the jitted error function;
    :meth:`train` runs it (any seed, steps, resume or checkpoint) without recompiling, so
    seeds of a sweep, a resumed run and its reference share one compilation. :func:`train`
    is ``Trainer(...).train(...)`` and compiles on every call. Arguments as in :func:`train`.
    """

    def __init__(self, problem, *, weighting=None, optimizer=None, resample=True, reuse_residuals=True):
        import optax

        from ..second_order import as_second_order

        self.problem = problem
        self.weighting = _make_weighting(weighting, problem.blocks)
        self.second_order = as_second_order(optimizer)  # None: an optax transformation
        if optimizer is None:
            optimizer = problem.default_optimizer() if hasattr(problem, "default_optimizer") else optax.adam(1e-3)
        self.optimizer = optimizer
        self.resample = check_bool(resample, name="resample")
        self.reuse_residuals = check_bool(reuse_residuals, name="reuse_residuals")
        self._init = jax.jit(self.weighting.init)
        self._rel_l2 = _rel_l2_fn(problem.relative_l2) if hasattr(problem, "relative_l2") else None
        self._step = None

    def _step_fns(self):
        if self.second_order is not None:
            raise TypeError("a second-order Trainer has no first-order step functions (use Trainer.train)")
        if self._step is None:  # built on first use: a Trainer that only validates compiles nothing
            self._step = _build(self.problem, self.weighting, self.optimizer, self.resample, self.reuse_residuals)
        return self._step

    def initial_state(self, seed=0, params=None, batch0=None) -> TrainState:
        """The state of step 0 for ``seed`` (``params``: initial parameters, default the problem's)."""
        base = jax.random.key(_check_int("seed", seed, 0))
        if batch0 is None:
            batch0 = self.problem.sample_batch(jax.random.fold_in(base, 0))
        return _init_state(self.problem, self._init, self.optimizer, params, base, batch0)

    def train(
        self,
        *,
        steps,
        seed=0,
        log_every=100,
        params=None,
        track_weight_error=False,
        resume=None,
        checkpoint=None,
        checkpoint_every=None,
        progress=True,
    ):
        """Run ``steps`` steps (see :func:`train`); returns :class:`TrainResult`."""
        steps = _check_int("steps", steps, 0)
        log_every = _check_int("log_every", log_every, 1)
        seed = _check_int("seed", seed, 0)
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1, optional=True)
        if checkpoint_every is not None and checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint= (the file to write)")
        track_weight_error = check_bool(track_weight_error, name="track_weight_error")
        progress = check_bool(progress, name="progress")
        if checkpoint is not None:
            ckpt.check_writable(checkpoint)
        if self.second_order is not None:
            from ._second import train_second_order

            return TrainResult(*train_second_order(
                self, self.second_order, keys=HISTORY_KEYS, steps=steps, seed=seed, log_every=log_every,
                params=params, resume=resume, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                progress=progress,
            ))  # fmt: skip
        problem, w, resample = self.problem, self.weighting, self.resample
        base = jax.random.key(seed)
        batch0 = problem.sample_batch(jax.random.fold_in(base, 0))
        template = jax.eval_shape(lambda: _init_state(problem, w.init, self.optimizer, params, base, batch0))
        manifest = _run_manifest(problem, w, template.params, seed, resample, self.reuse_residuals)
        if resume is not None:
            state = _resumed_state(resume, template, manifest)
        else:
            state = _init_state(problem, self._init, self.optimizer, params, base, batch0)

        def batch_at(raw_key, step):
            return problem.sample_batch(_keys_at(raw_key, step)[0]) if resample else batch0

        step_fn, exact_weight_error = self._step_fns()
        run = _Run(
            problem,
            w,
            step_fn,
            exact_weight_error,
            self._rel_l2,
            batch_at,
            track_weight_error,
            checkpoint,
            checkpoint_every,
            manifest,
        )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=int(state.step), desc=f"{getattr(problem, 'name', 'pinn')}", leave=False)
        try:
            state, history, step_times, wall = _loop(run, state, batch0, steps, log_every, bar)
        finally:
            if bar is not None:
                bar.close()
        tps = float(np.median(step_times[1:])) if len(step_times) > 1 else (step_times[0] if step_times else 0.0)
        return TrainResult(state.params, state, history, wall, tps)


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
    update. Inside the jitted step the loss, the weights and the new parameters are
    checked for finiteness; the first non-finite step is recorded in the state (which
    then stops changing) and raises :class:`NonFiniteError` naming the step and the
    block at the next log or checkpoint step.

    Each call compiles its step; to run one configuration several times (seeds, resume,
    a reference run) without recompiling, build a :class:`Trainer` once and call its
    :meth:`Trainer.train`.

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
    optimizer : optax.GradientTransformation or pinn_adapters.second_order.SecondOrder or str, optional
        Default: ``problem.default_optimizer()`` (Adam with step decay). A second-order
        optimizer (:func:`pinn_adapters.second_order.lm` / :func:`~pinn_adapters.second_order.engd`,
        or the names ``"lm"`` / ``"engd"``) runs ``steps`` trial steps of
        :func:`~pinn_adapters.second_order.levenberg_marquardt` instead (see
        :class:`~pinn_adapters.second_order.SecondOrder`): ``resume`` and ``checkpoint`` are then
        second-order checkpoint files, ``result.state`` is its ``LMResult``, the history adds
        ``damping``, ``accepted``, ``cg_iterations`` and ``step_size`` (the first-order diagnostics
        are ``None``) and ``track_weight_error`` is ignored (the bar shows the loss and damping).
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
        the same arguments). A checkpoint written for another problem, architecture,
        weighting or seed is refused with an error naming the field.
    checkpoint : path, optional
        Write the state there (atomically) every ``checkpoint_every`` steps and at
        the end. Its directory must exist and be writable (checked before training).
    checkpoint_every : int, optional
    progress : bool
        Show a tqdm progress bar (loss, relative L2 and rejected weight refreshes).
    reuse_residuals : bool
        Pass the training residuals to the weighting (saves an evaluation for
        finite-difference pc); with ``resample=False`` the previous step's
        residuals are passed as ``residuals_prev`` too.

    Returns
    -------
    TrainResult

    Raises
    ------
    NonFiniteError
        (a ``FloatingPointError``) at the first step whose loss, weights or
        parameters are not finite; no checkpoint is written from that state.

    References
    ----------
    M. Hirsch, F. Pichi, arXiv:2511.15530 (2025) (diagnostics: running averages of
    ``||R||^2`` and ``||grad L||^2``).
    """
    trainer = Trainer(  # compiles nothing until it trains; its train() checks the arguments first
        problem, weighting=weighting, optimizer=optimizer, resample=resample, reuse_residuals=reuse_residuals
    )
    return trainer.train(
        steps=steps,
        seed=seed,
        log_every=log_every,
        params=params,
        track_weight_error=track_weight_error,
        resume=resume,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        progress=progress,
    )
