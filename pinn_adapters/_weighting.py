"""NTK loss weighting during training, optax-style (``init`` / ``update`` over a state pytree).

:func:`ntk_weighting` checks its configuration once and closes over it; the state
holds arrays only. One small *strategy* per estimator turns parameters into raw
block traces (``init`` and ``refresh``); one shared skeleton turns traces into
weights (normalisation, rule, guards, ``ema``, ``every``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import sketchtrace as st
from sketchtrace.validation import (
    StateSpec,
    check_blocks,
    check_bool,
    check_callable,
    check_choice,
    check_optional,
    check_positive_int,
    check_signature,
    check_state_spec,
    tree_signature,
)

from ._blocks import ResidualBlocks
from ._gradnorm import gradnorm_strategy
from ._ntk import ntk_traces, ntk_weights, residual_rows
from ._sizes import sample_size, subsample_scale  # one rule for JAX and torch
from ._weighting_api import Weighting, check_options

ESTIMATORS = ("pc", "exact", "hutchinson", "moving_average", "gradnorm", "none")
FD_SCHEMES = ("jvp", "forward", "central")


class WeightingState(NamedTuple):
    """State of :func:`ntk_weighting` (a pytree of arrays: jit, vmap and checkpoint it).

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
    inner : pytree
        The estimator's own state: :class:`PCState` for ``"pc"`` with a fixed gamma,
        ``(DynamicState, offset)`` for sketchtrace's dynamic estimators
        (``"moving_average"``, pc with ``gamma="auto"``), ``()`` otherwise.
    spec : sketchtrace.validation.StateSpec
        What made the state (static pytree metadata, no leaves): the weighting's
        configuration and blocks, and the parameter structure (leaf paths, shapes,
        dtypes). ``update`` refuses a state of another configuration or parameters of
        another structure, naming the field or the leaf, eagerly and under ``jit``.
        ``None`` (a state rebuilt from bare arrays) skips the check.
    """

    weights: dict
    traces: dict
    count: Any
    rejected: Any
    inner: Any
    spec: Any = None


class PCState(NamedTuple):
    """State of the predictor-corrector strategy.

    Attributes
    ----------
    estimate : (R, B) array
        Per-replica raw block traces (``R = num_probes``, blocks in ``blocks.names`` order).
    anchor : pytree
        Parameters at the last refresh (``every > 1`` only, else ``()``).
    anchor_residuals : dict
        Residuals at ``anchor`` on the batch of that refresh (``every > 1`` only): reused
        as the unperturbed residuals when the caller signals a fixed batch by passing
        ``residuals_prev``.
    """

    estimate: Any
    anchor: Any
    anchor_residuals: Any


class NTKWeighting(Weighting):
    """The JAX side's :class:`~pinn_adapters.Weighting`: jit-able ``init`` / ``update`` over a state pytree.

    Made by :func:`ntk_weighting` and :func:`gradnorm_weighting` (the configuration is checked
    there and closed over; the state holds arrays only).

    Parameters
    ----------
    init, update : callable
        ``init(key, params, batch) -> WeightingState`` and
        ``update(key, state, params_prev, params, batch, *, residuals=None, residuals_prev=None)
        -> (weights, WeightingState)``.
    blocks : ResidualBlocks
    config : dict
        The static configuration.
    """

    def __init__(self, init: Callable, update: Callable, blocks: ResidualBlocks, config: dict):
        self._init, self._update, self.blocks, self.config = init, update, blocks, config
        self._compiled = None

    def init(self, key, params, batch) -> WeightingState:
        """The first :class:`WeightingState` (see :class:`~pinn_adapters.Weighting`)."""
        return self._init(key, params, batch)

    def update(self, key, state, params_prev, params, batch, *, residuals=None, residuals_prev=None):
        """``(weights, state)`` for the step from ``params_prev`` to ``params`` (see :class:`~pinn_adapters.Weighting`).

        Called eagerly (outside ``jax.jit``), it runs one compiled program per argument structure,
        kept by this weighting: an eager ``every > 1`` refresh would otherwise compile its
        ``lax.cond`` branches on every call. Inside a transformation it is traced through."""
        args = (key, state, params_prev, params, batch, residuals, residuals_prev)
        if not isinstance(state, WeightingState) or any(
            isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)
        ):  # traced by the caller, or a bad state: the plain call (its checks raise the clear errors)
            return self._update(*args[:5], residuals=residuals, residuals_prev=residuals_prev)
        if self._compiled is None:
            self._compiled = jax.jit(
                lambda k, s, a, b, bt, r, rp: self._update(k, s, a, b, bt, residuals=r, residuals_prev=rp)
            )
        return self._compiled(*args)


class _Strategy(NamedTuple):
    """How one estimator produces raw (``normalize="sum"``) block traces.

    ``init(key, params, batch) -> (raw, inner)``;
    ``refresh(key, inner, params_prev, params, batch, residuals, residuals_prev) -> (raw, inner)``;
    ``refresh is None`` means fixed unit weights.
    """

    init: Callable
    refresh: Callable | None


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
    subsample="auto",
    batched=True,
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
    estimator : {"pc", "exact", "hutchinson", "moving_average", "gradnorm", "none"}
        ``"pc"``: the predictor-corrector of Hirsch and Pichi: the same ``num_probes``
        probes ``v`` on ``params_prev`` and ``params``,
        ``T <- (1 - gamma) (T - q(params_prev)) + q(params)`` with
        ``q(p) = ||J_b(p) v||^2``, unbiased at every step when the first estimate is
        (the recursion is :func:`sketchtrace.predictor_corrector_step`, shared with the torch side).
        ``"exact"``: chunked per-point gradients (``chunk_size``). ``"hutchinson"``:
        ``num_probes`` fresh probes every refresh. ``"moving_average"``: sketchtrace's
        :func:`~sketchtrace.moving_average` of fresh estimates with ``beta = gamma``
        (biased toward stale values). ``"gradnorm"``: gradient-norm weights
        ``sum_j ||grad L_j|| / ||grad L_b||`` in place of the traces (see
        :func:`gradnorm_weighting` for jaxpi's defaults). ``"none"``: all weights 1.
    every : int
        Refresh on every ``every``-th ``update`` call (others keep the weights). pc with
        ``every > 1`` corrects between the parameters of the last refresh (kept in the
        state, with their residuals) and ``params``.
    ema : float, optional
        Momentum in ``[0, 1)``: ``w <- ema * w + (1 - ema) * w_new`` at refreshes.
    rule, cap, eps : see :func:`ntk_weights`
        If a refresh produces non-finite traces the previous weights (and estimator
        state) are kept and ``state.rejected`` is incremented.
    normalize : {"sum", "mean", None}
        Trace normalisation (see :func:`ntk_traces`); ``rule="jaxpi"`` needs ``"sum"``.
    num_probes : int
        Probes per refresh for ``"hutchinson"``, ``"pc"`` and ``"moving_average"``.
    sampler : str or callable, optional
        Probe distribution (default ``"rademacher"``, every estimator). The pc used ``"gaussian"``
        before: Rademacher probes give the same expectation with no larger variance
        (``Var v^T A v = 2 (||A||_F^2 - sum A_ii^2)`` against ``2 ||A||_F^2``), and drawing them costs a
        32nd of the random words (on the main job's 49,665-parameter network the Gaussian draw was
        a third of a pc refresh).
    side : {"auto", "params", "residuals"}
        Probe side for ``"hutchinson"``.
    h : float, optional
        Finite-difference step (default ``sketchtrace.default_step`` times ``1 + rms(params)``).
    fd : {"forward", "central", "jvp"}
        How pc evaluates ``J v``: finite differences of the residuals or exact JVPs.
    gamma : float or "auto"
        pc damping in ``(0, 1]`` (``1`` is fresh Hutchinson); about the relative change
        of the NTK per step is best (docs/schedules.md has measurements). ``"auto"``
        uses sketchtrace's online choice (no ``subsample``/``batched`` then). For
        ``"moving_average"`` it is the average's ``beta``.
    subsample : "auto", int, float, dict or None
        pc only: draw one random subset of each block's points per refresh (an ``int``
        count, or a ``float`` fraction in ``(0, 1]``; a dict gives one per block) and
        scale its quadratic forms by ``n_b / m_b``. The same subset and probe serve
        ``q(params_prev)`` and ``q(params)``, so every block trace stays unbiased over
        subset and probe (docs/schedules.md gives the variance and the measurements).
        Needs pointwise blocks. ``"auto"`` (default): ``max(10 %, 64)`` points of each
        block for pc with a float gamma on blocks declared ``pointwise=True``, all
        points otherwise; ``None``: all points.
    batched : bool
        pc only: evaluate the residuals at all parameter points of a refresh
        (``params_prev + h v``, ``params + h v`` and, if not passed in, the
        unperturbed ones) in one ``vmap``-ed call instead of one call each.
    init_method : {"exact", "hutchinson"}
        First pc estimate: exact traces or ``init_matvecs`` Hutchinson probes.
    chunk_size : int
        Points per chunk for exact traces.
    mesh : jax.sharding.Mesh, optional
        Spread exact traces (points) and Hutchinson traces (probes) over devices, see
        :func:`ntk_traces` (this includes pc's exact first estimate).

    Notes
    -----
    ``update`` accepts ``residuals=`` (at ``params`` on ``batch``, which training
    computes anyway) and ``residuals_prev=`` (at ``params_prev`` on the same batch;
    passing it tells pc that the batch is fixed, so with ``every > 1`` the anchor's
    stored residuals are reused too). pc with forward differences then costs one
    residual evaluation per probe at each of the two parameter points, on the
    subsampled points only.

    References
    ----------
    M. Hirsch, F. Pichi, "Convergence and sketching-based efficient computation of
    neural tangent kernel weights in physics-based loss", arXiv:2511.15530 (2025).
    P. Dharangutte, C. Musco, "Dynamic trace estimation", NeurIPS 2021. arXiv:2110.13605
    S. Wang, X. Yu, P. Perdikaris, J. Comput. Phys. 449 (2022). doi:10.1016/j.jcp.2021.110768
    """
    cfg = _configure(
        blocks,
        estimator=estimator,
        every=every,
        ema=ema,
        rule=rule,
        cap=cap,
        eps=eps,
        normalize=normalize,
        num_probes=num_probes,
        sampler=sampler,
        side=side,
        h=h,
        fd=fd,
        gamma=gamma,
        subsample=subsample,
        batched=batched,
        init_method=init_method,
        init_matvecs=init_matvecs,
        chunk_size=chunk_size,
    )
    strategy = _STRATEGIES[_strategy_name(cfg)](blocks, cfg, mesh)
    init, update = _skeleton(blocks, cfg, strategy)
    return NTKWeighting(init, update, blocks, cfg)


