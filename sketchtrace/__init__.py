"""sketchtrace: randomized, matrix-free trace estimation on JAX and numba.

Public names live here; everything else is internal.
"""

from ._dynamic import DynamicState, moving_average, optimal_gamma, predictor_corrector
from ._estimate import Estimate
from ._finite_difference import FiniteDifferenceGram, default_step, finite_difference_bias, finite_difference_jvp
from ._adaptive import trace
from ._diagonal import diagonal
from ._hutchinson import block_traces, hutchinson
from ._hutchpp import hutchpp, na_hutchpp
from ._xtrace import xnystrace, xtrace
from ._sharding import make_mesh
from ._operators import (
    DenseOperator,
    FunctionOperator,
    GramOperator,
    JacobianOperator,
    LinearOperator,
    ScipyOperator,
    SparseOperator,
    as_operator,
    gram,
)
from ._samplers import (
    sample_like,
    sampler_gaussian,
    sampler_rademacher,
    sampler_sphere,
)

__version__ = "0.1.0"

__all__ = [
    "predictor_corrector",
    "moving_average",
    "optimal_gamma",
    "DynamicState",
    "finite_difference_jvp",
    "FiniteDifferenceGram",
    "finite_difference_bias",
    "default_step",
    "Estimate",
    "LinearOperator",
    "DenseOperator",
    "SparseOperator",
    "ScipyOperator",
    "FunctionOperator",
    "JacobianOperator",
    "GramOperator",
    "as_operator",
    "gram",
    "hutchinson",
    "block_traces",
    "hutchpp",
    "na_hutchpp",
    "xtrace",
    "xnystrace",
    "diagonal",
    "trace",
    "make_mesh",
    "sample_like",
    "sampler_rademacher",
    "sampler_gaussian",
    "sampler_sphere",
]
