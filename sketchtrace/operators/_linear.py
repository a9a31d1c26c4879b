"""Matrix-free linear operators.

Every operator knows its ``shape`` ``(m, n)`` and ``dtype`` up front (they are
never guessed by calling it) and, optionally, a partition of its output rows
into named ``blocks``. The JAX side of an operator is

* ``matmat(V)``: apply the operator to a ``(k, n)`` block of probes (rows),
  returning ``(k, m)``;
* ``rmatmat(U)``: apply the transpose to a ``(k, m)`` block (where available);
* ``quad_forms(V)``: the ``(k, B)`` per-block quadratic forms whose expectation
  over isotropic probes is the per-block trace (used by Hutchinson).

NumPy/SciPy operators (dense arrays, ``scipy.sparse`` matrices, SciPy
``LinearOperator``) keep their original data, so the numba backend can use them
without a round trip through JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._optional import HAS_JAX, JaxArray, jax, jnp, register_pytree_node, require_jax
from ..validation import check_choice, check_csr, check_float_dtype

Blocks = tuple  # tuple of (name, start, stop), static and hashable


# ----------------------------------------------------------------------------- helpers


def _as_shape(shape) -> tuple[int, int]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape), int(shape))
    try:
        dims = tuple(shape)
        if len(dims) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in dims):
            raise TypeError
        m, n = (int(s) for s in dims)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"shape must be an int n or a pair (m, n) of integers; got {shape!r}") from exc
    if m <= 0 or n <= 0:
        raise ValueError(f"shape must have positive dimensions; got {(m, n)}")
    return (m, n)


def make_blocks(blocks, num_rows: int) -> Blocks | None:
    """Normalise a block specification to ``((name, start, stop), ...)``.

    ``blocks`` is a mapping ``name -> size`` (consecutive row ranges in the given
    order) or ``name -> slice`` / ``(start, stop)``; the ranges must partition
    ``range(num_rows)``.
    """
    if blocks is None:
        return None
    if isinstance(blocks, tuple) and all(isinstance(b, tuple) and len(b) == 3 for b in blocks):
        items = [(name, slice(a, b)) for name, a, b in blocks]
    elif isinstance(blocks, Mapping):
        items = list(blocks.items())
    else:
        raise TypeError(f"blocks must be a mapping name -> size or slice; got {type(blocks).__name__}")
    if not items:
        raise ValueError("blocks must name at least one block")
    out, pos = [], 0
    for name, spec in items:
        if not isinstance(name, str):
            raise TypeError(f"blocks: block names must be strings; got {name!r}")
        if any(name == prev for prev, _, _ in out):
            raise ValueError(f"blocks: duplicate block name {name!r}; every block needs its own name")
        if isinstance(spec, slice):
            start, stop = spec.start or 0, spec.stop
        elif isinstance(spec, tuple) and len(spec) == 2:
            start, stop = spec
        elif isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
            start, stop = pos, pos + int(spec)
        else:
            raise TypeError(f"blocks[{name!r}] must be a size, a slice or (start, stop); got {spec!r}")
        if start != pos or stop is None or stop <= start:
            raise ValueError(
                f"blocks must be consecutive non-empty row ranges covering 0..{num_rows}; "
                f"block {name!r} is {start}:{stop} but the previous block ended at {pos}"
            )
        out.append((name, int(start), int(stop)))
        pos = int(stop)
    if pos != num_rows:
        raise ValueError(f"blocks cover {pos} rows but the operator has {num_rows} output rows")
    return tuple(out)


def blocks_of_tree(tree) -> Blocks | None:
    """Blocks for a flattened pytree output: one per top-level key of a dict."""
    if not isinstance(tree, Mapping):
        return None
    leaves_sizes = []
    # ravel_pytree flattens in jax.tree order (sorted keys for plain dicts)
    keys = list(jax.tree_util.tree_flatten_with_path(tree)[0])
    sizes: dict[str, int] = {}
    order: list[str] = []
    for path, leaf in keys:
        name = path[0].key if hasattr(path[0], "key") else str(path[0])
        name = str(name)
        if name not in sizes:
            sizes[name] = 0
            order.append(name)
        sizes[name] += int(np.size(leaf))
        leaves_sizes.append(int(np.size(leaf)))
    return make_blocks({k: sizes[k] for k in order}, sum(leaves_sizes))


@functools.singledispatch
def block_sums(W, blocks: Blocks | None):
    """Sum the columns of ``W`` (shape ``(k, m)``) over each block: ``(k, B)``.

    Dispatches on the array type of ``W`` (JAX here, NumPy and torch registered), so the
    default :meth:`LinearOperator.quad_forms` works in the namespace of the operator's products.
    """
    if blocks is None:
        return jnp.sum(W, axis=-1, keepdims=True)
    return jnp.stack([jnp.sum(W[..., a:b], axis=-1) for _, a, b in blocks], axis=-1)


@block_sums.register(np.ndarray)
def _block_sums_numpy(W, blocks):
    if blocks is None:
        return np.sum(W, axis=-1, keepdims=True)
    return np.stack([np.sum(W[..., a:b], axis=-1) for _, a, b in blocks], axis=-1)


@functools.singledispatch
def restrict_columns(V, start: int, stop: int):
    """``V`` with every column outside ``start:stop`` set to zero (same array type as ``V``)."""
    return jnp.zeros_like(V).at[..., start:stop].set(V[..., start:stop])


@restrict_columns.register(np.ndarray)
def _restrict_columns_numpy(V, start, stop):
    out = np.zeros_like(V)
    out[..., start:stop] = V[..., start:stop]
    return out


def _canonical(dtype):
    return jax.dtypes.canonicalize_dtype(dtype)


#: Every product an estimator may ask for.
ALL_PRODUCTS = frozenset({"matmat", "rmatmat", "quad_forms"})


def _check_structure(symmetric, psd):
    for name, v in (("symmetric", symmetric), ("psd", psd)):
        if v is not None and not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name} must be True, False or None (not declared); got {v!r}")
    if psd and symmetric is False:
        raise ValueError("psd=True requires a symmetric operator; got symmetric=False")
    if psd:
        symmetric = True
    return (None if symmetric is None else bool(symmetric)), (None if psd is None else bool(psd))


def _replace(op, **changes):
    """A copy of ``op`` with some fields changed (no ``__init__``: operators validate once)."""
    new = object.__new__(type(op))
    new.__dict__.update(op.__dict__)
    new.__dict__.update(changes)
    return new


def _pytree(data, meta):
    """Register an operator class as a pytree: ``data`` fields are children (traced under
    ``jax.jit``), ``meta`` fields static (hashable) data."""

    def wrap(cls):
        def flatten(op):
            return tuple(getattr(op, f) for f in data), tuple(getattr(op, f) for f in meta)

        def unflatten(aux, children):
            op = object.__new__(cls)
            op.__dict__.update(zip(data, children))
            op.__dict__.update(zip(meta, aux))
            return op

        register_pytree_node(cls, flatten, unflatten)  # nothing to register without JAX
        return cls

    return wrap


# ----------------------------------------------------------------------------- base


class LinearOperator:
    """Base class of sketchtrace operators: the operator contract.

    Every operator declares, up front and without being called,

    * ``shape`` ``(m, n)``, ``dtype`` and optional named ``blocks`` of output rows;
    * its structure: ``symmetric`` and ``psd`` (``True``, ``False`` or ``None`` = not
      declared); estimators read these instead of testing the operator's type;
    * ``products``: which of ``matmat``, ``rmatmat`` and ``quad_forms`` it supports,
      derived from the methods its class implements (:func:`derived_products`; wrappers
      derive theirs from the wrapped operator). An estimator that needs a missing product
      refuses the operator before any work.

    A subclass needs only ``shape``, ``dtype`` and ``matmat``; the products take and return
    the arrays of whatever backend it is used on (JAX arrays with a JAX key, NumPy arrays
    with a ``numpy.random.Generator``, torch tensors with a ``torch.Generator``).

    Every concrete operator is a JAX pytree: passed into ``jax.jit``, ``vmap`` or
    ``shard_map`` its arrays are traced like any other argument.
    """

    shape: tuple[int, int]
    dtype: np.dtype
    blocks: Blocks | None = None
    symmetric: bool | None = None
    psd: bool | None = None

    @property
    def products(self) -> frozenset:
        """The products this operator supports (see :func:`derived_products`)."""
        return derived_products(type(self))

    # -- description
    @property
    def block_names(self) -> tuple[str, ...] | None:
        return None if self.blocks is None else tuple(b[0] for b in self.blocks)

    @property
    def probe_dim(self) -> int:
        """Length of the probes a trace estimator draws (``n`` for square operators)."""
        return self.shape[1]

    @property
    def jax_dtype(self):
        return _canonical(self.dtype)

    def with_blocks(self, blocks):
        return _replace(self, blocks=make_blocks(blocks, self.shape[0]))

    def with_structure(self, *, symmetric=None, psd=None):
        """A copy declaring ``symmetric`` / ``psd`` (``None`` keeps the current declaration)."""
        symmetric = self.symmetric if symmetric is None else symmetric
        psd = self.psd if psd is None else psd
        symmetric, psd = _check_structure(symmetric, psd)
        if symmetric and self.shape[0] != self.shape[1]:
            raise ValueError(f"symmetric=True needs a square operator; shape is {self.shape}")
        return _replace(self, symmetric=symmetric, psd=psd)

    # -- JAX application
    def matmat(self, V):  # pragma: no cover - abstract
        raise NotImplementedError

    def rmatmat(self, U):
        raise NotImplementedError(f"{type(self).__name__} has no transpose product")

    def matvec(self, v):
        return self.matmat(v[None, :])[0]

    def rmatvec(self, u):
        return self.rmatmat(u[None, :])[0]

    def __matmul__(self, v):
        v = jnp.asarray(v) if HAS_JAX else np.asarray(v)
        return self.matvec(v) if v.ndim == 1 else self.matmat(v.T).T

    def quad_forms(self, V):
        """Per-block ``v_b . (A v)_b`` for each row ``v`` of ``V``: shape ``(k, B)``."""
        return block_sums(V * self.matmat(V), self.blocks)

    @property
    def T(self):
        return TransposedOperator(self)


def _implements(cls, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(LinearOperator, name)


@functools.cache
def derived_products(cls) -> frozenset:
    """The products a ``LinearOperator`` class implements: ``matmat`` and ``rmatmat`` when it
    overrides them, ``quad_forms`` when it overrides it or has ``matmat`` (the default quadratic
    forms are computed from ``matmat``)."""
    out = {name for name in ("matmat", "rmatmat") if _implements(cls, name)}
    if "matmat" in out or _implements(cls, "quad_forms"):
        out.add("quad_forms")
    return frozenset(out)


def require_products(op, needed, method: str):
    """Refuse ``op`` before any work when it lacks a product ``method`` uses."""
    missing = sorted(set(needed) - set(getattr(op, "products", ALL_PRODUCTS)))
    if missing:
        raise ValueError(
            f"{method} needs the product(s) {', '.join(missing)}, which {type(op).__name__} does not "
            f"provide (it supports {', '.join(sorted(op.products))}); use an estimator built on "
            "quadratic forms (hutchinson, block_traces) or an operator with those products"
        )


# ----------------------------------------------------------------------------- concrete


def _rows_times_transpose(V, A):
    """``V @ A.T`` as one ``dot_general`` contracting both last axes: no transpose op. Written as
    ``A.T``, a matrix closed over in ``jax.jit`` (a constant) was transposed on every call, which
    made XTrace 1.8x slower closed over than passed as an argument. Without JAX, NumPy's product."""
    if not HAS_JAX:
        return V @ np.asarray(A).T
    A = jnp.asarray(A)
    dt = jnp.result_type(V, A)
    return jax.lax.dot_general(V.astype(dt), A.astype(dt), (((V.ndim - 1,), (1,)), ((), ())))


