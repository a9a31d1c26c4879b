"""Flax models (linen ``apply`` and nnx modules) as residual blocks."""

from __future__ import annotations

from .._blocks import ResidualBlocks


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

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def wrap(fn):
        return lambda p, pts: fn(nnx.merge(graphdef, p, rest), pts)

    return ResidualBlocks({n: wrap(f) for n, f in fns.items()}, reduction=reduction), params
