"""numba CPU backend: NumPy/SciPy operators, a ``numpy.random.Generator`` for randomness.

:class:`NumbaBackend` implements :class:`sketchtrace.backends.Backend`, so every estimator is written once and runs on
either backend. What differs is done here:

* operators: dense NumPy matrices go through BLAS; ``scipy.sparse`` matrices
  (converted once to CSR by :func:`sketchtrace.as_operator`) through parallel numba
  kernels; a SciPy ``LinearOperator`` through its ``matmat``; a
  :class:`~sketchtrace.FunctionOperator` whose matvec is a numba ``@njit`` function is
  called over the probes in a parallel loop, and any other callable once per probe;
* Hutchinson's quadratic forms on a CSR matrix are fused with the product (``A V``
  is never stored), and Rademacher probes travel as bits;
* probes are drawn with the Generator outside any parallel kernel, probe after
  probe, so for a given seed the result is bitwise the same for any
  ``NUMBA_NUM_THREADS`` and any ``chunk_size`` (for sparse and numba-function
  operators; a dense product goes through BLAS, whose rounding may depend on
  the chunk size).

Probe streams: a Rademacher probe of length ``n`` is ``ceil(n / 64)`` raw 64-bit
draws (``Generator.integers`` over the full uint64 range), entry ``j`` being ``-1``
when bit ``j % 64`` of word ``j // 64`` is set; Gaussian probes are
``Generator.standard_normal((num, n), dtype)``; sphere probes are Gaussian probes
scaled to norm ``sqrt(n)``. A callable sampler is called as
``sampler(rng, (num, n), dtype)`` and must return such a NumPy array.
"""

from __future__ import annotations

try:
    import numba
    from numba.core.registry import CPUDispatcher
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without numba
    raise ImportError(
        "the numba backend (a numpy.random.Generator as key) needs numba: "
        "pip install 'sketchtrace[numba]' (or pass a jax.random key to use the JAX backend)"
    ) from exc

import math

import numpy as np

from .._samplers import SAMPLERS
from ..operators import (
    DenseOperator,
    FunctionOperator,
    LinearOperator,
    ScipyOperator,
    SparseOperator,
    as_operator,
    check_output,
    make_blocks,
)
from ..validation import check_csr, check_matvec_output, probe_matvec, scipy_raw_matvec
from . import _numba_kernels as K
from ._numba_lanczos import lanczos_numba

_SAMPLER_NAMES = {fn: name for name, fn in SAMPLERS.items()}

#: Probes per chunk when computing exact quadratic forms with the standard basis
#: through a matvec (bounds memory at ``_EXACT_CHUNK * n``).
_EXACT_CHUNK = 256

#: With fewer probes per chunk than this, the CSR kernel on float probes is faster
#: than the bit kernel (which always works on 64 lanes).
_MIN_BIT_PROBES = 4


def _compute_dtype(dtype) -> np.dtype:
    """float64 stays float64; float32 and float16 compute in float32."""
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"op dtype must be a real floating dtype (float32 or float64); got {dt}")
    return np.dtype(np.float64) if dt.itemsize > 4 else np.dtype(np.float32)


