"""Per-block traces from shared probes (Hutchinson or Hutch++)."""

from __future__ import annotations

from ._common import per_block, require_blocks, sketch_options, summarize
from ._hutchinson import hutchinson_samples
from ._hutchpp import hutchpp_blocks


@sketch_options
def block_traces(
    key,
    op,
    *,
    num_matvecs,
    method="hutchinson",
    sampler="rademacher",
    chunk_size=None,
    backend=None,
    mesh=None,
    allow_exact=True,
    options=None,
):
    """Per-block traces of a block operator, all from the same probes.

    Returns a dict ``name -> Estimate``; each block's estimate is unbiased, and
    the block values sum to :func:`hutchinson`'s total for the same key. Blocks
    come from a dict-valued operator output (Jacobians) or ``as_operator(..., blocks=)``.
    For a Gram operator ``J J^T`` block ``b``'s trace is ``||J_b||_F^2``.
    ``method="hutchpp"``: Hutch++ per block from a shared sketch (see
    :func:`sketchtrace.hutchpp`; each block's estimate is unbiased).
    ``sampler``, ``chunk_size``, ``backend``, ``mesh``, ``allow_exact``: see :class:`SketchOptions`
    (or give them together as ``options=``).
    """
    kw = dict(
        num_matvecs=num_matvecs,
        sampler=sampler,
        chunk_size=chunk_size,
        backend=backend,
        mesh=mesh,
        allow_exact=allow_exact,
    )
    if method == "hutchpp":
        return hutchpp_blocks(key, op, **kw)
    if method != "hutchinson":
        raise ValueError(f"method must be 'hutchinson' or 'hutchpp' for block_traces; got {method!r}")
    bk, op, Q, exact, spent = hutchinson_samples(key, op, **kw)
    names = require_blocks(op)
    value, sem = summarize(bk.xp, Q, exact=exact)
    return per_block(names, value, sem, spent)
