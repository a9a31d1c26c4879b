"""Generative bad-input tests: hypothesis draws invalid values per argument class (wrong type,
range, non-finite, structure) and each must give a clear error naming the argument before any work.

A class is closed rather than a case: every draw of a class must be refused with the argument's
name in the message (and a draw of valid NumPy/JAX scalars must be accepted).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import pinn_adapters as pa
import sketchtrace as st
from sketchtrace.validation import check_int, check_probability, check_real

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# values that are never numbers
NOT_NUMBERS = hs.one_of(
    hs.text(max_size=4), hs.none(), hs.booleans(), hs.lists(hs.floats(), min_size=2, max_size=3), hs.just({})
)
NON_FINITE = hs.sampled_from([math.inf, -math.inf, math.nan, np.float32("inf"), np.float64("nan")])


def _net(params, x):
    return jnp.tanh(x @ params["W"] + params["b"]) @ params["v"]


@pytest.fixture(scope="module")
def problem():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"W": jax.random.normal(k1, (1, 4)), "b": jnp.zeros(4), "v": jax.random.normal(k2, (4,))}
    blocks = pa.ResidualBlocks({"res": _net, "bc": _net})
    batch = {"res": jnp.linspace(0.0, 1.0, 6)[:, None], "bc": jnp.asarray([[0.0], [1.0]])}
    return blocks, params, batch


def _refused(fn, name):
    with pytest.raises((TypeError, ValueError)) as info:
        fn()
    assert name in str(info.value), (name, str(info.value))
    return str(info.value)


# ----------------------------------------------------------------------------- the shared validators


@FAST
@given(hs.floats(min_value=1e-6, max_value=1 - 1e-6), hs.sampled_from([float, np.float32, np.float64, jnp.float32]))
def test_numbers_of_every_library_are_accepted(x, kind):
    v = check_probability(kind(x), name="p", low_open=True, high_open=True)
    assert isinstance(v, float) and abs(v - float(kind(x))) == 0


@FAST
@given(hs.one_of(NOT_NUMBERS, NON_FINITE, hs.floats(max_value=0.0), hs.floats(min_value=1.0)))
def test_messages_name_the_argument_and_never_contradict_the_value(bad):
    msg = _refused(lambda: check_real(bad, name="eps", low=0, high=1, low_open=True, high_open=True), "eps")
    assert "in (0, 1)" in msg


@FAST
@given(hs.one_of(NOT_NUMBERS, hs.floats(allow_nan=True), hs.integers(max_value=0)))
def test_positive_integers(bad):
    _refused(lambda: check_int(bad, name="steps", minimum=1), "steps")


# ----------------------------------------------------------------------------- public functions


@FAST
@given(
    hs.one_of(NOT_NUMBERS, NON_FINITE, hs.floats(min_value=-10, max_value=0), hs.floats(min_value=1.0001, max_value=10))
)
def test_ntk_weighting_gamma(problem, bad):
    _refused(lambda: pa.ntk_weighting(problem[0], estimator="pc", gamma=bad), "gamma")


@FAST
@given(hs.one_of(NOT_NUMBERS.filter(lambda v: v is not None), NON_FINITE, hs.floats(min_value=1.0, max_value=5)))
def test_ntk_weighting_ema(problem, bad):
    _refused(lambda: pa.ntk_weighting(problem[0], estimator="exact", ema=bad), "ema")


@FAST
@given(hs.one_of(NON_FINITE, hs.floats(max_value=0.0), hs.text(max_size=3)))
def test_ntk_weighting_h_and_eps(problem, bad):
    _refused(lambda: pa.ntk_weighting(problem[0], estimator="pc", h=bad), "h")
    _refused(lambda: pa.ntk_weights({"a": 1.0, "b": 2.0}, eps=bad), "eps")


@FAST
@given(hs.text(min_size=1, max_size=6).filter(lambda s: s not in ("auto", "params", "residuals", "input", "output")))
def test_ntk_weighting_side(problem, bad):
    _refused(lambda: pa.ntk_weighting(problem[0], estimator="hutchinson", side=bad), "side")


@FAST
@given(hs.one_of(NOT_NUMBERS.filter(lambda v: not isinstance(v, bool)), hs.integers(max_value=0)))
def test_counts(problem, bad):
    _refused(lambda: pa.ntk_weighting(problem[0], every=bad), "every")
    _refused(lambda: st.predictor_corrector(num_probes=bad), "num_probes")


@FAST
@given(hs.one_of(NOT_NUMBERS, NON_FINITE, hs.floats(max_value=0.0), hs.floats(min_value=1.0001, max_value=9)))
def test_dynamic_gamma(bad):
    _refused(lambda: st.predictor_corrector(gamma=bad), "gamma")
    _refused(lambda: st.moving_average(beta=bad), "beta")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hs.sampled_from(["extra", "missing", "empty"]),
)
def test_batches_with_wrong_blocks_are_refused_by_name(problem, case):
    blocks, params, batch = problem
    w = pa.ntk_weighting(blocks, estimator="exact")
    bad = dict(batch)
    if case == "extra":
        bad["ic"] = batch["bc"]
    elif case == "missing":
        del bad["bc"]
    else:
        bad["bc"] = jnp.zeros((0, 1))
    want = {"extra": "'ic'", "missing": "'bc'", "empty": "'bc'"}[case]
    _refused(lambda: w.init(jax.random.key(0), params, bad), want)
    state = w.init(jax.random.key(0), params, batch)
    _refused(lambda: w.update(jax.random.key(1), state, params, params, bad), want)
    res = {n: jnp.zeros(3) for n in blocks.names}
    del res["bc"]
    _refused(lambda: w.update(jax.random.key(1), state, params, params, batch, residuals=res), "residuals")


def test_state_of_another_configuration_or_structure_is_refused(problem):
    blocks, params, batch = problem
    pc = pa.ntk_weighting(blocks, estimator="pc", gamma=0.1)
    exact = pa.ntk_weighting(blocks, estimator="exact")
    s = exact.init(jax.random.key(0), params, batch)
    msg = _refused(lambda: pc.update(jax.random.key(1), s, params, params, batch), "estimator")
    assert "'exact'" in msg and "'pc'" in msg
    _refused(
        lambda: exact.update(
            jax.random.key(1), st.predictor_corrector().init(jax.random.key(0), np.eye(3)), params, params, batch
        ),
        "WeightingState",
    )
    grown = dict(params, b=jnp.zeros(5))
    _refused(lambda: exact.update(jax.random.key(1), s, grown, grown, batch), "params_prev['b']")
    extra = dict(params, c=jnp.zeros(2))
    _refused(lambda: exact.update(jax.random.key(1), s, params, extra, batch), "['c']")
    # at trace time too
    jitted = jax.jit(lambda st_, p: pc.update(jax.random.key(1), st_, p, p, batch))
    _refused(lambda: jitted(s, params), "estimator")


def test_dynamic_state_of_another_operator_size_is_refused_eager_and_under_jit():
    pc = st.predictor_corrector(num_probes=2, gamma=0.2)
    A40, A30 = np.eye(40), np.eye(30)
    s = pc.init(jax.random.key(0), A40)
    _refused(lambda: pc.update(jax.random.key(1), s, A30, A30), "probe dimension n = 40")
    step = jax.jit(lambda s_, a: pc.update(jax.random.key(1), s_, st.as_operator(a), st.as_operator(a)))
    _refused(lambda: step(s, jnp.eye(30)), "probe dimension n = 40")
    other = st.predictor_corrector(num_probes=2, gamma=0.2, sampler="rademacher")
    _refused(lambda: other.update(jax.random.key(1), s, A40, A40), "sampler")
    shapes = jax.eval_shape(lambda: pc.init(jax.random.key(0), A40))
    assert shapes.signature.shape == s.signature.shape  # the metadata survives eval_shape (checkpoints)


def test_train_accepts_a_python_float_relative_l2():
    """The documented contract: ``relative_l2(params)`` may return a Python float (not traceable)."""
    import dataclasses

    prob = pa.problems.wave1d(layers=(2, 6, 1), n_res=8, n_bc=2)
    calls = []

    def rel(params):
        calls.append(1)
        return float(np.asarray(params[0]["b"]).sum() * 0 + 0.5)  # leaves JAX: a Python float

    none = pa.ntk_weighting(prob.blocks, estimator="none")
    res = pa.train(dataclasses.replace(prob, relative_l2=rel), steps=2, log_every=1, progress=False, weighting=none)
    assert res.history["relative_l2"][-1] == 0.5 and calls


def test_results_files_respect_the_umask(tmp_path):
    import os

    from pinn_adapters.app._checkpoint import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "r.json").st_mode & 0o777) == 0o644