class NumbaOperator:
    """An operator prepared for the numba backend (NumPy data, one compute dtype).

    ``kind`` is ``"dense"``, ``"csr"``, ``"scipy"``, ``"numba_fn"`` or ``"py_fn"``.
    ``matmat(V)`` and ``quad_forms(V)`` work on NumPy probe rows ``V`` of shape ``(k, n)``.
    """

    def __init__(self, kind, shape, dtype, blocks, data, source):
        self.kind = kind
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.blocks = blocks
        self.data = data
        self.source = source
        self._chunks = None

    # the same description as a sketchtrace operator (contract: see sketchtrace.operators)
    block_names = LinearOperator.block_names
    probe_dim = LinearOperator.probe_dim

    @property
    def products(self):
        return frozenset(getattr(self.source, "products", ())) & {"matmat", "quad_forms"}

    @property
    def symmetric(self):
        return getattr(self.source, "symmetric", None)

    @property
    def psd(self):
        return getattr(self.source, "psd", None)

    def with_blocks(self, blocks):
        return NumbaOperator(
            self.kind, self.shape, self.dtype, make_blocks(blocks, self.shape[0]), self.data, self.source
        )

    @property
    def row_chunks(self):
        if self._chunks is None:
            self._chunks = K.row_chunks(self.shape[0], self.blocks)
        return self._chunks

    @property
    def block_bounds(self) -> np.ndarray:
        if self.blocks is None:
            return np.array([0, self.shape[0]], np.int64)
        return np.array([self.blocks[0][1]] + [b for _, _, b in self.blocks], np.int64)

    @property
    def num_blocks(self) -> int:
        return 1 if self.blocks is None else len(self.blocks)

    def matmat(self, V):
        return NumbaBackend.matmat(self, V)

    def quad_forms(self, V):
        return _quad_rows(self, _as_probe_rows(V, self))

    def __repr__(self):
        return f"NumbaOperator(kind={self.kind!r}, shape={self.shape}, dtype={self.dtype})"


# ----------------------------------------------------------------------------- preparation


def _prepare(op) -> NumbaOperator:
    if isinstance(op, NumbaOperator):
        return op
    op = as_operator(op)
    cached = op.__dict__.get("_numba_prepared")
    if cached is not None:  # prepared once per sketchtrace operator (e.g. CSC -> CSR, dtype casts)
        return cached
    prepared = _prepare_new(op)
    if isinstance(op, (DenseOperator, SparseOperator)):
        object.__setattr__(op, "_numba_prepared", prepared)
    return prepared


def _prepare_new(op) -> NumbaOperator:
    blocks = op.blocks
    if isinstance(op, DenseOperator):
        A = np.asarray(op.A)
        dt = _compute_dtype(A.dtype)
        A = np.ascontiguousarray(A, dtype=dt.newbyteorder("="))
        return NumbaOperator("dense", A.shape, dt, blocks, A, op)
    if isinstance(op, SparseOperator):
        S = op.S  # as_operator converted it to CSR once
        if S.format != "csr":  # a SparseOperator built by hand around CSC/COO
            S = S.tocsr()
        check_csr(S)  # the kernels index memory with indptr/indices: a corrupt structure would crash
        dt = _compute_dtype(S.dtype)
        itype = np.int32 if S.nnz < np.iinfo(np.int32).max and S.shape[1] < np.iinfo(np.int32).max else np.int64
        data = (
            np.ascontiguousarray(S.indptr, dtype=itype),
            np.ascontiguousarray(S.indices, dtype=itype),
            np.ascontiguousarray(S.data, dtype=dt.newbyteorder("=")),
        )
        return NumbaOperator("csr", S.shape, dt, blocks, data, op)
    if isinstance(op, ScipyOperator):
        probe_matvec(
            scipy_raw_matvec(op.L), op.shape, op.dtype, what=f"op (a SciPy LinearOperator of shape {op.shape})"
        )
        return NumbaOperator("scipy", op.shape, _compute_dtype(op.dtype), blocks, op.L, op)
    if isinstance(op, FunctionOperator):
        kind = "numba_fn" if isinstance(op.fn, CPUDispatcher) else "py_fn"
        return NumbaOperator(kind, op.shape, _compute_dtype(op.dtype), blocks, op.fn, op)
    raise TypeError(
        f"op: {type(op).__name__} is JAX-only (Jacobians and Gram operators are built from JAX "
        "functions); pass a jax.random key (e.g. jax.random.key(0)) instead of a numpy.random.Generator"
    )


# ----------------------------------------------------------------------------- probes


def _sampler_name(sampler):
    if callable(sampler):
        return _SAMPLER_NAMES.get(sampler, sampler)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)} or a callable; got {sampler!r}")
    return sampler


