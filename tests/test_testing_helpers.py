"""The testing helpers users run on their own estimators: false alarms, power, messages."""

import math

import jax
import numpy as np
import pytest

import sketchtrace as st
from sketchtrace.testing import assert_unbiased, check_power, check_unbiased, detectable_bias, trials_needed

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


def test_trials_needed_inverts_detectable_bias():
    for std, bias, fa in ((1.0, 0.1, 1e-6), (3.0, 0.05, 1e-3), (0.5, 2.0, 1e-6)):
        n = trials_needed(std, bias, false_alarm=fa)
        assert detectable_bias(std, n, false_alarm=fa) <= bias
        assert n == 10 or detectable_bias(std, n - 1, false_alarm=fa) > bias
    with pytest.raises(ValueError, match="bias must be nonzero"):
        trials_needed(1.0, 0.0)


def test_check_power_rejects_an_underpowered_test():
    """A passing test that could not have seen a 1% bias is reported as under-powered."""
    rng = np.random.default_rng(2)
    rep = check_unbiased(10.0 + rng.standard_normal(100), 10.0)  # detects ~0.7 = 7% of the truth
    assert rep.passed and rep.relative_detectable_bias(10.0) > 0.05
    with pytest.raises(AssertionError, match=r"under-powered.*about \d+ trials"):
        check_power(rep, 10.0, 0.01)
    assert check_power(rep, 10.0, 0.1) is rep
    enough = trials_needed(rep.std, 0.09, false_alarm=1e-6)  # 10% margin for the spread of std
    rep2 = check_unbiased(10.0 + rng.standard_normal(enough), 10.0)
    check_power(rep2, 10.0, 0.01)  # sized by trials_needed: powerful enough (same spread, up to sampling)


def test_assert_unbiased_detect_rtol():
    with pytest.raises(AssertionError, match="under-powered"):
        assert_unbiased(_hutch, np.trace(A), num_trials=20, detect_rtol=0.001)
    rep = assert_unbiased(_hutch, np.trace(A), num_trials=300, detect_rtol=0.2)
    assert rep.relative_detectable_bias(np.trace(A)) <= 0.2
