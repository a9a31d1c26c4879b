"""The one backend chooser: the type of the randomness argument picks the backend.

A JAX key runs on JAX, a ``numpy.random.Generator`` on the numba backend;
``backend=`` forces one and ``mesh=`` selects the sharded JAX backend.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from ..validation import check_choice
from ._jax import JaxBackend
from ._sharding import sharded_backend

BACKENDS = ("jax", "numba", "torch")


def is_jax_key(key) -> bool:
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return True
        return key.dtype == np.uint32 and key.shape[-1:] == (2,)
    return False


def is_torch_generator(key) -> bool:
    """Whether ``key`` is a ``torch.Generator`` (never imports torch: no torch, no Generator)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(key, torch.Generator)


def namespace_of(x):
    """The array namespace of ``x``: ``numpy``, the torch backend's ``xp`` or ``jax.numpy``."""
    if isinstance(x, np.ndarray):
        return np
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        from ._torch import namespace_for

        return namespace_for(x.device)
    return jnp


def _describe_key_error(key, wanted: str) -> str:
    hint = (
        "pass jax.random.key(seed) for the JAX backend, numpy.random.default_rng(seed) "
        "for the numba backend or torch.Generator().manual_seed(seed) for the torch backend "
        "(randomness is explicit and never defaulted)"
    )
    return f"key must be {wanted}; got {type(key).__name__}: {hint}"


def resolve_backend(key, backend=None) -> str:
    """Pick the backend from the key's type (or check a forced ``backend=``)."""
    if backend is not None:
        check_choice(backend, BACKENDS, name="backend")
    if is_torch_generator(key) or backend == "torch":
        if not is_torch_generator(key) or backend not in (None, "torch"):
            raise TypeError(_describe_key_error(key, "a torch.Generator exactly when backend='torch'"))
        return "torch"
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
    if name == "torch":
        if mesh is not None:
            raise ValueError("mesh= shards JAX computations; it cannot be used with a torch.Generator key")
        from ._torch import TorchBackend, torch_backend

        op = TorchBackend.prepare(op)
        return torch_backend(op.device), op
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
    if name == "torch":  # the CPU one; estimators use the one for the operator's device
        from ._torch import torch_backend

        return torch_backend("cpu")
    from ._numba import NumbaBackend  # raises a clear ImportError without numba

    return NumbaBackend


def backend_for_key(key, backend=None):
    """The backend for ``key`` alone (estimators that prepare their operators later)."""
    name = resolve_backend(key, backend)
    if name == "torch":  # probes drawn on the Generator's device; products move them to the operator's
        from ._torch import torch_backend

        return torch_backend(key.device)
    return backend_named(name)
