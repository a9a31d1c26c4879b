"""Backends: the JAX backend, the numba CPU backend and the sharded JAX backend.

Estimators get a backend from :func:`select_backend` / :func:`get_backend` (chosen by the type
of the randomness argument) and use only the members of the :class:`Backend` protocol; a new
backend writes the five members of :class:`CoreBackend` and mixes in :class:`BackendDefaults`.
"""

from ._jax import JaxBackend, map_chunks
from ._protocol import Backend, BackendDefaults, CoreBackend
from ._select import (
    BACKENDS,
    backend_for_key,
    backend_named,
    get_backend,
    is_jax_key,
    is_torch_generator,
    namespace_of,
    resolve_backend,
    select_backend,
)
from ._sharding import ShardedJaxBackend

__all__ = [
    "Backend",
    "BackendDefaults",
    "BACKENDS",
    "CoreBackend",
    "JaxBackend",
    "ShardedJaxBackend",
    "backend_for_key",
    "backend_named",
    "get_backend",
    "is_jax_key",
    "is_torch_generator",
    "map_chunks",
    "namespace_of",
    "resolve_backend",
    "select_backend",
]


# the torch backend is loaded on first use, so that importing sketchtrace never imports torch
_TORCH_NAMES = ("TorchBackend", "torch_backend")


def __getattr__(name):
    if name in _TORCH_NAMES:
        from . import _torch

        return getattr(_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
