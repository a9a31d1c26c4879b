"""The one object shape of pinn_adapters' loss weightings, JAX and torch (pure Python: no JAX, no torch).

:class:`Weighting` is what :func:`pinn_adapters.ntk_weighting`, :func:`pinn_adapters.gradnorm_weighting`
and their torch counterparts in :mod:`pinn_adapters.torch` return: an ``init`` / ``update`` pair in
the shape of an optax ``GradientTransformation``, with the static configuration beside it.
"""

from __future__ import annotations

import warnings


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


__all__ = ["Weighting"]
