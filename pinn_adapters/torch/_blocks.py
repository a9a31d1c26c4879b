"""Residual blocks of a PyTorch PINN: named residual functions of an ``nn.Module``.

A block's residual function ``fn(model, points)`` gets ``model``, a callable that
evaluates the module with the parameters being differentiated
(``torch.func.functional_call``), and returns the block's residuals at ``points``
(any shape whose leading axis is the points). Residuals may be written with
``torch.func`` (then per-point gradients use ``torch.func.vmap`` of
``torch.func.jacrev`` over point chunks) or with ``torch.autograd.grad`` as PINA and
DeepXDE do (then the host's residual function runs on chunks of ``chunk_size`` points
and each chunk's rows get their gradients from one batched ``torch.autograd.grad``
through that chunk's graph only, so the cost is linear in the rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import functional_call, jacrev, vmap

from sketchtrace.validation import check_bool, check_choice, check_num_matvecs

PER_SAMPLE = ("auto", "vmap", "loop")
VMAP_CHUNK, LOOP_CHUNK = 256, 64  # points per chunk: torch.func per-point gradients; autograd residual chunks


def module_params(module) -> dict:
    """A snapshot of the module's trainable parameters: ``{name: detached copy}``.

    A copy, not a view: an optimizer step updates the module in place, and
    ``params_prev`` must keep the values from before it.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    params = {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("module has no trainable parameters")
    return params


class TorchResidualBlocks:
    """Named residual blocks of a torch PINN.

    Parameters
    ----------
    module : torch.nn.Module
        The network (or any module whose ``forward`` the residuals call, e.g. a PINA solver).
    fns : mapping
        Block name -> ``fn(model, points)`` returning that block's residuals.
    reduction : {"mean", "sum"}
        How the host's loss reduces each block's squared residuals (for
        ``normalize=None`` in :func:`~pinn_adapters.torch.ntk_traces`).
    per_sample : {"auto", "vmap", "loop"}
        Per-point gradients for exact traces: ``torch.func.vmap(jacrev)`` in chunks,
        ``torch.autograd.grad`` on point chunks (``loop``), or ``"auto"`` (``vmap``, and
        ``loop`` for residuals that ``torch.func`` cannot transform).
    pointwise : bool
        Whether each residual row belongs to one point of its block (a residual at a point
        depends on that point only), as for PINN residuals; pc's ``subsample`` and the
        chunked ``loop`` need it (without it ``loop`` differentiates the whole block's graph
        once per row: quadratic in the rows).
    """

    def __init__(self, module, fns: Mapping[str, Callable], *, reduction="mean", per_sample="auto", pointwise=True):
        module_params(module)
        if not isinstance(fns, Mapping) or not fns:
            raise TypeError("fns must be a non-empty mapping block name -> fn(model, points)")
        for name, fn in fns.items():
            if not isinstance(name, str) or not callable(fn):
                raise TypeError(f"fns must map block names (str) to callables; got {name!r}: {fn!r}")
        self.module = module
        self.fns = dict(fns)
        self.reduction = check_choice(reduction, ("mean", "sum"), name="reduction")
        self.per_sample = check_choice(per_sample, PER_SAMPLE, name="per_sample")
        self.pointwise = check_bool(pointwise, name="pointwise")
        self._mode = {}  # block -> "vmap" | "loop", decided on first use under "auto"
        self._rows = {}  # (block, points) -> residual rows
        self._batched_grads = None  # whether autograd.grad(is_grads_batched=True) works on these residuals

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fns)

    def __repr__(self):
        return f"TorchResidualBlocks(names={self.names}, reduction={self.reduction!r})"

    def params(self) -> dict:
        """The module's current trainable parameters (detached)."""
        return module_params(self.module)

    def check_batch(self, batch):
        if not isinstance(batch, Mapping) or set(batch) != set(self.names):
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"batch must map every block name {list(self.names)} to its points; got {got}")
        for name in self.names:
            if not isinstance(batch[name], torch.Tensor) or batch[name].ndim < 1 or batch[name].shape[0] == 0:
                raise ValueError(f"batch[{name!r}] must be a non-empty tensor of points (leading axis = points)")
        return batch

    def block_residuals(self, name, params, points) -> torch.Tensor:
        """Block ``name``'s residuals at ``points`` as one flat vector."""
        out = self.fns[name](lambda *a: functional_call(self.module, params, a), points)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"residual function {name!r} must return a tensor; got {type(out).__name__}")
        return torch.as_tensor(out).reshape(-1)

    def residuals(self, params, batch) -> dict:
        """``{name: flat residuals}`` at ``params`` on ``batch``."""
        return {n: self.block_residuals(n, params, batch[n]) for n in self.names}

    def rows(self, params, batch) -> dict:
        """Residual rows per block (points times components; counted once per points tensor)."""
        out = {}
        for n in self.names:
            pts = batch[n]
            key = (n, pts.data_ptr(), tuple(pts.shape), pts.dtype)
            if key not in self._rows:
                with torch.enable_grad():  # residuals written with torch.autograd need a graph
                    self._rows[key] = int(self.block_residuals(n, params, pts).shape[0])
            out[n] = self._rows[key]
        return out

    def point_grad_sq_norms(self, params, batch, *, chunk_size=None) -> dict:
        """``{name: (rows,)}`` squared norms of each residual row's parameter gradient.

        Their sum over a block is the exact NTK trace ``||J_b||_F^2``. ``chunk_size``:
        points per chunk (default 256 under ``vmap``, 64 for autograd residuals).
        """
        if chunk_size is not None:
            chunk_size = check_num_matvecs(chunk_size, name="chunk_size")
        return {n: self._row_norms(n, params, batch[n], chunk_size) for n in self.names}

    def _row_norms(self, name, params, pts, chunk_size):
        mode = self._mode.get(name, self.per_sample)
        if mode in ("auto", "vmap"):
            try:
                out = self._vmap_norms(name, params, pts, chunk_size or VMAP_CHUNK)
                self._mode[name] = "vmap"
                return out
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                if mode == "vmap":
                    raise
            self._mode[name] = "loop"
        if not self.pointwise:  # rows do not belong to points: one graph over the whole block
            return self._loop_norms(name, params, pts)
        size = chunk_size or LOOP_CHUNK
        return torch.cat([self._loop_norms(name, params, pts[lo : lo + size]) for lo in range(0, pts.shape[0], size)])

    def _vmap_norms(self, name, params, pts, chunk_size):
        """Chunked per-point gradients: ``vmap`` over points of ``jacrev`` of one point's residuals."""

        def one(p, x):
            return self.block_residuals(name, p, x[None])

        per_point = vmap(jacrev(one), in_dims=(None, 0))
        parts = []
        for lo in range(0, pts.shape[0], chunk_size):
            jac = per_point(params, pts[lo : lo + chunk_size])  # {leaf: (chunk, comps, *leaf shape)}
            sq = sum(g.reshape(g.shape[0], g.shape[1], -1).square().sum(-1) for g in jac.values())
            parts.append(sq.reshape(-1).detach())
        return torch.cat(parts)

    def _loop_norms(self, name, params, pts):
        """Row gradients of the residuals at ``pts`` through their graph (batched over rows when autograd can)."""
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            r = self.block_residuals(name, p, pts)
            leaves = list(p.values())
            rows = r.shape[0]
            if self._batched_grads is not False:
                try:
                    eye = torch.eye(rows, dtype=r.dtype, device=r.device)
                    grads = torch.autograd.grad(
                        r, leaves, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
                    )
                    self._batched_grads = True
                    return sum(g.reshape(rows, -1).square().sum(1) for g in grads if g is not None).detach()
                except (RuntimeError, NotImplementedError):
                    self._batched_grads = False
            out = torch.empty(rows, dtype=r.dtype, device=r.device)
            for i in range(rows):
                grads = torch.autograd.grad(r[i], leaves, retain_graph=True, allow_unused=True)
                out[i] = sum(g.square().sum() for g in grads if g is not None)
        return out.detach()
