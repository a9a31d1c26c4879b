"""Argument checks shared by every estimator (clear errors naming the argument)."""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import threading

import numpy as np

from ._optional import HAS_JAX, JaxArray, jax, register_static, tree_leaves


def check_num_matvecs(num_matvecs, *, name: str = "num_matvecs", minimum: int = 1) -> int:
    """Return ``num_matvecs`` as a Python int, or raise naming the argument."""
    v = (
        num_matvecs
        if isinstance(num_matvecs, numbers.Integral) and not isinstance(num_matvecs, (bool, np.bool_))
        else None
    )
    if v is None:  # a static budget: NumPy integers are fine, (possibly traced) arrays are not
        raise TypeError(
            f"{name} must be a Python integer (a static budget in matvecs); "
            f"got {type(num_matvecs).__name__} {num_matvecs!r}"
        )
    num_matvecs = int(v)
    if num_matvecs < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {num_matvecs}")
    return num_matvecs


def check_chunk_size(chunk_size):
    if chunk_size is None:
        return None
    return check_num_matvecs(chunk_size, name="chunk_size")


def check_square(op, *, name: str = "op") -> int:
    m, n = op.shape
    if m != n:
        raise ValueError(
            f"{name} must be square for trace estimation; got shape {op.shape}. "
            "For a rectangular Jacobian J use sketchtrace.gram(J) (J J^T or J^T J)."
        )
    if n == 0:
        raise ValueError(f"{name} is empty (shape {tuple(op.shape)}); expected at least one row")
    return n


