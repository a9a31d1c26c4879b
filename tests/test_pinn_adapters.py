"""pinn_adapters.adapters: plain JAX, Equinox, Flax (linen, nnx), jinns and the jaxpi-style drop-in
give the same NTK traces for the same network."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinn_adapters as pa
from pinn_adapters import adapters

eqx = pytest.importorskip("equinox")


def uxx_plus_f(u, pts):  # residual of u'' = -sin(x) for a network u: (1,) -> (1,)
    return jax.vmap(lambda x: jax.hessian(lambda y: u(y)[0])(x)[0, 0] + jnp.sin(x[0]))(pts)


def boundary(u, pts):
    return jax.vmap(lambda x: u(x)[0])(pts)


FNS = {"res": uxx_plus_f, "bc": boundary}


@pytest.fixture(scope="module")
def mlp():
    return eqx.nn.MLP(1, 1, 8, 2, activation=jnp.tanh, key=jax.random.key(0))


@pytest.fixture(scope="module")
def points():
    return {"res": jnp.linspace(0.05, 0.95, 9)[:, None], "bc": jnp.asarray([[0.0], [1.0]])}


@pytest.fixture(scope="module")
def reference(mlp, points):
    """Plain-JAX network with the same weights, and its exact traces."""
    params = [(layer.weight, layer.bias) for layer in mlp.layers]

    def net(p, x):
        h = x
        for W, b in p[:-1]:
            h = jnp.tanh(W @ h + b)
        W, b = p[-1]
        return W @ h + b

    blocks = pa.ResidualBlocks({n: (lambda g: lambda p, pts: g(lambda x: net(p, x), pts))(f) for n, f in FNS.items()})
    tr = pa.ntk_traces(None, blocks, params, points)
    return {n: float(tr[n].value) for n in blocks.names}


def _assert_same(tr, reference):
    assert set(tr) == set(reference)
    for n in reference:
        np.testing.assert_allclose(float(tr[n].value), reference[n], rtol=1e-10)


def test_equinox(mlp, points, reference):
    blocks, params = adapters.from_equinox(mlp, FNS)
    _assert_same(pa.ntk_traces(None, blocks, params, points), reference)
    # sketched traces run on the same parameters (budget = p gives the exact answer)
    p = sum(x.size for x in jax.tree.leaves(params))
    tr = pa.ntk_traces(jax.random.key(0), blocks, params, points, method="hutchinson", num_matvecs=p, side="params")
    _assert_same(tr, reference)


def test_flax_linen_and_nnx(mlp, points, reference):
    flax = pytest.importorskip("flax")
    from flax import linen as nn
    from flax import nnx

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jnp.tanh(nn.Dense(8)(x))
            x = jnp.tanh(nn.Dense(8)(x))
            return nn.Dense(1)(x)

    module = Linen()
    variables = module.init(jax.random.key(1), jnp.zeros((1,)))
    variables = {
        "params": {f"Dense_{i}": {"kernel": layer.weight.T, "bias": layer.bias} for i, layer in enumerate(mlp.layers)}
    }
    blocks, params = adapters.from_linen(module, variables, FNS)
    _assert_same(pa.ntk_traces(None, blocks, params, points), reference)

    class NNX(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List(
                [nnx.Linear(1, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)]
            )

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jnp.tanh(layer(x))
            return self.layers[-1](x)

    model = NNX(nnx.Rngs(0))
    for lin, layer in zip(model.layers, mlp.layers):
        lin.kernel.value = layer.weight.T
        lin.bias.value = layer.bias
    blocks, params = adapters.from_nnx(model, FNS)
    _assert_same(pa.ntk_traces(None, blocks, params, points), reference)
    assert flax.__version__


def test_jinns_traces_and_weights(mlp, points, reference):
    jinns = pytest.importorskip("jinns")
    from jinns.loss import Dirichlet, LossPDEStatio, LossWeightsPDEStatio, PDEStatio
    from jinns.parameters import Params

    class Poisson(PDEStatio):
        def equation(self, x, u, params):
            return (jax.hessian(lambda y: u(y, params)[0])(x)[0, 0] + jnp.sin(x[0]))[None]

    u, nn_params = jinns.nn.PINN_MLP.create(eqx_network=mlp, eq_type="PDEStatio")
    jinns.parameters.EqParams.clear()  # jinns fixes the equation-parameter names per session
    params = Params(nn_params=nn_params, eq_params={})
    loss = LossPDEStatio(
        u=u,
        dynamic_loss=Poisson(),
        boundary_condition=Dirichlet(),
        loss_weights=LossWeightsPDEStatio(dyn_loss=1.0, boundary_loss=1.0),
        params=params,
    )
    from jinns.data._Batchs import PDEStatioBatch

    batch = PDEStatioBatch(domain_batch=points["res"], border_batch=points["bc"].reshape(1, 1, 2))
    blocks, nnp = adapters.from_jinns(loss, params)
    assert blocks.names == ("boundary_loss", "dyn_loss")
    tr = pa.ntk_traces(None, blocks, nnp, batch, chunk_size=4)
    np.testing.assert_allclose(float(tr["dyn_loss"].value), reference["res"], rtol=1e-10)
    np.testing.assert_allclose(float(tr["boundary_loss"].value), reference["bc"], rtol=1e-10)
    new_loss, w = adapters.jinns_ntk_weights(None, loss, params, batch)
    total = reference["res"] + reference["bc"]
    np.testing.assert_allclose(float(new_loss.loss_weights.dyn_loss), total / reference["res"], rtol=1e-10)
    np.testing.assert_allclose(float(new_loss.loss_weights.boundary_loss), total / reference["bc"], rtol=1e-10)
    assert float(loss.loss_weights.dyn_loss) == 1.0  # the original loss is unchanged
    value, _ = new_loss.evaluate(params, batch)  # jinns uses the new weights
    assert np.isfinite(float(value))
    weigher = adapters.JinnsNTKWeights(method="exact")  # the same, as an object holding the compiled function
    assert float(weigher(None, loss, params, batch)[1]["dyn_loss"]) == float(w["dyn_loss"])
    weigher(None, new_loss, params, batch)  # the loss it returned (array weights): compiled once more
    moved = jax.tree.map(lambda a: a * 1.01, params)
    assert _count_compiles(lambda: weigher(None, new_loss, moved, batch)) == 0  # new parameters: no recompilation
    assert _count_compiles(lambda: adapters.jinns_ntk_weights(None, new_loss, params, batch)) == 0
    assert not hasattr(adapters._jinns, "_JITTED")  # no module-level cache


_COMPILING = []


def _count_compiles(fn):
    """Backend compilations while ``fn`` runs (JAX's monitoring events)."""
    if not _COMPILING:
        from jax import monitoring

        def listen(event, duration, **kw):
            if "backend_compile" in event and _COMPILING[0]:
                _COMPILING[1] += 1

        monitoring.register_event_duration_secs_listener(listen)
        _COMPILING.extend([False, 0])
    _COMPILING[0], _COMPILING[1] = True, 0
    try:
        jax.block_until_ready(fn())
    finally:
        _COMPILING[0] = False
    return _COMPILING[1]


# ---------------------------------------------------------------------------- jaxpi-style model


class JaxpiStyleModel:
    """A small model following jaxpi's documented interface (u_net, r_net, compute_diag_ntk,
    update_weights with the mean-NTK rule); jaxpi itself is not on PyPI and is not used."""

    def __init__(self, params, x_bc):
        self.params, self.x_bc = params, x_bc

    def u_net(self, params, x):
        h = jnp.tanh(params["W1"] * x + params["b1"])
        return jnp.dot(params["W2"], h)

    def r_net(self, params, x):
        return jax.grad(jax.grad(self.u_net, 1), 1)(params, x) + jnp.sin(x)

    def compute_diag_ntk(self, params, batch):  # jaxpi's own way: per-point jacrev
        def ntk_fn(fn, params, *args):
            J = jax.flatten_util.ravel_pytree(jax.jacrev(fn)(params, *args))[0]
            return jnp.dot(J, J)

        return {
            "bcs": jax.vmap(ntk_fn, (None, None, 0))(self.u_net, params, self.x_bc),
            "res": jax.vmap(ntk_fn, (None, None, 0))(self.r_net, params, batch[:, 0]),
        }

    def update_weights(self, params, batch):
        ntk = self.compute_diag_ntk(params, batch)
        mean_ntk = {k: jnp.mean(v) for k, v in ntk.items()}
        m = jnp.mean(jnp.stack(list(mean_ntk.values())))
        return {k: m / v for k, v in mean_ntk.items()}


def _make_blocks(model, batch):
    blocks = pa.ResidualBlocks(
        {
            "bcs": lambda p, x: jax.vmap(model.u_net, (None, 0))(p, x),
            "res": lambda p, x: jax.vmap(model.r_net, (None, 0))(p, x[:, 0]),
        }
    )
    return blocks, {"bcs": model.x_bc, "res": batch}


def test_jaxpi_style_drop_in():
    k = jax.random.split(jax.random.key(5), 3)
    params = {
        "W1": jax.random.normal(k[0], (6,)),
        "b1": jax.random.normal(k[1], (6,)),
        "W2": jax.random.normal(k[2], (6,)) / 3,
    }
    model = JaxpiStyleModel(params, jnp.asarray([0.0, 1.0]))
    batch = jnp.linspace(0.1, 0.9, 7)[:, None]
    ref = model.compute_diag_ntk(params, batch)
    w_ref = model.update_weights(params, batch)

    class Ours(JaxpiStyleModel):
        compute_diag_ntk = adapters.jaxpi_ntk_method(_make_blocks, method="exact", chunk_size=3)

    ours = Ours(params, model.x_bc)
    d = ours.compute_diag_ntk(params, batch)
    for n in ref:
        np.testing.assert_allclose(np.asarray(d[n]), np.asarray(ref[n]), rtol=1e-10)
    w = ours.update_weights(params, batch)
    for n in w_ref:
        np.testing.assert_allclose(float(w[n]), float(w_ref[n]), rtol=1e-10)
    # sketched per-point diagonal: unbiased for every entry (mean over many keys)
    blocks, bb = _make_blocks(model, batch)
    est = jax.jit(
        jax.vmap(
            lambda key: adapters.compute_diag_ntk(blocks, params, bb, method="hutchinson", key=key, num_matvecs=2)[
                "res"
            ]
        )
    )(jax.random.split(k[0], 3000))
    from sketchtrace.testing import check_unbiased

    for i in range(est.shape[1]):
        rep = check_unbiased(np.asarray(est[:, i]), float(ref["res"][i]))
        assert rep.passed, rep.describe(float(ref["res"][i]))
    hm = adapters.jaxpi_ntk_method(_make_blocks, method="hutchinson", key=jax.random.key(0), num_matvecs=3)
    assert set(hm(model, params, batch)) == {"bcs", "res"}


def test_host_libraries_imported_lazily():
    code = (
        "import sys, pinn_adapters, pinn_adapters.adapters, pinn_adapters.problems; "
        "bad = [m for m in ('flax', 'equinox', 'jinns', 'optax', 'tqdm', 'matplotlib') if m in sys.modules]; "
        "print(bad); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_jinns_train_refreshes_weights_inside_one_run(mlp):
    jinns = pytest.importorskip("jinns")
    optax = pytest.importorskip("optax")
    from jinns.loss import Dirichlet, LossPDEStatio, LossWeightsPDEStatio, PDEStatio
    from jinns.parameters import Params

    class Poisson(PDEStatio):
        def equation(self, x, u, params):
            return (jax.hessian(lambda y: u(y, params)[0])(x)[0, 0] + jnp.sin(x[0]))[None]

    u, nn_params = jinns.nn.PINN_MLP.create(eqx_network=mlp, eq_type="PDEStatio")
    jinns.parameters.EqParams.clear()  # jinns fixes the equation-parameter names per session
    params = Params(nn_params=nn_params, eq_params={})
    loss = LossPDEStatio(
        u=u,
        dynamic_loss=Poisson(),
        boundary_condition=Dirichlet(),
        loss_weights=LossWeightsPDEStatio(dyn_loss=1.0, boundary_loss=1.0),
        params=params,
    )
    data = jinns.data.CubicMeshPDEStatio(
        key=jax.random.key(1), n=12, nb=2, dim=1, min_pts=(0.0,), max_pts=(1.0,), method="uniform"
    )
    batch0 = data.get_batch()[1]
    opt = optax.adam(1e-2)
    res = adapters.jinns_train(None, loss, params, data, opt, n_iter=3, every=2)
    h = res.history
    _, w0 = adapters.jinns_ntk_weights(None, loss, params, batch0)
    for n in ("dyn_loss", "boundary_loss"):
        assert h["weights"][n].shape == (3,)
        np.testing.assert_allclose(float(h["weights"][n][0]), float(w0[n]), rtol=1e-6)
        assert float(h["weights"][n][1]) == float(h["weights"][n][0])  # kept between refreshes
        assert float(h["weights"][n][2]) != float(h["weights"][n][0])  # refreshed at iteration 2
    total = sum(h["weights"][n] * h["terms"][n] for n in ("dyn_loss", "boundary_loss"))
    np.testing.assert_allclose(np.asarray(h["loss"]), np.asarray(total), rtol=1e-6)
    plain = adapters.jinns_train(None, loss, params, data, opt, n_iter=3, every=None)
    _, terms0 = loss.evaluate(params, batch0)  # unweighted terms are reported, the loss's own weights used
    np.testing.assert_allclose(
        float(plain.history["terms"]["dyn_loss"][0]), float(sum(jax.tree.leaves(terms0.dyn_loss))), rtol=1e-6
    )
    assert np.all(np.asarray(plain.history["weights"]["dyn_loss"]) == 1.0)
    assert set(res.seconds) == {"compile", "run"}
    with pytest.raises(ValueError, match="every"):
        adapters.jinns_train(None, loss, params, data, opt, n_iter=3, every=0)
