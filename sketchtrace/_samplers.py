"""Probe distributions (JAX; the numba and torch backends draw the same distributions by name).

Every sampler has the signature ``sampler_*(key, shape, dtype)`` and returns an
array whose rows (last axis) are independent probes with ``E[v v^T] = I``:

* ``sampler_rademacher``: entries +-1 with equal probability;
* ``sampler_gaussian``: standard normal entries;
* ``sampler_sphere``: uniform on the sphere of radius ``sqrt(n)`` (n = last axis).

:func:`sample_like` draws one probe shaped like a pytree (e.g. network
parameters); the sphere sampler then normalises over all leaves together.
"""

from __future__ import annotations

import numpy as np

from ._optional import jax, jnp
from .validation import check_float_dtype


def sampler_rademacher(key, shape, dtype=np.float32):
    """Rademacher probes: independent entries equal to +1 or -1.

    The signs are the bits of ``jax.random.bits`` words (32 signs per random word),
    about 10x cheaper than drawing one random number per entry.
    """
    shape = tuple(shape)
    if not shape:
        return 1 - 2 * (jax.random.bits(key, (), jnp.uint32) & 1).astype(dtype)
    n = shape[-1]
    words = -(-n // 32)
    bits = jax.random.bits(key, shape[:-1] + (words,), jnp.uint32)
    b = (bits[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    b = b.reshape(shape[:-1] + (words * 32,))[..., :n]
    return 1 - 2 * b.astype(dtype)


def sampler_gaussian(key, shape, dtype=np.float32):
    """Standard Gaussian probes."""
    return jax.random.normal(key, shape, dtype=dtype)


def sampler_sphere(key, shape, dtype=np.float32):
    """Probes uniform on the sphere of radius ``sqrt(n)``, ``n = shape[-1]``."""
    g = jax.random.normal(key, shape, dtype=dtype)
    n = shape[-1]
    norm = jnp.linalg.norm(g, axis=-1, keepdims=True)
    return g * (jnp.sqrt(jnp.asarray(n, dtype)) / norm)


SAMPLERS = {
    "rademacher": sampler_rademacher,
    "gaussian": sampler_gaussian,
    "sphere": sampler_sphere,
}


def get_sampler(sampler):
    """Resolve a sampler name (or pass a callable through)."""
    if callable(sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)} or a callable; got {sampler!r}")
    return SAMPLERS[sampler]


def probe_rows(keys, dim, dtype, sampler="rademacher"):
    """One probe of length ``dim`` per key in ``keys`` (shape ``(len(keys), dim)``)."""
    fn = get_sampler(sampler)
    return jax.vmap(lambda k: fn(k, (dim,), dtype))(keys)


def sample_like(key, tree, *, sampler="rademacher"):
    """Draw one probe with the structure, shapes and dtypes of ``tree``.

    ``tree`` is a pytree of arrays or ``jax.ShapeDtypeStruct``. The probe is drawn
    as one flat vector and unflattened, so ``sampler="sphere"`` has radius
    ``sqrt(total size)`` over all leaves together.
    """
    zeros = jax.tree.map(lambda s: jnp.zeros(np.shape(s), s.dtype), tree)
    flat, unravel = jax.flatten_util.ravel_pytree(zeros)
    dtype = check_float_dtype(flat.dtype, name="tree dtype")
    v = get_sampler(sampler)(key, (flat.shape[0],), dtype)
    return unravel(v)
