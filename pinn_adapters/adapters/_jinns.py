"""jinns losses: NTK weights from its per-sample residual terms, written into its loss weights.

Tested with jinns 1.10.2. jinns has no NTK weighting of its own; its losses expose
``evaluate_per_sample(params, batch)`` (the unreduced residual of every loss term at
every sample), which is all we need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from .._blocks import ResidualBlocks
from .._ntk import ntk_traces, ntk_weights, residual_rows


class JinnsBlocks(ResidualBlocks):
    """Residual blocks of a jinns loss; a batch is a jinns batch object (shared by all blocks)."""

    def coerce_batch(self, batch):
        if isinstance(batch, Mapping):
            return batch
        return {n: batch for n in self.names}


def _active_terms(loss):
    lw = loss.loss_weights
    return tuple(f.name for f in dataclasses.fields(lw) if getattr(lw, f.name, None) is not None)


def from_jinns(loss, params, *, terms=None):
    """Residual blocks over ``params.nn_params`` from a jinns loss's per-sample terms.

    Parameters
    ----------
    loss : jinns loss (``LossPDEStatio``, ``LossPDENonStatio``, ``LossODE``)
    params : jinns.parameters.Params
        Current parameters; the network parameters ``params.nn_params`` are
        differentiated, the equation parameters are held fixed.
    terms : sequence of str, optional
        Loss terms to use as blocks (default: those with a loss weight set, e.g.
        ``("dyn_loss", "boundary_loss")``). A term with several parts (a tuple of
        dynamic losses, the boundary facets) is one block.

    Returns
    -------
    (JinnsBlocks, nn_params)
        A batch for these blocks is the jinns batch object itself (e.g. from
        ``data_generator.get_batch()``). The reduction is jinns' mean over samples.
        Exact traces use chunked residual-row VJPs (``pointwise=False``), because a
        jinns batch cannot be sliced per point generically.
    """
    import equinox as eqx

    names = tuple(terms) if terms is not None else _active_terms(loss)
    if not names:
        raise ValueError("the jinns loss has no active terms (no loss weight is set)")

    def make(name):
        def fn(nn_params, batch):
            p = eqx.tree_at(lambda q: q.nn_params, params, nn_params)
            per_sample = loss.evaluate_per_sample(p, batch)
            part = getattr(per_sample, name)
            leaves = jax.tree.leaves(part)
            if not leaves:
                raise ValueError(f"jinns loss term {name!r} has no residuals for this batch")
            return jnp.concatenate([jnp.ravel(x) for x in leaves])

        return fn

    return JinnsBlocks({n: make(n) for n in names}, reduction="mean", pointwise=False), params.nn_params


def jinns_ntk_weights(key, loss, params, batch, *, method="exact", num_matvecs=None, rule="wang2022", cap=None,
                      chunk_size=256, terms=None):
    """Compute NTK weights for a jinns loss and return the loss with them as ``loss_weights``.

    ``lambda_i = sum_j tr(K_jj) / tr(K_ii)`` over the loss terms (``rule="wang2022"``)
    or jaxpi's per-sample-mean rule (``rule="jaxpi"``); traces from
    :func:`pinn_adapters.ntk_traces` with ``method`` (``"exact"``, ``"hutchinson"``, ...).
    A term whose weight is a tuple (several dynamic losses) gets the block weight in
    every entry.

    Returns
    -------
    (new_loss, weights)
        ``new_loss`` is ``loss`` with its ``loss_weights`` replaced (an Equinox
        ``tree_at``; ``loss`` itself is unchanged); ``weights`` is the dict used.
    """
    import equinox as eqx

    blocks, nn_params = from_jinns(loss, params, terms=terms)
    tr = ntk_traces(key, blocks, nn_params, batch, method=method, num_matvecs=num_matvecs, normalize="sum",
                    chunk_size=chunk_size)
    sizes = residual_rows(blocks, nn_params, blocks.coerce_batch(batch)) if rule == "jaxpi" else None
    w = ntk_weights(tr, rule=rule, cap=cap, sizes=sizes)
    lw = loss.loss_weights
    new = {}
    for name in blocks.names:
        old = getattr(lw, name)
        val = jnp.asarray(w[name])
        new[name] = tuple(val for _ in old) if isinstance(old, tuple) else val
    new_lw = dataclasses.replace(lw, **new) if dataclasses.is_dataclass(lw) else None
    if new_lw is None:  # pragma: no cover - jinns weights are dataclass-like eqx modules
        raise TypeError(f"cannot rebuild jinns loss weights of type {type(lw).__name__}")
    return eqx.tree_at(lambda l: l.loss_weights, loss, new_lw), w
