"""Command line interface: ``sketchtrace trace ...`` plus the commands plugins register.

Other packages add subcommands through the ``sketchtrace.commands`` entry-point
group: each entry point is a function ``register(subparsers)`` that adds its
parser and sets ``func`` (``pinn_adapters`` registers ``sketchtrace pinn``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._optional import HAS_JAX, jax, require_jax
from .validation import check_output_path, option_int

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
        try:
            a = scipy.io.mmread(str(path))
        except (ValueError, OSError, EOFError) as exc:  # scipy names the line ("Line 4: ...")
            raise ValueError(f"PATH {str(path)!r} is not a valid Matrix Market file: {exc}") from exc
        return _check_finite(path, sp.csr_matrix(a) if sp.issparse(a) else np.asarray(a))
    if suffix == ".npz":
        try:
            S = sp.load_npz(str(path)).tocsr()
        except (ValueError, KeyError):
            S = None
        if S is not None:
            return _check_finite(path, S)
        data = _np_load(path)
        with data:
            if len(data.files) != 1:
                raise ValueError(f"PATH {str(path)!r}: a dense .npz must hold exactly one array; found {data.files}")
            return _check_finite(path, np.asarray(data[data.files[0]]))
    if suffix == ".npy":
        return _check_finite(path, _np_load(path))
    raise ValueError(f"PATH must end in .mtx, .npz or .npy; got {path.name!r}")


def _np_load(path):
    """``numpy.load`` without pickles; a clear error naming the file otherwise."""
    try:
        return np.load(str(path), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"PATH {str(path)!r} is not a readable NumPy file: {exc}") from exc


def _check_finite(path, a):
    """Refuse a matrix with NaN or inf entries, naming the file and the first bad entry."""
    import scipy.sparse as sp

    if not (sp.issparse(a) or np.issubdtype(np.asarray(a).dtype, np.number)):
        raise ValueError(f"PATH {str(path)!r} holds {np.asarray(a).dtype} data; expected a numeric matrix")
    values = a.data if sp.issparse(a) else np.asarray(a)
    bad = ~np.isfinite(values)
    if np.any(bad):
        if sp.issparse(a):
            coo = a.tocoo()
            i = int(np.flatnonzero(~np.isfinite(coo.data))[0])
            where = (int(coo.row[i]), int(coo.col[i]))
        else:
            where = tuple(int(j) for j in np.argwhere(bad)[0])
        raise ValueError(
            f"PATH {str(path)!r} has {int(bad.sum())} non-finite entries (NaN or inf), the first at {where}"
        )
    return a


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
    return jax.random.key(seed)


def _exact_trace(a):
    import scipy.sparse as sp

    with np.errstate(over="ignore"):  # an overflowing trace is refused by the caller, with its own message
        return float(a.diagonal().sum()) if sp.issparse(a) else float(np.trace(a))


def check_psd_matrix(a, *, name="PATH", steps=40, seed=0):
    """Refuse a matrix that is not symmetric positive semi-definite, with the reason.

    Cheap certificates of indefiniteness: asymmetry, a negative diagonal entry
    (``e_i^T A e_i < 0``), then ``steps`` Lanczos steps (full reorthogonalisation) whose
    smallest Ritz value, an upper bound on the smallest eigenvalue, is clearly negative.
    A matrix that passes is not proven PSD, but every refusal is a proof.
    """
    import scipy.sparse as sp

    n = a.shape[0]
    scale = float(abs(a).max()) if n else 0.0
    if scale == 0.0:
        return
    asym = abs(a - a.T).max()
    if float(asym) > 1e-10 * scale:
        raise ValueError(
            f"{name}: xnystrace needs a symmetric PSD matrix; this one is not symmetric (max |A - A^T| = {float(asym):.3g})"
        )
    diag = np.asarray(a.diagonal() if sp.issparse(a) else np.diag(a), dtype=float)
    i = int(np.argmin(diag))
    if diag[i] < -1e-12 * scale:
        raise ValueError(
            f"{name}: xnystrace needs a PSD matrix; this one has a negative diagonal entry A[{i}, {i}] = {diag[i]:.6g}, so it is indefinite"
        )
    k = min(steps, n)
    Q = np.zeros((n, k + 1))
    q = np.random.default_rng(seed).standard_normal(n)
    Q[:, 0] = q / np.linalg.norm(q)
    T = np.zeros((k, k))
    for j in range(k):
        av = np.asarray(a @ Q[:, j], dtype=float).ravel()
        h = Q[:, : j + 1].T @ av
        w = av - Q[:, : j + 1] @ h
        w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)  # reorthogonalise twice
        T[: j + 1, j] = T[j, : j + 1] = h
        beta = np.linalg.norm(w)
        if beta < 1e-12 * scale or j + 1 == k:
            k = j + 1
            break
        Q[:, j + 1] = w / beta
    ritz = np.linalg.eigvalsh((T[:k, :k] + T[:k, :k].T) / 2)
    if ritz[0] < -1e-8 * max(abs(ritz[-1]), scale):
        raise ValueError(
            f"{name}: xnystrace needs a PSD matrix; this one has an eigenvalue <= {ritz[0]:.6g} "
            f"(Lanczos Ritz value; the largest is about {ritz[-1]:.6g}), so it is indefinite. "
            "Use --method hutchinson, hutchpp or xtrace"
        )


def _check_float32_range(a, name):
    """JAX runs in float32 unless ``--x64``: refuse entries that would overflow to inf in the conversion
    (the estimators would report the operator's inf, not the file's range)."""
    import scipy.sparse as sp

    values = a.data if sp.issparse(a) else a
    if values.size and np.issubdtype(values.dtype, np.floating) and values.dtype.itemsize > 4:
        big = float(np.max(np.abs(values)))
        limit = float(np.finfo(np.float32).max)
        if big > limit:
            raise ValueError(
                f"{name}: entries up to {big:.3g} exceed float32's range ({limit:.3g}), in which --backend jax "
                "runs by default; use --x64 (float64) or --backend numba"
            )


def _timed(fn, key_fn, op, matvecs):
    """``(estimate, value, seconds, first_call_seconds)``: a first call (which compiles) and a timed
    second one with the same key (so the same estimate); the table's seconds exclude compilation."""
    t0 = time.perf_counter()
    first = fn(key_fn(), op, num_matvecs=matvecs)
    float(first.value)
    t1 = time.perf_counter()
    est = fn(key_fn(), op, num_matvecs=matvecs)
    value = float(est.value)
    return est, value, time.perf_counter() - t1, t1 - t0


