"""The ``sketchtrace trace`` command on files and on the demo."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from sketchtrace.cli import load_matrix, main


@pytest.fixture
def matrix():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 30))
    return a @ a.T


@pytest.mark.parametrize("fmt", ["npy", "npz-sparse", "npz-dense", "mtx"])
def test_trace_of_a_matrix_file(fmt, matrix, tmp_path, capsys):
    path = tmp_path / ("m." + fmt.split("-")[0])
    if fmt == "npy":
        np.save(path, matrix)
    elif fmt == "npz-sparse":
        sp.save_npz(path, sp.csr_matrix(matrix))
    elif fmt == "npz-dense":
        np.savez(path, a=matrix)
    else:
        scipy.io.mmwrite(str(path), sp.coo_matrix(matrix))
    np.testing.assert_allclose(np.asarray(sp.csr_matrix(load_matrix(path)).todense()), matrix, rtol=1e-12)
    out_json = tmp_path / "r.json"
    assert main(["trace", str(path), "--matvecs", "30", "--seed", "3", "--x64", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "exact trace" in out and "hutchinson" in out
    res = json.loads(out_json.read_text())["results"][0]
    assert res["num_matvecs"] == 30 and res["sem"] == 0.0  # budget reaches n: exact
    np.testing.assert_allclose(res["estimate"], np.trace(matrix), rtol=1e-10)


def _one_line_error(capsys, *argv):
    """Run the command; it must fail with exit status 2 and exactly one line on stderr."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_errors_are_clear(tmp_path, capsys):
    assert "does not exist" in _one_line_error(capsys, "trace", str(tmp_path / "missing.npy"))
    np.save(tmp_path / "rect.npy", np.ones((2, 3)))
    assert "rect.npy': the matrix must be square" in _one_line_error(capsys, "trace", str(tmp_path / "rect.npy"))
    err = _one_line_error(capsys, "trace", str(tmp_path / "rect.npy"), "--method", "magic")
    assert "--method must be one of" in err
    (tmp_path / "m.txt").write_text("1")
    assert ".mtx, .npz or .npy" in _one_line_error(capsys, "trace", str(tmp_path / "m.txt"))


def test_corrupt_matrix_market_file_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.mtx"
    path.write_text("%%MatrixMarket matrix coordinate real general\n3 3 3\n1 1 1.0\n2 x 1.0\n3 3 1.0\n")
    err = _one_line_error(capsys, "trace", str(path))
    assert "bad.mtx' is not a valid Matrix Market file" in err and "Line 4" in err


@pytest.mark.parametrize("fmt", ["npy", "npz-dense", "npz-sparse", "mtx"])
def test_non_finite_matrix_file_names_the_file_and_entry(fmt, tmp_path, capsys):
    a = np.eye(4)
    a[2, 1] = np.nan
    path = tmp_path / ("nan." + fmt.split("-")[0])
    if fmt == "npy":
        np.save(path, a)
    elif fmt == "npz-dense":
        np.savez(path, a=a)
    elif fmt == "npz-sparse":
        sp.save_npz(path, sp.csr_matrix(a))
    else:
        scipy.io.mmwrite(str(path), sp.coo_matrix(a))
    err = _one_line_error(capsys, "trace", str(path))
    assert f"nan.{fmt.split('-')[0]}' has 1 non-finite entries (NaN or inf), the first at (2, 1)" in err


def test_empty_overflowing_and_out_of_float32_range_files_are_refused(tmp_path, capsys):
    import jax

    np.save(tmp_path / "empty.npy", np.zeros((0, 0)))
    assert "empty.npy': the matrix is empty" in _one_line_error(capsys, "trace", str(tmp_path / "empty.npy"))
    np.save(tmp_path / "big.npy", 1e308 * np.eye(3))  # finite entries, an infinite trace
    assert "big.npy': the trace overflows" in _one_line_error(capsys, "trace", str(tmp_path / "big.npy"))
    sp.save_npz(tmp_path / "wide.npz", sp.csr_matrix(1e39 * np.eye(3)))  # inf in float32, JAX's default
    jax.config.update("jax_enable_x64", False)
    try:
        err = _one_line_error(capsys, "trace", str(tmp_path / "wide.npz"))
    finally:
        jax.config.update("jax_enable_x64", True)
    assert "wide.npz': entries up to 1e+39 exceed float32's range" in err and "--x64" in err
    assert main(["trace", str(tmp_path / "wide.npz"), "--backend", "numba"]) == 0  # float64 there: fine
    capsys.readouterr()


def test_pickled_npy_is_refused_not_loaded(tmp_path, capsys):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "obj.npy' is not a readable NumPy file" in _one_line_error(capsys, "trace", str(path))


