"""Gauss-Newton / Levenberg-Marquardt (and ENGD) training of a PINN on its weighted residuals.

The loss ``L(theta) = sum_b w_b reduce_b(r_b^2)`` is ``||r_w||^2`` for the scaled residuals
``r_w = (sqrt(w_b c_b) r_b)_b`` (``c_b = 1/rows_b`` for a ``"mean"`` block, ``1`` for ``"sum"``), so a
damped Gauss-Newton (Levenberg-Marquardt) step solves, with ``J = d r_w / d theta``,

* **parameter space** ``(J^T J + mu I) d = -J^T r_w`` (``p x p``), or
* **sample space** (Woodbury) ``d = -J^T (J J^T + mu I)^{-1} r_w`` (``n x n``; the NTK),

the same step. In the unscaled residuals these are ``(J^T W J + mu I) d = -J^T W r`` and
``(J J^T + mu W^{-1})`` with ``W = diag(w_b c_b)``; scaling the rows keeps a zero weight harmless.
``method="dense"`` forms ``J`` and solves by Cholesky (the reference, small networks);
``"params"`` / ``"samples"`` are matrix-free: :func:`sketchtrace.solve` (Nystrom-preconditioned
CG) on ``sketchtrace.gram(JacobianOperator)``; ``"auto"`` takes the smaller of ``p`` and ``n``.
Memory of the matrix-free paths: the linearisation (the network's activations at the batch) and
the ``dim x rank`` Nystrom factor, never ``n x p``.

A trial point is ``theta + eta d``: ``eta = 1`` (``line_search=None``) or the best of a
logarithmic grid ``eta in {1, 1/2, ..., 2^-(grid_size-1)}`` (``line_search="grid"``; all grid
losses in one compiled, vmapped call). The gain ratio of the scaled step is
``rho = (L(theta) - L(theta + eta d)) / (-2 eta r_w.Jd - eta^2 ||Jd||^2)``; a step is accepted when
``rho > 0`` (the loss went down). The damping is fixed (``damping_rule="fixed"``) or follows
Nielsen's rule (``"nielsen"``: on acceptance scale ``mu`` by ``max(1/3, 1 - (2 rho - 1)^3)``,
else multiply it by ``nu``, doubling ``nu``). Loss weights come from any
:func:`pinn_adapters.ntk_weighting` strategy, refreshed after each accepted step; ``sample_batch``
draws new collocation points every ``resample_every`` accepted steps; ``checkpoint`` / ``resume``
save and continue a run bit for bit.

ENGD (energy natural gradient, Mueller and Zeinhofer 2023) preconditions the gradient with the
Gramian of the energy's inner product; for a residual least-squares loss that Gramian is the
Gauss-Newton matrix ``J^T J``, so :func:`energy_natural_gradient` is this loop with a small fixed
damping and the grid line search. No separate energy inner product (a variational energy that is
not a sum of squared residuals) is implemented.

``optimistix.LevenbergMarquardt`` covers a fixed least-squares problem with a dense or lineax
linear solve; it has no sample-space (Woodbury) form, no Nystrom preconditioner and no weights
that change between steps, which is what this module adds. The tests check this loop against
``optimistix.GaussNewton`` on a linear least-squares problem.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import sketchtrace as st
from sketchtrace.validation import (
    check_callable,
    check_choice,
    check_int,
    check_jax_key,
    check_optional,
    check_output_path,
    check_real,
)

from ._checkpoint_io import read_tree, write_tree
from .sampling import ResidualAdaptiveSampler, check_adaptive_options

__all__ = [
    "StepInfo",
    "LMResult",
    "SecondOrder",
    "scaled_residual_fn",
    "gauss_newton_step",
    "levenberg_marquardt",
    "energy_natural_gradient",
    "lm",
    "engd",
    "as_second_order",
]

METHODS = ("auto", "dense", "params", "samples")
LINE_SEARCHES = ("none", "grid")
DAMPING_RULES = ("nielsen", "fixed")
CHECKPOINT_FORMAT = "pinn_adapters.second_order.checkpoint"
_FORMAT_VERSION = 1


class StepInfo(NamedTuple):
    """One Gauss-Newton step: ``method`` used, CG ``iterations`` (0 for dense), the solve's relative
    residual, the model ``predicted`` reduction ``L - ||r_w + J d||^2`` (computed as
    ``-2 r_w.Jd - ||Jd||^2``), the ``loss`` it started from, and ``r_dot_jd = r_w . J d`` and
    ``jd_norm2 = ||J d||^2``, from which the predicted reduction of a scaled step ``eta d`` is
    ``-2 eta r_dot_jd - eta^2 jd_norm2``."""

    method: str
    iterations: Any
    relative_residual: Any
    predicted: Any
    loss: Any
    r_dot_jd: Any = None
    jd_norm2: Any = None


class LMResult(NamedTuple):
    """:func:`levenberg_marquardt`'s result: final ``params``, ``weights`` and a ``history`` list of
    dicts (``step``, ``loss``, ``damping``, ``accepted``, ``rho``, ``step_size``, ``cg_iterations``,
    ``method``, ``resampled``, ``time``, ``weights`` with a weighting, and ``relative_l2`` when an
    error function was given)."""

    params: Any
    weights: dict
    history: list


def _scale(blocks, weights, res):
    """``r_w``: the blocks' flattened residuals ``res`` scaled by ``sqrt(w_b c_b)`` and concatenated
    (``c_b = 1 / rows_b`` for ``"mean"``: the reduction of :meth:`ResidualBlocks.losses`)."""
    out = []
    for n in blocks.names:
        c = 1.0 / res[n].shape[0] if blocks.reduction == "mean" else 1.0
        w = c * (1.0 if weights is None else weights[n])
        out.append(jnp.sqrt(jnp.asarray(w, res[n].dtype)) * res[n])
    return jnp.concatenate(out)


def scaled_residual_fn(blocks, batch, weights):
    """``f(params) -> r_w``: the scaled residuals as one vector (blocks in ``blocks.names`` order), with
    ``||r_w||^2 = sum_b w_b reduce_b(r_b^2)``, the loss of :meth:`ResidualBlocks.loss`."""
    blocks.sizes(batch)  # checks the batch's blocks before any work

    def f(params):
        return _scale(blocks, weights, blocks.residuals(params, batch))

    return f


def _dense_step(J, r, damping, space):
    """The exact damped Gauss-Newton step for the formed ``J`` (``n x p``), by Cholesky in ``space``."""
    n, p = J.shape
    if space == "params":
        A = J.T @ J + damping * jnp.eye(p, dtype=J.dtype)
        d = -jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(A), J.T @ r)
    else:
        A = J @ J.T + damping * jnp.eye(n, dtype=J.dtype)
        d = -J.T @ jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(A), r)
    return d, J @ d, 0, jnp.zeros((), r.dtype)


def _matrix_free_step(key, f_flat, x, r, damping, space, rank, rtol, maxiter):
    J = st.JacobianOperator(f_flat, x)
    if space == "params":
        G = st.gram(J, side="input")  # J^T J, p x p
        b = -J.rmatvec(r)
    else:
        G = st.gram(J, side="output")  # J J^T, n x n (the NTK of the scaled residuals)
        b = -r
    sol, info = st.solve(key, G, b, damping=damping, rank=rank, rtol=rtol, maxiter=maxiter)
    d = J.rmatvec(sol) if space == "samples" else sol
    return d, J.matvec(d), info.iterations, info.residual_norm / jnp.linalg.norm(b)


def _with_model(r, out):
    """``(d, Jd, its, rel)`` plus the quadratic model's ``r.Jd`` and ``||Jd||^2``."""
    d, Jd, its, rel = out
    return d, its, rel, jnp.vdot(r, Jd), jnp.vdot(Jd, Jd)


