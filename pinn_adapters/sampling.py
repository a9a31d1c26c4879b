"""Residual-based adaptive sampling of collocation points (RAD; Wu, Zhu, Tan, Kartha and Lu 2023).

Uniform collocation points resolve a sharp front (Burgers' shock) only where they happen to fall.
RAD draws a pool of ``pool`` uniform batches, evaluates one block's residuals on all of the pool's
points at the current parameters, and keeps as many points as one batch has, drawn without
replacement with probability proportional to

    ``p(x) = |r(x)|^k / mean(|r|^k) + c``

(``|r(x)|``: the norm of the point's residual rows). ``k = 0`` or a large ``c`` is uniform
sampling; Wu et al. recommend ``k = 1, c = 1`` as a default. The other blocks come from the first
batch of the pool, unchanged. The draw is one compiled program (``pool`` batches, one residual
evaluation on ``pool`` times the block's points, a Gumbel top-k selection), cached per sampler.

>>> import jax, pinn_adapters as pa
>>> prob = pa.problems.burgers(layers=(2, 8, 1), n_res=32, n_bc=8)
>>> rad = pa.sampling.residual_adaptive(prob.blocks, prob.sample_batch, block="res", pool=4)
>>> batch = rad(jax.random.key(0), prob.init_params(jax.random.key(1)))
>>> {n: b.shape for n, b in batch.items()} == {n: b.shape for n, b in prob.sample_batch(jax.random.key(0)).items()}
True

:func:`pinn_adapters.second_order.levenberg_marquardt` (and ``pa.second_order.lm``) take it as
``adaptive_sampling={"block": ..., "pool": ..., "k": ..., "c": ...}``: each resample (every
``resample_every``-th accepted step) is then a RAD draw at the parameters of that step. The
first-order training loop draws its batch inside the compiled step every step, where a pool of
residual evaluations per step would cost several steps; it does not use RAD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sketchtrace.validation import check_callable, check_choice, check_int, check_real

from ._blocks import ResidualBlocks

__all__ = ["ResidualAdaptiveSampler", "residual_adaptive"]

#: the options of :func:`residual_adaptive` (besides the blocks and the uniform sampler)
OPTIONS = ("block", "pool", "k", "c")
MAX_POOL = 1024


def check_adaptive_options(options, *, name="adaptive_sampling") -> dict:
    """``options`` (a dict of :data:`OPTIONS`) checked and completed with the defaults; the block name
    is checked against the blocks when the sampler is made."""
    if not isinstance(options, dict):
        raise TypeError(f"{name} must be a dict with keys among {list(OPTIONS)}; got {type(options).__name__}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; expected keys among {list(OPTIONS)}")
    out = {"block": options.get("block", "res")}
    if not isinstance(out["block"], str):
        raise TypeError(f"{name}: block must be a block name (str); got {type(out['block']).__name__}")
    out["pool"] = check_int(options.get("pool", 8), name=f"{name}: pool", minimum=2, maximum=MAX_POOL)
    out["k"] = check_real(options.get("k", 1.0), name=f"{name}: k", low=0)
    out["c"] = check_real(options.get("c", 1.0), name=f"{name}: c", low=0)
    if out["k"] == 0 and out["c"] == 0:
        raise ValueError(f"{name}: k = 0 and c = 0 give every point density 0; use c > 0 (c = 1: Wu et al.)")
    return out


class ResidualAdaptiveSampler:
    """``sampler(key, params) -> batch``: a RAD draw (see the module docstring); ``config``: its options."""

    def __init__(self, blocks, sample_batch, **options):
        if not isinstance(blocks, ResidualBlocks):
            raise TypeError(f"blocks must be a pinn_adapters.ResidualBlocks; got {type(blocks).__name__}")
        self.sample_batch = check_callable(sample_batch, name="sample_batch")
        self.config = {"sampler": "rad", **check_adaptive_options(options, name="residual_adaptive")}
        check_choice(self.config["block"], blocks.names, name="residual_adaptive (adaptive_sampling): block")
        self.blocks = blocks
        self._draw = jax.jit(self._draw_impl)

    def __repr__(self):
        opts = ", ".join(f"{k}={self.config[k]!r}" for k in OPTIONS)
        return f"ResidualAdaptiveSampler({opts})"

    def __call__(self, key, params):
        return self._draw(key, params)

    def _draw_impl(self, key, params):
        name, pool, k, c = (self.config[o] for o in OPTIONS)
        k_pool, k_pick = jax.random.split(key)
        batches = [self.sample_batch(jax.random.fold_in(k_pool, i)) for i in range(pool)]
        batch = dict(batches[0])
        cand = jax.tree.map(lambda *a: jnp.concatenate(a), *[b[name] for b in batches])
        m = jax.tree.leaves(batch[name])[0].shape[0]
        total = pool * m
        r = self.blocks.block_residuals(name, params, cand)
        size = jnp.sqrt(jnp.sum(jnp.square(r.reshape(total, -1)), axis=1))
        size = jnp.where(jnp.isfinite(size), size, 0.0)  # a non-finite residual is refused by the caller's checks
        powered = size**k if k != 0 else jnp.ones_like(size)
        scale = jnp.mean(powered)
        density = jnp.where(scale > 0, powered / jnp.where(scale > 0, scale, 1.0), 1.0) + c
        # m points without replacement with probabilities proportional to density: Gumbel top-k
        g = jax.random.gumbel(k_pick, (total,), density.dtype)
        idx = jax.lax.top_k(jnp.log(density) + g, m)[1]
        batch[name] = jax.tree.map(lambda a: a[idx], cand)
        return batch


def residual_adaptive(blocks, sample_batch, *, block="res", pool=8, k=1.0, c=1.0) -> ResidualAdaptiveSampler:
    """A RAD sampler over ``sample_batch(key) -> batch`` (uniform draws) for the block ``block``.

    ``pool``: uniform batches per draw (2 to 1024; the candidates are ``pool`` times the block's
    points); ``k``, ``c``: the density ``|r|^k / mean(|r|^k) + c``. Every option is checked here.
    ``sample_batch`` is traced by ``jax.jit`` (the problems' samplers are); the block's residuals must
    have the same number of rows for every point (they are grouped by point to give ``|r(x)|``).
    """
    return ResidualAdaptiveSampler(blocks, sample_batch, block=block, pool=pool, k=k, c=c)
