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


# ----------------------------------------------------------------------------- jaxpi's schedule


def test_jaxpi_weighting_reproduces_jaxpi_schedule():
    import jax
    import jax.numpy as jnp

    import pinn_adapters as pa
    from pinn_adapters import adapters

    fns = {"a": lambda p, x: jnp.tanh(p["w"] * x + p["b"]), "b": lambda p, x: p["w"] * x**2 + p["b"]}
    blocks = pa.ResidualBlocks(fns)
    batch = {"a": jnp.linspace(0, 1, 6), "b": jnp.linspace(0, 1, 4)}

    def jaxpi_diag(p, name):  # jaxpi's way: a per-point grad under vmap
        g = jax.vmap(jax.grad(lambda q, x: fns[name](q, x)), (None, 0))(p, batch[name])
        return sum(jnp.square(v) for v in jax.tree.leaves(g))

    params = [{"w": jnp.asarray(0.7 + 0.1 * s), "b": jnp.asarray(0.2 - 0.05 * s)} for s in range(7)]
    w = adapters.jaxpi_weighting(blocks, every=3, momentum=0.9)
    state = w.init()
    expect = {"a": 1.0, "b": 1.0}
    for step, p in enumerate(params):  # the weights after each step `step`
        got, state = w.update(state, p, batch)
        if step % 3 == 0:  # jaxpi: refresh after steps 0, 3, 6, ..., running average from one
            m = {n: float(jnp.mean(jaxpi_diag(p, n))) for n in fns}
            mean = sum(m.values()) / 2
            expect = {n: 0.9 * expect[n] + 0.1 * mean / m[n] for n in fns}
        for n in fns:
            np.testing.assert_allclose(float(got[n]), expect[n], rtol=1e-5)
    # grad_norm: mean_j ||grad L_j|| / ||grad L_i|| with L the mean squared residual
    g = adapters.jaxpi_weighting(blocks, scheme="grad_norm", every=1, momentum=0.0)
    got, _ = g.update(g.init(), params[0], batch)
    norms = {}
    for n in fns:
        grads = jax.grad(lambda q, n=n: jnp.mean(fns[n](q, batch[n]) ** 2))(params[0])
        norms[n] = float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(grads))))
    for n in fns:
        np.testing.assert_allclose(float(got[n]), (sum(norms.values()) / 2) / norms[n], rtol=1e-5)
    # the causal variant: chunk means of the residual diagonal times the causal weights
    d, cw = jnp.arange(1.0, 7.0), jnp.asarray([1.0, 0.5, 0.25])
    np.testing.assert_allclose(adapters.causal_ntk(d, cw, 3), [1.5, 1.75, 1.375])
    with pytest.raises(ValueError, match="num_chunks"):
        adapters.causal_ntk(d, cw[:2] * 0 + 1, 4)
    with pytest.raises(ValueError, match="scheme"):
        adapters.jaxpi_weighting(blocks, scheme="ntkx")