# The compiled programs: module-level ``jax.jit`` functions with the blocks and the solver configuration
# static (JAX's own compilation cache, keyed on them and on the argument shapes; no cache of ours).
# The parameters are passed as a pytree and raveled inside, so no per-call closure defeats the cache.


@functools.partial(jax.jit, static_argnames=("blocks",))
def _scale_program(blocks, res, weights):
    r = _scale(blocks, weights, res)
    return r, jnp.sum(r * r), jnp.sum(~jnp.isfinite(r))


def _scaled_residuals(blocks, params, batch, weights):
    """``(r_w, ||r_w||^2, number of non-finite entries)``: the blocks' own compiled residuals (shared with
    every other user of ``blocks``) and a small compiled program that scales them."""
    return _scale_program(blocks, blocks.residuals(params, batch), weights)


@functools.partial(jax.jit, static_argnames=("blocks",))
def _trials_program(blocks, params, d, batch, weights, etas):
    flat, unravel = ravel_pytree(params)
    f = scaled_residual_fn(blocks, batch, weights)

    def loss(eta):
        r = f(unravel(flat + eta * d))
        value = jnp.sum(r * r)
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    return jax.vmap(loss)(etas)


def _trial_losses(blocks, params, unravel, flat, d, batch, weights, etas):
    """``L(flat + eta d)`` for every ``eta`` (``inf`` where not finite): for one ``eta = 1`` the compiled
    residuals at ``flat + d``; for a grid one compiled, vmapped program (compiled once per configuration)."""
    if etas.shape == (1,) and float(etas[0]) == 1.0:
        _, loss, bad = _scaled_residuals(blocks, unravel(flat + d), batch, weights)
        return np.array([np.inf if int(bad) or not np.isfinite(float(loss)) else float(loss)])
    return np.asarray(_trials_program(blocks, params, d, batch, weights, jnp.asarray(etas, flat.dtype)))