@_pytree(data=("A",), meta=("blocks", "symmetric", "psd"))
@dataclasses.dataclass(frozen=True, eq=False)
class DenseOperator(LinearOperator):
    """A dense NumPy or JAX matrix (the matrix is the pytree leaf)."""

    A: Any
    blocks: Blocks | None = None
    symmetric: bool | None = None
    psd: bool | None = None

    @property
    def shape(self):
        return tuple(self.A.shape)

    @property
    def dtype(self):
        return np.dtype(self.A.dtype)

    def matmat(self, V):
        return _rows_times_transpose(V, self.A)

    def rmatmat(self, U):
        return U @ (jnp.asarray(self.A) if HAS_JAX else np.asarray(self.A))

    def quad_forms(self, V):
        return block_sums(V * _rows_times_transpose(V, self.A), self.blocks)


@_pytree(data=("data", "indices", "indptr"), meta=("num_cols", "blocks", "symmetric", "psd"))
@dataclasses.dataclass(frozen=True, eq=False)
class SparseOperator(LinearOperator):
    """A CSR matrix held as its three arrays (the pytree leaves).

    Built from ``scipy.sparse`` by :func:`as_operator`; ``S`` gives the SciPy matrix
    back (no copy) for the numba backend. The JAX products build a ``BCOO`` view of
    the same arrays, so a traced operator works under ``jax.jit``.
    """

    data: Any
    indices: Any
    indptr: Any
    num_cols: int
    blocks: Blocks | None = None
    symmetric: bool | None = None
    psd: bool | None = None

    @classmethod
    def from_scipy(cls, S, blocks=None, symmetric=None, psd=None):
        """From a ``scipy.sparse`` matrix, in canonical CSR form (sorted indices, no
        duplicates: the JAX products rely on it; the user's matrix is not modified)."""
        S = check_csr(S.tocsr())  # before anything reads through a corrupt indptr/indices
        if not S.has_canonical_format:
            S = S.copy()
            S.sum_duplicates()
        return cls(S.data, S.indices, S.indptr, int(S.shape[1]), blocks, symmetric, psd)

    @property
    def shape(self):
        return (int(self.indptr.shape[0]) - 1, self.num_cols)

    @property
    def dtype(self):
        return np.dtype(self.data.dtype)

    @property
    def S(self):
        import scipy.sparse as sp

        arrays = (np.asarray(self.data), np.asarray(self.indices), np.asarray(self.indptr))
        return sp.csr_matrix(arrays, shape=self.shape)

    def _bcoo(self):
        from jax.experimental import sparse as jsparse

        m, nnz = self.shape[0], int(self.data.shape[0])
        counts = jnp.diff(jnp.asarray(self.indptr))
        rows = jnp.repeat(jnp.arange(m, dtype=jnp.int32), counts, total_repeat_length=nnz)
        idx = jnp.stack([rows, jnp.asarray(self.indices, jnp.int32)], axis=1)
        data = jnp.asarray(self.data).astype(self.jax_dtype)
        return jsparse.BCOO((data, idx), shape=self.shape, indices_sorted=True, unique_indices=True)

    def matmat(self, V):
        return (self._bcoo() @ V.T).T

    def rmatmat(self, U):
        return (self._bcoo().T @ U.T).T


