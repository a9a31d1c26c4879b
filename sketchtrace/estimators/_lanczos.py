"""Gauss quadrature from Lanczos tridiagonals: ``z^T f(A) z ~ ||z||^2 e1^T f(T) e1``.

Written against an array namespace ``xp`` (``jax.numpy`` or ``numpy``) and a backend's
``lanczos`` kernel, so it runs unchanged on both backends. The named functions carry
their derivative (for the JAX gradient rule) and the domain they need.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: name -> (f, f', domain) with domain "pos" (Ritz values must be > 0), "nonneg" (>= 0) or "any".
FUNCTIONS = {
    "log": (lambda xp, x: xp.log(x), lambda xp, x: 1.0 / x, "pos"),
    "inv": (lambda xp, x: 1.0 / x, lambda xp, x: -1.0 / (x * x), "pos"),
    "exp": (lambda xp, x: xp.exp(x), lambda xp, x: xp.exp(x), "any"),
    "sqrt": (lambda xp, x: xp.sqrt(x), lambda xp, x: 0.5 / xp.sqrt(x), "nonneg"),
}


def alive_mask(xp, alpha, beta, norms):
    """``(k, s)``: step ``j`` of run ``i`` happened before any breakdown (and the probe is nonzero)."""
    first = (norms > 0)[:, None]
    later = xp.cumprod(xp.astype(beta[:, :-1] > 0, alpha.dtype), axis=1) > 0
    return xp.concatenate([first, first & later], axis=1)


def tridiagonal(xp, alpha, beta, norms):
    """The ``(k, s, s)`` Jacobi matrices; steps after a breakdown hold a decoupled copy of ``alpha_0``.

    The padding has zero quadrature weight (it is decoupled from ``e1``), so any value
    inside the spectrum keeps ``f`` finite there; a zero probe gets the identity.
    """
    s = alpha.shape[1]
    alive = alive_mask(xp, alpha, beta, norms)
    pad = xp.where(alive[:, 0], alpha[:, 0], 1.0)
    a = xp.where(alive, alpha, pad[:, None])
    b = xp.concatenate([beta[:, :-1] * alive[:, 1:], xp.zeros_like(beta[:, :1])], axis=1)
    up = b[:, :, None] * xp.eye(s, k=1, dtype=alpha.dtype)
    return a[:, :, None] * xp.eye(s, dtype=alpha.dtype) + up + xp.swapaxes(up, 1, 2)


def ritz(xp, alpha, beta, norms):
    """Ritz values ``(k, s)`` and eigenvectors ``(k, s, s)`` of the Lanczos tridiagonals."""
    return xp.linalg.eigh(tridiagonal(xp, alpha, beta, norms))


def check_domain(bk, fname, domain, theta):
    """Refuse Ritz values outside ``f``'s domain (concrete values only; before ``f`` is applied)."""
    if not bk.is_concrete(theta):
        return
    th = np.asarray(theta)
    scale = float(np.max(np.abs(th))) if th.size else 0.0
    low = float(th.min())
    if (domain == "pos" and low <= 0) or (domain == "nonneg" and low < -1e-8 * scale):
        need = "positive definite" if domain == "pos" else "positive semidefinite"
        raise ValueError(
            f"op must be symmetric {need} for f={fname!r}: Lanczos found a Ritz value {low:.6g} "
            "(Ritz values lie within the spectrum, so op has an eigenvalue <= that value); "
            "shift the operator or use a function defined on the whole spectrum"
        )


def check_values(bk, fname, theta, fvals):
    """Refuse non-finite ``f`` values at the Ritz values (concrete values only)."""
    if not bk.is_concrete(fvals):
        return
    th, fv = np.asarray(theta), np.asarray(fvals)
    if not np.all(np.isfinite(fv)):
        bad = th[~np.isfinite(fv)]
        raise ValueError(
            f"f={fname!r} returned non-finite values (NaN or inf) at Ritz values {bad[:5].tolist()}; "
            "f must be finite on the operator's spectrum"
        )