@functools.partial(jax.jit, static_argnames=("blocks", "method", "space", "rank", "rtol", "maxiter", "modes"))
def _step_program(blocks, method, space, rank, rtol, maxiter, modes, key, params, batch, weights, damping):
    """``-> (d, its, rel, r.Jd, ||Jd||^2)`` of one step at ``params`` (flat ``d``), compiled. ``modes``: the
    blocks' pointwise modes (the dense ``J`` is formed by per-point gradients where they hold)."""
    flat, unravel = ravel_pytree(params)
    f = scaled_residual_fn(blocks, batch, weights)

    def f_flat(v):
        return f(unravel(v))

    r = f_flat(flat)
    if method == "dense":
        J = _scale(blocks, weights, blocks._jacobian_matrix(params, batch, chunk_size=256, modes=modes))
        return _with_model(r, _dense_step(J, r, damping, space))
    return _with_model(r, _matrix_free_step(key, f_flat, flat, r, damping, space, rank, rtol, maxiter))


def gauss_newton_step(
    key, blocks, params, batch, *, damping, weights=None, method="auto", rank=50, rtol=1e-8, maxiter=None
):
    """One damped Gauss-Newton (Levenberg-Marquardt) step on the weighted residuals.

    Returns ``(direction pytree, StepInfo)``; the new parameters are ``params + direction``.
    ``method``: ``"dense"`` (form ``J``, Cholesky, in the smaller of parameter and sample space),
    ``"params"``, ``"samples"`` (matrix-free, Nystrom-preconditioned CG) or ``"auto"`` (matrix-free,
    the smaller space). ``rank``: the preconditioner's (an int: one compiled program per
    configuration; ``"auto"``: FTU's adaptive rank, eager). The residuals are evaluated by a
    compiled program (cached per configuration) and non-finite residuals are refused
    (``ValueError``) before the solve.
    """
    check_choice(method, METHODS, name="method")
    damping = check_real(damping, name="damping", low=0)
    if rank != "auto":
        rank = check_int(rank, name="rank", minimum=1)
    flat, unravel = ravel_pytree(params)
    r, loss, bad = _scaled_residuals(blocks, params, batch, weights)
    if int(bad):
        raise ValueError(
            f"residuals: {int(bad)} non-finite value(s) (NaN or inf) out of {r.size}; a Gauss-Newton step needs "
            "finite residuals (check the network, the damping and the collocation points)"
        )
    n, p = r.shape[0], flat.shape[0]
    space = "params" if p <= n else "samples"
    if method == "dense" and damping == 0 and p > n:
        raise ValueError("damping must be > 0 for a dense step with more parameters than residuals")
    if method != "dense":
        if damping <= 0:
            raise ValueError("damping must be > 0 for the matrix-free (preconditioned CG) steps")
        space = space if method == "auto" else method
    mu = jnp.asarray(damping, flat.dtype)
    if method != "dense" and rank == "auto":  # eager: the rank is chosen from values
        f = scaled_residual_fn(blocks, batch, weights)

        def f_flat(v):
            return f(unravel(v))

        out = _with_model(r, _matrix_free_step(key, f_flat, flat, r, damping, space, rank, rtol, maxiter))
    else:
        dim = n if space == "samples" else p
        modes = blocks.pointwise_modes(params, batch, strict=False) if method == "dense" else None
        out = _step_program(
            blocks, method, space, min(rank, dim), rtol, maxiter, modes, key, params, batch, weights, mu
        )
    d, its, rel, rjd, jd2 = out
    info = StepInfo("dense" if method == "dense" else space, its, rel, -2.0 * rjd - jd2, loss, rjd, jd2)
    return unravel(d), info