@_pytree(data=(), meta=("L", "blocks", "symmetric", "psd"))
@dataclasses.dataclass(frozen=True, eq=False)
class ScipyOperator(LinearOperator):
    """A ``scipy.sparse.linalg.LinearOperator``; on JAX it runs through ``pure_callback``.

    Host code cannot be traced: the SciPy operator is static pytree data (hashed by identity).
    """

    L: Any
    blocks: Blocks | None = None
    symmetric: bool | None = None
    psd: bool | None = None

    @property
    def shape(self):
        return tuple(self.L.shape)

    @property
    def dtype(self):
        return np.dtype(self.L.dtype)

    def _callback(self, fn, X, out_dim):
        dt = self.jax_dtype

        def host(x):
            y = np.asarray(fn(np.asarray(x).T)).T
            return check_output(y, (x.shape[0], out_dim), dt, what="LinearOperator")

        return jax.pure_callback(host, jax.ShapeDtypeStruct((X.shape[0], out_dim), dt), X, vmap_method="sequential")

    def matmat(self, V):
        return self._callback(self.L.matmat, V, self.shape[0])

    def rmatmat(self, U):
        return self._callback(self.L.rmatmat, U, self.shape[1])


def check_output(y, shape, dtype, *, what="operator"):
    """Check a host-side operator output (shape and finiteness) and cast it."""
    y = np.asarray(y)
    if y.shape != tuple(shape):
        raise ValueError(f"{what} returned shape {y.shape}; expected {tuple(shape)}")
    return y.astype(dtype, copy=False)


