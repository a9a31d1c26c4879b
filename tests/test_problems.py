"""Built-in problems with references: Burgers (Cole-Hopf), Allen-Cahn (Fourier ETDRK4), network= and causal=."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from pinn_adapters import nets, problems
from pinn_adapters.problems import _references as refs

NU = 0.01 / math.pi


# ----------------------------------------------------------------------------- Burgers reference


def _trapezoid_cole_hopf(x, t, nu=NU, h=2e-3, half_width=20.0):
    """An independent oracle: the Cole-Hopf integrals by the trapezoidal rule in z (spectrally accurate)."""
    z = np.arange(-half_width, half_width + h / 2, h)
    y = np.asarray(x, float)[..., None] - np.sqrt(4 * nu * np.asarray(t, float))[..., None] * z
    e = -np.cos(np.pi * y) / (2 * np.pi * nu) - z**2
    f = np.exp(e - e.max(axis=-1, keepdims=True))
    return -(np.sin(np.pi * y) * f).sum(-1) / f.sum(-1)


def test_burgers_reference_initial_condition_and_symmetry():
    x = np.linspace(-1, 1, 41)
    np.testing.assert_allclose(problems.burgers_reference(x, 0.0), -np.sin(np.pi * x), atol=1e-15)
    X, T = np.meshgrid(x, np.linspace(0, 1, 11))
    u = problems.burgers_reference(X, T)
    np.testing.assert_allclose(u, -problems.burgers_reference(-X, T), atol=1e-14)  # odd in x
    assert np.max(np.abs(u[:, [0, 20, 40]])) < 1e-13  # u(-1) = u(0) = u(1) = 0


def test_burgers_reference_quadrature_refinement_and_oracle():
    # the whole domain plus a fine patch around the shock at x = 0
    X, T = np.meshgrid(np.linspace(-1, 1, 17), np.linspace(0, 1, 6))
    Xs, Ts = np.meshgrid(np.linspace(-0.02, 0.02, 11), np.linspace(0.3, 1.0, 8))
    X, T = np.concatenate([X.ravel(), Xs.ravel()]), np.concatenate([T.ravel(), Ts.ravel()])
    u = {n: problems.burgers_reference(X, T, order=n) for n in (30, 100, 200, 300)}
    assert np.max(np.abs(u[100] - u[200])) < 1e-13
    assert np.max(np.abs(u[300] - u[200])) < 1e-13
    assert np.max(np.abs(u[30] - u[200])) > 1e-6  # too few nodes is visible: the study can fail
    oracle = _trapezoid_cole_hopf(X, T)
    assert np.max(np.abs(u[200] - oracle)) < 1e-12


def test_burgers_reference_matches_basdevant_max_slope():
    """Basdevant et al. (1986): max |u_x(0, t)| = 152.00516 at t = 1.6037 / pi."""
    r = minimize_scalar(lambda t: problems.burgers_reference_ux(0.0, t), bounds=(0.4, 0.6), method="bounded",
                        options={"xatol": 1e-9})  # fmt: skip
    assert abs(-r.fun - 152.00516) < 1e-5
    assert abs(r.x * math.pi - 1.6037) < 1e-4
    # u_x agrees with a central difference of u where u is smooth, and the PDE holds there
    x, t, h = 0.4, 0.6, 1e-4
    ux_fd = (problems.burgers_reference(x + h, t) - problems.burgers_reference(x - h, t)) / (2 * h)
    assert abs(problems.burgers_reference_ux(x, t) - ux_fd) < 1e-6
    ut = (problems.burgers_reference(x, t + h) - problems.burgers_reference(x, t - h)) / (2 * h)
    uxx = (problems.burgers_reference(x + h, t) - 2 * problems.burgers_reference(x, t)
           + problems.burgers_reference(x - h, t)) / h**2  # fmt: skip
    assert abs(ut + problems.burgers_reference(x, t) * ux_fd - NU * uxx) < 1e-5


def test_burgers_reference_bad_input():
    with pytest.raises(ValueError, match="order must be at most 300"):
        problems.burgers_reference(0.0, 0.5, order=400)
    with pytest.raises(ValueError, match="t must be finite and non-negative"):
        problems.burgers_reference(0.0, -0.1)
    with pytest.raises(ValueError, match="nu"):
        problems.burgers_reference(0.0, 0.5, nu=0.0)


# ----------------------------------------------------------------------------- ETDRK4


def test_etdrk4_coefficients_small_and_large_z():
    dt = 0.1
    c = problems.etdrk4_coefficients(np.array([0.0, -1e-7, -50.0]), dt)
    for k in ("f1", "f2", "f3"):  # the z -> 0 limits are dt / 6
        np.testing.assert_allclose(c[k][:2], dt / 6, rtol=1e-7)
    np.testing.assert_allclose(c["Q"][:2], dt / 2, rtol=1e-7)
    z = -50.0 * dt  # the direct formulas are accurate away from 0
    ez = math.exp(z)
    direct = {
        "Q": dt * (math.exp(z / 2) - 1) / z,
        "f1": dt * (-4 - z + ez * (4 - 3 * z + z**2)) / z**3,
        "f2": dt * (2 + z + ez * (z - 2)) / z**3,
        "f3": dt * (-4 - 3 * z - z**2 + ez * (4 - z)) / z**3,
    }
    for k, v in direct.items():
        assert abs(c[k][2] - v) < 1e-13 * abs(v) + 1e-16, k


def _logistic_error(dt, T=1.0, u0=0.1, g=5.0):
    """``u' = g (u - u^3)`` (the ``k = 0`` mode of Allen-Cahn: ``L = 0``) against its exact solution."""
    out = problems.etdrk4(np.zeros(1), lambda v: g * (v - v**3), np.array([u0]), dt=dt, num_steps=round(T / dt))
    exact = 1.0 / math.sqrt(1.0 + (1.0 / u0**2 - 1.0) * math.exp(-2 * g * T))
    return abs(out[-1, 0] - exact)


