"""Estimators, each written once against the backend protocol."""

from ._adaptive import StoppingRule, trace
from ._blocks import block_traces
from ._common import SketchOptions
from ._diagonal import diagonal
from ._dynamic import DynamicState, moving_average, optimal_gamma, predictor_corrector
from ._hutchinson import hutchinson
from ._hutchpp import hutchpp, na_hutchpp
from ._matfun import logdet, trace_function, trace_inverse
from ._nystrom import Nystrom, SolveInfo, nystrom, nystrom_preconditioner, solve
from ._xtrace import xnystrace, xtrace

__all__ = [
    "DynamicState",
    "Nystrom",
    "SketchOptions",
    "SolveInfo",
    "StoppingRule",
    "block_traces",
    "diagonal",
    "hutchinson",
    "hutchpp",
    "logdet",
    "moving_average",
    "na_hutchpp",
    "nystrom",
    "nystrom_preconditioner",
    "optimal_gamma",
    "predictor_corrector",
    "solve",
    "trace",
    "trace_function",
    "trace_inverse",
    "xnystrace",
    "xtrace",
]
