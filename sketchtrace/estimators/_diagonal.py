"""Diagonal estimation: Hutchinson-type (Bekas-Kokiopoulou-Saad) and XDiag."""

from __future__ import annotations

from .._estimate import Estimate
from ..validation import check_choice
from ._common import check_minimum, setup, sketch_options, summarize, use_exact
from ._xtrace import XSketch, xdiag_samples, xsketch


def xdiag_adjoint(bk, op, method_name="diagonal(method='xdiag')"):
    """``None`` for a declared-symmetric ``op`` (``Q^T A = (A Q)^T``), else an operator for ``A^T``.

    XDiag needs the rows of ``Q^T A``. For an operator that does not declare itself
    symmetric they come from ``k`` transpose products (the same budget as ``A Q``);
    an operator with neither is refused here, before any matvec.
    """
    if getattr(op, "symmetric", None) or getattr(op, "psd", None):
        return None
    adj = bk.adjoint(op)
    if adj is None:
        raise ValueError(
            f"{method_name} needs Q^T A: op is not declared symmetric (symmetric=True) and has no transpose "
            f"product (rmatmat) on the {bk.name} backend. Declare the symmetry if op is symmetric, give it "
            "a transpose (e.g. FunctionOperator(..., rmatvec=...)), or use method='hutchinson'"
        )
    return adj


def _xdiag_state(bk, op, adj, Om, chunk_size):
    """The XDiag sketch with ``Z = A^T Q`` (so that ``Z^T = Q^T A`` for any square ``A``)."""
    if adj is None:
        return xsketch(bk, op, Om, chunk_size)
    Y = bk.matmat(op, Om, chunk_size).T
    bk.check_finite("op", Y)
    Q, R = bk.xp.linalg.qr(Y)
    Zt = bk.matmat(adj, Q.T, chunk_size).T
    bk.check_finite("op", Zt)
    return XSketch(Om.T, Y, Q, R, Zt)


def _exact_diagonal(bk, op, n, chunk_size):
    xp = bk.xp
    AE = bk.matmat(op, xp.eye(n, dtype=bk.probe_dtype(op)), chunk_size)  # rows A e_j
    bk.check_finite("op", AE)
    d = xp.diagonal(AE)
    return d, xp.zeros_like(d)


def _split_blocks(op, est):
    from ..operators import GramOperator

    if op.blocks is None:
        raise ValueError(
            "by_block=True needs an operator with blocks: give it a dict-valued output or call "
            "as_operator(op, blocks={name: size, ...})"
        )
    if isinstance(op, GramOperator) and op.side == "input":
        raise ValueError(
            "by_block=True: the blocks of gram(J, side='input') partition the rows of J, not the rows "
            "of J^T J, so its diagonal has no block split; use gram(J, side='output')"
        )
    return {name: Estimate(est.value[a:b], est.sem[a:b], est.num_matvecs) for name, a, b in op.blocks}


@sketch_options
def diagonal(
    key,
    op,
    *,
    num_matvecs,
    method="hutchinson",
    sampler="rademacher",
    by_block=False,
    chunk_size=None,
    backend=None,
    mesh=None,
    allow_exact=True,
    options=None,
):
    """Randomized estimate of ``diag(op)`` with a per-entry standard error.

    ``method="hutchinson"``: ``d = mean_i v_i * (A v_i)`` over ``m = num_matvecs``
    isotropic probes (unbiased; Rademacher probes minimise the variance, which is
    ``sum_{l != j} a_jl^2 / m`` for entry ``j``). ``method="xdiag"``: XDiag, the
    leave-one-out estimator of Epperly, Tropp and Webber: ``k = m // 2`` sign test
    vectors, a basis ``Q`` of ``A Omega`` and ``Z = A Q`` (``2k`` matvecs), and for
    each ``i`` the exact diagonal of the projection ``P_(i) A`` onto the sketch of
    the other test vectors plus a Hutchinson correction with ``omega_i``. The rows
    of ``Q^T A`` come from ``k`` transpose products ``A^T Q`` (same budget), or from
    ``(A Q)^T`` when the operator declares itself symmetric (``symmetric``/``psd``,
    Gram operators); an operator with neither is refused before any matvec. Exact
    when ``rank(A) <= k - 1``, symmetric or not. When ``num_matvecs >= n`` the exact diagonal is computed
    from the standard basis (``sem = 0``).

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
    op : operator
        Square. ``"xdiag"`` needs a transpose product (``rmatmat``) unless the
        operator declares itself symmetric.
    num_matvecs : int
        Budget (>= 1 for ``"hutchinson"``, >= 4 for ``"xdiag"``).
    method : {"hutchinson", "xdiag"}
    sampler : str
        Probe distribution for ``"hutchinson"`` (XDiag always uses signs).
    by_block : bool
        Return ``{block name: Estimate}`` with each block's slice of the diagonal
        (the diagonal of ``A_bb``), from the same probes. Needs blocks over the
        operator's rows (dense/sparse/function operators with ``blocks=``, Jacobian
        Gram operators on the output side ``J J^T``).
    chunk_size, backend, mesh : optional
        See :class:`SketchOptions`.
    allow_exact : bool
        ``True`` (default): a budget that reaches the dimension computes the exact
        diagonal from the standard basis. ``False``: Hutchinson keeps sampling; XDiag
        refuses such a budget.
    options : SketchOptions, optional
        The five options above as one object (instead of the keywords).

    Returns
    -------
    Estimate or dict
        ``value`` and ``sem`` are arrays of length ``n``; ``num_matvecs`` spent.

    References
    ----------
    C. Bekas, E. Kokiopoulou, Y. Saad, "An estimator for the diagonal of a matrix",
    Appl. Numer. Math. 57 (2007). doi:10.1016/j.apnum.2007.01.003
    E. N. Epperly, J. A. Tropp, R. J. Webber, "XTrace: Making the most of every
    sample in stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45(1), 2024.
    doi:10.1137/23M1548323, arXiv:2301.07825
    """
    check_choice(method, ("hutchinson", "xdiag"), name="method")
    bk, op, n, m, chunk_size = setup(key, op, num_matvecs, chunk_size, backend, mesh, method="diagonal")
    xp = bk.xp
    if use_exact(m, n, allow_exact, f"diagonal(method={method!r})", can_oversample=method == "hutchinson"):
        d, s = _exact_diagonal(bk, op, n, chunk_size)
        est = Estimate(d, s, n)
    elif method == "hutchinson":
        V = bk.probes(key, m, n, bk.probe_dtype(op), sampler)
        AV = bk.matmat(op, V, chunk_size)
        bk.check_finite("op", AV)
        d, s = summarize(xp, V * AV, exact=False)
        est = Estimate(d, s, m)
    else:
        check_minimum(m, 4, "diagonal(method='xdiag')", "two test vectors, each applied with its basis vector")
        adj = xdiag_adjoint(bk, op)
        k = m // 2
        Om = bk.probes(key, k, n, bk.probe_dtype(op), "rademacher")
        st = _xdiag_state(bk, op, adj, Om, chunk_size)
        D = xdiag_samples(xp, st)
        bk.check_finite("op", D)
        d, s = summarize(xp, D, exact=False)
        est = Estimate(d, s, 2 * k)
    return _split_blocks(op, est) if by_block else est
