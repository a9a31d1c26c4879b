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

import functools
import math
import weakref

import numpy as np

from .._samplers import SAMPLERS
from ..operators import (
    DenseOperator,
    FiniteDifferenceGram,
    FunctionOperator,
    GramOperator,
    JacobianOperator,
    LinearOperator,
    ScipyOperator,
    SparseOperator,
    TransposedOperator,
    as_operator,
    check_output,
    make_blocks,
)
from ..validation import check_csr, check_matvec_output, probe_matvec, scipy_raw_matvec
from . import _numba_kernels as K
from ._numba_lanczos import lanczos_csr, lanczos_numba

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

    ``kind`` is ``"dense"``, ``"csr"``, ``"scipy"``, ``"numba_fn"``, ``"py_fn"``, ``"gram"``
    (``data = (J, J^T or None, side)``, both prepared) or ``"generic"`` (``data`` is a
    sketchtrace operator whose own products take NumPy arrays).
    ``matmat(V)`` and ``quad_forms(V)`` work on NumPy probe rows ``V`` of shape ``(k, n)``.
    """

    def __init__(self, kind, shape, dtype, blocks, data, source, products=None):
        self.kind = kind
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.blocks = blocks
        self.data = data
        self.source = source
        self._products = products
        self._chunks = None

    # the same description as a sketchtrace operator (contract: see sketchtrace.operators)
    block_names = LinearOperator.block_names
    probe_dim = LinearOperator.probe_dim

    @property
    def products(self):
        if self._products is not None:
            return self._products
        return frozenset(getattr(self.source, "products", ())) & {"matmat", "quad_forms"}

    @property
    def symmetric(self):
        return getattr(self.source, "symmetric", None)

    @property
    def psd(self):
        return getattr(self.source, "psd", None)

    def with_blocks(self, blocks):
        blocks = make_blocks(blocks, self.shape[0])
        return NumbaOperator(self.kind, self.shape, self.dtype, blocks, self.data, self.source, self._products)

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


#: Converted data of the user's Dense/Sparse operators (CSC -> CSR, dtype casts), done once per
#: operator object. Weak keys: nothing is written onto the user's operator and nothing keeps it alive.
_DATA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prepare(op) -> NumbaOperator:
    if isinstance(op, NumbaOperator):
        return op
    return prepare_rule(as_operator(op))


def _cached(op, build):
    try:
        hit = _DATA.get(op)
    except TypeError:  # not weakly referenceable or unhashable: no cache
        return build(op)
    if hit is None:
        hit = _DATA[op] = build(op)
    return hit


def _jax_only(op, what="op"):
    raise TypeError(
        f"{what}: {type(op).__name__} is JAX-only (Jacobians and Gram operators are built from JAX "
        "functions); pass a jax.random key (e.g. jax.random.key(0)) instead of a numpy.random.Generator"
    )


@functools.singledispatch
def prepare_rule(op) -> NumbaOperator:
    """The numba backend's form of a sketchtrace operator; one registration per operator type.

    The fallback runs any :class:`~sketchtrace.LinearOperator` through its own ``matmat`` /
    ``quad_forms`` on NumPy probe rows (their results must be NumPy arrays). Register a type
    with ``NumbaBackend.prepare_rule.register(MyOperator)``.
    """
    if not isinstance(op, LinearOperator):  # pragma: no cover - as_operator refuses the rest
        raise TypeError(f"op: expected a sketchtrace operator; got {type(op).__name__}")
    return _generic(op)


def _generic(op) -> NumbaOperator:
    return NumbaOperator("generic", op.shape, _compute_dtype(op.dtype), op.blocks, op, op)


def _dense_data(op):
    A = np.asarray(op.A)
    dt = _compute_dtype(A.dtype)
    return np.ascontiguousarray(A, dtype=dt.newbyteorder("="))


@prepare_rule.register(DenseOperator)
def _prepare_dense(op):
    A = _cached(op, _dense_data)
    return NumbaOperator("dense", A.shape, A.dtype, op.blocks, A, op)


def _csr_data(op):
    S = op.S  # as_operator converted it to CSR once
    if S.format != "csr":  # a SparseOperator built by hand around CSC/COO
        S = S.tocsr()
    check_csr(S)  # the kernels index memory with indptr/indices: a corrupt structure would crash
    dt = _compute_dtype(S.dtype)
    itype = np.int32 if S.nnz < np.iinfo(np.int32).max and S.shape[1] < np.iinfo(np.int32).max else np.int64
    return (
        np.ascontiguousarray(S.indptr, dtype=itype),
        np.ascontiguousarray(S.indices, dtype=itype),
        np.ascontiguousarray(S.data, dtype=dt.newbyteorder("=")),
    )


@prepare_rule.register(SparseOperator)
def _prepare_sparse(op):
    data = _cached(op, _csr_data)
    return NumbaOperator("csr", op.shape, data[2].dtype, op.blocks, data, op)


@prepare_rule.register(ScipyOperator)
def _prepare_scipy(op):
    probe_matvec(scipy_raw_matvec(op.L), op.shape, op.dtype, what=f"op (a SciPy LinearOperator of shape {op.shape})")
    return NumbaOperator("scipy", op.shape, _compute_dtype(op.dtype), op.blocks, op.L, op)


@prepare_rule.register(FunctionOperator)
def _prepare_function(op):
    kind = "numba_fn" if isinstance(op.fn, CPUDispatcher) else "py_fn"
    return NumbaOperator(kind, op.shape, _compute_dtype(op.dtype), op.blocks, op.fn, op)


@prepare_rule.register(JacobianOperator)
@prepare_rule.register(FiniteDifferenceGram)
def _prepare_jax_only(op):
    _jax_only(op)


@prepare_rule.register(TransposedOperator)
def _prepare_transposed(op):
    adj = adjoint_rule(op.base)
    if adj is None:
        raise TypeError(
            f"op: the transpose of {type(op.base).__name__} has no product on the numba backend (a "
            "FunctionOperator needs rmatvec=); pass a jax.random key to derive it with JAX"
        )
    return adj if op.blocks is None else adj.with_blocks(op.blocks)


@prepare_rule.register(GramOperator)
def _prepare_gram(op):
    try:
        J = _prepare(op.J)
        Jt = adjoint_rule(op.J)
    except TypeError as exc:
        if "JAX-only" in str(exc):
            _jax_only(op)
        raise
    if op.side == "output" and Jt is None:
        raise TypeError(
            f"op: gram(J, side='output') needs J^T products, which {type(op.J).__name__} has not on the numba "
            "backend (a FunctionOperator needs rmatvec=); use side='input'"
        )
    products = frozenset({"matmat", "quad_forms"} if Jt is not None else {"quad_forms"})
    return NumbaOperator("gram", op.shape, J.dtype, J.blocks, (J, Jt, op.side), op, products)


@functools.singledispatch
def adjoint_rule(op) -> NumbaOperator | None:
    """``A^T`` prepared for the numba backend, or ``None``; one registration per operator type.

    The fallback uses the operator's own ``rmatmat`` (when it implements one)."""
    if isinstance(op, NumbaOperator):
        return adjoint_rule(op.source)
    if isinstance(op, LinearOperator) and "rmatmat" in op.products:
        return _generic(TransposedOperator(op))
    return None


