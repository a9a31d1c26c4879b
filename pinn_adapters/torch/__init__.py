"""NTK traces and loss weights for PyTorch PINNs (sketchtrace's torch backend).

Needs PyTorch (``pip install 'sketchtrace[torch]'``). Host adapters live in
:mod:`pinn_adapters.torch.pina` (PINA weighting) and
:mod:`pinn_adapters.torch.deepxde` (DeepXDE callback); they import their host
only when used.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError("pinn_adapters.torch needs PyTorch: pip install 'sketchtrace[torch]'") from exc

from .._weighting_api import Weighting
from ._blocks import TorchResidualBlocks, module_params
from ._ntk import exact_traces, jacobian_operator, ntk_traces
from ._weighting import (
    TorchNTKWeighting,
    TorchWeightingState,
    block_grad_norms,
    gradnorm_weighting,
    ntk_weighting,
    ntk_weights,
)

#: the same function under the spelling of jaxpi's paper (``estimator="grad_norm"`` is accepted too)
grad_norm_weighting = gradnorm_weighting

__all__ = [
    "TorchNTKWeighting",
    "TorchResidualBlocks",
    "TorchWeightingState",
    "Weighting",
    "block_grad_norms",
    "exact_traces",
    "gradnorm_weighting",
    "grad_norm_weighting",
    "jacobian_operator",
    "module_params",
    "ntk_traces",
    "ntk_weighting",
    "ntk_weights",
]
