"""Flax models (linen ``apply`` and nnx modules) as residual blocks."""

from __future__ import annotations

from .._blocks import ResidualBlocks
from ._equinox import check_fns


def from_linen(module, variables, fns, *, reduction="mean", collection="params"):
    """Residual blocks over a Flax linen model's ``variables[collection]``.

    Parameters
    ----------
    module : flax.linen.Module
    variables : dict
        From ``module.init``; only ``variables[collection]`` are differentiated,
        the other collections are held fixed.
    fns : mapping
        Block name -> ``fn(u, points)``, where ``u(x) = module.apply(variables, x)``.
    reduction : {"mean", "sum"}

    Returns
    -------
    (ResidualBlocks, params)
        ``params = variables[collection]``.
    """
    from collections.abc import Mapping

    fns = check_fns(fns, "from_linen")
    if not callable(getattr(module, "apply", None)):
        raise TypeError(f"from_linen: module must be a flax.linen.Module (with .apply); got {type(module).__name__}")
    if not isinstance(variables, Mapping):
        raise TypeError(f"from_linen: variables must be the dict from module.init; got {type(variables).__name__}")
    if collection not in variables:
        raise ValueError(f"variables has no collection {collection!r}; it has {sorted(variables)}")
    rest = {k: v for k, v in variables.items() if k != collection}

    def wrap(fn):
        def block(p, pts):
            full = {**rest, collection: p}
            return fn(lambda x: module.apply(full, x), pts)

        return block

    return ResidualBlocks({n: wrap(f) for n, f in fns.items()}, reduction=reduction), variables[collection]


def from_nnx(model, fns, *, reduction="mean"):
    """Residual blocks over the ``nnx.Param`` variables of a Flax nnx module.

    Parameters
    ----------
    model : flax.nnx.Module
    fns : mapping
        Block name -> ``fn(model, points)`` with the module rebuilt (``nnx.merge``)
        from the given parameters.

    Returns
    -------
    (ResidualBlocks, params)
        ``params`` is the ``nnx.State`` of the parameters (a pytree).
    """
    from flax import nnx

    fns = check_fns(fns, "from_nnx")
    if not isinstance(model, nnx.Module):
        raise TypeError(f"from_nnx: model must be a flax.nnx.Module; got {type(model).__name__}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def wrap(fn):
        return lambda p, pts: fn(nnx.merge(graphdef, p, rest), pts)

    return ResidualBlocks({n: wrap(f) for n, f in fns.items()}, reduction=reduction), params
