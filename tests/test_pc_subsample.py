"""Cheaper predictor-corrector weights: row subsampling stays unbiased; batching and anchors change nothing."""

import jax
import numpy as np
import pytest

import pinn_adapters as pa
from pinn_adapters import _weighting
from sketchtrace.testing import assert_unbiased

TRIALS = 400


@pytest.fixture(scope="module")
def setup():
    prob = pa.problems.poisson1d(layers=(1, 6, 6, 1), n_res=12, n_bc=2)
    p0 = prob.init_params(jax.random.key(0))
    p1 = jax.tree.map(lambda a: a * 1.05 + 0.02, p0)
    batch = prob.sample_batch(jax.random.key(1))
    truth = {n: float(t.value) for n, t in pa.ntk_traces(None, prob.blocks, p1, batch).items()}
    return prob, p0, p1, batch, truth


def _one_refresh_traces(prob, p0, p1, batch, **kw):
    """Block traces after one pc refresh from exact traces at ``p0``, one trial per key (vmapped)."""
    w = pa.ntk_weighting(prob.blocks, estimator="pc", fd="jvp", gamma=0.5, **kw)
    s0 = w.init(None, p0, batch)
    r0, r1 = prob.blocks.residuals(p0, batch), prob.blocks.residuals(p1, batch)

    def one(key):
        _, s = w.update(key, s0, p0, p1, batch, residuals=r1, residuals_prev=r0)
        return s.traces

    keys = jax.random.split(jax.random.key(7), TRIALS)
    return {n: np.asarray(v) for n, v in jax.jit(jax.vmap(one))(keys).items()}


def test_subsampled_pc_is_unbiased_per_block(setup):
    prob, p0, p1, batch, truth = setup
    # half the points of every block (12 -> 6 interior, 4 -> 2 boundary), scaled by n_b / m_b
    vals = _one_refresh_traces(prob, p0, p1, batch, subsample=0.5)
    for n in prob.blocks.names:
        assert np.std(vals[n]) > 0, f"block {n}: no randomness, the test could not fail"
        assert_unbiased(lambda s, n=n: vals[n][s], truth[n], num_trials=TRIALS)


def test_unbiasedness_check_catches_a_wrong_scale(setup, monkeypatch):
    prob, p0, p1, batch, truth = setup
    monkeypatch.setattr(_weighting, "subsample_scale", lambda n, m: 1.0)  # forgets n_b / m_b
    vals = _one_refresh_traces(prob, p0, p1, batch, subsample=0.5)
    for n in prob.blocks.names:
        with pytest.raises(AssertionError, match="biased"):
            assert_unbiased(lambda s, n=n: vals[n][s], truth[n], num_trials=TRIALS)


def test_counts_and_fractions_and_per_block_specs(setup):
    prob, p0, p1, batch, _ = setup
    assert _weighting.sample_size(None, 12) == 12
    assert _weighting.sample_size(0.5, 12) == 6 and _weighting.sample_size(0.01, 12) == 1
    assert _weighting.sample_size(20, 12) == 12 and _weighting.sample_size(3, 12) == 3
    # a block kept whole is exact up to the probe: with every block whole, subsample changes nothing
    key = jax.random.key(3)
    a = pa.ntk_weighting(prob.blocks, estimator="pc", fd="jvp", subsample={"res": 1.0, "bc": 4})
    b = pa.ntk_weighting(prob.blocks, estimator="pc", fd="jvp")
    sa, sb = a.init(None, p0, batch), b.init(None, p0, batch)
    wa, _ = a.update(key, sa, p0, p1, batch)
    wb, _ = b.update(key, sb, p0, p1, batch)
    for n in prob.blocks.names:
        np.testing.assert_allclose(float(wa[n]), float(wb[n]), rtol=1e-5)


@pytest.mark.parametrize("fd", ["forward", "central", "jvp"])
def test_batched_evaluation_matches_separate_calls(setup, fd):
    prob, p0, p1, batch, _ = setup
    key = jax.random.key(5)
    out = []
    for batched in (True, False):
        w = pa.ntk_weighting(prob.blocks, estimator="pc", fd=fd, subsample=0.5, batched=batched, num_probes=2)
        s = w.init(None, p0, batch)
        _, s = jax.jit(w.update)(key, s, p0, p1, batch)  # no residuals passed: all evaluated inside
        out.append(s.traces)
    for n in prob.blocks.names:
        np.testing.assert_allclose(float(out[0][n]), float(out[1][n]), rtol=1e-4)


def test_every_reuses_the_anchor_residuals_on_a_fixed_batch(setup):
    prob, p0, p1, batch, _ = setup
    p2 = jax.tree.map(lambda a: a * 0.97, p1)
    w = pa.ntk_weighting(prob.blocks, estimator="pc", every=2, fd="forward", subsample=0.5)
    upd = jax.jit(w.update)
    R = {p: prob.blocks.residuals(q, batch) for p, q in (("0", p0), ("1", p1), ("2", p2))}
    traces = []
    for give_prev in (True, False):  # residuals_prev given: the stored anchor residuals are used
        s = w.init(None, p0, batch)
        kw1 = {"residuals": R["1"], "residuals_prev": R["0"]} if give_prev else {"residuals": R["1"]}
        kw2 = {"residuals": R["2"], "residuals_prev": R["1"]} if give_prev else {"residuals": R["2"]}
        _, s = upd(jax.random.key(1), s, p0, p1, batch, **kw1)  # skipped
        _, s = upd(jax.random.key(2), s, p1, p2, batch, **kw2)  # refresh against the anchor p0
        assert int(s.count) == 2
        traces.append(s.traces)
    for n in prob.blocks.names:
        np.testing.assert_allclose(float(traces[0][n]), float(traces[1][n]), rtol=1e-4)
    assert jax.tree.structure(s.inner.anchor) == jax.tree.structure(p0)


def test_bad_subsample_is_refused_before_any_work(setup):
    prob = setup[0]
    b = prob.blocks
    for bad, match in [
        (0, "subsample"),
        (1.5, "fraction"),
        (-2, "count"),
        ("half", "subsample"),
        ({"nope": 0.5}, "unknown block"),
    ]:
        with pytest.raises(ValueError, match=match):
            pa.ntk_weighting(b, subsample=bad)
    with pytest.raises(ValueError, match="estimator='pc'"):
        pa.ntk_weighting(b, estimator="exact", subsample=0.5)
    with pytest.raises(ValueError, match="pointwise"):
        opaque = pa.ResidualBlocks(b.fns, pointwise=False)
        pa.ntk_weighting(opaque, subsample=0.5)
    with pytest.raises(TypeError, match="batched"):
        pa.ntk_weighting(b, batched="yes")
