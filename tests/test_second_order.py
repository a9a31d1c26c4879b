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


def test_loss_is_the_blocks_weighted_loss_for_vector_residuals():
    """||r_w||^2 is ResidualBlocks.loss (mean over every residual row of a block with two outputs per point),
    so LM minimises the loss the first-order trainer reports."""
    blocks = pa.ResidualBlocks(
        {
            "v": lambda prm, pts: jnp.stack([pts[:, 0] * prm["w"], pts[:, 1] - prm["w"]], axis=1),
            "s": lambda prm, pts: pts[:, 0] - prm["w"],
        },
        reduction="mean",
    )
    batch = {"v": jnp.arange(10.0).reshape(5, 2), "s": jnp.full((3, 1), 2.0)}
    params, weights = {"w": jnp.array(0.3)}, {"v": 2.0, "s": 0.5}
    _, info = so.gauss_newton_step(None, blocks, params, batch, damping=1.0, weights=weights, method="dense")
    np.testing.assert_allclose(float(info.loss), float(blocks.loss(params, batch, weights)), rtol=1e-13)


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


# ----------------------------------------------------------------------------- line search (ENGD)


def test_line_search_takes_the_full_step_on_linear_least_squares():
    """Linear residuals: L(eta) = ||r + eta J d||^2 is smallest at eta = 1 for the Gauss-Newton step, so the grid
    picks eta = 1 and one step lands on the least-squares solution (for LM and for energy_natural_gradient)."""
    blocks, batch, X, y = _linear(seed=3)
    ref = np.linalg.lstsq(X, y, rcond=None)[0]
    for fn in (so.levenberg_marquardt, so.energy_natural_gradient):
        kw = {"line_search": "grid", "damping": 1e-12} if fn is so.levenberg_marquardt else {}
        res = fn(jax.random.key(0), blocks, {"w": jnp.zeros(6)}, batch, steps=1, method="dense", grid_size=8, **kw)
        (h,) = res.history
        assert h["accepted"] and h["step_size"] == 1.0
        np.testing.assert_allclose(np.asarray(res.params["w"]), ref, rtol=1e-8)
        np.testing.assert_allclose(h["loss"], np.sum((X @ ref - y) ** 2), rtol=1e-10)


def test_line_search_picks_the_best_grid_point_and_never_increases_the_loss():
    """Rosenbrock from (-1.2, 1) with a tiny fixed damping (ENGD): the full Gauss-Newton step overshoots, so the
    grid takes eta < 1; the chosen eta is the argmin of the trial losses recomputed here one by one, accepted
    losses never increase, and the iteration reaches the minimum (1, 1)."""
    blocks, batch = _rosenbrock()
    x0 = jnp.array([-1.2, 1.0])
    res = so.energy_natural_gradient(jax.random.key(0), blocks, x0, batch, steps=40, damping=1e-10, method="dense")
    h = res.history
    d, info = so.gauss_newton_step(None, blocks, x0, batch, damping=1e-10, method="dense")
    f = so.scaled_residual_fn(blocks, batch, None)
    etas = 0.5 ** np.arange(31)
    trial = [float(jnp.sum(f(x0 + e * d) ** 2)) for e in etas]
    assert h[0]["step_size"] == etas[int(np.argmin(trial))] < 1
    np.testing.assert_allclose(h[0]["loss"], min(trial), rtol=1e-12)
    np.testing.assert_allclose(-2 * info.r_dot_jd - info.jd_norm2, info.predicted, rtol=1e-12)
    losses = [float(info.loss)] + [r["loss"] for r in h]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert all(r["accepted"] == (r["rho"] > 0) for r in h)
    assert all(r["damping"] == 1e-10 for r in h)  # fixed damping
    np.testing.assert_allclose(np.asarray(res.params), [1.0, 1.0], atol=1e-8)
    # with Nielsen damping and the grid, LM also never increases the loss
    lm = so.levenberg_marquardt(
        jax.random.key(0), blocks, x0, batch, steps=30, damping=1e-6, method="dense", line_search="grid", grid_size=4
    )
    losses = [float(info.loss)] + [r["loss"] for r in lm.history]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert {r["step_size"] for r in lm.history} <= {1.0, 0.5, 0.25, 0.125}


# ----------------------------------------------------------------------------- resampling