@_pytree(data=(), meta=("fn", "shape", "dtype", "rmatvec_fn", "blocks", "symmetric", "psd"))
@dataclasses.dataclass(frozen=True, eq=False)
class FunctionOperator(LinearOperator):
    """A bare linear callable ``matvec(v) -> A v`` with declared shape and dtype.

    Parameters
    ----------
    matvec : callable
        ``v`` of shape ``(n,)`` -> ``A v`` of shape ``(m,)``. For the JAX backend it
        must be traceable by JAX (it is ``vmap``-ed over probes); for the numba
        backend it may be a numba-compiled function or any NumPy callable.
    shape : int or (m, n)
    dtype : floating dtype of the probes the operator takes.
    rmatvec : callable, optional
        ``u -> A^T u``. Without it, JAX derives the transpose with
        ``jax.linear_transpose`` (which requires ``matvec`` to be linear JAX code).
    blocks : mapping, optional
        Named partition of the output rows (see :func:`as_operator`).
    symmetric, psd : bool, optional
        Declared structure (see :class:`LinearOperator`).

    Notes
    -----
    The callables are static pytree data: arrays they close over are constants
    under ``jax.jit``.
    """

    fn: Callable
    shape: tuple
    dtype: Any
    rmatvec_fn: Callable | None = None
    blocks: Blocks | None = None
    symmetric: bool | None = None
    psd: bool | None = None

    def __init__(self, matvec, shape, dtype, *, rmatvec=None, blocks=None, symmetric=None, psd=None):
        if not callable(matvec):
            raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
        if rmatvec is not None and not callable(rmatvec):
            raise TypeError(f"rmatvec must be callable or None; got {type(rmatvec).__name__}")
        shape = _as_shape(shape)
        symmetric, psd = _check_structure(symmetric, psd)
        object.__setattr__(self, "fn", matvec)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", check_float_dtype(dtype))
        object.__setattr__(self, "rmatvec_fn", rmatvec)
        object.__setattr__(self, "blocks", make_blocks(blocks, shape[0]))
        object.__setattr__(self, "symmetric", symmetric)
        object.__setattr__(self, "psd", psd)

    def validate_jax(self):
        """Check abstractly (``jax.eval_shape``, no FLOPs) that matvec fits the declaration."""
        m, n = self.shape
        dt = self.jax_dtype
        try:
            out = jax.eval_shape(self.fn, jax.ShapeDtypeStruct((n,), dt))
        except (TypeError, jax.errors.ConcretizationTypeError) as exc:
            raise TypeError(
                f"matvec cannot take probes of shape ({n},) and dtype {dt} under JAX tracing: {exc}. "
                "For NumPy-only callables use a numpy.random.Generator (numba backend) or "
                "scipy.sparse.linalg.LinearOperator."
            ) from exc
        if not hasattr(out, "shape") or tuple(out.shape) != (m,):
            got = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"matvec returned shape {got} for a probe of shape ({n},); declared shape is {self.shape}")
        if not np.issubdtype(out.dtype, np.floating):
            raise TypeError(f"matvec returned dtype {out.dtype}; expected a floating dtype ({dt})")

    def matmat(self, V):
        return jax.vmap(self.fn)(V).astype(V.dtype)

    def rmatmat(self, U):
        if self.rmatvec_fn is not None:
            return jax.vmap(self.rmatvec_fn)(U).astype(U.dtype)
        n = self.shape[1]
        transpose = jax.linear_transpose(self.fn, jax.ShapeDtypeStruct((n,), U.dtype))
        return jax.vmap(lambda u: transpose(u)[0])(U)


