"""Smoke test of the asv suites (benchmarks/benchmarks/) and the report's helpers.

Each suite class runs one tiny parametrization (sizes shrunk through the class
attributes), every ``time_*``, ``peakmem_*`` and ``track_*`` method once. No timing
is asserted; the accuracy tracks must be finite and small enough to catch a broken
estimator (an estimate off by the whole trace gives relative error ~ 1).
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _load(path):
    name = "_asv_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


SUITES = ROOT / "benchmarks" / "benchmarks"
bench_dynamic, bench_estimators, bench_ntk, bench_numba = (
    _load(SUITES / f"{n}.py") for n in ("bench_dynamic", "bench_estimators", "bench_ntk", "bench_numba")
)
report = _load(ROOT / "benchmarks" / "report.py")


def _run_all(obj, *params):
    obj.setup(*params)
    out = {}
    for name in dir(obj):
        if name.startswith(("time_", "peakmem_", "track_")):
            out[name] = getattr(obj, name)(*params)
    return out


@pytest.mark.parametrize(
    "params",
    [
        ("hutchinson", "jax", "dense"),
        ("xtrace", "numba", "sparse"),
        ("hutchpp", "jax", "vjp"),
        ("xnystrace", "jax", "gram"),
    ],
    ids="-".join,
)
def test_estimators_suite(params, monkeypatch):
    monkeypatch.setattr(bench_estimators.Estimators, "sizes", dict(n_dense=60, n_sparse=500, n_mlp=48))
    monkeypatch.setattr(bench_estimators.Estimators, "num_matvecs", 12)
    out = _run_all(bench_estimators.Estimators(), *params)
    err = out["track_relative_error"]
    assert math.isfinite(err) and err < 0.5


def test_estimators_suite_skips_unsupported():
    with pytest.raises(NotImplementedError):
        bench_estimators.Estimators().setup("hutchinson", "numba", "jvp")
    with pytest.raises(NotImplementedError):
        bench_estimators.Estimators().setup("xnystrace", "jax", "jvp")


def test_estimators_suite_error_track_detects_bias(monkeypatch):
    # the track is a real measurement: a biased estimator (trace + 10 %) shows up in it
    monkeypatch.setattr(bench_estimators.Estimators, "sizes", dict(n_dense=60, n_sparse=500, n_mlp=48))
    monkeypatch.setattr(bench_estimators.Estimators, "num_matvecs", 60)  # exact path: error ~ 0
    b = bench_estimators.Estimators()
    b.setup("hutchinson", "numba", "dense")
    assert b.track_relative_error("hutchinson", "numba", "dense") < 1e-12
    est = b.est
    b.est = lambda key, op, num_matvecs: est(key, op, num_matvecs=num_matvecs)._replace(
        value=1.1 * est(key, op, num_matvecs=num_matvecs).value
    )
    assert b.track_relative_error("hutchinson", "numba", "dense") == pytest.approx(0.1)


def test_chunked_probes_suite(monkeypatch):
    monkeypatch.setattr(bench_estimators.ChunkedProbes, "n", 2000)
    out = _run_all(bench_estimators.ChunkedProbes(), 4, 16)
    assert out["track_xla_temp_mib"] >= 0


def test_dynamic_suite(monkeypatch):
    monkeypatch.setattr(bench_dynamic.PredictorCorrector, "n", 80)
    for backend in ("jax", "numba"):
        out = _run_all(bench_dynamic.PredictorCorrector(), backend, 1)
        assert math.isfinite(out["track_relative_error"]) and out["track_relative_error"] < 0.5


def test_ntk_suite(monkeypatch):
    monkeypatch.setattr(bench_ntk.NTKWeights, "problem", dict(layers=(2, 8, 8, 1), n_res=24, n_bc=6))
    out = _run_all(bench_ntk.NTKWeights(), "pc")
    assert out["track_step_ratio"] > 0
    assert math.isfinite(out["track_weight_error"]) and out["track_weight_error"] < 1.0


def test_numba_suite():
    out = _run_all(bench_numba.NumbaHutchinson(), 3000, 8)
    assert math.isfinite(out["track_error_in_standard_errors"])


def test_report_verdicts():
    assert report.verdict("hutch_bare", 1.05) == "meets"
    assert report.verdict("hutch_bare", 1.14) == "meets (within noise)"
    assert report.verdict("hutch_bare", 1.3) == "MISSES"
    assert report.verdict("scipy_numba", 2.0) == "meets"
    assert report.verdict("scipy_numba", 1.0) == "MISSES"
    times = report.interleaved({"a": lambda: np.zeros(3), "b": lambda: np.ones(3)}, repeats=3, warmup=1)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_report_sections_refused_before_work(tmp_path, capsys):
    out = tmp_path / "r.md"
    with pytest.raises(SystemExit):
        report.main(["--sections", "recipe,bogus", "--out", str(out)])
    assert "--sections: unknown bogus" in capsys.readouterr().err
    assert not out.exists()
