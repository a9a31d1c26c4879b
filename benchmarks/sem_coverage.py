"""Coverage of the nominal 95 % interval (value +- 1.96 sem) over seeds, for the dynamic estimator's sem modes
and the static estimators. Small sizes; run with ``nice -n 15 python benchmarks/sem_coverage.py [--seeds 1000]``.

The dynamic problem is docs/dynamic.md's first example (n = 40, 30 steps of a slow drift).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import sketchtrace as st


def drift(n=40):
    rng = np.random.default_rng(0)
    G = rng.standard_normal((n, n))
    A0 = jnp.asarray(G @ G.T / n)
    D = jnp.asarray(np.diag(rng.uniform(0.0, 0.02, n)))
    return lambda t: A0 + t * D


def pc_run(pc, A, steps):
    def run(key):
        k0, key = jax.random.split(key)
        state = pc.init(k0, A(0))

        def body(carry, t):
            key, state = carry
            key, sub = jax.random.split(key)
            est, state = pc.update(sub, state, st.as_operator(A(t - 1)), st.as_operator(A(t)))
            return (key, state), (est.value, est.sem)

        _, (v, s) = jax.lax.scan(body, (key, state), jnp.arange(1, steps + 1))
        return v[-1], s[-1]

    return jax.jit(jax.vmap(run))


def row(label, value, sem, truth, dof=None):
    z = (np.asarray(value) - truth) / np.asarray(sem)
    cov = np.mean(np.abs(z) <= 1.96)
    out = f"| {label} | {cov:.1%} | {np.mean(np.abs(z) > 10):.1%} |"
    if dof is not None:
        out += f" {np.mean(np.abs(z) <= stats.t.isf(0.025, dof)):.1%} (t, {dof} dof) |"
    else:
        out += " - |"
    print(out, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    A = drift()
    steps = 30
    truth = float(jnp.trace(A(steps)))
    keys = jax.random.split(jax.random.key(0), args.seeds)
    print(f"predictor_corrector, docs/dynamic.md example, t={steps}, {args.seeds} seeds")
    print("| num_probes, sem | covers 95 % interval | > 10 sem off | with Student's t |")
    print("|---|---|---|---|")
    for R in (1, 2, 8):
        for mode in ("auto", "replicas", "recursion"):
            if mode == "replicas" and R < 2:
                continue
            pc = st.predictor_corrector(num_probes=R, gamma=0.1, sem=mode)
            v, s = pc_run(pc, A, steps)(keys)
            row(f"{R}, {mode}", v, s, truth, dof=R - 1 if (mode == "replicas" and R >= 2) else None)
    print("\nmoving_average (beta = 0.1), same problem")
    print("| num_probes, sem | covers 95 % interval | > 10 sem off | with Student's t |")
    print("|---|---|---|---|")
    for R in (1, 2, 8):
        for mode in ("auto", "replicas", "recursion"):
            if mode == "replicas" and R < 2:
                continue
            ma = st.moving_average(num_probes=R, beta=0.1, sem=mode)
            v, s = pc_run(ma, A, steps)(keys)
            row(f"{R}, {mode}", v, s, truth, dof=R - 1 if (mode == "replicas" and R >= 2) else None)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
