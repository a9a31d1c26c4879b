"""The backend protocol: everything an estimator may ask of the machinery it runs on.

Estimators are written once against this interface and never ask which backend
they run on. A new backend (see ``docs/architecture.md``) implements every member.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """What estimators use; :class:`~sketchtrace.backends.JaxBackend` and ``NumbaBackend`` implement it.

    Attributes
    ----------
    name : str
        For messages and reports only; no algorithm branches on it.
    xp : module
        The array namespace (``jax.numpy`` or ``numpy``): creation, reductions,
        ``xp.linalg.qr`` / ``solve`` / ``eigvalsh`` / ``cholesky``.
    """

    name: str
    xp: Any

    def prepare(self, op) -> Any:
        """Convert and validate an operator for this backend (clear error when it cannot run here)."""

    def probe_dtype(self, op) -> Any:
        """The dtype probes are drawn in for ``op``."""

    def probes(self, key, num: int, dim: int, dtype, sampler="rademacher") -> Any:
        """``(num, dim)`` probe rows; row ``i`` depends only on ``key`` and ``i``."""

    def quad_forms(self, key, op, num: int, sampler, chunk_size) -> Any:
        """``(num, B)`` per-block quadratic forms of ``num`` fresh probes, drawn chunk by chunk."""

    def exact_quad_forms(self, op, chunk_size) -> Any:
        """``(n, B)`` per-block quadratic forms of the standard basis (their sum is the exact trace)."""

    def matmat(self, op, V, chunk_size=None) -> Any:
        """``(k, m)`` rows ``A v`` for the ``(k, n)`` rows ``V``."""

    def quad_forms_of(self, op, V, chunk_size=None) -> Any:
        """``(k, B)`` per-block ``v_b . (A v)_b`` of the given rows ``V``."""

    def split(self, key, num: int) -> list:
        """``num`` independent keys (or child Generators)."""

    def check_finite(self, name: str, x) -> None:
        """Raise ``FloatingPointError`` naming ``name`` when concrete ``x`` is not finite."""

    def is_concrete(self, x) -> bool:
        """Whether ``x`` holds values (``False`` for tracers under ``jax.jit``)."""

    def jit(self, fn: Callable, static_argnames=()) -> Callable:
        """Compile ``fn`` where the backend can (``jax.jit``); the identity elsewhere."""

    def adjoint(self, op) -> Any:
        """An operator this backend applies as ``A^T`` (for ``matmat``), or ``None`` when ``op`` has
        no usable transpose product here."""

    def lanczos(self, matmat: Callable, Z, num_steps: int, *, reorthogonalize=False, keep_basis=False) -> Any:
        """Batched Lanczos from the rows of ``Z``: ``(alpha, beta, basis, norms)`` (``num_steps`` products)."""

    def with_adjoint(self, matmat: Callable, forward: Callable, Z) -> Any:
        """``forward(matmat, Z, False)[0]``, differentiable w.r.t. the operator where the backend differentiates.

        The gradient of value ``i`` is taken as that of ``u_i^T A z_i`` with the rows
        ``U`` of ``forward(matmat, Z, True)[1]`` held fixed (an adjoint, not a backward
        pass through ``forward``).
        """