def _nielsen(mu, nu, rho, accepted):
    if accepted:
        return mu * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 2.0
    return mu * nu, 2.0 * nu


class _Run(NamedTuple):
    """A checked :func:`levenberg_marquardt` configuration (``config``: what a checkpoint records)."""

    key: Any
    blocks: Any
    weighting: Any
    steps: int
    solver: dict
    damping_rule: str
    min_damping: float
    etas: np.ndarray
    sample_batch: Any
    resample_every: int
    error_fn: Any
    log_every: int
    time_limit: Any
    checkpoint: Any
    checkpoint_every: Any
    config: dict
    callback: Any


class _State(NamedTuple):
    """Everything a resumed run needs: the arrays (checkpointed as leaves) and the counters (JSON)."""

    params: Any
    wstate: Any
    batch: Any
    mu: float
    nu: float
    step: int
    accepted: int
    history: list
    elapsed: float

    @property
    def weights(self):
        return None if self.wstate is None else self.wstate.weights


def _describe(weighting):
    """A JSON description of a weighting (its ``config``), compared on resume."""
    if weighting is None:
        return None
    return json.loads(json.dumps(getattr(weighting, "config", {}), default=lambda o: f"<{type(o).__name__}>"))


def _check_options(o):
    """Check the solver options of :func:`levenberg_marquardt` (everything but the key, blocks, weighting
    and the problem's callables); ``o``: the options by name. Returns them checked, as a dict."""
    c = {"steps": check_int(o["steps"], name="steps", minimum=1)}
    c["damping"] = check_real(o["damping"], name="damping", low=0, low_open=True)
    c["method"] = check_choice(o["method"], METHODS, name="method")
    c["rank"] = o["rank"] if o["rank"] == "auto" else check_int(o["rank"], name="rank", minimum=1)
    c["rtol"] = check_real(o["rtol"], name="rtol", low=0, low_open=True)
    c["maxiter"] = check_optional(check_int, o["maxiter"], name="maxiter", minimum=1)
    c["min_damping"] = check_real(o["min_damping"], name="min_damping", low=0)
    c["damping_rule"] = check_choice(o["damping_rule"], DAMPING_RULES, name="damping_rule")
    c["line_search"] = check_choice(
        "none" if o["line_search"] is None else o["line_search"], LINE_SEARCHES, name="line_search"
    )
    c["grid_size"] = check_int(o["grid_size"], name="grid_size", minimum=2, maximum=64)
    c["resample_every"] = check_int(o["resample_every"], name="resample_every", minimum=1)
    c["log_every"] = check_int(o["log_every"], name="log_every", minimum=1)
    c["time_limit"] = check_optional(check_real, o["time_limit"], name="time_limit", low=0, low_open=True)
    c["adaptive_sampling"] = check_optional(check_adaptive_options, o["adaptive_sampling"], name="adaptive_sampling")
    return c