@adjoint_rule.register(DenseOperator)
def _adjoint_dense(op):
    return _prepare(as_operator(np.asarray(op.A).T))


@adjoint_rule.register(SparseOperator)
def _adjoint_sparse(op):
    return _prepare(as_operator(op.S.T.tocsr()))


@adjoint_rule.register(ScipyOperator)
def _adjoint_scipy(op):
    return _prepare(as_operator(op.L.T))


@adjoint_rule.register(FunctionOperator)
def _adjoint_function(op):
    return None if op.rmatvec_fn is None else _prepare(FunctionOperator(op.rmatvec_fn, op.shape[::-1], op.dtype))


@adjoint_rule.register(TransposedOperator)
def _adjoint_transposed(op):
    return _prepare(op.base)


@adjoint_rule.register(GramOperator)
def _adjoint_gram(op):
    return _prepare(op)  # symmetric


@adjoint_rule.register(JacobianOperator)
@adjoint_rule.register(FiniteDifferenceGram)
def _adjoint_jax_only(op):
    _jax_only(op)


@functools.singledispatch
def diagonal_rule(op) -> np.ndarray | None:
    """The exact diagonal of a stored matrix (no products), or ``None`` (then: basis products)."""
    return None


@diagonal_rule.register(DenseOperator)
def _diagonal_dense(op):
    return np.diagonal(np.asarray(op.A))


