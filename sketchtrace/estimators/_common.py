"""Plumbing every estimator shares: argument checks, summaries, exact paths, minimum budgets."""

from __future__ import annotations

import math
import warnings

from .._estimate import Estimate
from ..backends import get_backend
from ..operators import require_products
from ..validation import check_chunk_size, check_num_matvecs, check_square


def summarize(xp, Q, *, exact: bool):
    """Value and standard error of the column means of the per-probe samples ``Q``.

    ``exact=True`` means ``Q`` holds basis-vector quadratic forms: the value is
    their sum and the standard error is zero. With a single probe the spread is
    unknown and the standard error is reported as ``inf``.
    """
    k = Q.shape[0]
    if exact:
        return xp.sum(Q, axis=0), xp.zeros(Q.shape[1:], dtype=Q.dtype)
    value = xp.mean(Q, axis=0)
    if k == 1:
        return value, xp.full(Q.shape[1:], math.inf, dtype=Q.dtype)
    return value, xp.std(Q, axis=0, correction=1) / math.sqrt(k)


def setup(key, op, num_matvecs, chunk_size, backend, mesh=None, *, method="estimator", needs=("matmat",)):
    """Validate the common arguments: ``(bk, op, n, num_matvecs, chunk_size)``.

    ``mesh``: shard the probe/sketch rows across devices (see :mod:`sketchtrace.sharding`).
    ``needs``: the operator products ``method`` uses; an operator without one is
    refused here, before any work.
    """
    num_matvecs = check_num_matvecs(num_matvecs)
    chunk_size = check_chunk_size(chunk_size)
    bk, op = get_backend(key, op, backend, mesh)
    require_products(op, needs, method)
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


def check_allow_exact(allow_exact) -> bool:
    if not isinstance(allow_exact, bool):
        raise TypeError(f"allow_exact must be True or False; got {allow_exact!r}")
    return allow_exact


def use_exact(num_matvecs, n, allow_exact, method, *, can_oversample):
    """Whether to compute the exact answer from the standard basis instead of sampling.

    A budget that reaches the probe dimension ``n`` switches to the exact computation
    (``n`` matvecs, ``sem = 0``) unless ``allow_exact=False``: then Hutchinson-type
    methods keep sampling (``can_oversample``) and sketching methods, whose sketch
    would span the whole space, refuse the budget.
    """
    if num_matvecs < n or check_allow_exact(allow_exact):
        return num_matvecs >= n
    if can_oversample:
        return False
    raise ValueError(
        f"num_matvecs={num_matvecs} reaches the dimension n={n}, and allow_exact=False asks {method} to "
        f"sample: its sketch would span the whole space; use num_matvecs < {n}, allow_exact=True "
        "(the exact answer for n matvecs), or hutchinson"
    )


def resolve_sampler(sampler, test_vectors, *, default, name: str):
    """The probe keyword, honouring the deprecated ``test_vectors=`` spelling of XTrace-type estimators."""
    if test_vectors is not None:
        if sampler is not None:
            raise TypeError(f"{name}: give sampler= only (test_vectors= is its deprecated old name)")
        warnings.warn(
            f"{name}(test_vectors=...) is deprecated; use sampler=... (same values)",
            DeprecationWarning,
            stacklevel=3,
        )
        sampler = test_vectors
    return default if sampler is None else sampler
