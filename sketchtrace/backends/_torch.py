"""The PyTorch backend: a ``torch.Generator`` as the key, torch tensors and operators.

:class:`TorchBackend` implements :class:`sketchtrace.backends.Backend`, so every
estimator runs on it unchanged. Its array namespace ``xp`` is the Array API view
of torch (``array_api_compat.torch``) that also accepts a dtype positionally and
NumPy dtypes, as the estimators write ``xp.zeros(shape, dtype)``.

Device and dtype follow the operator: probes are drawn with the Generator on the
Generator's device, in the operator's dtype, and moved to the operator's device
(use ``torch.Generator(device="cuda")`` to draw on the GPU). Every product runs
under ``torch.no_grad()`` (``torch.func`` transforms inside operators still work).

Probe streams (chunk-invariant: for a given seed the probes, hence the result, do
not depend on ``chunk_size``): a Rademacher block is ``1 - 2 * torch.randint(0, 2,
(num, n))``; a Gaussian block is Box-Muller from ``torch.rand((num, 2, n))`` drawn
in float64; a sphere block is a Gaussian block scaled to norm ``sqrt(n)``. A
callable sampler is called as ``sampler(generator, (num, n), dtype)``.
"""

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError(
        "the torch backend (a torch.Generator as key) needs PyTorch: pip install 'sketchtrace[torch]'"
    ) from exc

import functools
import math

import array_api_compat.torch as _compat
import numpy as np

from .._samplers import SAMPLERS
from ..operators._torch import TorchTensorOperator, as_torch_operator, serial_rows
from ._krylov import breakdown_tol, lanczos_step, start_rows

_SAMPLER_NAMES = {fn: name for name, fn in SAMPLERS.items()}

#: Basis vectors per chunk for exact quadratic forms through products.
_EXACT_CHUNK = 256

_NP_TO_TORCH = {
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}


