"""Eager JAX calls (what users type) against the same call under ``jax.jit`` and jitted matfree.

Issue 27: an eager ``st.hutchinson`` / ``st.xtrace`` dispatched every small array operation
(2.8-3.4x a jitted peer) and its first call compiled ~97 small programs (a Hessian trace of a
161-parameter network: 23.9 s first call, 9.7 s for the same computation under one ``jax.jit``).
Eager calls now run one cached compiled program (``sketchtrace/estimators/_compiled.py``).

Two measurements:

* **steady state** (one process, interleaved, medians): eager ``st.hutchinson`` and ``st.xtrace``
  on a dense 1000 x 1000 matrix against the same call inside ``jax.jit`` and against matfree's
  jitted Hutchinson / XTrace at the same budget; targets <= 1.2x both;
* **FunctionOperator** (steady state): the same two estimators on ``st.FunctionOperator(lambda v: A @ v)``
  rebuilt on every call, eagerly and inside ``jax.jit``, and the time to trace that function alone
  (an eager call traces it each time so that the arrays it reads are never stale);
* **first call** (a fresh subprocess per contender, so nothing is cached): an eager Hessian trace
  (``st.hutchinson`` on the Hessian-vector product of a small MLP's loss, 141 parameters) against the
  same computation's first call under one ``jax.jit``; target <= 2x.

Run: ``python benchmarks/eager.py [--quick]``; ``benchmarks/report.py`` includes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp

import sketchtrace as st

_FIRST_CALL = r"""
import json, os, sys, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax, jax.numpy as jnp
import sketchtrace as st
mode = sys.argv[1]

key = jax.random.key(0)
ks = jax.random.split(key, 4)
params = [(jax.random.normal(ks[0], (1, 10)), jnp.zeros(10)), (jax.random.normal(ks[1], (10, 10)) / 3, jnp.zeros(10)),
          (jax.random.normal(ks[2], (10, 1)) / 3, jnp.zeros(1))]
flat, unravel = jax.flatten_util.ravel_pytree(params)
x = jnp.linspace(-1.0, 1.0, 64)[:, None]
def loss(theta):
    h = x
    for W, b in unravel(theta)[:-1]:
        h = jnp.tanh(h @ W + b)
    W, b = unravel(theta)[-1]
    return jnp.mean((h @ W + b - jnp.sin(3 * x)) ** 2)
def hess_trace(k, theta):
    hvp = lambda v: jax.jvp(jax.grad(loss), (theta,), (v,))[1]
    op = st.FunctionOperator(hvp, shape=theta.size, dtype=theta.dtype)
    return st.hutchinson(k, op, num_matvecs=20, allow_exact=False)
run = jax.jit(hess_trace) if mode == "jit" else hess_trace
times = []
for i in range(3):
    t0 = time.perf_counter(); jax.block_until_ready(run(jax.random.key(i), flat).value); times.append(time.perf_counter() - t0)
