"""Networks of a modern PINN recipe, as plain JAX pytrees: embeddings, RWF dense layers, PirateNets.

A :class:`Network` is ``(init, apply, config)``: ``init(key)`` returns the trainable
parameters (a pytree), ``apply(params, x)`` the output ``(d_out,)`` for **one** input
point ``x`` of shape ``(d_in,)`` (``jax.vmap`` it for a batch), and ``config`` a
JSON-able description (:func:`from_config` rebuilds the network from it).

Embeddings are fixed (closed over, not trained):

* :func:`fourier_features` -- random Fourier features ``[cos(x B), sin(x B)]`` with
  ``B ~ N(0, sigma^2)`` of shape ``(d_in, num)`` (jaxpi's convention: no ``2 pi``
  factor; ``2 num`` features);
* :func:`periodic_embedding` -- ``x_i -> [cos(2 pi k x_i / P_i), sin(2 pi k x_i / P_i)]``,
  ``k = 1..K``, for the inputs with a period ``P_i`` (a network of them is exactly
  ``P_i``-periodic in ``x_i``); other inputs pass through.

Random weight factorisation (RWF) writes each dense weight as ``W = V diag(exp(s))``
(in the ``x @ W`` convention; ``diag(exp(s)) V`` for ``W x``) with ``s ~ N(mean, std)``
per output unit and ``V = W0 / exp(s)``, so at initialisation ``W`` equals the plain
Glorot-normal weight ``W0`` drawn from the same key; ``s``, ``V`` and ``b`` are trained.

References
----------
M. Tancik et al., "Fourier features let networks learn high frequency functions in low
dimensional domains", NeurIPS 2020. S. Wang, H. Wang, J. H. Seidman, P. Perdikaris,
"Random weight factorization improves the training of continuous neural
representations", arXiv:2210.01274 (2022). S. Wang, B. Li, Y. Chen, P. Perdikaris,
"PirateNets: physics-informed deep learning with residual adaptive networks",
JMLR 25 (2024), arXiv:2402.00326.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sketchtrace.validation import check_choice, check_int, check_real

__all__ = [
    "Network",
    "Embedding",
    "mlp",
    "pirate_net",
    "fourier_features",
    "periodic_embedding",
    "embedding",
    "dense_init",
    "dense_apply",
    "dense_weight",
    "from_config",
    "ACTIVATIONS",
]

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "gelu": jax.nn.gelu,
    "swish": jax.nn.swish,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
}


class Network(NamedTuple):
    """A network as ``init(key) -> params``, ``apply(params, x) -> (d_out,)``, ``config``."""

    init: Callable
    apply: Callable
    config: dict


class Embedding(NamedTuple):
    """A fixed input embedding: ``apply(x)`` maps ``(d_in,)`` to ``(d_out,)``; callable itself."""

    apply: Callable
    d_in: int
    d_out: int
    config: dict

    def __call__(self, x):
        return self.apply(x)


def _dtype(dtype):
    return jnp.dtype(dtype or jnp.result_type(float))


def _floating(x, dtype):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(dtype)


def fourier_features(d_in, num, *, sigma=1.0, seed=0, dtype=None) -> Embedding:
    """Random Fourier features ``x -> [cos(x B), sin(x B)]``, ``B = sigma N(0, 1)^(d_in x num)``.

    ``B`` is drawn once from ``jax.random.key(seed)`` and closed over (not trained);
    the embedding has ``2 num`` outputs. ``sigma`` sets the frequencies the network
    sees first (jaxpi uses 1 to 2 for inputs in ``[0, 1]``).
    """
    d_in, num = check_int(d_in, name="d_in", minimum=1), check_int(num, name="fourier num", minimum=1)
    sigma = check_real(sigma, name="fourier sigma", low=0.0, low_open=True)
    seed = check_int(seed, name="fourier seed", minimum=0)
    B = sigma * jax.random.normal(jax.random.key(seed), (d_in, num), _dtype(dtype))

    def apply(x):
        x = _floating(x, B.dtype)
        z = x @ B.astype(x.dtype)
        return jnp.concatenate([jnp.cos(z), jnp.sin(z)], axis=-1)

    config = {"num": num, "sigma": sigma, "seed": seed}
    return Embedding(apply, d_in, 2 * num, config)


def _periods(periods, d_in):
    if not isinstance(periods, dict) or not periods:
        raise TypeError(f"periodic must be a non-empty dict {{input index: period}}; got {periods!r}")
    out = {}
    for axis, period in periods.items():
        try:
            i = int(axis)
        except (TypeError, ValueError):
            raise TypeError(f"periodic keys must be input indices (int); got {axis!r}") from None
        if not 0 <= i < d_in or (isinstance(axis, float) and axis != i):
            raise ValueError(f"periodic input index must be in [0, {d_in}); got {axis!r}")
        out[i] = check_real(period, name=f"period of input {i}", low=0.0, low_open=True)
    return dict(sorted(out.items()))


def periodic_embedding(d_in, periods, *, harmonics=1) -> Embedding:
    """``x_i -> [cos(2 pi k x_i / P_i), sin(2 pi k x_i / P_i)]_{k=1..K}`` for each ``i`` in ``periods``.

    ``periods`` maps input indices to periods ``P_i`` (e.g. ``{0: 2.0}`` for ``x`` in
    ``[-1, 1]`` with periodic boundaries); the other inputs pass through unchanged, in
    order. Output width ``d_in + (2 K - 1) len(periods)``. Note jaxpi's ``PeriodEmbs``
    takes the angular frequency ``2 pi / P`` instead of the period.
    """
    d_in = check_int(d_in, name="d_in", minimum=1)
    periods = _periods(periods, d_in)
    K = check_int(harmonics, name="harmonics", minimum=1)
    k = jnp.arange(1, K + 1)

    def apply(x):
        x = _floating(x, jnp.result_type(float))
        parts = []
        for i in range(d_in):
            if i in periods:
                z = (2 * math.pi / periods[i]) * k.astype(x.dtype) * x[i]
                parts += [jnp.cos(z), jnp.sin(z)]
            else:
                parts.append(x[i : i + 1])
        return jnp.concatenate(parts)

    config = {"periodic": {str(i): p for i, p in periods.items()}, "harmonics": K}
    return Embedding(apply, d_in, d_in + (2 * K - 1) * len(periods), config)


_FOURIER_KEYS = {"num", "sigma", "seed", "periodic", "harmonics"}


def embedding(d_in, fourier, *, dtype=None) -> Embedding:
    """The embedding a ``fourier`` option describes: periodic (if ``"periodic"``), then random features.

    ``fourier`` is ``None`` (identity), or a dict with any of ``"num"``, ``"sigma"``
    (default 1), ``"seed"`` (default 0) for :func:`fourier_features` and
    ``"periodic"``, ``"harmonics"`` (default 1) for :func:`periodic_embedding`.
    """
    d_in = check_int(d_in, name="d_in", minimum=1)
    if fourier is None:
        return Embedding(lambda x: jnp.asarray(x), d_in, d_in, None)
    if not isinstance(fourier, dict) or not fourier or set(fourier) - _FOURIER_KEYS:
        raise ValueError(f"fourier must be None or a dict with keys from {sorted(_FOURIER_KEYS)}; got {fourier!r}")
    if "num" not in fourier and "periodic" not in fourier:
        raise ValueError(f"fourier needs 'num' (random features) and/or 'periodic'; got {fourier!r}")
    parts, config, width = [], {}, d_in
    if "periodic" in fourier:
        per = periodic_embedding(d_in, fourier["periodic"], harmonics=fourier.get("harmonics", 1))
        parts.append(per)
        config.update(per.config)
        width = per.d_out
    elif "harmonics" in fourier:
        raise ValueError("fourier 'harmonics' needs 'periodic'")
    if "num" in fourier:
        ff = fourier_features(
            width, fourier["num"], sigma=fourier.get("sigma", 1.0), seed=fourier.get("seed", 0), dtype=dtype
        )
        parts.append(ff)
        config.update(ff.config)
        width = ff.d_out
    elif "sigma" in fourier or "seed" in fourier:
        raise ValueError("fourier 'sigma'/'seed' need 'num' (the number of random frequencies)")

    def apply(x):
        for p in parts:
            x = p(x)
        return x

    return Embedding(apply, d_in, width, config)


def _rwf(rwf):
    if rwf is None:
        return None
    if not isinstance(rwf, dict) or set(rwf) - {"mean", "std"}:
        raise ValueError(f"rwf must be None or a dict with keys 'mean', 'std'; got {rwf!r}")
    mean = check_real(rwf.get("mean", 1.0), name="rwf mean")
    std = check_real(rwf.get("std", 0.1), name="rwf std", low=0.0)
    return {"mean": mean, "std": std}


def _activation(activation):
    return ACTIVATIONS[check_choice(activation, ACTIVATIONS, name="activation")]


def dense_init(key, d_in, d_out, dtype=None, rwf=None):
    """One dense layer: Glorot-normal ``W`` (as ``problems.mlp_init``) and zero ``b``; RWF if given.

    With ``rwf = {"mean": m, "std": s}``: ``{"s", "V", "b"}`` with ``s ~ N(m, s^2)``
    drawn from ``fold_in(key, 1)`` and ``V = W / exp(s)`` (``W`` from ``key``).
    """
    dtype = _dtype(dtype)
    std = (2.0 / (d_in + d_out)) ** 0.5
    W = std * jax.random.normal(key, (d_in, d_out), dtype)
    b = jnp.zeros((d_out,), dtype)
    if rwf is None:
        return {"W": W, "b": b}
    s = rwf["mean"] + rwf["std"] * jax.random.normal(jax.random.fold_in(key, 1), (d_out,), dtype)
    return {"s": s, "V": W / jnp.exp(s), "b": b}


def dense_weight(layer):
    """The effective weight of a dense layer: ``W``, or ``V diag(exp(s))`` for an RWF layer."""
    return layer["W"] if "W" in layer else layer["V"] * jnp.exp(layer["s"])


def dense_apply(layer, h):
    """``h @ W + b`` for a layer from :func:`dense_init`."""
    return h @ dense_weight(layer) + layer["b"]


def _dtype_name(dtype):
    return None if dtype is None else str(np.dtype(dtype))


def mlp(layers, *, activation="tanh", fourier=None, rwf=None, dtype=None) -> Network:
    """A multilayer perceptron ``layers = (d_in, h_1, ..., d_out)``, optionally embedded and RWF.

    With ``fourier=None, rwf=None`` its ``init``/``apply`` equal
    ``problems.mlp_init(key, layers)``/``problems.mlp_apply`` (same parameters for the
    same key). ``fourier`` (see :func:`embedding`) puts a fixed embedding in front, so
    the first dense layer takes the embedding's width. ``rwf`` factorises every dense
    layer (including the output layer) as in jaxpi, e.g. ``{"mean": 1.0, "std": 0.1}``.
    """
    layers = tuple(layers)
    if len(layers) < 2:
        raise ValueError(f"layers must be at least (d_in, d_out); got {layers}")
    layers = tuple(check_int(w, name="layers entries", minimum=1) for w in layers)
    act, rwf_ = _activation(activation), _rwf(rwf)
    emb = embedding(layers[0], fourier, dtype=dtype)
    widths = (emb.d_out,) + layers[1:]

    def init(key):
        keys = jax.random.split(key, len(widths) - 1)
        return [dense_init(k, a, b, dtype, rwf_) for k, a, b in zip(keys, widths[:-1], widths[1:])]

    def apply(params, x):
        h = emb(x)
        for layer in params[:-1]:
            h = act(dense_apply(layer, h))
        return dense_apply(params[-1], h)

    config = {
        "kind": "mlp",
        "layers": list(layers),
        "activation": activation,
        "fourier": emb.config,
        "rwf": rwf_,
        "dtype": _dtype_name(dtype),
    }
    return Network(init, apply, config)


def pirate_net(
    d_in,
    d_out,
    *,
    width=256,
    num_blocks=3,
    activation="tanh",
    fourier="default",
    rwf="default",
    alpha=0.0,
    dtype=None,
) -> Network:
    """A PirateNet (Wang, Li, Chen, Perdikaris 2024): gated residual blocks on an input embedding.

    With ``phi = embedding(x)`` (``fourier``, default ``{"num": width // 2, "sigma": 1.0,
    "seed": 0}``: ``width`` features as in jaxpi), gates ``U = act(W_u phi + b_u)`` and
    ``V = act(W_v phi + b_v)`` and ``x^0 = phi``, each block computes

    ``f = act(W_1 x + b_1)``, ``z = f U + (1 - f) V``, ``g = act(W_2 z + b_2)``,
    ``z = g U + (1 - g) V``, ``h = act(W_3 z + b_3)``, ``x <- alpha h + (1 - alpha) x``

    with a trainable ``alpha`` per block initialised at ``alpha`` (0: every block is the
    identity, so the network starts as the linear model ``W_out phi + b_out`` of the
    embedding). ``rwf`` (default ``{"mean": 1.0, "std": 0.1}``, jaxpi's) factorises every
    dense layer; ``None`` switches either option off. Parameters:
    ``{"U", "V", "blocks": [{"dense": [l1, l2, l3], "alpha"}], "out"}``.
    (jaxpi's optional least-squares "physics-informed" initialisation of ``out`` is left
    to the user: ``out`` is an ordinary dense layer.)
    """
    d_in, d_out = check_int(d_in, name="d_in", minimum=1), check_int(d_out, name="d_out", minimum=1)
    width = check_int(width, name="width", minimum=1)
    num_blocks = check_int(num_blocks, name="num_blocks", minimum=0)
    alpha0 = check_real(alpha, name="alpha")
    act = _activation(activation)
    if fourier == "default":
        fourier = {"num": max(1, width // 2), "sigma": 1.0, "seed": 0}
    rwf_ = _rwf({"mean": 1.0, "std": 0.1} if rwf == "default" else rwf)
    emb = embedding(d_in, fourier, dtype=dtype)
    e = emb.d_out

    def init(key):
        ku, kv, ko, kb = jax.random.split(key, 4)
        blocks = []
        for k in jax.random.split(kb, num_blocks):
            k1, k2, k3 = jax.random.split(k, 3)
            dense = [dense_init(k1, e, width, dtype, rwf_), dense_init(k2, width, width, dtype, rwf_)]
            dense.append(dense_init(k3, width, e, dtype, rwf_))
            blocks.append({"dense": dense, "alpha": jnp.asarray(alpha0, _dtype(dtype))})
        return {
            "U": dense_init(ku, e, width, dtype, rwf_),
            "V": dense_init(kv, e, width, dtype, rwf_),
            "blocks": blocks,
            "out": dense_init(ko, e, d_out, dtype, rwf_),
        }

    def apply(params, x):
        phi = emb(x)
        U, V = act(dense_apply(params["U"], phi)), act(dense_apply(params["V"], phi))
        h = phi
        for blk in params["blocks"]:
            l1, l2, l3 = blk["dense"]
            f = act(dense_apply(l1, h))
            z = f * U + (1 - f) * V
            g = act(dense_apply(l2, z))
            z = g * U + (1 - g) * V
            r = act(dense_apply(l3, z))
            h = blk["alpha"] * r + (1 - blk["alpha"]) * h
        return dense_apply(params["out"], h)

    config = {
        "kind": "pirate_net",
        "d_in": d_in,
        "d_out": d_out,
        "width": width,
        "num_blocks": num_blocks,
        "activation": activation,
        "fourier": emb.config,
        "rwf": rwf_,
        "alpha": alpha0,
        "dtype": _dtype_name(dtype),
    }
    return Network(init, apply, config)


def from_config(config) -> Network:
    """Rebuild a network from its ``config`` (e.g. read back from a checkpoint manifest)."""
    if not isinstance(config, dict) or config.get("kind") not in _BUILDERS:
        raise ValueError(f"config must be a network config with 'kind' in {sorted(_BUILDERS)}; got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    return _BUILDERS[config["kind"]](**kwargs)


_BUILDERS = {"mlp": mlp, "pirate_net": pirate_net}