def _draw(rng, num, dim, dtype, sampler):
    """Probe rows ``(num, dim)``; Rademacher probes come back as bit words instead when ``bits``."""
    dtype = _compute_dtype(dtype)
    if sampler == "rademacher":
        return K.words_to_rows(K.draw_rademacher_words(rng, num, dim), dim, dtype)
    if sampler in ("gaussian", "sphere"):
        V = rng.standard_normal((num, dim), dtype=dtype)
        if sampler == "sphere":
            V *= (math.sqrt(dim) / np.linalg.norm(V, axis=1, keepdims=True)).astype(dtype)
        return V
    V = np.asarray(sampler(rng, (num, dim), dtype))
    if V.shape != (num, dim):
        raise ValueError(f"sampler returned shape {V.shape}; expected {(num, dim)} (sampler(rng, shape, dtype))")
    return np.ascontiguousarray(V, dtype=dtype)


def _as_probe_rows(V, op) -> np.ndarray:
    V = np.asarray(V)
    if V.ndim != 2 or V.shape[1] != op.shape[1]:
        raise ValueError(f"V must be a (k, {op.shape[1]}) block of probe rows; got shape {V.shape}")
    if op.kind == "csr" and V.dtype == op.dtype and V.flags.f_contiguous:
        return V  # entry-major rows (the Lanczos vectors): the CSR kernels read V.T without a copy
    return np.ascontiguousarray(V, dtype=op.dtype)


# ----------------------------------------------------------------------------- products


def _block_sums(W, op) -> np.ndarray:
    if op.blocks is None:
        return W.sum(axis=1, keepdims=True)
    return np.stack([W[:, a:b].sum(axis=1) for _, a, b in op.blocks], axis=1)


def _raise_bad_length(status, op):
    bad = status[status >= 0]
    if bad.size:
        raise ValueError(
            f"matvec returned shape ({int(bad[0])},) for a probe of shape ({op.shape[1]},); "
            f"declared shape is {op.shape}, so it must return shape ({op.shape[0]},)"
        )


def _check_numba_fn(op, V):
    """Check (by numba type inference, no call) that the matvec returns a 1-D float array.

    Works for lazily compiled functions and for functions declared with explicit
    signatures (numba resolves the probe type against them).
    """
    from numba.core.registry import cpu_target

    argty = numba.typeof(V[0])
    ctx = cpu_target.typing_context
    try:
        sig = ctx.resolve_function_type(ctx.resolve_value_type(op.data), (argty,), {})
    except Exception as exc:  # numba typing errors have many classes
        raise TypeError(f"matvec (a numba function) cannot take a probe of type {argty}: {exc}") from exc
    if sig is None:
        raise TypeError(
            f"matvec (a numba function) has no signature accepting a probe of type {argty} "
            f"(probes have the operator's declared dtype, {op.dtype})"
        )
    rt = sig.return_type
    if not (isinstance(rt, numba.types.Array) and rt.ndim == 1 and isinstance(rt.dtype, numba.types.Float)):
        raise ValueError(
            f"matvec must return a 1-D float array of shape ({op.shape[0]},) (declared shape {op.shape}); "
            f"numba infers its return type as {rt}"
        )


def _parallel_calls(V) -> bool:
    """Call a numba matvec over the probes in parallel unless the work is tiny (k * n small)."""
    return V.shape[0] > 1 and V.size * 16 >= K.SERIAL_WORK


def _py_apply(op, v):
    y = check_matvec_output(
        op.data(v), (op.shape[0],), what=f"matvec of op (FunctionOperator, declared shape {op.shape})"
    )
    return check_output(y, (op.shape[0],), op.dtype, what=f"matvec (declared shape {op.shape})")


