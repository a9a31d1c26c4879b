"""Girard-Hutchinson trace estimation (total and per block, from shared probes)."""

from __future__ import annotations

from .._estimate import Estimate
from ..backends import get_backend
from ..validation import check_num_matvecs, check_square
from ._common import sketch_options, summarize, use_exact
from ._compiled import eager_compiled


def hutchinson_samples(key, op, *, num_matvecs, sampler, chunk_size, backend, mesh=None, allow_exact=True):
    """Per-probe, per-block quadratic forms: ``(bk, op, Q, exact, spent)`` (options checked by the caller's
    :func:`sketch_options`)."""
    num_matvecs = check_num_matvecs(num_matvecs)
    bk, op = get_backend(key, op, backend, mesh)
    check_square(op)
    n = op.probe_dim
    if use_exact(num_matvecs, n, allow_exact, "hutchinson", can_oversample=True):
        Q = bk.exact_quad_forms(op, chunk_size)
        exact, spent = True, n
    else:
        Q = bk.quad_forms(key, op, num_matvecs, sampler, chunk_size)
        exact, spent = False, num_matvecs
    bk.check_finite("op", Q)
    return bk, op, Q, exact, spent


@sketch_options
@eager_compiled
def hutchinson(
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
    """Girard-Hutchinson estimate of ``tr(op)``.

    ``tr(A) ~ (1/m) sum_i v_i^T A v_i`` over ``m = num_matvecs`` independent
    isotropic probes ``v_i``. Unbiased; its variance is
    ``2 (||A||_F^2 - sum_i a_ii^2) / m`` for Rademacher probes and ``2 ||A||_F^2 / m``
    for Gaussian probes (symmetric ``A``). When ``num_matvecs`` reaches the probe
    dimension the exact trace is computed from the standard basis instead (``sem = 0``).

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
        Randomness (never defaulted); its type picks the backend.
    op : operator
        Anything :func:`sketchtrace.as_operator` accepts; must be square.
    num_matvecs : int
        Number of probes (matvecs), a static Python integer >= 1.
    sampler : {"rademacher", "gaussian", "sphere"} or callable
        Probe distribution (see :mod:`sketchtrace` samplers).
    chunk_size, backend, mesh : optional
        See :class:`SketchOptions` (probe ``i`` is always drawn from the ``i``-th split of
        ``key``, so ``chunk_size`` and ``mesh`` do not change the result).
    allow_exact : bool
        ``True`` (default): a budget that reaches the probe dimension computes the
        exact answer from the standard basis (``n`` matvecs, ``sem = 0``). ``False``:
        keep sampling (any number of probes, as many as asked).
    options : SketchOptions, optional
        The five options above as one object (instead of the keywords, not beside them).

    Returns
    -------
    Estimate
        ``value`` (the trace estimate, the sum over blocks for a block operator),
        ``sem`` (sample standard deviation over probes / sqrt(m); ``inf`` for one
        probe; 0 when exact), ``num_matvecs`` (matvecs spent) and ``dof`` (``probes - 1``,
        for a Student-t interval; ``None`` when exact).

    References
    ----------
    D. Girard, "A fast 'Monte-Carlo cross-validation' procedure for large least
    squares problems with noisy data", Numer. Math. 56 (1989). doi:10.1007/BF01395775
    M. F. Hutchinson, "A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines", Commun. Stat. Simul. Comput. 19 (1990).
    doi:10.1080/03610919008812866
    """
    bk, _, Q, exact, spent = hutchinson_samples(
        key,
        op,
        num_matvecs=num_matvecs,
        sampler=sampler,
        chunk_size=chunk_size,
        backend=backend,
        mesh=mesh,
        allow_exact=allow_exact,
    )
    value, sem = summarize(bk.xp, bk.xp.sum(Q, axis=1, keepdims=True), exact=exact)
    dof = None if exact or Q.shape[0] < 2 else Q.shape[0] - 1  # sem: spread of independent probes
    return Estimate(value[0], sem[0], spent, dof=dof)
