"""``sketchtrace pinn sweep``: outputs, resume without rerunning, bad arguments refused before training."""

import json

import pytest

from pinn_adapters.app import _sweep
from sketchtrace.cli import main

TINY = [
    "--steps",
    "4",
    "--width",
    "4",
    "--depth",
    "1",
    "--log-every",
    "2",
    "--n-res",
    "8",
    "--n-bc",
    "2",
    "--cost-repeats",
    "1",
    "--no-progress",
]
SCHEDULES = "none,pc-sub/1 g=0.1"


def _sweep_args(out, *extra):
    return ["pinn", "sweep", "wave", "--seeds", "1", "--schedules", SCHEDULES, "--out", str(out), *TINY, *extra]


@pytest.fixture
def count_runs(monkeypatch):
    calls = []
    real = _sweep._one_run

    def counting(*args, **kw):
        calls.append(args[-1])
        return real(*args, **kw)

    monkeypatch.setattr(_sweep, "_one_run", counting)
    return calls


def test_sweep_writes_outputs_and_resumes_without_rerunning(tmp_path, count_runs, capsys):
    out = tmp_path / "sw"
    assert main(_sweep_args(out)) == 0
    assert len(count_runs) == 2
    assert {p.name for p in out.iterdir()} >= {"sweep.json", "sweep.md", "pareto.png", "runs"}
    data = json.loads((out / "sweep.json").read_text())
    rows = {r["schedule"]: r for r in data["summary"]}
    assert set(rows) == {"none", "pc-sub/1 g=0.1"}
    assert rows["pc-sub/1 g=0.1"]["median_weight_rel_error"]["median"] >= 0
    assert rows["none"]["median_weight_rel_error"] is None
    assert any(r["pareto"] for r in rows.values())
    md = (out / "sweep.md").read_text()
    assert "| none |" in md and "final relative L2" in md and "step cost vs none" in md
    assert rows["none"]["step_cost_vs_none"] == 1.0 and rows["pc-sub/1 g=0.1"]["step_cost_vs_none"] > 0
    assert (out / "costs.json").exists()
    # a finished sweep restarts without training again
    before = (out / "runs").stat().st_mtime_ns, sorted(p.name for p in (out / "runs").iterdir())
    assert main(_sweep_args(out)) == 0
    assert len(count_runs) == 2
    assert sorted(p.name for p in (out / "runs").iterdir()) == before[1]
    # an interrupted one reruns only what is missing; a corrupt (half-written) file counts as missing
    runs = sorted((out / "runs").glob("*.json"))
    runs[0].unlink()
    runs[1].write_text('{"key": ')
    assert main(_sweep_args(out)) == 0
    assert len(count_runs) == 4
    # another configuration is not mistaken for a finished run
    assert main(_sweep_args(out, "--subsample", "0.5")) == 0
    assert len(count_runs) == 5  # only the pc-sub schedule changed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--schedules", "none,exact/7"], "unknown schedule"),
        (["--seeds", "0"], "seeds must be a positive integer"),
        (["--gammas", "0.1,2"], "gamma"),
        (["--subsample", "0"], "subsample"),
    ],
)
def test_bad_sweep_arguments_are_refused_before_training(tmp_path, count_runs, capsys, args, message):
    argv = ["pinn", "sweep", "wave", "--out", str(tmp_path / "o"), *TINY, *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert count_runs == []


def test_unwritable_output_and_unknown_problem_are_refused(tmp_path, count_runs, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["pinn", "sweep", "wave", "--out", str(blocker / "sub"), *TINY]) == 2
    assert "not writable" in capsys.readouterr().err
    assert main(["pinn", "sweep", "heat", "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "PROBLEM must be one of" in capsys.readouterr().err
    assert main(["pinn", "wave", "extra", "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "pinn sweep PROBLEM" in capsys.readouterr().err
    assert count_runs == []


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.45), (0.5, 0.9), (4.0, 0.1)]
    assert _sweep.pareto_front(pts) == [3, 0, 1, 4]
