"""Coverage of the nominal 95 % interval (value +- 1.96 sem) over seeds, for the dynamic estimator's sem modes
and the static estimators. Small sizes; run with ``nice -n 15 python benchmarks/sem_coverage.py [--seeds 1000]``,
``--static`` for the XTrace/XNysTrace table only (``--static-seeds``, default 300, about 3 minutes on a quiet core).

The dynamic problem is docs/dynamic.md's first example (n = 40, 30 steps of a slow drift). The static table
compares the X-family's reported sem (leave-one-out spread plus the covariance term) with the leave-one-out
spread alone (the paper's error estimate) on n = 300 operators with several spectra and budgets; ``std/sem``
is the spread of the estimates over seeds divided by the median reported sem (1 is honest).
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


SPECTRA = {
    "flat (1 + 0.01 j/n)": lambda j, n: 1.0 + 0.01 * j / n,
    "slow 1/sqrt(1+j)": lambda j, n: 1.0 / np.sqrt(1.0 + j),
    "1 + 10 * 0.9^j": lambda j, n: 1.0 + 10.0 * 0.9**j,
    "1/(1+j)^2": lambda j, n: 1.0 / (1.0 + j) ** 2,
    "fast 0.7^j": lambda j, n: 0.7**j,
    "10 x 100 + flat tail": lambda j, n: np.where(j < 10, 100.0, 1.0),
    "indefinite +-1/sqrt(1+j)": lambda j, n: np.where(j % 2, -1.0, 1.0) / np.sqrt(1.0 + j),
}


def x_family_run(method, A, m):
    """Per key: (value, reported sem, leave-one-out-only sem)."""
    from sketchtrace.backends import JaxBackend
    from sketchtrace.estimators._xtrace import nys_state, xnystrace_loo, xsketch, xtrace_loo

    n = A.shape[0]
    k = m // 2 if method == "xtrace" else m
    op = st.as_operator(A)

    def run(key):
        est = getattr(st, method)(key, A, num_matvecs=m)
        Om = JaxBackend.probes(key, k, n, jnp.float64, "sphere")  # the estimator's test vectors
        if method == "xtrace":
            t, _ = xtrace_loo(jnp, xsketch(JaxBackend, op, Om, None), n, True)
        else:
            t, _ = xnystrace_loo(jnp, nys_state(JaxBackend, op, Om, None), n, True)
        return est.value, est.sem, jnp.std(t, ddof=1) / np.sqrt(k)

    return jax.jit(jax.vmap(run)), k


def static_table(seeds, n=300):
    jax.config.update("jax_enable_x64", True)  # float64 like the tests (the dynamic table above keeps float32)
    keys = jax.random.split(jax.random.key(0), seeds)
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    print(f"\nXTrace / XNysTrace (sampler='improved'), n = {n}, {seeds} seeds: coverage of the 95 % interval")
    print(
        "| method | spectrum | matvecs | leave-one-out only: std/sem, covers | reported: std/sem, covers (normal) | covers (t, k-1 dof) |"
    )
    print("|---|---|---|---|---|---|")
    for method in ("xtrace", "xnystrace"):
        for name, f in SPECTRA.items():
            if method == "xnystrace" and name.startswith("indefinite"):
                continue
            lam = f(np.arange(n), n)
            A = jnp.asarray((Q * lam) @ Q.T)
            truth = float(lam.sum())
            for m in (20, 60, 200):
                fn, k = x_family_run(method, A, m)
                v, s, s0 = (np.asarray(x) for x in fn(keys))
                err, sd = np.abs(v - truth), np.std(v, ddof=1)
                q = stats.t.isf(0.025, k - 1)
                print(
                    f"| {method} | {name} | {m} | {sd / np.median(s0):.2f}, {np.mean(err <= 1.96 * s0):.1%} | "
                    f"{sd / np.median(s):.2f}, {np.mean(err <= 1.96 * s):.1%} | {np.mean(err <= q * s):.1%} |",
                    flush=True,
                )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--static", action="store_true", help="only the XTrace/XNysTrace table")
    ap.add_argument("--static-seeds", type=int, default=300)
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.static:
        static_table(args.static_seeds)
        print(f"\n({time.perf_counter() - t0:.0f} s)")
        return
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
    static_table(args.static_seeds)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
