"""Traces of matrix functions: sketchtrace's SLQ against matfree's, side by side in one run.

Problems (``log det``; issue 17):

* three dense ``n x n`` SPD matrices ``Q diag(lam) Q^T`` (``Q`` a random orthogonal
  matrix) with a **flat** spectrum ``lam = linspace(1, 2)``, a **polynomially**
  decaying one ``lam_i = 1 + 100 i^-2`` and an **exponentially** decaying one
  ``lam_i = 1 + 100 exp(-i / 10)`` (kernel-matrix-plus-nugget shapes);
* a **matrix-free** Gaussian-process kernel ``K_ij = exp(-(x_i - x_j)^2 / (2 l^2)) + s I``
  on ``n`` points in ``[0, 10]``, whose matvec recomputes the kernel (never stored);
* the numba backend on a 400,000 x 400,000 sparse SPD matrix (random pattern, ~20
  nonzeros per row, made diagonally dominant) against a SciPy Lanczos loop.

Contenders, at equal matvecs (``probes x steps``, Rademacher probes):

* ``st.logdet(key, op, method="slq")`` with and without full reorthogonalisation, and
  ``method="deflated"`` (Krylov-aware deflation);
* matfree 0.6: ``stochtrace.estimator_monte_carlo(funm.monte_carlo_funm_sym_logdet(
  decomp.tridiag_sym(steps, reortho=...)), stochtrace.sampler_signs(x, num=probes))``.

Accuracy: mean relative error over ``trials`` keys (the same keys for everyone).
Time: median over interleaved repeats of the jitted call (compiled first).

Run: ``python benchmarks/matfun.py [--quick]``; ``benchmarks/report.py`` includes it. On a
loaded machine run it with ``OPENBLAS_NUM_THREADS=1``: with more LAPACK threads than free
cores, a 2000 x 25 QR or a 100 x 100 ``eigh`` (NumPy's and JAX's CPU LAPACK alike) took
0.15-0.45 s instead of 0.4-9 ms here, which distorts every contender that factorises.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

import sketchtrace as st
from sketchtrace.backends import JaxBackend

jax.config.update("jax_enable_x64", True)


def spectra(n):
    i = np.arange(1, n + 1, dtype=np.float64)
    return {
        "flat": np.linspace(1.0, 2.0, n),
        "polynomial": 1.0 + 100.0 * i**-2.0,
        "exponential": 1.0 + 100.0 * np.exp(-(i - 1) / 10.0),
    }


def dense_spd(lam, seed=0):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    return jnp.asarray((Q * lam) @ Q.T)


def kernel_matvec(x, length, nugget):
    """``v -> (K(length) + nugget I) v`` recomputing the kernel on the fly (``O(n)`` memory per row block)."""

    def mv(v):
        K = jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length**2)
        return K @ v + nugget * v

    return mv


def kernel_problem(n, length=0.5, nugget=0.1):
    x = jnp.linspace(0.0, 10.0, n)
    K = np.exp(-0.5 * (np.asarray(x)[:, None] - np.asarray(x)[None, :]) ** 2 / length**2) + nugget * np.eye(n)
    truth = float(np.linalg.slogdet(K)[1])
    op = st.FunctionOperator(kernel_matvec(x, length, nugget), shape=n, dtype=jnp.float64)
    return op, kernel_matvec(x, length, nugget), truth


def contenders(op, matvec, n, probes, steps):
    """name -> jitted ``fn(key) -> value`` at ``probes x steps`` matvecs."""
    from matfree import decomp, funm, stochtrace

    m = probes * steps
    ours = {
        "sketchtrace slq": {"method": "slq", "reorthogonalize": False},
        "sketchtrace slq (reorth)": {"method": "slq", "reorthogonalize": True},
        "sketchtrace deflated": {"method": "deflated", "reorthogonalize": False},
    }
    fns = {
        name: jax.jit(
            lambda k, kw=kw: st.logdet(k, op, num_matvecs=m, lanczos_steps=steps, allow_exact=False, **kw).value
        )
        for name, kw in ours.items()
    }
    x_like = jnp.zeros((n,), jnp.float64)
    samplers = {
        "": stochtrace.sampler_signs(x_like, num=probes),
        # paired comparison: matfree fed exactly the probes sketchtrace draws from the same key
        " (same probes)": lambda k: JaxBackend.probes(k, probes, n, jnp.float64),
    }
    for (reortho, label), (suffix, sampler) in itertools.product(
        (("none", ""), ("full", " (reorth)")), samplers.items()
    ):
        integrand = funm.monte_carlo_funm_sym_logdet(decomp.tridiag_sym(steps, reortho=reortho))
        est = stochtrace.estimator_monte_carlo(integrand, sampler)
        fns[f"matfree slq{label}{suffix}"] = jax.jit(lambda k, est=est: est(lambda v: matvec(v), k))
    return fns


def accuracy(fns, truth, trials):
    """name -> (mean relative error, its standard error) over ``trials`` keys (the same keys for all)."""
    keys = jax.random.split(jax.random.key(2026), trials)
    out = {}
    for name, fn in fns.items():
        e = np.array([abs(float(fn(k)) - truth) / abs(truth) for k in keys])
        out[name] = (float(e.mean()), float(e.std(ddof=1) / np.sqrt(e.size)))
    return out


def timing(fns, repeats):
    key = jax.random.key(0)
    for fn in fns.values():
        jax.block_until_ready(fn(key))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(key))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def jax_problems(n, quick):
    for name, lam in spectra(n).items():
        A = dense_spd(lam)
        yield f"dense {name}", st.as_operator(A), (lambda v, A=A: A @ v), float(np.sum(np.log(lam)))
    if not quick:
        op, mv, truth = kernel_problem(n)
        yield "matrix-free GP kernel", op, mv, truth


def jax_rows(n, probes, steps, trials, repeats, quick=False):
    """``[(problem, {contender: ((mean rel error, sem), median s)})]``."""
    out = []
    for problem, op, mv, truth in jax_problems(n, quick):
        fns = contenders(op, mv, n, probes, steps)
        # the matrix-free kernel recomputes K in every product: fewer trials there
        err = accuracy(fns, truth, trials if problem.startswith("dense") else max(10, trials // 5))
        tm = timing(fns, repeats)
        out.append((problem, {name: (err[name], tm[name]) for name in fns}))
        print(problem, {name: (f"{err[name][0]:.3e}", f"{tm[name] * 1e3:.2f} ms") for name in fns}, flush=True)
    return out


# ----------------------------------------------------------------------------- numba vs SciPy


def sparse_spd(n, per_row=10, seed=0):
    """Symmetric random-pattern CSR (~``2 per_row`` nonzeros per row) made diagonally dominant."""
    rng = np.random.default_rng(seed)
    rows, cols = np.repeat(np.arange(n), per_row), rng.integers(0, n, per_row * n)
    R = sp.coo_matrix((rng.standard_normal(per_row * n), (rows, cols)), shape=(n, n))
    C = (R + R.T).tocsr()
    C.sum_duplicates()
    return (C + sp.diags(np.asarray(abs(C).sum(axis=1)).ravel() + 1.0)).tocsr()


def scipy_lanczos_logdet(C, probes, steps, rng):
    """The SciPy baseline: block Lanczos over all probes (``C @ Q``), NumPy vector ops, eigh quadrature."""
    n = C.shape[0]
    Z = 1.0 - 2.0 * rng.integers(0, 2, size=(n, probes)).astype(np.float64)
    q, q_prev = Z / np.sqrt(n), np.zeros((n, probes))
    alpha, beta = np.zeros((steps, probes)), np.zeros((steps, probes))
    b = np.zeros(probes)
    for j in range(steps):
        w = C @ q
        alpha[j] = np.einsum("ij,ij->j", q, w)
        w -= alpha[j] * q + b * q_prev
        b = np.linalg.norm(w, axis=0)
        beta[j] = b
        q_prev, q = q, w / b
    T = np.zeros((probes, steps, steps))
    idx = np.arange(steps)
    T[:, idx, idx] = alpha.T
    T[:, idx[:-1], idx[1:]] = T[:, idx[1:], idx[:-1]] = beta[:-1].T
    w, V = np.linalg.eigh(T)
    return n * np.mean(np.sum(V[:, 0, :] ** 2 * np.log(w), axis=1))


def numba_rows(n, probes, steps, repeats):
    """Median seconds of ``st.logdet`` (numba backend) and the SciPy loop, interleaved; and their values.

    Two kernel-only rows (no quadrature) show where the time went: the fused CSR recurrence
    ``st.logdet`` runs (``lanczos_csr``: one pass over the matrix and one over the vectors per
    step) and the previous path (``lanczos_numba``: the backend's block product, then separate
    dot, update and scaling kernels); their values are the sum of the run's ``alpha``.
    """
    from sketchtrace.backends._numba import NumbaBackend
    from sketchtrace.backends._numba_lanczos import lanczos_csr, lanczos_numba

    C = sparse_spd(n)
    op = st.as_operator(C)
    prepared = NumbaBackend.prepare(op)
    Z = NumbaBackend.probes(np.random.default_rng(1), probes, n, np.float64)
    fns = {
        "numba st.logdet": lambda: float(
            st.logdet(
                np.random.default_rng(1), op, num_matvecs=probes * steps, lanczos_steps=steps, allow_exact=False
            ).value
        ),
        "scipy block Lanczos loop": lambda: scipy_lanczos_logdet(C, probes, steps, np.random.default_rng(1)),
        "kernel: fused CSR recurrence (lanczos_csr)": lambda: float(
            lanczos_csr(C.indptr, C.indices, C.data, Z, steps)[0].sum()
        ),
        "kernel: block products + vector kernels (previous)": lambda: float(
            lanczos_numba(lambda V: NumbaBackend.matmat(prepared, V), Z, steps)[0].sum()
        ),
    }
    values = {name: fn() for name, fn in fns.items()}  # warm-up (numba compilation)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return C.nnz, {name: (statistics.median(t), values[name]) for name, t in times.items()}


# ----------------------------------------------------------------------------- report


def section(quick=False, repeats=None):
    """Markdown lines and headline rows ``(label, ratio, kind)`` for ``benchmarks/report.py``."""
    n, probes, steps, trials = (300, 8, 10, 10) if quick else (2000, 10, 20, 100)
    repeats = repeats or (5 if quick else 15)
    n_sp = 20_000 if quick else 400_000
    res = jax_rows(n, probes, steps, trials, repeats, quick)
    nnz, nb = numba_rows(n_sp, probes, steps, 3 if quick else 5)
    lines = [
        (
            f"## Traces of matrix functions: log det by SLQ vs matfree (n = {n}, {probes} probes x {steps} "
            f"Lanczos steps = {probes * steps} matvecs, mean relative error over {trials} keys, median of "
            f"{repeats} interleaved jitted calls)"
        ),
        "",
    ]
    rows = []
    for problem, r in res:
        lines += [f"### {problem}", "", "| contender | mean rel. error (+- sem) | median ms |", "|---|---|---|"]
        lines += [f"| {name} | {e:.2e} (+- {se:.1e}) | {t * 1e3:.2f} |" for name, ((e, se), t) in r.items()]
        lines.append("")
        rows.append(
            (
                f"SLQ error / matfree error (same probes), {problem}",
                r["sketchtrace slq"][0][0] / r["matfree slq (same probes)"][0][0],
                "slq_err",
            )
        )
        rows.append(
            (
                f"SLQ error / matfree error (independent probes), {problem}",
                r["sketchtrace slq"][0][0] / r["matfree slq"][0][0],
                "slq_err",
            )
        )
        best = min(r[c][0][0] for c in r if c.startswith("sketchtrace"))
        rows.append((f"best sketchtrace error / matfree error, {problem}", best / r["matfree slq"][0][0], "slq_err"))
        rows.append((f"SLQ time / matfree time, {problem}", r["sketchtrace slq"][1] / r["matfree slq"][1], "slq_time"))
        rows.append(
            (
                f"SLQ (reorth) time / matfree (reorth) time, {problem}",
                r["sketchtrace slq (reorth)"][1] / r["matfree slq (reorth)"][1],
                "slq_time",
            )
        )
        if "polynomial" in problem:
            rows.append(
                (
                    "deflated error / SLQ error, dense polynomial",
                    r["sketchtrace deflated"][0][0] / r["sketchtrace slq"][0][0],
                    "deflated_err",
                )
            )
    ratio = nb["scipy block Lanczos loop"][0] / nb["numba st.logdet"][0]
    rows.append((f"SciPy Lanczos loop / numba logdet, CSR n={n_sp:,}", ratio, "lanczos_numba"))
    fused = (
        nb["kernel: block products + vector kernels (previous)"][0]
        / nb["kernel: fused CSR recurrence (lanczos_csr)"][0]
    )
    rows.append((f"numba Lanczos: previous path / fused CSR recurrence, CSR n={n_sp:,}", fused, "lanczos_fused"))
    lines += [
        (
            f"### numba backend vs a SciPy Lanczos loop (CSR n = {n_sp:,}, nnz = {nnz:,}, {probes} probes x "
            f"{steps} steps)"
        ),
        "",
        "| contender | median ms | value |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t * 1e3:.1f} | {v:.6g} |" for name, (t, v) in nb.items()]
    lines += ["", f"SciPy / numba: **{ratio:.2f}x**", ""]
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
