"""Randomized Nystrom approximation of a PSD operator, its preconditioner and a preconditioned CG solve.

Written once against the backend protocol (``bk.probes``, ``bk.matmat``, ``bk.xp``), with the
XNysTrace sketch (:func:`~sketchtrace.estimators._xtrace.nys_state`, ``Y = A Omega``) and its PSD
check reused. JAX: ``nystrom`` and ``solve`` with a fixed rank run under ``jax.jit``; the CG loop is
a ``lax.while_loop`` on JAX arrays and a Python loop on NumPy arrays (numba backend) and torch tensors.

Why our own CG and not ``lineax.CG``: lineax is an optional extra (the core depends on numpy, scipy
and jax only), it is JAX-only (the numba backend solves too), and its stopping test is an
elementwise max-norm test on residual *and* step, so its iteration counts are not the textbook
``||r||_2 <= max(atol, rtol ||b||_2)`` counts FTU's bounds speak about. The loop is 20 lines.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .._optional import JaxArray, lax
from ..backends import namespace_of
from ..validation import check_int, check_real, is_concrete
from ._common import setup
from ._xtrace import _cholesky_or_nan, nys_state, psd_violation


class Nystrom(NamedTuple):
    """A rank-``r`` Nystrom approximation ``A ~ U diag(eigenvalues) U^T`` (a pytree).

    Attributes
    ----------
    U : (n, r) array with orthonormal columns.
    eigenvalues : (r,) array, descending, ``>= 0``.
    error : scalar, a randomized power-method estimate of ``||A - U diag(eigenvalues) U^T||_2``
        (a lower bound that is within a small factor with high probability).
    shift : scalar, the stabilising shift ``nu`` used (subtracted again from the eigenvalues).
    matvecs : int, products with ``A`` spent (``r`` for the sketch plus the power iterations).
    """

    U: Any
    eigenvalues: Any
    error: Any
    shift: Any
    matvecs: int


class SolveInfo(NamedTuple):
    """What :func:`solve` did: CG ``iterations``, the true final ``residual_norm``
    ``||b - (A + mu I) x||_2``, ``converged`` (the CG test ``||r||_2 <= max(atol, rtol ||b||_2)`` was
    met within ``maxiter``, with no breakdown ``p^T (A + mu I) p <= 0`` and a finite residual), the preconditioner ``rank`` (0: none), its a posteriori ``error``
    estimate, and the total ``matvecs`` with ``A`` (sketch, power iterations, CG, final residual)."""

    iterations: Any
    residual_norm: Any
    converged: Any
    rank: int
    error: Any
    matvecs: Any


# ----------------------------------------------------------------------------- loops


def _is_jax(x) -> bool:
    return isinstance(x, JaxArray)  # tracers are jax.Array instances too (never true without JAX)


def _while(cond, body, state):
    """``lax.while_loop`` on JAX arrays, a Python loop on NumPy arrays."""
    if _is_jax(state[0]):
        return lax.while_loop(cond, body, state)
    while bool(cond(state)):
        state = body(state)
    return state


def _orthonormal(xp, G, basis=None):
    """Orthonormal columns spanning ``G`` (against ``basis`` first: two Gram-Schmidt passes)."""
    if basis is not None:
        for _ in range(2):
            G = G - basis @ (basis.T @ G)
    Q, _ = xp.linalg.qr(G)
    return Q


# ----------------------------------------------------------------------------- nystrom


def _check_rank(rank, n):
    rank = check_int(rank, name="rank", minimum=1)
    if rank > n:
        raise ValueError(f"rank must be <= the dimension n={n} of op; got rank={rank}")
    return rank


def _check_psd_declared(op, method):
    if op.psd is False:
        raise ValueError(f"{method} needs a positive semidefinite operator and op is declared psd=False")


def _check_psd_sketch(bk, Om, Y, method):
    """Cheap PSD check on the ``r x r`` core ``Omega^T A Omega`` (eager values only)."""
    if not (bk.is_concrete(Om) and bk.is_concrete(Y)):
        return
    asym, neg = (float(np.asarray(v)) for v in psd_violation(bk.xp, Om, Y))
    tol = math.sqrt(float(bk.xp.finfo(Y.dtype).eps))
    if asym > tol or neg < -tol:
        raise ValueError(
            f"op is not symmetric positive semidefinite: Omega^T A Omega has relative asymmetry {asym:.3g} "
            f"and smallest eigenvalue {neg:.3g} times its largest (tolerance {tol:.3g}); {method} needs a "
            "symmetric PSD operator (a Gram operator J^T J, a covariance, a Hessian of a convex loss)"
        )


def _factor(bk, op, sketch, shift):
    """Stable Nystrom factors from ``Om`` (orthonormal) and ``Y = A Om`` (Tropp et al. 2017, FTU 2023)."""
    xp = bk.xp
    Om, Y = sketch["Om"], sketch["Y"]
    n, r = Om.shape
    dt = Y.dtype
    if shift is None:
        eps = xp.finfo(dt).eps
        ynorm = xp.sqrt(xp.maximum(xp.linalg.eigvalsh(Y.T @ Y)[-1], 0.0))  # ||Y||_2 from an r x r matrix
        nu = math.sqrt(n) * eps * ynorm
    else:
        nu = xp.asarray(shift, dtype=dt)
    Ynu = Y + nu * Om
    H = Om.T @ Ynu
    H = 0.5 * (H + H.T)
    L = _cholesky_or_nan(xp, H)
    ok = xp.all(xp.isfinite(L))
    # Cholesky fails only for a (numerically) indefinite core; then an eigen square root with floored values
    lam_h, V = xp.linalg.eigh(H)
    floor = xp.maximum(r * xp.finfo(dt).eps * xp.max(xp.abs(lam_h)), xp.finfo(dt).tiny)
    B_eig = Ynu @ (V / xp.sqrt(xp.maximum(lam_h, floor)))
    B_chol = xp.linalg.solve(xp.where(ok, L, xp.eye(r, dtype=dt)), Ynu.T).T  # Ynu L^{-T}
    B = xp.where(ok, B_chol, B_eig)
    U, s, _ = xp.linalg.svd(B, full_matrices=False)
    lam = xp.maximum(s * s - nu, 0.0)
    return U, lam, nu


def _power_error(bk, op, key, U, lam, num_iter, chunk_size):
    """Randomized power-method estimate of ``||A - U diag(lam) U^T||_2`` (``num_iter`` matvecs)."""
    xp = bk.xp
    n = U.shape[0]
    v = bk.probes(key, 1, n, U.dtype, "gaussian")[0]
    v = v / xp.sqrt(xp.sum(v * v))
    est = xp.zeros((), U.dtype)
    for _ in range(num_iter):
        w = bk.matmat(op, v[None, :], chunk_size)[0] - U @ (lam * (U.T @ v))
        est = xp.sqrt(xp.sum(w * w))
        v = w / xp.where(est > 0, est, 1.0)
    return est


def _sketch(bk, op, key, rank, n, dtype, sampler, chunk_size, prev=None):
    G = bk.probes(key, rank, n, dtype, sampler).T
    Om = _orthonormal(bk.xp, G, None if prev is None else prev["Om"])
    return nys_state(bk, op, Om.T, chunk_size, prev)


def nystrom(
    key,
    op,
    rank,
    *,
    shift=None,
    sampler="gaussian",
    power_iterations=10,
    check_psd=True,
    chunk_size=None,
    backend=None,
):
    """Randomized Nystrom approximation ``A ~ U diag(eigenvalues) U^T`` of a PSD operator.

    The stable algorithm of Tropp, Yurtsever, Udell and Cevher (2017) as used by Frangella, Tropp and
    Udell (2023): an orthonormalised Gaussian test matrix ``Omega`` (``n x rank``), ``Y = A Omega``,
    a shift ``nu = sqrt(n) eps ||Y||_2``, the Cholesky factor ``L`` of ``Omega^T (Y + nu Omega)``,
    the thin SVD ``(Y + nu Omega) L^{-T} = U S V^T`` and ``eigenvalues = max(S^2 - nu, 0)``. Then
    ``power_iterations`` further products estimate the error ``||A - Ahat||_2`` (the a posteriori
    estimate FTU's adaptive rank uses). Cost: ``rank + power_iterations`` matvecs and
    ``O(n rank^2)`` work; memory ``O(n rank)``.

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
    op : operator
        Square, symmetric positive semidefinite (dense, sparse, ``gram(JacobianOperator)``, callables).
        One declared ``psd=False`` is refused before any work.
    rank : int
        ``1 <= rank <= n``.
    shift : float, optional
        The stabilising shift ``nu`` (default ``sqrt(n) eps ||Y||_2``).
    sampler : str or callable
        Test-matrix distribution before orthonormalisation (default ``"gaussian"``).
    power_iterations : int
        Products spent on the error estimate (``0``: ``error`` is NaN).
    check_psd : bool
        Eagerly refuse an operator whose ``rank x rank`` core ``Omega^T A Omega`` is clearly not
        symmetric PSD (free: the core is formed anyway; skipped under ``jax.jit``).
    chunk_size : int, optional
    backend : {"jax", "numba", "torch"}, optional

    Returns
    -------
    Nystrom

    References
    ----------
    J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Fixed-rank approximation of a positive-semidefinite
    matrix from streaming data", NeurIPS 2017, arXiv:1706.05736.
    Z. Frangella, J. A. Tropp, M. Udell, "Randomized Nystrom preconditioning", SIAM J. Matrix Anal. Appl.
    44(2), 2023, doi:10.1137/21M1466244, arXiv:2110.02820.
    """
    rank = check_int(rank, name="rank", minimum=1)
    power_iterations = check_int(power_iterations, name="power_iterations", minimum=0)
    if shift is not None:
        shift = check_real(shift, name="shift", low=0)
    if not isinstance(check_psd, bool):
        raise TypeError(f"check_psd must be True or False; got {check_psd!r}")
    bk, op, n, _, chunk_size = setup(key, op, rank, chunk_size, backend, method="nystrom")
    _check_rank(rank, n)
    _check_psd_declared(op, "nystrom")
    k_sketch, k_err = bk.split(key, 2)
    sk = _sketch(bk, op, k_sketch, rank, n, bk.probe_dtype(op), sampler, chunk_size)
    return _finish(bk, op, sk, k_err, shift, power_iterations, check_psd, chunk_size)


def _finish(bk, op, sk, k_err, shift, power_iterations, check_psd, chunk_size):
    if check_psd:
        _check_psd_sketch(bk, sk.Om, sk.Y, "nystrom")
    U, lam, nu = _factor(bk, op, sk, shift)
    bk.check_finite("op", lam)
    if power_iterations:
        err = _power_error(bk, op, k_err, U, lam, power_iterations, chunk_size)
    else:
        err = bk.xp.full((), float("nan"), U.dtype)
    return Nystrom(U, lam, err, nu, sk.Om.shape[1] + power_iterations)


def nystrom_preconditioner(approx: Nystrom, damping):
    """The inverse Nystrom preconditioner for ``A + damping I`` as a function of ``v`` (``(n,)`` or ``(n, k)``).

    ``P^{-1} v = (lambda_r + mu) U (Lambda + mu I)^{-1} U^T v + (I - U U^T) v`` (FTU 2023, eq. 5.3),
    ``mu = damping``; with ``||A - Ahat|| <= mu`` the preconditioned condition number is below
    ``(lambda_r + mu + ||A - Ahat||) / mu`` (their Proposition 5.3, in expectation for the adaptive rank).
    """
    U, lam = approx.U, approx.eigenvalues
    xp = namespace_of(U)  # NumPy, JAX or the torch backend's
    mu = xp.asarray(damping, dtype=U.dtype)
    tiny = xp.finfo(U.dtype).tiny
    scale = (lam[-1] + mu) / xp.maximum(lam + mu, tiny)

    def apply(v):
        c = U.T @ v
        d = (scale - 1.0) * c if v.ndim == 1 else (scale - 1.0)[:, None] * c
        return v + U @ d

    return apply


# ----------------------------------------------------------------------------- solve


def _check_damping(damping):
    """A real ``>= 0``; a traced JAX scalar (``solve`` under ``jax.jit`` with the damping as an input) is kept."""
    if not is_concrete(damping):
        if getattr(damping, "shape", None) != ():
            raise ValueError(f"damping must be a scalar; got shape {getattr(damping, 'shape', None)}")
        return damping
    return check_real(damping, name="damping", low=0)


def _check_b(bk, b, n, dtype):
    shape = getattr(b, "shape", None)
    if shape is None:
        b = np.asarray(b)
        shape = b.shape
    if tuple(shape) != (n,):
        raise ValueError(f"b must be a vector of shape ({n},) matching op; got shape {tuple(shape)}")
    b = bk.xp.asarray(b, dtype=dtype)
    if bk.is_concrete(b) and not bool(bk.xp.all(bk.xp.isfinite(b))):
        raise ValueError("b must be finite; it holds NaN or inf")
    return b


def _pcg(xp, apply_a, apply_m, b, tol, maxiter):
    """Preconditioned CG from ``x0 = 0`` until ``||r||_2 <= tol``: ``(x, iterations, recursive ||r||)``."""
    x = xp.zeros_like(b)
    r = b
    z = apply_m(r)
    rz = xp.sum(r * z)
    zero = xp.zeros((), b.dtype)
    state = (x, r, z, rz, xp.asarray(0), xp.sqrt(xp.sum(r * r)), z)

    def cond(s):
        return (s[4] < maxiter) & (s[5] > tol)

    def body(s):
        x, r, p, rz, k, _, _ = s
        ap = apply_a(p)
        pap = xp.sum(p * ap)
        alpha = xp.where(pap > 0, rz / xp.where(pap > 0, pap, 1.0), zero)
        x = x + alpha * p
        r = r - alpha * ap
        z = apply_m(r)
        rz_new = xp.sum(r * z)
        beta = rz_new / xp.where(rz != 0, rz, 1.0)
        # breakdown (p^T A p <= 0: not positive definite, or NaN): stop, not converged (NaN fails both tests)
        rnorm = xp.where(pap > 0, xp.sqrt(xp.sum(r * r)), xp.full((), xp.nan, b.dtype))
        return (x, r, z + beta * p, rz_new, k + 1, rnorm, z)

    x, _, _, _, k, rnorm, _ = _while(cond, body, state)
    return x, k, rnorm


def _auto_rank(bk, op, key, n, damping, condition, max_rank, sampler, power_iterations, chunk_size):
    """FTU's adaptive rank: double from ``min(10, max_rank)`` until ``(lambda_r + Ehat) / mu <= condition - 1``.

    Each round extends the previous sketch (only the new columns are multiplied by ``A``).
    """
    r = min(10, max_rank)
    keys = bk.split(key, 64)
    sk = None
    for i in range(32):
        grow = r - (0 if sk is None else sk.Om.shape[1])
        sk = _sketch(bk, op, keys[2 * i], grow, n, bk.probe_dtype(op), sampler, chunk_size, sk)
        approx = _finish(bk, op, sk, keys[2 * i + 1], None, power_iterations, True, chunk_size)
        if not bk.is_concrete(approx.eigenvalues):
            raise TypeError("solve(rank='auto') chooses the rank from values and must run eagerly (outside jax.jit)")
        bound = (float(approx.eigenvalues[-1]) + float(approx.error)) / damping
        if bound <= condition - 1 or r >= max_rank:
            break
        r = min(2 * r, max_rank)
    return approx


def solve(
    key,
    op,
    b,
    *,
    damping=0.0,
    rank=None,
    preconditioner="nystrom",
    rtol=1e-6,
    atol=0.0,
    maxiter=None,
    condition=10.0,
    max_rank=None,
    sampler="gaussian",
    power_iterations=10,
    chunk_size=None,
    backend=None,
):
    """Solve ``(A + damping I) x = b`` for PSD ``A`` by (Nystrom-preconditioned) conjugate gradients.

    The preconditioner is :func:`nystrom_preconditioner` of a rank-``rank`` :func:`nystrom`
    approximation (Frangella, Tropp and Udell 2023). ``rank="auto"`` is their adaptive rank:
    starting at 10 the rank doubles (re-using the previous sketch) until the bound
    ``(lambda_r + ||A - Ahat||) / mu <= condition - 1`` on the preconditioned condition number holds
    or ``max_rank`` is reached (eager only). CG stops when ``||r||_2 <= max(atol, rtol ||b||_2)``.

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
    op : operator, square symmetric PSD (``psd=False`` refused).
    b : (n,) array, finite.
    damping : float >= 0
        ``mu`` (needed > 0 with the Nystrom preconditioner unless ``A`` is positive definite).
    rank : int or "auto"
        Preconditioner rank (default ``min(n, 50)``); ignored with ``preconditioner=None``.
    preconditioner : {"nystrom", None}
    rtol, atol : float >= 0
    maxiter : int, optional (default ``10 n``)
    condition : float > 1
        Target condition-number bound of ``rank="auto"``.
    max_rank : int, optional (default ``min(n, 512)``)
    sampler, power_iterations, chunk_size, backend
        As for :func:`nystrom`.

    Returns
    -------
    (x, SolveInfo)
    """
    damping = _check_damping(damping)
    rtol = check_real(rtol, name="rtol", low=0)
    atol = check_real(atol, name="atol", low=0)
    if preconditioner not in ("nystrom", None):
        raise ValueError(f"preconditioner must be 'nystrom' or None; got {preconditioner!r}")
    condition = check_real(condition, name="condition", low=1, low_open=True)
    bk, op, n, _, chunk_size = setup(key, op, 1, chunk_size, backend, method="solve")
    _check_psd_declared(op, "solve")
    maxiter = 10 * n if maxiter is None else check_int(maxiter, name="maxiter", minimum=1)
    max_rank = min(n, 512) if max_rank is None else _check_rank(check_int(max_rank, name="max_rank", minimum=1), n)
    if rank is None:
        rank = min(n, 50)
    elif rank != "auto":
        rank = _check_rank(rank, n)
    b = _check_b(bk, b, n, bk.probe_dtype(op))
    xp = bk.xp
    approx, r_used, err, spent = None, 0, xp.full((), float("nan"), b.dtype), 0
    if preconditioner == "nystrom":
        if rank == "auto":
            if not is_concrete(damping) or damping <= 0:
                raise ValueError("solve(rank='auto') needs a concrete damping > 0: the rank is chosen relative to it")
            approx = _auto_rank(bk, op, key, n, damping, condition, max_rank, sampler, power_iterations, chunk_size)
        else:
            approx = nystrom(
                key,
                op,
                rank,
                sampler=sampler,
                power_iterations=power_iterations,
                chunk_size=chunk_size,
                backend=backend,
            )
        r_used, err, spent = approx.U.shape[1], approx.error, approx.matvecs
        apply_m = nystrom_preconditioner(approx, damping)
    else:
        apply_m = lambda v: v  # noqa: E731

    def apply_a(v):
        return bk.matmat(op, v[None, :], chunk_size)[0] + damping * v

    tol = xp.maximum(atol, rtol * xp.sqrt(xp.sum(b * b)))
    x, k, rnorm = _pcg(xp, apply_a, apply_m, b, tol, maxiter)
    res = b - apply_a(x)
    true = xp.sqrt(xp.sum(res * res))
    return x, SolveInfo(k, true, (rnorm <= tol) & xp.isfinite(true), r_used, err, spent + k + 1)