@_pytree(data=("base",), meta=("blocks",))
@dataclasses.dataclass(frozen=True, eq=False)
class TransposedOperator(LinearOperator):
    """``A^T`` of an operator that has a transpose product."""

    base: LinearOperator
    blocks: Blocks | None = None

    @property
    def shape(self):
        return self.base.shape[::-1]

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def symmetric(self):
        return self.base.symmetric

    @property
    def psd(self):
        return self.base.psd

    @property
    def products(self):
        inner = self.base.products
        out = {"matmat", "quad_forms"} if "rmatmat" in inner else set()
        return frozenset(out | ({"rmatmat"} if "matmat" in inner else set()))

    def with_structure(self, *, symmetric=None, psd=None):
        """``A^T`` has the structure of ``A``: the declaration goes onto the wrapped operator."""
        return TransposedOperator(self.base.with_structure(symmetric=symmetric, psd=psd), self.blocks)

    def matmat(self, V):
        return self.base.rmatmat(V)

    def rmatmat(self, U):
        return self.base.matmat(U)


@_pytree(
    data=("jvp", "vjp", "value_flat"),
    meta=("mode", "shape", "dtype", "blocks", "unravel_input", "unravel_output", "x_struct", "y_struct"),
)
class JacobianOperator(LinearOperator):
    """The Jacobian ``J = df/dx`` of a JAX function at ``x``, linearized once.

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> y`` with ``x`` and ``y`` arbitrary pytrees of floating arrays.
    x : pytree
        Linearisation point.
    *args :
        Extra arguments held fixed (not differentiated).
    mode : {"fwd", "bwd"}
        The primitive: ``"fwd"`` linearizes with ``jax.linearize`` (JVPs, the transpose
        derived by ``jax.linear_transpose``); ``"bwd"`` with ``jax.vjp`` (VJPs, the
        forward product derived by transposition). Either way ``f`` runs once.

    Notes
    -----
    The operator acts on flat vectors of length ``n = size(x)`` and returns flat
    vectors of length ``m = size(y)``; ``unravel_input`` / ``unravel_output`` map
    back to the pytrees. If ``y`` is a dict, its top-level keys are the blocks.
    ``value`` holds ``f(x, *args)``. The pytree leaves are the linearization's
    residuals (``jax.linearize`` and ``jax.vjp`` return pytrees).
    """

    def __init__(self, f, x, *args, mode="fwd", blocks=None):
        require_jax("JacobianOperator (JAX autodiff; torch: TorchJacobianOperator)")
        check_choice(mode, ("fwd", "bwd"), name="mode")
        if not callable(f):
            raise TypeError(f"f must be callable; got {type(f).__name__}")
        x_flat, unravel_input = jax.flatten_util.ravel_pytree(x)
        check_float_dtype(x_flat.dtype, name="x dtype")
        out_info = {}

        def flat_f(xf):
            y_flat, out_info["unravel"] = jax.flatten_util.ravel_pytree(f(unravel_input(xf), *args))
            return y_flat

        if mode == "fwd":
            y_flat, self.jvp = jax.linearize(flat_f, x_flat)
            self.vjp = None
        else:
            y_flat, self.vjp = jax.vjp(flat_f, x_flat)
            self.jvp = None
        check_float_dtype(y_flat.dtype, name="f(x) dtype")
        self.mode, self.value_flat = mode, y_flat
        self.unravel_input, self.unravel_output = unravel_input, out_info["unravel"]
        self.shape = (int(y_flat.shape[0]), int(x_flat.shape[0]))
        self.dtype = np.dtype(jnp.result_type(x_flat.dtype, y_flat.dtype))
        self.x_struct = jax.ShapeDtypeStruct(x_flat.shape, x_flat.dtype)
        self.y_struct = jax.ShapeDtypeStruct(y_flat.shape, y_flat.dtype)
        self.blocks = make_blocks(blocks, self.shape[0]) if blocks is not None else blocks_of_tree(self.value)

    @property
    def symmetric(self):
        return False if self.shape[0] != self.shape[1] else None

    @property
    def value(self):
        """``f(x, *args)`` as the original pytree."""
        return self.unravel_output(self.value_flat)

    def with_structure(self, *, symmetric=None, psd=None):
        raise TypeError("a Jacobian's structure cannot be declared; gram(J) is the PSD operator built from it")

    def _jvp_fn(self):
        if self.jvp is not None:
            return self.jvp
        t = jax.linear_transpose(self._vjp_fn(), self.y_struct)
        return lambda v: t(v)[0]

    def _vjp_fn(self):
        if self.vjp is not None:
            return lambda u: self.vjp(u)[0]
        t = jax.linear_transpose(self.jvp, self.x_struct)
        return lambda u: t(u)[0]

    def matmat(self, V):
        return jax.vmap(self._jvp_fn())(V.astype(self.x_struct.dtype))

    def rmatmat(self, U):
        return jax.vmap(self._vjp_fn())(U.astype(self.y_struct.dtype))