def check_float_dtype(dtype, *, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be a NumPy/JAX dtype; got {dtype!r}") from exc
    if not np.issubdtype(dt, np.floating):
        raise TypeError(
            f"{name} must be a real floating dtype (float32 or float64); got {dt}. "
            "Integer, boolean and complex operators are not supported."
        )
    return dt


def check_choice(value, choices, *, name: str):
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {value!r}")
    return value


def is_concrete(x) -> bool:
    """Whether ``x`` holds values (not a JAX tracer inside ``jit``/``vmap``/``grad``).

    Value-dependent checks (finiteness, PSD checks, adaptive stopping) run only on
    concrete values; under tracing they are skipped or refused.
    """
    return not (HAS_JAX and isinstance(x, jax.core.Tracer))


class _Deferred(threading.local):
    trace = None  # the top-level trace of the eager program being traced
    flags: list | None = None


_DEFERRED = _Deferred()


@contextlib.contextmanager
def _deferred_checks(trace):
    """Collect the value checks that tracing would skip, while an eager call's program is traced.

    ``trace``: the program's own (top-level) JAX trace. A check on a tracer of that trace records its
    condition (a traced boolean) through :func:`_defer_check`; checks inside a nested loop, ``vmap`` or
    ``jit`` body are not recorded (their tracers cannot leave it). Yields the list of conditions: the
    program returns them, and a failed one makes the caller rerun the call eagerly, where the check
    raises its own error instead of a silent wrong value.
    """
    prev = _DEFERRED.trace, _DEFERRED.flags
    _DEFERRED.trace, _DEFERRED.flags = trace, []
    try:
        yield _DEFERRED.flags
    finally:
        _DEFERRED.trace, _DEFERRED.flags = prev


def _defer_check(x, condition) -> None:
    """Record ``condition(x)`` (a traced boolean: the check passes) for the enclosing eager program, when
    ``x`` is a tracer of that program's own trace (see :func:`_deferred_checks`); otherwise nothing."""
    top = _DEFERRED.trace  # None outside an eager program (or on a JAX whose tracers lack ``_trace``): nothing
    if top is not None and getattr(x, "_trace", None) is top:
        _DEFERRED.flags.append(condition(x))


def _scalar(value, kind):
    """``value`` as a Python scalar of ``kind`` (``numbers.Integral`` / ``numbers.Real``), or ``None``.

    Python, NumPy and concrete JAX scalars (0-d arrays) of a matching dtype are accepted;
    booleans, strings, arrays with more than one element and tracers are not.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, kind):
        return value
    if hasattr(value, "dtype") and hasattr(value, "shape") and tuple(value.shape) == () and is_concrete(value):
        dt = np.dtype(value.dtype) if not hasattr(value.dtype, "is_floating_point") else None
        if dt is None or dt == np.bool_:
            return None
        if np.issubdtype(dt, np.integer) or (kind is numbers.Real and np.issubdtype(dt, np.floating)):
            return np.asarray(value).item()
    return None


def _is_number(value, kind) -> bool:
    """A Python, NumPy or concrete JAX scalar of ``kind``, not a bool."""
    return _scalar(value, kind) is not None


def _got(value) -> str:
    return f"{type(value).__name__} {value!r}"


def check_int(value, *, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` (a Python, NumPy or JAX integer) as a Python int in ``[minimum, maximum]``, or raise naming ``name``."""
    if minimum is not None and maximum is not None:
        want = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an integer >= {minimum}"
    elif maximum is not None:
        want = f"an integer <= {maximum}"
    else:
        want = "an integer"
    v = _scalar(value, numbers.Integral)
    if v is None:
        raise TypeError(f"{name} must be {want}; got {_got(value)}")
    value = int(v)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {want}; got {value}")
    return value


def check_positive_int(value, *, name: str) -> int:
    """An integer ``>= 1`` (counts: probes, steps, points, refresh periods)."""
    return check_int(value, name=name, minimum=1)


def check_real(value, *, name: str, low=None, high=None, low_open=False, high_open=False) -> float:
    """``value`` (a Python, NumPy or JAX real number) as a finite Python float in the given range.

    ``low``/``high`` are bounds (``None``: unbounded), closed unless ``low_open``/``high_open``.
    """
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    want = f"a real number in {lo or '(-inf'}, {hi or 'inf)'}"
    v = _scalar(value, numbers.Real)
    if v is None:
        raise TypeError(f"{name} must be {want}; got {_got(value)}")
    value = float(v)
    bad = not np.isfinite(value)
    bad |= low is not None and (value <= low if low_open else value < low)
    bad |= high is not None and (value >= high if high_open else value > high)
    if bad:
        raise ValueError(f"{name} must be {want}; got {value!r}")
    return value


def check_probability(value, *, name: str, low_open=False, high_open=False) -> float:
    """A number in ``[0, 1]`` (ends open as asked): damping factors, momenta, fractions."""
    return check_real(value, name=name, low=0, high=1, low_open=low_open, high_open=high_open)


def check_optional(check, value, *, name: str, **kwargs):
    """``None`` or ``check(value, name=name, **kwargs)``."""
    return None if value is None else check(value, name=name, **kwargs)


def check_bool(value, *, name: str) -> bool:
    """``True`` or ``False`` (NumPy booleans too); anything else is refused, not coerced."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False; got {_got(value)}")


def check_callable(value, *, name: str, what: str = "a callable"):
    if not callable(value):
        raise TypeError(f"{name} must be {what}; got {_got(value)}")
    return value


def check_jax_key(key, *, name: str = "key"):
    """A JAX PRNG key (``jax.random.key(seed)``, or a legacy ``uint32[2]`` ``PRNGKey``)."""
    dt = getattr(key, "dtype", None)
    if isinstance(key, (JaxArray, np.ndarray)) and dt is not None:
        if jax.dtypes.issubdtype(dt, jax.dtypes.prng_key) or (dt == np.uint32 and tuple(key.shape[-1:]) == (2,)):
            return key
    raise TypeError(f"{name} must be a JAX key (jax.random.key(seed)); got {type(key).__name__}")


def check_generator(rng, *, name: str = "rng"):
    """A ``numpy.random.Generator`` (``numpy.random.default_rng(seed)``)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy.random.Generator (numpy.random.default_rng(seed)); got {type(rng).__name__}"
        )
    return rng


