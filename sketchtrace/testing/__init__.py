"""Testing helpers for trace estimators, ours and users' own.

* :func:`assert_unbiased` / :func:`check_unbiased`: a t-test with a stated
  false-alarm rate and power; :func:`detectable_bias`, :func:`trials_needed` and
  :func:`check_power` size it (the smallest bias detected with probability 0.99);
* :mod:`sketchtrace.testing.strategies`: hypothesis strategies for test operators
  with exact traces (imported lazily; needs ``hypothesis``).
"""

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
    "UnbiasednessReport",
    "assert_unbiased",
    "check_power",
    "check_unbiased",
    "detectable_bias",
    "strategies",
    "trials_needed",
]