def run_trace(args) -> dict:
    import sketchtrace as st

    if args.demo == (args.path is not None):
        raise ValueError("give exactly one of PATH or --demo")
    if args.x64 and args.backend != "jax":
        raise ValueError(f"--x64 is for --backend jax (the {args.backend} backend runs in the matrix's own dtype)")
    if args.backend == "jax":
        require_jax("--backend jax (use --backend numba without it)")
    if args.json:
        check_output_path(args.json, name="--json")  # before any work
    methods = _available_methods()
    names = list(methods) if (args.demo and args.method is None) else [args.method or "hutchinson"]
    if args.method is not None:  # an empty --method is refused, not read as the default
        names = [args.method]
    for name in names:
        if name not in methods:
            got = "an empty value" if not name.strip() else repr(name)
            raise ValueError(f"--method must be one of {sorted(methods)}; got {got}")
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    a = demo_matrix() if args.demo else load_matrix(args.path)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"PATH {str(args.path)!r}: the matrix must be square; got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"PATH {str(args.path)!r}: the matrix is empty (shape {a.shape}); expected at least one row")
    if args.backend == "jax" and not jax.config.jax_enable_x64:
        _check_float32_range(a, f"PATH {str(args.path)!r}")
    if "xnystrace" in names and not args.demo:
        check_psd_matrix(a, name=f"PATH {str(args.path)!r}")
    source = "demo: n=2000 PSD matrix, eigenvalues i^-2" if args.demo else str(args.path)
    exact = _exact_trace(a)
    if not np.isfinite(exact):
        raise ValueError(
            f"PATH {str(args.path)!r}: the trace overflows (the diagonal sums to {exact}); scale the matrix"
        )
    op = st.as_operator(a)
    rows = []
    for name in names:
        fn = methods[name]
        key_fn = lambda: _make_key(args.seed, args.backend)  # noqa: E731
        est, value, elapsed, first = _timed(fn, key_fn, op, args.matvecs)
        rows.append(
            {
                "method": name,
                "estimate": value,
                "sem": float(est.sem),
                "num_matvecs": int(est.num_matvecs),
                "exact": exact,
                "rel_error": abs(value - exact) / abs(exact) if exact else None,
                "seconds": elapsed,
                "first_call_seconds": first,
            }
        )
    _print_table(source, a, args, exact, rows)
    if args.json:
        _write_text_atomic(Path(args.json), json.dumps({"source": source, "results": rows}, indent=2))
    return {"source": source, "results": rows}


