"""Adaptive trace(): coverage of its tolerance over seeds, budgets, method rule, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_catches_scale, assert_unbiased_powered, low_variance_matrix
from hypothesis import given, settings
from hypothesis import strategies as hst
from test_hutchpp import Counting, _jac_case, _matrix, _mlp

import sketchtrace as st

SEEDS = 200


def _coverage(op, truth, rtol, method, max_matvecs, seeds=SEEDS, sem_factor=None):
    hits, spent = 0, []
    stop = st.StoppingRule(rtol=rtol, max_matvecs=max_matvecs, sem_factor=sem_factor)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a run that gives up would invalidate the test
        for s in range(seeds):
            e = st.trace(jax.random.key(s), op, method=method, stop=stop)
            hits += abs(float(e.value) - truth) <= rtol * abs(truth)
            spent.append(int(e.num_matvecs))
    return hits / seeds, np.array(spent)


# Slack: with 200 seeds the observed coverage of a procedure whose true coverage is
# exactly 0.95 falls below 0.95 - 0.05 = 0.90 with probability < 0.3% (binomial).
SLACK = 0.05


@pytest.mark.parametrize(
    "method,rtol",
    [("auto", 1e-2), ("xnystrace", 1e-3), ("hutchinson", 0.1)],
    ids=["auto-xtrace", "xnystrace", "hutchinson"],
)
def test_meets_tolerance_in_confidence_of_runs(method, rtol):
    A, tr = _matrix(n=150, decay=0.9)
    op = st.as_operator(jnp.asarray(A))
    cov, spent = _coverage(op, tr, rtol, method, 149)
    assert cov >= 0.95 - SLACK, (cov, np.median(spent))
    assert spent.max() <= 149
    # the test exercises adaptivity: runs stop at different sizes, before the budget
    assert spent.min() < 149


def test_coverage_check_fails_on_overconfident_variant():
    # the same check with an interval 8x too narrow (sem_factor = 1/8) must fail
    A, tr = _matrix(n=150, decay=0.9)
    op = st.as_operator(jnp.asarray(A))
    cov, _ = _coverage(op, tr, 1e-2, "xtrace", 149, seeds=100, sem_factor=0.125)
    assert cov < 0.95 - SLACK, cov


def test_auto_rule_and_gram_operator():
    params, x, jac = _jac_case()
    g = st.gram(st.JacobianOperator(_mlp, params, x), side="input")  # 16 x 16, PSD, rank 8
    truth = float(np.sum(jac * jac))
    assert st.estimators._adaptive.resolve_method("auto", g) == "xnystrace"
    assert st.estimators._adaptive.resolve_method("auto", st.as_operator(np.eye(3))) == "xtrace"
    e = st.trace(jax.random.key(0), g, rtol=1e-6, max_matvecs=16, check_psd=True)
    np.testing.assert_allclose(float(e.value), truth, rtol=1e-6)
    assert int(e.num_matvecs) <= 16


def test_reaches_exact_answer_when_dimension_is_small():
    A, tr = _matrix(n=20, decay=0.99)
    e = st.trace(jax.random.key(0), A, rtol=1e-12, max_matvecs=100, method="xtrace")
    np.testing.assert_allclose(float(e.value), tr, rtol=1e-12)
    assert float(e.sem) == 0.0 and int(e.num_matvecs) <= 100


def test_warns_and_returns_when_budget_runs_out():
    A, tr = _matrix(n=100, decay=0.99)
    with pytest.warns(RuntimeWarning, match="tolerance not met"):
        e = st.trace(jax.random.key(0), A, rtol=1e-9, max_matvecs=40, method="xtrace")
    assert int(e.num_matvecs) <= 40 and np.isfinite(float(e.value))


@settings(max_examples=6)
@given(
    n=hst.integers(5, 40), budget=hst.integers(16, 60), method=hst.sampled_from(["hutchinson", "xtrace", "xnystrace"])
)
def test_budget_never_exceeded(n, budget, method):
    A, _ = _matrix(n=n, decay=0.95)
    op = Counting(A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        e = st.trace(jax.random.key(1), op, rtol=1e-8, max_matvecs=budget, method=method)
    assert op.count == int(e.num_matvecs) <= budget


def test_reproducible():
    A, _ = _matrix(n=80)
    a = st.trace(jax.random.key(3), A, rtol=1e-2, max_matvecs=79)
    b = st.trace(jax.random.key(3), A, rtol=1e-2, max_matvecs=79)
    assert float(a.value) == float(b.value) and int(a.num_matvecs) == int(b.num_matvecs)


def test_bad_input():
    A, _ = _matrix(n=40)
    k = jax.random.key(0)
    for rtol in (0.0, -1e-3):
        with pytest.raises(ValueError, match="rtol must be > 0"):
            st.trace(k, A, rtol=rtol, max_matvecs=30)
    with pytest.raises(TypeError, match="rtol"):
        st.trace(k, A, rtol="1e-3", max_matvecs=30)
    with pytest.raises(ValueError, match="atol"):
        st.trace(k, A, rtol=1e-3, atol=-1.0, max_matvecs=30)
    with pytest.raises(ValueError, match="confidence"):
        st.trace(k, A, stop=st.StoppingRule(rtol=1e-3, confidence=1.0, max_matvecs=30))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="confidence"):
        st.trace(k, A, rtol=1e-3, confidence=1.0, max_matvecs=30)  # the old keyword: same check
    with pytest.raises(ValueError, match="below the first batch"):
        st.trace(k, A, rtol=1e-3, max_matvecs=10)  # first batch: 16
    with pytest.raises(ValueError, match="method"):
        st.trace(k, A, rtol=1e-3, max_matvecs=30, method="hutchpp")
    with pytest.raises(ValueError, match="at least 4"):
        st.trace(k, A, method="xtrace", stop=st.StoppingRule(rtol=1e-3, max_matvecs=30, first_matvecs=3))
    with pytest.raises(TypeError, match="jax.jit"):
        jax.jit(lambda kk: st.trace(kk, jnp.asarray(A), rtol=1e-3, max_matvecs=30).value)(k)
    B = A - 2 * np.eye(40) * np.abs(A).max()
    with pytest.raises(ValueError, match="positive semidefinite"):
        st.trace(k, B, rtol=1e-3, max_matvecs=30, method="xnystrace", check_psd=True)


# ----------------------------------------------------------------------------- powered unbiasedness


@pytest.mark.parametrize("method,shift,rank,first,trials", [("hutchinson", 2.0, 0, 4, 50), ("xtrace", 1.0, 3, 8, 100)])
def test_unbiased_detects_one_percent(method, shift, rank, first, trials):
    """The grown estimate (every round, budget spent: no data-dependent stopping) is unbiased.

    The tolerance is never met, so each run goes through all rounds up to
    ``max_matvecs = 24`` (sketch extension for XTrace, fresh batches for Hutchinson).
    Stated detectable relative bias (power 0.99, false alarm 1e-6): Hutchinson on
    ``2 I + 0.05 E`` about 0.1%, XTrace on ``I + rank-3 + 0.05 E`` about 0.8%. The same
    samples scaled by 1.01 fail. (Coverage of the stopping rule: the tests above.)
    """
    n = 30 if method == "hutchinson" else 60
    A = low_variance_matrix(n, shift=shift, rank=rank)
    vals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tolerance not met: by design
        for seed in range(trials):
            rule = st.StoppingRule(rtol=1e-6, max_matvecs=24, first_matvecs=first)
            e = st.trace(jax.random.key(seed), A, method=method, stop=rule)
            assert int(e.num_matvecs) == 24
            vals.append(float(e.value))
    rep = assert_unbiased_powered(vals, np.trace(A))
    assert rep.relative_detectable_bias(np.trace(A)) <= 0.01
    assert_catches_scale(vals, np.trace(A))


# ----------------------------------------------------------------------------- grouped arguments


def _same(a, b):
    return float(a.value) == float(b.value) and int(a.num_matvecs) == int(b.num_matvecs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # rtol=1e-3 in 30 matvecs: the budget ends first
def test_stop_and_options_objects_equal_the_old_keywords():
    """stop=StoppingRule(...) and options=SketchOptions(...) run exactly what the old keywords ran;
    each moved keyword still works for one release, with a DeprecationWarning naming its new place."""
    A, _ = _matrix(n=40)
    k = jax.random.key(4)
    rule = st.StoppingRule(rtol=1e-3, max_matvecs=30, atol=0.5, confidence=0.9, sem_factor=1.5, first_matvecs=8)
    opts = st.SketchOptions(sampler="gaussian", chunk_size=3)
    new = st.trace(k, A, method="hutchinson", stop=rule, options=opts)
    with pytest.warns(DeprecationWarning) as record:
        old = st.trace(
            k, A, rtol=1e-3, atol=0.5, max_matvecs=30, method="hutchinson",
            confidence=0.9, sem_factor=1.5, first_matvecs=8, sampler="gaussian", chunk_size=3,
        )  # fmt: skip
    assert _same(new, old)
    messages = " ".join(str(w.message) for w in record)
    for name in ("confidence", "sem_factor", "first_matvecs"):
        assert f"trace({name}=...) is deprecated; use trace(..., stop=sketchtrace.StoppingRule({name}=...))" in messages
    for name in ("sampler", "chunk_size"):
        assert f"options=sketchtrace.SketchOptions({name}=...)" in messages
    assert all(w.filename == __file__ for w in record)  # the warning points at the caller
    # the shortcuts rtol/atol/max_matvecs are not deprecated and equal the rule
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        short = st.trace(k, A, rtol=1e-3, max_matvecs=30, method="xtrace")
        full = st.trace(k, A, method="xtrace", stop=st.StoppingRule(rtol=1e-3, max_matvecs=30))
    assert _same(short, full)
    # the options matter: another sampler, another estimate
    assert not _same(new, st.trace(k, A, method="hutchinson", stop=rule, options=opts.replace(sampler="rademacher")))


def test_deprecated_trace_keywords_each_warn():
    A, _ = _matrix(n=40)
    k = jax.random.key(0)
    moved = {
        "first_matvecs": 8, "confidence": 0.9, "sem_factor": 2.0, "allow_exact": True,
        "backend": "jax", "mesh": None, "chunk_size": 4, "sampler": "sphere", "test_vectors": "sphere",
    }  # fmt: skip
    for name, value in moved.items():
        with pytest.warns(DeprecationWarning, match=rf"trace\({name}=\.\.\.\) is deprecated"):
            st.trace(k, A, rtol=0.5, max_matvecs=30, **{name: value})


def test_grouped_arguments_bad_input():
    A, _ = _matrix(n=40)
    k = jax.random.key(0)
    with pytest.raises(TypeError, match="trace\\(\\) needs rtol="):
        st.trace(k, A, max_matvecs=30)
    with pytest.raises(TypeError, match="needs rtol= and max_matvecs="):
        st.trace(k, A)
    rule = st.StoppingRule(rtol=0.1, max_matvecs=30)
    with pytest.raises(TypeError, match=r"give rtol= either as a keyword or in stop="):
        st.trace(k, A, rtol=0.2, stop=rule)
    with pytest.raises(TypeError, match="stop must be a sketchtrace.StoppingRule"):
        st.trace(k, A, stop={"rtol": 0.1})
    with pytest.raises(TypeError, match="options must be a sketchtrace.SketchOptions"):
        st.trace(k, A, stop=rule, options={"chunk_size": 2})
    with pytest.raises(TypeError, match="unexpected keyword argument 'tolerance'"):
        st.trace(k, A, stop=rule, tolerance=0.1)
    with pytest.raises(TypeError, match="give sampler= only"):
        st.trace(k, A, stop=rule, options=st.SketchOptions(sampler="sphere"), test_vectors="sphere")
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="either as a keyword or in options="):
        st.trace(k, A, stop=rule, options=st.SketchOptions(), chunk_size=2)
    # the rule is checked when built, with the same messages as the keywords
    for bad, match in [
        (dict(rtol=0.0), "rtol must be > 0"),
        (dict(atol=-1.0), "atol must be >= 0"),
        (dict(confidence=1.0), r"confidence must be in \(0, 1\)"),
        (dict(sem_factor=0.0), "sem_factor must be > 0"),
        (dict(first_matvecs=0), "first_matvecs must be >= 1"),
        (dict(max_matvecs=0), "max_matvecs must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            st.StoppingRule(**{"rtol": 0.1, "max_matvecs": 30, **bad})
    with pytest.raises(TypeError):
        st.StoppingRule(0.1, 30)  # keyword-only: no silent swap of rtol and max_matvecs
    assert rule.replace(confidence=0.99).confidence == 0.99 and hash(rule) == hash(rule.replace())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # rtol=1e-9: the budget ends first, by design
def test_round_compiled_once_per_backend_and_variant():
    """The adaptive round is held by one BackendCompiled object, not a module-level cache."""
    from sketchtrace.estimators import _adaptive
    from sketchtrace.estimators._compiled import BackendCompiled

    assert isinstance(_adaptive._COMPILED_ROUND, BackendCompiled)
    assert not hasattr(_adaptive, "_compiled_round")
    A, _ = _matrix(n=40)
    _adaptive._COMPILED_ROUND.cache_clear()
    first = st.trace(jax.random.key(0), A, rtol=1e-9, max_matvecs=30, method="hutchinson")
    again = st.trace(jax.random.key(0), A, rtol=1e-9, max_matvecs=30, method="hutchinson")
    assert len(_adaptive._COMPILED_ROUND._compiled) == 1 and _same(first, again)