def gradnorm_weighting(blocks: ResidualBlocks, *, every=1000, momentum=0.9, cap=None, eps=1e-6):
    """Gradient-norm loss weights with jaxpi's defaults (an :class:`NTKWeighting`).

    ``lambda_b = sum_j ||grad L_j|| / ||grad L_b||`` at refreshes (every ``every``-th
    update, and at ``init``), smoothed by ``w <- momentum w + (1 - momentum) lambda``.
    The same as ``ntk_weighting(blocks, estimator="gradnorm", every=every, ema=momentum)``.

    Parameters
    ----------
    blocks : ResidualBlocks
    every : int
        Refresh period in steps (jaxpi: 1000).
    momentum : float or None
        Running-average momentum in ``[0, 1)`` (jaxpi: 0.9); ``None`` uses the fresh weights.
    cap, eps : see :func:`ntk_weights`.

    Notes
    -----
    A refresh costs one forward pass and one batched backward pass over the blocks.
    jaxpi divides by the mean of the norms instead of their sum (its weights are ours
    divided by the number of blocks, a common factor that Adam does not see) and starts
    from unit weights; here the first weights are the gradient-norm weights at ``init``.

    References
    ----------
    S. Wang, Y. Teng, P. Perdikaris, "Understanding and mitigating gradient flow
    pathologies in physics-informed neural networks", SIAM J. Sci. Comput. 43 (2021).
    S. Wang, S. Sankaran, H. Wang, P. Perdikaris, "An expert's guide to training
    physics-informed neural networks", arXiv:2308.08468 (2023).
    """
    return ntk_weighting(blocks, estimator="gradnorm", every=every, ema=momentum, cap=cap, eps=eps)


