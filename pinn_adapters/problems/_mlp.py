"""A small tanh multilayer perceptron used by the built-in problems (plain JAX pytrees)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mlp_init(key, layers, dtype=None):
    """Glorot-normal weights and zero biases for ``layers = (d_in, h_1, ..., d_out)``.

    Returns a list of ``{"W": (d_i, d_{i+1}), "b": (d_{i+1},)}`` dicts.
    """
    layers = tuple(int(w) for w in layers)
    if len(layers) < 2 or min(layers) < 1:
        raise ValueError(f"layers must be at least (d_in, d_out) with positive widths; got {layers}")
    dtype = dtype or jnp.result_type(float)
    keys = jax.random.split(key, len(layers) - 1)
    params = []
    for k, d_in, d_out in zip(keys, layers[:-1], layers[1:]):
        std = (2.0 / (d_in + d_out)) ** 0.5
        params.append({"W": std * jax.random.normal(k, (d_in, d_out), dtype), "b": jnp.zeros((d_out,), dtype)})
    return params


def mlp_apply(params, x):
    """Network output for one input vector ``x`` of shape ``(d_in,)`` (tanh hidden layers)."""
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    return h @ params[-1]["W"] + params[-1]["b"]
