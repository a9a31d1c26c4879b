"""Coverage of reported standard errors: does ``value +- q * sem`` contain the truth as often as claimed?"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import stats

from .._optional import jax
from ..validation import check_choice, check_int, check_real


class CoverageReport(NamedTuple):
    """What :func:`check_coverage` measured.

    ``coverage`` is the fraction of trials whose interval ``value +- quantile * sem``
    contained ``truth``; the check passes when it lies in ``[low, high]``.
    ``z`` holds each trial's ``(value - truth) / sem``.
    """

    coverage: float
    num_trials: int
    level: float
    quantile: float
    low: float
    high: float
    passed: bool
    z: np.ndarray

    def describe(self) -> str:
        worst = float(np.max(np.abs(self.z))) if self.z.size else 0.0
        return (
            f"the nominal {self.level:.0%} interval (+-{self.quantile:.3g} sem) covered the truth in "
            f"{self.coverage:.1%} of {self.num_trials} trials (accepted: {self.low:.0%} to {self.high:.0%}); "
            f"largest |z| {worst:.3g}"
        )


def _accepts(n, p, low, high):
    """P(low <= K/n <= high) for K ~ Binomial(n, p)."""
    k_lo, k_hi = math.ceil(low * n - 1e-9), math.floor(high * n + 1e-9)
    return float(stats.binom.cdf(k_hi, n, p) - stats.binom.cdf(k_lo - 1, n, p))


def coverage_trials_needed(*, level=0.95, low=0.90, high=0.98, false_alarm=1e-3, overconfident=0.85, power=0.99) -> int:
    """Fewest trials for which :func:`check_coverage` is a sized test.

    The smallest ``N`` such that an estimator whose intervals cover with exactly ``level``
    fails the check with probability at most ``false_alarm``, and one that covers with
    ``overconfident`` (< ``low``) passes with probability at most ``1 - power``
    (exact binomial probabilities).
    """
    for name, v in (("level", level), ("low", low), ("high", high), ("overconfident", overconfident)):
        check_real(v, name=name)
        if not 0 < v < 1:
            raise ValueError(f"{name} must lie in (0, 1); got {v}")
    if not overconfident < low <= level <= high:
        raise ValueError(f"need overconfident < low <= level <= high; got {overconfident}, {low}, {level}, {high}")
    for n in range(10, 100_000):
        if 1 - _accepts(n, level, low, high) <= false_alarm and _accepts(n, overconfident, low, high) <= 1 - power:
            return n
    raise ValueError("no number of trials below 100000 sizes this test; widen [low, high]")


def _run(fn, keys, batch):
    if batch == "map":
        return jax.jit(lambda ks: jax.lax.map(fn, ks))(keys)
    if batch == "vmap":
        return jax.jit(jax.vmap(fn))(keys)
    outs = [fn(k) for k in keys]
    return tuple(np.stack([np.asarray(o[i]) for o in outs]) for i in range(2))


def check_coverage(
    estimate_fn: Callable,
    truth,
    trials: int,
    *,
    key=None,
    level: float = 0.95,
    low: float = 0.90,
    high: float = 0.98,
    dof=None,
    batch: str = "map",
    exact_rtol: float = 1e-5,
) -> CoverageReport:
    """Run ``estimate_fn(key)`` over ``trials`` independent keys and measure interval coverage.

    ``estimate_fn`` returns an :class:`~sketchtrace.Estimate` (or any ``(value, sem, ...)``
    tuple) for one key. The interval is ``value +- q * sem`` with ``q`` the two-sided
    ``level`` quantile of the normal law, or of Student's t with ``dof`` degrees of
    freedom when given (e.g. ``num_probes - 1`` for a sem from ``num_probes`` replicas).
    ``batch="map"`` (default) compiles a ``jax.lax.map`` over the keys (safe with
    LAPACK-calling estimators), ``"vmap"`` a ``jax.vmap`` (faster), ``"loop"`` calls
    ``estimate_fn`` eagerly per key (for estimators that cannot be traced).
    A zero sem (an exact answer) covers when ``|value - truth| <= exact_rtol * |truth|``.
    Size ``trials`` with :func:`coverage_trials_needed`.
    """
    trials = check_int(trials, name="trials", minimum=1)
    check_real(level, name="level")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if not low <= high:
        raise ValueError(f"low must be <= high; got low={low}, high={high}")
    if key is None:
        key = jax.random.key(0)
    keys = jax.random.split(key, trials)
    check_choice(batch, ("map", "vmap", "loop"), name="batch")
    out = _run(lambda k: tuple(estimate_fn(k))[:2], keys, batch)
    value = np.asarray(out[0], dtype=float).reshape(trials, -1)[:, 0]
    sem = np.asarray(out[1], dtype=float).reshape(trials, -1)[:, 0]
    if dof is None:
        q = float(stats.norm.isf((1 - level) / 2))
    else:
        d = check_int(dof, name="dof", minimum=1)
        q = float(stats.t.isf((1 - level) / 2, d))
    err = value - float(truth)
    err = np.where(np.abs(err) <= exact_rtol * abs(float(truth)), 0.0, err)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sem > 0, err / sem, np.where(err == 0, 0.0, np.inf))
    covered = np.abs(z) <= q
    cov = float(np.mean(covered))
    return CoverageReport(cov, trials, float(level), q, float(low), float(high), bool(low <= cov <= high), z)


def assert_coverage(estimate_fn, truth, trials, **kwargs) -> CoverageReport:
    """:func:`check_coverage`, raising ``AssertionError`` with its description when it fails."""
    report = check_coverage(estimate_fn, truth, trials, **kwargs)
    if not report.passed:
        raise AssertionError(report.describe())
    return report
