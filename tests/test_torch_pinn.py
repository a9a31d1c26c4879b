"""pinn_adapters.torch: NTK traces and weights for torch PINNs, and the PINA and DeepXDE adapters.

Every exact trace is checked against an independently computed Jacobian (the host's own
residual path and ``torch.autograd``), float64, to 1e-5 relative or better.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.func import grad, vmap

import pinn_adapters.torch as pt
from pinn_adapters import ntk_weights
from pinn_adapters._sizes import sample_size
from sketchtrace.testing import assert_unbiased


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def gen(seed):
    return torch.Generator().manual_seed(int(seed))


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def pde_func(model, x):  # u'' + pi^2 sin(pi x), written with torch.func
    def u(xi):
        return model(xi.reshape(1, 1)).reshape(())

    return vmap(grad(grad(u)))(x.reshape(-1)) + torch.pi**2 * torch.sin(torch.pi * x.reshape(-1))


def pde_autograd(model, x):  # the same residual written with torch.autograd (PINA/DeepXDE style)
    x = x.clone().requires_grad_(True)
    u = model(x)
    (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (uxx,) = torch.autograd.grad(ux.sum(), x, create_graph=True)
    return (uxx + torch.pi**2 * torch.sin(torch.pi * x)).reshape(-1)


def bc(model, x):
    return model(x).reshape(-1)


BATCH = {
    "pde": torch.linspace(0, 1, 12, dtype=torch.float64)[:, None],
    "bc": torch.tensor([[0.0], [1.0]], dtype=torch.float64),
}


def independent_traces(net, fns, batch):
    """||J_b||_F^2 from the full Jacobian (torch.autograd.functional.jacobian over the parameters)."""
    names = [k for k, _ in net.named_parameters()]
    leaves = tuple(p.detach() for p in net.parameters())
    out = {}
    for block, fn in fns.items():

        def res(*ps, fn=fn, pts=batch[block]):
            return fn(lambda x: torch.func.functional_call(net, dict(zip(names, ps)), (x,)), pts)

        jac = torch.autograd.functional.jacobian(res, leaves)
        out[block] = float(sum(j.square().sum() for j in jac))
    return out


@pytest.fixture(scope="module")
def blocks():
    net = _net()
    return pt.TorchResidualBlocks(net, {"pde": pde_func, "bc": bc}), pt.TorchResidualBlocks(
        net, {"pde": pde_autograd, "bc": bc}
    )


def test_exact_traces_vmap_and_loop_match_the_full_jacobian(blocks):
    fb, ab = blocks
    truth = independent_traces(fb.module, {"pde": pde_func, "bc": bc}, BATCH)
    for b in (fb, ab):
        est = pt.ntk_traces(None, b, b.params(), BATCH, chunk_size=5, normalize="sum")
        for n in ("pde", "bc"):
            np.testing.assert_allclose(float(est[n].value), truth[n], rtol=1e-10)
            assert float(est[n].sem) == 0
    assert fb._mode["pde"] == "vmap" and ab._mode["pde"] == "loop"
    mean = pt.ntk_traces(None, fb, fb.params(), BATCH)  # default: the blocks' reduction ("mean")
    np.testing.assert_allclose(float(mean["pde"].value), truth["pde"] / 12, rtol=1e-10)


@pytest.mark.parametrize("jvp", ["func", "autograd", "forward"])
def test_hutchinson_traces_unbiased(blocks, jvp):
    fb, ab = blocks
    b = fb if jvp == "func" else ab
    truth = independent_traces(b.module, {"pde": pde_autograd}, BATCH)["pde"]
    p = b.params()
    fn = lambda s: pt.ntk_traces(gen(s), b, p, BATCH, method="hutchinson", num_matvecs=8, jvp=jvp, normalize="sum")[
        "pde"
    ]
    # forward differences carry an O(h) bias far below the test's resolution (h ~ 1.5e-8)
    report = assert_unbiased(fn, truth, num_trials=60)
    # a bias of 1.5x what the test is built to detect (from the estimator's own spread) is caught
    factor = 1 + 1.5 * report.detectable_bias / truth
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(lambda s: factor * fn(s).value, truth, num_trials=60)


@pytest.mark.parametrize("subsample", [None, 0.5])
def test_pc_step_is_unbiased(blocks, subsample):
    fb, _ = blocks
    p0 = fb.params()
    p1 = {k: v + 0.05 * torch.randn(v.shape, generator=gen(9), dtype=v.dtype) for k, v in p0.items()}
    truth = independent_traces(_moved(fb.module, p1), {"pde": pde_func, "bc": bc}, BATCH)
    # subsample: one random half of each block's points per refresh, scaled by n / m (unbiased too)
    w = pt.ntk_weighting(fb, estimator="pc", num_probes=2, gamma=0.3, jvp="func", subsample=subsample, normalize="sum")

    def one(s):
        state = w.init(gen(s), p0, BATCH)
        _, state = w.update(gen(s), state, p0, p1, BATCH)
        return state.traces["pde"]

    assert_unbiased(one, truth["pde"], num_trials=60)


def _moved(net, params):
    new = _net()
    with torch.no_grad():
        for k, v in new.named_parameters():
            v.copy_(params[k])
    return new


def test_weighting_contract(blocks):
    fb, ab = blocks
    p = fb.params()
    w = pt.ntk_weighting(ab, estimator="exact", every=2, normalize="sum")
    state = w.init(None, p, BATCH)
    truth = independent_traces(fb.module, {"pde": pde_func, "bc": bc}, BATCH)
    expect = ntk_weights(truth)
    for n in ("pde", "bc"):
        np.testing.assert_allclose(float(state.weights[n]), float(expect[n]), rtol=1e-5)
    kept, state = w.update(None, state, p, p, BATCH)  # every=2: the first update keeps the weights
    assert kept is state.weights and state.count == 1
    _, state = w.update(None, state, p, p, BATCH)
    assert state.count == 2
    for bad in (
        {"estimator": "nope"},
        {"gamma": 0.0},
        {"jvp": "x"},
        {"every": 0},
        {"cap": -1.0},
        {"subsample": 0.0},
        {"subsample": 2, "estimator": "exact"},
    ):
        with pytest.raises((ValueError, TypeError)):
            pt.ntk_weighting(fb, **bad)
    with pytest.raises(TypeError, match="torch.Generator"):
        pt.ntk_traces(0, fb, p, BATCH, method="hutchinson", num_matvecs=2)
    with pytest.raises(ValueError, match="batch must map"):
        pt.ntk_traces(None, fb, p, {"pde": BATCH["pde"]})


# ----------------------------------------------------------------------------- PINA


def _pina_solver(weighting):
    pytest.importorskip("pina")
    from pina.model import FeedForward
    from pina.problem.zoo import Poisson2DSquareProblem
    from pina.solver import PhysicsInformedSingleModelSolver

    torch.manual_seed(0)
    problem = Poisson2DSquareProblem()
    problem.discretise_domain(n=4, mode="grid", domains="D")
    problem.discretise_domain(n=3, mode="grid", domains="boundary")
    model = FeedForward(input_dimensions=2, output_dimensions=1, inner_size=6, n_layers=2)
    return PhysicsInformedSingleModelSolver(problem, model, weighting=weighting)


def _pina_train(solver, epochs):
    from pina import Trainer

    trainer = Trainer(
        solver,
        max_epochs=epochs,
        accelerator="cpu",
        batch_size=None,
        train_size=1.0,
        val_size=0.0,
        test_size=0.0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.train()


def _pina_independent_traces(solver):
    """Per-condition ||J_c||_F^2 through PINA's own condition.evaluate and autograd on the model's parameters."""
    from pinn_adapters.torch.pina import condition_points

    params = [p for p in solver.model.parameters() if p.requires_grad]
    out = {}
    for name, cond in solver.problem.conditions.items():
        r = (
            cond.evaluate({"input": condition_points(solver.problem, name)}, solver)
            .as_subclass(torch.Tensor)
            .reshape(-1)
        )
        out[name] = float(sum(_row_sq_norm(ri, params) for ri in r))
    return out


def _row_sq_norm(ri, params):
    grads = torch.autograd.grad(ri, params, retain_graph=True, allow_unused=True)  # a bias may drop out of u''
    return sum(g.square().sum() for g in grads if g is not None)


def test_pina_weighting_matches_exact_traces(float64):
    from pinn_adapters.torch.pina import NTKWeighting

    w = NTKWeighting("exact", normalize="sum")
    solver = _pina_solver(w)
    _pina_train(solver, 2)
    assert w.refreshes == 2  # one refresh per epoch
    # refresh at the trained parameters (PINA's hook), then compare with an independent computation there
    w._last_epoch = None
    solver.train()
    got = w.update_weights({n: torch.zeros((), dtype=torch.float64) for n in solver.problem.conditions})
    truth = _pina_independent_traces(solver)
    assert set(w.traces) == set(truth)
    for n, t in truth.items():
        np.testing.assert_allclose(float(w.traces[n]), t, rtol=1e-5)
    expect = ntk_weights(truth)
    for n in truth:
        np.testing.assert_allclose(float(got[n]), float(expect[n]), rtol=1e-5)


def test_pina_pc_weighting_trains(float64):
    from pinn_adapters.torch.pina import NTKWeighting

    w = NTKWeighting("pc", num_probes=2, gamma=0.5, seed=1)
    solver = _pina_solver(w)
    _pina_train(solver, 3)
    weights = w.last_saved_weights()
    assert set(weights) == set(solver.problem.conditions)
    assert all(float(v) >= 1.0 and np.isfinite(float(v)) for v in weights.values())
    with pytest.raises(ValueError, match="estimator"):
        NTKWeighting("bogus")


# ----------------------------------------------------------------------------- DeepXDE


@pytest.fixture
def dde():
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    dde = pytest.importorskip("deepxde")
    if dde.backend.backend_name != "pytorch":
        pytest.skip("DeepXDE was imported with another backend")
    old = torch.get_default_dtype()
    dde.config.set_default_float("float64")
    yield dde
    torch.set_default_dtype(old)
    dde.config.set_default_float("float32")


def _dde_poisson(dde):
    """DeepXDE's documented 1D Poisson/Dirichlet example (pinn_forward/Poisson_Dirichlet_1d), tiny."""

    def pde(x, y):
        return -dde.grad.hessian(y, x) - np.pi**2 * torch.sin(np.pi * x)

    def func(x):
        return np.sin(np.pi * x)

    geom = dde.geometry.Interval(-1, 1)
    bcond = dde.icbc.DirichletBC(geom, func, lambda _, on_boundary: on_boundary)
    data = dde.data.PDE(geom, pde, bcond, 8, 2, solution=func, num_test=10)
    torch.manual_seed(0)
    net = dde.nn.FNN([1, 8, 8, 1], "tanh", "Glorot uniform")
    model = dde.Model(data, net)
    model.compile("adam", lr=1e-3)
    return model, pde, func