#: the same function under the spelling of jaxpi's paper (``estimator="grad_norm"`` is accepted too)
grad_norm_weighting = gradnorm_weighting


# ----------------------------------------------------------------------------- configuration


def _configure(blocks, **cfg) -> dict:
    """Check every argument before any work; return the static configuration."""
    if not isinstance(blocks, ResidualBlocks):
        raise TypeError(f"blocks must be a pinn_adapters.ResidualBlocks; got {type(blocks).__name__}")
    shared = ("estimator", "every", "ema", "rule", "cap", "eps", "normalize", "num_probes", "gamma", "h")
    shared += ("init_method", "subsample")
    cfg.update(check_options(blocks, ESTIMATORS, gamma_auto=True, **{k: cfg[k] for k in shared}))  # both sides' rules
    est, gamma = cfg["estimator"], cfg["gamma"]
    check_choice(cfg["fd"], FD_SCHEMES, name="fd")
    check_choice(cfg["side"], SIDES, name="side")
    cfg["chunk_size"] = check_positive_int(cfg["chunk_size"], name="chunk_size")
    cfg["init_matvecs"] = check_optional(check_positive_int, cfg["init_matvecs"], name="init_matvecs")
    _check_sampler(cfg["sampler"])
    if est == "moving_average" and gamma == "auto":
        raise ValueError("gamma='auto' is for estimator='pc'; give the moving average a float beta as gamma")
    cfg["batched"] = check_bool(cfg["batched"], name="batched")
    cfg["sampler"] = cfg["sampler"] or "rademacher"  # packed sign bits: 32 signs per random word
    if cfg["init_matvecs"] is None:
        cfg["init_matvecs"] = max(8, cfg["num_probes"])
    return cfg


