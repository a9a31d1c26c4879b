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
]