def check_blocks(mapping, names, *, name: str, allow_empty: bool = False):
    """A mapping with exactly the block ``names`` (no extra, no missing; non-empty entries).

    Every entry's leaves must be arrays with a leading point axis of length >= 1
    (unless ``allow_empty``).
    """
    from collections.abc import Mapping

    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a dict block name -> arrays; got {type(mapping).__name__}")
    missing = [n for n in names if n not in mapping]
    extra = sorted(str(k) for k in mapping if k not in names)
    if missing or extra:
        parts = ([f"missing block(s) {missing}"] if missing else []) + ([f"unknown block(s) {extra}"] if extra else [])
        raise ValueError(f"{name}: {' and '.join(parts)}; the blocks are {list(names)}")
    for n in names:
        leaves = tree_leaves(mapping[n])
        if not leaves:
            raise ValueError(f"{name}[{n!r}] is empty; expected arrays of points")
        for x in leaves:
            shape = np.shape(x)
            if not allow_empty and (len(shape) == 0 or shape[0] == 0):
                what = "a scalar" if len(shape) == 0 else "no points (a leading axis of length 0)"
                raise ValueError(f"{name}[{n!r}] holds {what}; expected shape (n, ...) with n >= 1")
    return mapping


def check_points(x, *, name: str, ndim: int | tuple = (1, 2), dtype_kind: str = "f"):
    """Points as an array (lists are converted): numeric of the right kind, ``ndim`` in ``ndim``, finite."""
    try:
        a = x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of points; could not convert {type(x).__name__}: {exc}") from None
    kinds = {"f": "floating", "i": "integer", "n": "numeric"}
    dt = np.dtype(a.dtype) if not hasattr(a.dtype, "is_floating_point") else None
    ok = dt is not None and (
        np.issubdtype(dt, np.floating)
        if dtype_kind == "f"
        else np.issubdtype(dt, np.integer)
        if dtype_kind == "i"
        else np.issubdtype(dt, np.number) and dt != np.bool_
    )
    if dtype_kind == "f" and dt is not None and np.issubdtype(dt, np.integer):
        ok = True  # integer coordinates are promoted by the caller
    if not ok:
        raise TypeError(f"{name} must hold {kinds[dtype_kind]} numbers; got dtype {a.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if a.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimension(s); got shape {tuple(a.shape)}")
    if is_concrete(a) and not bool(np.all(np.isfinite(np.asarray(a)))):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return a


def check_same_structure(tree, reference, *, name: str, reference_name: str = "the reference"):
    """``tree`` has the structure, leaf shapes and dtypes of ``reference``; else raise naming the leaf.

    ``reference`` may be a pytree of arrays or of ``jax.ShapeDtypeStruct``.
    """
    got = jax.tree_util.tree_flatten_with_path(tree)[0]
    want = jax.tree_util.tree_flatten_with_path(reference)[0]
    got_paths = {jax.tree_util.keystr(p): x for p, x in got}
    want_paths = {jax.tree_util.keystr(p): x for p, x in want}
    missing = [p for p in want_paths if p not in got_paths]
    extra = [p for p in got_paths if p not in want_paths]
    if missing or extra:
        raise ValueError(
            f"{name} has another structure than {reference_name}: "
            + (f"missing leaves {missing[:5]}" if missing else "")
            + (" and " if missing and extra else "")
            + (f"unexpected leaves {extra[:5]}" if extra else "")
        )
    for p, w in want_paths.items():
        g = got_paths[p]
        gs, ws = tuple(np.shape(g)), tuple(np.shape(w))
        if gs != ws:
            raise ValueError(f"{name}{p} has shape {gs}; {reference_name} has {ws}")
        gd, wd = getattr(g, "dtype", None), getattr(w, "dtype", None)
        if gd is not None and wd is not None and np.dtype(gd) != np.dtype(wd):
            raise ValueError(f"{name}{p} has dtype {np.dtype(gd)}; {reference_name} has {np.dtype(wd)}")
    return tree


