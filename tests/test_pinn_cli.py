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
    assert [row["run"] for row in summary["table"]] == [
        "none",
        "exact (every 100)",
        "exact (every step)",
        "pc (every step)",
    ]
    assert summary["table"][0]["step_time_vs_none"] == 1.0
    assert (out / "compare.png").exists() and (out / "compare.md").read_text().startswith("wave equation")
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