def _matmat_rows(op, V) -> np.ndarray:
    """``(k, n)`` probe rows -> ``(k, m)`` products, in the operator's dtype."""
    m = op.shape[0]
    if op.kind == "dense":
        return V @ op.data.T
    if op.kind == "csr":
        indptr, indices, data = op.data
        out = np.empty((m, V.shape[0]), op.dtype)
        K.csr_matmat(indptr, indices, data, np.ascontiguousarray(V.T), op.row_chunks[0], out)
        return out.T
    if op.kind == "scipy":
        Y = check_matvec_output(
            op.data.matmat(V.T), (m, V.shape[0]), what=f"op (a SciPy LinearOperator of shape {op.shape})"
        )
        return check_output(Y, (m, V.shape[0]), op.dtype, what=f"LinearOperator (declared shape {op.shape})").T
    if op.kind == "numba_fn":
        _check_numba_fn(op, V)
        out = np.empty((V.shape[0], m), op.dtype)
        status = np.empty(V.shape[0], np.int64)
        K.func_matmat(op.data, V, out, status, parallel=_parallel_calls(V))
        _raise_bad_length(status, op)
        return out
    return np.stack([_py_apply(op, v) for v in V])


def _quad_rows(op, V) -> np.ndarray:
    """Per-block quadratic forms ``(k, B)`` of probe rows ``V`` (k, n)."""
    k = V.shape[0]
    if op.kind == "csr":
        indptr, indices, data = op.data
        starts, owner = op.row_chunks
        partials = np.empty((starts.size - 1, k), op.dtype)
        K.csr_quad_dense(indptr, indices, data, np.ascontiguousarray(V.T), starts, partials)
        return _reduce(partials, owner, op)
    if op.kind == "numba_fn":
        _check_numba_fn(op, V)
        out = np.empty((k, op.num_blocks), op.dtype)
        status = np.empty(k, np.int64)
        K.func_quad(op.data, V, op.shape[0], op.block_bounds, out, status, parallel=_parallel_calls(V))
        _raise_bad_length(status, op)
        return out
    return _block_sums(V * _matmat_rows(op, V), op)


def _quad_bits(op, words) -> np.ndarray:
    """Quadratic forms of Rademacher probes given as bit words (fused kernel for CSR)."""
    n = op.shape[1]
    if op.kind != "csr" or words.shape[0] < _MIN_BIT_PROBES:
        # (for CSR the generic kernel does the same additions in the same order: same bits)
        return _quad_rows(op, K.words_to_rows(words, n, op.dtype))
    indptr, indices, data = op.data
    starts, owner = op.row_chunks
    k = words.shape[0]
    partials = np.empty((starts.size - 1, k), op.dtype)
    K.csr_quad_bits(indptr, indices, data, K.rademacher_bits_T(words, n), starts, k, partials)
    return _reduce(partials, owner, op)


def _reduce(partials, owner, op) -> np.ndarray:
    out = np.empty((partials.shape[1], op.num_blocks), op.dtype)
    K.reduce_chunks(partials, owner, op.num_blocks, out)
    return out


def _chunks(num, chunk_size):
    step = num if chunk_size is None else max(1, min(chunk_size, num))
    for lo in range(0, num, step):
        yield lo, min(num, lo + step)


# ----------------------------------------------------------------------------- backend