def tree_signature(tree) -> tuple:
    """``((path, shape, dtype), ...)`` of a pytree's leaves: static (hashable), also for tracers."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dt = getattr(x, "dtype", None)
        out.append((jax.tree_util.keystr(path), tuple(np.shape(x)), type(x).__name__ if dt is None else str(dt)))
    return tuple(out)


def check_signature(tree, signature, *, name: str, made_for: str = "the state was made for"):
    """Refuse a pytree whose :func:`tree_signature` differs from ``signature``, naming the leaf."""
    got = tree_signature(tree)
    if got == tuple(signature):
        return tree
    g = {p: (s, d) for p, s, d in got}
    w = {p: (s, d) for p, s, d in signature}
    missing = [p for p in w if p not in g]
    extra = [p for p in g if p not in w]
    if missing or extra:
        parts = ([f"lacks the leaves {missing[:4]}"] if missing else []) + (
            [f"has the unexpected leaves {extra[:4]}"] if extra else []
        )
        raise ValueError(f"{name} changed structure: it {' and '.join(parts)} ({made_for} another structure)")
    for p, (shape, dtype) in w.items():
        if g[p] != (shape, dtype):
            raise ValueError(
                f"{name}{p} has shape {g[p][0]} and dtype {g[p][1]}; {made_for} shape {shape} and dtype {dtype}"
            )
    return tree


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """What made a state: the maker's name, its configuration and the shapes it was built for.

    Static pytree metadata (no leaves): it survives ``jit``, ``vmap``, ``lax.cond`` and
    ``jax.eval_shape`` unchanged and is compared at trace time, never traced. ``config``
    and ``shapes`` are tuples of ``(field, value)`` pairs of hashable values.
    """

    maker: str
    config: tuple = ()
    shapes: tuple = ()

    @classmethod
    def build(cls, maker: str, config: dict, shapes: dict):
        def freeze(v):
            if isinstance(v, dict):
                return tuple(sorted((str(k), freeze(x)) for k, x in v.items()))
            if isinstance(v, (list, tuple)):
                return tuple(freeze(x) for x in v)
            try:
                hash(v)
            except TypeError:
                return repr(v)
            return v if not callable(v) or isinstance(v, type) else getattr(v, "__qualname__", repr(v))

        return cls(maker, freeze(config), freeze(shapes))


def check_state_spec(spec, expected: StateSpec, *, name: str = "state"):
    """Refuse a state whose :class:`StateSpec` differs from ``expected``, naming the first differing field.

    ``spec=None`` (a state rebuilt from bare arrays) is accepted: only its shapes can be checked.
    """
    if spec is None:
        return
    if not isinstance(spec, StateSpec):
        raise TypeError(f"{name}.spec must be a StateSpec; got {type(spec).__name__}")
    if spec.maker != expected.maker:
        raise ValueError(f"{name} was made by {spec.maker}; this is {expected.maker}")
    for what, mine, theirs in (
        ("configuration", spec.config, expected.config),
        ("shape", spec.shapes, expected.shapes),
    ):
        a, b = dict(mine), dict(theirs)
        for field in list(b) + [k for k in a if k not in b]:
            if a.get(field, "<unset>") != b.get(field, "<unset>"):
                raise ValueError(
                    f"{name} does not match this {expected.maker}: it was made for {field}={a.get(field, '<unset>')!r} "
                    f"({what}); this call has {field}={b.get(field, '<unset>')!r}. Use the state made by this "
                    "object's init (or a previous update) with the same configuration and shapes"
                )


register_static(StateSpec)  # nothing to register without JAX


def check_csr(S, *, name: str = "op"):
    """Full structural check of a SciPy CSR matrix (``indptr`` monotone and within ``data``,
    column indices in range) before compiled kernels index memory with it."""
    try:
        S.check_format(full_check=True)
    except ValueError as exc:
        raise ValueError(
            f"{name}: corrupt sparse matrix: {exc} (scipy check_format); rebuild it with scipy.sparse.csr_matrix"
        ) from None
    return S


def check_matvec_output(y, shape, *, what: str):
    """Refuse an operator output of the wrong shape or a complex one (before it is cast and used)."""
    y = np.asarray(y)
    if np.iscomplexobj(y):
        raise TypeError(
            f"{what} returned complex values (dtype {y.dtype}); sketchtrace estimates traces of real operators "
            "(the imaginary part would be dropped)"
        )
    if y.shape != tuple(shape):
        raise ValueError(f"{what} returned shape {y.shape}; expected {tuple(shape)}")
    return y


def probe_matvec(matvec, shape, dtype, *, what: str):
    """Call a host-side ``matvec`` once on a zero vector and check its output (shape, real).

    Used at setup for operators whose output cannot be checked statically (SciPy
    ``LinearOperator``, Python callables), so a wrong shape is reported up front.
    """
    try:
        y = matvec(np.zeros(shape[1], dtype))
    except Exception as exc:  # any failure of user code, reported with its origin
        raise ValueError(f"{what} failed on a probe of shape ({shape[1]},): {type(exc).__name__}: {exc}") from exc
    if np.shape(y) == (shape[0], 1):  # SciPy's own convention allows a column
        y = np.asarray(y)[:, 0]
    check_matvec_output(y, (shape[0],), what=what)


def scipy_raw_matvec(L):
    """The user's matvec of a SciPy ``LinearOperator`` without SciPy's reshape of its output
    (which would hide a wrong output shape behind a reshape error)."""
    return getattr(L, "_matvec", L.matvec)


def check_output_path(path, *, name: str = "output"):
    """Refuse (before any work) an output file that cannot be written: a directory, or a
    parent that is missing, not a directory (e.g. under a regular file) or not writable."""
    import os

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a directory; expected a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{name}: cannot write {path!r}: {parent!r} is a file, not a directory")
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{name}: the directory {parent!r} of {path!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: the directory {parent!r} of {path!r} is not writable")
    return path


def check_output_dir(path, *, name: str = "output directory"):
    """Refuse (before any work) an output directory that cannot be created or written:
    the path or one of its ancestors is a regular file, or the nearest existing
    ancestor is not writable."""
    import os

    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{name}: cannot create {path!r}: {probe!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: {probe!r} is not writable (needed for {path!r})")
    return path


OPTION_INT_MAX = 2**31 - 1  # JAX's default integers are 32-bit: larger counts and seeds would overflow


def option_int(minimum: int, maximum: int = OPTION_INT_MAX):
    """An ``argparse`` type: an integer in ``[minimum, maximum]``; argparse names the option in the error
    (``argument --seed: expected an integer >= 0; got -1``)."""
    import argparse

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum} and <= {maximum}; got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def option_real(low=None, high=None, *, low_open=False, high_open=False):
    """An ``argparse`` type: a finite real number in the range (see :func:`check_real`); overflow
    (``1e400``) and NaN are refused, and argparse names the option in the error."""
    import argparse

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
        try:
            return check_real(value, name="value", low=low, high=high, low_open=low_open, high_open=high_open)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError("expected " + str(exc).split(" must be ", 1)[1]) from None

    parse.__name__ = "number"
    return parse


def option_choice(choices):
    """An ``argparse`` type: one of ``choices`` (a non-empty string; an empty one is named as such)."""
    import argparse

    def parse(text):
        if text.strip() == "":
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}; got an empty value")
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}; got {text!r}")
        return text

    parse.__name__ = "choice"
    return parse


def check_sampler(value, *, name: str = "sampler", allow_none: bool = True):
    """A probe distribution's name (a string), a callable sampler, or ``None`` (the estimator's default).

    Only the kind is checked here; each estimator checks the name against the distributions it
    offers (XTrace's ``"improved"`` is not Hutchinson's).
    """
    if (value is None and allow_none) or isinstance(value, str) or callable(value):
        return value
    want = "a sampler name (str), a callable" + (" or None" if allow_none else "")
    raise TypeError(f"{name} must be {want}; got {_got(value)}")
