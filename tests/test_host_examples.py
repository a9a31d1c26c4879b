"""The host examples of docs/adapters.md (Equinox, Flax nnx, jinns Burgers) run at their tiny
documented size, and their outcomes are checked: training lowers the unweighted loss, the
weighting's wall time is measured next to the step's, jinns_train reports unweighted terms and
its Cole-Hopf reference solves Burgers' equation."""

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("equinox")
pytest.importorskip("flax")
jinns = pytest.importorskip("jinns")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


@pytest.fixture(scope="module")
def ns():
    """Run the page's blocks up to and including the host examples (one namespace)."""
    text = PAGE.read_text()
    text = text[: text.index("## jaxpi")]
    namespace = {"__name__": "docs_adapters"}
    for i, code in enumerate(FENCE.findall(text)):
        exec(compile(code, f"adapters.md[block {i}]", "exec"), namespace)
    yield namespace
    jinns.parameters.EqParams.clear()  # the Burgers example registered 'nu'


@pytest.mark.parametrize("host", ["eqx", "nnx"])
def test_equinox_and_flax_examples_train_and_time_the_weighting(ns, host):
    first, last, times = ns[f"{host}_first"], ns[f"{host}_last"], ns[f"{host}_times"]
    assert np.isfinite(last) and last < 0.5 * first  # 60 Adam steps on the weighted loss
    assert times["refresh"] > 0 and times["step"] > 0


def test_cole_hopf_reference_solves_burgers(ns):
    u, nu = ns["cole_hopf"], ns["NU"]
    t, x, h = 0.4, np.linspace(-0.9, 0.9, 7), 1e-4
    ut = (u(t + h, x) - u(t - h, x)) / (2 * h)
    ux = (u(t, x + h) - u(t, x - h)) / (2 * h)
    uxx = (u(t, x + h) - 2 * u(t, x) + u(t, x - h)) / h**2
    assert np.max(np.abs(ut + u(t, x) * ux - nu * uxx)) < 1e-5
    np.testing.assert_allclose(u(1e-9, x), -np.sin(np.pi * x), atol=1e-6)
    np.testing.assert_allclose(u(0.7, np.array([-1.0, 1.0])), 0.0, atol=1e-9)
    assert np.max(np.abs(u(0.4, x) + np.sin(np.pi * x))) > 0.05  # it is not just the initial condition


def test_jinns_burgers_example(ns):
    plain, weighted = ns["plain"], ns["weighted"]
    assert 0 < ns["err_plain"] < 1.5 and 0 < ns["err_weighted"] < 1.5
    w = weighted.history["weights"]
    assert set(w) == {"boundary_loss", "dyn_loss", "initial_condition"}
    for n in w:  # refreshed at iterations 0, 20, 40 and kept in between
        v = np.asarray(w[n])
        assert v.shape == (60,) and np.all(v[1:20] == v[0]) and np.all(v[21:40] == v[20])
        assert np.all(np.asarray(plain.history["weights"][n]) == 1.0)
    total = sum(np.asarray(w[n]) * np.asarray(weighted.history["terms"][n]) for n in w)
    np.testing.assert_allclose(np.asarray(weighted.history["loss"]), total, rtol=1e-5)
    assert ns["t_refresh"] > 0 and weighted.seconds["run"] > 0
