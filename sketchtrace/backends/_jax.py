"""The JAX backend (see :class:`sketchtrace.backends.Backend` for the interface).

The interface, as implemented here:

* ``xp``: the array namespace (``jax.numpy`` or ``numpy``);
* ``prepare(op)``: convert/validate an operator for this backend;
* ``quad_forms(key, op, num, sampler, chunk_size)``: the ``(num, B)`` per-block
  Hutchinson quadratic forms of ``num`` fresh probes (drawn and consumed chunk by
  chunk, so peak memory is bounded by ``chunk_size``);
* ``exact_quad_forms(op, chunk_size)``: the same with the standard basis as probes;
* ``probes(key, num, dim, dtype, sampler)`` and ``matmat(op, V, chunk_size)``;
* ``quad_forms_of(op, V, chunk_size)``: the ``(k, B)`` per-block quadratic forms
  ``v_b . (A v)_b`` of the given rows ``V`` (``(k, n)``; Hutch++ uses it on
  projected probes; one matvec per row);
* ``split(key, num)``: ``num`` independent keys (JAX) or child Generators (numba)
  for algorithms that draw several independent blocks (adaptive rounds);
* ``check_finite(name, x)``: raise on non-finite results when values are concrete.
"""

from __future__ import annotations

import functools
import weakref

import numpy as np

from .._optional import jax, jnp
from .._samplers import get_sampler, probe_rows
from ..operators import (
    FunctionOperator,
    GramOperator,
    LinearOperator,
    ScipyOperator,
    SparseOperator,
    TransposedOperator,
    as_operator,
)
from ..validation import _defer_check, check_csr, is_concrete, probe_matvec, scipy_raw_matvec
from ._krylov import lanczos_jax


def map_chunks(fn, xs, chunk_size):
    """Apply ``fn`` to consecutive chunks of the rows of ``xs`` and concatenate.

    With a ``chunk_size`` smaller than ``len(xs)`` the chunks run sequentially
    under ``lax.map``, so memory is that of one chunk.
    """
    k = xs.shape[0]
    if chunk_size is None or chunk_size >= k:
        return fn(xs)
    nfull, rem = divmod(k, chunk_size)
    head = xs[: nfull * chunk_size].reshape((nfull, chunk_size) + xs.shape[1:])
    out = jax.lax.map(fn, head)
    out = out.reshape((nfull * chunk_size,) + out.shape[2:])
    if rem:
        out = jnp.concatenate([out, fn(xs[nfull * chunk_size :])], axis=0)
    return out


def _check_jax_dtype(op):
    """Refuse half precision: JAX would accumulate the quadratic forms in it (``as_operator``
    already turns float16 arrays into float32; this is for declared operators)."""
    dt = np.dtype(op.dtype)
    if np.issubdtype(dt, np.floating) and dt.itemsize < 4:
        raise TypeError(
            f"op dtype {dt}: the JAX backend computes in the operator's dtype and {dt} cannot hold a trace "
            "estimate (its sum overflows or rounds away); declare the operator as float32 or float64"
        )


def _checked_sampler(sampler):
    """A callable sampler wrapped so that a wrong output shape is refused (shapes are static)."""
    if not callable(sampler):
        return sampler

    def draw(key, shape, dtype):
        v = sampler(key, shape, dtype)
        if jnp.shape(v) != tuple(shape):
            raise ValueError(
                f"sampler returned shape {jnp.shape(v)}; expected {tuple(shape)} (on the JAX backend a callable "
                "sampler is called as sampler(key, shape, dtype) and draws one probe of that shape)"
            )
        return jnp.asarray(v, dtype)

    return draw


#: SciPy operators whose one-matvec output check has passed (weak: nothing written onto them).
_PROBED: weakref.WeakSet = weakref.WeakSet()


@functools.singledispatch
def prepare_rule(op) -> LinearOperator:
    """Validate an operator for the JAX backend; one registration per operator type.

    The fallback accepts any :class:`~sketchtrace.LinearOperator` as it is: its own products
    run on JAX arrays (the JAX operators are pytrees, so they trace under ``jax.jit``).
    Register a type with ``JaxBackend.prepare_rule.register(MyOperator)``.
    """
    return op


@prepare_rule.register(FunctionOperator)
def _prepare_function(op):
    op.validate_jax()
    return op


@prepare_rule.register(SparseOperator)
def _prepare_sparse(op):
    if is_concrete(op.indptr) and is_concrete(op.indices):
        check_csr(op.S)  # JAX would silently drop or misplace entries of a corrupt structure
    return op


@prepare_rule.register(ScipyOperator)
def _prepare_scipy(op):
    if op not in _PROBED:  # its output shape is only seen inside an XLA callback: check one matvec up front
        probe_matvec(
            scipy_raw_matvec(op.L), op.shape, op.dtype, what=f"op (a SciPy LinearOperator of shape {op.shape})"
        )
        _PROBED.add(op)
    return op


@prepare_rule.register(GramOperator)
def _prepare_gram(op):
    prepare_rule(op.J)
    return op


