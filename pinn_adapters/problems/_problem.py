"""The container describing a built-in PINN problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._blocks import ResidualBlocks
from ..causal import CausalBlock
from ._mlp import mlp_apply, mlp_init


@dataclasses.dataclass(frozen=True)
class Problem:
    """A physics-informed training problem.

    Attributes
    ----------
    name : str
    blocks : ResidualBlocks
        The residual blocks (``fn(params, points)``).
    layers : tuple or str
        Network widths ``(d_in, ..., d_out)`` of the plain MLP (or of a ``nets.mlp``);
        for another ``network=`` a short description (its full config is
        ``info["network"]``).
    init_params : callable
        ``init_params(key) -> params`` (the problem's network).
    apply : callable
        ``apply(params, x) -> u`` for one input point ``x``.
    sample_batch : callable
        ``sample_batch(key) -> batch`` (block name -> points) with the default sizes.
    batch_sizes : dict
        Points per block drawn by ``sample_batch``.
    exact_solution : callable
        The exact solution, vectorised over points.
    relative_l2 : callable
        ``relative_l2(params) -> float``: ``||u - u*||_2 / ||u*||_2`` on a fixed grid.
    learning_rate : float
        Default Adam learning rate.
    info : dict
        The problem's settings (recorded in checkpoint manifests); ``info["network"]``
        is the network's config when a ``network=`` was given, ``info["causal"]`` the
        causal weighting options when set.
    network : pinn_adapters.nets.Network or None
        The network given as ``network=`` (``None``: the plain tanh MLP of ``layers``).
    """

    name: str
    blocks: ResidualBlocks
    layers: tuple
    init_params: Callable
    apply: Callable
    sample_batch: Callable
    batch_sizes: dict
    exact_solution: Callable
    relative_l2: Callable
    learning_rate: float = 1e-3
    decay_steps: int = 1000
    decay_rate: float = 0.9
    info: Any = None
    network: Any = None

    def default_optimizer(self):
        """Adam with the problem's learning rate, decayed by ``decay_rate`` every ``decay_steps``."""
        import optax

        schedule = optax.exponential_decay(
            self.learning_rate, transition_steps=self.decay_steps, decay_rate=self.decay_rate, staircase=True
        )
        return optax.adam(schedule)


def resolve_network(network, layers, *, d_in, d_out, problem, default_layers, dtype=None):
    """``(init, apply, layers, config)`` for a problem's ``network=`` / ``layers=`` arguments.

    ``network=None``: the plain tanh MLP of ``layers`` (``default_layers`` when ``None``),
    exactly :func:`mlp_init`/:func:`mlp_apply`, with ``config=None``. Otherwise ``network``
    must be a ``pinn_adapters.nets.Network`` (``init``, ``apply``, ``config``) mapping
    ``(d_in,)`` to ``(d_out,)``, checked abstractly (``jax.eval_shape``, no computation);
    ``layers`` must then be left out.
    """
    if network is None:
        layers = tuple(default_layers if layers is None else layers)
        if len(layers) < 2 or layers[0] != d_in or layers[-1] != d_out:
            raise ValueError(
                f"layers must start with width {d_in} and end with width {d_out} for {problem}; got {layers}"
            )
        return (lambda key: mlp_init(key, layers, dtype)), mlp_apply, layers, None
    if layers is not None:
        raise TypeError(f"{problem}: give layers= (a plain MLP) or network=, not both")
    if not all(callable(getattr(network, a, None)) for a in ("init", "apply")) or not isinstance(
        getattr(network, "config", None), dict
    ):
        raise TypeError(
            f"network must be a pinn_adapters.nets.Network (init, apply, config), e.g. nets.mlp(...); "
            f"got {type(network).__name__}"
        )
    try:
        out = jax.eval_shape(
            lambda k: network.apply(network.init(k), jnp.zeros((d_in,), dtype or jnp.result_type(float))),
            jax.random.key(0),
        )
    except Exception as exc:  # noqa: BLE001 - any failure of the user's network is reported with its cause
        raise ValueError(f"network could not be applied to one ({d_in},) input point for {problem}: {exc}") from exc
    if getattr(out, "shape", None) != (d_out,):
        raise ValueError(
            f"network.apply must map one ({d_in},) point to shape ({d_out},) for {problem}; "
            f"got {getattr(out, 'shape', type(out).__name__)}"
        )
    config = network.config
    if "layers" in config:
        desc = tuple(int(w) for w in config["layers"])
    else:
        desc = f"{config.get('kind', 'network')}({d_in} -> {d_out})"
    return network.init, network.apply, desc, dict(config)


def problem_info(info, network_config, causal):
    """``info`` with ``"network"`` and ``"causal"`` added when set (unchanged for the defaults)."""
    info = dict(info)
    if network_config is not None:
        info["network"] = network_config
    if causal is not None:
        info["causal"] = causal
    return info


CAUSAL_KEYS = ("eps", "num_chunks", "balance")


def causal_residual(fn, causal, *, time, t_range):
    """``fn`` itself (``causal=None``) or ``pinn_adapters.causal.CausalBlock`` with the given options.

    ``causal`` is ``None`` or a dict with ``"eps"`` (default 1.0) and ``"num_chunks"``
    (default 32), jaxpi's defaults, and optionally ``"balance"``. Returns
    ``(block, options)`` with the options filled in (``None`` when off).
    """
    if causal is None:
        return fn, None
    if not isinstance(causal, dict) or set(causal) - set(CAUSAL_KEYS):
        raise ValueError(f"causal must be None or a dict with keys from {list(CAUSAL_KEYS)}; got {causal!r}")
    opts = {"eps": 1.0, "num_chunks": 32, "balance": False, **causal}
    block = CausalBlock(
        fn, time=time, t_range=t_range, num_chunks=opts["num_chunks"], eps=opts["eps"], balance=opts["balance"]
    )
    return block, {"eps": block.eps, "num_chunks": block.num_chunks, "balance": block.balance}
