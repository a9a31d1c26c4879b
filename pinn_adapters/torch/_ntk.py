"""NTK block traces and NTK loss weighting for torch PINNs (same contract as the JAX side).

``ntk_traces`` gives ``tr(K_bb) = ||J_b||_F^2`` per residual block: exactly from
chunked per-point gradients, or with sketchtrace's Hutchinson on the torch
backend (a ``torch.Generator`` as the randomness). ``ntk_weighting`` returns an
object with ``init(generator, params, batch)`` and
``update(generator, state, params_prev, params, batch) -> (weights, state)``, like
:func:`pinn_adapters.ntk_weighting`; the predictor-corrector (``"pc"``) applies
the same probes at ``params_prev`` and ``params``,
``T <- (1 - gamma) (T - q(params_prev)) + q(params)``, ``q(p) = ||J_b(p) v||^2``,
on one random subset of each block's points per refresh. Nothing here imports JAX:
weights, guards and smoothing are torch operations (no host round trip per refresh).
"""

from __future__ import annotations

import torch
from torch.func import jvp as func_jvp

import sketchtrace as st
from sketchtrace.operators import TorchFunctionOperator, torch_gram
from sketchtrace.validation import check_choice, check_num_matvecs

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


def exact_traces(blocks, params, batch, *, chunk_size=None) -> dict:
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
    normalize=None,
    sampler="rademacher",
    jvp="auto",
    h=None,
    chunk_size=None,
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
        ``chunk_size`` points, or autograd on point chunks; linear in the rows). ``"hutchinson"``:
        :func:`sketchtrace.block_traces` on ``J^T J`` (one ``J v`` per probe serves every block).
    num_matvecs : int
        Probes for ``"hutchinson"``.
    normalize : {"sum", "mean", None}
        ``"mean"`` divides by the block's residual rows; ``None`` (default) follows
        ``blocks.reduction`` (mean-reduced losses get mean-normalised traces).
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
