"""Pure-Python sizes shared by the JAX and torch weightings (no JAX, no torch).

``sample_size`` is the one subset-size rule of pc's ``subsample``: a count, a fraction
(rounded up), ``"auto"`` (``max(ceil(10 %), 64)`` points) or ``None`` (all points);
``subsample_scale`` the one scale of a subset's quadratic forms (``n / m``);
``canonical_estimator`` the one spelling rule of the weightings' ``estimator`` names.
"""

from __future__ import annotations

import math

AUTO_FRACTION, AUTO_MIN_POINTS = 0.1, 64  # subsample="auto": max(10 %, 64 points) per block

#: accepted spellings of an ``estimator`` name -> the name the weightings use
ESTIMATOR_ALIASES = {"grad_norm": "gradnorm"}


def canonical_estimator(name):
    """``estimator`` with its aliases resolved (``"grad_norm"`` is ``"gradnorm"``); anything else unchanged."""
    return ESTIMATOR_ALIASES.get(name, name) if isinstance(name, str) else name


def sample_size(spec, n: int) -> int:
    """Points kept of ``n`` for a ``subsample`` entry (a count, a fraction, ``"auto"`` or ``None`` = all)."""
    if spec is None:
        return n
    if spec == "auto":
        return min(n, max(math.ceil(AUTO_FRACTION * n), AUTO_MIN_POINTS))
    if isinstance(spec, float):
        return max(1, min(n, math.ceil(spec * n)))
    return min(int(spec), n)


def subsample_scale(n: int, m: int) -> float:
    """Scale of a block's subsampled quadratic form: ``n / m`` (uniform subset of ``m`` of ``n`` points)."""
    return n / m


__all__ = ["AUTO_FRACTION", "AUTO_MIN_POINTS", "sample_size", "subsample_scale"]