def test_etdrk4_fourth_order_on_known_solutions():
    errs = [_logistic_error(dt) for dt in (0.02, 0.01, 0.005)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(14 < r < 19 for r in ratios), (errs, ratios)  # 2^4 = 16; measured 17.2, 16.6
    # linear: v' = -nu k^2 v + lam v, the lam v part stepped explicitly; exact e^{(lam - nu k^2) T}
    nu, lam, k = 0.05, 2.0, np.array([0.0, 3.0, 7.0])
    exact = np.exp((lam - nu * k**2) * 1.0)

    def err(dt):
        v = problems.etdrk4(-nu * k**2, lambda v: lam * v, np.ones(3), dt=dt, num_steps=round(1 / dt))
        return np.max(np.abs(v[-1] - exact) / exact)

    e1, e2 = err(0.1), err(0.05)
    assert 12 < e1 / e2 < 20 and e2 < 1e-5
    v = problems.etdrk4(-nu * k**2, lambda v: 0 * v, np.ones(3), dt=0.25, num_steps=4)  # L alone: exact
    np.testing.assert_allclose(v[-1], np.exp(-nu * k**2), rtol=1e-14)


def test_allen_cahn_solver_converges_at_fourth_order_in_time():
    kw = {"n": 64, "T": 0.5, "num_snapshots": 2, "eps": 0.01, "u0": lambda x: 0.5 * np.sin(np.pi * x) ** 2}
    fine = refs.solve_allen_cahn(dt=0.5 / 320, **kw).u[-1]
    errs = [np.max(np.abs(refs.solve_allen_cahn(dt=0.5 / m, **kw).u[-1] - fine)) for m in (10, 20, 40)]
    assert all(12 < errs[i] / errs[i + 1] < 20 for i in range(2)), errs


def test_allen_cahn_reference_cache_and_interpolation(tmp_path):
    kw = {"n": 256, "dt": 1e-3, "num_snapshots": 101, "cache_dir": tmp_path}
    a = problems.allen_cahn_reference(**kw)
    assert a.meta["from_cache"] is False and a.meta["accuracy"]["time"] < 1e-6
    files = list((tmp_path / "references").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    b = problems.allen_cahn_reference(**kw)
    assert b.meta["from_cache"] is True
    np.testing.assert_array_equal(a.u, b.u)
    with np.load(files[0], allow_pickle=False) as z:  # readable without pickle
        assert z["u"].shape == (101, 256)
    # exact at grid points and snapshot times; cubic Hermite in between, against a finer solve
    np.testing.assert_allclose(a(a.x[::7], np.full(len(a.x[::7]), a.t[30])), a.u[30, ::7], atol=1e-12)
    dense = refs.solve_allen_cahn(n=256, dt=1e-3, num_snapshots=201)
    mid_t = dense.t[1::2][:50]
    X, T = np.meshgrid(a.x[::4], mid_t)
    err = np.max(np.abs(a(X, T) - dense.u[1::2][:50, ::4]))
    assert err < 1e-3, err
    with pytest.raises(ValueError, match="t must lie in"):
        a(0.0, 1.5)
    # the problem's error grid: the snapshot subsample equals the interpolant there, (x, t) in "ij" order
    from pinn_adapters.problems._allen_cahn import _on_grid

    xs, ts = np.meshgrid(-1.0 + 2.0 * np.arange(256) / 256, np.linspace(0.0, 1.0, 101), indexing="ij")
    np.testing.assert_allclose(_on_grid(a, xs, ts), a(xs, ts), atol=1e-12)


def test_allen_cahn_solver_bad_input(tmp_path):
    with pytest.raises(ValueError, match="multiple of num_snapshots - 1"):
        refs.solve_allen_cahn(n=64, dt=3e-3)
    with pytest.raises(ValueError, match="n must be even"):
        refs.solve_allen_cahn(n=63)
    with pytest.raises(ValueError, match="check=True solves with 2 dt"):  # refused before the first solve
        problems.allen_cahn_reference(n=64, dt=5e-3, cache_dir=tmp_path)
    assert not (tmp_path / "references").exists()


# ----------------------------------------------------------------------------- problems


def _fixed(fn, d_in=2):
    """A Network whose output is ``fn(x)`` (plus 0 * a parameter, so gradients flow)."""
    return nets.Network(lambda key: {"w": jnp.zeros(())}, lambda p, x: jnp.reshape(fn(x) + 0 * p["w"], (1,)),
                        {"kind": "fixed"})  # fmt: skip


def test_burgers_blocks_against_hand_computation():
    prob = problems.burgers(network=_fixed(lambda x: -jnp.sin(jnp.pi * x[0])), n_res=16, n_bc=8)
    assert prob.blocks.names == ("bc", "ic", "res") and prob.batch_sizes == {"ic": 8, "bc": 16, "res": 16}
    batch = prob.sample_batch(jax.random.key(0))
    r = prob.blocks.residuals(prob.init_params(jax.random.key(0)), batch)
    x = batch["res"][:, 0]
    expected = jnp.pi * jnp.sin(jnp.pi * x) * jnp.cos(jnp.pi * x) - NU * jnp.pi**2 * jnp.sin(jnp.pi * x)
    np.testing.assert_allclose(r["res"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["ic"], 0, atol=1e-6)
    np.testing.assert_allclose(r["bc"], 0, atol=1e-6)
    assert set(np.unique(np.asarray(batch["bc"][:, 0]))) == {-1.0, 1.0}
    assert prob.info["network"] == {"kind": "fixed"}
    # relative_l2 against the reference on the documented 256 x 101 grid, computed here by hand
    X, T = np.meshgrid(np.linspace(-1, 1, 256), np.linspace(0, 1, 101), indexing="ij")
    ref = problems.burgers_reference(X, T)
    expected = np.linalg.norm(-np.sin(np.pi * X) - ref) / np.linalg.norm(ref)
    assert float(prob.relative_l2(prob.init_params(jax.random.key(0)))) == pytest.approx(expected, rel=1e-5)


def test_allen_cahn_blocks_default_network_and_periodic_bc(tmp_path):
    ref = {"n": 256, "dt": 1e-3, "cache_dir": tmp_path, "check": False}
    prob = problems.allen_cahn(reference=ref, layers=(2, 8, 1))
    assert prob.blocks.names == ("ic", "res")  # the default embedding is exactly periodic in x
    params = prob.init_params(jax.random.key(0))
    t = jnp.linspace(0, 1, 5)
    left = jax.vmap(lambda s: prob.apply(params, jnp.stack([-1.0, s])))(t)
    right = jax.vmap(lambda s: prob.apply(params, jnp.stack([1.0, s])))(t)
    np.testing.assert_allclose(left, right, atol=1e-6)
    assert prob.info["network"]["fourier"]["periodic"] == {"0": 2.0}
    u0 = _fixed(lambda x: x[0] ** 2 * jnp.cos(jnp.pi * x[0]))
    plain = problems.allen_cahn(reference=ref, network=u0, n_res=8, n_bc=4)
    assert plain.blocks.names == ("bc", "ic", "res")
    batch = plain.sample_batch(jax.random.key(1))
    r = plain.blocks.residuals({"w": jnp.zeros(())}, batch)
    np.testing.assert_allclose(r["ic"], 0, atol=1e-6)
    np.testing.assert_allclose(r["bc"].reshape(4, 2), np.tile([0.0, 4.0], (4, 1)), atol=1e-5)
    x = batch["res"][:, 0]
    u = x**2 * jnp.cos(jnp.pi * x)
    uxx = 2 * jnp.cos(jnp.pi * x) - 4 * jnp.pi * x * jnp.sin(jnp.pi * x) - jnp.pi**2 * u
    np.testing.assert_allclose(r["res"], -1e-4 * uxx + 5 * (u**3 - u), rtol=1e-5, atol=1e-5)
    assert problems.allen_cahn(reference=ref, network=u0, periodic_bc=False).blocks.names == ("ic", "res")
    with pytest.raises(ValueError, match="reference was solved with eps"):
        problems.allen_cahn(reference=refs.allen_cahn_reference(eps=1e-3, **ref))
    with pytest.raises(ValueError, match="periodic_bc"):
        problems.allen_cahn(reference=ref, periodic_bc="yes")


def test_default_network_is_the_plain_mlp_bit_for_bit():
    key = jax.random.key(3)
    for prob, layers in ((problems.wave1d(), (2, 64, 64, 64, 1)), (problems.poisson1d(), (1, 32, 32, 1))):
        assert prob.layers == layers and prob.network is None and "network" not in prob.info
        a, b = prob.init_params(key), problems.mlp_init(key, layers)
        assert all(bool(jnp.array_equal(p, q)) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        assert prob.apply is problems.mlp_apply
    wide = problems.wave1d(network=nets.mlp((2, 16, 1), fourier={"num": 4}))
    assert wide.layers == (2, 16, 1) and wide.info["network"]["fourier"]["num"] == 4
    assert wide.info != problems.wave1d(layers=(2, 16, 1)).info  # a checkpoint manifest tells them apart
    pirate = problems.wave1d(network=nets.pirate_net(2, 1, width=8, num_blocks=1))
    assert pirate.layers == "pirate_net(2 -> 1)"
    assert jax.eval_shape(pirate.apply, jax.eval_shape(pirate.init_params, key), jnp.zeros(2)).shape == (1,)


def test_network_argument_bad_input():
    with pytest.raises(TypeError, match="not both"):
        problems.wave1d(layers=(2, 8, 1), network=nets.mlp((2, 8, 1)))
    with pytest.raises(ValueError, match=r"map one \(2,\) point to shape \(1,\)"):
        problems.burgers(network=nets.mlp((2, 8, 3)))
    with pytest.raises(ValueError, match="could not be applied"):
        problems.wave1d(network=nets.mlp((3, 8, 1)))
    with pytest.raises(TypeError, match="nets.Network"):
        problems.poisson1d(network=lambda x: x)
    with pytest.raises(ValueError, match="layers must start with width 2"):
        problems.burgers(layers=(1, 8, 1))


@pytest.mark.parametrize("make", [problems.wave1d, problems.burgers])
def test_causal_option_scales_the_residual_rows(make):
    plain = make(layers=(2, 8, 1), n_res=64)
    causal = make(layers=(2, 8, 1), n_res=64, causal={"eps": 10.0, "num_chunks": 4})
    assert causal.info["causal"] == {"eps": 10.0, "num_chunks": 4, "balance": False}
    params, batch = plain.init_params(jax.random.key(0)), plain.sample_batch(jax.random.key(1))
    r0, r1 = plain.blocks.residuals(params, batch), causal.blocks.residuals(params, batch)
    t = np.asarray(batch["res"][:, 1])
    chunk = np.minimum((t * 4).astype(int), 3)
    L = np.array([np.mean(np.asarray(r0["res"])[chunk == k] ** 2) for k in range(4)])
    w = np.exp(-10.0 * (np.cumsum(L) - L))
    np.testing.assert_allclose(r1["res"], np.asarray(r0["res"]) * np.sqrt(w[chunk]), rtol=1e-5, atol=1e-7)
    for name in set(r0) - {"res"}:
        np.testing.assert_array_equal(r0[name], r1[name])
    with pytest.raises(ValueError, match="causal must be None or a dict"):
        make(causal={"epsilon": 1.0})


def test_sample_batch_reproducible_and_in_domain():
    prob = problems.burgers(n_res=32, n_bc=8)
    a, b = prob.sample_batch(jax.random.key(5)), prob.sample_batch(jax.random.key(5))
    assert all(bool(jnp.array_equal(a[k], b[k])) for k in a)
    res = np.asarray(a["res"])
    assert res[:, 0].min() >= -1 and res[:, 0].max() <= 1 and res[:, 1].min() >= 0 and res[:, 1].max() <= 1
    assert np.all(np.asarray(a["ic"])[:, 1] == 0)
