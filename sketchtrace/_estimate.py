"""The result type every estimator returns."""

from __future__ import annotations

from typing import Any, NamedTuple


class Estimate(NamedTuple):
    """A randomized estimate with its uncertainty and its cost.

    Attributes
    ----------
    value : scalar or array
        The estimate (a trace, a block trace, or a diagonal).
    sem : scalar or array
        Standard error of ``value`` (0 when the answer is exact, ``inf`` when a
        single sample leaves the spread unknown).
    num_matvecs : int
        Matrix-vector products (probes) actually spent.

    ``Estimate`` is a NamedTuple and therefore a JAX pytree: it can be returned
    from ``jax.jit``-compiled functions and ``vmap``-ed over keys.
    """

    value: Any
    sem: Any
    num_matvecs: Any

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        def fmt(x):
            try:
                return f"{float(x):.6g}"
            except (TypeError, ValueError):
                return repr(x)

        return f"Estimate(value={fmt(self.value)}, sem={fmt(self.sem)}, num_matvecs={fmt(self.num_matvecs)})"
