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

As under ``jax.jit``, a ``FunctionOperator``'s function is traced once per configuration:
it must be a pure JAX function (arrays it closes over are compiled in as constants).
"""

from __future__ import annotations

import collections
import functools
import re

import numpy as np

from .._optional import jax

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
            out_leaves, self.out_tree = jax.tree_util.tree_flatten(fn(key, op, *args, **kwargs))
            self.out_mask = tuple(isinstance(x, jax.Array) for x in out_leaves)
            self.out_static = tuple(None if m else x for m, x in zip(self.out_mask, out_leaves))
            return [x for m, x in zip(self.out_mask, out_leaves) if m]

        self.run = jax.jit(traced)

    def __call__(self, dyn):
        it = iter(self.run(dyn))
        leaves = [next(it) if m else s for m, s in zip(self.out_mask, self.out_static)]
        return jax.tree_util.tree_unflatten(self.out_tree, leaves)


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


def _trace_functions(op):
    """``op`` with its functions as :class:`_JaxprFn` (traced now, reading today's arrays) and their constants."""
    changes, consts = {}, []
    for field, axis in _FN_FIELDS:
        f = getattr(op, field)
        if f is not None:
            # a new function object each time: JAX's trace cache (keyed by the function) would keep stale arrays
            closed = jax.make_jaxpr(lambda v, f=f: f(v))(jax.ShapeDtypeStruct((op.shape[axis],), op.jax_dtype))
            changes[field] = _JaxprFn(closed.jaxpr)
            consts.append(tuple(closed.consts))
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
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(key, op, *args, **kwargs):
        program, code, dyn = _lookup(key, op, args, kwargs)
        if program is None:
            return fn(key, op, *args, **kwargs)
        if code is None:
            out = program(dyn)
        else:  # first call of this configuration: trace and compile it
            try:
                out = program(dyn)
            except Exception:  # noqa: BLE001 - cannot be traced (inspects values): the eager call raises or runs
                eager_only.add(code)
                return fn(key, op, *args, **kwargs)
            cache[seen_code[code]] = program
            if len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
        return out if _finite(out) else fn(key, op, *args, **kwargs)  # eager: raises the eager error

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
                op, consts = _trace_functions(op)
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

    wrapper.cache_clear = lambda: (cache.clear(), seen_code.clear(), eager_only.clear())
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