@_pytree(data=("J",), meta=("side",))
class GramOperator(LinearOperator):
    """``J J^T`` (``side="output"``) or ``J^T J`` (``side="input"``) of an operator ``J``.

    Both have the same trace ``||J||_F^2``. Quadratic forms never form the product:
    on the input side ``v^T J^T J v = ||J v||^2`` costs one product with ``J``; on the
    output side ``u^T J J^T u = ||J^T u||^2`` costs one product with ``J^T``. Blocks
    are the output blocks of ``J``: block ``b``'s trace is ``tr(J_b J_b^T) = ||J_b||_F^2``
    on either side (on the output side each block costs one ``J^T`` product per probe,
    with the probe restricted to the block). One probe counts as one matvec.
    Declared symmetric and positive semidefinite.
    """

    symmetric = True
    psd = True

    def __init__(self, J, side):
        check_choice(side, ("output", "input"), name="side")
        self.J = J
        self.side = side

    @property
    def shape(self):
        m, n = self.J.shape
        return (n, n) if self.side == "input" else (m, m)

    @property
    def dtype(self):
        return self.J.dtype

    @property
    def blocks(self):
        return self.J.blocks

    @property
    def products(self):
        inner = self.J.products
        both = {"matmat", "rmatmat"} <= inner
        quad = ("matmat" if self.side == "input" else "rmatmat") in inner
        return frozenset(({"matmat", "rmatmat"} if both else set()) | ({"quad_forms"} if quad else set()))

    def with_blocks(self, blocks):
        return type(self)(self.J.with_blocks(blocks), self.side)

    def with_structure(self, *, symmetric=None, psd=None):
        if symmetric is False or psd is False:
            raise ValueError("a Gram operator is symmetric positive semidefinite by construction")
        return self

    def matmat(self, V):
        if self.side == "input":
            return self.J.rmatmat(self.J.matmat(V))
        return self.J.matmat(self.J.rmatmat(V))

    rmatmat = matmat  # symmetric

    def quad_forms(self, V):
        J = self.J
        if self.side == "input":
            JV = J.matmat(V)
            return block_sums(JV * JV, J.blocks)
        if J.blocks is None:
            W = J.rmatmat(V)
            return block_sums(W * W, None)
        cols = []
        for _, a, b in J.blocks:
            W = J.rmatmat(restrict_columns(V, a, b))
            cols.append(block_sums(W * W, None))
        return cols[0] if len(cols) == 1 else concat_columns(cols[0], cols)