SIDES = ("auto", "params", "residuals", "input", "output")


def _check_sampler(sampler):
    """``None``, a sampler name of sketchtrace (``sampler_<name>``) or a callable."""
    if sampler is None or callable(sampler):
        return sampler
    names = tuple(n[len("sampler_") :] for n in dir(st) if n.startswith("sampler_"))
    if not isinstance(sampler, str):
        check_callable(sampler, name="sampler", what=f"one of {names} or a callable")
    return check_choice(sampler, names, name="sampler")


def _strategy_name(cfg) -> str:
    if cfg["estimator"] == "pc" and cfg["gamma"] == "auto":
        return "dynamic"
    if cfg["estimator"] == "moving_average":
        return "dynamic"
    return cfg["estimator"]


# ----------------------------------------------------------------------------- the shared skeleton


def _skeleton(blocks, cfg, strategy):
    """The ``init`` / ``update`` pair around a strategy: traces -> guarded, smoothed weights."""
    names = blocks.names
    every, ema = cfg["every"], cfg["ema"]
    config = StateSpec.build("ntk_weighting", {**cfg, "blocks": tuple(names)}, {}).config

    def spec_for(params):
        return StateSpec("ntk_weighting", config, (("params", tree_signature(params)),))

    def init(key, params, batch):
        batch = _checked_batch(blocks, batch)
        spec = spec_for(params)
        rows = residual_rows(blocks, params, batch)
        dtype = ravel_pytree(params)[0].dtype
        ones = {n: jnp.ones((), dtype) for n in names}
        zero = jnp.zeros((), jnp.int32)
        if strategy.refresh is None:
            return WeightingState(ones, ones, zero, zero, (), spec)
        raw, inner = strategy.init(key, params, batch)
        traces = _normalized(raw, rows, cfg)
        weights, _ = _weights_from(traces, rows, ones, cfg)
        return WeightingState(_cast(weights, dtype), _cast(traces, dtype), zero, zero, inner, spec)

    def refresh(key, state, params_prev, params, batch, residuals, residuals_prev):
        rows = residual_rows(blocks, params, batch)
        raw, inner = strategy.refresh(key, state.inner, params_prev, params, batch, residuals, residuals_prev)
        traces = _normalized(raw, rows, cfg)
        new_w, ok = _weights_from(traces, rows, state.weights, cfg)
        if ema is not None:
            new_w = {n: ema * state.weights[n] + (1 - ema) * new_w[n] for n in names}
        dtype = state.weights[names[0]].dtype
        traces = {n: jnp.where(ok, traces[n], state.traces[n]) for n in names}
        # a rejected refresh must not poison a recursion: keep the estimator's old state
        inner = jax.tree.map(lambda a, b: jnp.where(ok, a, b), inner, state.inner)
        rejected = state.rejected + jnp.where(ok, 0, 1).astype(jnp.int32)
        return WeightingState(_cast(new_w, dtype), _cast(traces, dtype), state.count + 1, rejected, inner, state.spec)

    def update(key, state, params_prev, params, batch, *, residuals=None, residuals_prev=None):
        _check_update_args(state, spec_for, params_prev, params, names, residuals, residuals_prev)
        batch = _checked_batch(blocks, batch)
        if strategy.refresh is None:
            return state.weights, state._replace(count=state.count + 1)
        args = (key, state, params_prev, params, batch, residuals, residuals_prev)
        if every == 1:
            new = refresh(*args)
        else:
            new = jax.lax.cond(
                (state.count + 1) % every == 0,
                lambda _: refresh(*args),
                lambda _: state._replace(count=state.count + 1),
                None,
            )
        return new.weights, new

    return init, update


