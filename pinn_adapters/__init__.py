"""pinn_adapters: NTK loss weights for physics-informed networks, built on sketchtrace.

Host libraries (Flax, Equinox, jinns, optax, tqdm) are imported lazily, inside the
functions that need them; importing this package needs only JAX and sketchtrace.
"""

from . import causal, nets, optim, problems
from ._blocks import MixedBlock, ResidualBlocks
from ._ntk import ntk_traces, ntk_weights
from ._weighting import NTKWeighting, WeightingState, gradnorm_weighting, ntk_weighting
from .app import NonFiniteError, TrainResult, TrainState, load_checkpoint, save_checkpoint, train

__all__ = [
    "ResidualBlocks",
    "MixedBlock",
    "ntk_traces",
    "ntk_weights",
    "ntk_weighting",
    "gradnorm_weighting",
    "NTKWeighting",
    "WeightingState",
    "train",
    "TrainResult",
    "TrainState",
    "NonFiniteError",
    "save_checkpoint",
    "load_checkpoint",
    "problems",
    "nets",
    "causal",
    "optim",
]