@functools.singledispatch
def concat_columns(first, cols):
    """``[(k, 1), ...]`` -> ``(k, B)``, dispatched on the array type of ``first`` (``cols[0]``)."""
    return jnp.concatenate(cols, axis=-1)


@concat_columns.register(np.ndarray)
def _concat_columns_numpy(first, cols):
    return np.concatenate(cols, axis=-1)


def gram(J, side="auto"):
    """The Gram operator of ``J``: ``J J^T`` (``side="output"``) or ``J^T J`` (``"input"``).

    ``side="auto"`` probes the smaller of the two spaces: fewer probes reach the
    exact answer (the budget at which estimators switch to exact computation is the
    probe dimension), and both sides have the same trace.
    """
    check_choice(side, ("output", "input", "auto"), name="side")
    J = as_operator(J)
    if side == "auto":
        m, n = J.shape
        side = "input" if n <= m else "output"
    return GramOperator(J, side)


# ----------------------------------------------------------------------------- conversion


def _is_lineax(obj) -> bool:
    return all(hasattr(obj, a) for a in ("mv", "in_structure", "out_structure")) and not isinstance(obj, LinearOperator)


def _from_lineax(obj, blocks):
    in_struct, out_struct = obj.in_structure(), obj.out_structure()
    zeros_in = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), in_struct)
    zeros_out = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)
    x_flat, unravel_in = jax.flatten_util.ravel_pytree(zeros_in)
    y_flat, _ = jax.flatten_util.ravel_pytree(zeros_out)

    def matvec(v):
        return jax.flatten_util.ravel_pytree(obj.mv(unravel_in(v)))[0]

    if blocks is None:
        blocks = blocks_of_tree(zeros_out)
    return FunctionOperator(matvec, (y_flat.shape[0], x_flat.shape[0]), x_flat.dtype, blocks=blocks)


