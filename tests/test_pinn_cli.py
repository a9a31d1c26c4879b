"""The main job's command on a tiny configuration: files, JSON schema, comparison table, fd bias."""

import json

import pytest

from sketchtrace.cli import main

TINY = [
    "--steps",
    "12",
    "--width",
    "6",
    "--depth",
    "1",
    "--log-every",
    "4",
    "--n-res",
    "20",
    "--n-bc",
    "5",
    "--no-progress",
]
FIGURES = {"solution.png", "error.png", "losses.png", "weights.png", "diagnostics.png"}


def _check_results(path, weights):
    r = json.loads(path.read_text())
    assert set(r) >= {"label", "config", "metrics", "history", "versions"}
    assert r["config"]["weights"] == weights and r["config"]["steps"] == 12
    m = r["metrics"]
    for k in ("relative_l2", "wall_time_s", "time_per_step_s", "final_weights", "avg_res_sq", "avg_grad_sq"):
        assert k in m
    assert m["relative_l2"] > 0 and m["time_per_step_s"] > 0
    assert set(m["final_weights"]) == {"u", "u_t", "res"}
    assert all(w > 0 for w in m["final_weights"].values())
    assert r["history"]["step"][-1] == 12 and len(r["history"]["relative_l2"]) == len(r["history"]["step"])
    assert {"jax", "sketchtrace", "python"} <= set(r["versions"])
    return r


@pytest.mark.parametrize("weights", ["pc", "none"])
def test_pinn_wave_writes_results_and_figures(weights, tmp_path, capsys):
    out = tmp_path / weights
    assert main(["pinn", "wave", "--weights", weights, "--out", str(out)] + TINY) == 0
    assert FIGURES <= {p.name for p in out.iterdir()}
    r = _check_results(out / "results.json", weights)
    if weights == "pc":
        assert r["metrics"]["median_weight_rel_error"] is not None
        exact = r["history"]["exact_weights"][-1]
        assert set(exact) == {"u", "u_t", "res"} and all(w > 0 for w in exact.values())
    assert "relative L2" in capsys.readouterr().out


def test_pinn_wave_compare_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["pinn", "wave", "--compare", "--out", str(out)] + TINY) == 0
    summary = json.loads((out / "compare.json").read_text())
    from pinn_adapters.app._experiment import COMPARE_RUNS

    assert [row["run"] for row in summary["table"]] == [label for label, _ in COMPARE_RUNS]
    assert summary["table"][0]["step_time_vs_none"] == 1.0
    assert (out / "compare.png").exists() and "| run | relative L2 |" in (out / "compare.md").read_text()
    assert "| pc (every step) |" in capsys.readouterr().out