def _checked_batch(blocks, batch):
    """The coerced batch, with exactly the weighting's blocks, each with points (refused by name)."""
    batch = blocks.coerce_batch(batch)
    check_blocks(batch, blocks.names, name="batch")
    return batch


def _check_update_args(state, spec_for, params_prev, params, names, residuals, residuals_prev):
    """``update``'s arguments before any work (eager and at trace time: all checks are static)."""
    if not isinstance(state, WeightingState):
        raise TypeError(
            f"state must be the WeightingState returned by this weighting's init (or a previous update); "
            f"got {type(state).__name__}"
        )
    if state.spec is not None:
        expected = spec_for(params)
        check_state_spec(StateSpec(state.spec.maker, state.spec.config), StateSpec(expected.maker, expected.config))
        made = dict(state.spec.shapes).get("params")
        if made is not None:
            check_signature(params_prev, made, name="params_prev", made_for="the state was made (at init) for")
            check_signature(params, made, name="params", made_for="the state was made (at init) for")
    for name, value in (("residuals", residuals), ("residuals_prev", residuals_prev)):
        if value is not None:
            check_blocks(value, names, name=name)


def _cast(d, dtype):
    return {n: jnp.asarray(v, dtype) for n, v in d.items()}


def _normalized(raw, rows, cfg):
    if cfg["normalize"] == "mean":
        return {n: raw[n] / rows[n] for n in raw}
    return raw


