"""Equinox modules as residual blocks (array leaves are the parameters)."""

from __future__ import annotations

from .._blocks import ResidualBlocks


def from_equinox(model, fns, *, reduction="mean", filter_spec=None):
    """Residual blocks over the parameters of an Equinox module.

    Parameters
    ----------
    model : equinox.Module
        The network; its inexact (floating) array leaves are the parameters
        (``equinox.is_inexact_array``, or ``filter_spec``).
    fns : mapping
        Block name -> ``fn(model, points)`` returning per-point residuals, where
        ``model`` is the module rebuilt from the (possibly perturbed) parameters.
    reduction : {"mean", "sum"}
        The host loss's reduction (see :class:`ResidualBlocks`).
    filter_spec : callable, optional
        Leaf filter selecting the parameters (default ``equinox.is_inexact_array``).

    Returns
    -------
    (ResidualBlocks, params)
        ``params`` is the parameter pytree (the module with non-parameter leaves
        set to ``None``); ``equinox.combine(params, static)`` is what the
        residual functions receive.
    """
    import equinox as eqx

    params, static = eqx.partition(model, filter_spec or eqx.is_inexact_array)

    def wrap(fn):
        return lambda p, pts: fn(eqx.combine(p, static), pts)

    return ResidualBlocks({n: wrap(f) for n, f in fns.items()}, reduction=reduction), params
