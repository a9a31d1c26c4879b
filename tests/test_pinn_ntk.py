"""pinn_adapters: residual blocks, exact and sketched NTK traces, NTK weights and their guards."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import pinn_adapters as pa
import sketchtrace as st
from sketchtrace.testing import check_unbiased

# ---------------------------------------------------------------------------- a small network


def init(key, widths=(2, 6, 5, 2)):
    ks = jax.random.split(key, len(widths))
    return {
        f"l{i}": {"W": jax.random.normal(k, (a, b)) / math.sqrt(a), "b": 0.1 * jax.random.normal(k, (b,))}
        for i, (k, a, b) in enumerate(zip(ks, widths[:-1], widths[1:]))
    }


def net(p, x):  # x: (2,) -> (2,)
    h = x
    n = len(p)
    for i in range(n):
        h = h @ p[f"l{i}"]["W"] + p[f"l{i}"]["b"]
        if i < n - 1:
            h = jnp.tanh(h)
    return h


def lap(p, x):  # u_xx + u_y of the first output
    u = lambda a, b: net(p, jnp.stack([a, b]))[0]
    return jax.grad(jax.grad(u))(x[0], x[1]) + jax.grad(u, argnums=1)(x[0], x[1])


def make_blocks():
    return pa.ResidualBlocks(
        {
            "res": lambda p, pts: jax.vmap(lambda x: lap(p, x) - jnp.sin(x[0]))(pts),
            "bc": lambda p, pts: jax.vmap(lambda x: net(p, x))(pts),  # 2 components per point
        }
    )


@pytest.fixture(scope="module")
def setup():
    key = jax.random.key(3)
    k1, k2, k3 = jax.random.split(key, 3)
    params = init(k1)
    batch = {"res": jax.random.uniform(k2, (7, 2)), "bc": jax.random.uniform(k3, (4, 2))}
    blocks = make_blocks()
    J = jax.jit(jax.jacobian(lambda p: blocks.residuals(p, batch)))(params)
    truth = {n: sum(float(jnp.sum(leaf**2)) for leaf in jax.tree.leaves(J[n])) for n in blocks.names}
    return blocks, params, batch, truth


# ---------------------------------------------------------------------------- exact traces


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_exact_traces_equal_full_jacobian(setup, chunk_size):
    blocks, params, batch, truth = setup
    tr = pa.ntk_traces(None, blocks, params, batch, method="exact", chunk_size=chunk_size)
    for n in blocks.names:
        np.testing.assert_allclose(float(tr[n].value), truth[n], rtol=1e-12)
        assert float(tr[n].sem) == 0.0
    assert tr["bc"].num_matvecs == 8 and tr["res"].num_matvecs == 7  # residual rows


def test_exact_traces_mean_normalisation_and_jit(setup):
    blocks, params, batch, truth = setup
    tr = jax.jit(lambda p, b: pa.ntk_traces(None, blocks, p, b, normalize="mean"))(params, batch)
    np.testing.assert_allclose(float(tr["bc"].value), truth["bc"] / 8, rtol=1e-12)
    np.testing.assert_allclose(float(tr["res"].value), truth["res"] / 7, rtol=1e-12)


def test_point_norms_are_per_point_ntk_diagonal(setup):
    blocks, params, batch, _ = setup
    d = jax.jit(lambda p, b: blocks.point_grad_sq_norms(p, b, chunk_size=2))(params, batch)
    J = jax.jit(jax.jacobian(lambda p: blocks.residuals(p, batch)["res"]))(params)
    Jf = jnp.concatenate([leaf.reshape(7, -1) for leaf in jax.tree.leaves(J)], axis=1)
    np.testing.assert_allclose(np.asarray(d["res"]), np.sum(np.asarray(Jf) ** 2, axis=1), rtol=1e-12)


# ---------------------------------------------------------------------------- sketched traces


def _samples(blocks, params, batch, *, side, num, trials=1500, sampler="rademacher"):
    def one(k):
        tr = pa.ntk_traces(k, blocks, params, batch, method="hutchinson", num_matvecs=num, side=side, sampler=sampler)
        return {n: tr[n].value for n in blocks.names}

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), trials))


@pytest.mark.parametrize("side", ["params", "residuals"])
def test_hutchinson_traces_unbiased_per_block(setup, side):
    blocks, params, batch, truth = setup
    S = _samples(blocks, params, batch, side=side, num=2)
    for n in blocks.names:
        rep = check_unbiased(np.asarray(S[n]), truth[n], false_alarm=1e-6)
        assert rep.passed, rep.describe(truth[n])
        assert rep.detectable_bias < 0.2 * truth[n]  # the check detects a 20% bias


def test_unbiasedness_check_catches_finite_difference_bias(setup):
    """The same check fails on a deliberately biased variant: forward differences with h = 0.3."""
    blocks, params, batch, truth = setup
    flat, unravel = ravel_pytree(params)

    def one(k):
        v = jax.random.rademacher(k, flat.shape, flat.dtype)
        r0 = blocks.residuals(params, batch)
        r1 = blocks.residuals(unravel(flat + 0.3 * v), batch)
        return {n: jnp.sum(((r1[n] - r0[n]) / 0.3) ** 2) for n in blocks.names}

    S = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), 1500))
    reports = [check_unbiased(np.asarray(S[n]), truth[n], false_alarm=1e-6) for n in blocks.names]
    assert not all(r.passed for r in reports), [r.describe(truth[n]) for r, n in zip(reports, blocks.names)]


def test_hutchinson_budget_at_dimension_is_exact(setup):
    blocks, params, batch, truth = setup
    p = ravel_pytree(params)[0].size
    tr = pa.ntk_traces(jax.random.key(0), blocks, params, batch, method="hutchinson", num_matvecs=p, side="params")
    for n in blocks.names:
        np.testing.assert_allclose(float(tr[n].value), truth[n], rtol=1e-10)
        assert float(tr[n].sem) == 0.0


@pytest.mark.parametrize("method", ["hutchpp", "xtrace"])
def test_deflated_methods_exact_on_small_blocks(setup, method):
    blocks, params, batch, truth = setup
    # residual side: blocks of 8 and 7 rows; a budget of 30 reaches both probe dimensions,
    # where sketchtrace's deflated estimators compute the exact trace
    tr = pa.ntk_traces(jax.random.key(1), blocks, params, batch, method=method, num_matvecs=30, side="residuals")
    for n in blocks.names:
        np.testing.assert_allclose(float(tr[n].value), truth[n], rtol=1e-8)


def test_side_auto_picks_the_cheaper():
    from pinn_adapters._ntk import resolve_side

    assert resolve_side("auto", num_matvecs=4, num_params=1000, num_rows=500, num_blocks=3) == "input"
    # small batch: the residual side is exact after n rows, cheaper than many parameter-side probes
    assert resolve_side("auto", num_matvecs=400, num_params=1000, num_rows=20, num_blocks=3) == "output"
    with pytest.raises(ValueError, match="side"):
        resolve_side("left", num_matvecs=1, num_params=1, num_rows=1, num_blocks=1)


# ---------------------------------------------------------------------------- weights


def test_weight_rules():
    tr = {"a": st.Estimate(2.0, 0.0, 1), "b": 6.0, "c": 12.0}
    w = pa.ntk_weights(tr)
    np.testing.assert_allclose([float(w[n]) for n in "abc"], [20 / 2, 20 / 6, 20 / 12])
    sizes = {"a": 1, "b": 3, "c": 2}
    wj = pa.ntk_weights(tr, rule="jaxpi", sizes=sizes)
    m = np.array([2.0, 2.0, 6.0])
    np.testing.assert_allclose([float(wj[n]) for n in "abc"], m.mean() / m)
    # without sizes, jaxpi takes the traces as per-point means
    wj2 = pa.ntk_weights({"a": 2.0, "b": 2.0, "c": 6.0}, rule="jaxpi")
    np.testing.assert_allclose([float(wj2[n]) for n in "abc"], m.mean() / m)
    wc = pa.ntk_weights(tr, cap=5.0)
    assert float(wc["a"]) == 5.0 and float(wc["c"]) == pytest.approx(20 / 12)


def test_weights_from_full_traces_rule_matches_paper(setup):
    blocks, params, batch, truth = setup
    tr = pa.ntk_traces(None, blocks, params, batch)
    w = pa.ntk_weights(tr)
    total = sum(truth.values())
    for n in blocks.names:
        np.testing.assert_allclose(float(w[n]), total / truth[n], rtol=1e-12)


def test_weight_guards():
    # zero / negative estimates are floored at eps * max: large but finite and positive
    w = pa.ntk_weights({"a": -3.0, "b": 0.0, "c": 10.0}, eps=1e-4)
    vals = np.array([float(w[n]) for n in "abc"])
    assert np.all(np.isfinite(vals)) and np.all(vals >= 1.0) and np.all(vals <= 3 / 1e-4 + 1)
    with pytest.raises(ValueError, match="block 'b'"):
        pa.ntk_weights({"a": 1.0, "b": float("nan")})
    with pytest.raises(ValueError, match="every trace is <= 0"):
        pa.ntk_weights({"a": 0.0, "b": -1.0})
    # under jit nothing can be raised: unusable traces give the documented fallback, never NaN
    f = jax.jit(lambda t: pa.ntk_weights(t, fallback=1.0))
    out = f({"a": jnp.asarray(1.0), "b": jnp.asarray(jnp.inf)})
    assert float(out["a"]) == 1.0 and float(out["b"]) == 1.0
    with pytest.raises(ValueError, match="rule"):
        pa.ntk_weights({"a": 1.0}, rule="mean")
    with pytest.raises(ValueError, match="cap"):
        pa.ntk_weights({"a": 1.0}, cap=-1.0)
    with pytest.raises(ValueError, match="eps"):
        pa.ntk_weights({"a": 1.0}, eps=0.0)
    with pytest.raises(TypeError, match="traces"):
        pa.ntk_weights([1.0, 2.0])


# ---------------------------------------------------------------------------- bad input


def test_non_finite_residuals_refused(setup):
    blocks, params, batch, _ = setup
    bad = pa.ResidualBlocks(
        {"res": lambda p, x: jnp.log(-jnp.abs(x[:, 0]) - 1.0) + net(p, x)[:, 0], "bc": blocks.fns["bc"]}
    )
    for method, kw in [("exact", {}), ("hutchinson", {"num_matvecs": 3})]:
        with pytest.raises(ValueError, match="block 'res' has .* non-finite"):
            pa.ntk_traces(jax.random.key(0), bad, params, batch, method=method, **kw)


def test_bad_arguments(setup):
    blocks, params, batch, _ = setup
    with pytest.raises(TypeError, match="mapping"):
        pa.ResidualBlocks([lambda p, x: x])
    with pytest.raises(TypeError, match="callable"):
        pa.ResidualBlocks({"a": 3})
    with pytest.raises(ValueError, match="reduction"):
        pa.ResidualBlocks({"a": lambda p, x: x}, reduction="max")
    with pytest.raises(ValueError, match="no points for block"):
        blocks.residuals(params, {"res": batch["res"]})
    with pytest.raises(ValueError, match="method"):
        pa.ntk_traces(None, blocks, params, batch, method="lanczos")
    with pytest.raises(ValueError, match="num_matvecs is required"):
        pa.ntk_traces(jax.random.key(0), blocks, params, batch, method="hutchinson")
    with pytest.raises(ValueError, match="normalize"):
        pa.ntk_traces(None, blocks, params, batch, normalize="max")
    with pytest.raises(TypeError, match="ResidualBlocks"):
        pa.ntk_traces(None, {"a": 1}, params, batch)


# ---------------------------------------------------------------------------- non-pointwise blocks


def _stencil_problem(n=12, widths=(2, 6, 5, 2)):
    params = init(jax.random.key(5), widths)
    t = jnp.linspace(0.0, 1.0, n)
    pts = jnp.stack([t, jnp.sin(3 * t)], axis=1)

    def features(p, x):
        return jax.vmap(lambda y: net(p, y))(x)  # (n, 2) pointwise

    def mix(u, x):  # a second-difference stencil over the batch
        return (u[2:] - 2 * u[1:-1] + u[:-2]) * (n - 1) ** 2 + jnp.sin(x[1:-1, :1])

    def truth(fn):
        J = jax.jacfwd(lambda p: jnp.ravel(fn(p, pts)))(params)
        return sum(float(jnp.sum(leaf**2)) for leaf in jax.tree.leaves(J))

    return params, pts, features, mix, truth


@pytest.mark.parametrize("widths", [(2, 3, 2), (2, 8, 8, 2)])  # p < rows (JVPs) and p > rows (VJPs)
def test_non_pointwise_exact_traces_both_sides(widths):
    params, pts, features, mix, truth = _stencil_problem(widths=widths)
    stencil = lambda p, x: mix(features(p, x), x)
    blocks = pa.ResidualBlocks({"fd": stencil}, pointwise="auto")
    assert blocks.pointwise_modes(params, {"fd": pts}) == (False,)  # detected
    tr = pa.ntk_traces(None, blocks, params, {"fd": pts}, chunk_size=3)
    np.testing.assert_allclose(float(tr["fd"].value), truth(stencil), rtol=1e-10)
    declared = pa.ResidualBlocks({"fd": stencil}, pointwise=False)
    np.testing.assert_allclose(
        float(pa.ntk_traces(None, declared, params, {"fd": pts})["fd"].value), truth(stencil), rtol=1e-10
    )


def test_mixed_block_exact_traces_and_feature_check():
    params, pts, features, mix, truth = _stencil_problem()
    blocks = pa.ResidualBlocks({"fd": pa.MixedBlock(features, mix)})
    tr = pa.ntk_traces(None, blocks, params, {"fd": pts}, chunk_size=5)
    np.testing.assert_allclose(float(tr["fd"].value), truth(lambda p, x: mix(features(p, x), x)), rtol=1e-10)
    jitted = jax.jit(lambda p: pa.ntk_traces(None, blocks, p, {"fd": pts})["fd"].value)
    np.testing.assert_allclose(float(jitted(params)), float(tr["fd"].value), rtol=1e-10)
    mixing_features = pa.ResidualBlocks(
        {"fd": pa.MixedBlock(lambda p, x: features(p, x) - features(p, x).mean(0), mix)}
    )
    with pytest.raises(ValueError, match="'fd' is a MixedBlock whose features are not pointwise"):
        pa.ntk_traces(None, mixing_features, params, {"fd": pts})
    with pytest.raises(TypeError, match="mix must be callable"):
        pa.MixedBlock(features, None)


def test_jacobian_matrix_equals_jacfwd_for_every_block_kind():
    """``ResidualBlocks.jacobian_matrix`` (per-point gradients, MixedBlock features through the mix, the
    whole-block fallback) equals ``jax.jacfwd`` of the residuals, and never refuses a wrong declaration."""
    from jax.flatten_util import ravel_pytree

    params, pts, features, mix, _ = _stencil_problem()
    flat, unravel = ravel_pytree(params)
    fns = {
        "point": lambda p, x: jax.vmap(lambda y: net(p, y))(x),  # two rows per point
        "mixed": pa.MixedBlock(features, mix),
        "sum": lambda p, x: features(p, x).sum()[None],  # declared pointwise (the default) but not
    }
    blocks = pa.ResidualBlocks(fns)
    batch = {k: pts for k in fns}
    J = blocks.jacobian_matrix(params, batch, chunk_size=5)
    ref = jax.jacfwd(lambda v: blocks.residuals(unravel(v), batch))(flat)
    for k in fns:
        assert J[k].shape == ref[k].shape
        np.testing.assert_allclose(np.asarray(J[k]), np.asarray(ref[k]), rtol=1e-10, atol=1e-12)
    assert blocks.pointwise_modes(params, batch, strict=False) == (True, True, False)  # mixed, point, sum


@pytest.mark.parametrize("kind", ["stencil", "sum"])
def test_wrong_pointwise_declaration_refused(kind):
    params, pts, features, mix, truth = _stencil_problem()
    fn = {"stencil": lambda p, x: mix(features(p, x), x), "sum": lambda p, x: features(p, x).sum()[None]}[kind]
    blocks = pa.ResidualBlocks({"bad": fn})  # pointwise=True is the default declaration
    with pytest.raises(ValueError, match="block 'bad' was declared pointwise=True"):
        pa.ntk_traces(None, blocks, params, {"bad": pts})


def test_pointwise_detection_accepts_pointwise_blocks(setup):
    blocks, params, batch, truth = setup
    assert pa.ResidualBlocks(blocks.fns, pointwise="auto").pointwise_modes(params, batch) == (True, True)
    assert blocks.check_pointwise(params, batch) == {"bc": True, "res": True}


# ---------------------------------------------------------------------------- one weighting shape, JAX and torch


def _jax_side(setup):
    blocks, params, batch, truth = setup
    p1 = jax.tree.map(lambda a: a + 0.01, params)
    return pa, blocks, params, p1, batch, lambda: jax.random.key(5), truth


def _torch_side():
    torch = pytest.importorskip("torch")
    import pinn_adapters.torch as pt

    torch.manual_seed(0)
    net_t = torch.nn.Sequential(torch.nn.Linear(1, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    fns = {"pde": lambda m, x: (m(x) - torch.sin(x)).reshape(-1), "bc": lambda m, x: m(x).reshape(-1)}
    blocks = pt.TorchResidualBlocks(net_t, fns)
    batch = {
        "pde": torch.linspace(0, 1, 9, dtype=torch.float64)[:, None],
        "bc": torch.zeros((2, 1), dtype=torch.float64),
    }
    p0 = blocks.params()
    p1 = {k: v + 0.01 for k, v in p0.items()}
    truth = {}
    for n, fn in fns.items():  # ||J_b||_F^2 from the full Jacobian
        jac = torch.autograd.functional.jacobian(
            lambda *ps, fn=fn, n=n: blocks.block_residuals(n, dict(zip(p0, ps)), batch[n]), tuple(p0.values())
        )
        truth[n] = float(sum(j.square().sum() for j in jac))
    return pt, blocks, p0, p1, batch, lambda: torch.Generator().manual_seed(5), truth


@pytest.mark.parametrize("side", ["jax", "torch"])
@pytest.mark.parametrize("estimator", ["exact", "pc", "gradnorm"])
def test_one_weighting_shape_on_both_sides(setup, side, estimator):
    """Both sides return a pa.Weighting: init(key, params, batch); update(key, state, prev, params, batch)."""
    lib, blocks, p0, p1, batch, key, truth = _jax_side(setup) if side == "jax" else _torch_side()
    w = lib.ntk_weighting(blocks, estimator=estimator, normalize="sum")
    assert isinstance(w, pa.Weighting) and w.estimator == estimator and w.blocks is blocks
    assert repr(w).endswith(f"(estimator={estimator!r}, blocks={list(blocks.names)})")
    state = w.init(key(), p0, batch)
    assert set(state.weights) == set(blocks.names)
    weights, state = w.update(key(), state, p0, p1, batch, residuals=None, residuals_prev=None)
    assert set(weights) == set(blocks.names) and all(float(v) > 0 for v in weights.values())
    assert int(state.count) == 1
    if estimator in ("exact", "pc"):  # pc starts from exact traces: the first weights are sum_j T_j / T_b
        first = w.init(key(), p0, batch).weights
        total = sum(truth.values())
        for n in blocks.names:
            assert float(first[n]) == pytest.approx(total / truth[n], rel=1e-5), n
    with pytest.warns(DeprecationWarning, match="no longer a tuple"):
        init_fn, update_fn, b, cfg = w  # the former NamedTuple's unpacking, for one release
    assert b is blocks and cfg is w.config and init_fn == w.init and update_fn == w.update


def test_weighting_base_refuses_direct_use():
    with pytest.raises(NotImplementedError):
        pa.Weighting().init(None, None, None)


def test_blocks_hold_their_compiled_functions(setup):
    """ResidualBlocks makes its jitted functions at construction; calls write nothing onto the object."""
    blocks, params, batch, _ = setup
    fresh = make_blocks()
    before = dict(vars(fresh))
    fresh.residuals(params, batch)
    fresh.point_grad_sq_norms(params, batch, chunk_size=4)
    assert set(vars(fresh)) == set(before)  # no attribute added on first use
    assert all(vars(fresh)[k] is v for k, v in before.items() if k != "_pointwise_found")


@pytest.mark.parametrize(
    "bad",
    [
        {"ema": 1.0},
        {"ema": "x"},
        {"gamma": 0.0},
        {"every": 0},
        {"num_probes": 2.5},
        {"cap": -1.0},
        {"eps": 2.0},
        {"h": -1e-3},
        {"normalize": "max"},
        {"init_method": "svd"},
        {"subsample": 0.0},
        {"subsample": 4, "estimator": "exact"},
        {"subsample": {"nope": 3}},
        {"rule": "jaxpi", "normalize": "mean"},
        {"estimator": "gradnorm", "rule": "jaxpi"},
    ],
)
def test_both_sides_refuse_options_alike(setup, bad):
    """One check of the common options: the JAX and torch weightings raise the same error and message."""
    errors = []
    for lib, blocks in ((pa, _jax_side(setup)[1]), _torch_side()[:2]):
        with pytest.raises((TypeError, ValueError)) as info:
            lib.ntk_weighting(blocks, **bad)
        errors.append((type(info.value), str(info.value).replace("'res'", "'pde'")))
    assert errors[0][0] is errors[1][0]
    # the same rule in the same words (the JAX side's gamma also takes 'auto': its name says so)
    assert errors[0][1].split(" must be")[-1].split(";")[0] == errors[1][1].split(" must be")[-1].split(";")[0]


@pytest.mark.parametrize("estimator", ["exact", "pc", "gradnorm"])
def test_eager_update_compiles_once(estimator, caplog):
    """An eager ``update`` (outside jit) runs one compiled program kept by the weighting: 12 calls with
    ``every=3`` compile as much as 3 (before, every call compiled the refresh's lax.cond branches), and
    give the same weights as the update traced inside the caller's jit."""
    import logging

    prob = pa.problems.poisson1d(layers=(1, 6, 1), n_res=16)
    params = prob.init_params(jax.random.key(0))
    p1 = jax.tree.map(lambda a: a * 1.01, params)
    batch = prob.sample_batch(jax.random.key(1))
    w = pa.ntk_weighting(prob.blocks, estimator=estimator, every=3)
    state0 = w.init(jax.random.key(2), params, batch)
    counts = []
    for calls in (3, 12):
        caplog.clear()
        jax.config.update("jax_log_compiles", True)
        try:
            with caplog.at_level(logging.WARNING, logger="jax"):
                state = state0
                for i in range(calls):
                    weights, state = w.update(jax.random.key(i), state, params, p1, batch)
        finally:
            jax.config.update("jax_log_compiles", False)
        counts.append(sum("Compiling" in r.getMessage() for r in caplog.records))
    assert counts[1] <= counts[0], counts
    jitted = jax.jit(lambda k, s: w.update(k, s, params, p1, batch))
    state = state0
    for i in range(12):
        ref, state = jitted(jax.random.key(i), state)
    for n in prob.blocks.names:
        np.testing.assert_allclose(float(weights[n]), float(ref[n]), rtol=1e-6)
