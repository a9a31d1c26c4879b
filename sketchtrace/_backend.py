"""Backend selection and the JAX backend's primitives.

Each algorithm is written once against a small backend interface:

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

The backend is chosen from the type of the randomness argument: a JAX key runs
on JAX, a ``numpy.random.Generator`` runs on the numba backend; ``backend=``
forces one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._operators import FunctionOperator, LinearOperator, as_operator
from ._samplers import get_sampler, probe_rows
from ._validate import check_choice

BACKENDS = ("jax", "numba")


def is_jax_key(key) -> bool:
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return True
        return key.dtype == np.uint32 and key.shape[-1:] == (2,)
    return False


def _describe_key_error(key, wanted: str) -> str:
    hint = (
        "pass jax.random.key(seed) for the JAX backend or numpy.random.default_rng(seed) "
        "for the numba backend (randomness is explicit and never defaulted)"
    )
    return f"key must be {wanted}; got {type(key).__name__}: {hint}"


def resolve_backend(key, backend=None) -> str:
    """Pick the backend from the key's type (or check a forced ``backend=``)."""
    if backend is not None:
        check_choice(backend, BACKENDS, name="backend")
    is_gen = isinstance(key, np.random.Generator)
    if not is_gen and not is_jax_key(key):
        raise TypeError(_describe_key_error(key, "a jax.random key or a numpy.random.Generator"))
    chosen = backend or ("numba" if is_gen else "jax")
    if chosen == "jax" and is_gen:
        raise TypeError(_describe_key_error(key, "a jax.random key when backend='jax'"))
    if chosen == "numba" and not is_gen:
        raise TypeError(_describe_key_error(key, "a numpy.random.Generator when backend='numba'"))
    return chosen


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


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class JaxBackend:
    name = "jax"
    xp = jnp

    @staticmethod
    def prepare(op) -> LinearOperator:
        op = as_operator(op)
        if isinstance(op, FunctionOperator):
            op.validate_jax()
        return op

    @staticmethod
    def probes(key, num, dim, dtype, sampler="rademacher"):
        return probe_rows(jax.random.split(key, num), dim, dtype, sampler)

    @staticmethod
    def quad_forms(key, op, num, sampler, chunk_size):
        get_sampler(sampler)
        n, dt = op.probe_dim, op.jax_dtype
        return map_chunks(lambda ks: op.quad_forms(probe_rows(ks, n, dt, sampler)), jax.random.split(key, num), chunk_size)

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
        if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
            raise FloatingPointError(
                f"{name}: the operator produced non-finite values (NaN or inf); check the operator "
                "(under jax.jit this check is skipped: wrap the call with jax.experimental.checkify "
                "or run it eagerly to locate the problem)"
            )


def get_backend(key, op, backend=None, mesh=None):
    """Return ``(backend, prepared_op)`` for an estimator call.

    ``mesh`` (a :class:`jax.sharding.Mesh`) selects the JAX backend with probe
    blocks sharded across the mesh's devices (see :mod:`sketchtrace._sharding`).
    """
    name = resolve_backend(key, backend)
    if mesh is not None:
        from ._sharding import sharded_backend

        bk = sharded_backend(mesh, name, key)
        return bk, bk.prepare(op)
    if name == "jax":
        return JaxBackend, JaxBackend.prepare(op)
    from ._numba_backend import NumbaBackend  # raises a clear ImportError without numba

    return NumbaBackend, NumbaBackend.prepare(op)
