"""A drop-in for jaxpi's ``compute_diag_ntk`` (jaxpi is not on PyPI; not tested against it).

jaxpi's models define ``compute_diag_ntk(self, params, batch) -> {name: per-point NTK
diagonal}`` and weight the losses by ``mean_j mean(ntk_j) / mean(ntk_i)`` (its
``update_weights``: weights start at one, are refreshed after every step whose index is a
multiple of ``update_every_steps`` (1000), step 0 included, and smoothed by a running average
with momentum 0.9). It computes each point's diagonal entry as the squared norm of a per-point
parameter gradient (``grad`` of one point's residual, ``vmap``-ed over the points: all points'
gradients at once). The functions here return the same dict from chunked per-point gradients
(exact), or unbiased per-point estimates ``mean_k (J v_k)_i^2`` from parameter-side JVP probes;
:func:`jaxpi_weighting` reproduces jaxpi's schedule (``"ntk"`` or ``"grad_norm"``, with its
causal variant of the residual block's NTK).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import sketchtrace as st
from sketchtrace.validation import check_choice, check_num_matvecs, check_positive_int, is_concrete

from .._blocks import ResidualBlocks
from .._gradnorm import block_grad_norms


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


class JaxpiState(NamedTuple):
    """jaxpi's weighting state: the weights and the number of steps taken."""

    weights: dict
    step: Any


class JaxpiWeighting(NamedTuple):
    """``init(names)`` and ``update(state, params, batch)`` with jaxpi's schedule (see :func:`jaxpi_weighting`)."""

    init: Callable
    update: Callable
    config: dict


def jaxpi_weights(values: dict, *, scheme="ntk") -> dict:
    """jaxpi's fresh weights: ``mean_j m_j / m_i``, ``m_i`` the mean NTK diagonal (``"ntk"``) or the gradient norm."""
    check_choice(scheme, ("ntk", "grad_norm"), name="scheme")
    m = {n: jnp.mean(v) if scheme == "ntk" else v for n, v in values.items()}
    mean = sum(m.values()) / len(m)
    return {n: mean / m[n] for n in m}


def causal_ntk(diag, causal_weights, num_chunks: int):
    """jaxpi's causal residual NTK: the per-point diagonal averaged over ``num_chunks`` time chunks, times their weights.

    ``diag`` is ordered by time chunk (jaxpi sorts the residual points by time); the result is
    ``(num_chunks,)``, whose mean then enters :func:`jaxpi_weights` like any block's diagonal.
    """
    num_chunks = check_positive_int(num_chunks, name="num_chunks")
    if diag.shape[0] % num_chunks:
        raise ValueError(f"causal_ntk: {diag.shape[0]} residual rows do not split into num_chunks={num_chunks} chunks")
    return jnp.mean(diag.reshape(num_chunks, -1), axis=1) * causal_weights


def jaxpi_weighting(
    blocks: ResidualBlocks,
    *,
    scheme="ntk",
    every=1000,
    momentum=0.9,
    init_weights=None,
    causal=None,
    method="exact",
    num_matvecs=None,
    chunk_size=256,
):
    """jaxpi's loss weighting, step for step (``scheme="ntk"`` or ``"grad_norm"``).

    ``state = w.init(blocks.names)`` holds ``init_weights`` (default: all one, as jaxpi's
    configs). Call ``weights, state = w.update(state, params, batch, key=None)`` after every
    optimizer step: after the step with index ``s`` (0, 1, ...) the weights are refreshed when
    ``s % every == 0`` (so after step 0 first, as jaxpi's training loop does) with
    ``w <- momentum w + (1 - momentum) w_new``; otherwise they are kept.

    Parameters
    ----------
    scheme : {"ntk", "grad_norm"}
        ``"ntk"``: ``w_i = mean_j mean(K_j) / mean(K_i)`` from :func:`compute_diag_ntk`;
        ``"grad_norm"``: ``w_i = mean_j ||grad L_j|| / ||grad L_i||``.
    every, momentum, init_weights :
        jaxpi's ``update_every_steps`` (1000), ``momentum`` (0.9) and ``init_weights``.
    causal : (block name, fn(params, batch) -> (num_chunks,) weights), optional
        jaxpi's causal variant (``"ntk"`` only): that block's diagonal enters through
        :func:`causal_ntk` with the causal weights the model computes.
    method, num_matvecs, chunk_size :
        As for :func:`compute_diag_ntk` (``key`` is then passed to ``update``).
    """
    check_choice(scheme, ("ntk", "grad_norm"), name="scheme")
    every = check_positive_int(every, name="every")
    if isinstance(momentum, bool) or not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}")
    if causal is not None:
        if scheme != "ntk":
            raise ValueError("causal= is jaxpi's causal NTK: use it with scheme='ntk'")
        if not (isinstance(causal, tuple) and len(causal) == 2 and causal[0] in blocks.names and callable(causal[1])):
            raise ValueError(f"causal must be (block name in {list(blocks.names)}, fn(params, batch)); got {causal!r}")
    names = blocks.names

    def init(names_=names):
        w = {n: jnp.asarray(1.0 if init_weights is None else init_weights[n]) for n in names}
        return JaxpiState(w, jnp.zeros((), jnp.int32))

    def fresh(params, batch, key):
        if scheme == "grad_norm":
            return jaxpi_weights(block_grad_norms(blocks, params, batch), scheme="grad_norm")
        diag = compute_diag_ntk(
            blocks, params, batch, method=method, key=key, num_matvecs=num_matvecs, chunk_size=chunk_size
        )
        if causal is not None:
            cw = causal[1](params, batch)
            diag = {**diag, causal[0]: causal_ntk(diag[causal[0]], cw, cw.shape[0])}
        return jaxpi_weights(diag)

    def update(state, params, batch, key=None):
        def refresh(w):
            new = fresh(params, batch, key)
            return {n: momentum * w[n] + (1 - momentum) * new[n] for n in names}

        if is_concrete(state.step):  # eager: a Python branch (the blocks may check their inputs concretely)
            w = refresh(state.weights) if int(state.step) % every == 0 else state.weights
        else:
            w = jax.lax.cond(state.step % every == 0, refresh, lambda w: w, state.weights)
        return w, JaxpiState(w, state.step + 1)

    cfg = {"scheme": scheme, "every": every, "momentum": float(momentum), "causal": causal is not None}
    return JaxpiWeighting(init, update, cfg)
