"""Finite element reference solutions (scikit-fem, imported lazily) for the PINN problems."""

from ._qtensor import (
    FEMSolution,
    default_cache_dir,
    initial_director,
    initial_q,
    make_basis,
    manufactured,
    reference,
    solve_qtensor,
)

__all__ = [
    "FEMSolution",
    "solve_qtensor",
    "reference",
    "default_cache_dir",
    "initial_q",
    "initial_director",
    "make_basis",
    "manufactured",
]