def _weights_from(traces, rows, fallback, cfg):
    """Weights from traces; where any trace is not finite or not positive, ``fallback`` (and ``ok`` False).

    A block trace ``tr(K_bb)`` (or a gradient norm) is positive; a recursive estimate
    (pc) can still cross zero through its probe noise, and a weight from it would be
    negative or enormous, so such a refresh is rejected like a non-finite one.
    """
    names = list(traces)
    sizes = rows if cfg["rule"] == "jaxpi" else None
    w = ntk_weights(traces, rule=cfg["rule"], cap=cfg["cap"], eps=cfg["eps"], sizes=sizes)
    ok = jnp.all(jnp.stack([jnp.isfinite(traces[n]) & (traces[n] > 0) for n in names]))
    return {n: jnp.where(ok, w[n], fallback[n]) for n in names}, ok


# ----------------------------------------------------------------------------- strategies


def _exact_fn(blocks, cfg, mesh):
    def exact(params, batch):
        est = ntk_traces(
            None,
            blocks,
            params,
            batch,
            method="exact",
            chunk_size=cfg["chunk_size"],
            normalize="sum",
            mesh=mesh,
        )
        return {n: est[n].value for n in blocks.names}

    return exact


def _hutchinson_fn(blocks, cfg, mesh):
    def hutchinson(key, params, batch, num_matvecs):
        est = ntk_traces(
            key,
            blocks,
            params,
            batch,
            method="hutchinson",
            num_matvecs=num_matvecs,
            side=cfg["side"],
            sampler=cfg["sampler"],
            normalize="sum",
            mesh=mesh,
        )
        return {n: est[n].value for n in blocks.names}

    return hutchinson


def _none_strategy(blocks, cfg, mesh):
    return _Strategy(init=None, refresh=None)


def _exact_strategy(blocks, cfg, mesh):
    exact = _exact_fn(blocks, cfg, mesh)
    return _Strategy(
        init=lambda key, params, batch: (exact(params, batch), ()),
        refresh=lambda key, inner, pp, params, batch, r, rp: (exact(params, batch), ()),
    )


def _hutchinson_strategy(blocks, cfg, mesh):
    hutch, m = _hutchinson_fn(blocks, cfg, mesh), cfg["num_probes"]
    return _Strategy(
        init=lambda key, params, batch: (hutch(key, params, batch, m), ()),
        refresh=lambda key, inner, pp, params, batch, r, rp: (
            hutch(key, params, batch, m),
            (),
        ),
    )


def _first_traces(blocks, cfg, mesh):
    """The first estimate of the recursive strategies: exact, or ``init_matvecs`` Hutchinson probes."""
    if cfg["init_method"] == "exact":
        exact = _exact_fn(blocks, cfg, mesh)
        return lambda key, params, batch: exact(params, batch)
    hutch = _hutchinson_fn(blocks, cfg, mesh)
    return lambda key, params, batch: hutch(key, params, batch, cfg["init_matvecs"])


def _dynamic_strategy(blocks, cfg, mesh):
    """sketchtrace's own dynamic estimators (moving average; pc with ``gamma="auto"``) on the Gram operator.

    An exact first estimate is carried as an ``offset`` next to the core's state (which
    starts from one probe): both recursions shrink the estimate's deviation by
    ``1 - gamma_t`` per update, so ``offset <- (1 - gamma_t) offset`` keeps their sum unbiased.
    """
    names, g, m = blocks.names, cfg["gamma"], cfg["num_probes"]
    if cfg["estimator"] == "pc":
        core = st.predictor_corrector(num_probes=m, gamma=g, sampler=cfg["sampler"], init_matvecs=m)
    else:
        core = st.moving_average(num_probes=m, beta=g, sampler=cfg["sampler"], init_matvecs=m)
    first = _first_traces(blocks, cfg, mesh)

    def gram(params, batch, value):
        if cfg["fd"] == "jvp":
            return st.gram(
                st.JacobianOperator(blocks.residuals, params, batch, mode="fwd"),
                side="input",
            )
        return st.FiniteDifferenceGram(blocks.residuals, params, batch, h=cfg["h"], scheme=cfg["fd"], value=value)

    def init(key, params, batch):
        op = gram(params, batch, None)
        state = core.init(key, op)
        start = core.estimate(state, op.block_names)
        exact = first(key, params, batch)
        return exact, (state, {n: exact[n] - start[n].value for n in names})

    def refresh(key, inner, params_prev, params, batch, residuals, residuals_prev):
        state, offset = inner
        op_next = gram(params, batch, residuals)
        op_prev = gram(params_prev, batch, residuals_prev) if cfg["estimator"] == "pc" else None
        kept = {n: 1 - state.gamma[i] for i, n in enumerate(op_next.block_names)}
        est, state = core.update(key, state, op_prev, op_next)
        offset = {n: kept[n] * offset[n] for n in names}
        return {n: est[n].value + offset[n] for n in names}, (state, offset)

    return _Strategy(init, refresh)


