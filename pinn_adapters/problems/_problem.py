"""The container describing a built-in PINN problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .._blocks import ResidualBlocks


@dataclasses.dataclass(frozen=True)
class Problem:
    """A physics-informed training problem.

    Attributes
    ----------
    name : str
    blocks : ResidualBlocks
        The residual blocks (``fn(params, points)``).
    layers : tuple
        Network widths ``(d_in, ..., d_out)``.
    init_params : callable
        ``init_params(key) -> params`` (the default network).
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

    def default_optimizer(self):
        """Adam with the problem's learning rate, decayed by ``decay_rate`` every ``decay_steps``."""
        import optax

        schedule = optax.exponential_decay(
            self.learning_rate, transition_steps=self.decay_steps, decay_rate=self.decay_rate, staircase=True
        )
        return optax.adam(schedule)
