"""Adaptive trace estimation: grow the sketch until the confidence interval meets a tolerance."""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats

from .._estimate import Estimate
from .._optional import tree_leaves
from ..operators import require_products
from ..validation import check_bool, check_choice, check_num_matvecs
from ._common import (
    OPTION_NAMES,
    SketchOptions,
    check_minimum,
    exact_estimate,
    merge_options,
    setup,
    summarize,
    use_exact,
)
from ._compiled import BackendCompiled
from ._xtrace import (
    _check_psd,
    default_psd_rtol,
    nys_state,
    resolve_test_vectors,
    x_mean_sem,
    xnystrace_loo,
    xsketch,
    xtrace_loo,
)

METHODS = ("auto", "hutchinson", "xtrace", "xnystrace")
# matvecs per test vector, smallest first batch
_PER_VECTOR = {"hutchinson": 1, "xtrace": 2, "xnystrace": 1}
_MINIMUM = {"hutchinson": 2, "xtrace": 4, "xnystrace": 2}


def _check_real(x, name, *, positive=False, nonnegative=False):
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(x).__name__} {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite; got {x}")
    if positive and not x > 0:
        raise ValueError(f"{name} must be > 0; got {x}")
    if nonnegative and not x >= 0:
        raise ValueError(f"{name} must be >= 0; got {x}")
    return x


def resolve_method(method, op):
    """``method="auto"`` reads the operator's declaration: ``"hutchinson"`` when it has
    only quadratic forms, ``"xnystrace"`` when declared PSD, else ``"xtrace"``."""
    check_choice(method, METHODS, name="method")
    if method == "auto":
        if "matmat" not in op.products:
            return "hutchinson"
        return "xnystrace" if op.psd else "xtrace"
    if method != "hutchinson":
        require_products(op, ("matmat",), f"trace(method={method!r})")
    return method


def _round(bk, op, rk, prev, *, new, dt, sampler, chunk_size, n, improved, method):
    """One round: ``new`` fresh vectors; returns ``(state, (samples, D))`` (``D``: the X-family's pair deltas)."""
    xp = bk.xp
    if method == "hutchinson":
        Qn = bk.quad_forms(rk, op, new, sampler, chunk_size).sum(axis=1)
        samples = Qn if prev is None else xp.concatenate([prev, Qn])
        return samples, (samples, None)
    Om = bk.probes(rk, new, n, dt, sampler)
    if method == "xtrace":
        state = xsketch(bk, op, Om, chunk_size, prev=prev)
        return state, xtrace_loo(xp, state, n, improved)
    state = nys_state(bk, op, Om, chunk_size, prev=prev)
    return state, xnystrace_loo(xp, state, n, improved)


# Each round is compiled once per (operator, round size) where the backend compiles:
# the doubling schedule keeps the number of distinct shapes logarithmic in the budget.
_STATIC = ("bk", "new", "dt", "sampler", "chunk_size", "n", "improved", "method")


# compiled per backend and held by this object (the estimators' one compile-cache mechanism,
# shared with the predictor-corrector step); jax.jit's cache then holds one program per shape
_COMPILED_ROUND = BackendCompiled(_round, static_argnames=_STATIC)


def _run_round(bk, op, rk, prev, **kw):
    """Run one round. sketchtrace's operators are pytrees (their arrays are traced
    arguments); a user subclass that did not register itself as one is static."""
    leaves = tree_leaves(op)
    static_op = len(leaves) == 1 and leaves[0] is op
    return _COMPILED_ROUND.get(bk, ("op",) if static_op else ())(bk, op, rk, prev, **kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoppingRule:
    """When the adaptive :func:`trace` stops, validated once.

    After each round, with ``k`` the samples behind the standard error, the run stops when
    ``sem_factor * t_{(1 + confidence)/2, k - 1} * sem <= max(atol, rtol * |value|)``, or when
    the next round would pass ``max_matvecs`` (then with a ``RuntimeWarning``).

    Parameters
    ----------
    rtol : float
        Relative tolerance (> 0) on the confidence half-width.
    max_matvecs : int
        Hard budget; never exceeded.
    atol : float
        Absolute tolerance (>= 0); the interval must meet ``max(atol, rtol |value|)``.
    confidence : float
        Confidence level of the interval, in (0, 1).
    sem_factor : float, optional
        Safety factor (> 0) on the standard error in the stopping rule (``None``: the
        default of :func:`trace`).
    first_matvecs : int
        Matvecs of the first round (XTrace: ``first_matvecs // 2`` test vectors).

    Examples
    --------
    >>> import numpy as np, sketchtrace as st
    >>> rule = st.StoppingRule(rtol=0.05, max_matvecs=200, confidence=0.99)
    >>> est = st.trace(np.random.default_rng(0), np.eye(300) + 0.01, stop=rule)
    """

    rtol: float
    max_matvecs: int
    atol: float = 0.0
    confidence: float = 0.95
    sem_factor: float | None = None
    first_matvecs: int = 16

    def __post_init__(self):
        confidence = _check_real(self.confidence, "confidence")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1); got {confidence}")
        checked = dict(
            rtol=_check_real(self.rtol, "rtol", positive=True),
            atol=_check_real(self.atol, "atol", nonnegative=True),
            confidence=confidence,
            first_matvecs=check_num_matvecs(self.first_matvecs, name="first_matvecs"),
            max_matvecs=check_num_matvecs(self.max_matvecs, name="max_matvecs"),
        )
        if self.sem_factor is not None:
            checked["sem_factor"] = _check_real(self.sem_factor, "sem_factor", positive=True)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> StoppingRule:
        """A copy with ``changes`` (validated like a new object)."""
        return dataclasses.replace(self, **changes)


_RULE_MOVED = ("confidence", "sem_factor", "first_matvecs")  # trace keywords moved into StoppingRule
_TRACE_OPTIONS = {f.name: f.default for f in dataclasses.fields(SketchOptions)}


def _moved(name, where, obj):
    warnings.warn(
        f"trace({name}=...) is deprecated; use trace(..., {where}=sketchtrace.{obj}({name}=...)) (same values)",
        DeprecationWarning,
        stacklevel=4,
    )


def _stopping_rule(stop, shortcuts, moved) -> StoppingRule:
    """The run's :class:`StoppingRule` from ``stop=`` or the keywords (``rtol``, ``atol``, ``max_matvecs``,
    and the deprecated ``confidence``, ``sem_factor``, ``first_matvecs``)."""
    given = {k: v for k, v in shortcuts.items() if v is not None}
    for name in _RULE_MOVED:
        if name in moved:
            _moved(name, "stop", "StoppingRule")
            given[name] = moved.pop(name)
    if stop is None:
        missing = [f"{k}=" for k in ("rtol", "max_matvecs") if k not in given]
        if missing:
            raise TypeError(f"trace() needs {' and '.join(missing)} (or stop=sketchtrace.StoppingRule(...))")
        return StoppingRule(**given)
    if not isinstance(stop, StoppingRule):
        raise TypeError(f"trace: stop must be a sketchtrace.StoppingRule; got {type(stop).__name__}")
    if given:
        both = ", ".join(f"{k}=" for k in given)
        raise TypeError(f"trace: give {both} either as a keyword or in stop=StoppingRule(...), not both")
    return stop


def _trace_options(options, moved) -> SketchOptions:
    """The run's :class:`SketchOptions` from ``options=`` or the deprecated sampling keywords."""
    given = {}
    for name in OPTION_NAMES:
        if name in moved:
            _moved(name, "options", "SketchOptions")
            given[name] = moved.pop(name)
    test_vectors = moved.pop("test_vectors", None)
    if test_vectors is not None:
        if "sampler" in given or (options is not None and options.sampler is not None):
            raise TypeError("trace: give sampler= only (test_vectors= is its deprecated old name)")
        _moved("test_vectors", "options", "SketchOptions")
        given["sampler"] = test_vectors
    if moved:
        raise TypeError(f"trace() got an unexpected keyword argument {next(iter(moved))!r}")
    return merge_options("trace", options, given, _TRACE_OPTIONS)


def trace(
    key,
    op,
    *,
    rtol=None,
    atol=None,
    max_matvecs=None,
    method="auto",
    stop=None,
    options=None,
    check_psd=False,
    **deprecated,
):
    """Adaptive trace estimate: spend matvecs until the confidence interval is tight enough.

    Stopping rule: after each round, with ``k`` the number of samples behind the
    standard error (probes for Hutchinson, test vectors for the X-family), stop when

    ``sem_factor * t_{(1 + confidence)/2, k - 1} * sem <= max(atol, rtol * |value|)``

    (Student-t quantile). ``sem_factor`` defaults to 1: the X-family's standard
    error includes the covariance of its leave-one-out estimates (see
    :func:`sketchtrace.xtrace`) and covers its nominal level; with it the tolerance
    was met in 98-100 % of runs (150 seeds on three operators, docs/estimators.md),
    as with the factor 2 that the leave-one-out-only error needed, at half the
    matvecs. Rounds: the X-family **doubles** its test vectors and
    re-uses every product already computed (XTrace extends its basis by block
    Gram-Schmidt, XNysTrace appends columns), so the total cost is that of the
    final sketch; Hutchinson adds **batches** of fresh probes, sized from the
    current standard error (``sem ~ 1/sqrt(k)``) to reach the tolerance, the total
    rounded up to ``first_matvecs * 2^j`` (at least doubling, at most 4x per round). A round that would reach the
    dimension ``n`` is replaced by the exact trace (``n`` more matvecs, ``sem = 0``).
    If the next round would exceed ``max_matvecs``, a final round uses what is left
    of the budget; if the tolerance is still not met a ``RuntimeWarning`` is issued
    and the last estimate returned.

    ``method="auto"`` picks XNysTrace for Gram operators (``sketchtrace.gram``,
    PSD by construction: NTK blocks, ``J^T J``) and XTrace for everything else
    (XTrace needs no symmetry; both are orders of magnitude more accurate than
    Hutchinson when the spectrum decays and no worse than about 2x when it is flat).

    Not jit-able: the loop reads the standard error after each round. Everything
    inside a round is the same code as the fixed-budget estimators.

    Parameters
    ----------
    key : jax.random key or numpy.random.Generator
    op : operator
        Square (PSD for ``"xnystrace"``).
    rtol, atol, max_matvecs : optional
        The tolerances and the hard budget (``num_matvecs`` of the result is the total
        spent), shortcuts for ``stop=StoppingRule(rtol=..., atol=..., max_matvecs=...)``:
        give ``rtol`` and ``max_matvecs`` here or ``stop``, not both (``atol`` defaults to 0).
    method : {"auto", "hutchinson", "xtrace", "xnystrace"}
    stop : StoppingRule, optional
        The whole stopping rule (tolerances, budget, ``confidence``, ``sem_factor``
        (default 1), ``first_matvecs``); see :class:`StoppingRule`.
    options : SketchOptions, optional
        Sampling options (see :class:`SketchOptions`): ``sampler`` is Hutchinson's probes
        (default ``"rademacher"``) or the X-family's test vectors (default ``"improved"``,
        see :func:`sketchtrace.xtrace`); ``mesh`` shards each round's probe rows;
        ``allow_exact=False``: Hutchinson keeps sampling past ``n``, the X-family stays below
        ``n`` test vectors (``True``: a round that would reach ``n`` is the exact trace).
    check_psd : bool
        XNysTrace debug check on the first round (see :func:`sketchtrace.xnystrace`).
    **deprecated
        The keywords of earlier releases, still accepted with a ``DeprecationWarning``:
        ``confidence``, ``sem_factor``, ``first_matvecs`` (now in ``stop=``) and
        ``sampler``, ``chunk_size``, ``backend``, ``mesh``, ``allow_exact``, ``test_vectors``
        (now in ``options=``).

    Returns
    -------
    Estimate
        ``num_matvecs`` is the total number of matvecs spent over all rounds.

    References
    ----------
    E. N. Epperly, J. A. Tropp, R. J. Webber, "XTrace: Making the most of every
    sample in stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45(1), 2024.
    doi:10.1137/23M1548323, arXiv:2301.07825
    M. F. Hutchinson, Commun. Stat. Simul. Comput. 19 (1990). doi:10.1080/03610919008812866
    """
    rule = _stopping_rule(stop, {"rtol": rtol, "atol": atol, "max_matvecs": max_matvecs}, deprecated)
    opts = _trace_options(options, deprecated)
    p = _Plan.build(rule, opts, check_psd=check_psd)
    bk, op, n, max_matvecs, chunk_size = setup(
        key, op, rule.max_matvecs, opts.chunk_size, opts.backend, opts.mesh, method="trace", needs=("quad_forms",)
    )
    p = p.for_operator(resolve_method(method, op), bk, op, n, max_matvecs, chunk_size)
    if p.first >= n and use_exact(p.first, n, p.allow_exact, f"trace(method={p.method!r})", can_oversample=p.per == 1):
        if n > max_matvecs:
            raise ValueError(f"max_matvecs={max_matvecs} is below the first batch (the exact trace, {n} matvecs)")
        return exact_estimate(bk, op, chunk_size, n)
    check_minimum(p.first, _MINIMUM[p.method], f"trace(method={p.method!r}) first_matvecs", "its first batch")
    if max_matvecs < p.first:
        raise ValueError(
            f"max_matvecs={max_matvecs} is below the first batch (first_matvecs={p.first}); "
            f"raise max_matvecs or lower first_matvecs (>= {_MINIMUM[p.method]} for {p.method})"
        )
    return _adaptive_loop(bk, op, key, p)


class _Plan(NamedTuple):
    """The static configuration of one adaptive run (checked once, before any matvec)."""

    rtol: float
    atol: float
    q: float  # Student-t quantile level (1 + confidence) / 2
    first: int
    sampler: object
    sem_factor: float | None
    check_psd: bool
    allow_exact: bool
    method: str = "hutchinson"
    per: int = 1  # matvecs per sample
    improved: bool = False
    dt: object = None
    n: int = 0
    max_matvecs: int = 0
    chunk_size: int | None = None

    @classmethod
    def build(cls, rule: StoppingRule, opts: SketchOptions, *, check_psd):
        """The plan from the checked rule and options (nothing left to validate here)."""
        return cls(
            rtol=rule.rtol,
            atol=rule.atol,
            q=(1.0 + rule.confidence) / 2.0,
            first=rule.first_matvecs,
            sampler=opts.sampler,
            sem_factor=rule.sem_factor,
            check_psd=check_bool(check_psd, name="check_psd"),
            allow_exact=opts.allow_exact,
        )

    def for_operator(self, method, bk, op, n, max_matvecs, chunk_size):
        """Complete the plan once the method and the operator are known."""
        if method == "hutchinson":
            sampler, improved = ("rademacher" if self.sampler is None else self.sampler), False
        else:
            sampler, improved = resolve_test_vectors("improved" if self.sampler is None else self.sampler)
        sem_factor = 1.0 if self.sem_factor is None else self.sem_factor
        return self._replace(
            method=method,
            per=_PER_VECTOR[method],
            sampler=sampler,
            improved=improved,
            sem_factor=sem_factor,
            dt=bk.probe_dtype(op),
            n=n,
            max_matvecs=max_matvecs,
            chunk_size=chunk_size,
        )

    def exact_affordable(self, k_next, spent):
        """Whether a round of ``k_next`` samples should be replaced by the exact trace."""
        return self.allow_exact and self.per * k_next >= self.n and spent + self.n <= self.max_matvecs


def _adaptive_loop(bk, op, key, p: _Plan):
    """Rounds until the interval meets the tolerance, the exact trace is cheaper, or the budget ends."""
    spent, k, state = 0, 0, None
    k_next = p.first // p.per
    while True:
        if p.exact_affordable(k_next, spent):  # a round that would reach the dimension
            exact = exact_estimate(bk, op, p.chunk_size, p.n)
            return Estimate(exact.value, exact.sem, spent + p.n)
        key, rk = bk.split(key, 2)
        state, (t, D) = _run_round(
            bk,
            op,
            rk,
            state,
            new=k_next - k,
            dt=p.dt,
            sampler=p.sampler,
            chunk_size=p.chunk_size,
            n=p.n,
            improved=p.improved,
            method=p.method,
        )
        bk.check_finite("op", t)
        if p.method == "xnystrace" and p.check_psd and k == 0:
            _check_psd(bk, state.Om, state.Y, default_psd_rtol(bk, state.Y.dtype, None))
        spent += p.per * (k_next - k)
        k = k_next
        value, sem = (v[0] for v in summarize(bk.xp, t[:, None], exact=False)) if D is None else x_mean_sem(bk.xp, t, D)
        half, tol = _half_width(bk, value, sem, k, p)
        if half <= tol:
            return Estimate(value, sem, spent)
        k_next = _next_round_size(p, k, half, tol, spent)
        if k_next <= k:
            warnings.warn(
                f"trace(): tolerance not met within max_matvecs={p.max_matvecs} (half-width {half:.3g} > "
                f"{tol:.3g} after {spent} matvecs); returning the last estimate",
                RuntimeWarning,
                stacklevel=3,
            )
            return Estimate(value, sem, spent)


def _half_width(bk, value, sem, k, p: _Plan):
    """The confidence half-width and the tolerance it must meet (host floats)."""
    if not (bk.is_concrete(value) and bk.is_concrete(sem)):
        raise TypeError(
            "trace() is adaptive (it reads the standard error between rounds) and cannot run under "
            "jax.jit/vmap; use xtrace/xnystrace/hutchinson with a fixed num_matvecs inside jit"
        )
    bk.check_finite("op", value)
    v, s = float(np.asarray(value)), float(np.asarray(sem))
    half = p.sem_factor * float(stats.t.ppf(p.q, k - 1)) * s
    return half, max(p.atol, p.rtol * abs(v))


def _next_round_size(p: _Plan, k, half, tol, spent):
    """Samples after the next round (``<= k`` when the budget is spent)."""
    if p.method == "hutchinson":
        # predicted total from sem ~ 1/sqrt(k), rounded up to first * 2^j
        # (few distinct shapes: each is compiled once), at most 4x per round
        want = math.ceil(1.2 * k * (half / tol) ** 2) if tol > 0 else 4 * k
        k_want = p.first
        while k_want < want and k_want < 4 * k:
            k_want *= 2
        k_want = max(k_want, 2 * k)
    else:
        k_want = 2 * k
    if p.exact_affordable(k_want, spent):
        return k_want  # the exact branch at the top of the loop
    room = (p.max_matvecs - spent) // p.per  # samples still affordable
    oversample = not p.allow_exact and p.method == "hutchinson"
    cap = k + room if oversample else (p.n - 1) // p.per
    return min(k_want, k + room, cap)
