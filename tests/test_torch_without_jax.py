"""``import pinn_adapters.torch`` needs neither JAX nor the JAX side of ``pinn_adapters``.

A subprocess in which ``jax`` cannot be imported (the finder of ``tests/test_optional_jax.py``)
imports ``pinn_adapters.torch``, refreshes a small torch NTK weighting (pc and grad-norm) and
prints the weights; the same calls here, with JAX loaded, give the same numbers. The JAX names
of ``pinn_adapters`` must fail there with an ImportError that names the extra.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_optional_jax import run_blocked  # noqa: E402

#: modules of pinn_adapters that the torch side may load: the package file and pure-Python helpers
SHARED = ("pinn_adapters", "pinn_adapters._sizes", "pinn_adapters._weighting_api")


def workload() -> dict:
    """Init and two updates of a torch pc and grad-norm weighting on a 1-D Poisson PINN (float64)."""
    import sys

    import torch

    import pinn_adapters.torch as pt

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    fns = {
        "pde": lambda model, x: (model(x) - torch.sin(x)).reshape(-1),
        "bc": lambda model, x: model(x).reshape(-1),
    }
    blocks = pt.TorchResidualBlocks(net, fns)
    batch = {
        "pde": torch.linspace(0, 1, 16, dtype=torch.float64)[:, None],
        "bc": torch.zeros((2, 1), dtype=torch.float64),
    }
    p0 = blocks.params()
    p1 = {k: v + 0.01 * torch.ones_like(v) for k, v in p0.items()}
    out = {}
    for name, w in {
        "pc": pt.ntk_weighting(blocks, num_probes=2, gamma=0.5),
        "gradnorm": pt.gradnorm_weighting(blocks, every=1),
    }.items():
        g = torch.Generator().manual_seed(3)
        state = w.init(g, p0, batch)
        weights, state = w.update(g, state, p0, p1, batch)
        weights, state = w.update(g, state, p1, p0, batch)
        out[name] = {n: float(v) for n, v in weights.items()}
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "pinn_adapters"))
    jax_side = [m for m in loaded if m.startswith("pinn_adapters") and m not in SHARED and ".torch" not in m]
    return {"weights": out, "jax_modules": [m for m in loaded if m.startswith("jax")], "jax_side": jax_side}


@pytest.fixture(scope="module")
def blocked():
    code = "import test_torch_without_jax as w, json; print(json.dumps(w.workload())); "
    code += "from pinn_adapters import ntk_weighting"  # must fail: a JAX name
    return run_blocked(code)


def test_torch_side_runs_without_jax(blocked):
    lines = blocked.stdout.strip().splitlines()
    assert lines, blocked.stderr[-3000:]
    out = json.loads(lines[-1])
    assert out["jax_modules"] == []  # nothing imported JAX behind the block
    assert out["jax_side"] == []  # nor a JAX module of pinn_adapters
    expected = workload()["weights"]  # the same calls, here with JAX loaded
    assert set(out["weights"]) == set(expected)
    for name, weights in expected.items():
        assert out["weights"][name] == pytest.approx(weights, rel=1e-12), name
    for weights in out["weights"].values():
        assert all(v > 0 for v in weights.values())


def test_jax_names_name_the_extra_without_jax(blocked):
    assert blocked.returncode != 0
    assert "pinn_adapters.ntk_weighting needs JAX" in blocked.stderr
    assert "sketchtrace[pinn]" in blocked.stderr


def test_torch_side_loads_no_jax_module_of_pinn_adapters():
    """With JAX installed too: ``import pinn_adapters.torch`` loads none of the JAX side."""
    code = "import sys, json, pinn_adapters.torch; print(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = [m for m in json.loads(proc.stdout.strip().splitlines()[-1]) if m.split(".")[0] == "pinn_adapters"]
    assert "pinn_adapters.torch._weighting" in loaded  # the check sees the torch side's modules
    assert [m for m in loaded if m not in SHARED and ".torch" not in m] == []