def _as_weighting(weighting, blocks):
    """``None`` (unit weights), a weighting (``init`` and ``update``), or an estimator name of
    :func:`pinn_adapters.ntk_weighting` (its defaults, as in :func:`pinn_adapters.train`)."""
    if isinstance(weighting, str):
        from ._weighting import ntk_weighting

        return ntk_weighting(blocks, estimator=weighting)
    if weighting is None or (
        callable(getattr(weighting, "init", None)) and callable(getattr(weighting, "update", None))
    ):
        return weighting
    raise TypeError(
        f"weighting must be None, an estimator name or pa.ntk_weighting(...) (an object with init and update); "
        f"got {type(weighting).__name__}"
    )


def _lm_run(key, blocks, weighting, o):
    """Check every option of :func:`levenberg_marquardt` before any work; ``o``: the options by name."""
    check_jax_key(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    c = _check_options(o)
    weighting = _as_weighting(weighting, blocks)
    line_search = c["line_search"]
    sample_batch = check_optional(check_callable, o["sample_batch"], name="sample_batch")
    if c["adaptive_sampling"] is not None:
        if sample_batch is None:
            raise ValueError(
                "adaptive_sampling needs sample_batch= (the uniform sampler it draws its pool from; through "
                "pinn_adapters.train: resample=True)"
            )
        sample_batch = ResidualAdaptiveSampler(blocks, sample_batch, **c["adaptive_sampling"])
    error_fn = check_optional(check_callable, o["error_fn"], name="error_fn")
    checkpoint = check_optional(check_output_path, o["checkpoint"], name="checkpoint")
    checkpoint_every = check_optional(check_int, o["checkpoint_every"], name="checkpoint_every", minimum=1)
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every needs checkpoint= (the file to write)")
    if o["resume"] is not None and not os.path.isfile(os.fspath(o["resume"])):
        raise FileNotFoundError(f"resume: checkpoint {os.fspath(o['resume'])!r} does not exist")
    etas = 0.5 ** np.arange(c["grid_size"] if line_search == "grid" else 1, dtype=np.float64)
    solver = {k: c[k] for k in ("method", "rank", "rtol", "maxiter")}
    config = {
        "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
        "blocks": list(blocks.names),
        "weighting": _describe(weighting),
        **solver,
        **{k: c[k] for k in ("damping", "min_damping", "damping_rule", "line_search")},
        "grid_size": c["grid_size"] if line_search == "grid" else None,
        "resample_every": c["resample_every"] if sample_batch is not None else None,
        "adaptive_sampling": sample_batch.config if isinstance(sample_batch, ResidualAdaptiveSampler) else None,
    }
    return _Run(
        key, blocks, weighting, c["steps"], solver, c["damping_rule"], c["min_damping"], etas, sample_batch,
        c["resample_every"], error_fn, c["log_every"], c["time_limit"], checkpoint, checkpoint_every, config,
        check_optional(check_callable, o["callback"], name="callback"),
    )  # fmt: skip


def _versions():
    return {"jax": jax.__version__, "numpy": np.__version__, "sketchtrace": st.__version__}


def _save(run, state):
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "format_version": _FORMAT_VERSION,
        "versions": _versions(),
        "config": run.config,
        "state": {k: getattr(state, k) for k in ("mu", "nu", "step", "accepted", "elapsed")},
        "history": state.history,
    }
    write_tree(run.checkpoint, {"params": state.params, "weighting": state.wstate, "batch": state.batch}, manifest)