def test_resampling_trains_on_the_new_batch():
    """Linear least squares with a new system every accepted step: a (barely damped) Gauss-Newton step solves the
    current batch exactly, so after 3 steps the parameters solve the batch drawn after step 2 (and differ from
    the solution of the first batch); with resample_every=2 only every second accepted step draws one."""
    blocks, batch, X, y = _linear(seed=4)
    drawn = []

    def sample_batch(key):
        pts = jax.random.normal(key, (30, 7))
        drawn.append(np.asarray(pts))
        return {"a": pts}

    res = so.levenberg_marquardt(
        jax.random.key(1), blocks, {"w": jnp.zeros(6)}, batch, steps=3, damping=1e-12, method="dense",
        sample_batch=sample_batch,
    )  # fmt: skip
    assert [r["resampled"] for r in res.history] == [True] * 3 and len(drawn) == 3
    assert not np.allclose(drawn[0], drawn[1])
    last = drawn[1]
    np.testing.assert_allclose(np.asarray(res.params["w"]), np.linalg.lstsq(last[:, :6], last[:, 6], rcond=None)[0])
    assert not np.allclose(np.asarray(res.params["w"]), np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-3)
    # every second accepted step, on a nonlinear problem (several accepted steps)
    blocks, sample, params = _two_blocks()
    drawn.clear()
    res = so.levenberg_marquardt(
        jax.random.key(1), blocks, params, sample(jax.random.key(2)), steps=8, damping=1e-2, method="dense",
        sample_batch=lambda k: drawn.append(k) or sample(k), resample_every=2,
    )  # fmt: skip
    count, expected = 0, []
    for r in res.history:
        count += r["accepted"]
        expected.append(r["accepted"] and count % 2 == 0)
    assert [r["resampled"] for r in res.history] == expected and len(drawn) == count // 2 >= 2


# ----------------------------------------------------------------------------- checkpointing


def _two_blocks():
    """A small nonlinear two-block problem (for NTK weights) with a batch sampler."""
    blocks = pa.ResidualBlocks(
        {
            "fit": lambda prm, pts: jnp.tanh(pts[:, :3] @ prm["w"]) * prm["a"] - pts[:, 3],
            "reg": lambda prm, pts: pts[:, 0] * (prm["w"][0] - 0.5 * prm["a"]),
        },
        reduction="mean",
    )

    def sample_batch(key):
        k1, k2 = jax.random.split(key)
        return {"fit": jax.random.normal(k1, (12, 4)), "reg": jax.random.uniform(k2, (4, 1)) + 0.5}

    params = {"w": jnp.array([0.3, -0.2, 0.1]), "a": jnp.array(0.5)}
    return blocks, sample_batch, params


def test_checkpoint_resume_is_bit_identical(tmp_path):
    """Matrix-free LM with NTK weights, the grid line search and resampling: 3 steps, a checkpoint, 3 more
    resumed steps give bit for bit the parameters, weights and history (but time) of 6 uninterrupted steps."""
    blocks, sample_batch, params = _two_blocks()
    batch = sample_batch(jax.random.key(9))
    opts = dict(
        damping=1e-2, method="params", rank=2, line_search="grid", grid_size=6, sample_batch=sample_batch,
        weighting=pa.ntk_weighting(blocks, estimator="exact"),
    )  # fmt: skip
    full = so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=6, **opts)
    path = tmp_path / "lm.npz"
    so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=3, checkpoint=path, **opts)
    assert not [p for p in tmp_path.iterdir() if p.name != "lm.npz"]  # no temporary file left
    resumed = so.levenberg_marquardt(
        jax.random.key(0), blocks, params, batch, steps=6, resume=path, checkpoint=path, checkpoint_every=1, **opts
    )
    assert sum(r["accepted"] for r in full.history) >= 3 and any(r["resampled"] for r in full.history[3:])
    for a, b in zip(jax.tree.leaves((full.params, full.weights)), jax.tree.leaves((resumed.params, resumed.weights))):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    strip = [[{k: v for k, v in r.items() if k != "time"} for r in res.history] for res in (full, resumed)]
    assert strip[0] == strip[1]
    # another run's checkpoint is refused, naming the field
    with pytest.raises(ValueError, match="damping_rule"):
        so.levenberg_marquardt(
            jax.random.key(0), blocks, params, batch, steps=6, resume=path, **{**opts, "damping_rule": "fixed"}
        )
    with pytest.raises(ValueError, match="key"):
        so.levenberg_marquardt(jax.random.key(1), blocks, params, batch, steps=6, resume=path, **opts)
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=6, resume=tmp_path / "bad.npz", **opts)


