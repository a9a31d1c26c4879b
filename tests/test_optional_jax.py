"""JAX is optional: ``import sketchtrace`` and the numba and torch backends run without it.

The proof runs this file as a script in a subprocess whose import system refuses ``jax`` (a
``sys.meta_path`` finder, so no second environment is needed), runs the numba estimators on
NumPy/SciPy operators (and the torch backend when torch is installed), and compares every
number with the same calls made here, with JAX loaded: without JAX the results are the same.
JAX-only features must fail with an ImportError naming the extra. ``.ci/run`` also runs this
file as a script in an environment where JAX is not installed at all.

    python tests/test_optional_jax.py          # prints the results as JSON (JAX blocked)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED = ("jax", "jaxlib")
EXTRA = "pip install 'sketchtrace[jax]'"


class BlockJax:
    """A meta-path finder that makes ``jax`` and ``jaxlib`` unimportable, as if not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/test_optional_jax.py)")
        return None


def _estimates(est, key_fn, ops, exact):
    out = {}
    for name, op in ops.items():
        for fn in (est.hutchinson, est.hutchpp, est.xtrace):
            r = fn(key_fn(), op, num_matvecs=30)
            value, sem = float(r.value), float(r.sem)
            truth = exact[name]
            assert abs(value - truth) <= 6 * sem + 1e-9 * abs(truth), (name, fn.__name__, value, sem, truth)
            out[f"{name}/{fn.__name__}"] = [value, sem]
    return out


def workload(blocked: bool) -> dict:
    """The numba (and torch) calls: ``{"results": {name: numbers}, "errors": {...}, "jax_modules": [...]}``."""
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    import sketchtrace as st

    n = 40
    G = np.random.default_rng(0).standard_normal((n, n))
    A = G @ G.T / n + np.eye(n)
    ops = {
        "dense": A,
        "sparse": sp.csr_matrix(A),
        "scipy_linop": spla.aslinearoperator(A),
        "function": st.FunctionOperator(lambda v: A @ v, (n, n), np.float64, rmatvec=lambda v: A.T @ v),
        "gram": st.gram(G / np.sqrt(n)),
    }
    exact = {name: float(np.trace(A)) for name in ops} | {"gram": float(np.sum(G * G) / n)}

    def rng():
        return np.random.default_rng(1)

    res = _estimates(st, rng, ops, exact)
    psd = st.as_operator(A, psd=True)
    res["xnystrace"] = float(st.xnystrace(rng(), psd, num_matvecs=30).value)
    res["diagonal"] = np.asarray(st.diagonal(rng(), A, num_matvecs=30, method="xdiag").value).tolist()
    res["trace"] = float(st.trace(rng(), A, rtol=0.05, max_matvecs=39).value)
    res["logdet"] = float(st.logdet(rng(), A, num_matvecs=40, lanczos_steps=10).value)
    res["trace_inverse"] = float(st.trace_inverse(rng(), A, num_matvecs=40, lanczos_steps=10).value)
    b = np.random.default_rng(2).standard_normal(n)
    x, info = st.solve(rng(), psd, b, rank=10)
    assert bool(info.converged) and np.linalg.norm(A @ np.asarray(x) - b) <= 1e-5 * np.linalg.norm(b)
    res["nystrom_error"] = float(st.nystrom(rng(), psd, 10).error)
    blocks = st.block_traces(rng(), st.as_operator(A, blocks={"a": 10, "b": 30}), num_matvecs=20)
    res["block_traces"] = [float(blocks["a"].value), float(blocks["b"].value)]
    pc = st.predictor_corrector(num_probes=2)
    state = pc.init(rng(), A)
    res["predictor_corrector"] = float(pc.update(rng(), state, A, 1.01 * A)[0].value)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        At = torch.tensor(A)
        ops_t = {"dense": At, "gram": st.operators.torch_gram(torch.tensor(G / np.sqrt(n)))}
        res |= {
            f"torch/{k}": v for k, v in _estimates(st, lambda: torch.Generator().manual_seed(1), ops_t, exact).items()
        }
    errors = {}
    if blocked:
        calls = {
            "JacobianOperator": lambda: st.JacobianOperator(lambda x: x, np.ones(3)),
            "make_mesh": st.make_mesh,
            'backend="jax"': lambda: st.hutchinson(np.zeros(2, np.uint32), A, num_matvecs=4, backend="jax"),
            "sample_like": lambda: st.sample_like(None, {"w": np.ones(3)}),
        }
        for feature, call in calls.items():
            try:
                call()
                errors[feature] = "no error"
            except ImportError as exc:
                errors[feature] = str(exc)
    jax_modules = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    return {"results": res, "errors": errors, "jax_modules": jax_modules}


def run_blocked(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which JAX cannot be imported."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    prelude = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_optional_jax as t; "
    prelude += "sys.meta_path.insert(0, t.BlockJax()); "
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture(scope="module")
def blocked_run():
    proc = run_blocked("import json; print(json.dumps(t.workload(blocked=True)))")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_numba_and_torch_run_without_jax(blocked_run):
    assert blocked_run["jax_modules"] == []  # nothing imported JAX behind the block
    expected = workload(blocked=False)["results"]  # the same calls, here with JAX loaded
    assert set(blocked_run["results"]) == set(expected)
    for name, value in expected.items():
        assert blocked_run["results"][name] == pytest.approx(value, rel=1e-10, abs=1e-12), name


def test_jax_only_features_name_the_extra(blocked_run):
    assert len(blocked_run["errors"]) == 4
    for feature, message in blocked_run["errors"].items():
        assert EXTRA in message, (feature, message)


def test_the_block_is_effective():
    """The same subprocess fails where JAX is really needed: the block is not a no-op."""
    proc = run_blocked("from pinn_adapters import ntk_weighting")  # the JAX side (import pinn_adapters is lazy)
    assert proc.returncode != 0 and "blocked by tests/test_optional_jax.py" in proc.stderr
    proc = run_blocked("import sketchtrace, jax")
    assert proc.returncode != 0 and "No module named 'jax'" in proc.stderr


def test_missing_module_stand_in():
    from sketchtrace import _optional

    stand_in = _optional._MissingModule("jax.numpy")
    with pytest.raises(ImportError, match=r"jax\.numpy\.zeros needs JAX.*sketchtrace\[jax\]"):
        stand_in.zeros(3)
    assert not hasattr(stand_in, "__wrapped__")  # introspection is an AttributeError, not an import
    assert not isinstance(object(), _optional._NoJaxArray)


def test_cli_defaults_to_numba_without_jax():
    proc = run_blocked("from sketchtrace.cli import main; sys.exit(main(['trace', '--demo', '--matvecs', '8']))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend numba" in proc.stdout


if __name__ == "__main__":  # .ci/run: in an environment without JAX (blocked too, in case it is there)
    sys.meta_path.insert(0, BlockJax())
    out = workload(blocked=True)
    assert out["jax_modules"] == [], out["jax_modules"]
    bad = {f: m for f, m in out["errors"].items() if EXTRA not in m}
    assert not bad, bad
    print(json.dumps(out["results"]))
    print(f"no-JAX check: {len(out['results'])} estimates, {len(out['errors'])} JAX-only features refused: passed")
