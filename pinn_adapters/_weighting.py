"""NTK loss weighting during training, optax-style (``init`` / ``update`` over a state pytree)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import sketchtrace as st
from sketchtrace.validation import check_choice, check_num_matvecs

from ._blocks import ResidualBlocks
from ._ntk import ntk_traces, ntk_weights, residual_rows

ESTIMATORS = ("pc", "exact", "hutchinson", "moving_average", "none")
FD_SCHEMES = ("jvp", "forward", "central")


class WeightingState(NamedTuple):
    """State of :func:`ntk_weighting` (a pytree: jit, vmap and checkpoint it).

    Attributes
    ----------
    weights : dict
        Current weights (after ``ema`` and ``cap``), block name -> scalar.
    traces : dict
        Latest per-block trace estimates (values; with the chosen ``normalize``).
    count : int array
        Number of ``update`` calls so far.
    rejected : int array
        Number of refreshes whose traces were not finite (weights kept).
    pc : pytree
        The predictor-corrector state (``()`` for the other estimators).
    anchor : pytree
        Parameters at the last refresh (pc with ``every > 1`` only, else ``()``).
    """

    weights: dict
    traces: dict
    count: Any
    rejected: Any
    pc: Any
    anchor: Any


class NTKWeighting(NamedTuple):
    """An ``init`` / ``update`` pair (like an optax ``GradientTransformation``)."""

    init: Callable
    update: Callable
    blocks: ResidualBlocks
    config: dict


def _scalar_dict(d, dtype):
    return {n: jnp.asarray(v, dtype) for n, v in d.items()}


def ntk_weighting(
    blocks: ResidualBlocks,
    *,
    estimator="pc",
    every=1,
    ema=None,
    rule="wang2022",
    cap=None,
    eps=1e-6,
    normalize="sum",
    num_probes=1,
    sampler=None,
    side="auto",
    h=None,
    fd="forward",
    gamma=0.02,
    init_method="exact",
    init_matvecs=None,
    chunk_size=256,
    mesh=None,
):
    """NTK loss weights refreshed along training.

    ``state = w.init(key, params, batch)`` computes the first weights;
    ``weights, state = w.update(key, state, params_prev, params, batch)`` gives the
    weights for the next step, ``params_prev`` and ``params`` being the parameters
    before and after the optimizer step. Both are jit-able (``w`` is static
    configuration); the state is a :class:`WeightingState` pytree.

    Parameters
    ----------
    blocks : ResidualBlocks
    estimator : {"pc", "exact", "hutchinson", "moving_average", "none"}
        ``"pc"``: the predictor-corrector of Hirsch and Pichi (sketchtrace's
        :func:`~sketchtrace.predictor_corrector`): the same ``num_probes`` probes on
        ``params_prev`` and ``params``, ``T <- (1 - gamma) (T - q(params_prev)) + q(params)``,
        unbiased at every step when the first estimate is. ``"exact"``: chunked
        per-point gradients (``chunk_size``). ``"hutchinson"``: ``num_probes`` fresh
        probes every refresh. ``"moving_average"``: sketchtrace's
        :func:`~sketchtrace.moving_average` of fresh one-probe estimates with
        ``beta = gamma`` (biased toward stale values). ``"none"``: all weights 1.
    every : int
        Refresh the weights on every ``every``-th ``update`` call (others keep them).
        For ``"pc"`` with ``every > 1`` the parameters of the last refresh are kept in
        the state and the correction runs between them and ``params``.
    ema : float, optional
        Momentum in ``[0, 1)``: ``w <- ema * w + (1 - ema) * w_new`` at refreshes
        (jaxpi uses 0.9).
    rule, cap, eps : see :func:`ntk_weights`
        Guards: traces floored at ``eps * max_j T_j``; if a refresh produces non-finite
        traces (non-finite residuals) the previous weights are kept and
        ``state.rejected`` is incremented (outside ``jit`` the estimators raise instead).
    normalize : {"sum", "mean", None}
        Trace normalisation (see :func:`ntk_traces`). ``rule="jaxpi"`` always divides
        by the block sizes itself, so use ``"sum"`` with it.
    num_probes : int
        Probes per refresh for ``"hutchinson"`` and ``"pc"``.
    sampler : str, optional
        Probe distribution (default ``"gaussian"`` for pc, ``"rademacher"`` for Hutchinson).
    side : {"auto", "params", "residuals"}
        Probe side for ``"hutchinson"``.
    fd : {"forward", "central", "jvp"}
        How pc evaluates ``J v``: finite differences of the residuals (``"forward"``:
        one residual evaluation per probe and parameter point when the unperturbed
        residuals are passed in; ``"central"``: two) or exact JVPs (``"jvp"``).
    h : float, optional
        Finite-difference step (default: sketchtrace's per-dtype step scaled by the
        parameter RMS).
    gamma : float or "auto"
        pc damping in ``(0, 1]``; ``1`` is fresh one-probe Hutchinson. The best value
        is about the relative change of the NTK per step (sketchtrace's
        :func:`~sketchtrace.optimal_gamma`); the default 0.02 suits Adam at
        learning rates around 1e-3 (docs/pinn.md has measurements: 0.1 doubles the
        weight error there). ``"auto"`` lets sketchtrace choose it online; in our
        PINN runs it sometimes collapsed to tiny values after the large early
        changes and then kept an early error, so it is not the default.
        For ``estimator="moving_average"`` this is the average's ``beta`` (a float).
    init_method : {"exact", "hutchinson"}
        First pc estimate: exact traces (zero variance; a one-off cost) or
        ``init_matvecs`` Hutchinson probes.
    chunk_size : int
        Points per chunk for exact traces.
    mesh : jax.sharding.Mesh, optional
        Spread exact traces (collocation points) and Hutchinson traces (probes) over
        the mesh's devices, see :func:`ntk_traces`; this includes the exact first
        estimate of ``"pc"``. The pc correction itself (one probe) is not split; to
        spread its residual evaluations over devices, place the batch's points with
        ``jax.device_put(points, NamedSharding(mesh, PartitionSpec(axis)))`` and jit
        ``update`` (XLA partitions the point axis).

    Notes
    -----
    ``update`` accepts ``residuals=`` (the residual dict at ``params`` on ``batch``,
    which training computes anyway) and ``residuals_prev=`` (at ``params_prev`` on the
    same batch, available when the batch is fixed): with forward differences pc then
    costs ``num_probes`` residual evaluations at each of the two parameter points,
    i.e. about two extra residual evaluations per step for one probe.

    References
    ----------
    M. Hirsch, F. Pichi, "Convergence and sketching-based efficient computation of
    neural tangent kernel weights in physics-based loss", arXiv:2511.15530 (2025).
    P. Dharangutte, C. Musco, "Dynamic trace estimation", NeurIPS 2021. arXiv:2110.13605
    S. Wang, X. Yu, P. Perdikaris, J. Comput. Phys. 449 (2022). doi:10.1016/j.jcp.2021.110768
    """
    if not isinstance(blocks, ResidualBlocks):
        raise TypeError(f"blocks must be a pinn_adapters.ResidualBlocks; got {type(blocks).__name__}")
    check_choice(estimator, ESTIMATORS, name="estimator")
    check_choice(fd, FD_SCHEMES, name="fd")
    check_choice(init_method, ("exact", "hutchinson"), name="init_method")
    if normalize not in ("sum", "mean", None):
        raise ValueError(f"normalize must be 'sum', 'mean' or None; got {normalize!r}")
    every = check_num_matvecs(every, name="every")
    num_probes = check_num_matvecs(num_probes, name="num_probes")
    if ema is not None and not (isinstance(ema, (int, float)) and 0 <= ema < 1):
        raise ValueError(f"ema must be None or a float in [0, 1); got {ema!r}")
    if gamma != "auto" and not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ValueError(f"gamma must be a float in (0, 1] or 'auto'; got {gamma!r}")
    if rule == "jaxpi" and normalize == "mean":
        raise ValueError("rule='jaxpi' divides by the block sizes itself; use normalize='sum' with it")
    ntk_weights({"_": 1.0}, rule=rule, cap=cap, eps=eps)  # validates rule, cap, eps
    normalize = normalize or blocks.reduction
    sampler = sampler or ("gaussian" if estimator in ("pc", "moving_average") else "rademacher")
    if init_matvecs is None:
        init_matvecs = max(8, num_probes)
    config = dict(
        estimator=estimator, every=every, ema=ema, rule=rule, cap=cap, eps=eps, normalize=normalize,
        num_probes=num_probes, sampler=sampler, side=side, h=h, fd=fd, gamma=gamma,
        init_method=init_method, init_matvecs=init_matvecs, chunk_size=chunk_size,
    )
    names = blocks.names

    pc = None
    dynamic = estimator in ("pc", "moving_average")
    # with an exact first estimate the core's own (Hutchinson) init is overwritten: spend 1 probe on it
    core_init = num_probes if init_method == "exact" else init_matvecs
    if estimator == "pc":
        pc = st.predictor_corrector(num_probes=num_probes, gamma=gamma, sampler=sampler, init_matvecs=core_init)
    elif estimator == "moving_average":
        if gamma == "auto":
            raise ValueError("gamma='auto' is for estimator='pc'; give the moving average a float beta as gamma")
        pc = st.moving_average(num_probes=num_probes, beta=gamma, sampler=sampler, init_matvecs=core_init)

    def scale(traces, rows):
        if normalize == "mean":
            return {n: traces[n] / rows[n] for n in names}
        return traces

    def weights_from(traces, rows, fallback):
        sizes = rows if rule == "jaxpi" else None
        w = ntk_weights(traces, rule=rule, cap=cap, eps=eps, sizes=sizes)
        ok = jnp.all(jnp.stack([jnp.isfinite(traces[n]) for n in names]))
        return {n: jnp.where(ok, w[n], fallback[n]) for n in names}, ok

    def gram_op(params, batch, value):
        f = blocks.residuals
        if fd == "jvp":
            return st.gram(st.JacobianOperator(f, params, batch, mode="fwd"), side="input")
        return st.FiniteDifferenceGram(f, params, batch, h=h, scheme=fd, value=value)

    def exact_traces(params, batch):
        est = ntk_traces(
            None, blocks, params, batch, method="exact", chunk_size=chunk_size, normalize="sum", mesh=mesh
        )
        return {n: est[n].value for n in names}

    def init(key, params, batch):
        batch = blocks.coerce_batch(batch)
        rows = residual_rows(blocks, params, batch)
        dtype = jax.flatten_util.ravel_pytree(params)[0].dtype
        pc_state, anchor = (), ()
        if estimator == "none":
            traces = {n: jnp.ones((), dtype) for n in names}
            weights = {n: jnp.ones((), dtype) for n in names}
            return WeightingState(weights, traces, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), (), ())
        if estimator == "exact" or (dynamic and init_method == "exact"):
            raw = exact_traces(params, batch)
        else:
            m = num_probes if estimator == "hutchinson" else init_matvecs
            est = ntk_traces(key, blocks, params, batch, method="hutchinson", num_matvecs=m, side=side,
                             sampler=sampler, normalize="sum", mesh=mesh)
            raw = {n: est[n].value for n in names}
        if dynamic:
            op0 = gram_op(params, batch, None)
            pc_state = pc.init(key, op0)
            if init_method == "exact":
                pc_state = _set_exact(pc_state, raw, op0)
            if every > 1 and estimator == "pc":
                anchor = params
        traces = scale(raw, rows)
        ones = {n: jnp.ones((), dtype) for n in names}
        weights, _ = weights_from(traces, rows, ones)
        return WeightingState(
            _scalar_dict(weights, dtype), _scalar_dict(traces, dtype), jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32), pc_state, anchor,
        )

    def refresh(key, state, params_prev, params, batch, residuals, residuals_prev):
        rows = residual_rows(blocks, params, batch)
        pc_state, anchor = state.pc, state.anchor
        if estimator == "exact":
            raw = exact_traces(params, batch)
        elif estimator == "hutchinson":
            est = ntk_traces(key, blocks, params, batch, method="hutchinson", num_matvecs=num_probes,
                             side=side, sampler=sampler, normalize="sum", mesh=mesh)
            raw = {n: est[n].value for n in names}
        elif estimator == "moving_average":
            est, pc_state = pc.update(key, state.pc, None, gram_op(params, batch, residuals))
            raw = {n: est[n].value for n in names}
        else:
            if every > 1:
                params_prev, residuals_prev = anchor, None
                anchor = params
            op_prev = gram_op(params_prev, batch, residuals_prev)
            op_next = gram_op(params, batch, residuals)
            est, pc_state = pc.update(key, state.pc, op_prev, op_next)
            raw = {n: est[n].value for n in names}
        traces = scale(raw, rows)
        new_w, ok = weights_from(traces, rows, state.weights)
        if ema is not None:
            new_w = {n: ema * state.weights[n] + (1 - ema) * new_w[n] for n in names}
        dtype = state.weights[names[0]].dtype
        traces = {n: jnp.where(ok, traces[n], state.traces[n]) for n in names}
        if dynamic:
            # a rejected correction must not poison the recursion: keep the old pc state
            pc_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), pc_state, state.pc)
        return WeightingState(
            _scalar_dict(new_w, dtype), _scalar_dict(traces, dtype), state.count + 1,
            state.rejected + jnp.where(ok, 0, 1).astype(jnp.int32), pc_state, anchor,
        )

    def update(key, state, params_prev, params, batch, *, residuals=None, residuals_prev=None):
        batch = blocks.coerce_batch(batch)
        if estimator == "none":
            return state.weights, state._replace(count=state.count + 1)
        if every == 1:
            new = refresh(key, state, params_prev, params, batch, residuals, residuals_prev)
        else:
            def skip(_):
                return state._replace(count=state.count + 1)

            def do(_):
                return refresh(key, state, params_prev, params, batch, residuals, residuals_prev)

            new = jax.lax.cond((state.count + 1) % every == 0, do, skip, None)
        return new.weights, new

    return NTKWeighting(init, update, blocks, config)


def _set_exact(pc_state, traces, op):
    """Start a dynamic estimator from exact traces: every replica holds them, variance 0."""
    order = op.block_names
    T = jnp.stack([jnp.asarray(traces[n], pc_state.estimate.dtype) for n in order])
    return pc_state._replace(
        estimate=jnp.broadcast_to(T, pc_state.estimate.shape), variance=jnp.zeros_like(pc_state.variance)
    )
