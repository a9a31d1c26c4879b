"""NTK block traces and NTK loss weighting for torch PINNs (same contract as the JAX side).

``ntk_traces`` gives ``tr(K_bb) = ||J_b||_F^2`` per residual block: exactly from
chunked per-point gradients, or with sketchtrace's Hutchinson on the torch
backend (a ``torch.Generator`` as the randomness). ``ntk_weighting`` returns an
object with ``init(generator, params, batch)`` and
``update(generator, state, params_prev, params, batch) -> (weights, state)``, like
:func:`pinn_adapters.ntk_weighting`; the predictor-corrector (``"pc"``) applies
the same probes at ``params_prev`` and ``params``,
``T <- (1 - gamma) (T - q(params_prev)) + q(params)``, ``q(p) = ||J_b(p) v||^2``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch.func import jvp as func_jvp

import sketchtrace as st
from sketchtrace.backends import backend_for_key
from sketchtrace.operators import TorchFunctionOperator, torch_gram
from sketchtrace.validation import check_choice, check_num_matvecs

from .._ntk import ntk_weights
from ._blocks import TorchResidualBlocks

METHODS = ("exact", "hutchinson")
JVPS = ("auto", "func", "autograd", "forward", "central")
ESTIMATORS = ("pc", "exact", "hutchinson", "none")


def _check_blocks(blocks):
    if not isinstance(blocks, TorchResidualBlocks):
        raise TypeError(f"blocks must be a pinn_adapters.torch.TorchResidualBlocks; got {type(blocks).__name__}")


def _check_generator(generator, what):
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{what} needs a torch.Generator as randomness (e.g. torch.Generator().manual_seed(0)); "
            f"got {type(generator).__name__}"
        )


def _estimate(value, rows, spent):
    return st.Estimate(value, torch.zeros((), dtype=value.dtype), spent)


def exact_traces(blocks, params, batch, *, chunk_size=256) -> dict:
    """``{name: tensor}`` exact ``||J_b||_F^2`` from chunked per-point gradients."""
    norms = blocks.point_grad_sq_norms(params, batch, chunk_size=chunk_size)
    out = {}
    for name, v in norms.items():
        tr = v.sum()
        if not bool(torch.isfinite(tr)):
            raise ValueError(f"ntk_traces: block {name!r} has non-finite per-point gradients")
        out[name] = tr
    return out


# ----------------------------------------------------------------------------- Jacobian products


class _FlatParams:
    """Parameters as one flat vector and back (dict order)."""

    def __init__(self, params):
        self.names = tuple(params)
        self.shapes = [tuple(v.shape) for v in params.values()]
        self.sizes = [v.numel() for v in params.values()]
        self.flat = torch.cat([v.detach().reshape(-1) for v in params.values()])

    def unravel(self, flat):
        return {n: p.reshape(s) for n, p, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}


def jacobian_operator(blocks, params, batch, *, jvp="auto", h=None):
    """``J = d residuals / d params`` (rows: the blocks in order) as a torch operator with named blocks.

    ``jvp`` chooses how ``J v`` is computed: ``"func"`` (``torch.func.jvp``, vmapped over
    probes), ``"autograd"`` (the double-backward trick with ``torch.autograd.grad``,
    exact, for residuals written with autograd), ``"forward"`` / ``"central"`` (finite
    differences of the residuals, step ``h``; default ``sketchtrace.default_step`` times
    ``1 + rms(params)``), or ``"auto"`` (``"func"`` when ``torch.func`` can transform the
    residuals, else ``"autograd"``).
    """
    check_choice(jvp, JVPS, name="jvp")
    fp = _FlatParams(params)
    x0 = fp.flat

    def g(x):
        return torch.cat([blocks.block_residuals(n, fp.unravel(x), batch[n]) for n in blocks.names])

    with torch.enable_grad():  # residuals written with torch.autograd need a graph
        r0 = {n: blocks.block_residuals(n, params, batch[n]).detach() for n in blocks.names}
    sizes = {n: int(r.shape[0]) for n, r in r0.items()}
    f0 = torch.cat(list(r0.values()))
    if jvp == "auto":
        jvp = "func" if _func_ok(g, x0) else "autograd"
    matvec, vectorized = _jvp_fn(jvp, g, x0, f0, h)
    return TorchFunctionOperator(
        matvec, (int(f0.shape[0]), int(x0.shape[0])), x0.dtype, device=x0.device, blocks=sizes, vectorized=vectorized
    )


def _func_ok(g, x0) -> bool:
    try:
        func_jvp(g, (x0,), (torch.zeros_like(x0),))
        return True
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False


def _jvp_fn(kind, g, x0, f0, h):
    if kind == "func":
        return (lambda v: func_jvp(g, (x0,), (v,))[1]), True
    if kind == "autograd":
        return (lambda v: _double_backward_jvp(g, x0, v)), False
    if h is None:
        rms = float(torch.sqrt(torch.mean(x0.square())))
        h = st.default_step(str(x0.dtype).removeprefix("torch."), kind) * (1.0 + rms)

    def fd(v):
        with torch.enable_grad():
            if kind == "forward":
                return ((g(x0 + h * v) - f0) / h).detach()
            return ((g(x0 + h * v) - g(x0 - h * v)) / (2 * h)).detach()

    return fd, False


def _double_backward_jvp(g, x0, v):
    """``J v`` with two reverse passes: ``d/du [J^T u] . v`` (exact; works through autograd residuals)."""
    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)
        y = g(x)
        u = torch.zeros_like(y, requires_grad=True)
        (jtu,) = torch.autograd.grad(y, x, u, create_graph=True)
        (jv,) = torch.autograd.grad(jtu, u, v)
    return jv.detach()


# ----------------------------------------------------------------------------- traces


def ntk_traces(
    generator,
    blocks,
    params,
    batch,
    *,
    method="exact",
    num_matvecs=None,
    normalize="sum",
    sampler="rademacher",
    jvp="auto",
    h=None,
    chunk_size=256,
):
    """Traces of the diagonal NTK blocks ``tr(K_bb) = ||J_b||_F^2`` of a torch PINN.

    Parameters
    ----------
    generator : torch.Generator or None
        Randomness for ``method="hutchinson"`` (ignored, may be ``None``, for ``"exact"``).
    blocks : TorchResidualBlocks
    params : dict
        Parameter name -> tensor (e.g. ``blocks.params()``).
    batch : dict
        Block name -> points.
    method : {"exact", "hutchinson"}
        ``"exact"``: per-point gradients (``torch.func.vmap(jacrev)`` in chunks of
        ``chunk_size`` points, or one autograd call per residual row). ``"hutchinson"``:
        :func:`sketchtrace.block_traces` on ``J^T J`` (one ``J v`` per probe serves every block).
    num_matvecs : int
        Probes for ``"hutchinson"``.
    normalize : {"sum", "mean", None}
        ``"mean"`` divides by the block's residual rows; ``None`` follows ``blocks.reduction``.
    sampler, jvp, h :
        Probe distribution; how ``J v`` is computed (see :func:`jacobian_operator`).

    Returns
    -------
    dict
        Block name -> :class:`sketchtrace.Estimate` (``sem`` 0 for exact).
    """
    _check_blocks(blocks)
    check_choice(method, METHODS, name="method")
    if normalize not in ("sum", "mean", None):
        raise ValueError(f"normalize must be 'sum', 'mean' or None; got {normalize!r}")
    normalize = normalize or blocks.reduction
    blocks.check_batch(batch)
    rows = blocks.rows(params, batch)
    if method == "exact":
        out = {
            n: _estimate(t, rows[n], rows[n])
            for n, t in exact_traces(blocks, params, batch, chunk_size=chunk_size).items()
        }
    else:
        if num_matvecs is None:
            raise ValueError("num_matvecs is required for method='hutchinson' (a probe budget, e.g. 8)")
        num_matvecs = check_num_matvecs(num_matvecs)
        _check_generator(generator, "method='hutchinson'")
        J = jacobian_operator(blocks, params, batch, jvp=jvp, h=h)
        out = st.block_traces(generator, torch_gram(J, side="input"), num_matvecs=num_matvecs, sampler=sampler)
    if normalize == "mean":
        out = {n: st.Estimate(e.value / rows[n], e.sem / rows[n], e.num_matvecs) for n, e in out.items()}
    return {n: out[n] for n in blocks.names}


# ----------------------------------------------------------------------------- weighting


class TorchWeightingState(NamedTuple):
    """State of :func:`ntk_weighting` (tensors only; ``inner`` is pc's ``(R, B)`` replica estimates)."""

    weights: dict
    traces: dict
    count: int
    rejected: int
    inner: Any


class TorchNTKWeighting:
    """NTK loss weights refreshed along training (see :func:`ntk_weighting`)."""

    def __init__(self, blocks, cfg):
        self.blocks, self.config = blocks, cfg

    def __repr__(self):
        return f"TorchNTKWeighting(estimator={self.config['estimator']!r}, blocks={self.blocks.names})"

    def init(self, generator, params, batch) -> TorchWeightingState:
        """First weights (pc starts from exact traces, or ``init_matvecs`` Hutchinson probes)."""
        cfg, names = self.config, self.blocks.names
        self.blocks.check_batch(batch)
        dtype = next(iter(params.values())).dtype
        ones = {n: torch.ones((), dtype=dtype) for n in names}
        if cfg["estimator"] == "none":
            return TorchWeightingState(ones, ones, 0, 0, None)
        if cfg["estimator"] == "pc" and cfg["init_method"] == "hutchinson":
            raw = self._hutchinson(generator, params, batch, cfg["init_matvecs"])
        elif cfg["estimator"] == "hutchinson":
            raw = self._hutchinson(generator, params, batch, cfg["num_probes"])
        else:
            raw = exact_traces(self.blocks, params, batch, chunk_size=cfg["chunk_size"])
        inner = None
        if cfg["estimator"] == "pc":
            inner = torch.stack([raw[n] for n in names]).expand(cfg["num_probes"], -1).clone()
        weights, traces, ok = self._weights(raw, params, batch, ones)
        if not ok:
            raise ValueError(f"ntk_weighting.init: non-finite NTK traces {traces}")
        return TorchWeightingState(weights, traces, 0, 0, inner)

    def update(self, generator, state, params_prev, params, batch):
        """``(weights, new state)`` for the step from ``params_prev`` to ``params``."""
        cfg, names = self.config, self.blocks.names
        if not isinstance(state, TorchWeightingState):
            raise TypeError(f"state must be the TorchWeightingState from init/update; got {type(state).__name__}")
        count = state.count + 1
        if cfg["estimator"] == "none" or count % cfg["every"] != 0:
            return state.weights, state._replace(count=count)
        self.blocks.check_batch(batch)
        inner = state.inner
        if cfg["estimator"] == "exact":
            raw = exact_traces(self.blocks, params, batch, chunk_size=cfg["chunk_size"])
        elif cfg["estimator"] == "hutchinson":
            raw = self._hutchinson(generator, params, batch, cfg["num_probes"])
        else:
            inner = self._pc_step(generator, state.inner, params_prev, params, batch)
            value = inner.mean(dim=0)
            raw = {n: value[i] for i, n in enumerate(names)}
        weights, traces, ok = self._weights(raw, params, batch, state.weights)
        if not ok:  # keep the previous weights and estimator state
            return state.weights, state._replace(count=count, rejected=state.rejected + 1)
        if cfg["ema"] is not None:
            weights = {n: cfg["ema"] * state.weights[n] + (1 - cfg["ema"]) * weights[n] for n in names}
        return weights, TorchWeightingState(weights, traces, count, state.rejected, inner)

    # -- pieces
    def _hutchinson(self, generator, params, batch, num):
        _check_generator(generator, "ntk_weighting")
        J = jacobian_operator(self.blocks, params, batch, jvp=self.config["jvp"], h=self.config["h"])
        sampler = self.config["sampler"] or "rademacher"
        est = st.block_traces(generator, torch_gram(J, side="input"), num_matvecs=num, sampler=sampler)
        return {n: est[n].value for n in self.blocks.names}

    def _pc_step(self, generator, T, params_prev, params, batch):
        """``T <- (1 - gamma) (T - q(params_prev)) + q(params)`` with shared probes."""
        _check_generator(generator, "ntk_weighting(estimator='pc')")
        cfg = self.config
        bk = backend_for_key(generator)
        batch, scale = self._subsample(generator, batch)
        J_new = torch_gram(jacobian_operator(self.blocks, params, batch, jvp=cfg["jvp"], h=cfg["h"]), side="input")
        V = bk.probes(generator, cfg["num_probes"], J_new.probe_dim, J_new.dtype, cfg["sampler"] or "gaussian")
        y = bk.quad_forms_of(J_new, V) * scale.to(J_new.dtype)
        if cfg["gamma"] == 1.0:
            return y.to(T.dtype)
        J_old = torch_gram(jacobian_operator(self.blocks, params_prev, batch, jvp=cfg["jvp"], h=cfg["h"]), side="input")
        x = bk.quad_forms_of(J_old, V) * scale.to(J_old.dtype)
        return ((1.0 - cfg["gamma"]) * (T - x) + y).to(T.dtype)

    def _subsample(self, generator, batch):
        """One uniform subset of each block's points (``subsample``) and the scales ``n_b / m_b``.

        The same subset and probes serve ``q(params_prev)`` and ``q(params)``, so each block
        trace stays unbiased over subset and probe.
        """
        spec, names = self.config["subsample"], self.blocks.names
        if spec is None:
            return batch, torch.ones(len(names), dtype=torch.float64)
        sub, scale = {}, []
        for n in names:
            pts = batch[n]
            size = pts.shape[0]
            m = min(size, spec) if isinstance(spec, int) else max(1, round(spec * size))
            idx = torch.randperm(size, generator=generator, device=generator.device)[:m].to(pts.device)
            sub[n] = pts[idx]
            scale.append(size / m)
        return sub, torch.tensor(scale, dtype=torch.float64)

    def _weights(self, raw, params, batch, fallback):
        cfg, names = self.config, self.blocks.names
        rows = self.blocks.rows(params, batch)
        traces = {n: raw[n] / rows[n] if cfg["normalize"] == "mean" else raw[n] for n in names}
        if not all(bool(torch.isfinite(torch.as_tensor(t))) for t in traces.values()):
            return fallback, traces, False
        sizes = rows if cfg["rule"] == "jaxpi" else None
        w = ntk_weights(
            {n: float(t) for n, t in traces.items()}, rule=cfg["rule"], cap=cfg["cap"], eps=cfg["eps"], sizes=sizes
        )
        dtype = next(iter(fallback.values())).dtype
        return {n: torch.tensor(float(w[n]), dtype=dtype) for n in names}, traces, True


def ntk_weighting(
    blocks,
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
    gamma=0.02,
    jvp="forward",
    h=None,
    init_method="exact",
    init_matvecs=None,
    chunk_size=256,
    subsample=None,
):
    """NTK loss weights for a torch PINN, refreshed along training.

    ``state = w.init(generator, params, batch)``;
    ``weights, state = w.update(generator, state, params_prev, params, batch)`` (the
    parameters before and after the optimizer step). Arguments as for
    :func:`pinn_adapters.ntk_weighting`: ``estimator`` in ``{"pc", "exact",
    "hutchinson", "none"}``; pc's ``J v`` uses ``jvp`` (default ``"forward"``
    differences of the residuals, as on JAX; ``"func"``/``"autograd"`` are exact).
    ``subsample`` (pc only; an ``int`` count or a ``float`` fraction in ``(0, 1]``) draws
    one uniform subset of each block's points per refresh and scales its quadratic forms by
    ``n_b / m_b`` (unbiased; needs blocks whose residual rows belong to their points,
    ``TorchResidualBlocks(..., pointwise=True)``). Every argument is checked here, before any work.
    """
    _check_blocks(blocks)
    check_choice(estimator, ESTIMATORS, name="estimator")
    check_choice(jvp, JVPS, name="jvp")
    check_choice(init_method, ("exact", "hutchinson"), name="init_method")
    check_choice(rule, ("wang2022", "jaxpi"), name="rule")
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean'; got {normalize!r}")
    if rule == "jaxpi" and normalize != "sum":
        raise ValueError("rule='jaxpi' divides by the block sizes itself: use normalize='sum'")
    every = check_num_matvecs(every, name="every")
    num_probes = check_num_matvecs(num_probes, name="num_probes")
    if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ValueError(f"gamma must be a number in (0, 1]; got {gamma!r}")
    if ema is not None and not (isinstance(ema, (int, float)) and 0 <= ema < 1):
        raise ValueError(f"ema must be None or a number in [0, 1); got {ema!r}")
    if h is not None and not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
        raise ValueError(f"h must be None or a positive number; got {h!r}")
    if subsample is not None:
        _check_subsample(subsample, blocks, estimator)
    if init_method == "hutchinson":
        init_matvecs = check_num_matvecs(num_probes if init_matvecs is None else init_matvecs, name="init_matvecs")
    ntk_weights({n: 1.0 for n in blocks.names}, rule=rule, cap=cap, eps=eps)  # checks cap and eps
    cfg = {
        "estimator": estimator,
        "every": every,
        "ema": ema,
        "rule": rule,
        "cap": cap,
        "eps": eps,
        "normalize": normalize,
        "num_probes": num_probes,
        "sampler": sampler,
        "gamma": float(gamma),
        "jvp": jvp,
        "h": h,
        "init_method": init_method,
        "init_matvecs": init_matvecs,
        "chunk_size": check_num_matvecs(chunk_size, name="chunk_size"),
        "subsample": subsample,
    }
    return TorchNTKWeighting(blocks, cfg)


def _check_subsample(spec, blocks, estimator):
    if estimator != "pc":
        raise ValueError(f"subsample= is for estimator='pc'; got estimator={estimator!r}")
    if not blocks.pointwise:
        raise ValueError("subsample= needs pointwise blocks (each residual row belongs to one point of its block)")
    if isinstance(spec, bool) or not isinstance(spec, (int, float)):
        raise TypeError(f"subsample must be an int count or a float fraction in (0, 1]; got {spec!r}")
    if (isinstance(spec, int) and spec < 1) or (isinstance(spec, float) and not 0 < spec <= 1):
        raise ValueError(f"subsample must be an int >= 1 or a float in (0, 1]; got {spec!r}")