def _start(run, params, batch, resume):
    """The fresh state (weighting initialised) or the one read from ``resume`` (checked against this run)."""
    k0 = jax.random.fold_in(run.key, 0)
    if resume is None:
        wstate = None if run.weighting is None else run.weighting.init(k0, params, batch)
        return _State(params, wstate, batch, run.config["damping"], 2.0, 0, 0, [], 0.0)
    wlike = None if run.weighting is None else jax.eval_shape(run.weighting.init, k0, params, batch)
    like = jax.eval_shape(lambda t: t, {"params": params, "weighting": wlike, "batch": batch})
    path = os.fspath(resume)
    manifest, tree = read_tree(path, like, format=CHECKPOINT_FORMAT)
    if manifest.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"resume: {path!r} has format_version {manifest.get('format_version')!r}, not {_FORMAT_VERSION}"
        )
    saved = manifest.get("config", {})
    for name in sorted(set(saved) | set(run.config)):
        if saved.get(name) != run.config.get(name):
            raise ValueError(
                f"resume: {path!r} was written by another run: {name} is {saved.get(name)!r} there but "
                f"{run.config.get(name)!r} here (resume with the same key and options, or start a new run)"
            )
    if manifest.get("versions") != _versions():
        warnings.warn(
            f"resume: {path!r} was written with library versions {manifest.get('versions')}, not {_versions()}; "
            "the resumed run may not be bit-identical to an uninterrupted one",
            RuntimeWarning,
            stacklevel=3,
        )
    s = manifest["state"]
    wstate = tree["weighting"]
    return _State(tree["params"], wstate, tree["batch"], s["mu"], s["nu"], s["step"], s["accepted"], manifest["history"], s["elapsed"])  # fmt: skip


def _iterate(run, state, clock):
    """One trial step: solve, line search (or ``eta = 1``), gain ratio, accept, resample, weights, damping."""
    t = state.step + 1
    ks, kw, kb = jax.random.split(jax.random.fold_in(run.key, t), 3)
    d, info = gauss_newton_step(
        ks, run.blocks, state.params, state.batch, damping=state.mu, weights=state.weights, **run.solver
    )
    flat, unravel = ravel_pytree(state.params)
    dflat = ravel_pytree(d)[0]
    losses = _trial_losses(run.blocks, state.params, unravel, flat, dflat, state.batch, state.weights, run.etas)
    i = int(np.argmin(losses))  # the first minimum: the largest of tied step sizes
    eta, new_loss, loss0 = float(run.etas[i]), float(losses[i]), float(info.loss)
    pred = -(2.0 * eta * float(info.r_dot_jd) + eta * eta * float(info.jd_norm2))
    rho = (loss0 - new_loss) / pred if pred > 0 else -1.0
    accepted = rho > 0
    params, wstate, batch, count, resampled = state.params, state.wstate, state.batch, state.accepted, False
    if accepted:
        params, count = unravel(flat + jnp.asarray(eta, flat.dtype) * dflat), count + 1
        if run.sample_batch is not None and count % run.resample_every == 0:
            adaptive = isinstance(run.sample_batch, ResidualAdaptiveSampler)  # RAD: drawn at the new parameters
            batch, resampled = (run.sample_batch(kb, params) if adaptive else run.sample_batch(kb)), True
        if run.weighting is not None:
            wstate = run.weighting.update(kw, wstate, state.params, params, batch)[1]  # compiled once (NTKWeighting)
    mu, nu = state.mu, state.nu
    if run.damping_rule == "nielsen":
        mu, nu = _nielsen(mu, nu, rho, accepted)
        mu = max(mu, run.min_damping)
    elapsed = clock[1] + time.perf_counter() - clock[0]
    rec = {
        "step": t,
        "loss": new_loss if accepted else loss0,
        "damping": mu,
        "accepted": bool(accepted),
        "rho": rho,
        "step_size": eta,
        "cg_iterations": int(info.iterations),
        "method": info.method,
        "resampled": resampled,
        "time": elapsed,
    }
    if wstate is not None:
        rec["weights"] = {n: float(wstate.weights[n]) for n in run.blocks.names}
    return _State(params, wstate, batch, mu, nu, t, count, state.history, elapsed), rec


