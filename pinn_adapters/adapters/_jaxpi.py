"""A drop-in for jaxpi's ``compute_diag_ntk`` (jaxpi is not on PyPI; not tested against it).

jaxpi's models define ``compute_diag_ntk(self, params, batch) -> {name: per-point NTK
diagonal}`` and weight the losses by ``mean_j mean(ntk_j) / mean(ntk_i)`` (its
``update_weights``, typically every 1000 steps with momentum 0.9). It computes the
diagonal with ``jacrev`` over all points at once (an ``n x p`` Jacobian). The
functions here return the same dict from chunked per-point gradients (exact), or
unbiased per-point estimates ``mean_k (J v_k)_i^2`` from parameter-side JVP probes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import sketchtrace as st
from sketchtrace.validation import check_choice, check_num_matvecs

from .._blocks import ResidualBlocks


def compute_diag_ntk(
    blocks: ResidualBlocks,
    params,
    batch,
    *,
    method="exact",
    key=None,
    num_matvecs=None,
    chunk_size=256,
    sampler="rademacher",
):
    """Per-residual-row NTK diagonal ``K_ii = ||grad_params r_i||^2`` for every block.

    Parameters
    ----------
    blocks : ResidualBlocks
    params, batch :
        As for :func:`pinn_adapters.ntk_traces`.
    method : {"exact", "hutchinson"}
        ``"exact"``: chunked per-point gradients (memory of ``chunk_size`` gradients).
        ``"hutchinson"``: ``num_matvecs`` parameter-side probes ``v`` (one JVP each,
        all blocks at once) and the estimate ``mean_k (J v_k)_i^2``, unbiased for
        each diagonal entry; its block mean is the unbiased Hutchinson estimate of
        ``tr(K_bb) / n_b`` that jaxpi's weighting uses.
    key : jax.random key
        Required for ``"hutchinson"``.

    Returns
    -------
    dict
        Block name -> ``(n_b,)`` array (rows of the flattened residuals).

    References
    ----------
    S. Wang, S. Sankaran, H. Wang, P. Perdikaris, "An expert's guide to training
    physics-informed neural networks", arXiv:2308.08468 (2023) (jaxpi).
    C. Bekas, E. Kokiopoulou, Y. Saad, "An estimator for the diagonal of a matrix",
    Appl. Numer. Math. 57 (2007). doi:10.1016/j.apnum.2007.01.003
    """
    check_choice(method, ("exact", "hutchinson"), name="method")
    if method == "exact":
        return blocks.point_grad_sq_norms(params, batch, chunk_size=chunk_size)
    if key is None:
        raise ValueError("key is required for method='hutchinson' (randomness is explicit)")
    k = check_num_matvecs(num_matvecs)
    J = blocks.jacobian(params, batch, mode="fwd")
    n = ravel_pytree(params)[0].shape[0]
    V = st.probe_rows(jax.random.split(key, k), n, J.jax_dtype, sampler)
    JV = J.matmat(V)  # (k, rows)
    d = jnp.mean(JV * JV, axis=0)
    return {name: d[a:b] for name, a, b in J.blocks}


def jaxpi_ntk_method(make_blocks, *, method="exact", key=None, num_matvecs=None, chunk_size=256):
    """A ``compute_diag_ntk(self, params, batch)`` method to set on a jaxpi-style model class.

    ``make_blocks(model, batch) -> (ResidualBlocks, blocks_batch)`` builds the blocks
    from the model's own residual networks (jaxpi keeps boundary and initial points
    on the model and passes the residual points as ``batch``). jaxpi's method has no
    randomness argument: for ``method="hutchinson"`` the probes come from ``key``
    folded with a hash of the batch's bits, so each new batch gets new probes and the
    same batch the same probes.
    """
    if method == "hutchinson" and key is None:
        raise ValueError("key is required for method='hutchinson' (randomness is explicit)")

    def compute(self, params, batch):
        blocks, bb = make_blocks(self, batch)
        k = None
        if method == "hutchinson":
            bits = jax.tree.leaves(batch)
            h = sum(jnp.sum(jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)) for x in bits)
            k = jax.random.fold_in(key, h.astype(jnp.uint32))
        return compute_diag_ntk(
            blocks, params, bb, method=method, key=k, num_matvecs=num_matvecs, chunk_size=chunk_size
        )

    return compute
