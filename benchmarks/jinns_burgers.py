"""jinns' Burgers example with NTK loss weights refreshed inside one compiled training run.

Run: ``python benchmarks/jinns_burgers.py [--quick]``. The setting of issue 19: network
2-16-16-16-1 (tanh), 900 interior, 2000 boundary and 2000 initial points, Adam (1e-3),
3000 iterations, viscosity 0.01/pi, ``u(0, x) = -sin(pi x)`` on ``[-1, 1]``, zero Dirichlet
boundary. Side by side in one run, float32:

1. ``jinns.solve`` unweighted (jinns' own loop), :func:`pinn_adapters.adapters.jinns_train`
   unweighted (``every=None``) and with exact NTK weights every 250 iterations: compile and
   run seconds, and the weighted run's wall time over the unweighted one
   (target <= 1.3x).
2. The cost of one exact weight refresh in training steps.
3. Relative L2 errors of each trained network against the Cole-Hopf solution.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

NU = 0.01 / np.pi


def cole_hopf(t, x, nu=NU, nodes=200):
    """Burgers' solution for ``u(0, x) = -sin(pi x)`` by the Cole-Hopf transform (Gauss-Hermite)."""
    z, w = np.polynomial.hermite.hermgauss(nodes)
    t, x = np.broadcast_arrays(np.asarray(t, float), np.asarray(x, float))
    y = x[..., None] - 2.0 * np.sqrt(nu * np.maximum(t, 1e-300))[..., None] * z
    logf = -np.cos(np.pi * y) / (2 * np.pi * nu)
    f = w * np.exp(logf - logf.max(axis=-1, keepdims=True))
    u = -np.sum(np.sin(np.pi * y) * f, axis=-1) / np.sum(f, axis=-1)
    return np.where(t > 0, u, -np.sin(np.pi * x))


def setup(n, nb, ni, seed=0):
    import jinns
    from jinns.loss import (
        BurgersEquation,
        Dirichlet,
        LossPDENonStatio,
        LossWeightsPDENonStatio,
    )
    from jinns.parameters import Params

    k1, k2 = jax.random.split(jax.random.key(seed))
    eqx_list = (
        (eqx.nn.Linear, 2, 16),
        (jax.nn.tanh,),
        (eqx.nn.Linear, 16, 16),
        (jax.nn.tanh,),
        (eqx.nn.Linear, 16, 16),
        (jax.nn.tanh,),
        (eqx.nn.Linear, 16, 1),
    )
    u, nn_params = jinns.nn.PINN_MLP.create(key=k1, eqx_list=eqx_list, eq_type="PDENonStatio")
    data = jinns.data.CubicMeshPDENonStatio(
        key=k2, n=n, nb=nb, ni=ni, dim=1, min_pts=(-1.0,), max_pts=(1.0,), tmin=0.0, tmax=1.0, method="uniform"
    )
    params = Params(nn_params=nn_params, eq_params={"nu": jnp.asarray(NU, jnp.float32)})
    loss = LossPDENonStatio(
        u=u,
        dynamic_loss=BurgersEquation(),
        boundary_condition=Dirichlet(),
        initial_condition_fun=lambda x: -jnp.sin(jnp.pi * x),
        loss_weights=LossWeightsPDENonStatio(dyn_loss=1.0, initial_condition=1.0, boundary_loss=1.0),
        params=params,
    )
    return u, params, data, loss


def rel_l2(u, params, nt=21, nx=201):
    t, x = np.meshgrid(np.linspace(0.0, 1.0, nt), np.linspace(-1.0, 1.0, nx), indexing="ij")
    tx = jnp.asarray(np.stack([t.ravel(), x.ravel()], axis=1), jnp.float32)
    pred = np.asarray(jax.vmap(lambda p: u(p, params))(tx))[:, 0]
    ref = cole_hopf(t.ravel(), x.ravel())
    return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))


def refresh_cost(loss, params, data, repeats):
    """Median seconds of one compiled exact weight refresh (jinns_ntk_weights)."""
    from pinn_adapters import adapters

    batch = data.get_batch()[1]
    call = lambda: jax.block_until_ready(adapters.jinns_ntk_weights(None, loss, params, batch)[1])
    call()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    import jinns

    from pinn_adapters import adapters

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args(argv)
    n, nb, ni, n_iter, every = (90, 200, 200, 200, 50) if args.quick else (900, 2000, 2000, 3000, 250)
    u, params, data, loss = setup(n, nb, ni)
    opt = optax.adam(1e-3)
    rows = []
    t0 = time.perf_counter()
    out = jinns.solve(n_iter=n_iter, init_params=params, data=data, loss=loss, optimizer=opt, verbose=False)
    jax.block_until_ready(out[0])
    rows.append(("jinns.solve, unweighted", {"total": time.perf_counter() - t0}, rel_l2(u, out[0])))
    for label, ev in (("jinns_train, unweighted", None), (f"jinns_train, exact NTK every {every}", every)):
        res = adapters.jinns_train(None, loss, params, data, opt, n_iter=n_iter, every=ev)
        rows.append((label, dict(res.seconds, total=sum(res.seconds.values())), rel_l2(u, res.params)))
    print(f"\n## jinns Burgers, {n} + {nb} + {ni} points, {n_iter} Adam iterations\n")
    print("| run | compile s | run s | total s | relative L2 vs Cole-Hopf |")
    print("|---|---|---|---|---|")
    for label, s, err in rows:
        print(
            f"| {label} | {s.get('compile', float('nan')):.1f} | {s.get('run', float('nan')):.1f} | "
            f"{s['total']:.1f} | {err:.3f} |"
        )
    (_, plain, _), (_, weighted, _) = rows[1], rows[2]
    step = plain["run"] / n_iter
    t_refresh = refresh_cost(loss, params, data, repeats=5)
    print(
        f"\nweighted / unweighted (jinns_train): run {weighted['run'] / plain['run']:.2f}x, "
        f"total {weighted['total'] / plain['total']:.2f}x; weighted total / jinns.solve total "
        f"{weighted['total'] / rows[0][1]['total']:.2f}x"
    )
    print(
        f"one exact refresh: {1e3 * t_refresh:.1f} ms = {t_refresh / step:.1f} training steps "
        f"({1e3 * step:.2f} ms each); {n_iter // every} refreshes"
    )


if __name__ == "__main__":
    main()
