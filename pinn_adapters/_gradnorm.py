"""Gradient-norm loss weights (Wang, Teng and Perdikaris 2021; jaxpi's default weighting).

``lambda_b = sum_j ||grad L_j|| / ||grad L_b||``: every block's weighted loss then pulls
on the parameters with the same gradient norm. It is a strategy of
:func:`pinn_adapters.ntk_weighting` (``estimator="gradnorm"``): the per-block gradient
norms play the role of the NTK block traces in the shared rule ``sum_j T_j / T_b``, so
``every``, ``ema``, ``cap`` and the non-finite guard work as for the NTK strategies.
:func:`gradnorm_weighting` sets jaxpi's defaults (refresh every 1000 steps, momentum 0.9).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def block_grad_norms(blocks, params, batch) -> dict:
    """``||grad_params L_b||_2`` for every block ``b`` (``L_b`` reduced as the blocks declare).

    One forward pass and one batched backward pass (a ``vmap`` of the residuals' VJP
    over one cotangent per block), so the cost is about ``1 + B`` gradient evaluations
    in FLOPs and one in latency.
    """
    names = blocks.names
    R, vjp = jax.vjp(lambda p: blocks.residuals(p, batch), params)
    mean = blocks.reduction == "mean"
    scale = {n: 2.0 / (R[n].shape[0] if mean else 1) for n in names}
    eye = jnp.eye(len(names), dtype=jnp.result_type(*[R[n].dtype for n in names]))
    cots = {n: eye[:, i][:, None] * (scale[n] * R[n])[None, :] for i, n in enumerate(names)}
    (grads,) = jax.vmap(vjp)(cots)
    sq = sum(jnp.sum(jnp.square(g).reshape(len(names), -1), axis=1) for g in jax.tree.leaves(grads))
    norms = jnp.sqrt(sq)
    return {n: norms[i] for i, n in enumerate(names)}


def gradnorm_strategy(blocks):
    """``(init, refresh)`` producing the per-block gradient norms (the weighting's raw "traces")."""

    def init(key, params, batch):
        return block_grad_norms(blocks, params, batch), ()

    def refresh(key, inner, params_prev, params, batch, residuals, residuals_prev):
        return block_grad_norms(blocks, params, batch), ()

    return init, refresh


__all__ = ["block_grad_norms"]
