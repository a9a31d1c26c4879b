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


def _is_number(value, kind) -> bool:
    """A Python or NumPy scalar of ``kind`` (``numbers.Integral`` / ``numbers.Real``), not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, kind)


def check_int(value, *, name: str, minimum: int | None = None) -> int:
    """``value`` (a Python or NumPy integer) as a Python int, or raise naming ``name``."""
    want = "an integer" if minimum is None else f"an integer >= {minimum}"
    if not _is_number(value, numbers.Integral):
        raise TypeError(f"{name} must be {want}; got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {want}; got {value}")
    return value


def check_real(value, *, name: str, low=None, high=None, low_open=False, high_open=False) -> float:
    """``value`` (a Python or NumPy real number) as a finite Python float in the given range.

    ``low``/``high`` are bounds (``None``: unbounded), closed unless ``low_open``/``high_open``.
    """
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    want = f"a real number in {lo or '(-inf'}, {hi or 'inf)'}"
    if not _is_number(value, numbers.Real):
        raise TypeError(f"{name} must be {want}; got {type(value).__name__} {value!r}")
    value = float(value)
    bad = not np.isfinite(value)
    bad |= low is not None and (value <= low if low_open else value < low)
    bad |= high is not None and (value >= high if high_open else value > high)
    if bad:
        raise ValueError(f"{name} must be {want}; got {value!r}")
    return value


def check_csr(S, *, name: str = "op"):
    """Full structural check of a SciPy CSR matrix (``indptr`` monotone and within ``data``,
    column indices in range) before compiled kernels index memory with it."""
    try:
        S.check_format(full_check=True)
    except ValueError as exc:
        raise ValueError(
            f"{name}: corrupt sparse matrix: {exc} (scipy check_format); rebuild it with scipy.sparse.csr_matrix"
        ) from None
    return S


def check_matvec_output(y, shape, *, what: str):
    """Refuse an operator output of the wrong shape or a complex one (before it is cast and used)."""
    y = np.asarray(y)
    if np.iscomplexobj(y):
        raise TypeError(
            f"{what} returned complex values (dtype {y.dtype}); sketchtrace estimates traces of real operators "
            "(the imaginary part would be dropped)"
        )
    if y.shape != tuple(shape):
        raise ValueError(f"{what} returned shape {y.shape}; expected {tuple(shape)}")
    return y


def probe_matvec(matvec, shape, dtype, *, what: str):
    """Call a host-side ``matvec`` once on a zero vector and check its output (shape, real).

    Used at setup for operators whose output cannot be checked statically (SciPy
    ``LinearOperator``, Python callables), so a wrong shape is reported up front.
    """
    try:
        y = matvec(np.zeros(shape[1], dtype))
    except Exception as exc:  # any failure of user code, reported with its origin
        raise ValueError(f"{what} failed on a probe of shape ({shape[1]},): {type(exc).__name__}: {exc}") from exc
    if np.shape(y) == (shape[0], 1):  # SciPy's own convention allows a column
        y = np.asarray(y)[:, 0]
    check_matvec_output(y, (shape[0],), what=what)


def scipy_raw_matvec(L):
    """The user's matvec of a SciPy ``LinearOperator`` without SciPy's reshape of its output
    (which would hide a wrong output shape behind a reshape error)."""
    return getattr(L, "_matvec", L.matvec)


def check_output_path(path, *, name: str = "output"):
    """Refuse (before any work) an output file that cannot be written: a directory, or a
    parent that is missing, not a directory (e.g. under a regular file) or not writable."""
    import os

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a directory; expected a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{name}: cannot write {path!r}: {parent!r} is a file, not a directory")
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{name}: the directory {parent!r} of {path!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: the directory {parent!r} of {path!r} is not writable")
    return path


def check_output_dir(path, *, name: str = "output directory"):
    """Refuse (before any work) an output directory that cannot be created or written:
    the path or one of its ancestors is a regular file, or the nearest existing
    ancestor is not writable."""
    import os

    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{name}: cannot create {path!r}: {probe!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: {probe!r} is not writable (needed for {path!r})")
    return path


def option_int(minimum: int):
    """An ``argparse`` type: an integer ``>= minimum``; argparse names the option in the error
    (``argument --seed: expected an integer >= 0; got -1``)."""
    import argparse

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
