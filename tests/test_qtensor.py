"""The Q-tensor PINN problem: residual blocks (analytic and on the FEM solution) and a tiny run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("skfem")

from pinn_adapters.fem import initial_q, manufactured, solve_qtensor  # noqa: E402
from pinn_adapters.problems import qtensor2d, qtensor_blocks  # noqa: E402
from pinn_adapters.problems._qtensor2d import director  # noqa: E402


def _points(seed, n, t_lo=0.0, t_hi=1.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.column_stack([rng.uniform(0, 2, (n, 2)), rng.uniform(t_lo, t_hi, n)]))


def _batch(pts):
    return {"res_q1": pts, "res_q2": pts, "ic": pts.at[:, 2].set(0.0), "bc": pts.at[:, 0].set(0.0)}


def test_residual_blocks_match_the_analytic_residual():
    """On a closed-form field the PDE block equals the hand-derived residual (= the MMS source)."""
    exact, source, _ = manufactured(amplitude=0.7)

    def field(params, p):
        return params["s"] * jnp.stack(exact(p[0], p[1], p[2]))

    blocks = qtensor_blocks(field)
    pts = _points(0, 64)
    R = blocks.residuals({"s": jnp.asarray(1.0)}, _batch(pts))
    f1, f2 = source(pts[:, 0], pts[:, 1], pts[:, 2])
    np.testing.assert_allclose(R["res_q1"], f1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(R["res_q2"], f2, rtol=1e-10, atol=1e-12)
    # boundary block: the field vanishes at x = 0; initial block: q(., 0) - q0 (two rows per point)
    np.testing.assert_allclose(R["bc"], 0.0, atol=1e-12)
    q1, q2 = exact(pts[:, 0], pts[:, 1], 0.0)
    i1, i2 = initial_q(pts[:, 0], pts[:, 1])
    np.testing.assert_allclose(R["ic"], np.column_stack([q1 - i1, q2 - i2]).ravel(), atol=1e-12)
    # a changed coefficient changes the residual (the comparison can fail)
    W = qtensor_blocks(field, c=1.1).residuals({"s": jnp.asarray(1.0)}, _batch(pts))
    assert np.max(np.abs(W["res_q1"] - f1)) > 1e-3


def _interpolant_field(t0, T, modes, degree):
    """``field(params, p)``: a sine series in space times Chebyshev polynomials in time on [t0, T]."""
    ks = jnp.arange(1, modes + 1)

    def field(params, p):
        x, y, t = p
        s = 2 * (t - t0) / (T - t0) - 1
        cheb = [jnp.ones_like(s), s]
        for _ in range(degree - 1):
            cheb.append(2 * s * cheb[-1] - cheb[-2])
        sx, sy = jnp.sin(ks * jnp.pi * x / 2), jnp.sin(ks * jnp.pi * y / 2)
        return jnp.einsum("m,mckl,k,l->c", jnp.stack(cheb[: degree + 1]), params["C"], sx, sy)

    return field


def _interpolant_coefficients(sol, t0, modes, degree):
    """Fit: discrete sine transform of the FEM nodal values, least-squares Chebyshev fit in time."""
    from scipy.fft import dstn

    n, T = sol.config["n"], float(sol.times[-1])
    _, g = sol.on_grid(2 * n + 1)  # every point of this grid is a P2 node
    coef = dstn(g[:, :, 1:-1, 1:-1], type=1, axes=(2, 3)) / (2 * n) ** 2
    keep = sol.times >= t0 - 1e-12
    s = 2 * (sol.times[keep] - t0) / (T - t0) - 1
    C = np.polynomial.chebyshev.chebfit(s, coef[keep][:, :, :modes, :modes].reshape(keep.sum(), -1), degree)
    return {"C": jnp.asarray(C.reshape(degree + 1, 2, modes, modes))}


def test_pde_residual_is_small_on_the_fem_solution():
    """The PDE blocks, applied to a smooth interpolant of the FEM solution, nearly vanish.

    ``||res|| / ||q||`` at random interior points is below 5e-3 (measured 1.7e-3 and 6e-4:
    FEM and interpolation error). The control, the same check on the FEM solution of a
    different equation (diffusion coefficient 0.12 instead of 0.1), gives 0.41 and 0.26.
    """
    T, t0, modes, degree = 0.5, 0.1, 12, 8  # t0 > 0 skips the initial layer
    field = _interpolant_field(t0, T, modes, degree)
    blocks = qtensor_blocks(field)
    values = jax.jit(jax.vmap(field, (None, 0)))
    pts = _points(1, 300, t0 + 0.05, T)

    def relative(L):
        sol = solve_qtensor(T=T, n=16, element="P2", num_steps=100, num_snapshots=51, L=L)
        params = _interpolant_coefficients(sol, t0, modes, degree)
        R = blocks.residuals(params, _batch(pts))
        q = values(params, pts)
        if L == 0.1:  # the interpolant reproduces the FEM values it was built from
            xs, g = sol.on_grid(9)
            X, Y = np.meshgrid(xs, xs, indexing="ij")
            end = values(params, jnp.asarray(np.column_stack([X.ravel(), Y.ravel(), np.full(X.size, T)])))
            np.testing.assert_allclose(np.asarray(end).T.reshape(2, 9, 9), g[-1], atol=2e-3)
        return [float(jnp.linalg.norm(R[b]) / jnp.linalg.norm(q[:, i])) for i, b in enumerate(("res_q1", "res_q2"))]

    good, bad = relative(0.1), relative(0.12)
    assert max(good) < 5e-3, good
    assert min(bad) > 10 * max(good) and min(bad) > 0.01, (good, bad)


def _tiny_reference(**kw):
    return solve_qtensor(T=kw.get("T", 1.0), n=4, num_steps=20, num_snapshots=11)


def test_problem_shapes_metrics_and_bad_input():
    ref = _tiny_reference()
    prob = qtensor2d(layers=(3, 8, 2), n_res=10, n_bc=3, reference=ref, grid=5)
    key = jax.random.key(0)
    params = prob.init_params(key)
    batch = prob.sample_batch(key)
    R = jax.eval_shape(prob.blocks.residuals, params, batch)  # shapes only: no compile
    assert {k: v.shape for k, v in R.items()} == {"res_q1": (10,), "res_q2": (10,), "ic": (6,), "bc": (24,)}
    assert prob.batch_sizes == {"res_q1": 10, "res_q2": 10, "ic": 6, "bc": 24}
    b = np.asarray(batch["bc"])
    on_side = np.isclose(b[:, 0], 0) | np.isclose(b[:, 0], 2) | np.isclose(b[:, 1], 0) | np.isclose(b[:, 1], 2)
    assert on_side.all() and np.all(np.asarray(batch["ic"])[:, 2] == 0)
    assert np.all((np.asarray(batch["res_q1"])[:, 2] >= 0) & (np.asarray(batch["res_q1"])[:, 2] <= 1))
    # metrics against the reference: zero for a "network" that is the reference itself
    m = prob.info["metrics"](params)
    assert set(m) == {"relative_l2_q1", "relative_l2_q2"} and all(v > 0 for v in m.values())
    rel = float(prob.relative_l2(params))
    assert min(m.values()) <= rel + 1e-12 or max(m.values()) >= rel - 1e-12
    # exact_solution interpolates the snapshots
    xs, g = ref.on_grid(5)
    q1, q2 = prob.exact_solution(np.full(5, xs[2]), xs, np.full(5, float(ref.times[3])))
    np.testing.assert_allclose(q1, g[3, 0, 2], atol=1e-12)
    with pytest.raises(ValueError, match="layers"):
        qtensor2d(layers=(2, 8, 1), reference=None)
    with pytest.raises(ValueError, match="n_res"):
        qtensor2d(n_res=0, reference=None)
    with pytest.raises(ValueError, match="reference ends"):
        qtensor2d(T=0.5, reference=ref)
    with pytest.raises(ValueError, match="reference must be"):
        qtensor2d(reference="fem")


def test_director_of_q():
    th, S = director(np.array([0.5, 0.0, -0.5]), np.array([0.0, 0.5, 0.0]))
    np.testing.assert_allclose(th, [0.0, np.pi / 4, np.pi / 2])
    np.testing.assert_allclose(S, [1.0, 1.0, 1.0])


def test_cli_tiny_run_writes_outputs(tmp_path, monkeypatch, capsys):
    """``sketchtrace pinn qtensor`` on a tiny network and a coarse (patched) reference."""
    import pinn_adapters.fem as fem
    from sketchtrace.cli import main

    monkeypatch.setattr(fem, "reference", lambda **kw: _tiny_reference(**kw))
    out = tmp_path / "q"
    cfg = tmp_path / "tiny.json"  # no exact-weight tracking: keeps the test's compile time short
    cfg.write_text(json.dumps({"problem": "qtensor", "track_weight_error": False}))
    args = [
        "pinn",
        "qtensor",
        "--config",
        str(cfg),
        "--weights",
        "pc",
        "--steps",
        "6",
        "--width",
        "6",
        "--depth",
        "1",
        "--log-every",
        "3",
        "--n-res",
        "8",
        "--n-bc",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert {"results.json", "director.png", "error.png", "losses.png", "weights.png"} <= {p.name for p in out.iterdir()}
    r = json.loads((out / "results.json").read_text())
    m = r["metrics"]
    assert set(m["final_weights"]) == {"bc", "ic", "res_q1", "res_q2"}
    assert all(np.isfinite(w) and w > 0 for w in m["final_weights"].values())
    assert m["relative_l2"] > 0 and m["relative_l2_q1"] > 0 and m["relative_l2_q2"] > 0
    assert r["config"]["problem"] == "qtensor" and r["history"]["step"][-1] == 6
    assert "qtensor, weights=pc" in capsys.readouterr().out
