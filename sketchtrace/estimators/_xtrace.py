"""XTrace, XNysTrace and XDiag: exchangeable (leave-one-out) randomized estimators.

Each test vector ``omega_i`` is used twice: as part of a low-rank sketch built
from the OTHER test vectors, and as a Hutchinson probe of what that sketch
misses. Averaging the ``m`` leave-one-out estimates gives the estimator, their
spread gives the standard error. All downdating is done on ``k x k`` matrices
(``k`` = number of test vectors), so the overhead beyond the matvecs is
``O(n k^2 + k^3)``.

Written once against the backend interface (``bk.probes``, ``bk.matmat``);
JAX: jit-able and vmap-able over keys.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._estimate import Estimate
from ..validation import check_choice
from ._common import check_minimum, exact_estimate, resolve_sampler, setup, sketch_options, use_exact
from ._compiled import eager_compiled

# test-vector name -> (sampler, re-sphering correction)
TEST_VECTORS = {
    "improved": ("sphere", True),
    "sphere": ("sphere", False),
    "signs": ("rademacher", False),
    "rademacher": ("rademacher", False),
    "gaussian": ("gaussian", False),
}


def resolve_test_vectors(sampler, *, name="sampler"):
    """``(probe sampler, re-sphering correction)`` for an XTrace-type ``sampler=`` value.

    A callable sampler is used as it is (no correction).
    """
    if callable(sampler):
        return sampler, False
    check_choice(sampler, TEST_VECTORS, name=name)
    return TEST_VECTORS[sampler]


def _eye(xp, k, dtype):
    return xp.eye(k, dtype=dtype)


def _guarded_inv_t(xp, R):
    """``R^{-T}`` for upper-triangular ``R``, with (near-)zero pivots lifted to
    ``eps * max|R_jj|``; the columns are only used after normalisation, for which
    a backward-stable solve is accurate even when ``R`` is numerically singular."""
    d = xp.diagonal(R)
    a = xp.abs(d)
    eps = xp.finfo(R.dtype).eps
    big = xp.max(a)
    floor = xp.where(big > 0, eps * big, xp.ones((), R.dtype))
    sign = xp.astype(xp.where(d < 0, -1.0, 1.0), R.dtype)
    newd = xp.where(a < floor, sign * floor, d)
    Rg = R + xp.diag(newd - d)
    return xp.linalg.solve(Rg.T, _eye(xp, R.shape[0], R.dtype))


def _normalize_cols(xp, M):
    nrm = xp.sqrt(xp.sum(M * M, axis=0))
    return M / xp.where(nrm > 0, nrm, 1.0)


# ----------------------------------------------------------------------------- sketch state


def _getitem(self, i):
    """``state["Om"]``: the old dict spelling of a field (kept for one release); ints and slices index the tuple."""
    return getattr(self, i) if isinstance(i, str) else tuple.__getitem__(self, i)


class XSketch(NamedTuple):
    """XTrace/XDiag sketch state (a pytree): columns ``(n, k)`` unless stated.

    ``Om`` test vectors, ``Y = A Om``, ``Q R = Y`` (thin QR, ``R`` is ``(k, k)``),
    ``Z = A Q`` (XDiag: ``A^T Q``).
    """

    Om: Any
    Y: Any
    Q: Any
    R: Any
    Z: Any

    __getitem__ = _getitem


class NysSketch(NamedTuple):
    """XNysTrace/Nystrom sketch state (a pytree): test vectors ``Om`` and ``Y = A Om``, both ``(n, k)``."""

    Om: Any
    Y: Any

    __getitem__ = _getitem


def xsketch(bk, op, Om, chunk_size, prev=None):
    """Sketch state for test vectors ``Om`` (rows), optionally extending ``prev``.

    Returns an :class:`XSketch` with ``Om`` and ``Y = A Om`` (columns, ``(n, k)``), the QR
    factors ``Q, R`` of ``Y`` and ``Z = A Q``. Extending re-uses the previous
    products: ``Q`` grows by block Gram-Schmidt (two passes), so only the new
    test vectors and the new basis columns are multiplied by ``A``. Cost:
    ``2 k_new`` matvecs.
    """
    xp = bk.xp
    Ynew = bk.matmat(op, Om, chunk_size).T
    bk.check_finite("op", Ynew)
    if prev is None:
        Q, R = xp.linalg.qr(Ynew)
        Z = bk.matmat(op, Q.T, chunk_size).T
        return XSketch(Om.T, Ynew, Q, R, Z)
    Q0, R0 = prev.Q, prev.R
    C1 = Q0.T @ Ynew
    Wn = Ynew - Q0 @ C1
    C2 = Q0.T @ Wn
    Wn = Wn - Q0 @ C2
    Q2, R2 = xp.linalg.qr(Wn)
    k0, k2 = R0.shape[0], R2.shape[0]
    top = xp.concatenate([R0, C1 + C2], axis=1)
    bot = xp.concatenate([xp.zeros((k2, k0), R0.dtype), R2], axis=1)
    Z2 = bk.matmat(op, Q2.T, chunk_size).T
    return XSketch(
        Om=xp.concatenate([prev.Om, Om.T], axis=1),
        Y=xp.concatenate([prev.Y, Ynew], axis=1),
        Q=xp.concatenate([Q0, Q2], axis=1),
        R=xp.concatenate([top, bot], axis=0),
        Z=xp.concatenate([prev.Z, Z2], axis=1),
    )


def xtrace_samples(xp, st, n, improved):
    """The ``k`` leave-one-out XTrace estimates ``t_i`` from a sketch state.

    With ``Y = QR``, the basis of ``A Om_{-i}`` is ``Q (I - s_i s_i^T)`` where
    ``s_i`` is the normalised ``i``-th column of ``R^{-T}``. Then
    ``t_i = tr(Q^T A Q) - s_i^T (Q^T A Q) s_i + u_i^T A u_i`` with
    ``u_i = (I - Pi_i) omega_i = omega_i - Q W_i + c_i Q s_i``, ``W = Q^T Om``,
    ``c_i = s_i^T W_i``, and ``A u_i = Y_i - Z W_i + c_i Z s_i``. The improved
    (re-sphered) variant rescales the last term by ``(n - k + 1) / ||u_i||^2``:
    ``u_i`` is then a uniform vector of radius ``sqrt(n - k + 1)`` on the
    complement of the leave-one-out range.
    """
    return _xtrace_parts(xp, st, n, improved)[0]


def _xtrace_parts(xp, st, n, improved):
    Om, Y, Q, R, Z = st
    k = Om.shape[1]
    H = Q.T @ Z
    W = Q.T @ Om
    S = _normalize_cols(xp, _guarded_inv_t(xp, R))
    c = xp.sum(S * W, axis=0)
    Sc = S * c
    U = Om - Q @ W + Q @ Sc
    AU = Y - Z @ W + Z @ Sc
    quad = xp.sum(U * AU, axis=0)
    if improved:
        unorm2 = xp.sum(U * U, axis=0)
        quad = quad * ((n - k + 1) / xp.where(unorm2 > 0, unorm2, 1.0))
    hss = xp.sum(S * (H @ S), axis=0)
    return xp.trace(H) - hss + quad, (Om, Y, R, Z, H, W, S)


def _diag(xp, M):
    return xp.diagonal(M)[:, None]


def xtrace_loo(xp, st, n, improved):
    """``(t, D)``: the leave-one-out estimates ``t_i`` and ``D_ij = t_i - t_i^(-j)``, the change
    in ``t_i`` when ``omega_j`` is also left out of its sketch (``D_ii = 0``).

    ``t_i^(-j)`` uses the basis of ``A Om_{-ij}``: in ``Q`` coordinates the orthogonal
    complement of ``span(s_i, s_j)``, a rank-two downdate, so every pair costs ``O(1)``
    after ``O(k^3)`` work on ``k x k`` products. With ``a = W_i - P2 W_i`` (``P2`` the
    projector onto ``span(s_i, s_j)``), ``u = omega_i - Q a`` and
    ``u^T A u = (Om^T Y)_ii - (Om^T Z)_i a - a^T R_i + a^T H a``; the improved variant
    re-spheres on the complement of dimension ``n - k + 2``. See :func:`x_mean_sem`.
    """
    t, (Om, Y, R, Z, H, W, S) = _xtrace_parts(xp, st, n, improved)
    k = Om.shape[1]
    G = S.T @ S
    off = 1.0 - _eye(xp, k, G.dtype)
    gam = G * off  # s_i . s_j, zero on the diagonal (no pair)
    den = 1.0 - gam * gam
    F = S.T @ (H @ S)
    V = S.T @ W  # V[l, i] = s_l . W_i
    vi, vj = _diag(xp, V), V.T
    al, be = (vi - gam * vj) / den, (vj - gam * vi) / den
    BS = (Om.T @ Z) @ S
    E = S.T @ R
    SHW, WHS = S.T @ (H @ W), (W.T @ H) @ S
    tr2 = (_diag(xp, F) + xp.diagonal(F)[None, :] - gam * (F + F.T)) / den
    Ba = _diag(xp, (Om.T @ Z) @ W) - al * _diag(xp, BS) - be * BS
    aR = _diag(xp, W.T @ R) - al * _diag(xp, E) - be * E.T
    aHa = (
        _diag(xp, W.T @ (H @ W))
        - al * (_diag(xp, SHW) + _diag(xp, WHS))
        - be * (SHW.T + WHS)
        + al * al * _diag(xp, F)
        + al * be * (F + F.T)
        + be * be * xp.diagonal(F)[None, :]
    )
    quad = _diag(xp, Om.T @ Y) - Ba - aR + aHa
    if improved:
        u2 = xp.sum(Om * Om, axis=0)[:, None] - xp.sum(W * W, axis=0)[:, None] + al * vi + be * vj
        quad = quad * ((n - k + 2) / xp.where(u2 > 0, u2, 1.0))
    t2 = xp.trace(H) - tr2 + quad
    return t, (t[:, None] - t2) * off


def x_mean_sem(xp, t, D):
    """Mean of the exchangeable estimates ``t_i`` and an unbiased estimate of its variance.

    Each ``t_i`` is unbiased given the other test vectors (``E[t_i | Om_{-i}] = tr A``), so,
    with ``t_i^(-j)`` the estimate of ``t_i`` from a sketch without ``omega_j``,
    ``Cov(t_i, t_j) = E[(t_i - tr)(t_j - t_j^(-i))] = E[D_ij D_ji]`` (``t_j^(-i)`` is a function
    of ``Om_{-i}``; ``E[D_ji | omega_i, Om_{-ij}] = 0``). For an exchangeable sample
    ``E[s^2] = Var(t) - Cov`` and ``Var(mean) = (Var(t) + (k - 1) Cov) / k``, hence

    ``Var(mean) = E[s^2 / k + C]`` with ``C = sum_{i != j} D_ij D_ji / (k (k - 1))``.

    The leave-one-out ``s / sqrt(k)`` alone (the paper's error estimate) misses ``C``, the
    positive correlation through the shared sketch. ``C`` is floored at 0, so the sem is never below
    the leave-one-out spread: a negative ``C`` was mostly its own noise in our measurements (flooring at
    ``-s^2 / (2k)`` instead cost 3-6 points of coverage on fast-decaying spectra). A rounding
    term ``k eps mean|t_i|`` is added in quadrature: when the sketch captures ``A`` to working
    precision the statistical spread vanishes and rounding is the error left.
    """
    k = t.shape[0]
    s2 = xp.var(t, correction=1)
    C = xp.sum(D * D.T) / (k * (k - 1))
    var = s2 / k + xp.maximum(C, 0.0)
    rnd = k * xp.finfo(t.dtype).eps * xp.mean(xp.abs(t))
    return xp.mean(t), xp.sqrt(xp.maximum(var, 0.0) + rnd * rnd)


@sketch_options
@eager_compiled
def xtrace(
    key,
    op,
    *,
    num_matvecs,
    sampler=None,
    chunk_size=None,
    backend=None,
    mesh=None,
    allow_exact=True,
    test_vectors=None,
    options=None,
):
    """XTrace estimate of ``tr(op)`` with a leave-one-out standard error.

    Uses ``k = num_matvecs // 2`` test vectors ``omega_i`` and spends ``2k``
    matvecs (``A Omega``, then ``A Q`` for an orthonormal basis ``Q`` of
    ``A Omega``; an odd budget leaves one matvec unspent and ``num_matvecs`` of
    the result says so). For each ``i``, ``Q_(i)`` spans ``A Omega_{-i}`` and

    ``t_i = tr(Q_(i)^T A Q_(i)) + omega_i^T (I - P_(i)) A (I - P_(i)) omega_i``;

    the estimate is the mean of the ``t_i``. Unbiased for any square ``A``; exact
    when ``rank(A) <= k - 1`` and when ``num_matvecs >= n``.

    Standard error: ``sem^2 = s^2 / k + C``, an unbiased estimate of the variance
    (see :func:`sketchtrace.estimators._xtrace.x_mean_sem`): ``s^2 / k`` is the
    leave-one-out spread (the paper's error estimate), which alone under-covers
    (the ``t_i`` share their sketch and are positively correlated: 17-88 % coverage
    of the nominal 95 % interval measured), and ``C`` estimates their covariance
    from leave-two-out downdates on ``k x k`` matrices (no extra matvecs).
    ``dof = k - 1``; docs/estimators.md has the measured coverage.

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
    op : operator
        Square operator (symmetry not required).
    num_matvecs : int
        Budget (static, >= 4: two test vectors are the least leave-one-out can use).
    sampler : {"improved", "sphere", "rademacher", "gaussian"} or callable
        Test-vector distribution. ``"improved"`` (default): uniform on the sphere of
        radius ``sqrt(n)`` with the re-sphering correction of Epperly's thesis;
        ``"rademacher"`` (alias ``"signs"``): random signs. (``test_vectors=`` is the
        deprecated old name of this argument.)
    chunk_size : int, optional
    backend : {"jax", "numba"}, optional
    mesh : jax.sharding.Mesh, optional
        Shard the test-vector (sketch) rows across the mesh's devices; the small dense
        algebra runs replicated (see :func:`sketchtrace.make_mesh`).
    allow_exact : bool
        ``True`` (default): a budget that reaches the dimension computes the exact
        trace from the standard basis. ``False``: such a budget is refused.
    options : SketchOptions, optional
        ``sampler``, ``chunk_size``, ``backend``, ``mesh``, ``allow_exact`` as one object
        (instead of the keywords; see :class:`SketchOptions`).

    Returns
    -------
    Estimate

    References
    ----------
    E. N. Epperly, J. A. Tropp, R. J. Webber, "XTrace: Making the most of every
    sample in stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45(1), 2024.
    doi:10.1137/23M1548323, arXiv:2301.07825
    E. N. Epperly, "Make the most of what you have: Resource-efficient randomized
    algorithms for matrix computations", PhD thesis, Caltech, 2025 (improved test vectors).
    """
    arg = "sampler" if test_vectors is None else "test_vectors"
    sampler = resolve_sampler(sampler, test_vectors, default="improved", name="xtrace")
    sampler, improved = resolve_test_vectors(sampler, name=arg)
    bk, op, n, m, chunk_size = setup(key, op, num_matvecs, chunk_size, backend, mesh, method="xtrace")
    if use_exact(m, n, allow_exact, "xtrace", can_oversample=False):
        return exact_estimate(bk, op, chunk_size, n)
    check_minimum(m, 4, "xtrace", "two test vectors, each applied with its basis vector")
    k = m // 2
    Om = bk.probes(key, k, n, bk.probe_dtype(op), sampler)
    st = xsketch(bk, op, Om, chunk_size)
    t, D = xtrace_loo(bk.xp, st, n, improved)
    bk.check_finite("op", t)
    value, sem = x_mean_sem(bk.xp, t, D)
    return Estimate(value, sem, 2 * k, dof=k - 1)


# ----------------------------------------------------------------------------- XNysTrace


def nys_state(bk, op, Om, chunk_size, prev=None):
    """:class:`NysSketch` ``(Om, Y)``, both ``(n, k)``, with ``Y = A Om``; extending re-uses ``prev``."""
    xp = bk.xp
    Ynew = bk.matmat(op, Om, chunk_size).T
    bk.check_finite("op", Ynew)
    if prev is None:
        return NysSketch(Om.T, Ynew)
    return NysSketch(xp.concatenate([prev.Om, Om.T], axis=1), xp.concatenate([prev.Y, Ynew], axis=1))


def psd_violation(xp, Om, Y):
    """Relative asymmetry and most negative relative eigenvalue of ``Om^T A Om``."""
    H = Om.T @ Y
    scale = xp.max(xp.abs(H))
    scale = xp.where(scale > 0, scale, 1.0)
    asym = xp.max(xp.abs(H - H.T)) / scale
    lam = xp.linalg.eigvalsh(0.5 * (H + H.T))
    return asym, lam[0] / xp.max(xp.abs(lam))


def _check_psd(bk, Om, Y, psd_rtol):
    import numpy as np

    if not (bk.is_concrete(Om) and bk.is_concrete(Y)):
        raise TypeError(
            "xnystrace(check_psd=True) inspects values and must run eagerly (outside jax.jit/vmap); "
            "call it once eagerly to validate the operator, then use check_psd=False under jit"
        )
    asym, neg = (float(np.asarray(v)) for v in psd_violation(bk.xp, Om, Y))
    if asym > psd_rtol:
        raise ValueError(
            f"op does not look symmetric: Omega^T A Omega is asymmetric by {asym:.3g} (relative; "
            f"tolerance psd_rtol={psd_rtol:.3g}); xnystrace needs a symmetric positive semidefinite "
            "operator, use xtrace instead"
        )
    if neg < -psd_rtol:
        raise ValueError(
            f"op is not positive semidefinite: Omega^T A Omega has an eigenvalue {neg:.3g} times its "
            f"largest (tolerance psd_rtol={psd_rtol:.3g}); xnystrace needs a PSD operator, use xtrace"
        )


def _cholesky_or_nan(xp, H):
    """Lower Cholesky factor, or NaNs where it fails (JAX returns NaN; NumPy raises ``LinAlgError``).

    A namespace whose Cholesky raises its own error provides ``cholesky_or_nan`` (the torch
    backend's: ``torch.linalg.cholesky_ex``, no exception and no host synchronisation).
    """
    import numpy as np

    own = getattr(xp, "cholesky_or_nan", None)
    if own is not None:
        return own(H)
    try:
        return xp.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return xp.full(H.shape, float("nan"), H.dtype)


def xnystrace_samples(xp, st, n, improved):
    """The ``k`` leave-one-out XNysTrace estimates from ``Om`` and ``Y = A Om``.

    A small shift ``nu = eps ||Y||_F / sqrt(n)`` (``Y_nu = Y + nu Om``, the
    Nystrom approximation of ``A + nu I``; ``nu n`` is subtracted at the end)
    keeps the core matrix ``H = Om^T Y_nu = L L^T`` positive definite. With
    ``Y_nu = QR``, the Nystrom approximation ``Ahat = Y_nu H^{-1} Y_nu^T`` has
    ``tr(Ahat) = ||R L^{-T}||_F^2``, and dropping column ``i`` is the rank-one downdate
    ``Ahat_(i) = Ahat - (Y_nu H^{-1} e_i)(Y_nu H^{-1} e_i)^T / (H^{-1})_ii``, while
    ``omega_i^T (A_nu - Ahat_(i)) omega_i = 1 / (H^{-1})_ii``. Hence
    ``t_i = ||R L^{-T}||_F^2 - ||R H^{-1} e_i||^2 / (H^{-1})_ii + scale_i / (H^{-1})_ii - nu n``
    with ``scale_i = (n - k + 1) ((Om^T Om)^{-1})_ii`` for the improved vectors
    (re-sphering on the complement of ``range(Om_{-i})``, where the residual lives).
    If the Cholesky factorisation fails numerically (rank-deficient ``A`` and a
    tiny shift), an eigendecomposition of ``H`` with eigenvalues floored at
    ``k eps lambda_max`` is used instead (``H^{-1} = F F^T``).
    """
    return _xnystrace_parts(xp, st, n, improved, pairs=False)[0]


def _xnystrace_parts(xp, st, n, improved, *, pairs):
    Om, Y = st.Om, st.Y
    k = Om.shape[1]
    dt = Y.dtype
    eps = xp.finfo(dt).eps
    nu = eps * xp.sqrt(xp.sum(Y * Y)) / math.sqrt(n)
    Ynu = Y + nu * Om
    H = Om.T @ Ynu
    H = 0.5 * (H + H.T)
    _, R = xp.linalg.qr(Ynu)
    I = _eye(xp, k, dt)

    def from_factor(Lt, Linv):
        # H^{-1} = Linv^T Linv with Lt = L^T (Cholesky) or the eigen square root
        G = xp.linalg.solve(Lt.T, R.T).T if Lt is not None else R @ Linv.T
        X = G @ Linv  # R H^{-1}
        return xp.sum(G * G), X, Linv.T @ Linv

    L = _cholesky_or_nan(xp, H)
    ok = xp.all(xp.isfinite(L))
    L = xp.where(ok, L, I)
    tr_c, X_c, K_c = from_factor(L.T, xp.linalg.solve(L, I))
    lam, V = xp.linalg.eigh(H)
    lmax = xp.max(xp.abs(lam))
    floor = xp.where(lmax > 0, k * eps * lmax, xp.ones((), dt))
    lam = xp.maximum(lam, floor)
    tr_e, X_e, K_e = from_factor(None, (V / xp.sqrt(lam)).T)
    tr_hat = xp.where(ok, tr_c, tr_e)
    X = xp.where(ok, X_c, X_e)
    K = xp.where(ok, K_c, K_e)  # H^{-1}
    d = xp.diagonal(K)
    Ginv = xp.linalg.solve(Om.T @ Om, I) if improved else None
    scale = (n - k + 1) * xp.diagonal(Ginv) if improved else 1.0
    t = tr_hat - xp.sum(X * X, axis=0) / d + scale / d - nu * n
    # A Omega = 0 (nu = 0, H = 0): the Nystrom approximation is exact (zero) and so is the trace; a NaN
    # nu (a NaN or inf from the operator) keeps the NaN estimate (``nu > 0`` would turn it into 0)
    t = xp.where(nu == 0, xp.zeros_like(t), t)
    if not pairs:
        return t, None
    # leave omega_j out as well: H_{-j}^{-1} = K - K e_j e_j^T K / K_jj (row and column j vanish)
    P = X.T @ X  # H^{-1} Y_nu^T Y_nu H^{-1}
    Kjj, Pjj, Kii, Pii = d[None, :], xp.diagonal(P)[None, :], d[:, None], xp.diagonal(P)[:, None]
    dij = Kii - K * K / Kjj
    off = 1.0 - I
    dij = xp.where(off > 0, dij, xp.ones_like(dij))
    pij = Pii - 2.0 * K * P / Kjj + K * K * Pjj / (Kjj * Kjj)
    if improved:
        g = xp.diagonal(Ginv)
        scale2 = (n - k + 2) * (g[:, None] - Ginv * Ginv / g[None, :])
    else:
        scale2 = 1.0
    t2 = tr_hat - Pjj / Kjj - pij / dij + scale2 / dij - nu * n
    return t, xp.where(nu == 0, xp.zeros_like(t2), (t[:, None] - t2) * off)


def xnystrace_loo(xp, st, n, improved):
    """``(t, D)`` for XNysTrace: the leave-one-out estimates and ``D_ij = t_i - t_i^(-j)``
    (``omega_j`` also left out of the Nystrom approximation; ``D_ii = 0``), from the
    downdate ``H_{-j}^{-1} = H^{-1} - H^{-1} e_j e_j^T H^{-1} / (H^{-1})_jj`` of the core
    matrix's inverse. See :func:`x_mean_sem`."""
    return _xnystrace_parts(xp, st, n, improved, pairs=True)


@sketch_options
@eager_compiled
def xnystrace(
    key,
    op,
    *,
    num_matvecs,
    sampler=None,
    check_psd=False,
    psd_rtol=None,
    chunk_size=None,
    backend=None,
    mesh=None,
    allow_exact=True,
    test_vectors=None,
    options=None,
):
    """XNysTrace estimate of ``tr(op)`` for symmetric positive semidefinite ``op``.

    All ``k = num_matvecs`` test vectors are used in one pass (``Y = A Omega``,
    no second round of products). For each ``i`` the Nystrom approximation built
    from the other test vectors, ``Ahat_(i) = Y_{-i} (Omega_{-i}^T Y_{-i})^+ Y_{-i}^T``,
    gives ``t_i = tr(Ahat_(i)) + omega_i^T (A - Ahat_(i)) omega_i``; the estimate
    is their mean, with the standard error of :func:`xtrace` (leave-one-out
    spread plus the estimated covariance, ``dof = k - 1``). Unbiased for PSD
    ``A``, exact when ``rank(A) <= k - 1`` (up to a shift of order
    ``eps ||A||_F sqrt(n)``) and when ``num_matvecs >= n``.

    **The operator must be PSD** (covariances, Gram operators ``J^T J`` / ``J J^T``,
    NTK blocks). For an indefinite operator the estimate is meaningless (and not
    flagged by default). ``check_psd=True`` is a debug mode: it inspects the core
    matrix ``Omega^T A Omega`` eagerly and raises ``ValueError`` when it is
    asymmetric or has an eigenvalue below ``-psd_rtol`` times the largest
    (default ``psd_rtol = sqrt(eps)``); it sees only what the test vectors see.

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
    op : operator
        Square, symmetric positive semidefinite.
    num_matvecs : int
        Budget = number of test vectors (static, >= 2).
    sampler : {"improved", "sphere", "rademacher", "gaussian"} or callable
        Test-vector distribution (as for :func:`xtrace`; ``test_vectors=`` is the
        deprecated old name).
    check_psd : bool
        Debug check (eager only; raises ``TypeError`` under ``jax.jit``).
    psd_rtol : float, optional
    chunk_size : int, optional
    backend : {"jax", "numba"}, optional
    mesh : jax.sharding.Mesh, optional
        Shard the test-vector (sketch) rows across the mesh's devices; the small dense
        algebra runs replicated (see :func:`sketchtrace.make_mesh`).
    allow_exact : bool
        As for :func:`xtrace`.
    options : SketchOptions, optional
        As for :func:`xtrace`.

    Returns
    -------
    Estimate

    References
    ----------
    E. N. Epperly, J. A. Tropp, R. J. Webber, "XTrace: Making the most of every
    sample in stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45(1), 2024.
    doi:10.1137/23M1548323, arXiv:2301.07825
    J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Fixed-rank approximation of a
    positive-semidefinite matrix from streaming data", NeurIPS 2017, arXiv:1706.05736
    (the shifted Nystrom approximation).
    """
    arg = "sampler" if test_vectors is None else "test_vectors"
    sampler = resolve_sampler(sampler, test_vectors, default="improved", name="xnystrace")
    sampler, improved = resolve_test_vectors(sampler, name=arg)
    bk, op, n, m, chunk_size = setup(key, op, num_matvecs, chunk_size, backend, mesh, method="xnystrace")
    if op.psd is False:
        raise ValueError("xnystrace needs a positive semidefinite operator and op is declared psd=False; use xtrace")
    if use_exact(m, n, allow_exact, "xnystrace", can_oversample=False):
        return exact_estimate(bk, op, chunk_size, n)
    check_minimum(m, 2, "xnystrace", "two test vectors for the leave-one-out")
    Om = bk.probes(key, m, n, bk.probe_dtype(op), sampler)
    st = nys_state(bk, op, Om, chunk_size)
    if check_psd:
        _check_psd(bk, st.Om, st.Y, default_psd_rtol(bk, st.Y.dtype, psd_rtol))
    t, D = xnystrace_loo(bk.xp, st, n, improved)
    bk.check_finite("op", t)
    value, sem = x_mean_sem(bk.xp, t, D)
    return Estimate(value, sem, m, dof=m - 1)


def default_psd_rtol(bk, dtype, psd_rtol):
    if psd_rtol is not None:
        if not psd_rtol > 0:
            raise ValueError(f"psd_rtol must be > 0; got {psd_rtol!r}")
        return float(psd_rtol)
    return math.sqrt(float(bk.xp.finfo(dtype).eps))


# ----------------------------------------------------------------------------- XDiag


def xdiag_samples(xp, st):
    """``(k, n)`` leave-one-out diagonal estimates (symmetric ``A``).

    ``d_i = diag(P_(i) A) + omega_i * ((I - P_(i)) A omega_i)`` with
    ``P_(i) = Q (I - s_i s_i^T) Q^T``: ``diag(P_(i) A) = diag(Q Z^T) - (Q s_i) * (Z s_i)``
    (``Q^T A = Z^T`` by symmetry) and
    ``(I - P_(i)) Y_i = Y_i - Q R_i + (s_i^T R_i) Q s_i``. Each ``d_i`` is unbiased.
    """
    Om, Y, Q, R, Z = st if isinstance(st, tuple) else XSketch(**st)  # an XSketch, or a dict of its fields
    S = _normalize_cols(xp, _guarded_inv_t(xp, R))
    QS, ZS = Q @ S, Z @ S
    base = xp.sum(Q * Z, axis=1)  # diag(Q Z^T)
    cR = xp.sum(S * R, axis=0)  # s_i^T R_i
    resid = Y - Q @ R + QS * cR
    D = base[:, None] - QS * ZS + Om * resid
    return D.T
