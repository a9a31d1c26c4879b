"""Causal weighting of a time-dependent residual (Wang, Sankaran and Perdikaris 2022).

Split the time interval ``[t0, t1]`` into ``M`` equal chunks, let ``L_k`` be the mean
squared residual of the points in chunk ``k`` and weight it by

    ``w_k = exp(-eps * sum_{j<k} L_j)``  (``w_0 = 1``),

held fixed (``stop_gradient``): a later chunk counts only once the earlier ones are
solved, which respects the causal structure the plain PINN loss ignores. The causal
loss is ``(1 / M) sum_k w_k L_k``.

:class:`CausalBlock` wraps a residual block ``fn(params, points) -> (n,)`` (or
``(n, k)``) into one whose rows are ``r_i * sqrt(w_{chunk(t_i)})``; its mean of squares is
``(1 / n) sum_k w_k n_k L_k``, which equals the causal loss when the ``n_k`` are equal
(points evenly spread in time) and is its Monte-Carlo estimate for uniformly random
points; ``balance=True`` scales chunk ``k`` by ``n / (M n_k)`` as well, so the mean of
squares equals ``(1 / M) sum_k w_k L_k`` for any points. An empty chunk has ``L_k = 0``
(it adds nothing to the later chunks' exponents). The block is a
:class:`pinn_adapters.MixedBlock` (pointwise ``fn``, then a row scaling with the weights
held fixed), so NTK traces -- exact ones included -- see the weighted residual, and the
training loop needs no change.

Reference
---------
S. Wang, S. Sankaran, P. Perdikaris, "Respecting causality for training physics-informed
neural networks", Comput. Methods Appl. Mech. Engrg. 421 (2024), arXiv:2203.07404.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sketchtrace.validation import check_bool, check_int, check_real

from ._blocks import MixedBlock

__all__ = ["CausalBlock", "causal_weights", "chunk_losses", "time_chunks"]


def causal_weights(chunk_losses, eps):
    """``w_k = exp(-eps * sum_{j<k} L_j)`` for chunk losses ``L`` of shape ``(M,)``, gradient stopped."""
    L = jax.lax.stop_gradient(jnp.asarray(chunk_losses))
    if L.ndim != 1 or L.shape[0] < 1:
        raise ValueError(f"chunk_losses must have shape (M,) with M >= 1; got shape {L.shape}")
    eps = check_real(eps, name="eps", low=0.0) if not isinstance(eps, jax.Array) else eps
    return jnp.exp(-eps * (jnp.cumsum(L) - L))


def time_chunks(t, t_range, num_chunks):
    """Chunk index ``floor(M (t - t0) / (t1 - t0))`` of each time, clipped to ``[0, M - 1]``."""
    t0, t1 = t_range
    idx = jnp.floor(num_chunks * (jnp.asarray(t) - t0) / (t1 - t0)).astype(jnp.int32)
    return jnp.clip(idx, 0, num_chunks - 1)


def chunk_losses(residuals, chunks, num_chunks):
    """``(L, counts)``: mean squared residual per chunk (0 for an empty chunk) and points per chunk.

    ``residuals`` has shape ``(n,)`` or ``(n, k)`` (a point's ``k`` rows share its chunk; ``L_k``
    is the mean over the chunk's ``n_k k`` entries); ``chunks`` is ``(n,)`` of chunk indices.
    """
    r = jnp.asarray(residuals)
    sq = jnp.square(r).reshape(r.shape[0], -1)
    per_point = jnp.sum(sq, axis=1)
    total = jax.ops.segment_sum(per_point, chunks, num_segments=num_chunks)
    counts = jax.ops.segment_sum(jnp.ones_like(per_point), chunks, num_segments=num_chunks)
    return total / (jnp.maximum(counts, 1) * sq.shape[1]), counts


class CausalBlock(MixedBlock):
    """A residual block scaled by causal weights: rows ``r_i sqrt(w_{chunk(t_i)})``, ``w`` held fixed.

    Parameters
    ----------
    fn : callable
        The pointwise residual ``fn(params, points) -> (n,)`` or ``(n, k)`` (or a
        :class:`MixedBlock`, whose mixed rows must then be per point).
    time : int or callable
        The time column of ``points`` (``points[:, time]``), or ``time(points) -> (n,)``.
    t_range : (float, float)
        The time interval ``(t0, t1)`` split into chunks.
    num_chunks : int
        ``M`` (jaxpi: 32).
    eps : float
        The causality parameter (jaxpi: 1.0; larger is stricter).
    balance : bool
        Also scale chunk ``k`` by ``n / (M n_k)`` so that the mean of squares is
        ``(1 / M) sum_k w_k L_k`` exactly for any points (default False: unbiased
        for uniformly random times).

    Notes
    -----
    ``weights(params, points)`` gives the current ``(M,)`` weights (for logging, e.g. their
    minimum: near 1 once the whole interval is resolved) and ``losses(params, points)``
    the chunk losses.
    """

    def __init__(self, fn, *, time, t_range, num_chunks=32, eps=1.0, balance=False):
        if not callable(fn):
            raise TypeError(f"CausalBlock: fn must be callable; got {type(fn).__name__}")
        if not (callable(time) or isinstance(time, int) and not isinstance(time, bool) and time >= 0):
            raise TypeError(f"CausalBlock: time must be a column index (int >= 0) or a callable; got {time!r}")
        try:
            t0, t1 = (float(v) for v in t_range)
        except (TypeError, ValueError):
            raise TypeError(f"CausalBlock: t_range must be a pair (t0, t1) of numbers; got {t_range!r}") from None
        if not t1 > t0:
            raise ValueError(f"CausalBlock: t_range must have t1 > t0; got {t_range!r}")
        self.num_chunks = check_int(num_chunks, name="num_chunks", minimum=1)
        self.eps = check_real(eps, name="eps", low=0.0)
        self.t_range, self.time, self.balance, self.fn = (t0, t1), time, check_bool(balance, name="balance"), fn
        if isinstance(fn, MixedBlock):
            features, inner = fn.features, fn.mix
        else:
            features, inner = fn, None
        super().__init__(features, self._make_mix(inner))

    def _times(self, points):
        return self.time(points) if callable(self.time) else jnp.asarray(points)[:, self.time]

    def _make_mix(self, inner: Callable | None):
        def mix(u, points):
            r = u if inner is None else inner(u, points)
            return r * self.row_scale(r, points).reshape((-1,) + (1,) * (r.ndim - 1))

        return mix

    def row_scale(self, residuals, points):
        """``sqrt(w_{chunk(t_i)})`` per point (times ``sqrt(n / (M n_k))`` with ``balance``), gradient stopped."""
        r = jax.lax.stop_gradient(residuals)
        c = time_chunks(self._times(points), self.t_range, self.num_chunks)
        L, counts = chunk_losses(r, c, self.num_chunks)
        w = causal_weights(L, self.eps)
        if self.balance:
            w = w * r.shape[0] / (self.num_chunks * jnp.maximum(counts, 1))
        return jax.lax.stop_gradient(jnp.sqrt(w)[c])

    def _raw(self, params, points):
        u = self.features(params, points)
        return u if self.fn is self.features else self.fn.mix(u, points)

    def losses(self, params, points):
        """The chunk losses ``L_k`` (unweighted), shape ``(M,)``."""
        c = time_chunks(self._times(points), self.t_range, self.num_chunks)
        return chunk_losses(self._raw(params, points), c, self.num_chunks)[0]

    def weights(self, params, points):
        """The causal weights ``w_k`` at ``params`` on ``points``, shape ``(M,)``."""
        return causal_weights(self.losses(params, points), self.eps)

    def __repr__(self):
        return (
            f"CausalBlock({self.fn!r}, time={self.time!r}, t_range={self.t_range}, "
            f"num_chunks={self.num_chunks}, eps={self.eps}, balance={self.balance})"
        )