def to_torch_dtype(dtype):
    """A ``torch.dtype`` for a torch dtype, a NumPy dtype or ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _NP_TO_TORCH[np.dtype(dtype)]
    except (KeyError, TypeError) as exc:
        raise TypeError(f"dtype {dtype!r} has no torch counterpart here") from exc


class _Namespace:
    """``array_api_compat.torch`` with creation functions that take a positional or NumPy dtype.

    Arrays created without ``device=`` go on the namespace's device (the backend's), so
    an estimator's small dense algebra (``xp.eye``, ``xp.zeros``) meets its products there.
    """

    def __init__(self, device=None):
        self.device = None if device is None else torch.device(device)

    def __getattr__(self, name):
        return getattr(_compat, name)

    def _creation(self, fn, *args, dtype=None, **kw):
        if self.device is not None and fn is not _compat.zeros_like:
            kw.setdefault("device", self.device)
        return fn(*args, dtype=to_torch_dtype(dtype), **kw)

    def zeros(self, shape, dtype=None, **kw):
        return self._creation(_compat.zeros, shape, dtype=dtype, **kw)

    def ones(self, shape, dtype=None, **kw):
        return self._creation(_compat.ones, shape, dtype=dtype, **kw)

    def full(self, shape, fill_value, dtype=None, **kw):
        return self._creation(_compat.full, shape, fill_value, dtype=dtype, **kw)

    def eye(self, n, m=None, dtype=None, **kw):
        return self._creation(_compat.eye, n, m, dtype=dtype, **kw)

    def asarray(self, obj, dtype=None, **kw):
        return self._creation(_compat.asarray, obj, dtype=dtype, **kw)

    def astype(self, x, dtype, **kw):
        return _compat.astype(x, to_torch_dtype(dtype), **kw)

    def zeros_like(self, x, dtype=None, **kw):
        return self._creation(_compat.zeros_like, x, dtype=dtype, **kw)

    def finfo(self, dtype):
        return _compat.finfo(to_torch_dtype(dtype))

    @staticmethod
    def cholesky_or_nan(H):
        """Lower Cholesky factor of ``H``, NaNs where it fails (JAX's behaviour; torch would raise).

        ``torch.linalg.cholesky_ex`` reports failure in ``info`` instead of raising
        ``torch.linalg.LinAlgError``, without a host synchronisation (on a GPU too).
        """
        L, info = torch.linalg.cholesky_ex(H)
        return torch.where((info == 0)[..., None, None], L, torch.full_like(L, float("nan")))

    float32, float64, int32, int64 = torch.float32, torch.float64, torch.int32, torch.int64


xp = _Namespace()  # no device of its own (torch's default)


@functools.cache
def namespace_for(device) -> _Namespace:
    """The namespace that creates arrays on ``device``."""
    return _Namespace(device)


def _chunks(num, chunk_size):
    step = num if chunk_size is None else max(1, min(chunk_size, num))
    for lo in range(0, num, step):
        yield lo, min(num, lo + step)


def _sampler_name(sampler):
    if callable(sampler):
        return _SAMPLER_NAMES.get(sampler, sampler)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)} or a callable; got {sampler!r}")
    return sampler


def draw(gen, num, dim, dtype, sampler):
    """``(num, dim)`` probe rows from ``gen`` on ``gen``'s device (see the module docstring)."""
    dtype = to_torch_dtype(dtype)
    dev = gen.device
    if sampler == "rademacher":
        bits = torch.randint(0, 2, (num, dim), generator=gen, device=dev, dtype=torch.int8)
        return serial_rows(lambda b: b.to(dtype).mul_(-2).add_(1), bits)  # float arithmetic: int8's is slow on CPU
    if sampler in ("gaussian", "sphere"):
        u = torch.rand((num, 2, dim), generator=gen, device=dev, dtype=torch.float64)  # probe by probe
        return serial_rows(functools.partial(_box_muller, dtype=dtype, sphere=sampler == "sphere"), u, width=2 * dim)
    V = sampler(gen, (num, dim), dtype)
    if not isinstance(V, torch.Tensor) or tuple(V.shape) != (num, dim):
        got = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
        raise ValueError(
            f"sampler returned {got}; expected a torch tensor of shape {(num, dim)} (sampler(gen, shape, dtype))"
        )
    return V.to(dtype)


def _box_muller(u, dtype, sphere):
    """Gaussian (or sphere) rows from ``u``, ``(k, 2, n)`` uniforms in float64; see the module docstring."""
    V = torch.sqrt(-2.0 * torch.log1p(-u[:, 0])) * torch.cos(2.0 * math.pi * u[:, 1])
    if sphere:
        V = V * (math.sqrt(V.shape[1]) / torch.linalg.vector_norm(V, dim=1, keepdim=True))
    return V.to(dtype)


def lanczos_torch(matmat, Z, num_steps, *, reorthogonalize=False, keep_basis=False):
    """Batched Lanczos on torch tensors (the shared step arithmetic in a Python loop).

    Same outputs as :func:`sketchtrace.backends._krylov.lanczos_numpy`: ``(alpha, beta,
    basis, norms)``, ``num_steps`` block products.
    """
    k, n = Z.shape
    dt, dev = Z.dtype, Z.device
    ns = namespace_for(dev)
    q, norms = start_rows(ns, Z)
    q_prev = torch.zeros_like(q)
    beta_prev = torch.zeros(k, dtype=dt, device=dev)
    store = reorthogonalize or keep_basis
    basis = torch.zeros((k, num_steps, n), dtype=dt, device=dev) if store else None
    alpha = torch.zeros((k, num_steps), dtype=dt, device=dev)
    beta = torch.zeros((k, num_steps), dtype=dt, device=dev)
    tol = breakdown_tol(np.dtype(str(dt).replace("torch.", "")), n)
    for j in range(num_steps):
        if store:
            basis[:, j] = q
        W = matmat(q).to(dt)
        a, b, q_next = lanczos_step(ns, W, q, q_prev, beta_prev, basis if reorthogonalize else None, tol)
        alpha[:, j], beta[:, j] = a, b
        q_prev, q, beta_prev = q, q_next, b
    return alpha, beta, basis, norms


class TorchBackend:
    """The torch backend for one device (probe rows are moved there); see the module docstring."""

    name = "torch"

    def __init__(self, device):
        self.device = torch.device(device)
        self.xp = namespace_for(self.device)

    def __repr__(self):
        return f"TorchBackend(device={self.device})"

    @staticmethod
    def prepare(op):
        return as_torch_operator(op)

    @staticmethod
    def probe_dtype(op):
        return op.dtype

    @staticmethod
    def is_concrete(x) -> bool:
        return True

    @staticmethod
    def jit(fn, static_argnames=()):
        return fn

    #: Batched Lanczos (stochastic Lanczos quadrature): block products in a Python loop.
    lanczos = staticmethod(lanczos_torch)

    @staticmethod
    def adjoint(op):
        """``A^T`` as a torch operator (stored tensors, or a function operator with ``rmatvec``)."""
        from ..operators._torch import TorchFunctionOperator

        if "rmatmat" not in getattr(op, "products", ()):
            return None
        if isinstance(op, TorchTensorOperator):
            At = op.A.t()
            return TorchTensorOperator(At.to_sparse_coo() if op.is_sparse else At)  # CSR^T is CSC: stored as COO
        if isinstance(op, TorchFunctionOperator) and op.rmatvec_fn is not None:
            return TorchFunctionOperator(
                op.rmatvec_fn, op.shape[::-1], op.dtype, device=op.device, vectorized=op.vectorized
            )
        return None

    @staticmethod
    def with_adjoint(matmat, forward, Z):
        """No adjoint here (products run under ``torch.no_grad``): the values of ``forward`` alone."""
        return forward(matmat, Z, False)[0]

    @staticmethod
    def split(gen, num):
        """``num`` child Generators seeded from ``gen`` (deterministic given ``gen``'s state)."""
        seeds = torch.randint(0, 2**62, (num,), generator=gen, device=gen.device).tolist()
        return [torch.Generator(device=gen.device).manual_seed(int(s)) for s in seeds]

    def probes(self, gen, num, dim, dtype, sampler="rademacher"):
        return draw(gen, num, dim, dtype, _sampler_name(sampler)).to(self.device)

    @staticmethod
    def _over_chunks(fn, op, V, chunk_size):
        V = V.to(device=op.device, dtype=op.dtype)
        with torch.no_grad():
            parts = [fn(V[lo:hi]) for lo, hi in _chunks(V.shape[0], chunk_size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def matmat(self, op, V, chunk_size=None):
        return self._over_chunks(op.matmat, op, V, chunk_size)

    def quad_forms_of(self, op, V, chunk_size=None):
        return self._over_chunks(op.quad_forms, op, V, chunk_size)

    @staticmethod
    def quad_forms(gen, op, num, sampler, chunk_size):
        sampler = _sampler_name(sampler)
        n = op.probe_dim
        parts = []
        with torch.no_grad():
            for lo, hi in _chunks(num, chunk_size):
                V = draw(gen, hi - lo, n, op.dtype, sampler).to(op.device)
                parts.append(op.quad_forms(V))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    @staticmethod
    def exact_quad_forms(op, chunk_size):
        """``(n, B)`` quadratic forms of the standard basis (a stored matrix's diagonal directly)."""
        n = op.probe_dim
        if isinstance(op, TorchTensorOperator):
            return _diagonal_by_block(op)
        parts = []
        with torch.no_grad():
            for lo, hi in _chunks(n, chunk_size or _EXACT_CHUNK):
                E = torch.zeros((hi - lo, n), dtype=op.dtype, device=op.device)
                E[torch.arange(hi - lo), torch.arange(lo, hi)] = 1
                parts.append(op.quad_forms(E))
        return torch.cat(parts, dim=0)

    @staticmethod
    def check_finite(name, x):
        x = torch.as_tensor(x)
        x = x.reshape(1) if x.ndim == 0 else x
        if not bool(serial_rows(_finite_rows, x).all()):
            raise FloatingPointError(
                f"{name}: the operator produced non-finite values (NaN or inf); check the operator"
            )


def _finite_rows(t):
    """``(k,)``: whether each leading row of ``t`` is finite."""
    return torch.isfinite(t).flatten(1).all(dim=1) if t.ndim > 1 else torch.isfinite(t)


def _diagonal_by_block(op):
    """``(n, B)``: row ``i`` holds ``a_ii`` in the column of ``i``'s block."""
    d = op.diagonal()
    if op.blocks is None:
        return d[:, None]
    Q = torch.zeros((d.shape[0], len(op.blocks)), dtype=d.dtype, device=d.device)
    for b, (_, lo, hi) in enumerate(op.blocks):
        Q[lo:hi, b] = d[lo:hi]
    return Q


@functools.cache
def torch_backend(device) -> TorchBackend:
    """The (cached) backend for a device."""
    return TorchBackend(device)


def is_torch_generator(key) -> bool:
    return isinstance(key, torch.Generator)
