"""Bad inputs to pinn_adapters' residual blocks, NTK traces, weights and host adapters: a clear
error naming the argument, raised before any work (issue 15)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinn_adapters as pa
from pinn_adapters import adapters


def net(p, x):  # x: (n, 1) -> (n,)
    return jnp.tanh(x @ p["W"] + p["b"]) @ p["v"]


@pytest.fixture(scope="module")
def problem():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"W": jax.random.normal(k1, (1, 4)), "b": jnp.zeros(4), "v": jax.random.normal(k2, (4,))}
    blocks = pa.ResidualBlocks({"res": net, "bc": net})
    batch = {"res": jnp.linspace(0.0, 1.0, 6)[:, None], "bc": jnp.asarray([[0.0], [1.0]])}
    return blocks, params, batch


def test_side_is_validated(problem):
    blocks, params, batch = problem
    with pytest.raises(ValueError, match="side must be one of"):
        pa.ntk_weighting(blocks, estimator="hutchinson", side="left")  # refused with the configuration
    with pytest.raises(ValueError, match="side must be one of"):
        pa.ntk_traces(None, blocks, params, batch, side="left")  # also for the exact method
    with pytest.raises(ValueError, match="side must be one of"):
        pa.ntk_traces(jax.random.key(0), blocks, params, batch, method="hutchinson", num_matvecs=2, side="left")


@pytest.mark.parametrize("bad", ["1.0", None, [1.0, 2.0]])
def test_ntk_weights_non_numeric_trace_names_the_entry(bad):
    with pytest.raises(TypeError, match=r"traces\['a'\] must be a real number"):
        pa.ntk_weights({"a": bad, "b": 2.0})


def test_infinite_gradients_with_finite_residuals_name_the_block(problem):
    _, params, batch = problem
    # sqrt(|x|) is finite at x = 0 but its derivative is not
    blocks = pa.ResidualBlocks({"res": lambda p, x: jnp.sqrt(jnp.abs(x[:, 0] * p["b"][0])), "bc": net})
    assert np.all(np.isfinite(np.asarray(blocks.residuals(params, batch)["res"])))
    with pytest.raises(ValueError, match="block 'res'"):
        pa.ntk_traces(None, blocks, params, batch)
    with pytest.raises(ValueError, match="block 'res'"):
        pa.ntk_traces(jax.random.key(0), blocks, params, batch, method="hutchinson", num_matvecs=2)


def test_residual_function_shape_of_answer(problem):
    _, params, batch = problem
    with pytest.raises(TypeError, match=r"fns must be a mapping .*wrap it"):
        pa.ResidualBlocks(net)
    pairs = pa.ResidualBlocks({"res": lambda p, x: [("res", net(p, x))], "bc": net})
    with pytest.raises(TypeError, match="block 'res': the residual function must return an array"):
        pa.ntk_traces(None, pairs, params, batch)


def test_scalar_batch_entry_names_the_block(problem):
    blocks, params, batch = problem
    with pytest.raises(ValueError, match=r"batch\['bc'\] holds a scalar"):
        pa.ntk_traces(None, blocks, params, {"res": batch["res"], "bc": jnp.asarray(0.5)})


def test_wrong_pointwise_declaration_detected(problem):
    _, params, batch = problem
    blocks = pa.ResidualBlocks({"res": lambda p, x: net(p, x).sum()[None], "bc": net})  # pointwise=True default
    with pytest.raises(ValueError, match="block 'res' was declared pointwise=True"):
        pa.ntk_traces(None, blocks, params, batch)
    with pytest.raises(TypeError, match="pointwise must be True, False or 'auto'"):
        pa.ResidualBlocks({"res": net}, pointwise="yes")


def test_from_jinns_refuses_non_jinns_objects():
    with pytest.raises(TypeError, match="loss must be a jinns loss"):
        adapters.from_jinns(object(), None)
    with pytest.raises(TypeError, match="loss must be a jinns loss"):
        adapters.jinns_ntk_weights(None, object(), None, None)
