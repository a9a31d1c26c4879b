"""JAX is optional: an extra (``pip install 'sketchtrace[jax]'``), as torch is.

The modules here, ``jax``, ``jnp`` (``jax.numpy``) and ``lax``, are JAX's own when it is
installed. Without it they are stand-ins whose every attribute raises an ``ImportError`` that
names the extra, so ``import sketchtrace`` and the numba and torch backends work, and a JAX-only
feature (a JAX key, ``JacobianOperator``, ``make_mesh``, ...) fails where it is used, saying what
to install. Code on the generic paths asks ``HAS_JAX`` (or uses ``JaxArray``, a class nothing is
an instance of without JAX) instead of touching the stand-ins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: What to run to get the JAX features.
JAX_EXTRA = "pip install 'sketchtrace[jax]'"


def missing_jax_error(feature: str = "this feature") -> ImportError:
    """The error a JAX-only feature raises when JAX is not installed."""
    return ImportError(f"{feature} needs JAX, which is not installed: {JAX_EXTRA}")


class _MissingModule:
    """Stands in for a JAX module that is not installed: any attribute raises ImportError."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (copy, pickle, inspect) sees a plain object
            raise AttributeError(attr)
        raise missing_jax_error(f"{self._name}.{attr}")

    def __repr__(self) -> str:
        return f"<{self._name}: not installed ({JAX_EXTRA})>"


class _NoJaxArray:
    """No object is an instance of this class (``JaxArray`` without JAX)."""


jax: Any
jnp: Any
lax: Any
JaxArray: Any  # jax.Array, or a class nothing is an instance of
try:
    import jax
    import jax.flatten_util
    import jax.numpy as jnp
    import jax.sharding
    from jax import lax
except ImportError:  # JAX is not installed (or cannot be imported)
    HAS_JAX = False
    jax = _MissingModule("jax")
    jnp = _MissingModule("jax.numpy")
    lax = _MissingModule("jax.lax")
    JaxArray = _NoJaxArray
else:
    HAS_JAX = True
    JaxArray = jax.Array


#: ``jax.numpy``, or ``numpy`` without JAX (for code that runs on either).
xnp: Any = jnp if HAS_JAX else np


def require_jax(feature: str) -> None:
    """Raise the missing-JAX ``ImportError`` for ``feature`` unless JAX is installed."""
    if not HAS_JAX:
        raise missing_jax_error(feature)


def register_pytree_node(cls, flatten, unflatten) -> None:
    """``jax.tree_util.register_pytree_node`` (nothing to register without JAX)."""
    if HAS_JAX:
        jax.tree_util.register_pytree_node(cls, flatten, unflatten)


def register_static(cls) -> None:
    """``jax.tree_util.register_static`` (nothing to register without JAX)."""
    if HAS_JAX:
        jax.tree_util.register_static(cls)


def tree_leaves(tree) -> list:
    """``jax.tree_util.tree_leaves``; without JAX, the leaves of nested lists, tuples and dicts."""
    if HAS_JAX:
        return jax.tree_util.tree_leaves(tree)
    if tree is None:
        return []
    if isinstance(tree, (list, tuple)):
        return [leaf for t in tree for leaf in tree_leaves(t)]
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in tree_leaves(tree[k])]
    return [tree]
