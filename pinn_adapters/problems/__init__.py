"""Built-in physics-informed problems: residual blocks, a batch sampler, an exact or reference solution."""

from ._allen_cahn import allen_cahn
from ._burgers import burgers
from ._mlp import mlp_apply, mlp_init
from ._poisson1d import poisson1d
from ._problem import Problem
from ._qtensor2d import qtensor2d, qtensor_blocks
from ._references import (
    SpectralSolution,
    allen_cahn_reference,
    burgers_reference,
    burgers_reference_ux,
    etdrk4,
    etdrk4_coefficients,
    solve_allen_cahn,
)
from ._wave1d import wave1d, wave_exact

__all__ = [
    "Problem",
    "poisson1d",
    "wave1d",
    "wave_exact",
    "burgers",
    "allen_cahn",
    "burgers_reference",
    "burgers_reference_ux",
    "allen_cahn_reference",
    "solve_allen_cahn",
    "SpectralSolution",
    "etdrk4",
    "etdrk4_coefficients",
    "qtensor2d",
    "qtensor_blocks",
    "mlp_init",
    "mlp_apply",
]
