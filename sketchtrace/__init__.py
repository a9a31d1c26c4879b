"""sketchtrace: randomized, matrix-free trace estimation on JAX and numba.

Public names live here; everything else is internal.
"""

from . import sharding as sharding  # public submodules
from . import validation as validation
from ._estimate import Estimate
from ._samplers import (
    probe_rows,
    sample_like,
    sampler_gaussian,
    sampler_rademacher,
    sampler_sphere,
)
from .estimators import (
    DynamicState,
    Nystrom,
    SketchOptions,
    SolveInfo,
    StoppingRule,
    block_traces,
    diagonal,
    hutchinson,
    hutchpp,
    logdet,
    moving_average,
    na_hutchpp,
    nystrom,
    nystrom_preconditioner,
    optimal_gamma,
    predictor_corrector,
    solve,
    trace,
    trace_function,
    trace_inverse,
    xnystrace,
    xtrace,
)
from .estimators._dynamic import predictor_corrector_step
from .estimators._matfun import QuadratureWarning
from .operators import (
    DenseOperator,
    FiniteDifferenceGram,
    FunctionOperator,
    GramOperator,
    JacobianOperator,
    LinearOperator,
    ScipyOperator,
    SparseOperator,
    as_operator,
    default_step,
    finite_difference_bias,
    finite_difference_jvp,
    gram,
)
from .sharding import make_mesh

__version__ = "0.1.0"

__all__ = [
    "predictor_corrector",
    "moving_average",
    "optimal_gamma",
    "predictor_corrector_step",
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
    "SketchOptions",
    "hutchinson",
    "block_traces",
    "hutchpp",
    "na_hutchpp",
    "xtrace",
    "xnystrace",
    "nystrom",
    "nystrom_preconditioner",
    "Nystrom",
    "solve",
    "SolveInfo",
    "diagonal",
    "trace",
    "StoppingRule",
    "trace_function",
    "logdet",
    "trace_inverse",
    "QuadratureWarning",
    "make_mesh",
    "probe_rows",
    "sample_like",
    "sampler_rademacher",
    "sampler_gaussian",
    "sampler_sphere",
]