def test_pinn_config_file_and_bad_values(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"weights": "none", "steps": 12, "width": 6, "depth": 1, "log_every": 4}))
    assert main(["pinn", "wave", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    _check_results(tmp_path / "o" / "results.json", "none")
    cfg.write_text(json.dumps({"wieghts": "none"}))
    assert main(["pinn", "wave", "--config", str(cfg), "--out", str(tmp_path / "o2")]) == 2
    assert main(["pinn", "wave", "--steps", "0", "--out", str(tmp_path / "o3")]) == 2
    assert main(["pinn", "wave", "--gamma", "1.5", "--out", str(tmp_path / "o4")]) == 2


def test_fd_bias_experiment(tmp_path, capsys):
    out = tmp_path / "fd"
    from pinn_adapters.app import fd_bias

    rows = fd_bias(out, width=6, depth=1, num_probes=4, hs=[1e-1, 1e-2, 1e-3, 1e-4])
    assert (out / "fd_bias.png").exists() and (out / "fd_bias.json").exists()
    by = {(r["dtype"], r["scheme"]): r["relative_bias"] for r in rows}
    # float64: forward bias shrinks roughly like h, central like h^2 (truncation regime)
    f, c = by[("float64", "forward")], by[("float64", "central")]
    assert abs(f[2]) < abs(f[0]) / 20 and abs(c[2]) < abs(c[0]) / 1000


# ----------------------------------------------------------------------------- errors: one line, before any training


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts (the errors below must come before it)."""
    from pinn_adapters.app import _train

    monkeypatch.setattr(_train, "train", lambda *a, **k: pytest.fail("training started before the error"))


def _one_line_error(capsys, *argv):
    assert main(["pinn", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("option", "value"), [("--seed", "-1"), ("--steps", "0"), ("--n-res", "0"), ("--n-bc", "-1"), ("--width", "x")]
)
def test_bad_option_values_name_the_option(option, value, capsys, tmp_path, no_training):
    err = _one_line_error(capsys, "wave", option, value, "--out", str(tmp_path / "o"))
    assert f"argument {option}: expected an integer >=" in err


@pytest.mark.parametrize(
    ("content", "msg"),
    [
        ('{"steps": 12,\n "width": }', r"c.json: not valid JSON \(line 2 column 11"),
        ('["steps", 12]', "c.json: expected a JSON object of WaveConfig keys; got a list"),
        ('{"seed": -1}', "c.json: seed must be an integer >= 0; got -1"),
        ('{"gamma": "0.1"}', "c.json: gamma must be a real number"),
        ('{"wieghts": "none"}', r"c.json: unknown keys \['wieghts'\]"),
    ],
)
def test_bad_config_file_names_the_file(content, msg, capsys, tmp_path, no_training):
    import re

    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    err = _one_line_error(capsys, "wave", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert "--config" in err and re.search(msg, err), err


def test_missing_config_file_is_named(capsys, tmp_path, no_training):
    err = _one_line_error(capsys, "wave", "--config", str(tmp_path / "none.json"), "--out", str(tmp_path / "o"))
    assert "--config" in err and "none.json" in err


def test_out_under_a_regular_file_is_refused_before_training(capsys, tmp_path, no_training):
    (tmp_path / "file").write_text("x")
    err = _one_line_error(capsys, "wave", "--out", str(tmp_path / "file" / "run"), *TINY)
    assert "--out: cannot create" in err and "is a file, not a directory" in err


def test_unknown_problem_is_one_line(capsys, tmp_path, no_training):
    assert "PROBLEM must be one of" in _one_line_error(capsys, "heat", "--out", str(tmp_path / "o"))


# ----------------------------------------------------------------------------- subcommands and refused combinations


def test_every_subcommand_has_its_own_help(capsys):
    for argv, wanted in [
        (["pinn", "sweep", "--help"], "--seeds"),
        (["pinn", "wave", "--help"], "--weights"),
        (["pinn", "--help"], "sweep"),
    ]:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert wanted in out and f"usage: sketchtrace {' '.join(argv[:-1])}" in out, out
    assert main(["pinn", "sweep", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--compare" not in out and "--weights" not in out and "--x64" not in out


def test_problem_and_weight_choices_come_from_the_experiment_tables(capsys):
    from pinn_adapters.app._experiment import PROBLEMS, WEIGHTS

    assert main(["pinn", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PROBLEMS)
    assert main(["pinn", "wave", "--help"]) == 0
    assert "{" + ",".join(WEIGHTS) + "}" in capsys.readouterr().out


def test_every_config_field_is_a_flag(capsys):
    import dataclasses

    from pinn_adapters.app._experiment import WaveConfig
    from pinn_adapters.app._flags import flag_of

    assert main(["pinn", "wave", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag_of(f.name) in out for f in dataclasses.fields(WaveConfig) if f.name != "problem")


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["wave", "--subsample", "0.1"], "unrecognized arguments: --subsample"),
        (["wave", "--seeds", "3"], "unrecognized arguments: --seeds"),
        (["wave", "--cost-repeats", "1"], "unrecognized arguments: --cost-repeats"),
        (["wave", "--compare", "--fd-bias"], "--compare and --fd-bias are two different runs"),
        (["wave", "--compare", "--weights", "pc"], "--weights is not used with --compare"),
        (["wave", "--compare", "--exact-every", "5"], "--exact-every is not used with --compare"),
        (["wave", "--fd-bias", "--steps", "3"], "--steps is not used by --fd-bias"),
        (["wave", "--fd-bias", "--x64"], "--x64 is not used by --fd-bias"),
        (["wave", "--fd-bias", "--no-progress"], "--no-progress is not used by --fd-bias"),
        (["qtensor", "--fd-bias"], "--fd-bias is an experiment on the wave network"),
        (["wave", "--weights", "none", "--gamma", "0.1"], "--gamma is for --weights pc; this run uses --weights none"),
        (["wave", "--weights", "exact", "--probes", "2"], "--probes is for --weights hutchinson/pc"),
        (["wave", "--weights", "pc", "--exact-every", "2"], "--exact-every is for --weights exact"),
        (["wave", "--weights", "none", "--gradnorm-every", "2"], "--gradnorm-every is for --weights gradnorm"),
        (["wave", "--h", "1e-3"] + ["--weights", "hutchinson"], "--h is for --weights pc"),
        (["sweep", "wave", "--x64"], "unrecognized arguments: --x64"),
        (["sweep", "wave", "--weights", "none"], "unrecognized arguments: --weights none"),
        (["sweep", "wave", "--gamma", "0.1"], "unrecognized arguments: --gamma 0.1"),
        (["sweep", "wave", "--compare"], "unrecognized arguments: --compare"),
        (["sweep", "wave", "--schedules", ","], "--schedules is empty"),
        (["wave", "--weights", ""], "argument --weights: expected one of"),
        (["wave", "--optimizer", "sgd"], "argument --optimizer: expected one of"),
        (["wave", "--fd", "nope"], "argument --fd: expected"),
    ],
)
def test_options_a_mode_does_not_use_are_refused(argv, msg, capsys, tmp_path, no_training):
    err = _one_line_error(capsys, *argv, "--out", str(tmp_path / "o"))
    assert msg in err, err


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["wave", "--steps", "99999999999999999999"], "argument --steps: expected an integer of at most 2147483647"),
        (["wave", "--seed", "4294967296"], "argument --seed: expected an integer of at most"),
        (["wave", "--gamma", "1e400"], "argument --gamma: expected a real number in (0, 1]; got inf"),
        (["wave", "--gamma", "nan"], "argument --gamma: expected a real number in (0, 1]; got nan"),
        (["wave", "--learning-rate", "-1"], "argument --learning-rate: expected a real number in (0"),
        (["wave", "--gradnorm-momentum", "1"], "argument --gradnorm-momentum: expected a real number in [0, 1)"),
        (["wave", "--fourier-sigma", "1e999"], "argument --fourier-sigma: expected a real number"),
        (["wave", "--width", "2.5"], "argument --width: expected an integer >= 1"),
        (["sweep", "wave", "--seeds", "99999999999"], "argument --seeds: seeds must be a positive integer"),
        (["sweep", "wave", "--cost-repeats", "-1"], "argument --cost-repeats: expected an integer >= 0"),
        (["sweep", "wave", "--subsample", "1e400"], "argument --subsample: expected a real number in (0, 1]"),
        (["sweep", "wave", "--gammas", "0.1,inf"], "--gammas entry must be a real number in (0, 1]"),
        (["sweep", "wave", "--steps", "0"], "argument --steps: expected an integer >= 1"),
    ],
)
def test_numeric_options_are_range_checked_by_name(argv, msg, capsys, tmp_path, no_training):
    err = _one_line_error(capsys, *argv, "--out", str(tmp_path / "o"))
    assert msg in err, err
