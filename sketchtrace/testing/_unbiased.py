"""Statistical test for unbiasedness of randomized estimators."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
from scipy import stats


class UnbiasednessReport(NamedTuple):
    """What :func:`check_unbiased` measured.

    ``z`` is the bias in standard errors, ``threshold`` the largest ``|z|`` the test
    accepts, ``detectable_bias`` the bias detected with 99% probability at this
    number of trials (in the units of the estimates).
    """

    mean: float
    std: float
    sem: float
    z: float
    threshold: float
    num_trials: int
    detectable_bias: float
    passed: bool

    def describe(self, truth) -> str:
        return (
            f"mean {self.mean:.6g} vs truth {float(truth):.6g}: off by {self.z:+.2f} standard errors "
            f"(sem {self.sem:.3g} over {self.num_trials} trials; the test allows {self.threshold:.2f}; "
            f"it detects a bias of {self.detectable_bias:.3g} with probability 0.99)"
        )


def _threshold(num_trials: int, false_alarm: float) -> float:
    return float(stats.t.isf(false_alarm / 2.0, num_trials - 1))


def detectable_bias(std, num_trials, *, false_alarm=1e-6, power=0.99) -> float:
    """Smallest bias that :func:`assert_unbiased` detects with probability ``power``.

    For estimates with standard deviation ``std`` over ``num_trials`` independent
    trials it is ``(t_{1 - false_alarm/2, N-1} + z_power) * std / sqrt(N)``. Example:
    ``false_alarm=1e-6`` and ``N = 1000`` detect a bias of ``7.2 std / sqrt(N)``,
    i.e. ``0.23 std``, with probability 0.99.
    """
    return (_threshold(num_trials, false_alarm) + float(stats.norm.isf(1 - power))) * std / math.sqrt(num_trials)


def check_unbiased(samples, truth, *, false_alarm=1e-6, exact_rtol=1e-6) -> UnbiasednessReport:
    """Two-sided t-test of ``mean(samples) == truth`` at false-alarm rate ``false_alarm``.

    The test statistic is ``(mean - truth) / (s / sqrt(N))`` compared with the
    Student-t quantile at ``1 - false_alarm / 2`` with ``N - 1`` degrees of
    freedom. The false-alarm rate is exact for Gaussian samples and asymptotic
    (central limit theorem) otherwise: use at least a few hundred trials for
    heavy-tailed estimators (e.g. one-probe Hutchinson). Samples that are all
    equal (an exact estimator) must equal ``truth`` to relative accuracy ``exact_rtol``.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    n = x.size
    if n < 10:
        raise ValueError(f"num_trials must be at least 10 for a meaningful test; got {n}")
    if not 0 < false_alarm < 0.5:
        raise ValueError(f"false_alarm must be in (0, 0.5); got {false_alarm}")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise AssertionError(f"estimator returned non-finite values at trials {bad[:10].tolist()}")
    truth = float(truth)
    mean, std = float(x.mean()), float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    thr = _threshold(n, false_alarm)
    if sem == 0.0 or sem <= 1e-14 * max(1.0, abs(mean)):
        ok = abs(mean - truth) <= exact_rtol * max(1.0, abs(truth))
        z = 0.0 if mean == truth else math.copysign(math.inf, mean - truth)
        return UnbiasednessReport(mean, std, sem, z, thr, n, 0.0, ok)
    z = (mean - truth) / sem
    return UnbiasednessReport(mean, std, sem, z, thr, n, detectable_bias(std, n, false_alarm=false_alarm), abs(z) <= thr)


def assert_unbiased(estimate_fn: Callable, truth, *, num_trials: int, false_alarm: float = 1e-6, seeds=None):
    """Assert that a randomized estimator is unbiased for ``truth``.

    Parameters
    ----------
    estimate_fn : callable
        ``estimate_fn(seed) -> float`` (or an :class:`~sketchtrace.Estimate`, whose
        ``value`` is used). Called once per trial with seeds ``0 .. num_trials-1``
        (or the given ``seeds``); each call must use independent randomness.
    truth : float
        The exact value.
    num_trials : int
        Number of independent trials (at least 10; a few hundred for heavy tails).
    false_alarm : float
        Probability that an unbiased estimator fails the test (two-sided t-test).

    Power: a bias ``b`` is detected with probability 0.99 when
    ``|b| >= (t + 2.33) * std / sqrt(num_trials)``, ``t`` the Student-t quantile at
    ``1 - false_alarm / 2`` (``t = 4.9`` for ``1e-6``); see :func:`detectable_bias`.
    The failure message says by how many standard errors the mean is off.

    Returns
    -------
    UnbiasednessReport
    """
    if isinstance(num_trials, bool) or not isinstance(num_trials, int):
        raise TypeError(f"num_trials must be an int; got {num_trials!r}")
    seeds = range(num_trials) if seeds is None else list(seeds)
    vals = []
    for s in seeds:
        out = estimate_fn(s)
        vals.append(float(getattr(out, "value", out)))
    report = check_unbiased(vals, truth, false_alarm=false_alarm)
    if not report.passed:
        raise AssertionError("estimator looks biased: " + report.describe(truth))
    return report