def _dde_independent_traces(model, pde, func):
    """||J||_F^2 of the PDE residual (user's pde on the non-boundary rows) and of u - g on the boundary rows."""
    X = torch.as_tensor(model.data.train_x).requires_grad_(True)
    nb = model.data.num_bcs[0]
    y = model.net(X)
    r = {
        "pde": pde(X, y).reshape(-1)[nb:],
        "bc0": (y[:nb] - torch.as_tensor(func(model.data.train_x[:nb]))).reshape(-1),
    }
    params = list(model.net.parameters())
    return {n: float(sum(_row_sq_norm(ri, params) for ri in v)) for n, v in r.items()}


def test_deepxde_callback_matches_exact_traces(dde):
    from pinn_adapters.torch.deepxde import NTKWeights

    model, pde, func = _dde_poisson(dde)
    cb = NTKWeights("exact", period=2, normalize="sum")
    model.train(iterations=3, callbacks=[cb], display_every=100, verbose=0)
    assert [h[0] for h in cb.history] == [0, 2]
    # the weights set at the last refresh (iteration 2) against traces computed independently at those parameters
    truth = _dde_independent_traces_at(model, pde, func, cb._params_prev)
    for n, t in truth.items():
        np.testing.assert_allclose(float(cb.state.traces[n]), t, rtol=1e-5)
    expect = ntk_weights(truth)
    np.testing.assert_allclose(model.loss_weights, [float(expect["pde"]), float(expect["bc0"])], rtol=1e-5)