print(json.dumps({"params": int(flat.size), "times": times}))
"""


def first_call(mode):
    out = subprocess.run(
        [sys.executable, "-c", "import jax.flatten_util\n" + _FIRST_CALL, mode],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def steady(n, k, repeats):
    """name -> median seconds; eager and jitted sketchtrace calls and jitted matfree, interleaved."""
    from matfree import stochtrace

    A = jax.random.normal(jax.random.key(1), (n, n))
    A = A @ A.T / n
    key = jax.random.key(0)
    x_like = jnp.zeros((n,))
    mf_h = stochtrace.estimator_monte_carlo(stochtrace.monte_carlo_trace(), stochtrace.sampler_signs(x_like, num=k))
    mf_x = stochtrace.estimator_leave_one_out(
        stochtrace.leave_one_out_xtrace(), stochtrace.sampler_sphere(x_like, num=k // 2)
    )
    fns = {
        "hutchinson eager": lambda: st.hutchinson(key, A, num_matvecs=k).value,
        "hutchinson in jax.jit": (lambda f: lambda: f(key, A))(
            jax.jit(lambda kk, a: st.hutchinson(kk, a, num_matvecs=k).value)
        ),
        "matfree hutchinson (jit)": (lambda f: lambda: f(key, A))(jax.jit(lambda kk, a: mf_h(lambda v: a @ v, kk))),
        "xtrace eager": lambda: st.xtrace(key, A, num_matvecs=k).value,
        "xtrace in jax.jit": (lambda f: lambda: f(key, A))(
            jax.jit(lambda kk, a: st.xtrace(kk, a, num_matvecs=k).value)
        ),
        "matfree xtrace (jit)": (lambda f: lambda: f(key, A))(jax.jit(lambda kk, a: mf_x(lambda v: a @ v, kk))),
    }
    # a FunctionOperator (the matrix closed over), rebuilt per call as users write it, eager and in jax.jit
    for est in ("hutchinson", "xtrace"):
        run = getattr(st, est)
        fns[f"{est} eager, FunctionOperator"] = lambda run=run: (
            run(key, st.FunctionOperator(lambda v: A @ v, n, A.dtype), num_matvecs=k).value
        )
        fns[f"{est} in jax.jit, FunctionOperator"] = (lambda f: lambda: f(key, A))(
            jax.jit(
                lambda kk, a, run=run: run(kk, st.FunctionOperator(lambda v: a @ v, n, a.dtype), num_matvecs=k).value
            )
        )
    fns["trace of the FunctionOperator's function (jax.make_jaxpr, as an eager call does)"] = lambda: jax.make_jaxpr(
        lambda v: A @ v
    )(jax.ShapeDtypeStruct((n,), A.dtype)).consts[0]
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def section(quick=False, repeats=None):
    """Markdown lines and headline rows ``(label, ratio, kind)`` for ``benchmarks/report.py``."""
    n, k = (300, 16) if quick else (1000, 40)
    repeats = repeats or (5 if quick else 21)
    load0 = os.getloadavg()[0]
    med = steady(n, k, repeats)
    eager, jitted = first_call("eager"), first_call("jit")
    load1 = os.getloadavg()[0]
    lines = [
        f"## Eager JAX calls (dense n = {n}, {k} matvecs; median of {repeats} interleaved calls; load {load0:.1f} "
        f"-> {load1:.1f})",
        "",
        "| contender | median ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {t * 1e3:.2f} |" for name, t in med.items()]
    lines += [
        "",
        f"First calls in fresh processes: an eager Hessian trace ({eager['params']} parameters, 20 matvecs) "
        f"{eager['times'][0]:.2f} s, then {eager['times'][1] * 1e3:.1f} ms; the same under one `jax.jit` "
        f"{jitted['times'][0]:.2f} s, then {jitted['times'][1] * 1e3:.1f} ms.",
        "",
    ]
    rows = []
    for est in ("hutchinson", "xtrace"):
        rows.append(
            (f"eager {est} / the same call in jax.jit", med[f"{est} eager"] / med[f"{est} in jax.jit"], "eager")
        )
        rows.append((f"eager {est} / jitted matfree", med[f"{est} eager"] / med[f"matfree {est} (jit)"], "eager"))
    for est in ("hutchinson", "xtrace"):
        rows.append(
            (
                f"eager {est} on a FunctionOperator / the same call in jax.jit",
                med[f"{est} eager, FunctionOperator"] / med[f"{est} in jax.jit, FunctionOperator"],
                "eager",
            )
        )
    rows.append(
        (
            "later eager Hessian traces / later calls under jax.jit",
            min(eager["times"][1:]) / min(jitted["times"][1:]),
            "eager",
        )
    )
    rows.append(
        ("first eager Hessian trace / first call under jax.jit", eager["times"][0] / jitted["times"][0], "eager_first")
    )
    return lines, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    lines, rows = section(args.quick, args.repeats)
    print("\n".join(lines))
    print("| ratio | value |\n|---|---|")
    for label, value, _ in rows:
        print(f"| {label} | {value:.3f} |")


if __name__ == "__main__":
    main()
