"""Testing helpers for trace estimators, ours and users' own.

* :func:`assert_unbiased` / :func:`check_unbiased`: a t-test with a stated
  false-alarm rate and power; :func:`detectable_bias`, :func:`trials_needed` and
  :func:`check_power` size it (the smallest bias detected with probability 0.99);
* :func:`check_coverage` / :func:`assert_coverage`: does ``value +- 1.96 sem`` cover
  the truth 95 % of the time? :func:`coverage_trials_needed` sizes it (binomial);
* :mod:`sketchtrace.testing.strategies`: hypothesis strategies for test operators
  with exact traces (imported lazily; needs ``hypothesis``).
"""

from ._coverage import CoverageReport, assert_coverage, check_coverage, coverage_trials_needed
from ._unbiased import (
    UnbiasednessReport,
    assert_unbiased,
    check_power,
    check_unbiased,
    detectable_bias,
    trials_needed,
)


def __getattr__(name):
    if name == "strategies":
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(name)


__all__ = [
    "CoverageReport",
    "assert_coverage",
    "check_coverage",
    "coverage_trials_needed",
    "UnbiasednessReport",
    "assert_unbiased",
    "check_power",
    "check_unbiased",
    "detectable_bias",
    "strategies",
    "trials_needed",
]
