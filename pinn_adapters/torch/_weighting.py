"""NTK and gradient-norm loss weighting for torch PINNs (the JAX side's contract, in torch only).

``w = ntk_weighting(blocks, ...)``; ``state = w.init(generator, params, batch)``;
``weights, state = w.update(generator, state, params_prev, params, batch, residuals=None,
residuals_prev=None)``. Weights, guards and smoothing stay torch tensors (no JAX, no
Python-float round trip per refresh). pc has the JAX side's structure: one subset of each
block's points per refresh (``subsample="auto"``: ``max(ceil(10 %), 64)`` points, the rule of
``pinn_adapters``' JAX weighting), one probe set shared by ``params_prev`` and ``params``,
forward differences of the residuals at all parameter points in one ``torch.func.vmap``-ed
call where the residuals allow it (one call per parameter point otherwise: one loss
evaluation per parameter point, whatever the number of blocks), and the residuals the
training step computed reused when passed in. The recursion itself is sketchtrace's
``predictor_corrector_step``, the one the JAX weighting and ``st.predictor_corrector`` use.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.func import vmap

import sketchtrace as st
from sketchtrace.backends import backend_for_key
from sketchtrace.operators import torch_gram
from sketchtrace.validation import check_choice, check_num_matvecs

from .._sizes import sample_size, subsample_scale  # one rule for JAX and torch
from .._weighting_api import Weighting, check_options, check_rule, rule_weights  # shared with the JAX side
from ._ntk import JVPS, _check_blocks, _check_generator, _FlatParams, jacobian_operator

ESTIMATORS = ("pc", "exact", "hutchinson", "gradnorm", "none")
INITIAL = ("refresh", "ones")


def ntk_weights(traces: dict, *, rule="wang2022", cap=None, eps=1e-6, sizes=None) -> dict:
    """Weights from per-block traces, as torch tensors (the rule of :func:`pinn_adapters.ntk_weights`).

    ``wang2022``: ``sum_j T_j / T_b``; ``jaxpi``: ``mean_j m_j / m_b`` with ``m_b = T_b / sizes[b]``.
    Traces are floored at ``eps * max_j T_j``; ``cap`` clips (the arithmetic is the JAX side's,
    written once). Returns the weights only; see :func:`_guarded_weights` for the guard used
    during training.
    """
    rule, cap, eps = check_rule(rule, cap, eps)
    w, _ = _guarded_weights(traces, rule=rule, cap=cap, eps=eps, sizes=sizes)
    return w


def _guarded_weights(traces, *, rule, cap, eps, sizes=None, fallback=None):
    """``(weights, ok)``. Without ``fallback`` (init, :func:`ntk_weights`): ``ok`` when every trace is
    finite and one is positive. With it (a refresh): ``ok`` only when every trace is finite and
    positive, as on the JAX side (a pc estimate can cross zero through its probe noise), and the
    ``fallback`` weights where not ``ok``."""
    names = list(traces)
    vals = torch.stack([torch.as_tensor(traces[n]) for n in names])
    if rule == "jaxpi" and sizes is not None:
        vals = vals / torch.tensor([float(sizes[n]) for n in names], dtype=vals.dtype, device=vals.device)
    w, top = rule_weights(vals, rule=rule, cap=cap, eps=eps)
    finite = torch.isfinite(vals).all()
    ok = finite & (top > 0) if fallback is None else finite & (vals > 0).all()
    if fallback is not None:
        prev = torch.stack([fallback[n] for n in names]).to(w.dtype)
        w = torch.where(ok, w, prev)
    return {n: w[i] for i, n in enumerate(names)}, ok


class TorchWeightingState(NamedTuple):
    """State of :func:`ntk_weighting` (tensors; ``inner`` is pc's ``(R, B)`` replica estimates).

    ``anchor`` / ``anchor_residuals``: parameters (and, when passed in, full-batch residuals)
    of the last refresh, kept for pc with ``every > 1``.
    """

    weights: dict
    traces: dict
    count: int
    rejected: Any
    inner: Any
    anchor: Any = None
    anchor_residuals: Any = None


def block_grad_norms(blocks, params, batch) -> dict:
    """``{name: ||grad_params L_b||}`` with ``L_b`` the block's mean (or sum) of squared residuals.

    One evaluation of each block's residuals (one loss evaluation) and one backward pass per block.
    """
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    leaves = list(p.values())
    out = {}
    with torch.enable_grad():
        for n in blocks.names:
            r = blocks.block_residuals(n, p, batch[n])
            loss = r.square().mean() if blocks.reduction == "mean" else r.square().sum()
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            out[n] = torch.sqrt(sum(g.square().sum() for g in grads if g is not None)).detach()
    return out


class TorchNTKWeighting(Weighting):
    """The torch side's :class:`~pinn_adapters.Weighting` (made by :func:`ntk_weighting`).

    Parameters
    ----------
    blocks : TorchResidualBlocks
    cfg : dict
        The configuration checked by :func:`ntk_weighting` (kept as ``config``).
    """

    def __init__(self, blocks, cfg):
        self.blocks, self.config = blocks, cfg
        self._vmap_ok = None  # whether the residuals can be vmapped over parameter points

    def init(self, generator, params, batch) -> TorchWeightingState:
        """First weights (pc starts from exact traces, or ``init_matvecs`` Hutchinson probes)."""
        cfg, names = self.config, self.blocks.names
        self.blocks.check_batch(batch)
        dtype = next(iter(params.values())).dtype
        ones = {n: torch.ones((), dtype=dtype) for n in names}
        zero = torch.zeros((), dtype=torch.int64)
        est = cfg["estimator"]
        if est == "none":
            return TorchWeightingState(ones, ones, 0, zero, None)
        if est == "pc" and cfg["init_method"] == "hutchinson":
            raw, rows = self._hutchinson(generator, params, batch, cfg["init_matvecs"])
        elif est == "hutchinson":
            raw, rows = self._hutchinson(generator, params, batch, cfg["num_probes"])
        elif est == "gradnorm":
            raw, rows = block_grad_norms(self.blocks, params, batch), None
        elif est == "pc" or cfg["initial"] == "refresh":
            raw, rows = self._exact(params, batch)
        else:  # initial="ones": unit weights, the first refresh at the first update
            return TorchWeightingState(ones, ones, 0, zero, None, self._anchor(params), None)
        inner = torch.stack([raw[n] for n in names]).expand(cfg["num_probes"], -1).clone() if est == "pc" else None
        traces = self._normalise(raw, rows)
        weights, ok = _guarded_weights(traces, rule=cfg["rule"], cap=cfg["cap"], eps=cfg["eps"], sizes=rows)
        if not bool(ok):  # one check at init: nothing to fall back on
            raise ValueError(
                f"ntk_weighting.init: non-finite or all-zero traces { {n: float(t) for n, t in traces.items()} }"
            )
        if cfg["initial"] == "ones":
            weights = ones
        return TorchWeightingState(weights, traces, 0, zero, inner, self._anchor(params), None)

    def update(self, generator, state, params_prev, params, batch, *, residuals=None, residuals_prev=None):
        """``(weights, new state)`` for the step from ``params_prev`` to ``params``.

        ``residuals`` / ``residuals_prev``: optional ``{name: flat residuals}`` at ``params`` /
        ``params_prev`` on ``batch`` (the training step's own); pc then skips those evaluations.
        """
        cfg, names = self.config, self.blocks.names
        if not isinstance(state, TorchWeightingState):
            raise TypeError(f"state must be the TorchWeightingState from init/update; got {type(state).__name__}")
        count = state.count + 1
        if cfg["estimator"] == "none" or (count - cfg["offset"]) % cfg["every"] != 0:
            return state.weights, state._replace(count=count)
        self.blocks.check_batch(batch)
        inner, est = state.inner, cfg["estimator"]
        if est == "exact":
            raw, rows = self._exact(params, batch)
        elif est == "hutchinson":
            raw, rows = self._hutchinson(generator, params, batch, cfg["num_probes"])
        elif est == "gradnorm":
            raw, rows = block_grad_norms(self.blocks, params, batch), None
        else:
            prev, res_prev = params_prev, residuals_prev
            if cfg["every"] > 1:  # correct from the last refresh, not from the last step
                prev = state.anchor
                res_prev = state.anchor_residuals if residuals_prev is not None else None
            inner, rows = self._pc_step(generator, state.inner, prev, params, batch, residuals, res_prev)
            value = inner.mean(dim=0)
            raw = {n: value[i] for i, n in enumerate(names)}
        traces = self._normalise(raw, rows)
        new, ok = _guarded_weights(
            traces, rule=cfg["rule"], cap=cfg["cap"], eps=cfg["eps"], sizes=rows, fallback=state.weights
        )
        if cfg["ema"] is not None:
            new = {n: cfg["ema"] * state.weights[n] + (1 - cfg["ema"]) * new[n] for n in names}
        weights = {n: torch.where(ok, new[n], state.weights[n]) for n in names}
        if est == "pc":
            inner = torch.where(ok, inner, state.inner)
        kept = state.traces if state.traces is not None else traces
        traces = {n: torch.where(ok, traces[n], kept[n]) for n in names}
        anchor = self._anchor(params) if cfg["every"] > 1 else None
        return weights, TorchWeightingState(
            weights, traces, count, state.rejected + (~ok).to(torch.int64), inner, anchor, residuals
        )

    # -- pieces
    def _anchor(self, params):
        return {k: v.detach().clone() for k, v in params.items()} if self.config["every"] > 1 else None

    def _normalise(self, raw, rows):
        if self.config["normalize"] != "mean" or rows is None:
            return raw
        return {n: raw[n] / rows[n] for n in self.blocks.names}

    def _exact(self, params, batch):
        norms = self.blocks.point_grad_sq_norms(params, batch, chunk_size=self.config["chunk_size"])
        return {n: v.sum() for n, v in norms.items()}, {n: int(v.shape[0]) for n, v in norms.items()}

    def _hutchinson(self, generator, params, batch, num):
        _check_generator(generator, "ntk_weighting")
        cfg = self.config
        jvp = "auto" if cfg["jvp"] == "forward" and cfg["estimator"] == "hutchinson" else cfg["jvp"]
        J = jacobian_operator(self.blocks, params, batch, jvp=jvp, h=cfg["h"])
        est = st.block_traces(generator, torch_gram(J, side="input"), num_matvecs=num, sampler=cfg["hutch_sampler"])
        rows = {n: b - a for n, a, b in J.blocks}
        return {n: est[n].value for n in self.blocks.names}, rows

    def _subsample(self, generator, batch):
        """One uniform subset of each block's points and the scales ``n_b / m_b``."""
        spec = self.config["subsample"]
        idx, scale = {}, []
        for n in self.blocks.names:
            size = batch[n].shape[0]
            m = sample_size(None if spec is None else spec[n], size)
            if m == size:
                idx[n] = None
            else:
                idx[n] = torch.randperm(size, generator=generator, device=generator.device)[:m].to(batch[n].device)
            scale.append(subsample_scale(size, m))
        return idx, scale

    def _pc_step(self, generator, T, params_prev, params, batch, residuals, residuals_prev):
        """``T <- (1 - gamma) (T - q(params_prev)) + q(params)``: sketchtrace's ``predictor_corrector_step``."""
        x, y, rows = self._pc_quad_forms(generator, params_prev, params, batch, residuals, residuals_prev, T.dtype)
        new, _ = st.predictor_corrector_step(T, 0.0 if x is None else x, y, self.config["gamma"])
        return new, rows

    def _pc_quad_forms(self, generator, params_prev, params, batch, residuals, residuals_prev, dtype):
        """``x = q(params_prev)`` (``None`` when ``gamma == 1``), ``y = q(params)``, each ``(R, B)``, and the rows.

        One subset of each block's points and one probe set serve both parameter points;
        ``q_b = (n_b / m_b) ||J_b v||^2`` on the subset.
        """
        _check_generator(generator, "ntk_weighting(estimator='pc')")
        cfg, names = self.config, self.blocks.names
        idx, scale = self._subsample(generator, batch)
        sub = {n: batch[n] if idx[n] is None else batch[n][idx[n]] for n in names}
        if cfg["jvp"] not in ("forward", "central"):  # exact JVPs: through the Jacobian operator
            return self._pc_operator(generator, params_prev, params, sub, scale, dtype)
        fp_new, fp_old = _FlatParams(params), _FlatParams(params_prev)
        bk = backend_for_key(generator)
        V = bk.probes(generator, cfg["num_probes"], fp_new.flat.shape[0], fp_new.flat.dtype, cfg["pc_sampler"])
        h = self._step(fp_new.flat)
        damped = cfg["gamma"] < 1.0
        known = {"new": _slice(residuals, idx, batch), "old": _slice(residuals_prev, idx, batch) if damped else None}
        pts, tags = [], []
        for tag, fp in (("new", fp_new), ("old", fp_old)) if damped else (("new", fp_new),):
            if cfg["jvp"] == "forward":
                pts += [fp.flat + h * V]
                tags += [(tag, "plus")]
                if known[tag] is None:
                    pts += [fp.flat[None]]
                    tags += [(tag, "base")]
            else:
                pts += [fp.flat + h * V, fp.flat - h * V]
                tags += [(tag, "plus"), (tag, "minus")]
        stacked = torch.cat(pts)  # (P, p): every parameter point of this refresh
        sizes = [x.shape[0] for x in pts]
        q = {"new": [], "old": []}
        rows = {}
        for i, n in enumerate(names):
            R = self._residuals_at(n, fp_new, stacked, sub[n])  # (P, rows_sub)
            parts = dict(zip(tags, torch.split(R, sizes)))
            rows[n] = round(R.shape[1] * scale[i])
            for tag in q if damped else ("new",):
                if cfg["jvp"] == "forward":
                    base = parts.get((tag, "base"), None)
                    base = known[tag][n][None] if base is None else base
                    jv = (parts[(tag, "plus")] - base) / h
                else:
                    jv = (parts[(tag, "plus")] - parts[(tag, "minus")]) / (2 * h)
                q[tag].append(jv.square().sum(1) * scale[i])
        y = torch.stack(q["new"], dim=1).to(dtype)
        x = torch.stack(q["old"], dim=1).to(dtype) if damped else None
        return x, y, rows

    def _pc_operator(self, generator, params_prev, params, sub, scale, dtype):
        """:meth:`_pc_quad_forms` with exact JVPs, through the Jacobian's Gram operator on the subset."""
        cfg = self.config
        bk = backend_for_key(generator)
        sc = torch.tensor(scale, dtype=dtype)
        J_new = torch_gram(jacobian_operator(self.blocks, params, sub, jvp=cfg["jvp"], h=cfg["h"]), side="input")
        V = bk.probes(generator, cfg["num_probes"], J_new.probe_dim, J_new.dtype, cfg["pc_sampler"])
        y = bk.quad_forms_of(J_new, V).to(dtype) * sc
        rows = {n: round((b - a) * s) for (n, a, b), s in zip(J_new.blocks, scale)}
        if cfg["gamma"] == 1.0:
            return None, y, rows
        J_old = torch_gram(jacobian_operator(self.blocks, params_prev, sub, jvp=cfg["jvp"], h=cfg["h"]), side="input")
        x = bk.quad_forms_of(J_old, V).to(dtype) * sc
        return x, y, rows

    def _step(self, flat):
        if self.config["h"] is not None:
            return self.config["h"]
        base = st.default_step(str(flat.dtype).removeprefix("torch."), self.config["jvp"])
        return base * (1.0 + torch.sqrt(torch.mean(flat.square())))

    def _residuals_at(self, name, fp, stacked, pts):
        """``(P, rows)`` residuals of block ``name`` at each parameter point (one vmapped call if possible)."""

        def one(flat):
            return self.blocks.block_residuals(name, fp.unravel(flat), pts)

        if self._vmap_ok is not False:
            try:
                out = vmap(one)(stacked).detach()
                self._vmap_ok = True
                return out
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                if self._vmap_ok:
                    raise
                self._vmap_ok = False
        with torch.enable_grad():  # residuals written with torch.autograd need a graph
            return torch.stack([one(x).detach() for x in stacked])


def _slice(residuals, idx, batch):
    """Full-batch residuals restricted to the subset's points (rows are point-major)."""
    if residuals is None:
        return None
    out = {}
    for n, r in residuals.items():
        r = torch.as_tensor(r).detach().reshape(-1)
        if idx[n] is not None:
            r = r.reshape(batch[n].shape[0], -1)[idx[n]].reshape(-1)
        out[n] = r
    return out


def ntk_weighting(
    blocks,
    *,
    estimator="pc",
    every=1,
    ema=None,
    rule="wang2022",
    cap=None,
    eps=1e-6,
    normalize=None,
    num_probes=1,
    sampler=None,
    gamma=0.02,
    jvp="forward",
    h=None,
    init_method="exact",
    init_matvecs=None,
    chunk_size=None,
    subsample="auto",
    initial="refresh",
):
    """NTK (or gradient-norm) loss weights for a torch PINN, refreshed along training.

    ``state = w.init(generator, params, batch)``;
    ``weights, state = w.update(generator, state, params_prev, params, batch, residuals=None,
    residuals_prev=None)`` (the parameters before and after the optimizer step): the
    :class:`~pinn_adapters.Weighting` shape of :func:`pinn_adapters.ntk_weighting`, with a
    ``torch.Generator`` as the randomness and a dict of tensors as the parameters.

    Parameters
    ----------
    blocks : TorchResidualBlocks
    estimator : {"pc", "exact", "hutchinson", "gradnorm", "none"}
        As for :func:`pinn_adapters.ntk_weighting`; ``"gradnorm"`` uses the per-block gradient
        norms of the reduced losses in place of the traces (:func:`gradnorm_weighting`).
    every : int
        Refresh on every ``every``-th ``update`` call (the only schedule; pc with ``every > 1``
        corrects from the parameters of the last refresh, kept in the state).
    ema : float, optional
        ``w <- ema w + (1 - ema) w_new`` at refreshes.
    rule, cap, eps :
        See :func:`pinn_adapters.ntk_weights` (``rule="jaxpi"`` needs ``normalize="sum"``).
    normalize : {None, "sum", "mean"}
        ``None`` (default): follow ``blocks.reduction``, so mean-reduced host losses get
        mean-normalised traces (per-row averages; the weights then do not follow the point counts).
    num_probes, sampler, gamma :
        pc's probes per refresh (default sampler ``"gaussian"``; ``"rademacher"`` for Hutchinson)
        and damping in ``(0, 1]``.
    jvp : {"forward", "central", "func", "autograd", "auto"}
        How pc evaluates ``J v``: finite differences of the residuals (default; all parameter
        points in one ``torch.func.vmap`` call when the residuals allow it) or exact JVPs.
    h : float, optional
        Finite-difference step (default ``sketchtrace.default_step`` times ``1 + rms(params)``).
    init_method, init_matvecs :
        pc's first estimate: exact traces, or ``init_matvecs`` Hutchinson probes.
    chunk_size : int, optional
        Points per chunk for exact traces (default 256 under ``torch.func``, 64 for autograd residuals).
    subsample : "auto", int, float, dict or None
        pc only: one uniform subset of each block's points per refresh, its quadratic forms
        scaled by ``n_b / m_b`` (unbiased). ``"auto"`` (default): ``max(ceil(10 %), 64)``
        points per block on pointwise blocks, all points otherwise; the size rule is the JAX
        side's (:mod:`pinn_adapters` ``subsample``).
    initial : {"refresh", "ones"}
        ``"refresh"``: the first weights come from a refresh at ``init``. ``"ones"``: unit
        weights at ``init`` and the first refresh at the first ``update`` (then every
        ``every``-th), smoothed from one by ``ema``: jaxpi's schedule.

    Returns
    -------
    TorchNTKWeighting
        A :class:`~pinn_adapters.Weighting`, the JAX side's object shape.

    Notes
    -----
    Every argument is checked here, before any work.
    """
    _check_blocks(blocks)
    opts = check_options(  # the JAX side's rules and messages
        blocks,
        ESTIMATORS,
        estimator=estimator,
        every=every,
        ema=ema,
        rule=rule,
        cap=cap,
        eps=eps,
        normalize=normalize,
        num_probes=num_probes,
        gamma=gamma,
        h=h,
        init_method=init_method,
        subsample=subsample,
    )
    check_choice(jvp, JVPS, name="jvp")
    check_choice(initial, INITIAL, name="initial")
    if init_method == "hutchinson":
        init_matvecs = check_num_matvecs(num_probes if init_matvecs is None else init_matvecs, name="init_matvecs")
    cfg = {
        "estimator": opts["estimator"],
        "every": opts["every"],
        "offset": 1 if initial == "ones" else 0,
        "ema": opts["ema"],
        "rule": opts["rule"],
        "cap": opts["cap"],
        "eps": opts["eps"],
        "normalize": opts["normalize"],
        "num_probes": opts["num_probes"],
        "pc_sampler": sampler or "gaussian",
        "hutch_sampler": sampler or "rademacher",
        "gamma": opts["gamma"],
        "jvp": jvp,
        "h": opts["h"],
        "init_method": init_method,
        "init_matvecs": init_matvecs,
        "chunk_size": None if chunk_size is None else check_num_matvecs(chunk_size, name="chunk_size"),
        "subsample": opts["subsample"],
        "initial": initial,
    }
    return TorchNTKWeighting(blocks, cfg)


def gradnorm_weighting(blocks, *, every=1000, momentum=0.9, cap=None, eps=1e-6, initial="refresh"):
    """Gradient-norm loss weights with jaxpi's defaults (a :class:`TorchNTKWeighting`).

    ``lambda_b = sum_j ||grad L_j|| / ||grad L_b||`` (Wang, Teng and Perdikaris 2021) at
    refreshes, smoothed by ``w <- momentum w + (1 - momentum) lambda``; the same as
    ``ntk_weighting(blocks, estimator="gradnorm", every=every, ema=momentum, initial=initial)``.
    jaxpi's own schedule is ``initial="ones"`` (unit weights, a refresh after the first step,
    then every ``every``); its weights are ours divided by the number of blocks (it divides by
    the mean of the norms), a common factor Adam does not see.
    """
    return ntk_weighting(blocks, estimator="gradnorm", every=every, ema=momentum, cap=cap, eps=eps, initial=initial)
