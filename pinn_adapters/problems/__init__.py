"""Built-in physics-informed problems: residual blocks, a batch sampler, an exact solution."""

from ._mlp import mlp_apply, mlp_init
from ._poisson1d import poisson1d
from ._problem import Problem
from ._qtensor2d import qtensor2d, qtensor_blocks
from ._wave1d import wave1d, wave_exact

__all__ = ["Problem", "poisson1d", "wave1d", "wave_exact", "qtensor2d", "qtensor_blocks", "mlp_init", "mlp_apply"]
