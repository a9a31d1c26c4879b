"""pinn_adapters.second_order: Gauss-Newton / Levenberg-Marquardt on weighted residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinn_adapters as pa
from pinn_adapters import second_order as so


def _linear(seed=0, n=30, p=6):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, p)), rng.standard_normal(n)
    blocks = pa.ResidualBlocks({"a": lambda prm, pts: pts[:, :-1] @ prm["w"] - pts[:, -1]}, reduction="sum")
    batch = {"a": jnp.asarray(np.column_stack([X, y]))}
    return blocks, batch, X, y


@pytest.mark.parametrize("method, n, p", [("dense", 30, 6), ("dense", 6, 30), ("params", 30, 6), ("samples", 6, 30)])
def test_gauss_newton_one_step_on_linear_least_squares(method, n, p):
    """Linear residuals: one (undamped / barely damped) Gauss-Newton step lands on the least-squares
    solution (the minimum-norm one when p > n: the sample-space step lies in the row space)."""
    blocks, batch, X, y = _linear(n=n, p=p)
    params = {"w": jnp.zeros(p)}
    damping = 0.0 if method == "dense" and p < n else 1e-12
    d, info = so.gauss_newton_step(jax.random.key(0), blocks, params, batch, damping=damping, method=method, rank=6)
    ref = np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(d["w"]), ref, rtol=1e-7, atol=1e-9)
    assert info.method == method
    # the model's predicted reduction is the actual one for linear residuals
    r_new = so.scaled_residual_fn(blocks, batch, None)({"w": d["w"]})
    np.testing.assert_allclose(float(info.loss - jnp.sum(r_new**2)), float(info.predicted), rtol=1e-9)


def test_matches_optimistix_gauss_newton():
    optx = pytest.importorskip("optimistix")
    blocks, batch, X, y = _linear(seed=1)
    d, _ = so.gauss_newton_step(jax.random.key(0), blocks, {"w": jnp.zeros(6)}, batch, damping=0.0, method="dense")
    sol = optx.least_squares(
        lambda w, _: jnp.asarray(X) @ w - jnp.asarray(y), optx.GaussNewton(1e-10, 1e-10), jnp.zeros(6)
    )
    np.testing.assert_allclose(np.asarray(d["w"]), np.asarray(sol.value), rtol=1e-8)


def test_weights_scale_rows():
    """Weight w on a "sum" block is the same step as residual rows scaled by sqrt(w)."""
    blocks, batch, X, y = _linear(seed=2)
    params = {"w": jnp.ones(6)}
    d, _ = so.gauss_newton_step(None, blocks, params, batch, damping=0.1, weights={"a": 4.0}, method="dense")
    Xs, ys = 2 * X, 2 * y
    ref = -np.linalg.solve(Xs.T @ Xs + 0.1 * np.eye(6), Xs.T @ (Xs @ np.ones(6) - ys))
    np.testing.assert_allclose(np.asarray(d["w"]), ref, rtol=1e-9)


def _rosenbrock():
    blocks = pa.ResidualBlocks(
        {"r": lambda prm, pts: jnp.stack([10 * (prm[1] - prm[0] ** 2), 1 - prm[0]]) * pts}, reduction="sum"
    )
    return blocks, {"r": jnp.ones(2)}


def test_levenberg_marquardt_damping_follows_gain_ratio():
    """Rosenbrock residuals from (-1.2, 1) with a tiny initial damping: the first full Gauss-Newton step
    overshoots and is rejected (damping multiplied by nu = 2, then 4, ...), accepted steps lower it
    (Nielsen's factor >= 1/3), and LM reaches the minimum (1, 1)."""
    blocks, batch = _rosenbrock()
    res = so.levenberg_marquardt(
        jax.random.key(0), blocks, jnp.array([-1.2, 1.0]), batch, steps=60, damping=1e-6, method="dense"
    )
    h = res.history
    mus = [1e-6] + [r["damping"] for r in h]
    rejected = [i for i, r in enumerate(h) if not r["accepted"]]
    accepted = [i for i, r in enumerate(h) if r["accepted"]]
    assert rejected and accepted
    for i in rejected:
        assert mus[i + 1] >= 2 * mus[i] * (1 - 1e-12)
        assert h[i]["rho"] <= 0
    for i in accepted:
        assert mus[i + 1] >= mus[i] / 3 * (1 - 1e-12) or mus[i + 1] == 1e-12
        assert h[i]["rho"] > 0
    losses = [r["loss"] for r in h if r["accepted"]]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # accepted steps never increase the loss
    np.testing.assert_allclose(np.asarray(res.params), [1.0, 1.0], atol=1e-6)


def test_non_finite_residuals_refused():
    blocks = pa.ResidualBlocks({"a": lambda prm, pts: jnp.log(prm["w"]) * pts}, reduction="sum")
    with pytest.raises(ValueError, match="non-finite"):
        so.gauss_newton_step(None, blocks, {"w": jnp.array(-1.0)}, {"a": jnp.ones(3)}, damping=1.0, method="dense")


def test_bad_arguments_refused():
    blocks, batch, _, _ = _linear()
    params = {"w": jnp.zeros(6)}
    with pytest.raises(ValueError, match="damping"):
        so.gauss_newton_step(None, blocks, params, batch, damping=-1.0)
    with pytest.raises(ValueError, match="method"):
        so.gauss_newton_step(None, blocks, params, batch, damping=1.0, method="newton")
    with pytest.raises(ValueError, match="damping must be > 0 for the matrix-free"):
        so.gauss_newton_step(jax.random.key(0), blocks, params, batch, damping=0.0, method="params")
    with pytest.raises(ValueError, match="steps"):
        so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=0)
