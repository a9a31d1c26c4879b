"""One predictor-corrector recursion: the core, the JAX and the torch NTK weightings share it.

``sketchtrace.predictor_corrector_step`` is the recursion; these tests pin both weightings to
the same numbers on fixed quadratic forms (their probes come from different generators, so the
forms are fixed by hand), check that every pc path calls the shared function, and that the
torch refresh runs no JAX code.
"""

import gc
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinn_adapters as pa
import sketchtrace as st
from pinn_adapters import _weighting as jax_weighting

torch = pytest.importorskip("torch")

import pinn_adapters.torch as pt  # noqa: E402
from pinn_adapters.torch import _weighting as torch_weighting  # noqa: E402

NAMES = ("bc", "res")  # sorted: the JAX side's block order
T0 = np.array([3.0, 40.0])  # first (exact) block traces
ROWS = {"bc": 2, "res": 12}
# fixed quadratic forms x_t = q(params_prev), y_t = q(params): 4 updates, R = 2 replicas, B = 2 blocks
X = np.array(
    [
        [[2.5, 38.0], [3.4, 43.0]],
        [[3.1, 41.5], [2.2, 35.0]],
        [[2.8, 44.0], [3.9, 39.5]],
        [[3.3, 36.5], [2.6, 42.0]],
    ]
)
Y = X * np.array([1.07, 0.96]) + np.array([[0.05, -0.8], [-0.02, 0.6]])


def hand_recursion(gamma):
    """Block traces after each update, written out: T_{t+1} = T_t + gamma (x_t - T_t) + (y_t - x_t)."""
    T = np.broadcast_to(T0, (2, 2)).copy()
    out = []
    for x, y in zip(X, Y):
        T = T + gamma * (x - T) + (y - x)  # the same recursion, arranged differently
        out.append(T.mean(axis=0))
    return np.array(out)


def jax_traces(gamma, monkeypatch):
    forms = iter(zip(X, Y))
    exact = {n: jnp.asarray(T0[i]) for i, n in enumerate(NAMES)}
    monkeypatch.setattr(jax_weighting, "_first_traces", lambda blocks, cfg, mesh: lambda key, p, b: exact)

    def fixed_forms(key, blocks, params_prev, params, batch, cfg, *, residuals=None, residuals_prev=None):
        x, y = next(forms)
        return jnp.asarray(x), jnp.asarray(y)

    monkeypatch.setattr(jax_weighting, "pc_quad_forms", fixed_forms)
    blocks = pa.ResidualBlocks({n: (lambda p, pts: pts[:, 0] * p["w"]) for n in NAMES})
    w = pa.ntk_weighting(blocks, estimator="pc", gamma=gamma, num_probes=2, subsample=None, normalize="sum")
    params, batch = {"w": jnp.ones(())}, {n: jnp.ones((ROWS[n], 1)) for n in NAMES}
    state = w.init(jax.random.key(0), params, batch)
    traces, weights = [], []
    with jax.disable_jit():  # op by op (an eager update is compiled otherwise): the fixed forms are read per update
        for t in range(len(X)):
            wt, state = w.update(jax.random.key(t), state, params, params, batch)
            traces.append([float(state.traces[n]) for n in NAMES])
            weights.append([float(wt[n]) for n in NAMES])
    return np.array(traces), np.array(weights)


def torch_traces(gamma, monkeypatch):
    forms = iter(zip(X, Y))
    exact = {n: torch.tensor(T0[i], dtype=torch.float64) for i, n in enumerate(NAMES)}
    monkeypatch.setattr(torch_weighting.TorchNTKWeighting, "_exact", lambda self, p, b: (exact, dict(ROWS)))

    def fixed_forms(self, generator, params_prev, params, batch, residuals, residuals_prev, dtype):
        x, y = next(forms)
        return (None if gamma == 1.0 else torch.tensor(x, dtype=dtype)), torch.tensor(y, dtype=dtype), dict(ROWS)

    monkeypatch.setattr(torch_weighting.TorchNTKWeighting, "_pc_quad_forms", fixed_forms)
    net = torch.nn.Linear(1, 1).double()
    blocks = pt.TorchResidualBlocks(net, {n: (lambda model, x: model(x).reshape(-1)) for n in NAMES})
    w = pt.ntk_weighting(blocks, estimator="pc", gamma=gamma, num_probes=2, subsample=None, normalize="sum")
    params = blocks.params()
    batch = {n: torch.ones((ROWS[n], 1), dtype=torch.float64) for n in NAMES}
    state = w.init(torch.Generator().manual_seed(0), params, batch)
    traces, weights = [], []
    for t in range(len(X)):
        wt, state = w.update(torch.Generator().manual_seed(t), state, params, params, batch)
        traces.append([float(state.traces[n]) for n in NAMES])
        weights.append([float(wt[n]) for n in NAMES])
    return np.array(traces), np.array(weights)


