"""The one backend chooser, :func:`select_backend`: the type of the randomness argument picks
the backend.

A JAX key runs on JAX, a ``numpy.random.Generator`` on the numba backend, a ``torch.Generator``
on the torch backend; ``backend=`` forces one (checked against the key) and ``mesh=`` selects
the sharded JAX backend. :func:`get_backend` (backend and prepared operator) and
:func:`backend_for_key` are this function plus preparation.
"""

from __future__ import annotations

import sys

import numpy as np

from .._optional import HAS_JAX, JaxArray, jax, jnp, require_jax
from ..validation import check_choice
from ._jax import JaxBackend
from ._sharding import sharded_backend

BACKENDS = ("jax", "numba", "torch")


def is_jax_key(key) -> bool:
    """Whether ``key`` is a JAX PRNG key (typed, or a legacy ``uint32[2]``; never without JAX)."""
    if not HAS_JAX:
        return False
    if isinstance(key, (JaxArray, np.ndarray)):
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
    return jnp if HAS_JAX else np


def _describe_key_error(key, wanted: str) -> str:
    hint = (
        "pass jax.random.key(seed) for the JAX backend, numpy.random.default_rng(seed) "
        "for the numba backend or torch.Generator().manual_seed(seed) for the torch backend "
        "(randomness is explicit and never defaulted)"
    )
    return f"key must be {wanted}; got {type(key).__name__}: {hint}"


#: What each backend takes as its randomness (for messages).
_KEYS = {
    "jax": "a jax.random key",
    "numba": "a numpy.random.Generator",
    "torch": "a torch.Generator",
}


def _key_kind(key) -> str | None:
    if is_torch_generator(key):
        return "torch"
    if isinstance(key, np.random.Generator):
        return "numba"
    if is_jax_key(key):
        return "jax"
    return None


def resolve_backend(key, backend=None) -> str:
    """The backend's name from the key's type (or check a forced ``backend=`` against the key)."""
    if backend is not None:
        check_choice(backend, BACKENDS, name="backend")
    if backend == "jax":
        require_jax('backend="jax"')
    kind = _key_kind(key)
    if backend is not None and kind != backend:
        raise TypeError(_describe_key_error(key, f"{_KEYS[backend]} when backend={backend!r}"))
    if kind is None:
        raise TypeError(_describe_key_error(key, "a jax.random key or a numpy.random.Generator"))
    return kind


def select_backend(key, backend=None, *, mesh=None, device=None):
    """The one backend chooser: the backend for ``key`` (its type picks it; ``backend=`` forces
    one and is checked against the key).

    ``mesh`` (a :class:`jax.sharding.Mesh`) selects the JAX backend with probe blocks sharded
    across the mesh's devices (see :mod:`sketchtrace.sharding`); ``device`` is the torch device
    products run on (default: the Generator's).
    """
    name = resolve_backend(key, backend)
    if name == "torch":
        if mesh is not None:
            raise ValueError("mesh= shards JAX computations; it cannot be used with a torch.Generator key")
        from ._torch import torch_backend

        return torch_backend(key.device if device is None else device)
    if mesh is not None:
        return sharded_backend(mesh, name, key)
    return backend_named(name)


def get_backend(key, op, backend=None, mesh=None):
    """Return ``(backend, prepared_op)`` for an estimator call (:func:`select_backend`, then the
    backend's ``prepare``; a torch operator's products run on its own device)."""
    bk = select_backend(key, backend, mesh=mesh)
    op = bk.prepare(op)
    device = getattr(op, "device", None)
    if bk.name == "torch" and device != bk.device:
        bk = select_backend(key, backend, device=device)
    return bk, op


def backend_named(name: str):
    """The backend object called ``name`` (numba and torch are imported only when asked for)."""
    if name == "jax":
        require_jax('backend="jax" (a jax.random key)')
        return JaxBackend
    if name == "torch":  # the CPU one; estimators use the one for the operator's device
        from ._torch import torch_backend

        return torch_backend("cpu")
    from ._numba import NumbaBackend  # raises a clear ImportError without numba

    return NumbaBackend


def backend_for_key(key, backend=None):
    """The backend for ``key`` alone (estimators that prepare their operators later); same as
    :func:`select_backend` (kept for callers of the old name)."""
    return select_backend(key, backend)
