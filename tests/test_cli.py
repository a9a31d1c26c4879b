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


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["trace", str(tmp_path / "missing.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    np.save(tmp_path / "rect.npy", np.ones((2, 3)))
    with pytest.raises(SystemExit, match="square"):
        main(["trace", str(tmp_path / "rect.npy")])
    with pytest.raises(SystemExit, match="--method must be one of"):
        main(["trace", str(tmp_path / "rect.npy"), "--method", "magic"])
    (tmp_path / "m.txt").write_text("1")
    assert main(["trace", str(tmp_path / "m.txt")]) == 2
    assert ".mtx, .npz or .npy" in capsys.readouterr().err


def test_console_script_demo_runs():
    out = subprocess.run(
        [sys.executable, "-m", "sketchtrace", "trace", "--demo", "--matvecs", "30"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "demo" in out and "exact trace: 1.6444" in out and "hutchinson" in out
