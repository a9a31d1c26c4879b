"""Block traces of the neural tangent kernel and the NTK loss weights derived from them."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

import sketchtrace as st
from sketchtrace.validation import (
    check_choice,
    check_num_matvecs,
    is_concrete,
)

from ._blocks import ResidualBlocks, check_finite_residuals
from ._weighting_api import check_rule, rule_weights

METHODS = ("exact", "hutchinson", "hutchpp", "xtrace")


def residual_rows(blocks: ResidualBlocks, params, batch) -> dict[str, int]:
    """Number of residual rows per block (points times components), without FLOPs."""
    shapes = jax.eval_shape(blocks.residuals, params, batch)
    return {n: int(s.shape[0]) for n, s in shapes.items()}


SIDES = ("auto", "params", "residuals", "input", "output")


def check_side(side):
    """Validate a probe side for block traces (``"input"``/``"output"`` are aliases)."""
    return check_choice(side, SIDES, name="side")


def resolve_side(side, *, num_matvecs, num_params, num_rows, num_blocks):
    """Probe side for block traces: the cheaper in Jacobian products.

    The parameter side spends ``min(k, p)`` JVPs (one JVP serves every block and the
    estimate is exact from ``p`` probes on); the residual side spends
    ``B * min(k, n)`` VJPs (one VJP per block per probe; exact from ``n`` probes).
    ``"auto"`` picks the smaller count (ties go to the parameter side).
    """
    check_side(side)
    if side in ("params", "input"):
        return "input"
    if side in ("residuals", "output"):
        return "output"
    cost_in = min(num_matvecs, num_params)
    cost_out = num_blocks * min(num_matvecs, num_rows)
    return "input" if cost_in <= cost_out else "output"


def ntk_traces(
    key,
    blocks: ResidualBlocks,
    params,
    batch,
    *,
    method="exact",
    num_matvecs=None,
    side="auto",
    normalize="sum",
    sampler="rademacher",
    chunk_size=256,
    mesh=None,
):
    """Traces of the diagonal NTK blocks ``tr(K_bb) = ||J_b||_F^2``, one per residual block.

    ``J_b = d r_b / d params`` is the Jacobian of block ``b``'s residuals. The NTK
    block ``K_bb = J_b J_b^T`` has trace ``sum_{x in block b} ||grad_params r(x)||^2``.

    Parameters
    ----------
    key : jax.random key or None
        Randomness for the sketched methods (never defaulted); ignored (may be
        ``None``) for ``method="exact"``.
    blocks : ResidualBlocks
    params : pytree
        Network parameters.
    batch : mapping
        Block name -> collocation points.
    method : {"exact", "hutchinson", "hutchpp", "xtrace"}
        ``"exact"``: per-point gradients in chunks of ``chunk_size`` points (peak
        memory about ``chunk_size`` gradients, never the ``n x p`` Jacobian).
        ``"hutchinson"``: ``num_matvecs`` probes; on the parameter side one JVP per
        probe gives every block's estimate ``||J_b v||^2``; on the residual side each
        block costs one VJP per probe, ``||J_b^T u||^2``. ``"hutchpp"`` and
        ``"xtrace"``: the low-rank-deflated estimators of sketchtrace, run per block
        on ``J_b^T J_b`` (or ``J_b J_b^T``), ``num_matvecs`` each.
    num_matvecs : int
        Probe budget (required for the sketched methods). A budget that reaches the
        probe dimension gives the exact answer (sketchtrace's rule).
    side : {"auto", "params", "residuals"}
        Probe side for the sketched methods (``"input"``/``"output"`` are accepted as
        aliases). ``"auto"`` picks the one needing fewer Jacobian products, see
        :func:`resolve_side`.
    normalize : {"sum", "mean", None}
        ``"sum"``: the trace ``||J_b||_F^2``; ``"mean"``: divided by the number of
        residual rows of the block (the NTK of a mean-reduced loss, jaxpi's
        convention); ``None``: follow ``blocks.reduction``.
    sampler : str
        Probe distribution for the sketched methods.
    chunk_size : int
        Points per chunk for the exact method.
    mesh : jax.sharding.Mesh, optional
        Spread the work over the mesh's devices (see :func:`sketchtrace.make_mesh`):
        ``"exact"`` shards the collocation points of every block (per-device partial
        sums of the per-point gradient norms, combined with a ``psum``); the sketched
        methods shard the probes. Same result as without ``mesh`` up to summation order.

    Returns
    -------
    dict
        Block name -> :class:`sketchtrace.Estimate` (``sem`` 0 for exact).
        ``num_matvecs`` counts Jacobian products (per-point gradients for exact).

    Raises
    ------
    ValueError
        Unknown method/side/normalize, a missing budget, or non-finite residuals or
        gradients (checked when the values are concrete, i.e. outside ``jit``).

    References
    ----------
    S. Wang, X. Yu, P. Perdikaris, "When and why PINNs fail to train: a neural tangent
    kernel perspective", J. Comput. Phys. 449 (2022). doi:10.1016/j.jcp.2021.110768
    M. Hirsch, F. Pichi, "Convergence and sketching-based efficient computation of
    neural tangent kernel weights in physics-based loss", arXiv:2511.15530 (2025).
    M. F. Hutchinson, Commun. Stat. Simul. Comput. 19 (1990). doi:10.1080/03610919008812866
    """
    if not isinstance(blocks, ResidualBlocks):
        raise TypeError(f"blocks must be a pinn_adapters.ResidualBlocks; got {type(blocks).__name__}")
    check_choice(method, METHODS, name="method")
    check_side(side)
    if normalize not in ("sum", "mean", None):
        raise ValueError(f"normalize must be 'sum', 'mean' or None; got {normalize!r}")
    normalize = normalize or blocks.reduction
    batch = blocks.coerce_batch(batch)
    blocks._check_batch(batch)
    rows = residual_rows(blocks, params, batch)

    if method == "exact":
        chunk_size = check_num_matvecs(chunk_size, name="chunk_size")
        check_finite_residuals(blocks.residuals(params, batch), where="ntk_traces")
        if mesh is None:
            norms = {n: jnp.sum(v) for n, v in blocks.point_grad_sq_norms(params, batch, chunk_size=chunk_size).items()}
        else:
            norms = _sharded_exact_traces(blocks, params, batch, mesh, chunk_size)
        out = {}
        for name, tr in norms.items():
            if is_concrete(tr) and not bool(jnp.isfinite(tr)):
                raise ValueError(
                    f"ntk_traces: block {name!r} has non-finite gradients (NaN or inf) although its residuals "
                    "are finite; the NTK trace is undefined there (e.g. sqrt or abs at 0 in the residual)"
                )
            out[name] = st.Estimate(tr, jnp.zeros_like(tr), rows[name])
    else:
        if num_matvecs is None:
            raise ValueError(f"num_matvecs is required for method={method!r} (a probe budget, e.g. 8)")
        num_matvecs = check_num_matvecs(num_matvecs)
        try:
            out = _sketched_traces(key, blocks, params, batch, rows, method, num_matvecs, side, sampler, mesh)
        except FloatingPointError as e:  # the core's finiteness check does not know the block names
            raise _non_finite_gradient_error(blocks, params, batch) from e
    if normalize == "mean":
        out = {n: st.Estimate(e.value / rows[n], e.sem / rows[n], e.num_matvecs) for n, e in out.items()}
    return out


def _non_finite_gradient_error(blocks, params, batch):
    """A ValueError naming the blocks whose Jacobian is non-finite (one JVP per block along ones)."""
    ones = jax.tree.map(jnp.ones_like, params)
    bad = [
        n
        for n in blocks.names
        if not bool(
            jnp.all(jnp.isfinite(jax.jvp(lambda p, n=n: blocks.block_residuals(n, p, batch[n]), (params,), (ones,))[1]))
        )
    ]
    which = ", ".join(repr(n) for n in bad) if bad else f"one of {list(blocks.names)}"
    return ValueError(
        f"ntk_traces: block {which} has non-finite gradients (NaN or inf) although its residuals are "
        "finite; the NTK trace is undefined there (e.g. sqrt or abs at 0 in the residual)"
    )


def _sketched_traces(key, blocks, params, batch, rows, method, num_matvecs, side, sampler, mesh):
    """Sketched block traces (Hutchinson on the block Gram, or a deflated estimator per block)."""
    num_params = int(jax.flatten_util.ravel_pytree(params)[0].shape[0])
    s = resolve_side(
        side, num_matvecs=num_matvecs, num_params=num_params, num_rows=sum(rows.values()), num_blocks=len(rows)
    )
    if method == "hutchinson":
        J = blocks.jacobian(params, batch, mode="fwd" if s == "input" else "bwd")
        check_finite_residuals(J.unravel_output(J.value_flat), where="ntk_traces")
        out = st.block_traces(key, st.gram(J, side=s), num_matvecs=num_matvecs, sampler=sampler, mesh=mesh)
        out = {n: out[n] for n in blocks.names}
    else:
        fn = getattr(st, method, None)
        if fn is None:  # pragma: no cover - depends on the core's progress
            raise ValueError(f"method={method!r} needs sketchtrace.{method}, which this sketchtrace lacks")
        keys = jax.random.split(key, len(blocks.names))
        out = {}
        for k, name in zip(keys, blocks.names):
            J = st.JacobianOperator(
                lambda p, pts, name=name: blocks.block_residuals(name, p, pts),
                params,
                batch[name],
                mode="fwd" if s == "input" else "bwd",
            )
            check_finite_residuals({name: J.value_flat}, where="ntk_traces")
            extra = {} if mesh is None else {"mesh": mesh}
            out[name] = fn(k, st.gram(J, side=s), num_matvecs=num_matvecs, **extra)
    return out


def _sharded_exact_traces(blocks, params, batch, mesh, chunk_size):
    """Exact block traces with every block's points split across ``mesh`` (psum of partial sums)."""
    from sketchtrace.sharding import check_mesh, sharded_row_sums

    def partial(p, pts, valid):
        norms = blocks.point_grad_sq_norms(p, pts, chunk_size=chunk_size)
        return {n: jnp.sum(jnp.where(valid[n], norms[n], 0)) for n in blocks.names}

    return sharded_row_sums(partial, check_mesh(mesh), params, {n: batch[n] for n in blocks.names})


def _values(traces) -> dict:
    if not isinstance(traces, Mapping) or not traces:
        raise TypeError(f"traces must be a non-empty dict block name -> Estimate or number; got {traces!r}")
    out = {}
    for n, t in traces.items():
        v = getattr(t, "value", t)
        if isinstance(v, (bool, np.bool_)) or not (
            isinstance(v, (int, float, np.number)) or (hasattr(v, "dtype") and np.issubdtype(v.dtype, np.number))
        ):
            raise TypeError(
                f"traces[{n!r}] must be a real number, a scalar array or an Estimate; got {type(v).__name__} {v!r}"
            )
        out[n] = jnp.asarray(v)
    return out


def ntk_weights(traces, *, rule="wang2022", cap=None, eps=1e-6, sizes=None, fallback=1.0):
    """NTK loss weights from per-block NTK traces.

    ``rule="wang2022"``: ``lambda_i = sum_j T_j / T_i``.
    ``rule="jaxpi"``: per-point means ``m_i = T_i / n_i`` (``n_i = sizes[i]``; without
    ``sizes`` the traces are taken to be per-point means already, e.g. from
    ``ntk_traces(..., normalize="mean")``) and ``lambda_i = mean_j m_j / m_i``.

    Guards (the convergence theory needs weights in a fixed positive interval):

    * non-finite traces raise a ValueError naming the block (when the values are
      concrete); under ``jax.jit`` every weight is set to ``fallback`` instead
      (:func:`ntk_weighting` keeps its previous weights in that case);
    * traces are floored at ``eps * max_j T_j`` before dividing, so a zero or
      negative estimate (possible for the predictor-corrector) gives a large but
      finite weight: ``wang2022`` weights lie in ``[1, B / eps]``;
    * if every trace is ``<= 0`` there is no scale: ValueError (concrete) or ``fallback``;
    * ``cap``: weights are clipped to at most ``cap``.

    Parameters
    ----------
    traces : dict
        Block name -> :class:`sketchtrace.Estimate` or number.
    rule : {"wang2022", "jaxpi"}
    cap : float, optional
        Upper bound on each weight (positive).
    eps : float
        Relative floor for the traces, in ``(0, 1)``.
    sizes : dict, optional
        Block name -> number of residual rows (for ``rule="jaxpi"``).
    fallback : float
        Weight used under ``jit`` when the traces are unusable.

    Returns
    -------
    dict
        Block name -> positive finite scalar weight.

    References
    ----------
    S. Wang, X. Yu, P. Perdikaris, J. Comput. Phys. 449 (2022). doi:10.1016/j.jcp.2021.110768
    S. Wang, S. Sankaran, H. Wang, P. Perdikaris, "An expert's guide to training
    physics-informed neural networks", arXiv:2308.08468 (2023) (jaxpi).
    """
    rule, cap, eps = check_rule(rule, cap, eps)
    T = _values(traces)
    names = list(T)
    if sizes is not None:
        missing = [n for n in names if n not in sizes]
        if missing:
            raise ValueError(f"sizes has no entry for block(s) {missing}")
        if any(int(sizes[n]) <= 0 for n in names):
            raise ValueError(f"sizes must be positive row counts; got {dict(sizes)}")
    for n, t in T.items():
        if t.ndim != 0:
            raise ValueError(f"traces[{n!r}] must be a scalar; got shape {t.shape}")
        if is_concrete(t) and not bool(jnp.isfinite(t)):
            raise ValueError(
                f"ntk_weights: trace of block {n!r} is {float(t)}; weights need finite traces "
                "(non-finite residuals or gradients upstream?)"
            )
    vals = jnp.stack([T[n] for n in names])
    if rule == "jaxpi" and sizes is not None:
        vals = vals / jnp.asarray([float(sizes[n]) for n in names], vals.dtype)
    top = jnp.max(vals)
    if is_concrete(top) and not bool(top > 0):
        raise ValueError(
            f"ntk_weights: every trace is <= 0 ({ {n: float(T[n]) for n in names} }); there is no "
            "scale to weight against (an all-zero Jacobian, or a very poor estimate)"
        )
    w, _ = rule_weights(vals, rule=rule, cap=cap, eps=eps)  # the torch side's arithmetic too
    ok = jnp.all(jnp.isfinite(vals)) & (top > 0)
    w = jnp.where(ok, w, jnp.asarray(fallback, w.dtype))
    return {n: w[i] for i, n in enumerate(names)}
