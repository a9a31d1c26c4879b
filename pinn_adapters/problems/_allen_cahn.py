"""The Allen-Cahn equation in jaxpi's setting, with a cached Fourier ETDRK4 reference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sketchtrace.validation import check_choice, check_int, check_real

from .. import nets
from .._blocks import ResidualBlocks
from ._problem import Problem, causal_residual, problem_info, resolve_network
from ._references import SpectralSolution, allen_cahn_reference

DEFAULT_LAYERS = (2, 64, 64, 64, 1)


def _periodic_in_x(config) -> bool:
    fourier = (config or {}).get("fourier") or {}
    return "0" in (fourier.get("periodic") or {}) or 0 in (fourier.get("periodic") or {})


def _reference(reference, eps, gamma):
    if isinstance(reference, SpectralSolution):
        sol = reference
    elif reference is None or isinstance(reference, dict):
        sol = allen_cahn_reference(eps=eps, gamma=gamma, **(reference or {}))
    else:
        raise TypeError(
            f"reference must be None, a dict of allen_cahn_reference options or a SpectralSolution; "
            f"got {type(reference).__name__}"
        )
    if abs(sol.meta.get("eps", eps) - eps) > 1e-15 or abs(sol.meta.get("gamma", gamma) - gamma) > 1e-15:
        raise ValueError(f"reference was solved with eps={sol.meta.get('eps')}, gamma={sol.meta.get('gamma')}; "
                         f"the problem has eps={eps}, gamma={gamma}")  # fmt: skip
    if float(sol.t[0]) != 0.0 or abs(float(sol.t[-1]) - 1.0) > 1e-12:
        raise ValueError(f"reference must cover t in [0, 1]; got [{sol.t[0]}, {sol.t[-1]}]")
    return sol


def _on_grid(sol, xs, ts):
    """The reference on the ``(256, 101)`` error grid: a subsample of the snapshots when it is one."""
    n, m = sol.u.shape[1], len(sol.t) - 1
    if n % xs.shape[0] == 0 and m % (ts.shape[1] - 1) == 0:
        return sol.u[:: m // (ts.shape[1] - 1), :: n // xs.shape[0]].T
    return sol(xs, ts)


def _blocks(apply, eps, gamma, with_bc, causal, reduction):
    """The residual blocks ``"ic"``, ``"res"`` (causal if asked) and, with ``with_bc``, ``"bc"``."""

    def u(params, x, t):
        return apply(params, jnp.stack([x, t]))[0]

    u_x = jax.grad(u, argnums=1)
    u_t = jax.grad(u, argnums=2)
    u_xx = jax.grad(u_x, argnums=1)

    def point_residual(params, x, t):
        v = u(params, x, t)
        return u_t(params, x, t) - eps * u_xx(params, x, t) + gamma * (v**3 - v)

    def res(params, pts):
        return jax.vmap(point_residual, (None, 0, 0))(params, pts[:, 0], pts[:, 1])

    def ic(params, pts):
        x = pts[:, 0]
        return jax.vmap(u, (None, 0, 0))(params, x, pts[:, 1]) - x**2 * jnp.cos(math.pi * x)

    def bc(params, pts):  # pts: times; rows (u(-1) - u(1), u_x(-1) - u_x(1)) per point
        t = pts[:, 1]
        lo, hi = -jnp.ones_like(t), jnp.ones_like(t)
        du = jax.vmap(u, (None, 0, 0))(params, lo, t) - jax.vmap(u, (None, 0, 0))(params, hi, t)
        dux = jax.vmap(u_x, (None, 0, 0))(params, lo, t) - jax.vmap(u_x, (None, 0, 0))(params, hi, t)
        return jnp.stack([du, dux], axis=1)

    res_block, causal = causal_residual(res, causal, time=1, t_range=(0.0, 1.0))
    fns = {"ic": ic, "res": res_block, **({"bc": bc} if with_bc else {})}
    return ResidualBlocks(fns, reduction=reduction), causal


def allen_cahn(
    *,
    layers=None,
    network=None,
    causal=None,
    n_res=512,
    n_bc=128,
    eps=1e-4,
    gamma=5.0,
    periodic_bc="auto",
    reference=None,
    reduction="mean",
    learning_rate=1e-3,
    dtype=None,
):
    """``u_t - eps u_xx + gamma (u^3 - u) = 0`` (``eps = 1e-4``, ``gamma = 5``) on ``[-1, 1)`` periodic, ``t in [0, 1]``.

    jaxpi's Allen-Cahn setting: ``u(x, 0) = x^2 cos(pi x)``, periodic in ``x``. Network
    input is ``(x, t)``. Blocks (each batch redrawn by ``sample_batch``):

    * ``"ic"``: ``u(x, 0) - x^2 cos(pi x)`` at ``n_bc`` uniform ``x``;
    * ``"res"``: ``u_t - eps u_xx + gamma (u^3 - u)`` at ``n_res`` uniform interior points;
    * ``"bc"`` (only with ``periodic_bc``): ``u(-1, t) - u(1, t)`` and
      ``u_x(-1, t) - u_x(1, t)`` at ``n_bc`` uniform ``t`` (two rows per point).

    The default network is ``nets.mlp(layers, fourier={"periodic": {0: 2.0}})`` with
    ``layers = (2, 64, 64, 64, 1)``: the embedding ``x -> (cos(pi x), sin(pi x))`` makes
    every network exactly 2-periodic in ``x`` (jaxpi's choice), so no boundary block is
    needed. ``periodic_bc="auto"`` adds the ``"bc"`` block exactly when the network has
    no periodic embedding of ``x`` (``True``/``False`` force it). ``network`` replaces the
    default; ``causal`` (``None`` or ``{"eps": 1.0, "num_chunks": 32}``) weights the
    ``"res"`` rows causally in ``t``.

    The reference (:func:`allen_cahn_reference`: Fourier ETDRK4, 2048 points,
    ``dt = 5e-4``, relative error about ``6e-7``) is solved on first use (a few seconds)
    and cached on disk; ``reference`` passes its options (e.g. ``{"n": 256, "dt": 1e-3,
    "cache_dir": ...}``) or a :class:`SpectralSolution`. ``relative_l2`` compares on the
    ``256 x 101`` grid ``x = -1 + 2 j / 256``, ``t = linspace(0, 1, 101)``.

    References
    ----------
    S. Wang, S. Sankaran, H. Wang, P. Perdikaris, "An expert's guide to training
    physics-informed neural networks", arXiv:2308.08468 (2023) (jaxpi). A.-K. Kassam,
    L. N. Trefethen, SIAM J. Sci. Comput. 26 (2005) 1214-1233.
    """
    n_res, n_bc = check_int(n_res, name="n_res", minimum=1), check_int(n_bc, name="n_bc", minimum=1)
    eps, gamma = check_real(eps, name="eps", low=0.0), check_real(gamma, name="gamma")
    if not isinstance(periodic_bc, bool):
        check_choice(periodic_bc, ("auto",), name="periodic_bc")
    if network is None:
        network = nets.mlp(DEFAULT_LAYERS if layers is None else layers, fourier={"periodic": {0: 2.0}}, dtype=dtype)
        layers = None
    init, apply, layers, net_config = resolve_network(
        network, layers, d_in=2, d_out=1, problem="allen_cahn", default_layers=DEFAULT_LAYERS, dtype=dtype
    )
    with_bc = not _periodic_in_x(net_config) if periodic_bc == "auto" else periodic_bc
    sol = _reference(reference, eps, gamma)

    blocks, causal = _blocks(apply, eps, gamma, with_bc, causal, reduction)

    def sample_batch(key):
        dt = dtype or jnp.result_type(float)
        k1, k2, k3 = jax.random.split(key, 3)
        ic_pts = jnp.stack([jax.random.uniform(k1, (n_bc,), dt, -1.0, 1.0), jnp.zeros((n_bc,), dt)], axis=1)
        lo, hi = jnp.asarray([-1.0, 0.0], dt), jnp.asarray([1.0, 1.0], dt)
        batch = {"ic": ic_pts, "res": jax.random.uniform(k2, (n_res, 2), dt, lo, hi)}
        if with_bc:
            batch["bc"] = jnp.stack([-jnp.ones((n_bc,), dt), jax.random.uniform(k3, (n_bc,), dt)], axis=1)
        return batch

    xs, ts = np.meshgrid(-1.0 + 2.0 * np.arange(256) / 256, np.linspace(0.0, 1.0, 101), indexing="ij")
    grid = jnp.asarray(np.stack([xs.ravel(), ts.ravel()], axis=1))
    ref = jnp.asarray(_on_grid(sol, xs, ts).ravel())

    def relative_l2(params):
        dt = jax.tree.leaves(params)[0].dtype
        pred = jax.vmap(lambda p: apply(params, p)[0])(grid.astype(dt))
        r = ref.astype(pred.dtype)
        return jnp.linalg.norm(pred - r) / jnp.linalg.norm(r)

    ref_info = {k: sol.meta[k] for k in ("n", "dt") if k in sol.meta}
    info = {"eps": eps, "gamma": gamma, "periodic_bc": bool(with_bc), "reference": ref_info}
    return Problem(
        name="allen_cahn",
        blocks=blocks,
        layers=layers,
        init_params=init,
        apply=apply,
        sample_batch=sample_batch,
        batch_sizes={"ic": n_bc, "res": n_res, **({"bc": n_bc} if with_bc else {})},
        exact_solution=sol,
        relative_l2=relative_l2,
        learning_rate=learning_rate,
        info=problem_info(info, net_config, causal),
        network=network,
    )