def _pc_strategy(blocks, cfg, mesh):
    """The predictor-corrector with row subsampling and one batched residual evaluation."""
    names, gamma, every = blocks.names, cfg["gamma"], cfg["every"]
    R = cfg["num_probes"]
    first = _first_traces(blocks, cfg, mesh)

    def init(key, params, batch):
        raw = first(key, params, batch)
        T = jnp.stack([raw[n] for n in names])
        estimate = jnp.broadcast_to(T, (R, len(names)))
        if every > 1:
            return raw, PCState(estimate, params, blocks.residuals(params, batch))
        return raw, PCState(estimate, (), ())

    def refresh(key, inner, params_prev, params, batch, residuals, residuals_prev):
        anchor, anchor_res = (), ()
        if every > 1:
            params_prev = inner.anchor
            # the anchor's residuals are on the caller's batch only if it says the batch is fixed
            residuals_prev = inner.anchor_residuals if residuals_prev is not None else None
            if residuals is None:
                residuals = blocks.residuals(params, batch)
            anchor, anchor_res = params, residuals
        x, y = pc_quad_forms(
            key,
            blocks,
            params_prev,
            params,
            batch,
            cfg,
            residuals=residuals,
            residuals_prev=residuals_prev,
        )
        T, _ = st.predictor_corrector_step(inner.estimate, x, y, gamma)  # the core's recursion
        value = T.mean(axis=0)
        return {n: value[i] for i, n in enumerate(names)}, PCState(T.astype(inner.estimate.dtype), anchor, anchor_res)

    return _Strategy(init, refresh)


def _gradnorm_strategy(blocks, cfg, mesh):
    return _Strategy(*gradnorm_strategy(blocks))


_STRATEGIES = {
    "none": _none_strategy,
    "gradnorm": _gradnorm_strategy,
    "exact": _exact_strategy,
    "hutchinson": _hutchinson_strategy,
    "dynamic": _dynamic_strategy,
    "pc": _pc_strategy,
}


# ----------------------------------------------------------------------------- pc quadratic forms


def _subsample(key, blocks, batch, spec):
    """One uniform random subset of each block's points: (sub-batch, indices or None, scale) per block."""
    sizes = blocks.sizes(batch)
    sub, idx, scale = {}, {}, {}
    for i, n in enumerate(blocks.names):
        m = sample_size(None if spec is None else spec[n], sizes[n])
        if m == sizes[n]:
            sub[n], idx[n], scale[n] = batch[n], None, 1.0
            continue
        ix = jax.random.choice(jax.random.fold_in(key, i), sizes[n], (m,), replace=False)
        sub[n] = jax.tree.map(lambda a, ix=ix: a[ix], batch[n])
        idx[n], scale[n] = ix, subsample_scale(sizes[n], m)
    return sub, idx, sizes, scale


def _take_rows(residuals, idx, sizes):
    """The rows of the subsampled points (a point may own several residual rows)."""
    if residuals is None:
        return None
    out = {}
    for n, r in residuals.items():
        out[n] = r if idx[n] is None else r.reshape(sizes[n], -1)[idx[n]].reshape(-1)
    return out


