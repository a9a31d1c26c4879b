"""The result type every estimator returns."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._optional import HAS_JAX, jax


class _Fields(NamedTuple):
    value: Any
    sem: Any
    num_matvecs: Any


class Estimate(_Fields):
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
    dof : int or None
        Degrees of freedom of ``sem`` when it is a sample standard deviation of few
        independent replicas (``probes - 1``): widen the interval with Student's t,
        ``value +- scipy.stats.t.ppf(0.975, dof) * sem``. ``None``: not stated (many
        replicas, or a ``sem`` that is not a replica spread). Not part of the tuple.
    quadrature_error : scalar or None
        Matrix functions only (:func:`sketchtrace.trace_function`): an a-posteriori
        estimate of the Lanczos quadrature bias, which ``sem`` does not include. Not
        part of the tuple.

    ``Estimate`` is a 3-tuple ``(value, sem, num_matvecs)`` (``est, sem, n = result``
    unpacks it) and a JAX pytree: it can be returned from ``jax.jit``-compiled functions
    and ``vmap``-ed over keys; ``dof`` and ``quadrature_error`` travel with it.
    """

    dof = None
    quadrature_error = None

    def __new__(cls, value, sem, num_matvecs, *, dof=None, quadrature_error=None):
        self = super().__new__(cls, value, sem, num_matvecs)
        if dof is not None:
            self.dof = dof
        if quadrature_error is not None:
            self.quadrature_error = quadrature_error
        return self

    def _replace(self, **changes):
        fields = {"dof": self.dof, "quadrature_error": self.quadrature_error, **self._asdict(), **changes}
        return type(self)(**fields)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        def fmt(x):
            try:
                return f"{float(x):.6g}"
            except (TypeError, ValueError):
                return repr(x)

        extra = "" if self.dof is None else f", dof={self.dof}"
        if self.quadrature_error is not None:
            extra += f", quadrature_error={fmt(self.quadrature_error)}"
        return f"Estimate(value={fmt(self.value)}, sem={fmt(self.sem)}, num_matvecs={fmt(self.num_matvecs)}{extra})"


def _flatten(est):
    return (est.value, est.sem, est.num_matvecs, est.quadrature_error), est.dof


def _unflatten(dof, children):
    value, sem, num_matvecs, quadrature_error = children
    return Estimate(value, sem, num_matvecs, dof=dof, quadrature_error=quadrature_error)


if HAS_JAX:  # a NamedTuple subclass with attributes: registered so that the attributes travel
    jax.tree_util.register_pytree_node(Estimate, _flatten, _unflatten)