def _over_row_chunks(fn, op, V, chunk_size):
    """``fn(op, rows)`` over consecutive chunks of the probe rows ``V``, concatenated."""
    op = _prepare(op)
    V = _as_probe_rows(V, op)
    parts = [fn(op, V[lo:hi]) for lo, hi in _chunks(V.shape[0], chunk_size)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class NumbaBackend:
    """The CPU backend (NumPy arrays, numba kernels); same interface as ``JaxBackend``."""

    name = "numba"
    xp = np

    @staticmethod
    def prepare(op) -> NumbaOperator:
        return _prepare(op)

    @staticmethod
    def probe_dtype(op):
        return np.dtype(op.dtype)

    @staticmethod
    def is_concrete(x) -> bool:
        return True

    @staticmethod
    def jit(fn, static_argnames=()):
        return fn

    #: Batched Lanczos: block products plus fused row-parallel updates (see ``_numba_lanczos``).
    lanczos = staticmethod(lanczos_numba)

    @staticmethod
    def adjoint(op):
        """``A^T`` from the data the user's operator holds (a transposed matrix, SciPy's
        ``.T``, a ``FunctionOperator``'s ``rmatvec``), or ``None``."""
        src = op.source if isinstance(op, NumbaOperator) else as_operator(op)
        if "rmatmat" not in src.products:
            return None
        if isinstance(src, DenseOperator):
            return _prepare(as_operator(np.asarray(src.A).T))
        if isinstance(src, SparseOperator):
            return _prepare(as_operator(src.S.T.tocsr()))
        if isinstance(src, ScipyOperator):
            return _prepare(as_operator(src.L.T))
        if isinstance(src, FunctionOperator) and src.rmatvec_fn is not None:
            return _prepare(FunctionOperator(src.rmatvec_fn, src.shape[::-1], src.dtype))
        return None

    @staticmethod
    def with_adjoint(matmat, forward, Z):
        """No automatic differentiation here: the values of ``forward`` alone."""
        return forward(matmat, Z, False)[0]

    @staticmethod
    def split(rng, num):
        """``num`` independent child Generators (``Generator.spawn``), deterministic given ``rng``."""
        return list(rng.spawn(num))

    @staticmethod
    def probes(rng, num, dim, dtype, sampler="rademacher"):
        """A ``(num, dim)`` block of probe rows drawn from ``rng`` (see the module docstring)."""
        return _draw(rng, num, dim, dtype, _sampler_name(sampler))

    @staticmethod
    def quad_forms(rng, op, num, sampler, chunk_size):
        """``(num, B)`` per-block quadratic forms of ``num`` fresh probes, ``chunk_size`` at a time."""
        op = _prepare(op)
        sampler = _sampler_name(sampler)
        n = op.probe_dim
        parts = []
        for lo, hi in _chunks(num, chunk_size):
            if sampler == "rademacher":
                parts.append(_quad_bits(op, K.draw_rademacher_words(rng, hi - lo, n)))
            else:
                parts.append(_quad_rows(op, _draw(rng, hi - lo, n, op.dtype, sampler)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    @staticmethod
    def exact_quad_forms(op, chunk_size):
        """Quadratic forms of the standard basis, ``(n, B)``: row ``i`` holds ``a_ii`` in ``i``'s block."""
        op = _prepare(op)
        n = op.probe_dim
        if op.kind in ("dense", "csr"):
            if op.kind == "dense":
                d = np.diagonal(op.data).astype(op.dtype)
            else:
                d = op.source.S.diagonal().astype(op.dtype)
            Q = np.zeros((n, op.num_blocks), op.dtype)
            bounds = op.block_bounds
            for b in range(op.num_blocks):
                Q[bounds[b] : bounds[b + 1], b] = d[bounds[b] : bounds[b + 1]]
            return Q
        parts = []
        for lo, hi in _chunks(n, chunk_size or _EXACT_CHUNK):
            E = np.zeros((hi - lo, n), op.dtype)
            E[np.arange(hi - lo), np.arange(lo, hi)] = 1
            parts.append(_quad_rows(op, E))
        return np.concatenate(parts, axis=0)

    @staticmethod
    def matmat(op, V, chunk_size=None):
        """Apply ``op`` to the rows of ``V`` (k, n): returns ``(k, m)``."""
        return _over_row_chunks(_matmat_rows, op, V, chunk_size)

    @staticmethod
    def quad_forms_of(op, V, chunk_size=None):
        """Per-block quadratic forms ``(k, B)`` of the given probe rows ``V`` (k, n); one matvec per row."""
        return _over_row_chunks(_quad_rows, op, V, chunk_size)

    @staticmethod
    def check_finite(name, x):
        if not bool(np.all(np.isfinite(x))):
            raise FloatingPointError(
                f"{name}: the operator produced non-finite values (NaN or inf); check the operator"
            )
