"""One-dimensional Poisson problem of Wang, Yu and Perdikaris (2022)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sketchtrace.validation import check_int

from .._blocks import ResidualBlocks
from ._problem import Problem, problem_info, resolve_network


def poisson1d(*, a=4.0, layers=None, network=None, n_res=128, n_bc=1, reduction="mean", learning_rate=1e-3, dtype=None):
    """``u_xx = f`` on ``(0, 1)`` with ``u(0) = u(1) = 0`` and exact ``u = sin(a pi x)``.

    ``f(x) = -(a pi)^2 sin(a pi x)``. Blocks: ``"bc"`` (``u`` at ``x = 0`` and
    ``x = 1``, ``n_bc`` copies of each end point) and ``"res"`` (``u_xx - f`` at
    ``n_res`` uniform random points, redrawn by ``sample_batch``). Wang et al. use
    ``a = 4`` to show the imbalance of the two NTK blocks. ``layers`` (default
    ``(1, 32, 32, 1)``) sets the plain tanh MLP; ``network`` (a
    :class:`pinn_adapters.nets.Network` from ``(x,)`` to ``(u,)``) replaces it.

    References
    ----------
    S. Wang, X. Yu, P. Perdikaris, "When and why PINNs fail to train: a neural tangent
    kernel perspective", J. Comput. Phys. 449 (2022). doi:10.1016/j.jcp.2021.110768
    """
    n_res, n_bc = check_int(n_res, name="n_res", minimum=1), check_int(n_bc, name="n_bc", minimum=1)
    init, apply, layers, net_config = resolve_network(
        network, layers, d_in=1, d_out=1, problem="poisson1d", default_layers=(1, 32, 32, 1), dtype=dtype
    )
    k = a * math.pi

    def exact(x):
        return jnp.sin(k * jnp.asarray(x))

    def u(params, x):  # scalar x
        return apply(params, jnp.reshape(x, (1,)))[0]

    def res(params, pts):
        uxx = jax.vmap(jax.grad(jax.grad(u, argnums=1), argnums=1), (None, 0))(params, pts[:, 0])
        return uxx + k**2 * jnp.sin(k * pts[:, 0])

    def bc(params, pts):
        return jax.vmap(u, (None, 0))(params, pts[:, 0]) - exact(pts[:, 0])

    blocks = ResidualBlocks({"res": res, "bc": bc}, reduction=reduction)
    ends = None

    def sample_batch(key):
        dt = dtype or jnp.result_type(float)
        x = jax.random.uniform(key, (n_res, 1), dt)
        e = jnp.repeat(jnp.asarray([[0.0], [1.0]], dt), n_bc, axis=0)
        return {"res": x, "bc": e}

    grid = jnp.linspace(0.0, 1.0, 1001)[:, None]

    def relative_l2(params):
        pred = jax.vmap(lambda x: apply(params, x)[0])(grid.astype(jax.tree.leaves(params)[0].dtype))
        ref = exact(grid[:, 0])
        return jnp.linalg.norm(pred - ref) / jnp.linalg.norm(ref)

    del ends
    return Problem(
        name="poisson1d",
        blocks=blocks,
        layers=layers,
        init_params=init,
        apply=apply,
        sample_batch=sample_batch,
        batch_sizes={"res": n_res, "bc": 2 * n_bc},
        exact_solution=exact,
        relative_l2=relative_l2,
        learning_rate=learning_rate,
        info=problem_info({"a": a}, net_config, None),
        network=network,
    )
