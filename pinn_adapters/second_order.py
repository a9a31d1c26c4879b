"""Gauss-Newton / Levenberg-Marquardt training of a PINN on its weighted residuals.

The loss ``L(theta) = sum_b w_b reduce_b(r_b^2)`` is ``||r_w||^2`` for the scaled residuals
``r_w = (sqrt(w_b c_b) r_b)_b`` (``c_b = 1/n_b`` for a ``"mean"`` block, ``1`` for ``"sum"``), so a
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

The damping follows the gain ratio ``rho = (L(theta) - L(theta + d)) / (L(theta) - ||r_w + J d||^2)``
(Nielsen's rule: accept when ``rho > 0`` and scale ``mu`` by ``max(1/3, 1 - (2 rho - 1)^3)``,
else reject and multiply ``mu`` by ``nu``, doubling ``nu``). Loss weights come from any
:func:`pinn_adapters.ntk_weighting` strategy, refreshed after each accepted step.

``optimistix.LevenbergMarquardt`` covers a fixed least-squares problem with a dense or lineax
linear solve; it has no sample-space (Woodbury) form, no Nystrom preconditioner and no weights
that change between steps, which is what this module adds. The tests check this loop against
``optimistix.GaussNewton`` on a linear least-squares problem.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import sketchtrace as st
from sketchtrace.validation import check_choice, check_int, check_real

METHODS = ("auto", "dense", "params", "samples")


class StepInfo(NamedTuple):
    """One Gauss-Newton step: ``method`` used, CG ``iterations`` (0 for dense), the solve's relative
    residual, the model ``predicted`` reduction ``L - ||r_w + J d||^2`` and the ``loss`` it started from."""

    method: str
    iterations: Any
    relative_residual: Any
    predicted: Any
    loss: Any


class LMResult(NamedTuple):
    """:func:`levenberg_marquardt`'s result: final ``params``, ``weights`` and a ``history`` list of
    dicts (``step``, ``loss``, ``damping``, ``accepted``, ``rho``, ``cg_iterations``, ``time``,
    and ``relative_l2`` when an error function was given)."""

    params: Any
    weights: dict
    history: list


def scaled_residual_fn(blocks, batch, weights):
    """``f(params) -> r_w``: the scaled residuals as one vector (blocks in ``blocks.names`` order)."""
    sizes = blocks.sizes(batch)
    scale = {}
    for n in blocks.names:
        c = 1.0 / sizes[n] if blocks.reduction == "mean" else 1.0
        scale[n] = c * (1.0 if weights is None else weights[n])

    def f(params):
        res = blocks.residuals(params, batch)
        return jnp.concatenate([jnp.sqrt(jnp.asarray(scale[n], res[n].dtype)) * res[n] for n in blocks.names])

    return f


def _check_finite(r):
    if not bool(jnp.all(jnp.isfinite(r))):
        bad = int(jnp.sum(~jnp.isfinite(r)))
        raise ValueError(
            f"residuals: {bad} non-finite value(s) (NaN or inf) out of {r.size}; a Gauss-Newton step needs "
            "finite residuals (check the network, the damping and the collocation points)"
        )


def _dense_step(f_flat, x, r, damping, space):
    J = jax.jacfwd(f_flat)(x)  # (n, p), the reference path
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


_COMPILED: dict = {}


def _compiled_step(blocks, method, space, rank, rtol, maxiter, params, unravel):
    """One ``jax.jit`` program per configuration: ``(key, flat, batch, weights, damping) -> (d, Jd, its, rel)``."""
    leaves, treedef = jax.tree.flatten(params)
    ck = (id(blocks), method, space, rank, rtol, maxiter, treedef, tuple((x.shape, x.dtype) for x in leaves))
    fn = _COMPILED.get(ck)
    if fn is None:

        def run(key, flat, batch, weights, damping):
            f = scaled_residual_fn(blocks, batch, weights)

            def f_flat(v):
                return f(unravel(v))

            r = f_flat(flat)
            if method == "dense":
                return _dense_step(f_flat, flat, r, damping, space)
            return _matrix_free_step(key, f_flat, flat, r, damping, space, rank, rtol, maxiter)

        fn = _COMPILED[ck] = jax.jit(run)
        if len(_COMPILED) > 32:
            _COMPILED.pop(next(iter(_COMPILED)))
    return fn


def gauss_newton_step(
    key, blocks, params, batch, *, damping, weights=None, method="auto", rank=50, rtol=1e-8, maxiter=None
):
    """One damped Gauss-Newton (Levenberg-Marquardt) step on the weighted residuals.

    Returns ``(direction pytree, StepInfo)``; the new parameters are ``params + direction``.
    ``method``: ``"dense"`` (form ``J``, Cholesky, in the smaller of parameter and sample space),
    ``"params"``, ``"samples"`` (matrix-free, Nystrom-preconditioned CG) or ``"auto"`` (matrix-free,
    the smaller space). ``rank``: the preconditioner's (an int: one compiled program per
    configuration; ``"auto"``: FTU's adaptive rank, eager). Non-finite residuals are refused
    (``ValueError``) before the solve.
    """
    check_choice(method, METHODS, name="method")
    damping = check_real(damping, name="damping", low=0)
    flat, unravel = ravel_pytree(params)
    f = scaled_residual_fn(blocks, batch, weights)
    r = f(params)
    _check_finite(r)
    n, p = r.shape[0], flat.shape[0]
    space = "params" if p <= n else "samples"
    if method == "dense" and damping == 0 and p > n:
        raise ValueError("damping must be > 0 for a dense step with more parameters than residuals")
    if method != "dense":
        if damping <= 0:
            raise ValueError("damping must be > 0 for the matrix-free (preconditioned CG) steps")
        space = space if method == "auto" else method
    if rank != "auto":
        rank = check_int(rank, name="rank", minimum=1)
    mu = jnp.asarray(damping, flat.dtype)
    if method != "dense" and rank == "auto":  # eager: the rank is chosen from values

        def f_flat(v):
            return f(unravel(v))

        d, Jd, its, rel = _matrix_free_step(key, f_flat, flat, r, damping, space, rank, rtol, maxiter)
    else:
        step = _compiled_step(
            blocks, method, space, min(rank, n if space == "samples" else p), rtol, maxiter, params, unravel
        )
        d, Jd, its, rel = step(key, flat, batch, weights, mu)
    loss = jnp.sum(r * r)
    predicted = loss - jnp.sum((r + Jd) ** 2)
    return unravel(d), StepInfo("dense" if method == "dense" else space, its, rel, predicted, loss)


def _nielsen(mu, nu, rho, accepted):
    if accepted:
        return mu * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 2.0
    return mu * nu, 2.0 * nu


def _trial_loss(blocks, batch, weights, trial):
    r = scaled_residual_fn(blocks, batch, weights)(trial)
    return float(jnp.sum(r * r)) if bool(jnp.all(jnp.isfinite(r))) else float("inf")


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
    error_fn=None,
    log_every=1,
    time_limit=None,
):
    """Levenberg-Marquardt on a fixed collocation ``batch`` with gain-ratio damping.

    ``steps`` trial steps (accepted or not); ``damping`` is the initial ``mu``; ``weighting`` an
    :func:`pinn_adapters.ntk_weighting` (``None``: unit weights) refreshed after accepted steps;
    ``error_fn(params) -> float`` (e.g. ``problem.relative_l2``) is logged every ``log_every`` steps;
    ``time_limit`` (seconds) stops early. Returns :class:`LMResult`.
    """
    steps = check_int(steps, name="steps", minimum=1)
    mu = check_real(damping, name="damping", low=0, low_open=True)
    min_damping = check_real(min_damping, name="min_damping", low=0)
    log_every = check_int(log_every, name="log_every", minimum=1)
    check_choice(method, METHODS, name="method")
    key, k0 = jax.random.split(key)
    weights, wstate = (None, None) if weighting is None else (None, weighting.init(k0, params, batch))
    if wstate is not None:
        weights = wstate.weights
    nu, history, t0 = 2.0, [], time.perf_counter()
    for step in range(steps):
        key, ks, kw = jax.random.split(key, 3)
        d, info = gauss_newton_step(
            ks, blocks, params, batch, damping=mu, weights=weights, method=method, rank=rank, rtol=rtol, maxiter=maxiter
        )
        trial = jax.tree.map(lambda a, b: a + b, params, d)
        new_loss = _trial_loss(blocks, batch, weights, trial)
        pred = float(info.predicted)
        rho = (float(info.loss) - new_loss) / pred if pred > 0 else -1.0
        accepted = rho > 0
        if accepted:
            prev, params = params, trial
            if weighting is not None:
                weights, wstate = weighting.update(kw, wstate, prev, params, batch)
        mu, nu = _nielsen(mu, nu, rho, accepted)
        mu = max(mu, min_damping)
        rec = {
            "step": step + 1,
            "loss": new_loss if accepted else float(info.loss),
            "damping": mu,
            "accepted": bool(accepted),
            "rho": rho,
            "cg_iterations": int(info.iterations),
            "method": info.method,
            "time": time.perf_counter() - t0,
        }
        out_of_time = time_limit is not None and rec["time"] > time_limit
        if error_fn is not None and ((step + 1) % log_every == 0 or step + 1 == steps or out_of_time):
            rec["relative_l2"] = float(error_fn(params))
        history.append(rec)
        if out_of_time:
            break
    return LMResult(params, weights, history)
