"""The testing helpers users run on their own estimators: false alarms, power, messages."""

import math

import jax
import numpy as np
import pytest

import sketchtrace as st
from sketchtrace.testing import assert_unbiased, check_unbiased, detectable_bias

A = np.diag(np.arange(1.0, 9.0)) + 0.3


def _hutch(seed, m=4):
    return st.hutchinson(jax.random.key(seed), A, num_matvecs=m)


def test_accepts_an_unbiased_estimator():
    rep = assert_unbiased(_hutch, np.trace(A), num_trials=300)
    assert rep.passed and abs(rep.z) <= rep.threshold


def test_rejects_a_biased_estimator_and_says_by_how_much():
    def biased(seed):  # divides by m + 1 instead of m: a 20% bias at m = 4
        return float(_hutch(seed).value) * 4 / 5

    with pytest.raises(AssertionError, match=r"off by -\d+\.\d+ standard errors"):
        assert_unbiased(biased, np.trace(A), num_trials=300)


def test_false_alarm_rate_is_as_stated():
    """With false_alarm=0.05 about 5% of unbiased Gaussian experiments fail."""
    rng = np.random.default_rng(0)
    fails = sum(not check_unbiased(rng.standard_normal(50), 0.0, false_alarm=0.05).passed for _ in range(2000))
    # binomial(2000, 0.05): mean 100, sd 9.7
    assert 100 - 5 * 9.75 <= fails <= 100 + 5 * 9.75


def test_power_matches_detectable_bias():
    """A bias equal to detectable_bias(power=0.99) is caught in about 99% of experiments."""
    rng = np.random.default_rng(1)
    n, fa = 200, 1e-3
    b = detectable_bias(1.0, n, false_alarm=fa, power=0.99)
    caught = sum(not check_unbiased(b + rng.standard_normal(n), 0.0, false_alarm=fa).passed for _ in range(1000))
    assert caught >= 960  # binomial(1000, 0.99): sd 3.1


def test_detectable_bias_documented_number():
    # the docstring's example: false_alarm=1e-6, N=1000 -> about 7.2 std / sqrt(N)
    b = detectable_bias(1.0, 1000)
    assert math.isclose(b * math.sqrt(1000), 7.2, rel_tol=0.02)


def test_exact_estimators_are_compared_exactly():
    assert check_unbiased([2.0] * 20, 2.0).passed
    assert not check_unbiased([2.0] * 20, 2.1).passed


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_trials must be at least 10"):
        check_unbiased([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="false_alarm"):
        check_unbiased(np.ones(20), 1.0, false_alarm=0.7)
    with pytest.raises(AssertionError, match="non-finite values at trials"):
        check_unbiased([1.0] * 19 + [np.nan], 1.0)
    with pytest.raises(TypeError, match="num_trials must be an int"):
        assert_unbiased(_hutch, 1.0, num_trials=10.5)