def apply_f(bk, spec, theta):
    """``f`` on the Ritz values ``theta``, checked: domain first, then finiteness of the values.

    Square roots of tiny negative rounding errors are taken at 0.
    """
    fname, f, _, domain = spec
    check_domain(bk, fname, domain, theta)
    fvals = f(bk.xp.maximum(theta, 0.0) if domain == "nonneg" else theta)
    check_values(bk, fname, theta, fvals)
    return fvals


def f_prime(xp, f, fprime, theta):
    """``f'`` on the Ritz values: the named derivative, or forward-mode AD of a callable (JAX)."""
    if fprime is not None:
        return fprime(theta)
    import jax

    return jax.jvp(f, (theta,), (xp.ones_like(theta),))[1]


class Rules(NamedTuple):
    """Per-probe Gauss rules of one Lanczos run: ``s`` nodes (the estimate), its leading ``s // 2``
    and ``s // 4`` (``quarter``; the convergence rate of the quadrature-error estimate).

    Returned as the "values" of :meth:`Backend.with_adjoint`: indexing with anything but an
    integer indexes ``s``, so a gradient rule that scales rows by the cotangent of the values
    (``ct[:, None] * U``) uses the ``s``-node rule's cotangent; the half rule is a diagnostic
    and carries no gradient.
    """

    s: Any
    half: Any
    quarter: Any
    peak: Any = None  # per probe, the largest f at a Ritz value (a lower bound of max f on the spectrum)

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return tuple.__getitem__(self, idx)
        return self.s[idx]


def gauss_rule(xp, spec, bk, alpha, beta, norms):
    """``||z||^2 e1^T f(T) e1`` per probe, with the Ritz data ``(theta, vecs, first)``."""
    theta, vecs = ritz(xp, alpha, beta, norms)
    fvals = apply_f(bk, spec, theta)
    first = vecs[:, 0, :]
    return norms**2 * xp.sum(first * first * fvals, axis=1), (theta, vecs, first)


def half_rule(bk, spec, alpha, beta, norms, divisor=2):
    """The Gauss rule of the leading ``s // divisor`` block of the same tridiagonals (``nan`` when it is empty)."""
    xp = bk.xp
    h = alpha.shape[1] // divisor
    if h == 0:
        return xp.full(norms.shape, xp.nan, dtype=alpha.dtype)
    return gauss_rule(xp, spec, bk, alpha[:, :h], beta[:, :h], norms)[0]


def slq_forward(bk, spec, num_steps, reorthogonalize):
    """``forward(matmat, Z, adjoint) -> (Rules, U)`` for :meth:`Backend.with_adjoint`.

    ``values_i = ||z_i||^2 e1^T f(T_i) e1`` (and the same rule on the leading half of
    ``T_i``, for the quadrature-error estimate); with ``adjoint``,
    ``u_i = ||z_i|| V_i f'(T_i) e1`` (an approximation of ``f'(A) z_i`` from the same
    Krylov space), else ``U = None``.
    """
    xp = bk.xp
    _, f, fprime, _ = spec

    def forward(matmat, Z, adjoint):
        alpha, beta, basis, norms = bk.lanczos(
            matmat, Z, num_steps, reorthogonalize=reorthogonalize, keep_basis=adjoint
        )
        # a NaN or inf from the operator reaches the coefficients: refuse it as the other estimators do,
        # before the Ritz values (an eigensolver failure, or a complaint about f) hide the cause
        bk.check_finite("op", alpha)
        bk.check_finite("op", beta)
        values, (theta, vecs, first) = gauss_rule(xp, spec, bk, alpha, beta, norms)
        peak = xp.max(apply_f(bk, spec, theta), axis=1)
        half, quarter = half_rule(bk, spec, alpha, beta, norms), half_rule(bk, spec, alpha, beta, norms, 4)
        rules = Rules(values, half, quarter, peak)
        if not adjoint:
            return rules, None
        coef = xp.einsum("kij,kj->ki", vecs, first * f_prime(xp, f, fprime, theta))
        return rules, norms[:, None] * xp.einsum("ks,ksn->kn", coef, basis)

    return forward