def levenberg_marquardt(
    key,
    blocks,
    params,
    batch,
    *,
    steps,
    damping=1e-3,
    method="auto",
    weighting=None,
    rank=50,
    rtol=1e-8,
    maxiter=None,
    min_damping=1e-12,
    damping_rule="nielsen",
    line_search=None,
    grid_size=31,
    sample_batch=None,
    resample_every=1,
    adaptive_sampling=None,
    error_fn=None,
    log_every=1,
    time_limit=None,
    checkpoint=None,
    checkpoint_every=None,
    resume=None,
    callback=None,
):
    """Levenberg-Marquardt on the weighted residuals with gain-ratio damping (Gauss-Newton steps).

    ``steps``: total trial steps, accepted or not (when resuming: counting those already done);
    ``damping``: the initial ``mu``, kept (``damping_rule="fixed"``) or adapted by Nielsen's rule
    (``"nielsen"``, floored at ``min_damping``); ``method``, ``rank``, ``rtol``, ``maxiter``: as in
    :func:`gauss_newton_step`. ``line_search``: ``None`` (the full step ``eta = 1``) or ``"grid"``
    (the best ``eta`` of ``{2^-k : k < grid_size}``, all evaluated in one compiled vmapped call);
    a step is accepted only when the loss goes down (gain ratio ``rho > 0``).
    ``weighting``: an :func:`pinn_adapters.ntk_weighting` or its estimator name (``"exact"``,
    ``"pc"``, ...; ``None``: unit weights), refreshed after accepted steps. ``sample_batch(key) -> batch``: new collocation points after every
    ``resample_every``-th accepted step (``None``: the fixed ``batch``); ``adaptive_sampling``: a dict
    of :func:`pinn_adapters.sampling.residual_adaptive` options (``block``, ``pool``, ``k``, ``c``)
    makes each resample a residual-based adaptive (RAD) draw from ``pool`` of ``sample_batch``'s
    batches at the current parameters (a :class:`~pinn_adapters.sampling.ResidualAdaptiveSampler`
    passed as ``sample_batch`` is used the same way). ``error_fn(params) -> float``
    (e.g. ``problem.relative_l2``) is logged every ``log_every`` steps; ``time_limit`` (seconds,
    this call) stops early. ``checkpoint``: a file written atomically (``.npz`` arrays plus JSON, no
    pickle) every ``checkpoint_every`` steps and at the end; ``resume``: such a file, continued
    bit-identically to an uninterrupted run (same key and options, checked). ``callback(record)``:
    called after every trial step with its history record (e.g. to drive a progress bar; its return
    value is ignored). Every argument is checked before any work. Returns :class:`LMResult`.
    """
    options = dict(locals())
    run = _lm_run(key, blocks, weighting, options)
    state = _start(run, params, batch, resume)
    clock = (time.perf_counter(), state.elapsed)
    while state.step < run.steps:
        state, rec = _iterate(run, state, clock)
        t = state.step
        out_of_time = run.time_limit is not None and time.perf_counter() - clock[0] > run.time_limit
        if run.error_fn is not None and (t % run.log_every == 0 or t == run.steps or out_of_time):
            rec["relative_l2"] = float(run.error_fn(state.params))
        state.history.append(rec)
        if run.callback is not None:
            run.callback(rec)
        every = run.checkpoint_every
        if run.checkpoint is not None and (t == run.steps or out_of_time or (every and t % every == 0)):
            _save(run, state)
        if out_of_time:
            break
    return LMResult(state.params, state.weights, state.history)


def energy_natural_gradient(
    key, blocks, params, batch, *, steps, damping=1e-8, grid_size=31, damping_rule="fixed", **options
):
    """Energy natural gradient descent (ENGD, Mueller and Zeinhofer 2023) on the weighted residuals.

    For a residual least-squares loss the energy Gramian is the Gauss-Newton matrix ``J^T J``, so
    this is :func:`levenberg_marquardt` with ``line_search="grid"`` (ENGD's logarithmic grid
    ``eta in {1, 1/2, ..., 2^-(grid_size-1)}``, 31 points by default) and a small fixed damping
    (``damping_rule="fixed"``; the matrix-free solves need ``mu > 0``). ``method="samples"`` is the
    sample-space (Woodbury) form of Guzman-Cordero et al. 2025. Every other option as in
    :func:`levenberg_marquardt`. No energy inner product other than the residuals' squared norm.
    """
    if "line_search" in options:
        raise TypeError("energy_natural_gradient always uses line_search='grid' (use levenberg_marquardt otherwise)")
    return levenberg_marquardt(
        key, blocks, params, batch, steps=steps, damping=damping, grid_size=grid_size,
        damping_rule=damping_rule, line_search="grid", **options,
    )  # fmt: skip


# ----------------------------------------------------------------------------- pa.train's second-order optimizers