def test_bad_driver_arguments_refused_before_any_work(tmp_path):
    def boom(prm, pts):
        raise AssertionError("work was done before the arguments were checked")

    blocks = pa.ResidualBlocks({"a": boom}, reduction="sum")
    args = (jax.random.key(0), blocks, {"w": jnp.zeros(2)}, {"a": jnp.ones((3, 2))})
    cases = [
        ({"line_search": "armijo"}, ValueError, "line_search"),
        ({"line_search": "grid", "grid_size": 1}, ValueError, "grid_size"),
        ({"line_search": "grid", "grid_size": 65}, ValueError, "grid_size"),
        ({"grid_size": 2.5}, TypeError, "grid_size"),
        ({"damping_rule": "marquardt"}, ValueError, "damping_rule"),
        ({"sample_batch": 3}, TypeError, "sample_batch"),
        ({"sample_batch": lambda k: None, "resample_every": 0}, ValueError, "resample_every"),
        ({"checkpoint": tmp_path / "missing" / "lm.npz"}, FileNotFoundError, "checkpoint"),
        ({"checkpoint": tmp_path}, ValueError, "checkpoint"),
        ({"checkpoint_every": 2}, ValueError, "checkpoint_every"),
        ({"resume": tmp_path / "none.npz"}, FileNotFoundError, "resume"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append(({"checkpoint": tmp_path / "file" / "lm.npz"}, ValueError, "checkpoint"))
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            so.levenberg_marquardt(*args, steps=2, **kw)
    with pytest.raises(TypeError, match="line_search"):
        so.energy_natural_gradient(*args, steps=2, line_search=None)


def test_weighting_refresh_compiles_once_per_run(caplog):
    """The weighting's update runs as one compiled program per run: with ``every > 1`` an eager update's
    ``lax.cond`` compiled its branches on every call (a run of thousands of steps exhausted memory)."""
    import logging

    blocks, sample_batch, params = _two_blocks()
    batch = sample_batch(jax.random.key(9))
    counts = []
    for steps in (4, 16):
        w = pa.ntk_weighting(blocks, estimator="exact", every=2)
        so.levenberg_marquardt(
            jax.random.key(0),
            blocks,
            params,
            batch,
            steps=2,
            weighting=w,
            method="dense",
            damping=0.1,
            sample_batch=sample_batch,
            resample_every=3,
        )  # fmt: skip  (warm up)
        caplog.clear()
        jax.config.update("jax_log_compiles", True)
        try:
            with caplog.at_level(logging.WARNING, logger="jax"):
                res = so.levenberg_marquardt(
                    jax.random.key(0), blocks, params, batch, steps=steps, weighting=w, method="dense",
                    damping=0.1, sample_batch=sample_batch, resample_every=3,
                )  # fmt: skip
        finally:
            jax.config.update("jax_log_compiles", False)
        assert sum(r["accepted"] for r in res.history) >= steps // 2  # refreshes happened (every 2 accepted)
        counts.append(sum("Compiling" in r.getMessage() for r in caplog.records))
    assert counts[1] == counts[0], counts  # no compilation per step


def test_weighting_by_name_or_refused():
    """``weighting="exact"`` is :func:`pa.ntk_weighting`'s exact weighting (as in ``pa.train``); an object
    that is not a weighting is refused by name before any work (it failed inside the run)."""
    blocks, sample_batch, params = _two_blocks()
    batch = sample_batch(jax.random.key(9))
    kw = dict(steps=3, method="dense", damping=0.1)
    named = so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, weighting="exact", **kw)
    built = so.levenberg_marquardt(
        jax.random.key(0), blocks, params, batch, weighting=pa.ntk_weighting(blocks, estimator="exact"), **kw
    )
    assert named.weights == built.weights and [r["loss"] for r in named.history] == [r["loss"] for r in built.history]
    with pytest.raises(TypeError, match="weighting must be None, an estimator name or pa.ntk_weighting"):
        so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, weighting={"res": 1.0}, **kw)
    with pytest.raises(ValueError, match="estimator must be one of"):
        so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, weighting="ntk", **kw)
