"""Batched Lanczos tridiagonalisation, the kernel behind stochastic Lanczos quadrature.

``k`` independent Lanczos runs (one per starting row of ``Z``) advance together, so
each step is one ``(k, n)`` block product with the operator. The step arithmetic is
shared (:func:`lanczos_step`, written against an array namespace ``xp``, on probe
rows); the loop driver is the backend's: :func:`lanczos_jax` runs under
``lax.fori_loop`` (jit- and vmap-able, one compiled step; the same arithmetic on
entry-major columns, XLA's fast product layout), :func:`lanczos_numpy` is a plain
Python loop over NumPy arrays (the numba backend's block products are its parallel
kernels).

Breakdown: when a run's new residual norm ``beta_j`` falls below
``100 * sqrt(n) * eps * (|alpha_j| + beta_{j-1} + beta_j)`` its Krylov subspace is invariant (exact
in exact arithmetic); ``beta_j`` is set to 0 and the run stays at zero from then on
(its later ``alpha``/``beta`` are 0). The caller pads those entries (see
:func:`sketchtrace.estimators` SLQ), so the quadrature of a broken-down run is exact.
"""

from __future__ import annotations

import numpy as np


def start_rows(xp, Z):
    """Unit starting rows and the probe norms; a zero probe gives a zero row (norm 0)."""
    norms = xp.sqrt(xp.sum(Z * Z, axis=1))
    safe = xp.where(norms > 0, norms, 1.0)
    return Z / safe[:, None], norms


def breakdown_tol(dtype, n: int) -> float:
    """Relative size of a new Lanczos residual below which its Krylov space counts as invariant.

    ``100 sqrt(n) eps``: rounding leaves a residual of a few ``sqrt(n) eps ||A||`` after an exact
    breakdown, while a genuine direction this weakly coupled changes the quadrature by
    ``O(tol^2)`` only (``6e-5`` relative in float32 at ``n = 400,000``).
    """
    return 100.0 * float(np.sqrt(n)) * float(np.finfo(dtype).eps)


def lanczos_step(xp, W, q, q_prev, beta_prev, basis, tol):
    """One Lanczos step on all runs: ``(alpha, beta, q_next)`` from ``W = A q``.

    ``basis`` (``(k, s, n)``, zero rows where not yet filled) or ``None``: with a basis
    the new direction, after the three-term recurrence, is orthogonalised against every
    stored vector in one blocked classical Gram-Schmidt pass (one product with the basis
    for the coefficients, one for the correction). The three-term recurrence is the first
    Gram-Schmidt pass restricted to ``q`` and ``q_prev``, which carry all but rounding-sized
    components, so the full pass is the "second" one of "twice is enough": it removes the
    lost orthogonality, and a third pass would change ``O(eps)`` components only.
    """
    alpha = xp.sum(q * W, axis=1)
    W = W - alpha[:, None] * q - beta_prev[:, None] * q_prev
    if basis is not None:
        W = W - xp.einsum("ks,ksn->kn", xp.einsum("ksn,kn->ks", basis, W), basis)
    beta = xp.sqrt(xp.sum(W * W, axis=1))
    alive = beta > tol * (xp.abs(alpha) + beta_prev + beta)
    beta = xp.where(alive, beta, 0.0)
    q_next = W / xp.where(alive, beta, 1.0)[:, None] * alive[:, None]
    return alpha, beta, q_next


def lanczos_numpy(matmat, Z, num_steps, *, reorthogonalize=False, keep_basis=False):
    """Lanczos on NumPy arrays: ``(alpha, beta, basis, norms)``.

    ``alpha``, ``beta``: ``(k, num_steps)``; ``basis``: ``(k, num_steps, n)`` (the
    Lanczos vectors) when ``reorthogonalize`` or ``keep_basis``, else ``None``;
    ``norms``: ``(k,)`` norms of the starting rows ``Z``. ``num_steps`` products.
    """
    k, n = Z.shape
    q, norms = start_rows(np, Z)
    q_prev = np.zeros_like(q)
    beta_prev = np.zeros(k, Z.dtype)
    store = reorthogonalize or keep_basis
    basis = np.zeros((k, num_steps, n), Z.dtype) if store else None
    alpha, beta = np.zeros((k, num_steps), Z.dtype), np.zeros((k, num_steps), Z.dtype)
    tol = breakdown_tol(Z.dtype, n)
    for j in range(num_steps):
        if store:
            basis[:, j] = q
        W = np.asarray(matmat(q), dtype=Z.dtype)
        a, b, q_next = lanczos_step(np, W, q, q_prev, beta_prev, basis if reorthogonalize else None, tol)
        alpha[:, j], beta[:, j] = a, b
        q_prev, q, beta_prev = q, q_next, b
    return alpha, beta, basis, norms


def lanczos_jax(matmat, Z, num_steps, *, reorthogonalize=False, keep_basis=False):
    """Lanczos under ``jax.lax.fori_loop``; same outputs as :func:`lanczos_numpy`.

    The loop carries the vectors entry-major, ``(n, k)`` columns, and hands ``matmat`` the
    transposed view: XLA folds the transposes into the product, which then runs as
    ``A @ Q`` on a column block, the layout XLA:CPU multiplies fastest (1.4x the row layout
    for a dense ``2000 x 2000`` operator and 10 probes, measured). The basis stays
    probe-major, ``(k, s, n)``: its two products are batched over probes (batch axis first),
    and only the small ``(n, k)`` block is transposed for them.
    """
    import jax
    import jax.numpy as jnp

    k, n = Z.shape
    q, norms = start_rows(jnp, Z)
    store = reorthogonalize or keep_basis
    tol = breakdown_tol(Z.dtype, n)
    zeros = jnp.zeros((num_steps, k), Z.dtype)
    basis = jnp.zeros((k, num_steps, n), Z.dtype) if store else None

    def body(j, carry):
        q, q_prev, beta_prev, alpha, beta, basis = carry
        if store:
            basis = jax.lax.dynamic_update_slice_in_dim(basis, q.T[:, None, :], j, axis=1)
        W = matmat(q.T).T.astype(Z.dtype)
        a = jnp.sum(q * W, axis=0)
        W = W - a * q - beta_prev * q_prev
        if reorthogonalize:  # one blocked Gram-Schmidt pass (see lanczos_step)
            W = W - jnp.einsum("ks,ksn->kn", jnp.einsum("ksn,kn->ks", basis, W.T), basis).T
        b = jnp.sqrt(jnp.sum(W * W, axis=0))
        alive = b > tol * (jnp.abs(a) + beta_prev + b)
        b = jnp.where(alive, b, 0.0)
        q_next = W / jnp.where(alive, b, 1.0) * alive
        alpha = jax.lax.dynamic_update_slice_in_dim(alpha, a[None], j, axis=0)
        beta = jax.lax.dynamic_update_slice_in_dim(beta, b[None], j, axis=0)
        return q_next, q, b, alpha, beta, basis

    init = (q.T, jnp.zeros((n, k), Z.dtype), jnp.zeros((k,), Z.dtype), zeros, zeros, basis)
    _, _, _, alpha, beta, basis = jax.lax.fori_loop(0, num_steps, body, init)
    return alpha.T, beta.T, basis, norms
