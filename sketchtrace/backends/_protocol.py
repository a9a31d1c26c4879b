"""The backend protocol: everything an estimator may ask of the machinery it runs on.

Estimators are written once against :class:`Backend` and never ask which backend they run on.
Of its members, a new backend must write only the five of :class:`CoreBackend` (arrays,
randomness, operator preparation); :class:`BackendDefaults` derives the rest from them
(chunked products, quadratic forms of fresh probes or of the standard basis, finiteness
checks, no compilation, no adjoint). The JAX, numba and torch backends override defaults
where they have something better (fused kernels, ``jax.jit``, ``lax.map`` chunking).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class CoreBackend(Protocol):
    """What a new backend must provide.

    Attributes
    ----------
    name : str
        For messages and reports only; no algorithm branches on it.
    xp : module
        The array namespace (``jax.numpy``, ``numpy`` or the torch view): creation, reductions,
        ``xp.linalg.qr`` / ``solve`` / ``eigvalsh`` / ``cholesky``.
    """

    name: str
    xp: Any

    def prepare(self, op) -> Any:
        """Convert and validate an operator for this backend (clear error when it cannot run here)."""

    def probes(self, key, num: int, dim: int, dtype, sampler="rademacher") -> Any:
        """``(num, dim)`` probe rows; row ``i`` depends only on ``key`` and ``i``."""

    def split(self, key, num: int) -> list:
        """``num`` independent keys (or child Generators)."""


@runtime_checkable
class Backend(CoreBackend, Protocol):
    """Everything estimators use: the core plus members :class:`BackendDefaults` derives."""

    def probe_dtype(self, op) -> Any:
        """The dtype probes are drawn in for ``op``."""

    def quad_forms(self, key, op, num: int, sampler, chunk_size) -> Any:
        """``(num, B)`` per-block quadratic forms of ``num`` fresh probes, drawn chunk by chunk."""

    def exact_quad_forms(self, op, chunk_size) -> Any:
        """``(n, B)`` per-block quadratic forms of the standard basis (their sum is the exact trace)."""

    def matmat(self, op, V, chunk_size=None) -> Any:
        """``(k, m)`` rows ``A v`` for the ``(k, n)`` rows ``V``."""

    def quad_forms_of(self, op, V, chunk_size=None) -> Any:
        """``(k, B)`` per-block ``v_b . (A v)_b`` of the given rows ``V``."""

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


#: Standard-basis vectors per chunk for the default exact quadratic forms.
EXACT_CHUNK = 256


def _chunks(num, chunk_size):
    step = num if chunk_size is None else max(1, min(chunk_size, num))
    for lo in range(0, num, step):
        yield lo, min(num, lo + step)


class BackendDefaults:
    """The members of :class:`Backend` derived from a :class:`CoreBackend` (mix in, override freely).

    All but ``lanczos``: a backend that runs the matrix-function estimators writes its batched
    Lanczos (``sketchtrace.backends._krylov`` has the shared step arithmetic).

    Products go through the prepared operator's own ``matmat`` / ``quad_forms`` in chunks of
    ``chunk_size`` rows; fresh probes are drawn in one block (so a result does not depend on
    ``chunk_size``); the exact path uses chunks of the standard basis.
    """

    name: str
    xp: Any

    def probe_dtype(self, op):
        return op.dtype

    def _concat(self, parts):
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=0)

    def matmat(self, op, V, chunk_size=None):
        return self._concat([op.matmat(V[lo:hi]) for lo, hi in _chunks(V.shape[0], chunk_size)])

    def quad_forms_of(self, op, V, chunk_size=None):
        return self._concat([op.quad_forms(V[lo:hi]) for lo, hi in _chunks(V.shape[0], chunk_size)])

    def quad_forms(self, key, op, num, sampler, chunk_size):
        V = self.probes(key, num, op.probe_dim, self.probe_dtype(op), sampler)
        return self.quad_forms_of(op, V, chunk_size)

    def exact_quad_forms(self, op, chunk_size):
        n, xp = op.probe_dim, self.xp
        eye = xp.eye(n, dtype=self.probe_dtype(op))
        return self._concat([op.quad_forms(eye[lo:hi]) for lo, hi in _chunks(n, chunk_size or EXACT_CHUNK)])

    def check_finite(self, name, x):
        if self.is_concrete(x) and not bool(self.xp.all(self.xp.isfinite(x))):
            raise FloatingPointError(
                f"{name}: the operator produced non-finite values (NaN or inf); check the operator"
            )

    def is_concrete(self, x) -> bool:
        return True

    def jit(self, fn, static_argnames=()):
        return fn

    def adjoint(self, op):
        return None

    def with_adjoint(self, matmat, forward, Z):
        """No automatic differentiation: the values of ``forward`` alone."""
        return forward(matmat, Z, False)[0]

    def probes(self, key, num, dim, dtype, sampler="rademacher"):  # pragma: no cover - core member
        raise NotImplementedError(f"{type(self).__name__} must implement probes (a CoreBackend member)")
