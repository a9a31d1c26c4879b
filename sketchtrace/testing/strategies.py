"""Hypothesis strategies for test operators with exact traces.

Each strategy yields a :class:`TestOperator`: the dense matrix (float64 NumPy),
its exact trace, squared Frobenius norm and diagonal, and ``op`` (a sketchtrace
operator for it). Matrices are ``Q diag(eigs) Q^T`` with a random orthogonal ``Q``
seeded by hypothesis, so failures shrink and replay deterministically.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as hst

from .._optional import jax, jnp

__all__ = ["SPECTRA", "TestOperator", "mlp_jacobians", "psd_matrices", "symmetric_matrices"]


class TestOperator(NamedTuple):
    __test__ = False  # not a pytest test class

    op: Any
    matrix: np.ndarray
    trace: float
    frobenius_sq: float
    diagonal: np.ndarray


SPECTRA = {
    "flat": lambda n: np.linspace(1.0, 3.0, n),
    "poly": lambda n: np.arange(1, n + 1, dtype=float) ** -2.0,
    "slowexp": lambda n: 0.9 ** np.arange(n, dtype=float),
    "fastexp": lambda n: 0.7 ** np.arange(n, dtype=float),
}


def _orthogonal(n: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((n, n))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))


def _case(eigs: np.ndarray, seed: int, as_op) -> TestOperator:
    n = eigs.size
    q = _orthogonal(n, seed)
    a = (q * eigs) @ q.T
    a = 0.5 * (a + a.T)
    return TestOperator(as_op(a), a, float(np.trace(a)), float(np.sum(a * a)), np.diag(a).copy())


def _default_as_op(a):
    from sketchtrace import as_operator

    return as_operator(a)


@hst.composite
def _matrices(draw, sizes, spectrum, low, high, as_op):
    n = draw(sizes)
    if spectrum is None:
        eigs = np.array(draw(hst.lists(hst.floats(low, high, allow_nan=False), min_size=n, max_size=n)))
    elif callable(spectrum):
        eigs = np.asarray(spectrum(n), dtype=float)
    else:
        if spectrum not in SPECTRA:
            raise ValueError(
                f"spectrum must be one of {sorted(SPECTRA)} or a callable n -> eigenvalues; got {spectrum!r}"
            )
        eigs = SPECTRA[spectrum](n)
    seed = draw(hst.integers(0, 2**31 - 1))
    return _case(eigs, seed, as_op)


def psd_matrices(*, sizes=hst.integers(2, 40), spectrum=None, as_op=None):
    """Symmetric positive semi-definite matrices.

    ``spectrum``: ``None`` (eigenvalues drawn in [0, 10]), one of :data:`SPECTRA`
    (``"flat"``, ``"poly"``, ``"slowexp"``, ``"fastexp"``), or a callable
    ``n -> eigenvalues``. ``as_op`` turns the dense matrix into the operator
    under test (default :func:`sketchtrace.as_operator`).
    """
    return _matrices(sizes, spectrum, 0.0, 10.0, as_op or _default_as_op)


def symmetric_matrices(*, sizes=hst.integers(2, 40), as_op=None):
    """Symmetric indefinite matrices (eigenvalues drawn in [-10, 10])."""
    return _matrices(sizes, None, -10.0, 10.0, as_op or _default_as_op)


class JacobianCase(NamedTuple):
    __test__ = False

    f: Any
    params: Any
    x: Any
    jacobian: np.ndarray
    gram_trace: float


@hst.composite
def mlp_jacobians(draw, *, widths=hst.integers(2, 8), depth=hst.integers(1, 3), num_points=hst.integers(1, 6)):
    """Jacobians (w.r.t. the parameters) of small tanh MLPs at a few input points.

    Yields a :class:`JacobianCase`: ``f(params, x)`` (outputs of shape ``(num_points,)``),
    the parameter pytree, the inputs, the dense Jacobian and ``||J||_F^2``
    (the trace of ``J J^T`` and of ``J^T J``).
    """
    width, d, npts = draw(widths), draw(depth), draw(num_points)
    seed = draw(hst.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    dims = [2] + [width] * d + [1]
    params = [
        {"w": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a)), "b": jnp.asarray(0.1 * rng.standard_normal(b))}
        for a, b in zip(dims[:-1], dims[1:])
    ]
    x = jnp.asarray(rng.uniform(-1, 1, (npts, 2)))

    def f(params, x):
        h = x
        for i, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return h[:, 0]

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = np.asarray(jax.jacfwd(lambda p: f(unravel(p), x))(flat))
    return JacobianCase(f, params, x, jac, float(np.sum(jac * jac)))
