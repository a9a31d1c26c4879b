"""The one-dimensional wave problem of Wang, Yu and Perdikaris (2022)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sketchtrace.validation import check_int

from .._blocks import ResidualBlocks
from ._problem import Problem, causal_residual, problem_info, resolve_network


def wave_exact(x, t, c=2.0):
    """``u = sin(pi x) cos(c pi t) + 0.5 sin(4 pi x) cos(4 c pi t)`` (``c = 2`` in the paper)."""
    x, t = jnp.asarray(x), jnp.asarray(t)
    return jnp.sin(math.pi * x) * jnp.cos(c * math.pi * t) + 0.5 * jnp.sin(4 * math.pi * x) * jnp.cos(
        4 * c * math.pi * t
    )


def wave1d(
    *,
    layers=None,
    network=None,
    causal=None,
    n_res=300,
    n_bc=100,
    c=2.0,
    reduction="mean",
    learning_rate=1e-3,
    dtype=None,
):
    """``u_tt = c^2 u_xx`` on ``(x, t) in [0, 1]^2`` (``c = 2``): the wave problem of Wang et al.

    ``u(0, t) = u(1, t) = 0``, ``u(x, 0) = sin(pi x) + 0.5 sin(4 pi x)``,
    ``u_t(x, 0) = 0``; exact ``u = sin(pi x) cos(2 pi t) + 0.5 sin(4 pi x) cos(8 pi t)``.
    Network input is ``(x, t)``. Blocks (each batch redrawn by ``sample_batch``):

    * ``"u"``: ``u - u*`` at ``n_bc`` points on each of ``t = 0``, ``x = 0``, ``x = 1``
      (initial displacement and both boundaries, ``3 n_bc`` points);
    * ``"u_t"``: ``u_t`` at ``n_bc`` points on ``t = 0`` (initial velocity);
    * ``"res"``: ``u_tt - c^2 u_xx`` at ``n_res`` uniform interior points.

    ``layers`` (default ``(2, 64, 64, 64, 1)``) sets the plain tanh MLP; ``network`` (a
    :class:`pinn_adapters.nets.Network` from ``(x, t)`` to ``u``, e.g.
    ``nets.mlp((2, 128, 128, 128, 1), fourier={"num": 64})``) replaces it. ``causal``
    (``None`` or ``{"eps": 1.0, "num_chunks": 32}``) weights the ``"res"`` rows causally
    in ``t`` (:class:`pinn_adapters.causal.CausalBlock`).

    Wang et al. train ``layers=(2, 500, 500, 500, 1)`` with ``n_res=300, n_bc=100``
    (Adam 1e-3 decayed by 0.9 every 1000 steps, 80k steps); the default here is a
    narrower network for CPUs.

    References
    ----------
    S. Wang, X. Yu, P. Perdikaris, "When and why PINNs fail to train: a neural tangent
    kernel perspective", J. Comput. Phys. 449 (2022). doi:10.1016/j.jcp.2021.110768
    """
    n_res, n_bc = check_int(n_res, name="n_res", minimum=1), check_int(n_bc, name="n_bc", minimum=1)
    init, apply, layers, net_config = resolve_network(
        network, layers, d_in=2, d_out=1, problem="wave1d", default_layers=(2, 64, 64, 64, 1), dtype=dtype
    )

    def u(params, x, t):
        return apply(params, jnp.stack([x, t]))[0]

    u_t = jax.grad(u, argnums=2)
    u_tt = jax.grad(u_t, argnums=2)
    u_xx = jax.grad(jax.grad(u, argnums=1), argnums=1)

    def res(params, pts):
        x, t = pts[:, 0], pts[:, 1]
        return jax.vmap(u_tt, (None, 0, 0))(params, x, t) - c**2 * jax.vmap(u_xx, (None, 0, 0))(params, x, t)

    def u_block(params, pts):
        x, t = pts[:, 0], pts[:, 1]
        return jax.vmap(u, (None, 0, 0))(params, x, t) - wave_exact(x, t, c)

    def ut_block(params, pts):
        return jax.vmap(u_t, (None, 0, 0))(params, pts[:, 0], pts[:, 1])

    res_block, causal = causal_residual(res, causal, time=1, t_range=(0.0, 1.0))
    blocks = ResidualBlocks({"u": u_block, "u_t": ut_block, "res": res_block}, reduction=reduction)

    def sample_batch(key):
        dt = dtype or jnp.result_type(float)
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        zeros, ones = jnp.zeros((n_bc,), dt), jnp.ones((n_bc,), dt)
        ic = jnp.stack([jax.random.uniform(k1, (n_bc,), dt), zeros], axis=1)
        left = jnp.stack([zeros, jax.random.uniform(k2, (n_bc,), dt)], axis=1)
        right = jnp.stack([ones, jax.random.uniform(k3, (n_bc,), dt)], axis=1)
        ic_t = jnp.stack([jax.random.uniform(k4, (n_bc,), dt), zeros], axis=1)
        interior = jax.random.uniform(k5, (n_res, 2), dt)
        return {"u": jnp.concatenate([ic, left, right]), "u_t": ic_t, "res": interior}

    xs, ts = jnp.meshgrid(jnp.linspace(0.0, 1.0, 101), jnp.linspace(0.0, 1.0, 101), indexing="ij")
    grid = jnp.stack([xs.ravel(), ts.ravel()], axis=1)
    ref = wave_exact(grid[:, 0], grid[:, 1], c)

    def relative_l2(params):
        g = grid.astype(jax.tree.leaves(params)[0].dtype)
        pred = jax.vmap(lambda p: apply(params, p)[0])(g)
        return jnp.linalg.norm(pred - ref) / jnp.linalg.norm(ref)

    return Problem(
        name="wave1d",
        blocks=blocks,
        layers=layers,
        init_params=init,
        apply=apply,
        sample_batch=sample_batch,
        batch_sizes={"u": 3 * n_bc, "u_t": n_bc, "res": n_res},
        exact_solution=lambda x, t: wave_exact(x, t, c),
        relative_l2=relative_l2,
        learning_rate=learning_rate,
        info=problem_info({"c": c}, net_config, causal),
        network=network,
    )
