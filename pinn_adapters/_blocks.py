"""Residual blocks of a physics-informed loss, seen as a block Jacobian operator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import sketchtrace as st
from sketchtrace.validation import check_choice

REDUCTIONS = ("mean", "sum")


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_finite_residuals(residuals, *, where="residuals"):
    """Raise a ValueError naming the block when a concrete residual is NaN or inf.

    Under ``jax.jit`` the values are abstract and the check is skipped (the
    weighting keeps its previous weights instead, see :func:`ntk_weighting`).
    """
    for name, r in residuals.items():
        if _is_concrete(r) and not bool(jnp.all(jnp.isfinite(r))):
            bad = int(jnp.sum(~jnp.isfinite(r)))
            raise ValueError(
                f"{where}: block {name!r} has {bad} non-finite residual value(s) (NaN or inf) out of "
                f"{r.size}; NTK weights are refused for non-finite residuals (check the network, "
                "the learning rate and the collocation points)"
            )


def num_points(points) -> int:
    """Number of points in a batch entry: the shared leading axis of its leaves."""
    leaves = jax.tree_util.tree_leaves(points)
    if not leaves:
        raise ValueError("batch: a block's points must contain at least one array")
    sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            f"batch: a block's points must be an array (or pytree of arrays) with a shared leading "
            f"point axis; got leading sizes {sorted(sizes)}"
        )
    return sizes.pop()


class ResidualBlocks:
    """Named blocks of per-point residuals ``fn(params, points) -> (n_b,)``.

    The residual vector ``R(theta)`` of a physics-informed loss is stacked from
    blocks (PDE residual, boundary, initial conditions). This object evaluates the
    blocks, builds their Jacobian ``J = dR/dtheta`` as a sketchtrace block operator
    (one JVP serves every block; VJPs are per block) and evaluates the residuals at
    perturbed parameters (for finite differences).

    Parameters
    ----------
    fns : mapping
        Block name -> ``fn(params, points)`` returning the residuals at the given
        points: shape ``(n_b,)``, or ``(n_b, k)`` for ``k`` residual components per
        point (flattened row-major; each point then contributes ``k`` rows).
        ``params`` is any pytree of floating arrays (a dict, an Equinox module's
        array leaves, Flax variables, ...). For ``method="exact"`` traces the
        residual at a point must depend on that point only (true for PINN residuals;
        not for layers that mix points such as batch normalisation).
    reduction : {"mean", "sum"}
        How the host's loss reduces each block: ``mean(r_b**2)`` or ``sum(r_b**2)``.
        Used by the training loop and by ``normalize=None`` in :func:`ntk_traces`.
    pointwise : bool
        ``True`` (default): the residual at a point depends on that point only, and
        a block's points can be sliced (exact traces then take one per-point gradient
        per point). ``False``: the block's points are an opaque batch (e.g. a host
        library's batch object); exact traces then take one VJP of the whole block per
        residual row, in chunks (same memory bound, more FLOPs).

    Notes
    -----
    A batch is a mapping block name -> points (an array, or a pytree of arrays with
    a shared leading point axis). Block names are kept in sorted order, the order
    in which JAX flattens dicts.
    """

    def __init__(self, fns: Mapping[str, Callable], *, reduction: str = "mean", pointwise: bool = True):
        if not isinstance(fns, Mapping):
            raise TypeError(f"fns must be a mapping block name -> fn(params, points); got {type(fns).__name__}")
        if not fns:
            raise ValueError("fns must contain at least one residual block")
        for name, fn in fns.items():
            if not isinstance(name, str):
                raise TypeError(f"fns: block names must be strings; got {name!r}")
            if not callable(fn):
                raise TypeError(f"fns[{name!r}] must be callable fn(params, points); got {type(fn).__name__}")
        self.fns = {k: fns[k] for k in sorted(fns)}
        self.reduction = check_choice(reduction, REDUCTIONS, name="reduction")
        if not isinstance(pointwise, bool):
            raise TypeError(f"pointwise must be True or False; got {pointwise!r}")
        self.pointwise = pointwise

    # ------------------------------------------------------------------ basics
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fns)

    def __repr__(self):
        return f"ResidualBlocks({list(self.names)}, reduction={self.reduction!r})"

    def coerce_batch(self, batch):
        """The batch as a mapping block name -> points (adapters override this)."""
        return batch

    def _check_batch(self, batch):
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch must be a mapping block name -> points; got {type(batch).__name__}")
        missing = [n for n in self.names if n not in batch]
        if missing:
            raise ValueError(f"batch has no points for block(s) {missing}; it has {sorted(batch)}")

    def sizes(self, batch) -> dict[str, int]:
        """Number of points per block in ``batch`` (static Python ints)."""
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        return {n: num_points(batch[n]) for n in self.names}

    def block_residuals(self, name, params, points):
        """Flattened residuals of one block."""
        r = self.fns[name](params, points)
        r = jnp.asarray(r)
        if not jnp.issubdtype(r.dtype, jnp.floating):
            raise TypeError(f"block {name!r} returned dtype {r.dtype}; residuals must be floating")
        return r.reshape(-1)

    def residuals(self, params, batch) -> dict:
        """All blocks' flattened residuals: dict name -> ``(rows_b,)``.

        Compiled once per :class:`ResidualBlocks` (``jax.jit``; inside another
        transformation it is simply inlined).
        """
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        fn = self.__dict__.get("_residuals_jit")
        if fn is None:
            fn = self.__dict__["_residuals_jit"] = jax.jit(self._residuals)
        return fn(params, {n: batch[n] for n in self.names})

    def _residuals(self, params, batch):
        return {n: self.block_residuals(n, params, batch[n]) for n in self.names}

    __call__ = residuals

    def losses(self, residuals) -> dict:
        """Per-block unweighted losses ``mean(r**2)`` or ``sum(r**2)`` (the host's reduction)."""
        red = jnp.mean if self.reduction == "mean" else jnp.sum
        return {n: red(jnp.square(r)) for n, r in residuals.items()}

    def loss(self, params, batch, weights=None):
        """Weighted loss ``sum_b w_b * reduce(r_b**2)`` (weights default to 1)."""
        losses = self.losses(self.residuals(params, batch))
        if weights is None:
            return sum(losses.values())
        return sum(weights[n] * losses[n] for n in self.names)

    # ------------------------------------------------------------------ operators
    def jacobian(self, params, batch, *, mode="fwd"):
        """The block Jacobian ``dR/dparams`` as a :class:`sketchtrace.JacobianOperator`.

        Linearized once; ``mode="fwd"`` makes JVPs the primitive (one JVP gives every
        block), ``"bwd"`` VJPs. ``.value`` holds the residual dict.
        """
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        return st.JacobianOperator(lambda p, b: self.residuals(p, b), params, batch, mode=mode)

    def perturbed(self, params, direction, h, batch):
        """Residuals at ``params + h * direction`` (``direction`` a flat vector or a pytree)."""
        flat, unravel = ravel_pytree(params)
        if not isinstance(direction, jax.Array) or jnp.ndim(direction) != 1:
            direction = ravel_pytree(direction)[0]
        return self.residuals(unravel(flat + h * direction.astype(flat.dtype)), batch)

    # ------------------------------------------------------------------ exact traces
    def point_grad_sq_norms(self, params, batch, *, chunk_size=256):
        """Per-point squared gradient norms ``||d r(x)/d params||^2`` per block.

        Per-point gradients are computed ``chunk_size`` points at a time
        (``jax.vmap(jax.grad)`` inside ``jax.lax.map``), so peak memory is about
        ``chunk_size`` gradients, never the full ``n x p`` Jacobian. For ``k``
        residual components per point the norms are summed over the components.
        Returns dict name -> ``(n_b,)``; the block trace ``||J_b||_F^2`` is its sum.
        """
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
        fn = self.__dict__.get("_norms_jit")
        if fn is None:
            fn = self.__dict__["_norms_jit"] = jax.jit(self._point_grad_sq_norms, static_argnames="chunk_size")
        return fn(params, {n: batch[n] for n in self.names}, chunk_size=chunk_size)

    def _point_grad_sq_norms(self, params, batch, *, chunk_size):
        if not self.pointwise:
            return self._row_grad_sq_norms(params, batch, chunk_size=chunk_size)
        out = {}
        for name in self.names:
            pts = batch[name]
            n = num_points(pts)

            def one(pt, name=name):
                single = jax.tree.map(lambda a: a[None], pt)

                def r(p):
                    return self.block_residuals(name, p, single)

                jac = jax.jacrev(r)(params)  # pytree with leading axis k
                return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(jac))

            c = min(chunk_size, n)
            nchunks = -(-n // c)
            pad = nchunks * c - n
            padded = jax.tree.map(
                lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0) if pad else a, pts
            )
            chunks = jax.tree.map(lambda a: a.reshape((nchunks, c) + a.shape[1:]), padded)
            vals = jax.lax.map(jax.vmap(one), chunks).reshape(-1)[:n]
            out[name] = vals
        return out

    def _row_grad_sq_norms(self, params, batch, *, chunk_size):
        """Squared gradient norm of every residual row by one-hot VJPs, ``chunk_size`` rows at a time."""
        out = {}
        for name in self.names:
            r, vjp = jax.vjp(lambda p, name=name: self.block_residuals(name, p, batch[name]), params)
            m = r.shape[0]
            c = min(chunk_size, m)
            nchunks = -(-m // c)
            rows = jnp.minimum(jnp.arange(nchunks * c), m - 1).reshape(nchunks, c)

            def one(i, r=r, vjp=vjp):
                (g,) = vjp(jax.nn.one_hot(i, r.shape[0], dtype=r.dtype))
                return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(g))

            out[name] = jax.lax.map(jax.vmap(one), rows).reshape(-1)[:m]
        return out
