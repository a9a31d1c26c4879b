"""Viscous Burgers equation with a shock (Raissi et al.'s and jaxpi's benchmark), Cole-Hopf reference."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sketchtrace.validation import check_int, check_real

from .._blocks import ResidualBlocks
from ._problem import Problem, causal_residual, problem_info, resolve_network
from ._references import burgers_reference


@functools.lru_cache(maxsize=8)
def _error_grid(nu):
    """The ``256 x 101`` error grid (points, reference values), computed once per ``nu``."""
    xs, ts = np.meshgrid(np.linspace(-1.0, 1.0, 256), np.linspace(0.0, 1.0, 101), indexing="ij")
    grid = np.stack([xs.ravel(), ts.ravel()], axis=1)
    ref = burgers_reference(grid[:, 0], grid[:, 1], nu=nu)
    grid.setflags(write=False)
    ref.setflags(write=False)
    return grid, ref


def burgers(
    *,
    layers=None,
    network=None,
    causal=None,
    n_res=512,
    n_bc=128,
    nu=0.01 / math.pi,
    reduction="mean",
    learning_rate=1e-3,
    dtype=None,
):
    """``u_t + u u_x = nu u_xx`` on ``x in [-1, 1], t in [0, 1]`` (``nu = 0.01/pi``), with a shock at ``x = 0``.

    ``u(x, 0) = -sin(pi x)``, ``u(-1, t) = u(1, t) = 0``. Network input is ``(x, t)``.
    Blocks (each batch redrawn by ``sample_batch``):

    * ``"ic"``: ``u(x, 0) + sin(pi x)`` at ``n_bc`` uniform ``x``;
    * ``"bc"``: ``u`` at ``n_bc`` uniform ``t`` on each of ``x = -1`` and ``x = 1``
      (``2 n_bc`` points);
    * ``"res"``: ``u_t + u u_x - nu u_xx`` at ``n_res`` uniform interior points.

    ``relative_l2`` compares with the Cole-Hopf reference (:func:`burgers_reference`,
    exact to about ``1e-15``) on the ``256 x 101`` grid of ``x = linspace(-1, 1, 256)``
    and ``t = linspace(0, 1, 101)``; ``exact_solution(x, t)`` evaluates the reference
    anywhere (NumPy). ``layers`` (default ``(2, 64, 64, 64, 1)``) sets the plain tanh
    MLP; ``network`` (a :class:`pinn_adapters.nets.Network` from ``(x, t)`` to ``u``)
    replaces it. ``causal`` (``None`` or ``{"eps": 1.0, "num_chunks": 32}``) weights the
    ``"res"`` rows causally in ``t`` (:class:`pinn_adapters.causal.CausalBlock`).

    References
    ----------
    M. Raissi, P. Perdikaris, G. E. Karniadakis, "Physics-informed neural networks",
    J. Comput. Phys. 378 (2019) 686-707. C. Basdevant et al., "Spectral and finite
    difference solutions of the Burgers equation", Computers & Fluids 14 (1986) 23-41.
    """
    n_res, n_bc = check_int(n_res, name="n_res", minimum=1), check_int(n_bc, name="n_bc", minimum=1)
    nu = check_real(nu, name="nu", low=0.0, low_open=True)
    init, apply, layers, net_config = resolve_network(
        network, layers, d_in=2, d_out=1, problem="burgers", default_layers=(2, 64, 64, 64, 1), dtype=dtype
    )

    def u(params, x, t):
        return apply(params, jnp.stack([x, t]))[0]

    u_x = jax.grad(u, argnums=1)
    u_t = jax.grad(u, argnums=2)
    u_xx = jax.grad(u_x, argnums=1)

    def point_residual(params, x, t):
        return u_t(params, x, t) + u(params, x, t) * u_x(params, x, t) - nu * u_xx(params, x, t)

    def res(params, pts):
        return jax.vmap(point_residual, (None, 0, 0))(params, pts[:, 0], pts[:, 1])

    def ic(params, pts):
        x = pts[:, 0]
        return jax.vmap(u, (None, 0, 0))(params, x, pts[:, 1]) + jnp.sin(math.pi * x)

    def bc(params, pts):
        return jax.vmap(u, (None, 0, 0))(params, pts[:, 0], pts[:, 1])

    res_block, causal = causal_residual(res, causal, time=1, t_range=(0.0, 1.0))
    blocks = ResidualBlocks({"ic": ic, "bc": bc, "res": res_block}, reduction=reduction)

    def sample_batch(key):
        dt = dtype or jnp.result_type(float)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        zeros, ones = jnp.zeros((n_bc,), dt), jnp.ones((n_bc,), dt)
        ic_pts = jnp.stack([jax.random.uniform(k1, (n_bc,), dt, -1.0, 1.0), zeros], axis=1)
        left = jnp.stack([-ones, jax.random.uniform(k2, (n_bc,), dt)], axis=1)
        right = jnp.stack([ones, jax.random.uniform(k3, (n_bc,), dt)], axis=1)
        lo, hi = jnp.asarray([-1.0, 0.0], dt), jnp.asarray([1.0, 1.0], dt)
        interior = jax.random.uniform(k4, (n_res, 2), dt, lo, hi)
        return {"ic": ic_pts, "bc": jnp.concatenate([left, right]), "res": interior}

    grid_np, ref_np = _error_grid(nu)
    grid, ref = jnp.asarray(grid_np), jnp.asarray(ref_np)

    def relative_l2(params):
        dt = jax.tree.leaves(params)[0].dtype
        pred = jax.vmap(lambda p: apply(params, p)[0])(grid.astype(dt))
        r = ref.astype(pred.dtype)
        return jnp.linalg.norm(pred - r) / jnp.linalg.norm(r)

    return Problem(
        name="burgers",
        blocks=blocks,
        layers=layers,
        init_params=init,
        apply=apply,
        sample_batch=sample_batch,
        batch_sizes={"ic": n_bc, "bc": 2 * n_bc, "res": n_res},
        exact_solution=lambda x, t: burgers_reference(x, t, nu=nu),
        relative_l2=relative_l2,
        learning_rate=learning_rate,
        info=problem_info({"nu": nu}, net_config, causal),
        network=network,
    )
