"""Statistical test for unbiasedness of randomized estimators."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

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

    def relative_detectable_bias(self, truth) -> float:
        """``detectable_bias / |truth|``: the smallest relative bias detected with probability 0.99."""
        return self.detectable_bias / abs(float(truth)) if float(truth) != 0 else math.inf

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


def trials_needed(std, bias, *, false_alarm=1e-6, power=0.99) -> int:
    """Fewest independent trials for which :func:`assert_unbiased` detects ``bias`` with probability ``power``.

    The inverse of :func:`detectable_bias`: the smallest ``N`` with
    ``detectable_bias(std, N) <= |bias|``. Size a test from a pilot estimate of the
    spread ``std`` of one trial, e.g. ``trials_needed(std, 0.01 * truth)`` for a 1% bias.
    """
    std, bias = float(std), abs(float(bias))
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be finite and >= 0; got {std}")
    if not bias > 0:
        raise ValueError(f"bias must be nonzero; got {bias}")
    z = float(stats.norm.isf(false_alarm / 2.0)) + float(stats.norm.isf(1 - power))

    def enough(n):
        return detectable_bias(std, n, false_alarm=false_alarm, power=power) <= bias

    lo = max(10, math.ceil((z * std / bias) ** 2))  # the normal approximation: a lower bound
    if enough(lo):
        return lo
    hi = 2 * lo
    while not enough(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # bisect: enough(hi), not enough(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


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
    return UnbiasednessReport(
        mean, std, sem, z, thr, n, detectable_bias(std, n, false_alarm=false_alarm), abs(z) <= thr
    )


def check_power(report: UnbiasednessReport, truth, rtol: float) -> UnbiasednessReport:
    """Raise ``AssertionError`` when ``report``'s test cannot detect a relative bias ``rtol`` of ``truth``.

    A test that passes says little unless it would have failed on the bias you care
    about: this requires ``report.detectable_bias <= rtol * |truth|`` (power 0.99 at the
    report's false-alarm rate) and says how many trials would be needed otherwise.
    """
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0; got {rtol!r}")
    want = rtol * abs(float(truth))
    if report.detectable_bias > want:
        need = trials_needed(report.std, want, false_alarm=_false_alarm(report))
        raise AssertionError(
            f"the test is under-powered: it detects a bias of {report.detectable_bias:.3g} "
            f"({report.detectable_bias / abs(float(truth)):.2%} of the truth) with probability 0.99, more than "
            f"rtol={rtol:g}; about {need} trials would detect it (this spread), or use a lower-variance case"
        )
    return report


def _false_alarm(report):
    return 2.0 * float(stats.t.sf(report.threshold, report.num_trials - 1))


def assert_unbiased(
    estimate_fn: Callable, truth, *, num_trials: int, false_alarm: float = 1e-6, seeds=None, detect_rtol=None
):
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
    detect_rtol : float, optional
        Also require the test to be powerful enough to detect a relative bias
        ``detect_rtol`` of ``truth`` with probability 0.99 (see :func:`check_power`);
        an under-powered test raises ``AssertionError`` saying how many trials it needs.

    Returns
    -------
    UnbiasednessReport

    Notes
    -----
    Power: a bias ``b`` is detected with probability 0.99 when
    ``|b| >= (t + 2.33) * std / sqrt(num_trials)``, ``t`` the Student-t quantile at
    ``1 - false_alarm / 2`` (``t = 4.9`` for ``1e-6``); see :func:`detectable_bias`.
    The failure message says by how many standard errors the mean is off.
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
    if detect_rtol is not None:
        check_power(report, truth, detect_rtol)
    return report
