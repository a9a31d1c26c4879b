"""pinn_adapters: NTK loss weights for physics-informed networks, built on sketchtrace.

Host libraries (Flax, Equinox, jinns, optax, tqdm) are imported lazily, inside the
functions that need them; importing this package needs only JAX and sketchtrace.
"""

from . import causal, nets, optim, problems, second_order
from ._blocks import MixedBlock, ResidualBlocks
from ._ntk import ntk_traces, ntk_weights
from ._weighting import NTKWeighting, WeightingState, gradnorm_weighting, ntk_weighting

#: The training application's names, loaded on first use (``import pinn_adapters`` does not import
#: the app, its optimizers, checkpoints or plots).
_APP_NAMES = ("NonFiniteError", "TrainResult", "TrainState", "Trainer", "load_checkpoint", "save_checkpoint", "train")


def __getattr__(name):
    if name in _APP_NAMES:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_APP_NAMES))


#: the same function under the spelling of jaxpi's paper (``estimator="grad_norm"`` is accepted too)
grad_norm_weighting = gradnorm_weighting

__all__ = [
    "ResidualBlocks",
    "MixedBlock",
    "ntk_traces",
    "ntk_weights",
    "ntk_weighting",
    "gradnorm_weighting",
    "grad_norm_weighting",
    "NTKWeighting",
    "WeightingState",
    "train",
    "Trainer",
    "TrainResult",
    "TrainState",
    "NonFiniteError",
    "save_checkpoint",
    "load_checkpoint",
    "problems",
    "nets",
    "causal",
    "optim",
    "second_order",
]
