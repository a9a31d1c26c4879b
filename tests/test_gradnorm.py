"""Gradient-norm weighting: against a hand computation, and its schedule (every, momentum)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import pinn_adapters as pa


@pytest.fixture(scope="module")
def setup():
    prob = pa.problems.wave1d(layers=(2, 8, 8, 1), n_res=24, n_bc=8)
    params = prob.init_params(jax.random.key(0))
    batch = prob.sample_batch(jax.random.key(1))
    return prob, params, batch


def hand_weights(prob, params, batch):
    """``sum_j ||grad L_j|| / ||grad L_b||`` with one ``jax.grad`` per block."""
    norms = {}
    for n in prob.blocks.names:
        g = jax.grad(lambda p, n=n: prob.blocks.losses(prob.blocks.residuals(p, batch))[n])(params)
        norms[n] = float(jnp.linalg.norm(ravel_pytree(g)[0]))
    total = sum(norms.values())
    return {n: total / v for n, v in norms.items()}, norms


def test_gradnorm_weights_match_hand_computation(setup):
    prob, params, batch = setup
    want, norms = hand_weights(prob, params, batch)
    got = pa.gradnorm_weighting(prob.blocks).init(jax.random.key(2), params, batch)
    for n in prob.blocks.names:
        np.testing.assert_allclose(float(got.weights[n]), want[n], rtol=1e-10)
        np.testing.assert_allclose(float(got.traces[n]), norms[n], rtol=1e-10)  # the norms are the raw "traces"


def test_gradnorm_sum_reduction(setup):
    prob, params, batch = setup
    blocks = pa.ResidualBlocks(dict(prob.blocks.fns), reduction="sum")
    prob_sum = dataclasses.replace(prob, blocks=blocks)
    want, _ = hand_weights(prob_sum, params, batch)
    got = pa.gradnorm_weighting(blocks).init(jax.random.key(2), params, batch)
    for n in blocks.names:
        np.testing.assert_allclose(float(got.weights[n]), want[n], rtol=1e-10)


def test_gradnorm_schedule_every_and_momentum(setup):
    prob, params, batch = setup
    w = pa.gradnorm_weighting(prob.blocks, every=3, momentum=0.9)
    state = w.init(jax.random.key(0), params, batch)
    w0 = {n: float(v) for n, v in state.weights.items()}
    # new parameters: the weights hold for two updates and move at the third
    p1 = jax.tree.map(lambda a: a * 1.5, params)
    want_new, _ = hand_weights(prob, p1, batch)
    update = jax.jit(w.update)
    for step in range(1, 4):
        weights, state = update(jax.random.key(step), state, params, p1, batch)
        for n in prob.blocks.names:
            expect = w0[n] if step < 3 else 0.9 * w0[n] + 0.1 * want_new[n]
            np.testing.assert_allclose(float(weights[n]), expect, rtol=1e-9)


def test_gradnorm_via_ntk_weighting_and_refusals(setup):
    prob, params, batch = setup
    a = pa.ntk_weighting(prob.blocks, estimator="gradnorm").init(jax.random.key(0), params, batch)
    b = pa.gradnorm_weighting(prob.blocks, momentum=None).init(jax.random.key(0), params, batch)
    for n in prob.blocks.names:
        assert float(a.weights[n]) == float(b.weights[n])
    with pytest.raises(ValueError, match="rule"):
        pa.ntk_weighting(prob.blocks, estimator="gradnorm", rule="jaxpi")
    with pytest.raises(ValueError, match="every"):
        pa.gradnorm_weighting(prob.blocks, every=0)
    with pytest.raises(ValueError, match="ema"):
        pa.gradnorm_weighting(prob.blocks, momentum=1.5)


def test_gradnorm_trains(setup):
    prob, _, _ = setup
    res = pa.train(prob, weighting=pa.gradnorm_weighting(prob.blocks, every=5), steps=12, log_every=6, progress=False)
    w = res.history["weights"][-1]
    assert all(np.isfinite(v) and v > 0 for v in w.values())


def test_refresh_with_non_positive_trace_is_rejected(setup):
    """A pc estimate pushed below zero (probe noise can do it) must not become a negative weight."""
    prob, params, batch = setup
    w = pa.ntk_weighting(prob.blocks, estimator="pc", subsample=None)
    state = w.init(jax.random.key(0), params, batch)
    before = {n: float(v) for n, v in state.weights.items()}
    est = state.inner.estimate
    state = state._replace(inner=state.inner._replace(estimate=est.at[:, 0].set(-1e6 * jnp.abs(est[:, 0]) - 1.0)))
    p1 = jax.tree.map(lambda a: a * 1.01, params)
    weights, new = w.update(jax.random.key(1), state, params, p1, batch)
    assert int(new.rejected) == 1
    for n in prob.blocks.names:
        assert float(weights[n]) == before[n] > 0


def test_grad_norm_spelling_is_the_same_weighting(setup):
    prob, params, batch = setup
    assert pa.grad_norm_weighting is pa.gradnorm_weighting
    a = pa.ntk_weighting(prob.blocks, estimator="grad_norm")
    b = pa.ntk_weighting(prob.blocks, estimator="gradnorm")
    assert a.config == b.config  # one canonical name in the configuration and the state's spec
    wa = a.init(jax.random.key(0), params, batch).weights
    wb = b.init(jax.random.key(0), params, batch).weights
    assert all(float(wa[n]) == float(wb[n]) for n in prob.blocks.names)
    with pytest.raises(ValueError, match="estimator"):
        pa.ntk_weighting(prob.blocks, estimator="grad-norm")
