"""The 2D Landau-de Gennes (Q-tensor) gradient flow: the second experiment of Hirsch and Pichi.

Unknowns ``q = (q1, q2)`` of the traceless symmetric ``Q = [[q1, q2], [q2, -q1]]`` on
``(x, y) in (0, 2)^2``, ``t in (0, T)``:

    q_t = M (L lap q - a q - 2 c (q1^2 + q2^2) q),   q = 0 on the boundary,
    Q(0) = n0 n0^T - |n0|^2 / 2 I,   n0 = (x(2-x) y(2-y), sin(pi x) sin(pi y / 2)),

``a = -0.2, c = 1, L = 0.1, M = 1``. ``n0`` vanishes on the whole boundary, so the initial
and boundary data are compatible (no corner or edge mismatch to smooth). The reference is
the finite element solution of :mod:`pinn_adapters.fem` (P2, linearly implicit BDF2,
cached on disk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._blocks import ResidualBlocks
from ..fem._qtensor import PARAMETERS, initial_q
from ._mlp import mlp_apply, mlp_init
from ._problem import Problem

BLOCKS = ("bc", "ic", "res_q1", "res_q2")


def qtensor_blocks(
    field, *, a=PARAMETERS["a"], c=PARAMETERS["c"], L=PARAMETERS["L"], M=PARAMETERS["M"], reduction="mean"
):
    """Residual blocks of the Q-tensor PINN for any differentiable field.

    Parameters
    ----------
    field : callable
        ``field(params, p) -> (2,)``: ``(q1, q2)`` at one point ``p = (x, y, t)``.
    a, c, L, M : float
        Coefficients of ``q_t = M (L lap q - a q - 2 c |q|^2 q)``.
    reduction : {"mean", "sum"}

    Returns
    -------
    ResidualBlocks
        ``"res_q1"``, ``"res_q2"``: ``q_t - M (L lap q - a q - 2 c |q|^2 q)`` for each
        component at interior points ``(n, 3)``; ``"ic"``: ``q(x, y, 0) - q0(x, y)`` at
        points ``(n, 3)`` with ``t = 0`` (two rows per point, q1 then q2); ``"bc"``:
        ``q`` at boundary points (two rows per point).

    Notes
    -----
    The PDE residual is split into one block per component: the two equations are
    coupled only through the cubic term and the NTK weights can then balance them
    separately (the sketch prices this at nothing: one probe gives every block's
    trace). The initial and boundary blocks keep both components in one block each,
    as they enforce one condition on the tensor ``Q``.

    References
    ----------
    M. Hirsch, F. Pichi, arXiv:2511.15530 (2025).
    """
    a, c, L, M = float(a), float(c), float(L), float(M)

    jac = jax.jacfwd(field, argnums=1)
    hess = jax.jacfwd(jac, argnums=1)

    def pde(params, p):
        q = field(params, p)
        q_t = jac(params, p)[:, 2]
        H = hess(params, p)
        lap = H[:, 0, 0] + H[:, 1, 1]
        return q_t - M * (L * lap - a * q - 2.0 * c * jnp.sum(q * q) * q)

    def residual_pde(params, pts):
        return jax.vmap(pde, (None, 0))(params, pts)

    def res_q1(params, pts):
        return residual_pde(params, pts)[:, 0]

    def res_q2(params, pts):
        return residual_pde(params, pts)[:, 1]

    def ic(params, pts):
        q = jax.vmap(field, (None, 0))(params, pts)
        q1, q2 = initial_q(pts[:, 0], pts[:, 1])
        return q - jnp.stack([q1, q2], axis=1)

    def bc(params, pts):
        return jax.vmap(field, (None, 0))(params, pts)

    return ResidualBlocks({"res_q1": res_q1, "res_q2": res_q2, "ic": ic, "bc": bc}, reduction=reduction)


def _time_interp(times, t):
    """Snapshot index ``i`` and weight ``w`` for linear interpolation in time (NumPy)."""
    t = np.clip(np.asarray(t, dtype=float), times[0], times[-1])
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    w = (t - times[i]) / (times[i + 1] - times[i])
    return i, w


def qtensor2d(
    *,
    layers=(3, 64, 64, 64, 2),
    n_res=300,
    n_bc=100,
    T=1.0,
    reference="auto",
    cache_dir=None,
    grid=41,
    reduction="mean",
    learning_rate=1e-3,
    dtype=None,
    verbose=False,
):
    """The Q-tensor (Landau-de Gennes) gradient flow PINN with a finite element reference.

    ``q_t = M (L lap q - a q - 2 c (q1^2 + q2^2) q)`` on ``(0, 2)^2 x (0, T)``, ``q = 0`` on
    the boundary, ``Q0 = n0 n0^T - |n0|^2 / 2 I`` with ``n0 = (x(2-x) y(2-y),
    sin(pi x) sin(pi y/2))``; ``a = -0.2, c = 1, L = 0.1, M = 1``. The network maps
    ``(x, y, t)`` (rescaled to ``[-1, 1]^3`` inside :attr:`Problem.apply`) to ``(q1, q2)``.
    Blocks (see :func:`qtensor_blocks`), redrawn by ``sample_batch``:

    * ``"res_q1"``, ``"res_q2"``: PDE residuals at the same ``n_res`` uniform interior points;
    * ``"ic"``: ``q - q0`` at ``n_bc`` uniform points of the square at ``t = 0`` (``2 n_bc`` rows);
    * ``"bc"``: ``q`` at ``n_bc`` points on each of the four sides (``8 n_bc`` rows).

    Parameters
    ----------
    layers : tuple
        MLP widths; must start with 3 and end with 2.
    n_res, n_bc : int
        Points per batch.
    T : float
        Final time (default 1: the director field relaxes visibly and training stays
        a few minutes on a CPU).
    reference : "auto", FEMSolution or None
        ``"auto"`` loads (or computes once and caches) :func:`pinn_adapters.fem.reference`
        for this ``T``; ``None`` skips it (then ``relative_l2`` is unavailable).
    cache_dir : path, optional
        Cache folder of the reference (default :func:`pinn_adapters.fem.default_cache_dir`).
    grid : int
        The relative L2 errors are taken on a ``grid x grid`` spatial grid at the
        reference snapshots (every second one; 11 times by default).
    reduction, learning_rate, dtype : as for :func:`wave1d`.

    Returns
    -------
    Problem
        ``relative_l2(params)`` is the joint relative L2 error of ``(q1, q2)`` against
        the reference; ``info["metrics"](params)`` gives ``relative_l2_q1`` and
        ``relative_l2_q2`` separately; ``exact_solution(x, y, t)`` evaluates the
        reference (NumPy; linear in time between snapshots).

    References
    ----------
    M. Hirsch, F. Pichi, "Convergence and sketching-based efficient computation of
    neural tangent kernel weights in physics-based loss", arXiv:2511.15530 (2025).
    S. Wang, X. Yu, P. Perdikaris, J. Comput. Phys. 449 (2022). doi:10.1016/j.jcp.2021.110768
    """
    layers, T = _check_arguments(layers, n_res, n_bc, grid, T)

    def apply(params, p):
        z = jnp.stack([p[0] - 1.0, p[1] - 1.0, 2.0 * p[2] / T - 1.0])
        return mlp_apply(params, z.astype(jax.tree.leaves(params)[0].dtype))

    info = {"T": T, "coefficients": dict(PARAMETERS), "blocks": "res_q1, res_q2 (PDE per component), ic, bc"}
    relative_l2 = exact_solution = None
    if isinstance(reference, str):
        if reference != "auto":
            raise ValueError(f"reference must be 'auto', a FEMSolution or None; got {reference!r}")
        from ..fem import reference as fem_reference

        reference = fem_reference(T=T, cache_dir=cache_dir, verbose=verbose)
    if reference is not None:
        relative_l2, exact_solution, extra = _reference_errors(reference, apply, grid, T)
        info.update(extra)
    return Problem(
        name="qtensor2d",
        blocks=qtensor_blocks(apply, reduction=reduction),
        layers=layers,
        init_params=lambda key: mlp_init(key, layers, dtype),
        apply=apply,
        sample_batch=_batch_sampler(n_res, n_bc, T, dtype),
        batch_sizes={"res_q1": n_res, "res_q2": n_res, "ic": 2 * n_bc, "bc": 8 * n_bc},
        exact_solution=exact_solution,
        relative_l2=relative_l2,
        learning_rate=learning_rate,
        info=info,
    )


def _check_arguments(layers, n_res, n_bc, grid, T):
    layers = tuple(int(w) for w in layers)
    if len(layers) < 2 or layers[0] != 3 or layers[-1] != 2:
        raise ValueError(f"layers must start with width 3 (x, y, t) and end with width 2 (q1, q2); got {layers}")
    for name, v in (("n_res", n_res), ("n_bc", n_bc), ("grid", grid)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (2 if name == "grid" else 1):
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    T = float(T)
    if not np.isfinite(T) or T <= 0:
        raise ValueError(f"T must be a positive finite number; got {T!r}")
    return layers, T


def _batch_sampler(n_res, n_bc, T, dtype):
    """``sample_batch(key)``: interior points (shared by both PDE blocks), initial and boundary points."""

    def sample_batch(key):
        dt = dtype or jnp.result_type(float)
        k_res, k_ic, k_bc, k_side = jax.random.split(key, 4)
        u = jax.random.uniform(k_res, (n_res, 3), dt)
        interior = u * jnp.asarray([2.0, 2.0, T], dt)
        ic_xy = 2.0 * jax.random.uniform(k_ic, (n_bc, 2), dt)
        ic = jnp.concatenate([ic_xy, jnp.zeros((n_bc, 1), dt)], axis=1)
        s = 2.0 * jax.random.uniform(k_bc, (4, n_bc), dt)
        tt = T * jax.random.uniform(k_side, (4, n_bc), dt)
        zero, two = jnp.zeros((n_bc,), dt), jnp.full((n_bc,), 2.0, dt)
        sides = [
            jnp.stack([zero, s[0], tt[0]], axis=1),
            jnp.stack([two, s[1], tt[1]], axis=1),
            jnp.stack([s[2], zero, tt[2]], axis=1),
            jnp.stack([s[3], two, tt[3]], axis=1),
        ]
        return {"res_q1": interior, "res_q2": interior, "ic": ic, "bc": jnp.concatenate(sides)}

    return sample_batch


def _reference_grid(reference, grid):
    """Points ``(x, y, t)`` of the error grid (every second snapshot and the last) and the reference there."""
    xs, vals = reference.on_grid(grid)
    keep = np.arange(0, len(reference.times), 2 if len(reference.times) > 3 else 1)
    if keep[-1] != len(reference.times) - 1:
        keep = np.append(keep, len(reference.times) - 1)
    ts = reference.times[keep]
    X, Y, Tt = np.meshgrid(xs, xs, ts, indexing="ij")  # (g, g, S)
    pts_np = np.stack([X.ravel(), Y.ravel(), Tt.ravel()], axis=1)
    ref_np = np.transpose(vals[keep], (2, 3, 0, 1)).reshape(-1, 2)  # same (x, y, t) order
    return jnp.asarray(pts_np), jnp.asarray(ref_np), ts


def _reference_errors(reference, apply, grid, T):
    """``relative_l2(params)``, ``exact_solution(x, y, t)`` and the ``info`` entries of a FEM reference."""
    if abs(float(reference.times[-1]) - T) > 1e-12 * max(1.0, T):
        raise ValueError(f"reference ends at t = {reference.times[-1]}, but T = {T}")
    pts_ref, ref_vals, ts = _reference_grid(reference, grid)
    norms = jnp.linalg.norm(ref_vals, axis=0)
    total = jnp.linalg.norm(ref_vals)

    def _err(params):
        dt_ = jax.tree.leaves(params)[0].dtype
        return jax.vmap(lambda p: apply(params, p))(pts_ref.astype(dt_)) - ref_vals.astype(dt_)

    def relative_l2(params):
        return jnp.linalg.norm(_err(params)) / total

    component_jit = jax.jit(lambda params: jnp.linalg.norm(_err(params), axis=0) / norms)

    def metrics(params):
        e = np.asarray(component_jit(params))
        return {"relative_l2_q1": float(e[0]), "relative_l2_q2": float(e[1])}

    def exact_solution(x, y, t):
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        t = np.broadcast_to(np.asarray(t, float), x.shape)
        pts = np.stack([x.ravel(), y.ravel()], axis=1)
        i, w = _time_interp(reference.times, t.ravel())
        out = np.empty((2, pts.shape[0]))
        for s in np.unique(i):
            m = i == s
            lo, hi = reference.probe(pts[m], int(s)), reference.probe(pts[m], int(s) + 1)
            out[:, m] = (1 - w[m]) * lo + w[m] * hi
        return out[0].reshape(x.shape), out[1].reshape(x.shape)

    extra = {
        "metrics": metrics,
        "reference": {**reference.config, **{k: v for k, v in reference.meta.items() if k != "cache_file"}},
        "grid": {"num": int(grid), "times": ts.tolist()},
        "fem": reference,
    }
    return relative_l2, exact_solution, extra


def director(q1, q2):
    """Director angle ``theta`` (``n = (cos theta, sin theta)``) and order ``S = 2 |q|`` of ``Q``.

    ``Q = S (n n^T - I / 2)`` has eigenvalues ``+-|q|``; the eigenvector of the positive
    one makes the angle ``theta = atan2(q2, q1) / 2``.
    """
    q1, q2 = np.asarray(q1), np.asarray(q2)
    return 0.5 * np.arctan2(q2, q1), 2.0 * np.hypot(q1, q2)


def director_figures(out, prob, params, times=None, num=21):
    """``director.png`` (PINN vs FEM director fields) and ``error.png`` (|q - q_FEM|).

    Background: order parameter ``S = 2 |q|``; lines: the director, at ``t = 0, T/2, T``.
    """
    from .._mpl import pyplot

    plt = pyplot()
    T = prob.info["T"]
    times = (0.0, T / 2, T) if times is None else tuple(times)
    xs = np.linspace(0.0, 2.0, num)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    dt = jax.tree.leaves(params)[0].dtype
    fields = []
    for t in times:
        pts = jnp.asarray(np.stack([X.ravel(), Y.ravel(), np.full(X.size, t)], axis=1), dtype=dt)
        pred = np.asarray(jax.vmap(lambda p: prob.apply(params, p))(pts)).T.reshape(2, num, num)
        ref = np.stack(prob.exact_solution(X, Y, np.full_like(X, t)))
        fields.append((pred, ref))
    smax = max(float(director(*r)[1].max()) for _, r in fields)
    fig, axes = plt.subplots(2, len(times), figsize=(4.2 * len(times), 8), constrained_layout=True)
    axes = np.atleast_2d(axes)
    for j, (t, (pred, ref)) in enumerate(zip(times, fields)):
        for i, (field, name) in enumerate(((pred, "PINN"), (ref, "FEM"))):
            th, S = director(*field)
            ax = axes[i, j]
            im = ax.pcolormesh(X, Y, S, cmap="viridis", vmin=0, vmax=smax, shading="gouraud")
            ax.quiver(
                X,
                Y,
                np.cos(th),
                np.sin(th),
                headwidth=0,
                headlength=0,
                headaxislength=0,
                pivot="middle",
                scale=num * 1.1,
                color="w",
                width=0.004,
            )
            ax.set_aspect("equal"), ax.set_title(f"{name}, t = {t:g}")
            ax.set_xlabel("x"), ax.set_ylabel("y")
    fig.colorbar(im, ax=axes, shrink=0.8, label="order S = 2|q|")
    fig.savefig(out / "director.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(times), figsize=(4.2 * len(times), 3.8), constrained_layout=True)
    axes = np.atleast_1d(axes)
    for ax, t, (pred, ref) in zip(axes, times, fields):
        err = np.sqrt(np.sum((pred - ref) ** 2, axis=0))
        im = ax.pcolormesh(X, Y, err, cmap="magma", shading="gouraud")
        ax.set_aspect("equal"), ax.set_title(f"|q - q_FEM|, t = {t:g}")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(out / "error.png", dpi=100)
    plt.close(fig)


def from_config(cfg):
    """Build :func:`qtensor2d` from the main job's configuration (``sketchtrace pinn qtensor``)."""
    layers = (3,) + (cfg.width,) * cfg.depth + (2,)
    return qtensor2d(layers=layers, n_res=cfg.n_res, n_bc=cfg.n_bc, learning_rate=cfg.learning_rate, verbose=True)


def write_figures(out, prob, params, hist, label):
    """Solution figures for the main job: ``director.png`` and ``error.png``."""
    director_figures(out, prob, params)


__all__ = ["qtensor2d", "qtensor_blocks", "director", "director_figures"]