@prepare_rule.register(TransposedOperator)
def _prepare_transposed(op):
    prepare_rule(op.base)
    return op


@functools.singledispatch
def adjoint_rule(op) -> LinearOperator | None:
    """``A^T`` as an operator the JAX backend applies, or ``None``; one registration per type.

    The fallback is ``op.T`` (whose ``matmat`` is the operator's own ``rmatmat``)."""
    return op.T if "rmatmat" in op.products else None


@adjoint_rule.register(FunctionOperator)
def _adjoint_function(op):
    """A transpose JAX derives (``jax.linear_transpose`` without ``rmatvec``) is checked abstractly."""
    adj = op.T
    if op.rmatvec_fn is None:
        try:
            jax.eval_shape(adj.matmat, jax.ShapeDtypeStruct((1, adj.shape[1]), op.jax_dtype))
        except Exception:  # noqa: BLE001 - any tracing failure means: no usable transpose
            return None
    return adj


class JaxBackend:
    name = "jax"

    #: The dispatch tables (``functools.singledispatch`` on the operator's type; see
    #: ``docs/architecture.md``).
    prepare_rule = staticmethod(prepare_rule)
    adjoint_rule = staticmethod(adjoint_rule)
    xp = jnp

    @staticmethod
    def probe_dtype(op):
        return op.jax_dtype

    is_concrete = staticmethod(is_concrete)

    @staticmethod
    def jit(fn, static_argnames=()):
        return jax.jit(fn, static_argnames=static_argnames)

    #: Batched Lanczos under ``lax.fori_loop`` (see :mod:`sketchtrace.backends._krylov`).
    lanczos = staticmethod(lanczos_jax)

    @staticmethod
    def adjoint(op):
        """``A^T`` when ``op`` has a transpose product (see :func:`adjoint_rule`), else ``None``."""
        if "rmatmat" not in op.products:
            return None
        return adjoint_rule(op)

    @staticmethod
    def with_adjoint(matmat, forward, Z):
        """Per-probe values of ``forward`` with a gradient rule that skips the forward iterations.

        ``forward(matmat, Z, adjoint) -> (values (k,), U)`` returns, when ``adjoint``,
        rows ``U`` with ``d values_i = u_i^T (dA) z_i`` (``dA`` a change of the operator).
        Reverse mode then costs one block product's VJP with the stored ``U`` and ``Z``;
        nothing of the iterations that produced ``U`` is kept. Parameters the operator
        closes over (traced arrays) are found by :func:`jax.closure_convert`.
        """
        mm, consts = jax.closure_convert(matmat, Z)

        @jax.custom_vjp
        def run(consts, Z):
            return forward(lambda V: mm(V, *consts), Z, False)[0]

        def fwd(consts, Z):
            values, U = forward(lambda V: mm(V, *consts), Z, True)
            return values, (consts, Z, U)

        def bwd(res, ct):
            consts, Z, U = res
            _, vjp = jax.vjp(lambda c: mm(Z, *c), consts)
            (dconsts,) = vjp((ct[:, None] * U).astype(Z.dtype))
            return dconsts, jnp.zeros_like(Z)

        run.defvjp(fwd, bwd)
        return run(consts, Z)

    @staticmethod
    def prepare(op) -> LinearOperator:
        op = as_operator(op)
        _check_jax_dtype(op)
        return prepare_rule(op)

    @staticmethod
    def probes(key, num, dim, dtype, sampler="rademacher"):
        return probe_rows(jax.random.split(key, num), dim, dtype, _checked_sampler(sampler))

    @staticmethod
    def quad_forms(key, op, num, sampler, chunk_size):
        get_sampler(sampler)
        sampler = _checked_sampler(sampler)
        n, dt = op.probe_dim, op.jax_dtype
        return map_chunks(
            lambda ks: op.quad_forms(probe_rows(ks, n, dt, sampler)), jax.random.split(key, num), chunk_size
        )

    @staticmethod
    def exact_quad_forms(op, chunk_size):
        n, dt = op.probe_dim, op.jax_dtype
        return map_chunks(lambda ix: op.quad_forms(jax.nn.one_hot(ix, n, dtype=dt)), jnp.arange(n), chunk_size)

    @staticmethod
    def matmat(op, V, chunk_size=None):
        return map_chunks(op.matmat, V, chunk_size)

    @staticmethod
    def quad_forms_of(op, V, chunk_size=None):
        return map_chunks(op.quad_forms, V, chunk_size)

    @staticmethod
    def split(key, num):
        return list(jax.random.split(key, num))

    @staticmethod
    def check_finite(name, x):
        if not is_concrete(x):  # in an eager call's compiled program: returned with it, raised by a rerun
            _defer_check(x, lambda v: jnp.all(jnp.isfinite(v)))
        elif not bool(jnp.all(jnp.isfinite(x))):
            raise FloatingPointError(
                f"{name}: the operator produced non-finite values (NaN or inf); check the operator "
                "(under jax.jit this check is skipped: wrap the call with jax.experimental.checkify "
                "or run it eagerly to locate the problem)"
            )
