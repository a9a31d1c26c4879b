"""Adapters from host libraries to :class:`pinn_adapters.ResidualBlocks`.

Each adapter imports its host library only when called, never at package import.

* :func:`from_equinox` -- an Equinox module (its inexact array leaves are the parameters);
* :func:`from_linen` and :func:`from_nnx` -- Flax models;
* :func:`from_jinns` and :func:`jinns_ntk_weights` (:class:`JinnsNTKWeights` as an object) -- a jinns loss (per-sample residual terms
  in, NTK weights written into its ``loss_weights``); :func:`jinns_train` -- a jinns training
  loop with NTK weights refreshed inside one compiled run (:func:`jinns_weights_fn`,
  :func:`jinns_loss_with_weights` are its traceable pieces);
* :func:`compute_diag_ntk` -- a drop-in with the signature of jaxpi's ``compute_diag_ntk``.

For Equinox and Flax, residual functions take the host's callable model:
``fn(u, points)`` where ``u(x)`` evaluates the network at one input ``x``.
"""

from ._equinox import from_equinox
from ._flax import from_linen, from_nnx
from ._jaxpi import (
    JaxpiState,
    JaxpiWeighting,
    causal_ntk,
    compute_diag_ntk,
    jaxpi_ntk_method,
    jaxpi_weighting,
    jaxpi_weights,
)
from ._jinns import (
    JinnsNTKWeights,
    JinnsTrainResult,
    from_jinns,
    jinns_loss_with_weights,
    jinns_ntk_weights,
    jinns_train,
    jinns_weights_fn,
)

__all__ = [
    "JaxpiState",
    "JaxpiWeighting",
    "JinnsNTKWeights",
    "JinnsTrainResult",
    "causal_ntk",
    "compute_diag_ntk",
    "from_equinox",
    "from_jinns",
    "from_linen",
    "from_nnx",
    "jaxpi_ntk_method",
    "jaxpi_weighting",
    "jaxpi_weights",
    "jinns_loss_with_weights",
    "jinns_ntk_weights",
    "jinns_train",
    "jinns_weights_fn",
]
