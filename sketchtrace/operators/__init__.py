"""Operators: dense, sparse, SciPy, lineax, callables, Jacobians, Gram products, finite differences."""

from ._finite_difference import FiniteDifferenceGram, default_step, finite_difference_bias, finite_difference_jvp
from ._linear import (
    Blocks,
    DenseOperator,
    FunctionOperator,
    GramOperator,
    JacobianOperator,
    LinearOperator,
    ScipyOperator,
    SparseOperator,
    TransposedOperator,
    as_operator,
    block_sums,
    blocks_of_tree,
    check_output,
    gram,
    make_blocks,
    require_products,
)

__all__ = [
    "Blocks",
    "DenseOperator",
    "FiniteDifferenceGram",
    "FunctionOperator",
    "GramOperator",
    "JacobianOperator",
    "LinearOperator",
    "ScipyOperator",
    "SparseOperator",
    "TransposedOperator",
    "as_operator",
    "block_sums",
    "blocks_of_tree",
    "check_output",
    "default_step",
    "finite_difference_bias",
    "finite_difference_jvp",
    "gram",
    "make_blocks",
    "require_products",
]

# torch operators are loaded on first use, so that importing sketchtrace never imports torch
_TORCH_NAMES = (
    "TorchOperator",
    "TorchTensorOperator",
    "TorchFunctionOperator",
    "TorchJacobianOperator",
    "TorchGramOperator",
    "as_torch_operator",
    "module_jacobian",
    "torch_gram",
)


def __getattr__(name):
    if name in _TORCH_NAMES:
        from . import _torch

        return getattr(_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