def _print_table(source, a, args, exact, rows):
    print(f"matrix: {source}  shape {a.shape}  backend {args.backend}  seed {args.seed}")
    print(f"exact trace: {exact:.10g}")
    print(
        f"{'method':<12} {'estimate':>14} {'std. error':>11} {'matvecs':>8} {'rel. error':>11} {'seconds':>8} "
        f"{'1st call':>9}"
    )
    for r in rows:
        rel = "n/a" if r["rel_error"] is None else f"{r['rel_error']:.2e}"
        print(
            f"{r['method']:<12} {r['estimate']:>14.8g} {r['sem']:>11.3g} {r['num_matvecs']:>8d} "
            f"{rel:>11} {r['seconds']:>8.3f} {r['first_call_seconds']:>9.3f}"
        )
    print("seconds: a second call with the same key (compilation excluded); 1st call: with compilation")


def _write_text_atomic(path: Path, text: str) -> None:
    """A temporary file in the same directory, fsynced, then ``os.replace``: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block), exit status 2.

    Abbreviated options are not accepted: ``--gamma`` must not silently mean ``--gammas``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _check_value(self, action, value):
        # an unknown subcommand is named with the choices, as every other error is
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            what = action.metavar or action.dest.upper()
            raise argparse.ArgumentError(None, f"{what} must be one of {sorted(action.choices)}; got {value!r}")
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sketchtrace", description="Randomized matrix-free trace estimation.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="estimate the trace of a matrix file (.mtx, .npz, .npy) or of the demo matrix")
    t.add_argument("path", nargs="?", help="matrix file: Matrix Market .mtx, scipy sparse .npz, or .npy")
    t.add_argument("--demo", action="store_true", help="use the built-in demo matrix (compares all methods)")
    t.add_argument(
        "--method",
        default=None,
        help=f"one of {', '.join(TRACE_METHODS)} (default hutchinson; --demo: all)",
    )
    t.add_argument("--matvecs", type=option_int(1), default=60, help="matvec budget (default 60)")
    t.add_argument("--seed", type=option_int(0), default=0)
    t.add_argument("--backend", choices=("jax", "numba"), default="jax" if HAS_JAX else "numba")
    t.add_argument("--x64", action="store_true", help="run JAX in float64 (--backend jax only)")
    t.add_argument("--json", default=None, help="also write the results to this JSON file")
    t.set_defaults(func=run_trace)

    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
        except ImportError as exc:  # its dependencies are missing (pinn needs JAX): say so when it is called
            _unavailable_command(sub, ep.name, exc)
            continue
        register(sub)
    return p


def _unavailable_command(sub, name: str, exc: ImportError) -> None:
    """A command whose plugin cannot be imported: listed, and its use names the import error."""
    c = sub.add_parser(name, help=f"(unavailable: {exc})", add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER)

    def fail(args):
        raise ImportError(f"the {name!r} command cannot be loaded: {exc}")

    c.set_defaults(func=fail)


def main(argv=None) -> int:
    """Run a command; any error is one line on stderr naming the option or file, exit status 2
    (``--debug``, anywhere on the line, shows the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args([a for a in argv if a != "--debug"])
        if unknown:  # a command may add a hint (e.g. where the options belong)
            hint = getattr(args, "unknown_hint", None)
            hint = hint(args) if hint is not None else None
            parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({hint})" if hint else ""))
    except SystemExit as exc:  # argparse printed its one-line error (or the help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        args.func(args)
    except (Exception, SystemExit) as exc:  # the command line never shows a traceback
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return 0
        if debug:
            raise
        message = " ".join(str(exc.code if isinstance(exc, SystemExit) else exc).split())
        kind = "" if isinstance(exc, (ValueError, TypeError, OSError, SystemExit)) else f"{type(exc).__name__}: "
        print(f"sketchtrace {args.command}: error: {kind}{message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
