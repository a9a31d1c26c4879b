"""Residual blocks of a physics-informed loss, seen as a block Jacobian operator."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import sketchtrace as st
from sketchtrace.validation import check_choice, check_int, is_concrete

REDUCTIONS = ("mean", "sum")


def check_finite_residuals(residuals, *, where="residuals"):
    """Raise a ValueError naming the block when a concrete residual is NaN or inf.

    Under ``jax.jit`` the values are abstract and the check is skipped (the
    weighting keeps its previous weights instead, see :func:`ntk_weighting`).
    """
    for name, r in residuals.items():
        if is_concrete(r) and not bool(jnp.all(jnp.isfinite(r))):
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


class MixedBlock:
    """A residual block ``mix(features(params, points), points)``: pointwise features, then a mix.

    Use it for residuals that combine several points, such as finite-difference
    stencils over the batch (``features``: the network at every point; ``mix``: the
    stencil), so that exact traces stay cheap: ``features`` must be pointwise (its
    rows at a point depend on that point only; verified at the first concrete exact
    computation, a violation raises a ValueError naming the block) and ``mix`` must
    not depend on the parameters. Exact traces then take one per-point gradient of
    the features per point (about one gradient step) and ``p`` JVPs of ``mix`` alone
    (no network evaluation), instead of ``min(p, rows)`` products of the whole block;
    memory ``n * k * p`` floats for ``n`` points, ``k`` features per point and ``p``
    parameters.

    Parameters
    ----------
    features : callable
        ``features(params, points) -> (n,)`` or ``(n, k)``, pointwise.
    mix : callable
        ``mix(u, points) -> residuals`` (any shape; flattened), without parameters.
    """

    def __init__(self, features: Callable, mix: Callable):
        for name, fn in (("features", features), ("mix", mix)):
            if not callable(fn):
                raise TypeError(f"MixedBlock: {name} must be callable; got {type(fn).__name__}")
        self.features, self.mix = features, mix

    def __call__(self, params, points):
        return self.mix(self.features(params, points), points)

    def __repr__(self):
        return f"MixedBlock(features={self.features!r}, mix={self.mix!r})"


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
        array leaves, Flax variables, ...). A :class:`MixedBlock` (pointwise
        features mixed across points, e.g. a stencil) is accepted as a block too.
        Whether exact traces may use per-point gradients is set by ``pointwise``.
    reduction : {"mean", "sum"}
        How the host's loss reduces each block: ``mean(r_b**2)`` or ``sum(r_b**2)``.
        Used by the training loop and by ``normalize=None`` in :func:`ntk_traces`.
    pointwise : {True, False, "auto"}
        Whether the residual rows at a point depend on that point only (true for PINN
        residuals; not for finite-difference stencils over the batch, normalisation over
        the batch, or ``net(p, x).sum()``). ``True`` (default): declared pointwise; the
        declaration is verified at the first exact computation with concrete values
        (:meth:`check_pointwise`: evaluate one point alone and move one point, three
        residual evaluations) and a wrong declaration raises a ValueError naming the
        block. ``"auto"``: the same check decides per block (under ``jit`` before any
        concrete call, the whole-block path is used, which is always correct).
        ``False``: the block's points are an opaque batch.

        Exact traces of a pointwise block take one per-point gradient per point
        (about the cost of one gradient step over the block). For other blocks they take
        ``min(p, m)`` Jacobian products over the whole block, ``p`` parameters and ``m``
        residual rows: ``p`` JVPs along the parameter basis when ``p <= m``
        (``||J||_F^2 = sum_j ||J e_j||^2``), else ``m`` one-hot VJPs; cost linear in the
        rows either way, chunked (memory of ``chunk_size`` products).

    Notes
    -----
    A batch is a mapping block name -> points (an array, or a pytree of arrays with
    a shared leading point axis). Block names are kept in sorted order, the order
    in which JAX flattens dicts.
    """

    def __init__(self, fns: Mapping[str, Callable], *, reduction: str = "mean", pointwise=True):
        if not isinstance(fns, Mapping):
            hint = " (wrap it: {'residual': fn}, one entry per block)" if callable(fns) else ""
            raise TypeError(f"fns must be a mapping block name -> fn(params, points); got {type(fns).__name__}{hint}")
        if not fns:
            raise ValueError("fns must contain at least one residual block")
        for name, fn in fns.items():
            if not isinstance(name, str):
                raise TypeError(f"fns: block names must be strings; got {name!r}")
            if not callable(fn):
                raise TypeError(f"fns[{name!r}] must be callable fn(params, points); got {type(fn).__name__}")
        self.fns = {k: fns[k] for k in sorted(fns)}
        self.reduction = check_choice(reduction, REDUCTIONS, name="reduction")
        if not (isinstance(pointwise, bool) or pointwise == "auto"):
            raise TypeError(f"pointwise must be True, False or 'auto'; got {pointwise!r}")
        self.pointwise = pointwise
        self._pointwise_found: dict[str, bool] = {}
        self._failed_pointwise: set[str] = set()  # declared pointwise, failed the check (strict=False callers)
        # the blocks' compiled functions, made here and held by this object (jax.jit compiles on first call)
        self._residuals_jit = jax.jit(self._residuals)
        self._norms_jit = jax.jit(self._point_grad_sq_norms, static_argnames=("chunk_size", "modes"))
        self._jacobian_jit = jax.jit(self._jacobian_matrix, static_argnames=("chunk_size", "modes"))

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
        for n in self.names:
            leaves = jax.tree_util.tree_leaves(batch[n])
            if any(jnp.ndim(x) == 0 for x in leaves):
                raise ValueError(
                    f"batch[{n!r}] holds a scalar; a block's points need a leading point axis "
                    "(e.g. shape (n,) or (n, d); use x[None] for a single point)"
                )

    def check_residuals(self, residuals, *, name="residuals"):
        """Check a residual dict (as from :meth:`residuals`): every block present, 1-D arrays."""
        if not isinstance(residuals, Mapping):
            raise TypeError(f"{name} must be a dict block name -> residual array; got {type(residuals).__name__}")
        missing = [n for n in self.names if n not in residuals]
        if missing:
            raise ValueError(f"{name} has no entry for block(s) {missing}; it has {sorted(residuals)}")
        return residuals

    def sizes(self, batch) -> dict[str, int]:
        """Number of points per block in ``batch`` (static Python ints)."""
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        return {n: num_points(batch[n]) for n in self.names}

    def block_residuals(self, name, params, points):
        """Flattened residuals of one block."""
        r = self.fns[name](params, points)
        if not isinstance(r, (jax.Array, np.ndarray)) and not hasattr(r, "__jax_array__"):
            raise TypeError(
                f"block {name!r}: the residual function must return an array of per-point residuals "
                f"(shape (n,) or (n, k)); got {type(r).__name__}. Give one function per block in fns"
            )
        r = jnp.asarray(r)
        if not jnp.issubdtype(r.dtype, jnp.floating):
            raise TypeError(f"block {name!r} returned dtype {r.dtype}; residuals must be floating")
        return r.reshape(-1)

    def residuals(self, params, batch) -> dict:
        """All blocks' flattened residuals: dict name -> ``(rows_b,)``.

        Compiled once per :class:`ResidualBlocks` (the ``jax.jit`` made at construction; inside
        another transformation it is simply inlined).
        """
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        return self._residuals_jit(params, {n: batch[n] for n in self.names})

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
        """Per-row squared gradient norms ``||d r_i/d params||^2`` per block (the NTK diagonal).

        Pointwise blocks (see ``pointwise``): per-point gradients ``chunk_size`` points
        at a time (``jax.vmap(jax.grad)`` inside ``jax.lax.map``), peak memory about
        ``chunk_size`` gradients, never the ``n x p`` Jacobian; for ``k`` residual
        components per point the norms are summed over the components (one entry per
        point). Other blocks: ``min(p, m)`` whole-block Jacobian products (one entry
        per residual row). The block trace ``||J_b||_F^2`` is the sum of the entries.
        Returns dict name -> array.
        """
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
        batch = {n: batch[n] for n in self.names}
        modes = self.pointwise_modes(params, batch)
        return self._norms_jit(params, batch, chunk_size=chunk_size, modes=modes)

    # ------------------------------------------------------------------ pointwise detection
    def pointwise_modes(self, params, batch, *, strict=True) -> tuple[bool, ...]:
        """Per block (in ``names`` order): use per-point gradients for exact traces?

        Runs :meth:`check_pointwise` once per block at the first call with concrete
        values; a block declared ``pointwise=True`` that fails it raises a ValueError.
        ``strict=False``: such a block gets ``False`` (the whole-block path) instead of the error.
        """
        batch = self.coerce_batch(batch)
        if self.pointwise is False:
            return tuple(False for _ in self.names)
        out = []
        for name in self.names:
            found = self._pointwise_found.get(name)
            if found is None and not strict and name in self._failed_pointwise:
                found = False  # checked once already: not re-checked on every call (the dense LM step)
            elif found is None and _all_concrete((params, batch[name])):
                if strict:
                    found = self.check_pointwise(params, batch, names=(name,))[name]
                else:
                    found = self._pointwise_evidence(name, params, batch[name])[0]
                    if found:
                        self._pointwise_found[name] = True
                    else:
                        self._failed_pointwise.add(name)
            out.append(bool(found) if found is not None else self.pointwise is True)
        return tuple(out)

    def check_pointwise(self, params, batch, *, names=None) -> dict[str, bool]:
        """Check that each block's residual rows at a point depend on that point only.

        Three evaluations per block, with concrete ``params`` and ``batch``: the whole
        block, the first point alone (its rows must be among the block's rows, and
        the block must have ``n * k`` rows for ``n`` points), and the block with its
        first point replaced by another point (only ``k`` rows may move; rows of the
        other points must not change beyond rounding). Returns dict name -> bool and
        caches the answer. A block declared ``pointwise=True`` that fails raises a
        ValueError naming the block and the evidence.
        """
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        result = {}
        for name in names or self.names:
            ok, why = self._pointwise_evidence(name, params, batch[name])
            if not ok and isinstance(self.fns[name], MixedBlock):
                raise ValueError(
                    f"block {name!r} is a MixedBlock whose features are not pointwise: {why}. The features "
                    "must give each point's rows from that point alone (put the mixing in mix)"
                )
            if not ok and self.pointwise is True:
                raise ValueError(
                    f"block {name!r} was declared pointwise=True, but {why}; per-point gradients would give "
                    "a wrong exact trace. Pass pointwise=False (or 'auto') to ResidualBlocks: exact traces "
                    "then take min(p, rows) Jacobian products over the whole block"
                )
            self._pointwise_found[name] = result[name] = ok
        return result

    def _pointwise_evidence(self, name, params, points) -> tuple[bool, str]:
        block_fn = self.fns[name]
        if isinstance(block_fn, MixedBlock):
            return _pointwise_evidence(lambda p, x: jnp.reshape(block_fn.features(p, x), (-1,)), params, points)
        return _pointwise_evidence(lambda p, x: self.block_residuals(name, p, x), params, points)

    # ------------------------------------------------------------------ exact traces
    def jacobian_matrix(self, params, batch, *, chunk_size=256):
        """The residual Jacobian as dense arrays: dict name -> ``(rows_b, p)``, columns in the order of
        ``jax.flatten_util.ravel_pytree(params)``, rows in the order of :meth:`residuals`.

        Formed as the exact traces are (see ``pointwise``): pointwise blocks by per-point reverse-mode
        gradients ``chunk_size`` points at a time, so the cost is about ``rows`` gradients of *one*
        point's residual, not ``p`` JVPs through the whole batch (``jax.jacfwd``: a factor of about
        ``p / 4`` more work for a PINN residual); :class:`MixedBlock` blocks by their per-point
        feature Jacobian pushed through the mix; other blocks (and blocks declared pointwise that fail
        :meth:`check_pointwise`: here that is no error) by ``jax.jacfwd``. For the dense
        Gauss-Newton steps of :mod:`pinn_adapters.second_order` and for checks; it holds ``n x p``
        numbers, so it is for small networks.
        """
        batch = self.coerce_batch(batch)
        self._check_batch(batch)
        batch = {n: batch[n] for n in self.names}
        modes = self.pointwise_modes(params, batch, strict=False)
        return self._jacobian_jit(params, batch, chunk_size=check_int(chunk_size, name="chunk_size", minimum=1),
                                  modes=modes)  # fmt: skip

    def _jacobian_matrix(self, params, batch, *, chunk_size, modes):
        """:meth:`jacobian_matrix` for known ``modes`` (traceable: the dense Gauss-Newton step calls it)."""
        flat, unravel = ravel_pytree(params)
        out = {}
        for name, pointwise in zip(self.names, modes):
            pts, blk = batch[name], self.fns[name]
            if pointwise and isinstance(blk, MixedBlock):
                out[name] = self._mixed_jacobian(name, params, pts, chunk_size)
            elif pointwise:
                feats = lambda p, x, n=name: self.block_residuals(n, p, x)
                out[name] = self._point_jacobians(feats, params, pts, chunk_size).reshape(-1, flat.shape[0])
            else:
                out[name] = jax.jacfwd(lambda v, n=name: self.block_residuals(n, unravel(v), pts))(flat)
        return out

    def _point_grad_sq_norms(self, params, batch, *, chunk_size, modes):
        out = {}
        for name, pointwise in zip(self.names, modes):
            if isinstance(self.fns[name], MixedBlock):
                out[name] = self._mixed_row_norms(name, params, batch[name], chunk_size)
            elif pointwise:
                out[name] = self._per_point_norms(name, params, batch[name], chunk_size)
            else:
                out[name] = self._whole_block_row_norms(name, params, batch[name], chunk_size)
        return out

    def _per_point_norms(self, name, params, pts, chunk_size):
        n = num_points(pts)

        def one(pt):
            single = jax.tree.map(lambda a: a[None], pt)
            jac = jax.jacrev(lambda p: self.block_residuals(name, p, single))(params)  # leading axis k
            return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(jac))

        return _map_points(one, pts, n, chunk_size)

    def _mixed_row_norms(self, name, params, pts, chunk_size):
        """Row norms of ``J = (d mix / d u) A`` (:meth:`_mixed_jacobian`)."""
        return jnp.sum(jnp.square(self._mixed_jacobian(name, params, pts, chunk_size)), axis=1)

    def _mixed_jacobian(self, name, params, pts, chunk_size):
        """``J = (d mix / d u) A`` of a :class:`MixedBlock` (``m x p``), ``A`` the per-point feature
        Jacobian (``n, k, p``, per-point gradients ``chunk_size`` points at a time)."""
        blk = self.fns[name]
        A = self._point_jacobians(blk.features, params, pts, chunk_size)
        u = blk.features(params, pts)
        _, lin = jax.linearize(lambda w: jnp.reshape(blk.mix(w, pts), (-1,)), u)
        cols = jnp.moveaxis(A, -1, 0).reshape((A.shape[-1],) + u.shape)  # p tangents of u
        return jax.lax.map(lin, cols).T

    @staticmethod
    def _point_jacobians(feats, params, pts, chunk_size):
        """``(n, k, p)``: the Jacobian of ``feats(params, point)`` (``k`` rows) with respect to the flat
        parameters, one reverse-mode pass per point, ``chunk_size`` points at a time."""
        flat, unravel = ravel_pytree(params)

        def one(pt):
            single = jax.tree.map(lambda a: a[None], pt)
            return jax.jacrev(lambda v: jnp.reshape(feats(unravel(v), single), (-1,)))(flat)  # (k, p)

        return _map_points(one, pts, num_points(pts), chunk_size)

    def _whole_block_row_norms(self, name, params, pts, chunk_size):
        """Row norms of ``J_b`` from ``min(p, m)`` whole-block products, ``chunk`` at a time.

        ``p <= m``: JVPs along the parameter basis, ``sum_j (J e_j)_i^2``; else one-hot
        VJPs, ``||J^T e_i||^2``. The chunk is capped so that a chunk's products hold at
        most about ``2**18`` residual values.
        """
        flat, unravel = ravel_pytree(params)
        f = lambda v: self.block_residuals(name, unravel(v), pts)
        m = jax.eval_shape(f, flat).shape[0]
        p = flat.shape[0]
        c = max(1, min(chunk_size, min(p, m), 2**18 // max(m, 1)))
        if p <= m:
            _, lin = jax.linearize(f, flat)
            idx = jnp.arange(-(-p // c) * c).reshape(-1, c)

            def body(acc, ids):
                basis = jax.nn.one_hot(ids, p, dtype=flat.dtype)  # rows past p are zero
                return acc + jnp.sum(jnp.square(jax.vmap(lin)(basis)), axis=0), None

            return jax.lax.scan(body, jnp.zeros((m,), flat.dtype), idx)[0]
        r, vjp = jax.vjp(f, flat)
        idx = jnp.arange(-(-m // c) * c).reshape(-1, c)

        def rows(ids):
            (g,) = jax.vmap(vjp)(jax.nn.one_hot(ids, m, dtype=r.dtype))
            return jnp.sum(jnp.square(g), axis=1)

        return jax.lax.map(rows, idx).reshape(-1)[:m]


def _all_concrete(tree) -> bool:
    return all(is_concrete(x) for x in jax.tree_util.tree_leaves(tree))


def _differing_point(points, n):
    """Index of a point that differs from point 0 (None if all points are equal)."""
    leaves = [np.asarray(a).reshape(n, -1) for a in jax.tree_util.tree_leaves(points)]
    diff = np.zeros(n, bool)
    for a in leaves:
        diff |= np.any(a != a[:1], axis=1)
    idx = np.flatnonzero(diff)
    return int(idx[len(idx) // 2]) if idx.size else None


def _pointwise_evidence(block_fn, params, points) -> tuple[bool, str]:
    """(ok, why): three evaluations of ``block_fn`` telling whether its rows at a point depend on that point only."""
    try:
        n = num_points(points)
    except ValueError as e:
        return False, f"its points cannot be sliced per point ({e})"
    fn = jax.jit(block_fn)
    r = np.asarray(fn(params, points))
    if n < 2:
        return True, ""
    if r.size % n:
        return False, f"it has {r.size} residual rows for {n} points (not a multiple)"
    try:
        r0 = np.asarray(fn(params, jax.tree.map(lambda a: a[:1], points)))
    except Exception as e:  # noqa: BLE001 - any failure on one point means not pointwise
        return False, f"it cannot be evaluated at a single point ({type(e).__name__}: {e})"
    k = r.size // n
    if r0.size != k:
        return False, f"one point gives {r0.size} rows but {n} points give {r.size}"
    eps = float(np.finfo(r.dtype).eps)
    scale = float(np.max(np.abs(r))) or 1.0
    if np.any(np.min(np.abs(r0[:, None] - r[None, :]), axis=1) > np.sqrt(eps) * scale):
        return False, "the rows of its first point evaluated alone differ from its rows in the batch"
    other = _differing_point(points, n)
    if other is not None:
        moved = jax.tree.map(lambda a: a.at[0].set(a[other]), points)
        changed = int(np.sum(np.abs(np.asarray(fn(params, moved)) - r) > 16 * eps * scale))
        if changed > k:
            return False, f"moving one point changed {changed} residual rows (a point has {k})"
    return True, ""


def _map_points(fn, pts, n, chunk_size):
    """``fn`` on every point, ``jax.vmap`` over chunks of ``chunk_size`` points inside ``jax.lax.map``."""
    c = min(chunk_size, n)
    nchunks = -(-n // c)
    pad = nchunks * c - n
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0) if pad else a, pts)
    chunks = jax.tree.map(lambda a: a.reshape((nchunks, c) + a.shape[1:]), padded)
    out = jax.lax.map(jax.vmap(fn), chunks)
    return out.reshape((nchunks * c,) + out.shape[2:])[:n]