def test_the_step_on_numpy_jax_and_torch():
    rng = np.random.default_rng(0)
    T, x, y = (rng.standard_normal((3, 4)) for _ in range(3))
    gamma = np.array([0.1, 0.3, 0.5, 1.0])  # one value per block broadcasts
    want = T + gamma * (x - T) + (y - x), y - (1 - gamma) * x
    outs = {
        "numpy": st.predictor_corrector_step(T, x, y, gamma),
        "jax.jit": jax.jit(st.predictor_corrector_step)(*map(jnp.asarray, (T, x, y, gamma))),
        "torch": st.predictor_corrector_step(*map(torch.tensor, (T, x, y, gamma))),
    }
    for name, (new, corr) in outs.items():
        np.testing.assert_allclose(np.asarray(new), want[0], rtol=1e-13, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(np.asarray(corr), want[1], rtol=1e-13, atol=1e-14, err_msg=name)
    # gamma = 1 is the fresh sample y, whatever x (0 when op_prev is not evaluated)
    assert np.array_equal(st.predictor_corrector_step(T, 0.0, y, 1.0)[0], y)


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_jax_and_torch_weightings_give_the_same_recursion_numbers(gamma, monkeypatch):
    want = hand_recursion(gamma)
    jt, jw = jax_traces(gamma, monkeypatch)
    tt, tw = torch_traces(gamma, monkeypatch)
    np.testing.assert_allclose(jt, want, rtol=1e-13)
    np.testing.assert_allclose(tt, want, rtol=1e-13)
    np.testing.assert_array_equal(jt, tt)  # the same function on the same float64 numbers
    np.testing.assert_allclose(jw, tw, rtol=1e-13)
    np.testing.assert_allclose(jw[:, 0], want.sum(axis=1) / want[:, 0], rtol=1e-12)  # wang2022: sum_j T_j / T_b


def test_the_pin_catches_another_recursion(monkeypatch):
    """Both weightings route through st.predictor_corrector_step: a wrong one moves both off the hand numbers."""
    real = st.predictor_corrector_step
    monkeypatch.setattr(st, "predictor_corrector_step", lambda T, x, y, g: real(T, 0.5 * x, y, g))  # x half-damped
    want = hand_recursion(0.3)
    for traces in (jax_traces(0.3, monkeypatch)[0], torch_traces(0.3, monkeypatch)[0]):
        assert np.max(np.abs(traces - want) / want) > 0.05


@pytest.mark.parametrize("backend", ["jax", "numba", "torch"])
def test_the_core_estimator_calls_the_shared_step(backend, monkeypatch):
    from sketchtrace.estimators import _dynamic

    calls = []
    real = _dynamic.predictor_corrector_step

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_dynamic, "predictor_corrector_step", spy)
    A = np.diag(np.arange(1.0, 8.0))
    make = {
        "jax": (jax.random.key, jnp.asarray),
        "numba": (np.random.default_rng, lambda a: a),
        "torch": (lambda s: torch.Generator().manual_seed(s), torch.tensor),
    }[backend]
    pc = st.predictor_corrector(num_probes=2, gamma=0.4321)  # a fresh configuration: traced anew
    state = pc.init(make[0](0), make[1](A))
    est, _ = pc.update(make[0](1), state, make[1](A), make[1](1.1 * A))
    assert calls, f"{backend}: predictor_corrector.update did not call predictor_corrector_step"
    assert np.isfinite(float(est.value))


def test_torch_pc_refresh_runs_no_jax_code():
    """Every Python frame entered during a torch pc init and refresh is outside JAX's packages."""
    import jaxlib

    roots = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax, jaxlib))
    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    blocks = pt.TorchResidualBlocks(net, {"bc": lambda m, x: m(x).reshape(-1), "res": lambda m, x: m(x).reshape(-1)})
    batch = {
        "bc": torch.zeros((2, 1), dtype=torch.float64),
        "res": torch.linspace(0, 1, 80, dtype=torch.float64)[:, None],
    }
    w = pt.ntk_weighting(blocks, estimator="pc", gamma=0.3, num_probes=2)  # forward differences, subsample="auto"
    p0 = blocks.params()
    p1 = {k: v + 0.01 for k, v in p0.items()}
    seen = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(roots):
            seen.append(frame.f_code.co_filename)

    gc.disable()  # JAX registers a garbage-collection callback: a collection is not the refresh's doing
    sys.setprofile(profile)
    try:
        state = w.init(torch.Generator().manual_seed(0), p0, batch)
        _, state = w.update(torch.Generator().manual_seed(1), state, p0, p1, batch)
    finally:
        sys.setprofile(None)
        gc.enable()
    assert not seen, f"the torch refresh entered JAX code: {sorted(set(seen))[:5]}"
    assert state.rejected == 0 and all(float(t) > 0 for t in state.traces.values())
    # the check sees JAX when a refresh does use it (here: one jnp call in the weights' guard)
    real = torch_weighting._guarded_weights
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_weighting, "_guarded_weights", lambda *a, **k: (jnp.zeros(()), real(*a, **k))[1])
        gc.disable()
        sys.setprofile(profile)
        try:
            w.update(torch.Generator().manual_seed(2), state, p1, p0, batch)
        finally:
            sys.setprofile(None)
            gc.enable()
    assert seen
