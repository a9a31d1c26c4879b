"""Eager JAX calls as one cached compiled program (the filtered-jit pattern).

Called eagerly, a JAX estimator would dispatch every small array operation on its own
(about a hundred XLA programs for one ``hutchinson`` call, each compiled on first use).
:func:`eager_compiled` wraps an estimator so that an eager call with a JAX key instead

1. validates the operator eagerly (``get_backend``: the errors and messages of an eager call);
2. splits the arguments into array leaves (the program's inputs: key, matrices, a Jacobian's
   point) and everything else (the static configuration: ``num_matvecs``, sampler, operator
   structure and its functions, shapes and dtypes);
3. runs one ``jax.jit`` program per estimator, configuration and operator structure, compiled
   on the first call and cached (least recently used, at most :data:`CACHE_SIZE`).

Calls through directly (unchanged behaviour) when already tracing (inside the user's
``jax.jit``/``vmap``/``grad``: an argument is a tracer), for a numpy or torch key, with
``mesh=`` or a forced non-JAX backend, when the configuration is not hashable, when
tracing it fails (e.g. ``xnystrace(check_psd=True)``, which inspects values: the eager call
then raises or runs as before), and for operators rebuilt around a fresh closure on every
call (a new function object with the same code as a cached one: compiling per call would
cost more than eager dispatch). Value checks that only run eagerly (non-finite products)
are kept: a non-finite estimate is recomputed eagerly, which raises the eager error.

A ``FunctionOperator``'s function must be a pure JAX function. It is traced when the estimator is
called (the arrays it reads become the program's inputs, so they are never stale) unless the same
code reading the same immutable objects was traced before (:class:`_TraceMemo`): then the earlier
trace is reused, so a function rebuilt per call around the same arrays costs no trace.
"""

from __future__ import annotations

import collections
import functools
import re
import types
import weakref

import numpy as np

from .._optional import jax, jnp
from ..validation import _deferred_checks

#: Compiled programs kept per estimator (least recently used dropped first).
CACHE_SIZE = 64

#: Programs traced (one compilation each) per estimator name; read by the tests.
TRACES: collections.Counter = collections.Counter()

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _is_array(x) -> bool:
    return isinstance(x, jax.Array) or (isinstance(x, np.ndarray) and x.dtype != object)


def _signature(dyn):
    return tuple((x.shape, x.dtype, bool(getattr(x, "weak_type", False)), isinstance(x, jax.Array)) for x in dyn)


class _Program:
    """One compiled program: the jitted function and the static part of its output."""

    __slots__ = ("run", "out_tree", "out_static", "out_mask")

    def __init__(self, fn, name, treedef, static, mask):
        def traced(dyn):
            TRACES[name] += 1
            it = iter(dyn)
            leaves = [next(it) if m else s for m, s in zip(mask, static)]
            key, op, args, kwargs, consts = jax.tree_util.tree_unflatten(treedef, leaves)
            op = _bind_functions(op, consts)
            with _deferred_checks(getattr(dyn[0], "_trace", None)) as checks:  # dyn[0]: the key
                out_leaves, self.out_tree = jax.tree_util.tree_flatten(fn(key, op, *args, **kwargs))
            self.out_mask = tuple(isinstance(x, jax.Array) for x in out_leaves)
            self.out_static = tuple(None if m else x for m, x in zip(self.out_mask, out_leaves))
            passed = jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)
            return [passed] + [x for m, x in zip(self.out_mask, out_leaves) if m]

        self.run = jax.jit(traced)

    def __call__(self, dyn):
        """``(output, whether the value checks skipped by tracing passed)``."""
        passed, *rest = self.run(dyn)
        it = iter(rest)
        leaves = [next(it) if m else s for m, s in zip(self.out_mask, self.out_static)]
        return jax.tree_util.tree_unflatten(self.out_tree, leaves), passed


