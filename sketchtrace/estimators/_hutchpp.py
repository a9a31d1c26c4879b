"""Hutch++ and NA-Hutch++ (low-rank deflation plus Hutchinson on the remainder).

Both are written once against the backend interface (``bk.probes``,
``bk.matmat``, ``bk.quad_forms_of``, ``bk.exact_quad_forms``), so they run on
JAX (jit-able, vmap-able over keys) and on the numba backend.
"""

from __future__ import annotations

from .._estimate import Estimate
from ._common import (
    check_minimum,
    exact_blocks,
    exact_estimate,
    per_block,
    require_blocks,
    setup,
    sketch_options,
    summarize,
    use_exact,
)


def hutchpp_split(num_matvecs):
    """Sketch size ``k`` and Hutchinson probes ``g`` with ``2k + g = num_matvecs``.

    ``k = ceil(m/3)`` (as in Epperly-Tropp-Webber's comparison scripts), reduced
    so that at least one Hutchinson probe remains.
    """
    m = num_matvecs
    k = min(-(-m // 3), (m - 1) // 2)
    return k, m - 2 * k


def na_hutchpp_split(num_matvecs):
    """``(s, r, g)`` sizes of NA-Hutch++'s sketches ``S``, ``R`` and Hutchinson ``G``.

    The paper's constants ``c1 = 1/6``, ``c2 = 1/3``, ``c3 = 1/2``:
    ``s = floor(m/6)``, ``r = floor(m/3)``, ``g = m - s - r`` (at least one each).
    """
    m = num_matvecs
    s = max(1, m // 6)
    r = max(1, m // 3)
    return s, r, m - s - r


# ----------------------------------------------------------------------------- Hutch++


def hutchpp_parts(bk, key, op, n, num_matvecs, sampler, chunk_size):
    """Per-block low-rank traces ``(B,)`` and residual quadratic forms ``(g, B)``."""
    xp = bk.xp
    k, g = hutchpp_split(num_matvecs)
    V = bk.probes(key, k + g, n, bk.probe_dtype(op), sampler)
    S, G = V[:k], V[k:]
    Y = bk.matmat(op, S, chunk_size)  # rows A s_j
    bk.check_finite("op", Y)
    Q, _ = xp.linalg.qr(Y.T)  # (n, k), orthonormal even when Y is rank deficient
    low = bk.quad_forms_of(op, Q.T, chunk_size).sum(axis=0)  # tr(Q^T A_b Q)
    Gp = G - (G @ Q) @ Q.T  # (I - Q Q^T) g
    R = bk.quad_forms_of(op, Gp, chunk_size)
    bk.check_finite("op", R)
    return low, R


def _hutchpp_run(key, op, num_matvecs, sampler, chunk_size, backend, mesh=None, allow_exact=True):
    """``(bk, op, low, R, spent)``; ``R is None`` on the exact path (``low`` exact)."""
    bk, op, n, m, chunk_size = setup(key, op, num_matvecs, chunk_size, backend, mesh, method="hutchpp")
    if use_exact(m, n, allow_exact, "hutchpp", can_oversample=False):
        return bk, op, exact_blocks(bk, op, chunk_size), None, n
    check_minimum(m, 3, "hutchpp", "one sketch vector, one product with its basis, one Hutchinson probe")
    low, R = hutchpp_parts(bk, key, op, n, m, sampler, chunk_size)
    return bk, op, low, R, m


@sketch_options
def hutchpp(
    key,
    op,
    *,
    num_matvecs,
    sampler="rademacher",
    chunk_size=None,
    backend=None,
    mesh=None,
    allow_exact=True,
    options=None,
):
    """Hutch++ estimate of ``tr(op)``: exact trace of a sketched range plus Hutchinson.

    With ``k = ceil(m/3)`` (at most ``(m-1)//2``) and ``g = m - 2k``:
    ``Q = orth(A S)`` for ``k`` random vectors ``S`` (``k`` matvecs), then
    ``tr(Q^T A Q)`` (``k`` matvecs) plus the Hutchinson estimate of
    ``tr((I - QQ^T) A (I - QQ^T))`` from ``g`` probes (``g`` matvecs). Exactly
    ``m = num_matvecs`` matvecs are spent; an odd remainder goes to the
    Hutchinson phase. Unbiased for every square ``A`` (symmetry is not needed);
    exact when ``rank(A) <= k`` and when ``num_matvecs >= n`` (standard basis).

    Standard error: given the sketch, the estimate is unbiased for ``tr(A)``
    whatever ``Q`` is, so its variance is ``E[Var(. | Q)]``; the sample standard
    deviation of the ``g`` residual quadratic forms over ``sqrt(g)`` estimates
    exactly that (``inf`` when ``g = 1``).

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
        Randomness (its type picks the backend).
    op : operator
        Square; anything :func:`sketchtrace.as_operator` accepts (Jacobian-based
        Gram operators included; their quadratic forms cost one ``J`` product).
    num_matvecs : int
        Total budget (static, >= 3 unless it reaches the dimension).
    sampler : {"rademacher", "gaussian", "sphere"}
        Distribution of the sketch and Hutchinson probes.
    chunk_size, backend, mesh : optional
        See :class:`SketchOptions` (with ``mesh`` the small dense algebra runs replicated).
    allow_exact : bool
        ``True`` (default): a budget that reaches the dimension computes the exact
        trace from the standard basis. ``False``: such a budget is refused (the
        sketch would span the whole space).
    options : SketchOptions, optional
        The five options above as one object (instead of the keywords).

    Returns
    -------
    Estimate
        ``value`` (sum over blocks), ``sem``, ``num_matvecs`` (spent) and ``dof`` (residual
        probes - 1, for a Student-t interval).

    References
    ----------
    R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff, "Hutch++: Optimal stochastic
    trace estimation", SOSA 2021. doi:10.1137/1.9781611976496.16, arXiv:2010.09649
    """
    bk, _, low, R, spent = _hutchpp_run(key, op, num_matvecs, sampler, chunk_size, backend, mesh, allow_exact)
    if R is None:
        return Estimate(low.sum(), bk.xp.zeros((), low.dtype), spent)
    mean, sem = summarize(bk.xp, R.sum(axis=1, keepdims=True), exact=False)
    dof = R.shape[0] - 1 if R.shape[0] > 1 else None  # sem: spread of the independent residual probes
    return Estimate(low.sum() + mean[0], sem[0], spent, dof=dof)


@sketch_options
def hutchpp_blocks(
    key,
    op,
    *,
    num_matvecs,
    sampler="rademacher",
    chunk_size=None,
    backend=None,
    mesh=None,
    allow_exact=True,
    options=None,
):
    """Per-block Hutch++ traces from shared sketches and probes: ``dict name -> Estimate``.

    Block ``b``'s trace ``tr(A_bb)`` (for a Gram operator ``||J_b||_F^2``) is
    ``tr(Q^T A_b Q) + tr((I-P) A_b (I-P))`` for the projector ``P = QQ^T``, whatever
    ``Q`` is, so each block's estimate is unbiased. Used by
    :func:`sketchtrace.block_traces` with ``method="hutchpp"``.
    """
    bk, op, low, R, spent = _hutchpp_run(key, op, num_matvecs, sampler, chunk_size, backend, mesh, allow_exact)
    names = require_blocks(op)
    if R is None:
        value, sem = low, bk.xp.zeros_like(low)
    else:
        mean, sem = summarize(bk.xp, R, exact=False)
        value = low + mean
    return per_block(names, value, sem, spent)


# ----------------------------------------------------------------------------- NA-Hutch++


def _pinv(xp, M):
    U, s, Vt = xp.linalg.svd(M, full_matrices=False)
    tol = max(M.shape) * xp.finfo(M.dtype).eps * s[0]
    keep = s > tol
    inv = xp.where(keep, 1.0 / xp.where(keep, s, 1.0), 0.0)
    return (Vt.T * inv) @ U.T


@sketch_options
def na_hutchpp(
    key,
    op,
    *,
    num_matvecs,
    sampler="rademacher",
    chunk_size=None,
    backend=None,
    mesh=None,
    allow_exact=True,
    options=None,
):
    """Non-adaptive Hutch++ (NA-Hutch++) estimate of ``tr(op)`` for symmetric ``op``.

    All matvecs are issued in one round (no product depends on another):
    with sketches ``S`` (``s = floor(m/6)`` columns), ``R`` (``r = floor(m/3)``)
    and Hutchinson probes ``G`` (``g = m - s - r``, about ``m/2``), ``Z = A R``,
    ``W = A S`` and ``X = (S^T Z)^+``,

    ``t = tr(X W^T Z) + (1/g) sum_j [g_j^T A g_j - (g_j^T Z) X (W^T g_j)]``,

    i.e. the trace of the Nystrom-type approximation ``Ahat = Z X W^T`` plus
    Hutchinson on ``A - Ahat``. Uses ``W^T = S^T A`` and therefore assumes ``A``
    symmetric. Exactly ``num_matvecs`` matvecs are spent (>= 3).

    The standard error is the sample standard deviation of the ``g`` residual
    quadratic forms over ``sqrt(g)``: conditionally on ``S, R`` the estimate is
    unbiased, so this is honest (``inf`` when ``g = 1``). Other arguments as for
    :func:`hutchpp` (including ``allow_exact``).

    Returns
    -------
    Estimate

    References
    ----------
    R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff, "Hutch++: Optimal stochastic
    trace estimation", SOSA 2021, Algorithm 2. doi:10.1137/1.9781611976496.16,
    arXiv:2010.09649
    """
    bk, op, n, m, chunk_size = setup(key, op, num_matvecs, chunk_size, backend, mesh, method="na_hutchpp")
    if use_exact(m, n, allow_exact, "na_hutchpp", can_oversample=False):
        return exact_estimate(bk, op, chunk_size, n)
    check_minimum(m, 3, "na_hutchpp", "one vector for each of its sketches S and R and one Hutchinson probe")
    xp = bk.xp
    s, r, g = na_hutchpp_split(m)
    V = bk.probes(key, s + r + g, n, bk.probe_dtype(op), sampler)
    S, Rm, G = V[:s], V[s : s + r], V[s + r :]
    W = bk.matmat(op, S, chunk_size)  # rows A s_i
    Z = bk.matmat(op, Rm, chunk_size)  # rows A r_j
    qG = bk.quad_forms_of(op, G, chunk_size).sum(axis=1)  # g_j^T A g_j
    bk.check_finite("op", W)
    bk.check_finite("op", Z)
    bk.check_finite("op", qG)
    X = _pinv(xp, S @ Z.T)  # (S^T Z)^+ : (r, s)
    low = xp.sum(X * (W @ Z.T).T)  # tr(X W^T Z)
    GZ = G @ Z.T  # (g, r) rows g_j^T Z
    WG = W @ G.T  # (s, g) columns W^T g_j
    corr = xp.sum((GZ @ X) * WG.T, axis=1)
    samples = (qG - corr)[:, None]
    mean, sem = summarize(xp, samples, exact=False)
    return Estimate(low + mean[0], sem[0], m)
