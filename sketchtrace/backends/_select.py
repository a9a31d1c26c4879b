"""The one backend chooser: the type of the randomness argument picks the backend.

A JAX key runs on JAX, a ``numpy.random.Generator`` on the numba backend;
``backend=`` forces one and ``mesh=`` selects the sharded JAX backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..validation import check_choice
from ._jax import JaxBackend
from ._sharding import sharded_backend

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




def get_backend(key, op, backend=None, mesh=None):
    """Return ``(backend, prepared_op)`` for an estimator call.

    ``mesh`` (a :class:`jax.sharding.Mesh`) selects the JAX backend with probe
    blocks sharded across the mesh's devices (see :mod:`sketchtrace.sharding`).
    """
    name = resolve_backend(key, backend)
    if mesh is not None:
        bk = sharded_backend(mesh, name, key)
        return bk, bk.prepare(op)
    if name == "jax":
        return JaxBackend, JaxBackend.prepare(op)
    bk = backend_named(name)
    return bk, bk.prepare(op)


def backend_named(name: str):
    """The backend object called ``name`` (numba is imported only when asked for)."""
    if name == "jax":
        return JaxBackend
    from ._numba import NumbaBackend  # raises a clear ImportError without numba

    return NumbaBackend


def backend_for_key(key, backend=None):
    """The backend for ``key`` alone (estimators that prepare their operators later)."""
    return backend_named(resolve_backend(key, backend))
