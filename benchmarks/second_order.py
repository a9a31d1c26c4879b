"""Second-order PINN training: Nystrom-preconditioned CG on Gauss-Newton systems, memory, LM vs Adam.

``python benchmarks/second_order.py [--quick]`` writes ``benchmarks/results/second_order.md``;
``benchmarks/report.py`` includes the same section. Three measurements on the wave problem
(``pinn_adapters.problems.wave1d``, a ~1000-parameter tanh MLP, a fixed collocation batch):

1. CG iterations to the same tolerance with and without the Nystrom preconditioner (NumPy backend
   on the formed matrices: the same counts as matrix-free) on the Gauss-Newton systems ``(J^T J + mu I)`` (parameter space) and ``(J J^T + mu I)`` (sample space)
   at initialisation, ``mu`` relative to the largest eigenvalue;
2. memory of the matrix-free sample-space step against ``n`` and ``p`` (the arrays it holds: the
   linearisation, the Nystrom factor, CG vectors) beside the ``n x p`` Jacobian a dense step forms;
3. relative L2 error against wall time: Levenberg-Marquardt (``--lm-arms``: matrix-free, dense, dense with
   exact NTK weights) beside Adam, same start.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

import pinn_adapters as pa
import sketchtrace as st
from pinn_adapters import second_order as so

jax.config.update("jax_enable_x64", True)


def _system(layers, n_res, n_bc, seed=0):
    prob = pa.problems.wave1d(layers=layers, n_res=n_res, n_bc=n_bc)
    params = prob.init_params(jax.random.key(seed))
    batch = prob.sample_batch(jax.random.key(seed + 1))
    flat, unravel = ravel_pytree(params)
    f = so.scaled_residual_fn(prob.blocks, batch, None)
    J = st.JacobianOperator(lambda v: f(unravel(v)), flat)
    return prob, params, batch, J, J.value


def cg_table(quick):
    """CG counts on the Gauss-Newton matrices, formed once densely (``jax.jacfwd``) and solved on the NumPy
    backend: the same operator as the matrix-free path (same counts in exact arithmetic), without
    compiling a solve per system (minutes on a loaded 2-core machine)."""
    layers = (2, 10, 10, 1) if quick else (2, 20, 20, 20, 1)
    prob = pa.problems.wave1d(layers=layers, n_res=100 if quick else 300, n_bc=30 if quick else 100)
    params = prob.init_params(jax.random.key(0))
    batch = prob.sample_batch(jax.random.key(1))
    flat, unravel = ravel_pytree(params)
    f = so.scaled_residual_fn(prob.blocks, batch, None)
    Jd = np.asarray(jax.jit(jax.jacfwd(lambda v: f(unravel(v))))(flat))
    r = np.asarray(f(params))
    n, p = Jd.shape
    rtol, rank = 1e-6, 50 if quick else 100
    rows = []
    for space in ("samples", "params"):
        G = Jd @ Jd.T if space == "samples" else Jd.T @ Jd
        b = -r if space == "samples" else -Jd.T @ r
        op = st.as_operator(G, psd=True)
        lam_max = float(np.linalg.eigvalsh(G)[-1])
        for rel in (1e-4, 1e-6, 1e-8):
            mu = rel * lam_max
            t0 = time.perf_counter()
            _, a = st.solve(np.random.default_rng(1), op, b, damping=mu, preconditioner=None, rtol=rtol, maxiter=20000)
            t1 = time.perf_counter()
            _, c = st.solve(np.random.default_rng(1), op, b, damping=mu, rank=min(rank, G.shape[0]), rtol=rtol)
            t2 = time.perf_counter()
            rows.append(
                (
                    space,
                    G.shape[0],
                    rel,
                    int(a.iterations),
                    bool(a.converged),
                    int(c.iterations),
                    bool(c.converged),
                    t1 - t0,
                    t2 - t1,
                )
            )
    return (n, p, rtol, rank, layers), rows


def memory_table(quick):
    """Arrays the matrix-free sample-space step holds (bytes): the linearisation (``JacobianOperator`` leaves),
    the Nystrom factor and CG vectors, beside the ``n x p`` Jacobian of the dense step."""
    configs = (
        [((2, 10, 10, 1), 100, 30), ((2, 10, 10, 1), 400, 30)]
        if quick
        else [((2, 20, 20, 20, 1), 300, 100), ((2, 20, 20, 20, 1), 1200, 100), ((2, 40, 40, 40, 1), 300, 100)]
    )
    rank, out = 50, []
    for layers, n_res, n_bc in configs:
        _, _, _, J, r = _system(layers, n_res, n_bc)
        n, p = J.shape
        lin = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(J))
        factor = (n * min(rank, n) + 6 * n + p) * 8  # U, CG vectors, the step
        out.append((layers, n, p, factor, lin, (n + p) * min(rank, n) * 8, n * p * 8))
    return rank, out


LM_ARMS = {
    "matrix-free": {"method": "auto", "weighting": None},
    "dense": {"method": "dense", "weighting": None},
    "dense + exact NTK": {"method": "dense", "weighting": "exact"},
}


def lm_vs_adam(quick, budget, arms=("matrix-free",)):
    """Relative L2 against wall time of LM arms (``LM_ARMS``) and Adam, same start and fixed batch."""
    import optax

    layers = (2, 10, 10, 1) if quick else (2, 20, 20, 20, 1)
    prob, params, batch, J, _ = _system(layers, 100 if quick else 300, 30 if quick else 100)
    n, p = J.shape
    out = dict(n=n, p=p, layers=layers, lm={})
    for arm in arms:
        spec = LM_ARMS[arm]
        kw = dict(damping=1e-3, method=spec["method"], rank=50)

        def weighting():
            return None if spec["weighting"] is None else pa.ntk_weighting(prob.blocks, estimator=spec["weighting"])

        # warm-up: compile the step program (cached per configuration) outside the timings
        so.levenberg_marquardt(jax.random.key(2), prob.blocks, params, batch, steps=1, weighting=weighting(), **kw)
        res = so.levenberg_marquardt(
            jax.random.key(2),
            prob.blocks,
            params,
            batch,
            steps=100_000,
            weighting=weighting(),
            error_fn=prob.relative_l2,
            log_every=5,
            time_limit=budget,
            **kw,
        )
        out["lm"][arm] = dict(
            history=[(h["time"], h["relative_l2"], h["loss"]) for h in res.history if "relative_l2" in h],
            steps=len(res.history),
            accepted=sum(h["accepted"] for h in res.history),
        )
        print(f"[LM {arm}: {out['lm'][arm]['steps']} steps, rel L2 {out['lm'][arm]['history'][-1][1]:.3g}]", flush=True)
    opt = optax.adam(1e-3)
    f = so.scaled_residual_fn(prob.blocks, batch, None)

    @jax.jit
    def step(prm, state):
        loss, g = jax.value_and_grad(lambda q: f(q) @ f(q))(prm)
        upd, state = opt.update(g, state, prm)
        return optax.apply_updates(prm, upd), state, loss

    jax.block_until_ready(step(params, opt.init(params)))
    prm, state, adam, k, t0 = params, opt.init(params), [], 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        prm, state, loss = step(prm, state)
        k += 1
        if k % 500 == 0:
            adam.append((time.perf_counter() - t0, float(prob.relative_l2(prm)), float(loss)))
    adam.append((time.perf_counter() - t0, float(prob.relative_l2(prm)), float(loss)))
    out.update(adam=adam, adam_steps=k)
    return out


def section(quick=False, budget=None, parts=("cg", "memory", "lm"), arms=("matrix-free",)):
    budget = (20.0 if quick else 60.0) if budget is None else budget
    load0 = os.getloadavg()[0]
    res = {}
    for part, fn in (
        ("cg", lambda: cg_table(quick)),
        ("memory", lambda: memory_table(quick)),
        ("lm", lambda: lm_vs_adam(quick, budget, arms)),
    ):
        if part in parts:
            t0 = time.perf_counter()
            res[part] = fn()
            print(f"[{part}: {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}]", flush=True)
    return render(res, budget, load0)


def render(res, budget, load0):
    lines, rows = [], []
    if "cg" in res:
        lines_cg, rows_cg = _render_cg(res["cg"], load0)
        lines += lines_cg
        rows += rows_cg
    if "memory" in res:
        lines += _render_memory(res["memory"])
    if "lm" in res:
        lines_lm, rows_lm = _render_lm(res["lm"], budget)
        lines += lines_lm
        rows += rows_lm
    lines += ["", f"Load average at end {os.getloadavg()[0]:.1f}.", ""]
    return lines, rows


def _render_cg(cg_res, load0):
    (n, p, rtol, rank, layers), cg = cg_res
    lines = [
        f"## Second-order PINN training: Nystrom-preconditioned CG (wave, MLP {layers}, n = {n} residual rows, "
        f"p = {p} parameters, at initialisation; load average {load0:.1f})",
        "",
        f"CG iterations to `||r|| <= {rtol:g} ||b||` with and without a rank-{rank} Nystrom preconditioner "
        "(`st.solve`, NumPy backend on the formed matrix), `mu` relative to the largest eigenvalue; times include the sketch.",
        "",
        "| system | dim | mu / lambda_max | CG iterations, none | with Nystrom | ratio | time none s | time Nystrom s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for space, dim, rel, a, ac, c, cc, ta, tc in cg:
        name = "J J^T + mu I (samples)" if space == "samples" else "J^T J + mu I (params)"
        flag = "" if ac else " (not converged)"
        lines.append(
            f"| {name} | {dim} | {rel:g} | {a}{flag} | {c}{'' if cc else ' (not converged)'} | "
            f"{c / max(a, 1):.3f} | {ta:.2f} | {tc:.2f} |"
        )
        rows.append((f"Nystrom PCG / CG iterations, {space}, mu/lmax={rel:g}", c / max(a, 1), None))
    return lines, rows


def _render_memory(mem_res):
    mrank, mem = mem_res
    lines = []
    lines += [
        "",
        f"Memory of the matrix-free sample-space step (rank {mrank}, float64): the arrays it holds",
        "",
        "| MLP | n | p | Nystrom factor + CG vectors MiB | linearisation MiB | (n + p) rank MiB | dense J (n p) MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for lay, nn, pp, temp, lin, low, dense in mem:
        lines.append(
            f"| {lay} | {nn} | {pp} | {temp / 2**20:.2f} | {lin / 2**20:.2f} | {low / 2**20:.2f} | "
            f"{dense / 2**20:.2f} |"
        )
    return lines


def _render_lm(lva, budget):
    adam = lva["adam"]
    arms = ", ".join(f"{arm} {r['steps']} trial steps ({r['accepted']} accepted)" for arm, r in lva["lm"].items())
    lines = [
        "",
        f"Relative L2 against wall time, same initialisation and fixed batch (n = {lva['n']}, "
        f"p = {lva['p']}), {budget:.0f} s each: LM ({arms}; matrix-free = Nystrom rank 50 CG; "
        f"compilation excluded) and Adam (lr 1e-3, {lva['adam_steps']} steps).",
        "",
        "| optimizer | time s | relative L2 | loss |",
        "|---|---|---|---|",
    ]
    hists = [(f"LM {arm}", r["history"]) for arm, r in lva["lm"].items()] + [("Adam", adam)]
    for tag, hist in hists:
        pick = hist if len(hist) <= 6 else [hist[i] for i in np.linspace(0, len(hist) - 1, 6).astype(int)]
        lines += [f"| {tag} | {t:.1f} | {e:.3g} | {loss:.3g} |" for t, e, loss in pick]
    rows = [
        (f"LM {arm} / Adam relative L2 at equal wall time", r["history"][-1][1] / adam[-1][1], None)
        for arm, r in lva["lm"].items()
    ]
    return lines, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=None, help="seconds per optimizer in the LM vs Adam run")
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "second_order.md")
    )
    ap.add_argument("--parts", default="cg,memory,lm", help="comma-separated subset of cg, memory, lm")
    ap.add_argument(
        "--lm-arms", default="matrix-free", help=f"comma-separated LM variants of the lm part, of {sorted(LM_ARMS)}"
    )
    args = ap.parse_args(argv)
    arms = tuple(a.strip() for a in args.lm_arms.split(",") if a.strip())
    unknown = [a for a in arms if a not in LM_ARMS]
    if unknown or not arms:
        ap.error(f"--lm-arms: expected names from {sorted(LM_ARMS)}, got {args.lm_arms!r}")
    lines, _ = section(args.quick, args.budget, tuple(args.parts.split(",")), arms)
    text = "\n".join(lines) + "\n"
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