@diagonal_rule.register(SparseOperator)
def _diagonal_sparse(op):
    return op.S.diagonal()


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
    if op.kind == "gram":
        J, Jt, side = op.data
        if side == "input":
            return _matmat_rows(Jt, _as_probe_rows(_matmat_rows(J, V), Jt))
        return _matmat_rows(J, _as_probe_rows(_matmat_rows(Jt, V), J))
    if op.kind == "generic":
        return _numpy_result(op, op.data.matmat(V), (V.shape[0], m), "matmat")
    if op.kind == "numba_fn":
        _check_numba_fn(op, V)
        out = np.empty((V.shape[0], m), op.dtype)
        status = np.empty(V.shape[0], np.int64)
        K.func_matmat(op.data, V, out, status, parallel=_parallel_calls(V))
        _raise_bad_length(status, op)
        return out
    return np.stack([_py_apply(op, v) for v in V])


def _numpy_result(op, Y, shape, what):
    if not isinstance(Y, np.ndarray):
        raise TypeError(
            f"op: {type(op.data).__name__}.{what} returned {type(Y).__name__} for NumPy probes; the numba backend "
            "(a numpy.random.Generator as key) needs products that take and return NumPy arrays (pass the key "
            "of the backend whose arrays the operator takes, e.g. jax.random.key(0) for JAX code)"
        )
    return check_output(Y, shape, op.dtype, what=f"{type(op.data).__name__}.{what}")


def _own_quad_forms(op) -> bool:
    return type(op).quad_forms is not LinearOperator.quad_forms


def _gram_quad_rows(op, V) -> np.ndarray:
    J, Jt, side = op.data
    if side == "input":
        JV = _matmat_rows(J, V)
        return _block_sums(JV * JV, J)
    cols = []
    for _, a, b in J.blocks or (("", 0, J.shape[0]),):
        Vb = V if J.blocks is None else np.zeros_like(V)
        if J.blocks is not None:
            Vb[:, a:b] = V[:, a:b]
        W = _matmat_rows(Jt, _as_probe_rows(Vb, Jt))
        cols.append((W * W).sum(axis=1))
    return np.stack(cols, axis=1)


def _quad_rows(op, V) -> np.ndarray:
    """Per-block quadratic forms ``(k, B)`` of probe rows ``V`` (k, n)."""
    k = V.shape[0]
    if op.kind == "gram":
        return _gram_quad_rows(op, V)
    if op.kind == "generic" and (_own_quad_forms(op.data) or "matmat" not in op.data.products):
        return _numpy_result(op, op.data.quad_forms(V), (k, op.num_blocks), "quad_forms")
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


def _csr_behind(matmat):
    """The prepared square CSR operator when ``matmat`` is ``partial(NumbaBackend.matmat, op, ...)``, else None."""
    if not (isinstance(matmat, functools.partial) and matmat.func is NumbaBackend.matmat and len(matmat.args) == 1):
        return None
    op = matmat.args[0]
    if not isinstance(op, NumbaOperator) or op.kind != "csr" or op.shape[0] != op.shape[1]:
        return None
    return op


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

    @staticmethod
    def lanczos(matmat, Z, num_steps, *, reorthogonalize=False, keep_basis=False):
        """Batched Lanczos (see ``_numba_lanczos``): for the backend's own product of a square CSR
        operator, the fused recurrence (one pass over the matrix and one over the vectors per step);
        otherwise block products plus fused row-parallel updates."""
        op = _csr_behind(matmat)
        if op is not None and not (reorthogonalize or keep_basis) and op.dtype == Z.dtype:
            return lanczos_csr(*op.data, Z, num_steps)
        return lanczos_numba(matmat, Z, num_steps, reorthogonalize=reorthogonalize, keep_basis=keep_basis)

    #: The dispatch tables (``functools.singledispatch`` on the operator's type; see
    #: ``docs/architecture.md``): preparation, transpose and exact diagonal.
    prepare_rule = staticmethod(prepare_rule)
    adjoint_rule = staticmethod(adjoint_rule)
    diagonal_rule = staticmethod(diagonal_rule)

    @staticmethod
    def adjoint(op):
        """``A^T`` from the data the user's operator holds (a transposed matrix, SciPy's
        ``.T``, a ``FunctionOperator``'s ``rmatvec``, the operator's own ``rmatmat``), or ``None``."""
        src = op.source if isinstance(op, NumbaOperator) else as_operator(op)
        if "rmatmat" not in src.products:
            return None
        return adjoint_rule(src)

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
        d = diagonal_rule(op.source)
        if d is not None:
            d = np.asarray(d).astype(op.dtype)
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
