"""The application: the training loop, the experiment runner, figures and the ``sketchtrace pinn`` command.

Library code (residual blocks, NTK traces and weights, host adapters, problems)
never imports from here.
"""

from ._experiment import PROBLEMS, WaveConfig, compare, fd_bias, run_wave
from ._train import NonFiniteError, Trainer, TrainResult, TrainState, load_checkpoint, save_checkpoint, train

__all__ = [
    "PROBLEMS",
    "NonFiniteError",
    "TrainResult",
    "Trainer",
    "TrainState",
    "WaveConfig",
    "compare",
    "fd_bias",
    "load_checkpoint",
    "run_wave",
    "save_checkpoint",
    "train",
]