def as_operator(obj, *, blocks=None, symmetric=None, psd=None) -> LinearOperator:
    """Wrap what the user has as a sketchtrace operator.

    Accepts NumPy or JAX 2-D arrays and ``scipy.sparse`` matrices and arrays (integer/boolean
    entries are converted to float64), ``scipy.sparse.linalg.LinearOperator``,
    lineax operators (duck-typed; lineax need not be installed), and sketchtrace
    operators (returned as they are). A bare callable has no shape: wrap it in
    :class:`FunctionOperator`.

    Parameters
    ----------
    blocks : mapping, optional
        Named partition of the output rows, ``{name: size}`` in order (or
        ``{name: slice}``). Block estimators return one estimate per block, all
        from shared probes.
    symmetric, psd : bool, optional
        Declared structure (see :class:`LinearOperator`). Estimators read it: the
        adaptive :func:`trace` picks XNysTrace for a PSD operator, :func:`xnystrace`
        refuses an operator declared not PSD.
    """
    if isinstance(obj, LinearOperator):
        op = obj
    elif isinstance(obj, (np.ndarray, JaxArray)):
        if obj.ndim != 2:
            raise ValueError(f"op: expected a 2-D matrix; got an array of shape {obj.shape}")
        if np.issubdtype(obj.dtype, np.complexfloating):
            raise TypeError(f"op: complex matrices are not supported; got dtype {obj.dtype}")
        if not np.issubdtype(obj.dtype, np.floating):
            obj = obj.astype(np.float64) if isinstance(obj, np.ndarray) else obj.astype(float)
        op = DenseOperator(_native_float(obj))
    elif _is_scipy_sparse(obj):
        if np.issubdtype(obj.dtype, np.integer) or np.issubdtype(obj.dtype, np.bool_):
            obj = obj.astype(np.float64)  # as for dense matrices: integer (and boolean) entries as float64
        check_float_dtype(obj.dtype, name="op dtype")
        op = SparseOperator.from_scipy(_native_float(obj))
    elif _is_scipy_linop(obj):
        check_float_dtype(obj.dtype, name="op dtype")
        op = ScipyOperator(obj)
    elif _is_lineax(obj):
        op = _from_lineax(obj, blocks)
        blocks = None
    elif callable(obj):
        raise TypeError(
            "op: a bare callable has no declared shape or dtype; wrap it as "
            "sketchtrace.FunctionOperator(matvec, shape, dtype)"
        )
    else:
        raise TypeError(
            f"op: expected a matrix, a scipy.sparse matrix, a scipy LinearOperator, a lineax "
            f"operator or a sketchtrace operator; got {type(obj).__name__}"
        )
    if blocks is not None:
        op = op.with_blocks(blocks)
    if symmetric is not None or psd is not None:
        op = op.with_structure(symmetric=symmetric, psd=psd)
    return op


def _native_float(obj):
    """Big-endian data in native byte order (JAX refuses it); float16 in float32 (half
    precision cannot accumulate a trace: its sums round away or overflow)."""
    dt = np.dtype(obj.dtype)
    if dt.itemsize < 4:
        return obj.astype(np.float32)
    if not dt.isnative:
        return obj.astype(dt.newbyteorder("="))
    return obj


def _is_scipy_sparse(obj) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(obj)


def _is_scipy_linop(obj) -> bool:
    try:
        from scipy.sparse.linalg import LinearOperator as SciLinOp
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, SciLinOp)
