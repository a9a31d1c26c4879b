"""Second-order training through ``pa.train`` / ``pa.Trainer`` (``optimizer="lm"`` and friends)."""

import json

import jax
import numpy as np
import pytest

import pinn_adapters as pa
from pinn_adapters import second_order as so


def _problem():
    return pa.problems.wave1d(layers=(2, 8, 8, 1), n_res=24, n_bc=6)


def test_train_lm_matches_levenberg_marquardt_and_reports_in_train_format():
    prob = _problem()
    res = pa.train(prob, optimizer="lm", steps=6, seed=3, log_every=2, progress=False)
    h = res.history
    assert h["step"] == [2, 4, 6] and len(h["loss_per_step"]) == 6
    assert all(isinstance(x, float) for x in h["relative_l2"])
    assert set(h["weights"][-1]) == set(prob.blocks.names) and h["block_loss"][-1] is None
    # the same run as levenberg_marquardt called directly with the train's keys and batches
    base = jax.random.key(3)
    p0 = prob.init_params(jax.random.split(jax.random.fold_in(base, 10**9))[0])
    ref = so.levenberg_marquardt(
        jax.random.fold_in(base, 1), prob.blocks, p0, prob.sample_batch(jax.random.fold_in(base, 0)),
        steps=6, sample_batch=prob.sample_batch,
    )  # fmt: skip
    np.testing.assert_array_equal(h["loss_per_step"], [r["loss"] for r in ref.history])
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert h["loss_per_step"][-1] < h["loss_per_step"][0]


def test_train_engd_with_weighting_and_options():
    prob = _problem()
    opt = so.engd(damping=1e-6, grid_size=8, method="dense")
    res = pa.Trainer(prob, weighting="exact", optimizer=opt).train(steps=4, log_every=4, progress=False)
    assert res.history["step"] == [4]
    assert res.history["step_size"][-1] in [0.5**k for k in range(8)]
    assert res.history["weights"][-1] != dict.fromkeys(prob.blocks.names, 1.0)  # the exact weights were used
    assert isinstance(res.state, so.LMResult)


def test_second_order_progress_bar_and_callback(capsys):
    """``progress=True`` shows a tqdm bar over the trial steps (it was ignored); ``callback`` sees every
    step's record, and a non-callable one is refused before any work."""
    prob = _problem()
    pa.train(prob, optimizer="lm", steps=3, log_every=3, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "mu=" in err
    seen = []
    base = jax.random.key(0)
    p0, batch = prob.init_params(base), prob.sample_batch(base)
    so.levenberg_marquardt(base, prob.blocks, p0, batch, steps=3, callback=seen.append)
    assert [r["step"] for r in seen] == [1, 2, 3]
    with pytest.raises(TypeError, match="callback"):
        so.levenberg_marquardt(base, prob.blocks, p0, batch, steps=3, callback=1)
    with pytest.raises(TypeError, match="'callback' is set by pinn_adapters.train"):
        so.lm(callback=print)


def test_second_order_resume_is_bit_identical(tmp_path):
    prob = _problem()
    full = pa.train(prob, optimizer="lm", steps=4, progress=False)
    ck = tmp_path / "lm.ckpt"
    pa.train(prob, optimizer="lm", steps=2, checkpoint=ck, progress=False)
    rest = pa.train(prob, optimizer="lm", steps=4, resume=ck, progress=False)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(rest.params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: so.lm(dampign=1.0), "unknown option 'dampign'"),
        (lambda: so.lm(damping=-1.0), "damping"),
        (lambda: so.lm(steps=3), "'steps' is set by pinn_adapters.train"),
        (lambda: so.lm(method="cholesky"), "method must be one of"),
        (lambda: so.engd(line_search="none"), "always uses line_search='grid'"),
        (lambda: so.as_second_order("newton"), "unknown second-order name 'newton'"),
    ],
)
def test_second_order_options_refused_at_construction(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_second_order_trainer_refuses_a_train_state_resume():
    prob = _problem()
    state = pa.Trainer(prob).initial_state()
    with pytest.raises(TypeError, match="resumes from a checkpoint file"):
        pa.train(prob, optimizer="lm", steps=2, resume=state, progress=False)


def test_sweep_runs_second_order_schedules_by_name(tmp_path):
    from sketchtrace.cli import main

    out = tmp_path / "sw"
    args = ["pinn", "sweep", "wave", "--seeds", "1", "--schedules", "none,lm,lm+exact", "--out", str(out)]
    tiny = ["--steps", "4", "--width", "4", "--depth", "1", "--log-every", "1", "--n-res", "8", "--n-bc", "2"]
    assert main([*args, *tiny, "--second-order-steps", "2", "--cost-repeats", "1", "--no-progress"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    rows = {r["schedule"]: r for r in sweep["summary"]}
    assert set(rows) == {"none", "lm", "lm+exact"}
    assert all(r["relative_l2"]["median"] > 0 and r["step_cost_vs_none"] > 0 for r in rows.values())
    run = json.loads(next((out / "runs").glob("lm+exact*")).read_text())
    assert run["key"]["weighting"]["optimizer"] == "lm" and run["metrics"]["steps_logged"][-1] == 2
    first = json.loads(next((out / "runs").glob("none*")).read_text())
    assert first["metrics"]["steps_logged"][-1] == 4  # --steps for the first-order schedules
    costs = sweep["seconds_per_step_interleaved"]
    assert rows["lm"]["interleaved_time_s"] == pytest.approx(costs["lm"] * 2)
    assert rows["none"]["interleaved_time_s"] == pytest.approx(costs["none"] * 4)
    assert "lm: 2 trial steps" in (out / "sweep.md").read_text()
    assert main([*args[:5], "none", "--out", str(out), *tiny, "--second-order-steps", "2"]) == 2  # nothing to apply to


def test_run_wave_with_lm_names_the_method(tmp_path):
    from pinn_adapters.app import WaveConfig, run_wave

    cfg = WaveConfig(optimizer="lm", steps=2, width=4, depth=1, n_res=8, n_bc=2, log_every=1, fourier=0)
    res = run_wave(cfg, tmp_path / "run", progress=False, figures=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["optimizer"] == "lm" and res["metrics"]["relative_l2"] > 0
