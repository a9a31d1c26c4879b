"""SOAP (pa.optim.soap) against a plain NumPy reimplementation of its update rule, and the schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pinn_adapters as pa
from pinn_adapters import optim

RNG = np.random.default_rng(0)
A = RNG.standard_normal((6, 4))
B = RNG.standard_normal((3, 5))
C = RNG.standard_normal((6, 5))
c = RNG.standard_normal(3)


def loss(p):
    """A quadratic in a 4 x 3 matrix W and a bias b: ||A W B - C||^2 / 2 + ||b * [1, 4, 9] - c||^2 / 2."""
    return 0.5 * jnp.sum((A @ p["W"] @ B - C) ** 2) + 0.5 * jnp.sum((p["b"] * jnp.array([1.0, 4.0, 9.0]) - c) ** 2)


def grads_np(p):
    R = A @ p["W"] @ B - C
    s = np.array([1.0, 4.0, 9.0])
    return {"W": A.T @ R @ B.T, "b": s * (p["b"] * s - c)}


class NumpySoap:
    """SOAP written out for 2-D matrices (``Q_L^T G Q_R``) and 1-D vectors (Adam), as in the paper's code."""

    def __init__(self, lr, b1=0.95, b2=0.95, eps=1e-8, wd=0.0, freq=10, max_dim=10000, rotate_momentum=True):
        self.lr, self.b1, self.b2, self.eps, self.wd, self.freq, self.max_dim = lr, b1, b2, eps, wd, freq, max_dim
        self.rotate_momentum, self.state, self.step = rotate_momentum, {}, 0

    def _q(self, side, n):
        return side if side is not None else np.eye(n)

    def update(self, p, g):
        first = not self.state
        if first:
            for k, x in g.items():
                st = {"m": np.zeros_like(x), "v": np.zeros_like(x), "L": None, "R": None, "QL": None, "QR": None}
                if x.ndim == 2:
                    if x.shape[0] <= self.max_dim:
                        st["L"] = (1 - self.b2) * x @ x.T
                        st["QL"] = np.linalg.eigh(st["L"])[1][:, ::-1]
                    if x.shape[1] <= self.max_dim:
                        st["R"] = (1 - self.b2) * x.T @ x
                        st["QR"] = np.linalg.eigh(st["R"])[1][:, ::-1]
                self.state[k] = st
            return {k: np.array(v) for k, v in p.items()}
        self.step += 1
        t, out = self.step, {}
        for k, x in g.items():
            st = self.state[k]
            if x.ndim == 2:
                QL, QR = self._q(st["QL"], x.shape[0]), self._q(st["QR"], x.shape[1])
                rot, back = (lambda y: QL.T @ y @ QR), (lambda y: QL @ y @ QR.T)
            else:
                rot = back = lambda y: y
            gp = rot(x)
            st["m"] = self.b1 * st["m"] + (1 - self.b1) * gp
            st["v"] = self.b2 * st["v"] + (1 - self.b2) * gp**2
            step = self.lr * np.sqrt(1 - self.b2**t) / (1 - self.b1**t)
            new = p[k] - step * back(st["m"] / (np.sqrt(st["v"]) + self.eps))
            out[k] = new * (1 - self.lr * self.wd)
            if x.ndim == 2:
                m_orig = back(st["m"])
                if st["L"] is not None:
                    st["L"] = self.b2 * st["L"] + (1 - self.b2) * x @ x.T
                if st["R"] is not None:
                    st["R"] = self.b2 * st["R"] + (1 - self.b2) * x.T @ x
                if t % self.freq == 0:
                    self._refresh(st)
                QL, QR = self._q(st["QL"], x.shape[0]), self._q(st["QR"], x.shape[1])
                st["m"] = QL.T @ m_orig @ QR if self.rotate_momentum else st["m"]
        return out

    def _refresh(self, st):
        if st["L"] is not None:
            order = np.argsort(-np.diag(st["QL"].T @ st["L"] @ st["QL"]))
            st["v"] = st["v"][order, :]
            st["QL"] = np.linalg.qr(st["L"] @ st["QL"][:, order])[0]
        if st["R"] is not None:
            order = np.argsort(-np.diag(st["QR"].T @ st["R"] @ st["QR"]))
            st["v"] = st["v"][:, order]
            st["QR"] = np.linalg.qr(st["R"] @ st["QR"][:, order])[0]


P0 = {"W": RNG.standard_normal((4, 3)), "b": RNG.standard_normal(3)}


def _run_jax(opt, steps):
    p = {k: jnp.asarray(v) for k, v in P0.items()}
    s = opt.init(p)

    @jax.jit
    def step(p, s):
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        p, s = step(p, s)
        out.append({k: np.asarray(v) for k, v in p.items()})
    return out


def _run_np(ref, steps):
    p, out = {k: v.copy() for k, v in P0.items()}, []
    for _ in range(steps):
        p = ref.update(p, grads_np(p))
        out.append(p)
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 0.05, "freq": 3},
        {"lr": 0.02, "freq": 10, "wd": 0.1},
        {"lr": 0.05, "freq": 2, "max_dim": 3},  # the 4-long side is not rotated
        {"lr": 0.05, "freq": 4, "b1": 0.9, "b2": 0.99},
    ],
)
def test_soap_matches_numpy_update_rule(kw):
    ref = NumpySoap(**kw)
    opt = optim.soap(
        kw["lr"],
        b1=kw.get("b1", 0.95),
        b2=kw.get("b2", 0.95),
        weight_decay=kw.get("wd", 0.0),
        precondition_frequency=kw["freq"],
        max_precond_dim=kw.get("max_dim", 10000),
    )
    # W's 4 x 4 factor L = G G^T has rank 3: the gradient's component along its null direction is
    # rounding noise (~1e-16 |G|), which Adam divides by sqrt(v) + eps (eps = 1e-8), so the two
    # implementations may differ by ~1e-8 relative there; hence the tolerance (1e-6).
    got, want = _run_jax(opt, 20), _run_np(ref, 20)
    np.testing.assert_array_equal(got[0]["W"], P0["W"])  # the first call only sets up the bases
    for i, (a, b) in enumerate(zip(got, want)):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=f"step {i + 1}, {k}")
    assert not np.allclose(got[-1]["W"], P0["W"])


