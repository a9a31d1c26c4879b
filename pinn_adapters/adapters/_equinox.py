"""Equinox modules as residual blocks (array leaves are the parameters)."""

from __future__ import annotations

from .._blocks import ResidualBlocks


def check_fns(fns, adapter: str) -> dict:
    """``fns`` as a dict of named residual callables, or a ``TypeError`` naming the adapter."""
    from collections.abc import Mapping

    if not isinstance(fns, Mapping):
        raise TypeError(
            f"{adapter}: fns must be a mapping block name -> fn(model, points) (e.g. {{'residual': f, 'bc': g}}); "
            f"got {type(fns).__name__}"
        )
    if not fns:
        raise ValueError(f"{adapter}: fns must name at least one residual block")
    for name, fn in fns.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"{adapter}: fns must map block names (str) to callables; got {name!r}: {fn!r}")
    return dict(fns)


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

    fns = check_fns(fns, "from_equinox")
    if not isinstance(model, eqx.Module):
        raise TypeError(f"from_equinox: model must be an equinox.Module; got {type(model).__name__}")
    params, static = eqx.partition(model, filter_spec or eqx.is_inexact_array)

    def wrap(fn):
        return lambda p, pts: fn(eqx.combine(p, static), pts)

    return ResidualBlocks({n: wrap(f) for n, f in fns.items()}, reduction=reduction), params
