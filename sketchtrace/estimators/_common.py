"""Plumbing every estimator shares: argument checks, summaries, exact paths, minimum budgets."""

from __future__ import annotations

import math

from .._estimate import Estimate
from ..backends import get_backend
from ..validation import check_chunk_size, check_num_matvecs, check_square


def summarize(xp, Q, *, exact: bool):
    """Value and standard error of the column means of the per-probe samples ``Q``.

    ``exact=True`` means ``Q`` holds basis-vector quadratic forms: the value is
    their sum and the standard error is zero. With a single probe the spread is
    unknown and the standard error is reported as ``inf``.
    """
    k = Q.shape[0]
    if exact:
        return Q.sum(axis=0), xp.zeros(Q.shape[1:], Q.dtype)
    value = Q.mean(axis=0)
    if k == 1:
        return value, xp.full(Q.shape[1:], math.inf, Q.dtype)
    return value, Q.std(axis=0, ddof=1) / math.sqrt(k)


def setup(key, op, num_matvecs, chunk_size, backend, mesh=None):
    """Validate the common arguments: ``(bk, op, n, num_matvecs, chunk_size)``.

    ``mesh``: shard the probe/sketch rows across devices (see :mod:`sketchtrace.sharding`).
    """
    num_matvecs = check_num_matvecs(num_matvecs)
    chunk_size = check_chunk_size(chunk_size)
    bk, op = get_backend(key, op, backend, mesh)
    n = check_square(op)
    return bk, op, n, num_matvecs, chunk_size


def check_minimum(num_matvecs, minimum, method, why):
    """Raise when the budget is below what ``method`` needs (and below the dimension)."""
    if num_matvecs < minimum:
        raise ValueError(
            f"num_matvecs={num_matvecs} is too small for {method}: it needs at least {minimum} "
            f"matvecs ({why}); use hutchinson for smaller budgets"
        )


def require_blocks(op):
    """The operator's block names, or a clear error when it has none."""
    if op.blocks is None:
        raise ValueError(
            "op has no blocks: give it a dict-valued output or call as_operator(op, blocks={name: size, ...})"
        )
    return op.block_names


def per_block(names, value, sem, spent):
    """``dict name -> Estimate`` from per-block value and sem arrays."""
    return {name: Estimate(value[i], sem[i], spent) for i, name in enumerate(names)}


def exact_blocks(bk, op, chunk_size):
    """Exact per-block traces from the standard basis (``n`` matvecs): ``(B,)`` values."""
    Q = bk.exact_quad_forms(op, chunk_size)
    bk.check_finite("op", Q)
    return Q.sum(axis=0)


def exact_estimate(bk, op, chunk_size, n):
    value = exact_blocks(bk, op, chunk_size).sum()
    return Estimate(value, bk.xp.zeros((), value.dtype), n)
