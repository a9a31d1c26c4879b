"""Argument checks shared by every estimator (clear errors naming the argument)."""

from __future__ import annotations

import numbers

import numpy as np


def check_num_matvecs(num_matvecs, *, name: str = "num_matvecs", minimum: int = 1) -> int:
    """Return ``num_matvecs`` as a Python int, or raise naming the argument."""
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, numbers.Integral):
        raise TypeError(
            f"{name} must be a Python integer (a static budget in matvecs); "
            f"got {type(num_matvecs).__name__} {num_matvecs!r}"
        )
    num_matvecs = int(num_matvecs)
    if num_matvecs < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {num_matvecs}")
    return num_matvecs


def check_chunk_size(chunk_size):
    if chunk_size is None:
        return None
    return check_num_matvecs(chunk_size, name="chunk_size")


def check_square(op, *, name: str = "op") -> int:
    m, n = op.shape
    if m != n:
        raise ValueError(
            f"{name} must be square for trace estimation; got shape {op.shape}. "
            "For a rectangular Jacobian J use sketchtrace.gram(J) (J J^T or J^T J)."
        )
    return n


def check_float_dtype(dtype, *, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be a NumPy/JAX dtype; got {dtype!r}") from exc
    if not np.issubdtype(dt, np.floating):
        raise TypeError(
            f"{name} must be a real floating dtype (float32 or float64); got {dt}. "
            "Integer, boolean and complex operators are not supported."
        )
    return dt


def check_choice(value, choices, *, name: str):
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {value!r}")
    return value


def is_concrete(x) -> bool:
    """Whether ``x`` holds values (not a JAX tracer inside ``jit``/``vmap``/``grad``).

    Value-dependent checks (finiteness, PSD checks, adaptive stopping) run only on
    concrete values; under tracing they are skipped or refused.
    """
    import jax

    return not isinstance(x, jax.core.Tracer)