# what pinn_adapters.train sets itself: a SecondOrder's options cannot name these
_SET_BY_TRAIN = (
    "key", "blocks", "params", "batch", "steps", "weighting", "sample_batch", "error_fn", "log_every",
    "checkpoint", "checkpoint_every", "resume", "callback",
)  # fmt: skip
_NAMES = {"lm": "lm", "levenberg_marquardt": "lm", "engd": "engd", "energy_natural_gradient": "engd"}
_ENGD_DEFAULTS = {"damping": 1e-8, "grid_size": 31, "damping_rule": "fixed", "line_search": "grid"}


class SecondOrder(NamedTuple):
    """A second-order optimizer for :func:`pinn_adapters.train` (``optimizer=``): made by :func:`lm` or
    :func:`engd`, or named (``optimizer="lm"`` / ``"engd"``, their defaults). ``name``: ``"lm"`` or
    ``"engd"``; ``options``: the checked keyword options of :func:`levenberg_marquardt`.

    With it, ``train(problem, optimizer=..., steps=N)`` runs ``N`` trial steps of
    :func:`levenberg_marquardt` (accepted or not) on the problem's blocks, the weighting refreshed after
    each accepted step, a new batch after every ``resample_every``-th accepted step (``resample=True``),
    the problem's ``relative_l2`` logged every ``log_every`` steps, and ``checkpoint`` / ``resume`` as
    files (the second-order checkpoint format, not a ``TrainState``)."""

    name: str
    options: dict

    def run(self, key, blocks, params, batch, *, steps, **kw) -> LMResult:
        """:func:`levenberg_marquardt` with these options (``kw``: the arguments ``train`` sets)."""
        return levenberg_marquardt(key, blocks, params, batch, steps=steps, **self.options, **kw)


def _second_order(name, defaults, options):
    import inspect

    params = inspect.signature(levenberg_marquardt).parameters
    allowed = [p for p in params if p not in _SET_BY_TRAIN]
    for k in options:
        if k in _SET_BY_TRAIN:
            raise TypeError(f"{name}: {k!r} is set by pinn_adapters.train, not by the optimizer")
        if k not in params:
            raise TypeError(f"{name}: unknown option {k!r}; expected one of {allowed}")
    opts = {**defaults, **options}
    full = {p: params[p].default for p in allowed}
    _check_options({**full, **opts, "steps": 1, "log_every": 1})  # every value, before any work
    return SecondOrder(_NAMES[name], opts)


def lm(**options) -> SecondOrder:
    """Levenberg-Marquardt for :func:`pinn_adapters.train`: ``options`` as in :func:`levenberg_marquardt`
    (``damping``, ``method``, ``rank``, ``rtol``, ``maxiter``, ``min_damping``, ``damping_rule``,
    ``line_search``, ``grid_size``, ``resample_every``, ``time_limit``), checked here.

    >>> import pinn_adapters as pa
    >>> opt = pa.second_order.lm(damping=1e-2, line_search="grid")
    >>> opt.name, opt.options["damping"]
    ('lm', 0.01)
    """
    return _second_order("lm", {}, options)


def engd(**options) -> SecondOrder:
    """Energy natural gradient (:func:`energy_natural_gradient`) for :func:`pinn_adapters.train`: its
    defaults (``damping=1e-8``, fixed; the 31-point grid line search) updated by ``options``."""
    if "line_search" in options:
        raise TypeError("engd: always uses line_search='grid' (use lm otherwise)")
    return _second_order("engd", _ENGD_DEFAULTS, options)


def as_second_order(optimizer):
    """``optimizer`` as a :class:`SecondOrder` (a name: ``"lm"``, ``"levenberg_marquardt"``, ``"engd"``,
    ``"energy_natural_gradient"``), or ``None`` for anything else (an optax transformation)."""
    if isinstance(optimizer, SecondOrder):
        return optimizer
    if isinstance(optimizer, str):
        if optimizer not in _NAMES:
            raise ValueError(f"optimizer: unknown second-order name {optimizer!r}; expected one of {sorted(_NAMES)}")
        return engd() if _NAMES[optimizer] == "engd" else lm()
    return None