def _finite(out) -> bool:
    from .._estimate import Estimate

    leaves = [out.value] if isinstance(out, Estimate) else jax.tree_util.tree_leaves(out)
    for x in leaves:
        if isinstance(x, jax.Array) and np.issubdtype(x.dtype, np.inexact) and not bool(np.isfinite(x).all()):
            return False
    return True


class _JaxprFn:
    """A ``FunctionOperator``'s function as its traced program: static by the program's text,
    with the arrays it reads (closed over or global) passed in as inputs on every call."""

    __slots__ = ("jaxpr", "text")

    def __init__(self, jaxpr):
        self.jaxpr, self.text = jaxpr, str(jaxpr)

    def __eq__(self, other):
        return isinstance(other, _JaxprFn) and other.text == self.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return f"_JaxprFn({hash(self.text)})"


_FN_FIELDS = (("fn", 1), ("rmatvec_fn", 0))  # field, the shape entry of its input


def _with(op, **changes):
    new = object.__new__(type(op))
    new.__dict__.update(op.__dict__)
    new.__dict__.update(changes)
    return new


_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_NAMED = (type, types.ModuleType, types.BuiltinFunctionType, np.dtype)  # compared by identity, held strongly
_MAX_DEPTH = 3


def _code_names(code):
    """The global names ``code`` and the code objects nested in it (lambdas, comprehensions) may read."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


def _reads(f, module, depth, out) -> bool:
    """Append to ``out`` what the function ``f`` reads (closure cells, the globals it names, defaults,
    ``functools.partial`` arguments), recursing into functions of ``module`` (the user's); ``False`` when
    something it reads is not known to be immutable (a NumPy array, a dict, an object: then it is
    traced on every call, as before)."""
    if isinstance(f, functools.partial):
        out.append(("id", f.func))
        return all(_read(x, module, depth, out) for x in (f.func, *f.args, *f.keywords.values()))
    if not isinstance(f, types.FunctionType):
        return False
    out.append(("code", f.__code__))
    objs = [c.cell_contents for c in f.__closure__ or () if _cell_full(c)]
    objs += [f.__globals__[n] for n in sorted(_code_names(f.__code__)) if n in f.__globals__]
    objs += list(f.__defaults__ or ()) + list((f.__kwdefaults__ or {}).values())
    return all(_read(x, module, depth, out) for x in objs)


def _cell_full(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # an empty cell (a name assigned later in the enclosing function)
        return False
    return True


def _read(x, module, depth, out) -> bool:
    if isinstance(x, _SCALARS):
        out.append(("value", type(x), x))
    elif isinstance(x, _NAMED):
        out.append(("id", x))
    elif isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        out.append(("array", weakref.ref(x)))  # immutable: identity is content; held weakly
    elif isinstance(x, tuple | frozenset):
        out.append(("tuple", len(x)))
        return all(_read(y, module, depth, out) for y in x)
    elif isinstance(x, types.FunctionType | functools.partial):
        if getattr(x, "__module__", None) != module:  # a library's function: its identity
            out.append(("id", x))
        elif depth >= _MAX_DEPTH:
            return False
        else:
            return _reads(x, module, depth + 1, out)
    elif callable(x) and type(x).__module__.split(".")[0] in ("jax", "jaxlib"):
        out.append(("id", x))  # jax.jit / custom_jvp wrappers: their identity, as jax.jit keys them
    else:
        return False
    return True


def _same(stored, now) -> bool:
    if len(stored) != len(now):
        return False
    for a, b in zip(stored, now):
        if a[0] != b[0]:
            return False
        if a[0] == "array":
            if a[1]() is None or a[1]() is not b[1]():
                return False
        elif a[0] == "value":
            if a[1] is not b[1] or a[2] != b[2]:
                return False
        elif a[0] == "tuple":
            if a[1] != b[1]:
                return False
        elif a[1] is not b[1]:
            return False
    return True


class _TraceMemo:
    """Traced ``FunctionOperator`` functions by what they read, so that an eager call with a function
    rebuilt around the same arrays (``FunctionOperator(lambda v: A @ v, ...)`` typed per call) does not
    re-trace it: the same code reading the same objects (closure cells, the globals it names, defaults,
    all immutable: JAX arrays by identity, Python scalars by value) gives the same program and constants.
    A rebound global or a new array is a miss (traced again, today's values); a function that reads
    anything mutable (a NumPy array, a dict, an object) is traced on every call. Closed-over JAX arrays
    are held weakly (an entry dies with them); at most :data:`CACHE_SIZE` entries."""

    def __init__(self):
        self._entries: collections.OrderedDict = collections.OrderedDict()

    def trace(self, f, arg):
        """``(jaxpr, consts)`` of ``f`` at ``arg`` (a ``jax.ShapeDtypeStruct``)."""
        reads: list = []
        module = getattr(getattr(f, "func", f), "__module__", None)
        if not _reads(f, module, 0, reads):
            return self._trace(f, arg)
        key = (reads[0][1] if reads[0][0] == "code" else id(reads[0][1]), arg.shape, str(arg.dtype))
        for stored, jaxpr, consts in self._entries.get(key, ()):
            if _same(stored, reads):
                self._entries.move_to_end(key)
                return jaxpr, tuple(c() if isinstance(c, weakref.ref) else c for c in consts)
        jaxpr, consts = self._trace(f, arg)
        held = {id(r[1]()): r[1] for r in reads if r[0] == "array"}
        # a constant that is one of the arrays it reads is held weakly, like them
        kept = tuple(held.get(id(c), c) for c in consts)
        self._entries.setdefault(key, []).insert(0, (reads, jaxpr, kept))
        del self._entries[key][4:]  # a few variants per code (e.g. several matrices in turn)
        self._entries.move_to_end(key)
        if len(self._entries) > CACHE_SIZE:
            self._entries.popitem(last=False)
        return jaxpr, consts

    @staticmethod
    def _trace(f, arg):
        # a new function object each time: JAX's trace cache (keyed by the function) would keep stale arrays
        closed = jax.make_jaxpr(lambda v, f=f: f(v))(arg)
        return _JaxprFn(closed.jaxpr), tuple(closed.consts)

    def clear(self):
        self._entries.clear()


def _trace_functions(op, memo):
    """``op`` with its functions as :class:`_JaxprFn` (reading today's arrays) and their constants."""
    changes, consts = {}, []
    for field, axis in _FN_FIELDS:
        f = getattr(op, field)
        if f is not None:
            changes[field], c = memo.trace(f, jax.ShapeDtypeStruct((op.shape[axis],), op.jax_dtype))
            consts.append(c)
    return _with(op, **changes), tuple(consts)


def _bind_functions(op, consts):
    """Inverse of :func:`_trace_functions` inside the program (``consts`` are its inputs)."""
    if not isinstance(getattr(op, "fn", None), _JaxprFn):
        return op
    changes, it = {}, iter(consts)
    for field, _ in _FN_FIELDS:
        f = getattr(op, field)
        if f is not None:
            changes[field] = functools.partial(lambda jx, c, v: jax.core.eval_jaxpr(jx, c, v)[0], f.jaxpr, next(it))
    return _with(op, **changes)


def eager_compiled(fn):
    """Decorate a JAX estimator ``fn(key, op, *args, **kwargs)``: eager calls run one cached program."""
    cache: collections.OrderedDict = collections.OrderedDict()
    seen_code: dict = {}  # configuration without function addresses -> the cache key compiled for it
    eager_only: set = set()  # such configurations that run eagerly (untraceable, or closures rebuilt per call)
    memo = _TraceMemo()  # FunctionOperator functions traced, by what they read
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(key, op, *args, **kwargs):
        program, code, dyn = _lookup(key, op, args, kwargs)
        if program is None:
            return fn(key, op, *args, **kwargs)
        if code is None:
            out, passed = program(dyn)
        else:  # first call of this configuration: trace and compile it
            try:
                out, passed = program(dyn)
            except Exception:  # noqa: BLE001 - cannot be traced (inspects values): the eager call raises or runs
                eager_only.add(code)
                return fn(key, op, *args, **kwargs)
            cache[seen_code[code]] = program
            if len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
        if bool(passed) and _finite(out):
            return out
        return fn(key, op, *args, **kwargs)  # a check failed in the program: eagerly, it raises its own error

    def _lookup(key, op, args, kwargs):
        """``(program, its code if new, dynamic leaves)``, or ``(None, None, None)`` to call through."""
        from ..backends import JaxBackend, get_backend, is_jax_key
        from ..operators import DenseOperator, FunctionOperator, SparseOperator

        through = None, None, None
        if kwargs.get("mesh") is not None or kwargs.get("backend") not in (None, "jax") or not is_jax_key(key):
            return through
        if jax.device_count() > 1:  # several devices: a sharding context may place the probes; trace through
            return through
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((key, op, args, kwargs))):
            return through  # inside the user's transformation: trace through
        user_op, is_fn = op, type(op) is FunctionOperator
        if is_fn:  # traced on every call: its program text is static, the arrays it reads are inputs
            try:
                op, consts = _trace_functions(op, memo)
            except Exception:  # noqa: BLE001 - not traceable: the eager call raises its error
                return through
        else:  # converted and validated eagerly on every call (cheap for arrays and matrices)
            bk, op = get_backend(key, op, kwargs.get("backend"))
            if bk is not JaxBackend or type(op) not in (DenseOperator, SparseOperator):
                return through  # operators holding other user functions (Jacobians, ...) run eagerly
            consts = ()
        leaves, treedef = jax.tree_util.tree_flatten((key, op, args, kwargs, consts))
        mask = tuple(_is_array(x) for x in leaves)
        dyn = [x for x, m in zip(leaves, mask) if m]
        static = tuple(None if m else x for x, m in zip(leaves, mask))
        ckey = (treedef, static, mask, _signature(dyn))
        try:
            program = cache.get(ckey)
        except TypeError:  # an unhashable configuration: eager
            return through
        if program is not None:
            cache.move_to_end(ckey)
            return program, None, dyn
        code = _ADDRESS.sub("", repr(ckey))  # the configuration with function addresses removed
        if code in eager_only:
            return through
        if seen_code.get(code, ckey) != ckey:  # same code, new function objects: a closure rebuilt per call
            eager_only.add(code)
            return through
        if is_fn:  # validated once per configuration (its output shape and dtype)
            get_backend(key, user_op, kwargs.get("backend"))
        if len(seen_code) > 4 * CACHE_SIZE:
            seen_code.clear()
        seen_code[code] = ckey
        return _Program(fn, name, treedef, static, mask), code, dyn

    wrapper.cache_clear = lambda: (cache.clear(), seen_code.clear(), eager_only.clear(), memo.clear())
    return wrapper


class BackendCompiled:
    """An estimator helper compiled by each backend's own ``jit``, held by this object.

    The one way the estimators keep compiled functions besides :func:`eager_compiled` (which
    compiles whole eager calls): ``fn`` is compiled once per ``(backend, extra static
    arguments)`` with ``bk.jit`` (``jax.jit`` on JAX, the identity on numba and torch) and kept
    here, not in a module-level ``functools.cache``; ``jax.jit``'s own cache then holds one
    program per static configuration and shape. The key set is small by construction (a
    handful of backends times a few variants) and bounded by :data:`CACHE_SIZE` all the same.
    """

    def __init__(self, fn, static_argnames=()):
        self.fn, self.static_argnames = fn, tuple(static_argnames)
        self._compiled: collections.OrderedDict = collections.OrderedDict()
        functools.update_wrapper(self, fn)

    def get(self, bk, extra_static=()):
        """``fn`` compiled by ``bk`` with ``extra_static`` static beside :attr:`static_argnames`."""
        ckey = (bk, tuple(extra_static))
        compiled = self._compiled.get(ckey)
        if compiled is None:
            compiled = self._compiled[ckey] = bk.jit(self.fn, static_argnames=self.static_argnames + ckey[1])
            if len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(ckey)
        return compiled

    def cache_clear(self):
        self._compiled.clear()
