"""Command line interface: ``sketchtrace trace ...`` plus the commands plugins register.

Other packages add subcommands through the ``sketchtrace.commands`` entry-point
group: each entry point is a function ``register(subparsers)`` that adds its
parser and sets ``func`` (``pinn_adapters`` registers ``sketchtrace pinn``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

PLUGIN_GROUP = "sketchtrace.commands"
TRACE_METHODS = ("hutchinson", "hutchpp", "na_hutchpp", "xtrace", "xnystrace")


def load_matrix(path):
    """Load a matrix from Matrix Market (``.mtx``), ``.npz`` (scipy sparse or one dense array) or ``.npy``."""
    import scipy.io
    import scipy.sparse as sp

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"PATH {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".mtx" or path.name.endswith(".mtx.gz"):
        a = scipy.io.mmread(str(path))
        return sp.csr_matrix(a) if sp.issparse(a) else np.asarray(a)
    if suffix == ".npz":
        try:
            return sp.load_npz(str(path)).tocsr()
        except (ValueError, KeyError):
            with np.load(str(path)) as data:
                if len(data.files) != 1:
                    raise ValueError(
                        f"PATH {str(path)!r}: a dense .npz must hold exactly one array; found {data.files}"
                    ) from None
                return np.asarray(data[data.files[0]])
    if suffix == ".npy":
        return np.load(str(path))
    raise ValueError(f"PATH must end in .mtx, .npz or .npy; got {path.name!r}")


def demo_matrix(n=2000, seed=0):
    """The built-in default problem: a PSD matrix ``Q diag(i^-2) Q^T`` (polynomial decay)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q *= np.sign(np.diag(r))
    eigs = np.arange(1, n + 1, dtype=float) ** -2.0
    return (q * eigs) @ q.T


def _available_methods():
    import sketchtrace as st

    return {m: getattr(st, m) for m in TRACE_METHODS}


def _make_key(seed: int, backend: str):
    if backend == "numba":
        return np.random.default_rng(seed)
    import jax

    return jax.random.key(seed)


def _exact_trace(a):
    import scipy.sparse as sp

    if sp.issparse(a):
        return float(a.diagonal().sum())
    return float(np.trace(a))


def run_trace(args) -> dict:
    import jax

    import sketchtrace as st

    if args.demo == (args.path is not None):
        raise SystemExit("sketchtrace trace: give exactly one of PATH or --demo")
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    methods = _available_methods()
    names = list(methods) if (args.demo and args.method is None) else [args.method or "hutchinson"]
    for name in names:
        if name not in methods:
            raise SystemExit(f"sketchtrace trace: --method must be one of {sorted(methods)}; got {name!r}")
    a = demo_matrix() if args.demo else load_matrix(args.path)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise SystemExit(f"sketchtrace trace: the matrix must be square; got shape {a.shape}")
    source = "demo: n=2000 PSD matrix, eigenvalues i^-2" if args.demo else str(args.path)
    exact = _exact_trace(a)
    op = st.as_operator(a)
    rows = []
    for name in names:
        fn = methods[name]
        key = _make_key(args.seed, args.backend)
        t0 = time.perf_counter()
        est = fn(key, op, num_matvecs=args.matvecs)
        value = float(est.value)
        elapsed = time.perf_counter() - t0
        rows.append(
            {
                "method": name,
                "estimate": value,
                "sem": float(est.sem),
                "num_matvecs": int(est.num_matvecs),
                "exact": exact,
                "rel_error": abs(value - exact) / abs(exact) if exact else None,
                "seconds": elapsed,
            }
        )
    print(f"matrix: {source}  shape {a.shape}  backend {args.backend}  seed {args.seed}")
    print(f"exact trace: {exact:.10g}")
    print(f"{'method':<12} {'estimate':>14} {'std. error':>11} {'matvecs':>8} {'rel. error':>11} {'seconds':>8}")
    for r in rows:
        rel = "n/a" if r["rel_error"] is None else f"{r['rel_error']:.2e}"
        print(
            f"{r['method']:<12} {r['estimate']:>14.8g} {r['sem']:>11.3g} {r['num_matvecs']:>8d} "
            f"{rel:>11} {r['seconds']:>8.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "results": rows}, indent=2))
    return {"source": source, "results": rows}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sketchtrace", description="Randomized matrix-free trace estimation.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="estimate the trace of a matrix file (.mtx, .npz, .npy) or of the demo matrix")
    t.add_argument("path", nargs="?", help="matrix file: Matrix Market .mtx, scipy sparse .npz, or .npy")
    t.add_argument("--demo", action="store_true", help="use the built-in demo matrix (compares all methods)")
    t.add_argument("--method", default=None, help=f"one of {', '.join(TRACE_METHODS)} (default hutchinson)")
    t.add_argument("--matvecs", type=int, default=60, help="matvec budget (default 60)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--backend", choices=("jax", "numba"), default="jax")
    t.add_argument("--x64", action="store_true", help="run JAX in float64")
    t.add_argument("--json", default=None, help="also write the results to this JSON file")
    t.set_defaults(func=run_trace)

    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        ep.load()(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"sketchtrace {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