def _dde_independent_traces_at(model, pde, func, params):
    saved = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    with torch.no_grad():
        for k, v in model.net.named_parameters():
            v.copy_(params[k])
    try:
        return _dde_independent_traces(model, pde, func)
    finally:
        with torch.no_grad():
            for k, v in model.net.named_parameters():
                v.copy_(saved[k])


def test_deepxde_pc_callback_runs(dde):
    from pinn_adapters.torch.deepxde import NTKWeights

    model, _, _ = _dde_poisson(dde)
    cb = NTKWeights("pc", period=1, num_probes=2, gamma=0.5)
    model.train(iterations=3, callbacks=[cb], display_every=100, verbose=0)
    assert len(cb.history) == 3 and all(np.isfinite(list(w.values())).all() for _, w in cb.history)


# ----------------------------------------------------------------------------- issue 26/27: cost, pc, schedules


class Counted:
    """A residual function that records how many points each call evaluates."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, model, x):
        self.calls.append(int(x.shape[0]))
        return self.fn(model, x)


def test_exact_autograd_traces_run_on_point_chunks():
    net = _net()
    pde, b = Counted(pde_autograd), Counted(bc)
    blocks = pt.TorchResidualBlocks(net, {"pde": pde, "bc": b}, per_sample="loop")
    truth = independent_traces(net, {"pde": pde_autograd, "bc": bc}, BATCH)
    est = pt.exact_traces(blocks, blocks.params(), BATCH, chunk_size=4)
    for n in truth:
        np.testing.assert_allclose(float(est[n]), truth[n], rtol=1e-10)
    # linear in the rows: every point evaluated once, each graph at most chunk_size points
    assert pde.calls == [4, 4, 4] and b.calls == [2]
    # not pointwise: one graph over the whole block (the quadratic fallback, stated in the docs)
    whole = pt.TorchResidualBlocks(net, {"pde": pde, "bc": b}, per_sample="loop", pointwise=False)
    pde.calls.clear()
    pt.exact_traces(whole, whole.params(), BATCH, chunk_size=4)
    assert pde.calls == [12]


def _moved_params(p0, seed=9, scale=0.05):
    return {k: v + scale * torch.randn(v.shape, generator=gen(seed), dtype=v.dtype) for k, v in p0.items()}


@pytest.mark.parametrize("passed", [0, 1, 2])
def test_pc_evaluates_each_block_once_per_parameter_point(passed):
    net = _net()
    pde, b = Counted(pde_autograd), Counted(bc)
    blocks = pt.TorchResidualBlocks(net, {"pde": pde, "bc": b})
    p0 = blocks.params()
    p1 = _moved_params(p0)
    R = 3
    w = pt.ntk_weighting(blocks, estimator="pc", num_probes=R, gamma=0.5, subsample=None)
    state = w.init(gen(0), p0, BATCH)
    res = {"residuals": blocks.residuals(p1, BATCH), "residuals_prev": blocks.residuals(p0, BATCH)}
    kw = dict(list(res.items())[:passed]) if passed < 2 else res
    w.update(gen(1), state, p0, p1, BATCH)  # the first refresh also finds that vmap cannot run these residuals
    pde.calls.clear(), b.calls.clear()
    w.update(gen(1), state, p0, p1, BATCH, **kw)
    points = 2 * R + 2 - passed  # p_prev + h v_k, p + h v_k, and the unperturbed residuals not passed in
    assert len(pde.calls) == points and len(b.calls) == points  # autograd residuals: one call per point
    # torch.func residuals: all parameter points of a block in one vmapped call
    f = Counted(pde_func)
    fb = pt.TorchResidualBlocks(net, {"pde": f, "bc": bc})
    w = pt.ntk_weighting(fb, estimator="pc", num_probes=R, gamma=0.5, subsample=None)
    state = w.init(gen(0), p0, BATCH)
    f.calls.clear()
    w.update(gen(1), state, p0, p1, BATCH)
    assert len(f.calls) == 1


def test_pc_forward_differences_unbiased_per_block_with_subsampling(float64):
    net = _net()
    blocks = pt.TorchResidualBlocks(net, {"pde": pde_func, "bc": bc})
    p0 = blocks.params()
    p1 = _moved_params(p0)
    truth = independent_traces(_moved(net, p1), {"pde": pde_func, "bc": bc}, BATCH)
    sub = {"pde": 5, "bc": 1}  # 5 of 12 PDE points, 1 of 2 boundary points per refresh
    w = pt.ntk_weighting(blocks, estimator="pc", num_probes=2, gamma=0.3, subsample=sub, normalize="sum")
    state0 = w.init(gen(0), p0, BATCH)  # exact first traces: deterministic, computed once
    cache = {}

    def one(s, name):  # one refresh per seed, shared by both blocks and the biased variant
        if s not in cache:
            cache[s] = w.update(gen(s + 10_000), state0, p0, p1, BATCH)[1].traces
        return cache[s][name]

    for name, m in (("pde", 5), ("bc", 1)):
        n = BATCH[name].shape[0]
        report = assert_unbiased(lambda s, name=name: one(s, name), truth[name], num_trials=200)
        # the same estimator without the n / m scale is caught
        with pytest.raises(AssertionError, match="biased"):
            assert_unbiased(lambda s, name=name: one(s, name) * (m / n), truth[name], num_trials=200)
        assert report.detectable_bias < 0.5 * truth[name] * (1 - m / n)
    # the subset size rule is the JAX side's (ceil)
    assert sample_size(0.3, 12) == 4 and sample_size("auto", 2780) == 278 and sample_size("auto", 80) == 64


def test_schedules_every_and_jaxpi_initial_ones():
    net = _net()
    blocks = pt.TorchResidualBlocks(net, {"pde": pde_func, "bc": bc})
    p = blocks.params()
    w = pt.ntk_weighting(blocks, estimator="exact", every=3)
    state = w.init(None, p, BATCH)
    refreshed = []
    for step in range(1, 8):
        before = state.traces
        _, state = w.update(None, state, p, _moved_params(p, step), BATCH)
        refreshed.append(state.traces is not before)
    assert refreshed == [False, False, True, False, False, True, False]
    # jaxpi: unit weights, a refresh after the first step, then every `every`, EMA from one
    w = pt.ntk_weighting(blocks, estimator="exact", every=3, ema=0.9, initial="ones")
    state = w.init(None, p, BATCH)
    assert all(float(v) == 1.0 for v in state.weights.values())
    p1 = _moved_params(p, 1)
    weights, state = w.update(None, state, p, p1, BATCH)
    # default normalize: the blocks' reduction ("mean"), so per-row traces
    fresh = ntk_weights({k: float(v) / BATCH[k].shape[0] for k, v in pt.exact_traces(blocks, p1, BATCH).items()})
    for n in ("pde", "bc"):
        np.testing.assert_allclose(float(weights[n]), 0.9 + 0.1 * float(fresh[n]), rtol=1e-5)
    counts = [w.update(None, state._replace(count=c), p, p1, BATCH)[1].traces is not state.traces for c in (1, 2, 3)]
    assert counts == [False, False, True]  # refreshes at updates 1, 4, 7, ...


def test_gradnorm_weights_against_a_hand_computation():
    net = _net()
    blocks = pt.TorchResidualBlocks(net, {"pde": pde_autograd, "bc": bc})
    p = blocks.params()
    params = list(net.parameters())
    norms = {}
    for name, fn in (("pde", pde_autograd), ("bc", bc)):
        loss = fn(net, BATCH[name]).square().mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norms[name] = float(torch.sqrt(sum(g.square().sum() for g in grads if g is not None)))
    lam = {n: (norms["pde"] + norms["bc"]) / norms[n] for n in norms}
    w = pt.gradnorm_weighting(blocks, every=2, momentum=0.9)
    state = w.init(None, p, BATCH)
    for n in lam:
        np.testing.assert_allclose(float(state.weights[n]), lam[n], rtol=1e-10)
    _, state = w.update(None, state, p, p, BATCH)  # update 1: kept
    weights, state = w.update(None, state, p, p, BATCH)  # update 2: refresh, 0.9 w + 0.1 lambda
    for n in lam:
        np.testing.assert_allclose(float(weights[n]), lam[n], rtol=1e-10)
    jw = pt.gradnorm_weighting(blocks, initial="ones")
    state = jw.init(None, p, BATCH)
    weights, _ = jw.update(None, state, p, p, BATCH)
    for n in lam:
        np.testing.assert_allclose(float(weights[n]), 0.9 + 0.1 * lam[n], rtol=1e-10)
    with pytest.raises(ValueError, match="rule"):
        pt.ntk_weighting(blocks, estimator="gradnorm", rule="jaxpi")
    alias = pt.ntk_weighting(blocks, estimator="grad_norm", every=2, ema=0.9).init(None, p, BATCH)
    for n in lam:  # the "grad_norm" spelling is the same weighting
        np.testing.assert_allclose(float(alias.weights[n]), lam[n], rtol=1e-10)
    assert pt.grad_norm_weighting is pt.gradnorm_weighting


def test_torch_weighting_does_not_import_jax_weighting():
    import importlib
    import inspect

    for mod in ("_blocks", "_ntk", "_weighting", "pina", "deepxde"):
        src = inspect.getsource(importlib.import_module(f"pinn_adapters.torch.{mod}"))
        assert "import jax" not in src and "_weighting import" not in src.replace("._weighting import", "")
        assert "from .._ntk" not in src


def test_deepxde_schedule_user_weights_lbfgs_and_refusals(dde):
    import warnings

    from pinn_adapters.torch.deepxde import NTKWeights

    with pytest.raises(ValueError, match="not both"):
        NTKWeights("pc", period=2, every=2)
    with pytest.raises(ValueError, match="jvp='func'"):
        NTKWeights("pc", jvp="func")
    with pytest.raises(ValueError, match="estimator"):
        NTKWeights("bogus")
    with pytest.raises(ValueError, match="subsample"):
        NTKWeights("exact", subsample=4)  # refused at construction, not inside model.train
    assert NTKWeights("pc").period == 5 and NTKWeights("exact").period == 100 and NTKWeights("gradnorm").period == 1000
    # every= is period=: one schedule, refreshes recorded only where they happen
    model, _, _ = _dde_poisson(dde)
    cb = NTKWeights("exact", every=2)
    model.train(iterations=5, callbacks=[cb], display_every=100, verbose=0)
    assert [h[0] for h in cb.history] == [0, 2, 4] and cb.state.count == 2
    # the user's loss_weights are kept as fixed factors (or refused)
    model, _, _ = _dde_poisson(dde)
    model.compile("adam", lr=1e-3, loss_weights=[1.0, 10.0])
    cb = NTKWeights("exact", period=100)
    model.train(iterations=1, callbacks=[cb], display_every=100, verbose=0)
    w = cb.history[-1][1]
    np.testing.assert_allclose(model.loss_weights, [w["pde"], 10.0 * w["bc0"]], rtol=1e-12)
    model2, _, _ = _dde_poisson(dde)
    model2.compile("adam", lr=1e-3, loss_weights=[1.0, 10.0])
    with pytest.raises(ValueError, match="loss_weights"):
        model2.train(iterations=1, callbacks=[NTKWeights("exact", user_weights="refuse")], verbose=0)
    # L-BFGS: the last weights held fixed, with a warning
    dde.optimizers.config.set_LBFGS_options(maxiter=3)
    model.compile("L-BFGS")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model.train(callbacks=[cb], verbose=0)
    assert any("L-BFGS" in str(r.message) for r in rec)
    np.testing.assert_allclose(model.loss_weights, cb.loss_weights)


def test_deepxde_terms_are_pointwise_on_their_own_points(dde):
    from pinn_adapters.torch.deepxde import NTKWeights

    model, pde, func = _dde_poisson(dde)
    cb = NTKWeights("exact", period=100, normalize="sum", chunk_size=3)
    model.train(iterations=1, callbacks=[cb], display_every=100, verbose=0)
    assert cb.blocks.pointwise
    nb = model.data.num_bcs[0]
    assert cb._points["pde"].shape[0] == model.data.train_x.shape[0] - nb and cb._points["bc0"].shape[0] == nb
    truth = _dde_independent_traces_at(model, pde, func, cb._params_prev)
    for n, t in truth.items():  # chunked (3 points per graph) = the whole-graph computation
        np.testing.assert_allclose(float(cb.state.traces[n]), t, rtol=1e-8)


def test_pina_alias_training_split_and_one_refresh_per_epoch(float64):
    from pina import Trainer

    from pinn_adapters.torch.pina import NTKWeighting

    with pytest.raises(ValueError, match="alpha"):
        NTKWeighting("pc", alpha=0.5, ema=0.5)
    with pytest.raises(ValueError, match="alpha"):
        NTKWeighting("pc", alpha=1.5)
    with pytest.raises(ValueError, match="update_every_n_epochs"):
        NTKWeighting("pc", every=3)
    assert NTKWeighting("pc", alpha=0.5)._probe_cfg()["ema"] == 0.5
    # whole-block traces by default (the measured choice on PINA's Poisson tutorial); "mean" on request
    assert NTKWeighting("pc")._probe_cfg()["normalize"] == "sum"
    assert NTKWeighting("exact", normalize="mean")._probe_cfg()["normalize"] == "mean"
    with pytest.raises(ValueError, match="normalize"):
        NTKWeighting("exact", normalize="median")
    w = NTKWeighting("exact", normalize="sum")
    solver = _pina_solver(w)
    trainer = Trainer(
        solver,
        max_epochs=2,
        accelerator="cpu",
        batch_size=4,
        train_size=0.5,
        val_size=0.0,
        test_size=0.5,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.train()
    assert w.refreshes == 2  # several batches per epoch, one refresh per epoch
    split = trainer.data_module.split_idxs
    for n, pts in w.batch().items():
        assert pts.shape[0] == len(split[n]["train"])  # training points only, never the test half


def test_refresh_with_a_non_positive_trace_is_rejected(blocks, monkeypatch):
    """As on the JAX side: a pc estimate that crosses zero keeps the previous weights (state.rejected counts)."""
    from pinn_adapters.torch import _weighting as tw

    fb, _ = blocks
    p = fb.params()
    w = pt.ntk_weighting(fb, estimator="pc", gamma=0.5, num_probes=2, subsample=None, normalize="sum")
    state = w.init(gen(0), p, BATCH)
    T = state.inner  # (R, B) replicas at the exact traces
    y = T.clone()
    y[:, 0] = -3 * T[:, 0]  # the first block's estimate goes below zero, the other's stays positive
    forms = {"ok": (T.clone(), T.clone()), "negative": (T.clone(), y)}

    def fixed(self, generator, params_prev, params, batch, residuals, residuals_prev, dtype):
        x, y = forms[case]
        return x, y, {n: int(BATCH[n].shape[0]) for n in fb.names}

    monkeypatch.setattr(tw.TorchNTKWeighting, "_pc_quad_forms", fixed)
    case = "negative"
    weights, bad = w.update(gen(1), state, p, p, BATCH)
    assert int(bad.rejected) == 1
    assert all(torch.equal(weights[n], state.weights[n]) for n in fb.names)
    assert torch.equal(bad.inner, state.inner)  # the recursion keeps its previous state
    case = "ok"
    weights, good = w.update(gen(2), state, p, p, BATCH)
    assert int(good.rejected) == 0
    for n in fb.names:  # x = y = T: the estimate stays at T, the weights at the exact ones
        assert float(weights[n]) == pytest.approx(float(state.weights[n]), rel=1e-12)
