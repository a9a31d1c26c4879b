"""The main job's recipe options: network, optimizer schedule, grad-norm weights, the new problems."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pinn_adapters.app import PROBLEMS, WaveConfig, run_wave
from pinn_adapters.app._experiment import describe, make_network, make_optimizer, make_problem, make_weighting

TINY = dict(steps=6, width=8, depth=2, n_res=16, n_bc=4, log_every=3, fourier=4)


def test_network_options_reach_the_problem():
    cfg = WaveConfig(**TINY)
    net = make_network(cfg, 2, 1)
    assert net.config["fourier"]["num"] == 4 and net.config["fourier"]["sigma"] == pytest.approx(2 * np.pi)
    plain = make_network(dataclasses.replace(cfg, fourier=0), 2, 1)
    params = plain.init(jax.random.key(0))
    assert params[0]["W"].shape == (2, 8)  # no embedding: the raw (x, t) input
    assert make_network(cfg, 2, 1).init(jax.random.key(0))[0]["W"].shape == (8, 8)  # cos and sin of 4 features
    prob = make_problem(cfg)
    assert prob.info["network"] == net.config


def test_optimizer_warmup_and_decay():
    cfg = WaveConfig(learning_rate=1e-2, warmup_steps=4, decay_steps=10, decay_rate=0.5, **TINY)
    opt = make_optimizer(cfg)
    p = {"w": jnp.ones(3)}
    state = opt.init(p)
    sizes = []
    for _ in range(16):
        upd, state = opt.update({"w": jnp.ones(3)}, state, p)
        sizes.append(float(jnp.abs(upd["w"][0])))
    # Adam's first steps move by about the learning rate: zero at step 0, ramping to 1e-2, halved after decay
    assert sizes[0] == pytest.approx(0.0, abs=1e-12)
    assert sizes[2] == pytest.approx(0.5e-2, rel=1e-3)
    assert sizes[5] == pytest.approx(1e-2, rel=1e-3)
    assert sizes[15] == pytest.approx(0.5e-2, rel=1e-3)
    soap = make_optimizer(dataclasses.replace(cfg, optimizer="soap"))
    soap.update({"w": jnp.ones(3)}, soap.init(p), p)


def test_gradnorm_weighting_from_config():
    cfg = WaveConfig(weights="gradnorm", gradnorm_every=7, gradnorm_momentum=0.5, **TINY)
    w = make_weighting(cfg, make_problem(cfg).blocks)
    assert w.config["estimator"] == "gradnorm" and w.config["every"] == 7 and w.config["ema"] == 0.5


@pytest.mark.parametrize(
    "field, value",
    [("optimizer", "sgd"), ("fourier", -1), ("fourier_sigma", 0.0), ("gradnorm_momentum", 1.0), ("rwf", "yes")],
)
def test_bad_recipe_options_refused(field, value):
    with pytest.raises((TypeError, ValueError), match=field):
        WaveConfig(**{field: value}).validate()


@pytest.mark.parametrize("problem", ["burgers", "allen-cahn"])
def test_new_problems_train_and_write(tmp_path, problem):
    assert problem in PROBLEMS
    cfg = WaveConfig(problem=problem, weights="gradnorm", **TINY)
    assert problem in describe(cfg)
    r = run_wave(cfg, tmp_path / problem, progress=False)
    assert np.isfinite(r["metrics"]["relative_l2"])
    assert (tmp_path / problem / "solution.png").exists()
