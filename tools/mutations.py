"""Targeted mutation run: does each estimator's own test suite kill small, plausible bugs?

Each mutation replaces one exact snippet of an estimator module (a 1% scale of the
sampled value, an off-by-one budget split, a sign flip in the predictor-corrector
recursion, a dropped Hutch++ residual term, a wrong Rademacher variance, ...). For
each mutation the script copies the package and the tests to a temporary directory,
applies the mutation there (the working tree is never touched, so it is safe to run
while others work in it), runs the selected tests of THAT estimator with pytest and
records which of them fail:

* ``oracle``: tests/test_oracles.py (the formula recomputed in NumPy on the same probes);
* ``statistical``: the powered unbiasedness tests (``test_*detects_one_percent``);
* ``other``: the rest of the selection (exact paths, budgets, ...).

A mutation is *killed* when at least one selected test fails. Not run in CI (it runs
pytest once per mutation, about 15-25 minutes on 2 cores)::

    nice -n 10 python tools/mutations.py                # all mutations, table to stdout
    nice -n 10 python tools/mutations.py --only hutchpp  # names containing "hutchpp"
    python tools/mutations.py --list

The Markdown table it prints is the one in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
EST = "sketchtrace/estimators/"


class Mutation(NamedTuple):
    name: str
    path: str  # relative to the repository root
    old: str  # exact snippet, must occur once
    new: str
    tests: tuple  # pytest node ids


def O(*names):  # the oracle tests of the estimator
    return tuple(f"tests/test_oracles.py::{n}" for n in names)


def P(module, name="test_unbiased_detects_one_percent"):  # its powered statistical test
    return (f"tests/{module}::{name}",)


MUTATIONS = [
    # --- Hutchinson and block traces
    Mutation(
        "hutchinson: value x 1.01",
        EST + "_hutchinson.py",
        "return Estimate(value[0], sem[0], spent)",
        "return Estimate(1.01 * value[0], sem[0], spent)",
        O("test_hutchinson") + P("test_hutchinson.py"),
    ),
    Mutation(
        "hutchinson: sem of one probe too few (k - 1)",
        EST + "_common.py",
        "xp.std(Q, axis=0, correction=1) / math.sqrt(k)",
        "xp.std(Q, axis=0, correction=1) / math.sqrt(k - 1)",
        O("test_hutchinson"),
    ),
    Mutation(
        "shared summary: mean x 1.01",
        EST + "_common.py",
        "value = xp.mean(Q, axis=0)",
        "value = 1.01 * xp.mean(Q, axis=0)",
        O("test_hutchinson") + P("test_hutchinson.py"),
    ),
    Mutation(
        "hutchinson: exact switch one too late (> n)",
        EST + "_common.py",
        "return num_matvecs >= n",
        "return num_matvecs > n",
        ("tests/test_hutchinson.py::test_exact_when_budget_reaches_dimension",),
    ),
    Mutation(
        "block traces: values x 1.01",
        EST + "_blocks.py",
        "value, sem = summarize(bk.xp, Q, exact=exact)",
        "value, sem = summarize(bk.xp, Q, exact=exact)\n    value = 1.01 * value",
        O("test_block_traces") + P("test_hutchinson.py", "test_block_traces_unbiased_detects_one_percent"),
    ),
    Mutation(
        "rademacher probes: variance 1.01 (entries +-1.005)",
        "sketchtrace/_samplers.py",
        "return 1 - 2 * b.astype(dtype)",
        "return 1.005 * (1 - 2 * b.astype(dtype))",
        O("test_hutchinson") + P("test_hutchinson.py"),
    ),
    # --- Hutch++ / NA-Hutch++
    Mutation(
        "hutchpp: value x 1.01",
        EST + "_hutchpp.py",
        "return Estimate(low.sum() + mean[0], sem[0], spent)",
        "return Estimate(1.01 * (low.sum() + mean[0]), sem[0], spent)",
        O("test_hutchpp") + P("test_hutchpp.py"),
    ),
    Mutation(
        "hutchpp: residual term dropped",
        EST + "_hutchpp.py",
        "return Estimate(low.sum() + mean[0], sem[0], spent)",
        "return Estimate(low.sum(), sem[0], spent)",
        O("test_hutchpp") + P("test_hutchpp.py"),
    ),
    Mutation(
        "hutchpp: split off by one (one Hutchinson probe unspent)",
        EST + "_hutchpp.py",
        "return k, m - 2 * k",
        "return k, m - 2 * k - 1",
        O("test_hutchpp") + P("test_hutchpp.py"),
    ),
    Mutation(
        "hutchpp: sketch one vector larger",
        EST + "_hutchpp.py",
        "k = min(-(-m // 3), (m - 1) // 2)",
        "k = min(-(-m // 3) + 1, (m - 1) // 2)",
        O("test_hutchpp") + P("test_hutchpp.py"),
    ),
    Mutation(
        "na_hutchpp: value x 1.01",
        EST + "_hutchpp.py",
        "return Estimate(low + mean[0], sem[0], m)",
        "return Estimate(1.01 * (low + mean[0]), sem[0], m)",
        O("test_na_hutchpp") + P("test_hutchpp.py"),
    ),
    Mutation(
        "na_hutchpp: R sketch off by one",
        EST + "_hutchpp.py",
        "r = max(1, m // 3)",
        "r = max(1, m // 3 + 1)",
        O("test_na_hutchpp") + P("test_hutchpp.py"),
    ),
    # --- XTrace family
    Mutation(
        "xtrace: value x 1.01",
        EST + "_xtrace.py",
        "return Estimate(value[0], sem[0], 2 * k)",
        "return Estimate(1.01 * value[0], sem[0], 2 * k)",
        O("test_xtrace") + P("test_xtrace.py"),
    ),
    Mutation(
        "xtrace: re-sphering n - k instead of n - k + 1",
        EST + "_xtrace.py",
        "quad = quad * ((n - k + 1) / xp.where(unorm2 > 0, unorm2, 1.0))",
        "quad = quad * ((n - k) / xp.where(unorm2 > 0, unorm2, 1.0))",
        O("test_xtrace") + P("test_xtrace.py"),
    ),
    Mutation(
        "xtrace: test vectors (m - 1) // 2",
        "sketchtrace/estimators/_xtrace.py",
        "    k = m // 2\n    Om = bk.probes(key, k, n, bk.probe_dtype(op), sampler)\n    st = xsketch",
        "    k = (m - 1) // 2\n    Om = bk.probes(key, k, n, bk.probe_dtype(op), sampler)\n    st = xsketch",
        O("test_xtrace") + ("tests/test_xtrace.py::test_budget_never_exceeded",),
    ),
    Mutation(
        "xnystrace: value x 1.01",
        EST + "_xtrace.py",
        "return Estimate(value[0], sem[0], m)",
        "return Estimate(1.01 * value[0], sem[0], m)",
        O("test_xnystrace") + P("test_xtrace.py"),
    ),
    Mutation(
        "xnystrace: re-sphering n - k instead of n - k + 1",
        EST + "_xtrace.py",
        "scale = (n - k + 1) * xp.diagonal(Ginv)",
        "scale = (n - k) * xp.diagonal(Ginv)",
        O("test_xnystrace") + P("test_xtrace.py"),
    ),
    # --- diagonal
    Mutation(
        "diagonal (hutchinson): values x 1.01",
        EST + "_diagonal.py",
        "d, s = summarize(xp, V * AV, exact=False)",
        "d, s = summarize(xp, 1.01 * V * AV, exact=False)",
        O("test_diagonal_hutchinson") + P("test_diagonal.py"),
    ),
    Mutation(
        "diagonal (xdiag): values x 1.01",
        EST + "_diagonal.py",
        "d, s = summarize(xp, D, exact=False)",
        "d, s = summarize(xp, 1.01 * D, exact=False)",
        O("test_diagonal_xdiag") + P("test_diagonal.py"),
    ),
    Mutation(
        "xdiag: Hutchinson correction dropped",
        EST + "_xtrace.py",
        "D = base[:, None] - QS * ZS + Om * resid",
        "D = base[:, None] - QS * ZS",
        O("test_diagonal_xdiag") + P("test_diagonal.py"),
    ),
    Mutation(
        "xdiag: symmetry assumed again ((A Q)^T for Q^T A)",
        EST + "_diagonal.py",
        "    if adj is None:\n        return xsketch(bk, op, Om, chunk_size)",
        "    if adj is None or True:\n        return xsketch(bk, op, Om, chunk_size)",
        O("test_diagonal_xdiag") + ("tests/test_diagonal.py::test_xdiag_exact_on_nonsymmetric_low_rank",),
    ),
    # --- adaptive trace
    Mutation(
        "adaptive trace: round value x 1.01",
        EST + "_adaptive.py",
        "value, sem = (v[0] for v in summarize(bk.xp, t[:, None], exact=False))",
        "value, sem = (v[0] for v in summarize(bk.xp, 1.01 * t[:, None], exact=False))",
        O("test_adaptive_x_family", "test_adaptive_hutchinson") + P("test_adaptive.py"),
    ),
    Mutation(
        "adaptive trace: matvecs of a round counted once too few",
        EST + "_adaptive.py",
        "spent += p.per * (k_next - k)",
        "spent += p.per * (k_next - k) - 1",
        O("test_adaptive_x_family", "test_adaptive_hutchinson")
        + ("tests/test_adaptive.py::test_budget_never_exceeded",),
    ),
    # --- predictor-corrector
    Mutation(
        "predictor-corrector: sign flip in the correction",
        EST + "_dynamic.py",
        "c = y - (1.0 - gamma) * x",
        "c = y + (1.0 - gamma) * x",
        O("test_predictor_corrector") + P("test_dynamic.py"),
    ),
    Mutation(
        "predictor-corrector: estimate x 1.01",
        EST + "_dynamic.py",
        "new_T = (1.0 - gamma) * state.estimate + c",
        "new_T = 1.01 * ((1.0 - gamma) * state.estimate + c)",
        O("test_predictor_corrector") + P("test_dynamic.py"),
    ),
    # --- matrix functions (stochastic Lanczos quadrature)
    Mutation(
        "trace_function: value x 1.01",
        EST + "_matfun.py",
        "return Estimate(low + mean[0], sem[0], spent)",
        "return Estimate(1.01 * (low + mean[0]), sem[0], spent)",
        O("test_trace_function_slq", "test_logdet_is_trace_function_log", "test_trace_function_deflated")
        + ("tests/test_matrix_functions.py::test_unbiased_over_probes_and_fails_when_biased",),
    ),
    Mutation(
        "trace_function (deflated): one deflated vector too few",
        EST + "_matfun.py",
        "r = b * DEFLATED_BLOCKS",
        "r = b * DEFLATED_BLOCKS - 1",
        O("test_trace_function_deflated"),
    ),
    Mutation(
        "predictor-corrector: damping (1 - gamma)^2 -> (1 - gamma) in the variance",
        EST + "_dynamic.py",
        "new_var = (1.0 - gamma) ** 2 * state.variance + s2 / R",
        "new_var = (1.0 - gamma) * state.variance + s2 / R",
        O("test_predictor_corrector"),
    ),
]


def _copy_tree(dest: Path):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in ("sketchtrace", "tests", "pinn_adapters"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _apply(dest: Path, mut: Mutation) -> str | None:
    """Apply ``mut`` in the copy; returns an error message when the snippet is not found once."""
    path = dest / mut.path
    src = path.read_text()
    count = src.count(mut.old)
    if count != 1:
        return f"snippet found {count} times in {mut.path}"
    path.write_text(src.replace(mut.old, mut.new))
    return None


def _kind(test_id: str) -> str:
    if test_id.startswith("tests/test_oracles.py"):
        return "oracle"
    if "one_percent" in test_id:
        return "statistical"
    return "other"


def _run(dest: Path, mut: Mutation, timeout: int):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "--no-header", *mut.tests]
    env = dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.time()
    try:
        out = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, [], time.time() - t0, "timeout"
    failed = sorted(set(re.findall(r"^FAILED (\S+)", out.stdout, flags=re.MULTILINE)))
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    return out.returncode, failed, time.time() - t0, summary


def _check_isolation(dest: Path):
    """The copy, not the working tree, must be what the tests import."""
    env = dict(os.environ, PYTHONPATH=str(dest))
    code = "import sketchtrace, sys; print(sketchtrace.__file__)"
    got = subprocess.run(
        [sys.executable, "-c", code], cwd=dest, env=env, capture_output=True, text=True, check=False
    ).stdout
    if not got.strip().startswith(str(dest)):
        raise SystemExit(f"the mutated copy is not imported (got {got.strip()!r}); aborting")


def run_one(mut: Mutation, timeout: int):
    with tempfile.TemporaryDirectory(prefix="st-mut-") as tmp:
        dest = Path(tmp)
        _copy_tree(dest)
        _check_isolation(dest)
        err = _apply(dest, mut)
        if err:
            return {"name": mut.name, "status": "not applied", "detail": err, "killed_by": {}, "seconds": 0.0}
        rc, failed, secs, summary = _run(dest, mut, timeout)
    killed_by: dict[str, list] = {}
    for t in failed:
        killed_by.setdefault(_kind(t), []).append(t.split("::", 1)[1] if "::" in t else t)
    if rc is None:
        status = "timeout"
    elif rc == 0:
        status = "SURVIVED"
    elif failed:
        status = "killed"
    else:
        status = f"error (pytest exit {rc})"
    return {"name": mut.name, "status": status, "detail": summary, "killed_by": killed_by, "seconds": secs}


def _cell(names, limit=2):
    if not names:
        return "-"
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" (+{len(names) - limit})" if len(names) > limit else "")


def table(results) -> str:
    rows = [
        "| mutation | result | oracle tests failing | statistical (1%) tests failing | other tests failing |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        kb = r["killed_by"]
        rows.append(
            f"| {r['name']} | {r['status']} | {_cell(kb.get('oracle'))} | {_cell(kb.get('statistical'))} | "
            f"{_cell(kb.get('other'))} |"
        )
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run the mutations whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutation")
    args = ap.parse_args(argv)
    muts = [m for m in MUTATIONS if args.only.lower() in m.name.lower()]
    if args.list:
        for m in muts:
            print(f"{m.name}  [{m.path}]  tests: {' '.join(m.tests)}")
        return 0
    results = []
    for m in muts:
        r = run_one(m, args.timeout)
        results.append(r)
        print(f"{r['status']:>12}  {r['seconds']:6.1f}s  {m.name}  ({r['detail']})", file=sys.stderr, flush=True)
    print(table(results))
    survived = [r["name"] for r in results if r["status"] != "killed"]
    print(f"\n{len(results) - len(survived)}/{len(results)} killed" + (f"; not killed: {survived}" if survived else ""))
    return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main())