def _evaluate(g, points, batched):
    """``g`` at each row of ``points``: one ``vmap``-ed call, or one call per row."""
    if batched:
        return jax.vmap(g)(points)
    outs = [g(points[i]) for i in range(points.shape[0])]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)


def pc_quad_forms(key, blocks, params_prev, params, batch, cfg, *, residuals=None, residuals_prev=None):
    """``x = q(params_prev)``, ``y = q(params)``, each ``(R, B)``: ``scale_b ||J_b v_r||^2`` on one subset.

    The subset (``cfg["subsample"]``) and the ``R`` probes are shared by both points.
    With ``gamma == 1`` ``x`` is zero and ``params_prev`` is not evaluated.
    """
    k_sub, k_v = jax.random.split(key)
    sub, idx, sizes, scale = _subsample(k_sub, blocks, batch, cfg["subsample"])
    flat, unravel = ravel_pytree(params)
    flat_prev = ravel_pytree(params_prev)[0] if cfg["gamma"] != 1 else None
    keys = jax.random.split(k_v, cfg["num_probes"])
    V = jax.vmap(lambda k: ravel_pytree(st.sample_like(k, params, sampler=cfg["sampler"]))[0])(keys)

    def g(x):
        return blocks.residuals(unravel(x), sub)

    anchors = [a for a in (flat_prev, flat) if a is not None]
    bases = [_take_rows(r, idx, sizes) for r in (residuals_prev, residuals)][-len(anchors) :]
    jv = _jvps(g, jnp.stack(anchors), bases, V.astype(flat.dtype), cfg)  # dict: (points, R, rows)
    q = jnp.stack([scale[n] * jnp.sum(jnp.square(jv[n]), axis=-1) for n in blocks.names], axis=-1)
    y = q[-1]
    x = q[0] if len(anchors) == 2 else jnp.zeros_like(y)
    return x, y


def _jvps(g, anchors, bases, V, cfg):
    """``J v`` at every anchor (``(A, P)``) for every probe (``(R, P)``): dict of ``(A, R, rows)``."""
    A, R = anchors.shape[0], V.shape[0]
    if cfg["fd"] == "jvp":
        X = jnp.repeat(anchors, R, axis=0)
        T = jnp.tile(V, (A, 1))
        if cfg["batched"]:
            out = jax.vmap(lambda x, t: jax.jvp(g, (x,), (t,))[1])(X, T)
        else:
            outs = [jax.jvp(g, (X[i],), (T[i],))[1] for i in range(A * R)]
            out = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        return jax.tree.map(lambda a: a.reshape(A, R, -1), out)
    h = cfg["h"]
    if h is None:
        rms = jnp.sqrt(jnp.mean(jnp.square(anchors[-1])))
        h = st.default_step(anchors.dtype, cfg["fd"]) * (1.0 + jax.lax.stop_gradient(rms))
    h = jnp.asarray(h, anchors.dtype)
    plus = (anchors[:, None, :] + h * V[None]).reshape(A * R, -1)
    if cfg["fd"] == "central":
        minus = (anchors[:, None, :] - h * V[None]).reshape(A * R, -1)
        out = _evaluate(g, jnp.concatenate([plus, minus]), cfg["batched"])
        return jax.tree.map(lambda a: ((a[: A * R] - a[A * R :]) / (2 * h)).reshape(A, R, -1), out)
    missing = [i for i, b in enumerate(bases) if b is None]
    out = _evaluate(
        g,
        jnp.concatenate([plus, anchors[jnp.asarray(missing, jnp.int32)]]) if missing else plus,
        cfg["batched"],
    )
    result = {}
    for n in out:
        f_plus = out[n][: A * R].reshape(A, R, -1)
        base = []
        for i, b in enumerate(bases):
            base.append(out[n][A * R + missing.index(i)] if b is None else b[n])
        result[n] = (f_plus - jnp.stack(base)[:, None, :]) / h
    return result