def test_reference_comparison_can_fail():
    """The comparison tells a wrong variant apart: the same SOAP without rotating the momentum."""
    got = _run_jax(optim.soap(0.05, precondition_frequency=3), 20)
    wrong = _run_np(NumpySoap(0.05, freq=3, rotate_momentum=False), 20)
    assert np.max(np.abs(got[-1]["W"] - wrong[-1]["W"])) > 1e-3  # 10^4 x the tolerance above


def _least_squares(seed):
    """0.5 <D, S D>, D = W - W*, W 8 x 32, S a randomly rotated SPD matrix with eigenvalues 1 .. 1e-4."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    S = jnp.asarray(U @ np.diag(np.logspace(0, -4, 8)) @ U.T)
    Ws = jnp.asarray(rng.standard_normal((8, 32)))
    W0 = Ws + 0.1 * jnp.asarray(rng.standard_normal((8, 32)))
    return (lambda W: 0.5 * jnp.sum((W - Ws) * (S @ (W - Ws)))), W0


def _final_loss(f, W0, opt, steps=500):
    def body(carry, _):
        W, s = carry
        u, s = opt.update(jax.grad(f)(W), s, W)
        return (optax.apply_updates(W, u), s), None

    (W, _), _ = jax.lax.scan(body, (W0, opt.init(W0)), None, length=steps)
    return float(f(W) / f(W0))


@pytest.mark.parametrize("lr", [3e-3, 1e-2])
def test_soap_beats_adam_on_rotated_ill_conditioned_quadratic(lr):
    # Measured (seeds 0-2, 500 steps): SOAP 2.6e-7..4.8e-6 of the initial loss, Adam 1.1e-4..1.1e-3: 23x-4200x.
    f, W0 = _least_squares(0)
    soap, adam = _final_loss(f, W0, optim.soap(lr)), _final_loss(f, W0, optax.adam(lr))
    assert soap < adam / 10, (soap, adam)


def test_soap_in_the_training_loop():
    problem = pa.problems.poisson1d(a=1.0, layers=(1, 8, 8, 1), n_res=32)
    res = pa.train(problem, optimizer=optim.soap(1e-2), steps=100, log_every=50, progress=False)
    loss = res.history["loss"]  # measured: 26, 1.6 at steps 50, 100 (0.015 at 200)
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0] / 5, loss


def test_soap_float32_and_schedule():
    p = {"W": jnp.ones((3, 2), jnp.float32), "b": jnp.ones(2, jnp.float32), "a": jnp.ones((), jnp.float32)}
    opt = optim.soap(optim.warmup_exponential_decay(1e-2, warmup_steps=2, decay_steps=5))
    s, update = opt.init(p), jax.jit(opt.update)
    for _ in range(4):
        g = jax.tree.map(lambda x: 0.1 * x + 1.0, p)
        u, s = update(g, s, p)
        p = optax.apply_updates(p, u)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p)) and int(s.count) == 4


def test_soap_1d_and_scalars_are_adam():
    """Without rotated dimensions SOAP is Adam with eps added to sqrt(v) and one skipped first step."""
    p = jnp.asarray(RNG.standard_normal(5))
    f = lambda x: jnp.sum(jnp.arange(1.0, 6.0) * x**2)  # noqa: E731
    opt, ref = optim.soap(0.1, b1=0.9, b2=0.99), optax.adam(0.1, b1=0.9, b2=0.99, eps=0.0)
    s, x, update = opt.init(p), p, jax.jit(opt.update)
    u, s = update(jax.grad(f)(x), s)
    np.testing.assert_array_equal(u, 0.0)
    sr, y = ref.init(p), p
    for _ in range(10):
        u, s = update(jax.grad(f)(x), s)
        x = x + u
        v, sr = ref.update(jax.grad(f)(y), sr)
        y = y + v
    np.testing.assert_allclose(x, y, rtol=1e-6)


def test_warmup_exponential_decay():
    sched = optim.warmup_exponential_decay(1e-3, warmup_steps=10, decay_steps=100, decay_rate=0.5)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), 5e-4)
    np.testing.assert_allclose(float(sched(10)), 1e-3)
    np.testing.assert_allclose(float(sched(110)), 5e-4)
    plain = optim.warmup_exponential_decay(1e-3, warmup_steps=0, decay_steps=100, decay_rate=0.5, staircase=True)
    np.testing.assert_allclose([float(plain(0)), float(plain(99)), float(plain(100))], [1e-3, 1e-3, 5e-4])
    assert isinstance(optim.adam(), optax.GradientTransformation)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"b1": 1.0}, "b1"),
        ({"precondition_frequency": 0}, "precondition_frequency"),
        ({"max_precond_dim": 0}, "max_precond_dim"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_soap_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.soap(**kwargs)


def test_soap_weight_decay_needs_params():
    opt = optim.soap(1e-2, weight_decay=0.1)
    p = {"W": jnp.ones((2, 2))}
    s = opt.init(p)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.update(p, s)
