"""Plumbing every estimator shares: argument checks, summaries, exact paths, minimum budgets."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import warnings

from .._estimate import Estimate
from .._optional import register_static
from ..backends import BACKENDS, get_backend
from ..operators import require_products
from ..validation import check_choice, check_chunk_size, check_num_matvecs, check_sampler, check_square

#: The sampling options every fixed-budget estimator takes (the fields of :class:`SketchOptions`).
OPTION_NAMES = ("sampler", "chunk_size", "backend", "mesh", "allow_exact")


@dataclasses.dataclass(frozen=True)
class SketchOptions:
    """How an estimator samples and runs, given once and validated once.

    Every fixed-budget estimator (:func:`hutchinson`, :func:`hutchpp`, :func:`na_hutchpp`,
    :func:`xtrace`, :func:`xnystrace`, :func:`diagonal`, :func:`block_traces`,
    :func:`trace_function`, :func:`logdet`, :func:`trace_inverse`) takes these five options as
    keywords or together as ``options=SketchOptions(...)`` (not both); the adaptive
    :func:`trace` takes them as ``options=``. The object is frozen, hashable and a static JAX
    pytree, so it can be built once, shared between calls and passed through ``jax.jit``.

    Parameters
    ----------
    sampler : str or callable, optional
        Probe distribution (``"rademacher"``, ``"gaussian"``, ``"sphere"``; the XTrace family
        also ``"improved"``) or a callable ``sampler(key, shape, dtype)``. ``None``: the
        estimator's own default (Rademacher for Hutchinson-type estimators, ``"improved"``
        for the XTrace family). The name is checked by the estimator that uses it.
    chunk_size : int, optional
        Apply the operator to at most this many vectors at a time (peak memory
        ``chunk_size * n`` instead of ``num_matvecs * n``). The result does not depend on it.
    backend : {"jax", "numba", "torch"}, optional
        Force a backend (checked against the key, whose type otherwise picks it).
    mesh : jax.sharding.Mesh, optional
        Shard the probe (sketch) rows across the mesh's devices (JAX backend; see
        :func:`sketchtrace.make_mesh`); same probes, same result up to summation order.
    allow_exact : bool
        ``True`` (default): a budget that reaches the probe dimension ``n`` computes the exact
        answer from the standard basis (``n`` matvecs, ``sem = 0``). ``False``: Hutchinson-type
        estimators keep sampling; sketching estimators refuse such a budget (their sketch
        would span the whole space).

    Examples
    --------
    >>> import numpy as np, sketchtrace as st
    >>> opts = st.SketchOptions(sampler="gaussian", chunk_size=8)
    >>> est = st.hutchinson(np.random.default_rng(0), np.eye(20), num_matvecs=10, options=opts)
    """

    sampler: object = None
    chunk_size: int | None = None
    backend: str | None = None
    mesh: object = None
    allow_exact: bool = True

    def __post_init__(self):
        # the one place each option is checked (setup() and @sketch_options build this object)
        check_sampler(self.sampler)
        object.__setattr__(self, "chunk_size", check_chunk_size(self.chunk_size))
        if self.backend is not None:
            check_choice(self.backend, BACKENDS, name="backend")
        object.__setattr__(self, "allow_exact", check_allow_exact(self.allow_exact))

    def replace(self, **changes) -> SketchOptions:
        """A copy with ``changes`` (validated like a new object)."""
        return dataclasses.replace(self, **changes)


register_static(SketchOptions)
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SketchOptions)}


def merge_options(name: str, options, given: dict, defaults: dict) -> SketchOptions:
    """One validated :class:`SketchOptions` from an ``options=`` object or option keywords.

    ``given``: the option keywords the caller passed (by name); ``defaults``: the estimator's
    own defaults for the options it takes. An ``options=`` object with a keyword beside it is
    refused (which one would win is not obvious), as is an object setting an option the
    estimator does not take.
    """
    if options is None:
        return SketchOptions(**{**defaults, **given})
    if not isinstance(options, SketchOptions):
        raise TypeError(f"{name}: options must be a sketchtrace.SketchOptions; got {type(options).__name__}")
    if given:
        both = ", ".join(f"{k}=" for k in given)
        raise TypeError(f"{name}: give {both} either as a keyword or in options=SketchOptions(...), not both")
    unknown = [f for f in OPTION_NAMES if f not in defaults and getattr(options, f) != _FIELD_DEFAULTS[f]]
    if unknown:
        raise TypeError(f"{name} does not take the option(s) {', '.join(unknown)} set in options=")
    if options.sampler is None and "sampler" in defaults:
        return options.replace(sampler=defaults["sampler"])
    return options


def sketch_options(fn):
    """The shared option signature: ``fn`` also takes ``options=SketchOptions(...)``.

    ``fn`` declares the option keywords it takes (a subset of :data:`OPTION_NAMES`, with its
    own defaults: they stay its documented, public signature) and ``options=None``. The wrapper
    folds the keywords the caller gave, or the ``options=`` object, into one validated
    :class:`SketchOptions` (:func:`merge_options`) and calls ``fn`` with the checked values as
    keywords, so the body reads plain ``chunk_size``, ``sampler``, ... and never validates them.
    Pure Python before the body runs: jit, vmap and grad trace through it.
    """
    params = inspect.signature(fn).parameters
    if "options" not in params:
        raise TypeError(f"@sketch_options: {fn.__name__} must declare options=None")
    defaults = {f: params[f].default for f in OPTION_NAMES if f in params}

    @functools.wraps(fn)
    def wrapper(key, op, *args, options=None, **kwargs):
        given = {f: kwargs.pop(f) for f in defaults if f in kwargs}
        merged = merge_options(fn.__name__, options, given, defaults)
        return fn(key, op, *args, **kwargs, **{f: getattr(merged, f) for f in defaults})

    wrapper.option_defaults = defaults  # type: ignore[attr-defined]  # read by tests and tools
    return wrapper


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
    opts = SketchOptions(chunk_size=chunk_size, backend=backend, mesh=mesh)  # idempotent on checked values
    chunk_size = opts.chunk_size
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