@pytest.mark.parametrize(("option", "value"), [("--seed", "-1"), ("--seed", "abc"), ("--matvecs", "0")])
def test_bad_option_values_name_the_option(option, value, tmp_path, capsys):
    np.save(tmp_path / "m.npy", np.eye(3))
    err = _one_line_error(capsys, "trace", str(tmp_path / "m.npy"), option, value)
    assert f"argument {option}: expected an integer >=" in err


@pytest.mark.parametrize("where", ["missing-dir", "under-a-file", "a-directory"])
def test_json_output_checked_before_any_work(where, tmp_path, capsys, monkeypatch):
    from sketchtrace import cli

    np.save(tmp_path / "m.npy", np.eye(3))
    (tmp_path / "file").write_text("x")
    target = {
        "missing-dir": tmp_path / "nope" / "r.json",
        "under-a-file": tmp_path / "file" / "r.json",
        "a-directory": tmp_path,
    }[where]
    monkeypatch.setattr(cli, "load_matrix", lambda p: pytest.fail("the matrix was loaded before --json was checked"))
    assert "--json" in _one_line_error(capsys, "trace", str(tmp_path / "m.npy"), "--json", str(target))


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["trace", str(tmp_path / "missing.npy"), "--debug"])


def test_console_script_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.mtx"
    bad.write_text("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 q 1.0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sketchtrace", "trace", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "bad.mtx" in proc.stderr


def test_console_script_demo_runs():
    out = subprocess.run(
        [sys.executable, "-m", "sketchtrace", "trace", "--demo", "--matvecs", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "demo" in out and "exact trace: 1.6444" in out and "hutchinson" in out


# ----------------------------------------------------------------------------- refused combinations (issues 28/29)


def test_xnystrace_refuses_an_indefinite_matrix(tmp_path, capsys):
    a = np.diag([1.0, 2.0, -0.5, 3.0])
    np.save(tmp_path / "neg.npy", a)
    err = _one_line_error(capsys, "trace", str(tmp_path / "neg.npy"), "--method", "xnystrace")
    assert "xnystrace needs a PSD matrix" in err and "negative diagonal entry A[2, 2] = -0.5" in err
    # positive diagonal, yet indefinite: the Lanczos certificate finds the negative eigenvalue
    b = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # eigenvalues 3, 1, -1
    np.save(tmp_path / "b.npy", b)
    err = _one_line_error(capsys, "trace", str(tmp_path / "b.npy"), "--method", "xnystrace")
    assert "has an eigenvalue <= -1" in err and "indefinite" in err
    np.save(tmp_path / "ns.npy", np.array([[1.0, 0.5], [0.0, 1.0]]))
    assert "not symmetric" in _one_line_error(capsys, "trace", str(tmp_path / "ns.npy"), "--method", "xnystrace")


def test_xnystrace_accepts_a_psd_matrix(tmp_path, capsys):
    from sketchtrace.cli import check_psd_matrix, demo_matrix

    check_psd_matrix(demo_matrix(300))  # PSD with tiny eigenvalues: no false alarm
    np.save(tmp_path / "p.npy", np.diag(np.arange(1.0, 7.0)))
    assert main(["trace", str(tmp_path / "p.npy"), "--method", "xnystrace", "--matvecs", "12"]) == 0


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["--method", ""], "--method must be one of"),
        (["--method", " "], "got an empty value"),
        (["--backend", "numba", "--x64"], "--x64 is for --backend jax"),
        (["--matvecs", "99999999999999999999"], "argument --matvecs: expected an integer >= 1 and <= 2147483647"),
        (["--seed", "1e400"], "argument --seed: expected an integer"),
    ],
)
def test_refused_trace_options(argv, msg, tmp_path, capsys):
    np.save(tmp_path / "m.npy", np.eye(3))
    assert msg in _one_line_error(capsys, "trace", str(tmp_path / "m.npy"), *argv)


def test_timing_column_excludes_compilation(tmp_path, capsys, monkeypatch):
    """The first call (which compiles) is made and reported apart; ``seconds`` is a second call's."""
    from sketchtrace import cli

    calls = []
    real = cli._available_methods

    def slow_first(fn):
        def call(key, op, **kw):
            calls.append(kw)
            if len(calls) == 1:
                import time

                time.sleep(0.5)  # stands in for compilation
            return fn(key, op, **kw)

        return call

    monkeypatch.setattr(cli, "_available_methods", lambda: {k: slow_first(v) for k, v in real().items()})
    np.save(tmp_path / "m.npy", np.diag(np.arange(1.0, 9.0)))
    res = cli.main(
        [
            "trace",
            str(tmp_path / "m.npy"),
            "--method",
            "xnystrace",
            "--matvecs",
            "6",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert res == 0 and len(calls) == 2 and calls[0] == calls[1] == {"num_matvecs": 6}
    import json

    row = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert row["first_call_seconds"] >= 0.5 > row["seconds"]
    assert "1st call" in capsys.readouterr().out
