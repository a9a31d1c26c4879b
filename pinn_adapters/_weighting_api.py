"""What the JAX and torch loss weightings share, written once (pure Python: no JAX, no torch).

:class:`Weighting` is what :func:`pinn_adapters.ntk_weighting`, :func:`pinn_adapters.gradnorm_weighting`
and their torch counterparts in :mod:`pinn_adapters.torch` return: an ``init`` / ``update`` pair in
the shape of an optax ``GradientTransformation``, with the static configuration beside it.
:func:`check_options` checks the options both sides take (one set of rules and messages),
:func:`check_subsample` pc's ``subsample``, :func:`check_rule` the weight rule's options and
:func:`rule_weights` applies the rule to a vector of traces (a JAX array or a torch tensor,
through the methods both have).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from sketchtrace.validation import (
    check_choice,
    check_num_matvecs,
    check_optional,
    check_positive_int,
    check_probability,
    check_real,
)

from ._sizes import canonical_estimator

RULES = ("wang2022", "jaxpi")
INIT_METHODS = ("exact", "hutchinson")
NORMALIZE = ("sum", "mean", None)


class Weighting:
    """Loss weights refreshed along training: an ``init`` / ``update`` pair (optax's shape).

    ``state = w.init(key, params, batch)`` computes the first weights (``state.weights``);
    ``weights, state = w.update(key, state, params_prev, params, batch, residuals=None,
    residuals_prev=None)`` gives the weights for the next step, ``params_prev`` and
    ``params`` being the parameters before and after the optimizer step. The same shape on
    both sides: on the JAX side (:func:`pinn_adapters.ntk_weighting`) ``key`` is a
    ``jax.random`` key, the parameters are a pytree, both methods are jit-able and the
    state is a :class:`pinn_adapters.WeightingState` pytree; on the torch side
    (:func:`pinn_adapters.torch.ntk_weighting`) ``key`` is a ``torch.Generator``, the
    parameters a dict of tensors and the state a
    :class:`pinn_adapters.torch.TorchWeightingState`.

    Attributes
    ----------
    blocks : ResidualBlocks or TorchResidualBlocks
        The residual blocks the weights are for; ``weights`` has one entry per block name.
    config : dict
        The checked, static configuration (``config["estimator"]`` names the strategy).

    Notes
    -----
    ``residuals=`` (at ``params`` on ``batch``) and ``residuals_prev=`` (at ``params_prev``
    on the same batch) pass residuals the training step computed anyway; the
    predictor-corrector then skips those evaluations. A weighting is not a tuple; unpacking
    it as the former ``(init, update, blocks, config)`` named tuple still works for one
    release and warns.
    """

    blocks: object
    config: dict

    def init(self, key, params, batch):
        """The first state (its ``weights`` are the weights of the first step)."""
        raise NotImplementedError

    def update(self, key, state, params_prev, params, batch, *, residuals=None, residuals_prev=None):
        """``(weights, state)`` for the step from ``params_prev`` to ``params``."""
        raise NotImplementedError

    @property
    def estimator(self) -> str:
        """The strategy that makes the raw traces (``"pc"``, ``"exact"``, ``"gradnorm"``, ...)."""
        return self.config["estimator"]

    def __repr__(self):
        return f"{type(self).__name__}(estimator={self.estimator!r}, blocks={list(self.blocks.names)})"

    # -- the former NamedTuple interface (one release)
    def _as_tuple(self):
        warnings.warn(
            f"{type(self).__name__} is no longer a tuple (init, update, blocks, config); "
            "use its attributes w.init, w.update, w.blocks, w.config",
            DeprecationWarning,
            stacklevel=3,
        )
        return (self.init, self.update, self.blocks, self.config)

    def __iter__(self):
        return iter(self._as_tuple())

    def __getitem__(self, index):
        return self._as_tuple()[index]


# ----------------------------------------------------------------------------- shared checks


def check_rule(rule, cap, eps):
    """``(rule, cap, eps)`` of the weight rule, checked: a rule name, ``None`` or a positive cap, ``eps`` in (0, 1)."""
    check_choice(rule, RULES, name="rule")
    eps = check_probability(eps, name="eps", low_open=True, high_open=True)
    cap = check_optional(check_real, cap, name="cap", low=0, low_open=True)
    return rule, cap, eps


def check_options(
    blocks,
    estimators,
    *,
    estimator,
    every,
    ema,
    rule,
    cap,
    eps,
    normalize,
    num_probes,
    gamma,
    h,
    init_method,
    subsample,
    gamma_auto=False,
) -> dict:
    """The options both weightings take, checked before any work; returns them resolved.

    ``estimator``'s aliases are resolved (:func:`pinn_adapters._sizes.canonical_estimator`),
    ``normalize=None`` becomes ``blocks.reduction``, grad-norm weights take ``normalize="sum"``,
    ``subsample`` becomes ``None`` or one entry per block (:func:`check_subsample`).
    ``gamma_auto``: whether ``gamma="auto"`` is accepted (the JAX side's online choice).
    """
    est = check_choice(canonical_estimator(estimator), estimators, name="estimator")
    check_choice(init_method, INIT_METHODS, name="init_method")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be 'sum', 'mean' or None; got {normalize!r}")
    rule, cap, eps = check_rule(rule, cap, eps)
    if not (gamma_auto and isinstance(gamma, str) and gamma == "auto"):
        what = "gamma (a number or 'auto')" if gamma_auto else "gamma"
        gamma = check_probability(gamma, name=what, low_open=True)
    normalize = normalize or blocks.reduction
    if est == "gradnorm":  # gradient norms of the reduced losses: nothing to normalise
        if rule != "wang2022":
            raise ValueError(f"estimator='gradnorm' uses rule='wang2022' (sum_j g_j / g_b); got rule={rule!r}")
        normalize = "sum"
    if rule == "jaxpi" and normalize != "sum":
        raise ValueError("rule='jaxpi' divides by the block sizes itself; use normalize='sum' with it")
    return {
        "estimator": est,
        "every": check_positive_int(every, name="every"),
        "ema": check_optional(check_probability, ema, name="ema", high_open=True),
        "rule": rule,
        "cap": cap,
        "eps": eps,
        "normalize": normalize,
        "num_probes": check_num_matvecs(num_probes, name="num_probes"),
        "gamma": gamma,
        "h": check_optional(check_real, h, name="h", low=0, low_open=True),
        "init_method": init_method,
        "subsample": check_subsample(subsample, blocks, est, gamma),
    }


def check_subsample(spec, blocks, estimator, gamma):
    """pc's ``subsample``: ``None`` (all points) or ``{block: count | fraction | "auto" | None}``.

    ``"auto"`` is one ``"auto"`` entry per block for pc with a float gamma on blocks declared
    pointwise, ``None`` otherwise; anything else is for pc with a float gamma on blocks that
    may be pointwise, an ``int`` count, a ``float`` fraction in ``(0, 1]`` or a dict of them.
    """
    if isinstance(spec, str) and spec == "auto":
        usable = estimator == "pc" and gamma != "auto" and blocks.pointwise is True
        return {n: "auto" for n in blocks.names} if usable else None
    if spec is None:
        return None
    if estimator != "pc" or gamma == "auto":
        raise ValueError(
            f"subsample is for estimator='pc' with a float gamma; got estimator={estimator!r}, gamma={gamma!r}"
        )
    per_block = spec if isinstance(spec, dict) else {n: spec for n in blocks.names}
    unknown = sorted(set(per_block) - set(blocks.names))
    if unknown:
        raise ValueError(f"subsample names unknown block(s) {unknown}; blocks are {list(blocks.names)}")
    per_block = {n: _subsample_entry(n, v) for n, v in per_block.items()}
    if blocks.pointwise is False:
        raise ValueError(
            "subsample needs pointwise residual blocks (pointwise=True, or 'auto' on the JAX side): "
            "slicing an opaque batch changes the residuals of the points kept"
        )
    return {n: per_block.get(n) for n in blocks.names}


def _subsample_entry(block, v):
    """A point count (an integer >= 1), a fraction (a real number in (0, 1]) or ``None``."""
    name = f"subsample for block {block!r} (a point count >= 1 or a fraction in (0, 1])"
    if v is None or (isinstance(v, str) and v == "auto"):
        return v
    if isinstance(v, numbers.Integral) or (hasattr(v, "dtype") and np.issubdtype(np.dtype(v.dtype), np.integer)):
        return check_positive_int(v, name=name)
    try:
        return check_probability(v, name=name, low_open=True)
    except TypeError as exc:  # one kind of error for every bad subsample entry, as documented
        raise ValueError(str(exc)) from None


# ----------------------------------------------------------------------------- the rule


def rule_weights(vals, *, rule, cap, eps):
    """Weights of the ``(B,)`` traces ``vals`` (a JAX array or a torch tensor) and their maximum.

    ``wang2022``: ``sum_j T_j / T_b``; ``jaxpi``: ``mean_j T_j / T_b`` (``vals`` already per-row
    means). Traces are floored at ``eps * max_j T_j`` before dividing; ``cap`` clips. Written
    with the array methods JAX and torch share, so both sides compute the same numbers.
    """
    top = vals.max()
    floored = vals.clip(min=eps * top)
    w = floored.sum() / floored if rule == "wang2022" else floored.mean() / floored
    if cap is not None:
        w = w.clip(max=cap)
    return w, top


__all__ = ["Weighting", "check_options", "check_rule", "check_subsample", "rule_weights"]
