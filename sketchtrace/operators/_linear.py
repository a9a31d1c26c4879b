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
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..validation import check_choice, check_float_dtype

Blocks = tuple  # tuple of (name, start, stop), static and hashable


# ----------------------------------------------------------------------------- helpers


def _as_shape(shape) -> tuple[int, int]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape), int(shape))
    try:
        m, n = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"shape must be an int n or a pair (m, n); got {shape!r}") from exc
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


def block_sums(W, blocks: Blocks | None):
    """Sum the columns of ``W`` (shape ``(k, m)``) over each block: ``(k, B)``."""
    if blocks is None:
        return jnp.sum(W, axis=-1, keepdims=True)
    return jnp.stack([jnp.sum(W[..., a:b], axis=-1) for _, a, b in blocks], axis=-1)


def _canonical(dtype):
    return jax.dtypes.canonicalize_dtype(dtype)


# ----------------------------------------------------------------------------- base


class LinearOperator:
    """Base class of sketchtrace operators (shape, dtype and blocks known up front)."""

    shape: tuple[int, int]
    dtype: np.dtype
    blocks: Blocks | None = None

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
        return dataclasses.replace(self, blocks=make_blocks(blocks, self.shape[0]))

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
        v = jnp.asarray(v)
        return self.matvec(v) if v.ndim == 1 else self.matmat(v.T).T

    def quad_forms(self, V):
        """Per-block ``v_b . (A v)_b`` for each row ``v`` of ``V``: shape ``(k, B)``."""
        return block_sums(V * self.matmat(V), self.blocks)

    @property
    def T(self):
        return TransposedOperator(self)


# ----------------------------------------------------------------------------- concrete


@dataclasses.dataclass(frozen=True, eq=False)
class DenseOperator(LinearOperator):
    """A dense NumPy or JAX matrix. Registered as a pytree (the matrix is a leaf)."""

    A: Any
    blocks: Blocks | None = None

    @property
    def shape(self):
        return tuple(self.A.shape)

    @property
    def dtype(self):
        return np.dtype(self.A.dtype)

    def matmat(self, V):
        return V @ jnp.asarray(self.A).T

    def rmatmat(self, U):
        return U @ jnp.asarray(self.A)

    def quad_forms(self, V):
        return block_sums(V * (V @ jnp.asarray(self.A).T), self.blocks)


jax.tree_util.register_pytree_node(
    DenseOperator,
    lambda op: ((op.A,), op.blocks),
    lambda blocks, leaves: DenseOperator(leaves[0], blocks),
)


@dataclasses.dataclass(frozen=True, eq=False)
class SparseOperator(LinearOperator):
    """A ``scipy.sparse`` matrix (converted once to CSR; to a JAX BCOO on first JAX use)."""

    S: Any
    blocks: Blocks | None = None

    @property
    def shape(self):
        return tuple(self.S.shape)

    @property
    def dtype(self):
        return np.dtype(self.S.dtype)

    @property
    def bcoo(self):
        cached = self.__dict__.get("_bcoo")
        if cached is None:
            from jax.experimental import sparse as jsparse

            cached = jsparse.BCOO.from_scipy_sparse(self.S.astype(_canonical(self.dtype)))
            object.__setattr__(self, "_bcoo", cached)
        return cached

    def matmat(self, V):
        return (self.bcoo @ V.T).T

    def rmatmat(self, U):
        return (self.bcoo.T @ U.T).T


@dataclasses.dataclass(frozen=True, eq=False)
class ScipyOperator(LinearOperator):
    """A ``scipy.sparse.linalg.LinearOperator``; on JAX it runs through ``pure_callback``."""

    L: Any
    blocks: Blocks | None = None

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

        return jax.pure_callback(
            host, jax.ShapeDtypeStruct((X.shape[0], out_dim), dt), X, vmap_method="sequential"
        )

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
    """

    fn: Callable
    shape: tuple
    dtype: Any
    rmatvec_fn: Callable | None = None
    blocks: Blocks | None = None

    def __init__(self, matvec, shape, dtype, *, rmatvec=None, blocks=None):
        if not callable(matvec):
            raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
        shape = _as_shape(shape)
        object.__setattr__(self, "fn", matvec)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", check_float_dtype(dtype))
        object.__setattr__(self, "rmatvec_fn", rmatvec)
        object.__setattr__(self, "blocks", make_blocks(blocks, shape[0]))

    def with_blocks(self, blocks):
        return FunctionOperator(self.fn, self.shape, self.dtype, rmatvec=self.rmatvec_fn, blocks=blocks)

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

    def matmat(self, V):
        return self.base.rmatmat(V)

    def rmatmat(self, U):
        return self.base.matmat(U)


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

    The operator acts on flat vectors of length ``n = size(x)`` and returns flat
    vectors of length ``m = size(y)``; ``unravel_input`` / ``unravel_output`` map
    back to the pytrees. If ``y`` is a dict, its top-level keys are the blocks.
    ``value`` holds ``f(x, *args)``.
    """

    def __init__(self, f, x, *args, mode="fwd", blocks=None):
        check_choice(mode, ("fwd", "bwd"), name="mode")
        if not callable(f):
            raise TypeError(f"f must be callable; got {type(f).__name__}")
        x_flat, self.unravel_input = ravel_pytree(x)
        check_float_dtype(x_flat.dtype, name="x dtype")
        out_info = {}

        def flat_f(xf):
            y = f(self.unravel_input(xf), *args)
            y_flat, unravel = ravel_pytree(y)
            out_info["tree"], out_info["unravel"] = y, unravel  # tree: structure only (block names)
            return y_flat

        self.mode = mode
        if mode == "fwd":
            y_flat, self._jvp = jax.linearize(flat_f, x_flat)
            self._vjp = None
        else:
            y_flat, vjp = jax.vjp(flat_f, x_flat)
            self._vjp = lambda u: vjp(u)[0]
            self._jvp = None
        check_float_dtype(y_flat.dtype, name="f(x) dtype")
        self.value_flat = y_flat
        self.unravel_output = out_info["unravel"]
        self.value = self.unravel_output(y_flat)  # not out_info["tree"]: that one is a tracer
        self.shape = (int(y_flat.shape[0]), int(x_flat.shape[0]))
        self.dtype = np.dtype(jnp.result_type(x_flat.dtype, y_flat.dtype))
        self._x_struct = jax.ShapeDtypeStruct(x_flat.shape, x_flat.dtype)
        self._y_struct = jax.ShapeDtypeStruct(y_flat.shape, y_flat.dtype)
        self.blocks = make_blocks(blocks, self.shape[0]) if blocks is not None else blocks_of_tree(self.value)

    def with_blocks(self, blocks):
        new = object.__new__(JacobianOperator)
        new.__dict__.update(self.__dict__)
        new.blocks = make_blocks(blocks, self.shape[0])
        return new

    def _jvp_fn(self):
        if self._jvp is None:
            t = jax.linear_transpose(self._vjp, self._y_struct)
            self._jvp = lambda v: t(v)[0]
        return self._jvp

    def _vjp_fn(self):
        if self._vjp is None:
            t = jax.linear_transpose(self._jvp, self._x_struct)
            self._vjp = lambda u: t(u)[0]
        return self._vjp

    def matmat(self, V):
        return jax.vmap(self._jvp_fn())(V.astype(self._x_struct.dtype))

    def rmatmat(self, U):
        return jax.vmap(self._vjp_fn())(U.astype(self._y_struct.dtype))


class GramOperator(LinearOperator):
    """``J J^T`` (``side="output"``) or ``J^T J`` (``side="input"``) of an operator ``J``.

    Both have the same trace ``||J||_F^2``. Quadratic forms never form the product:
    on the input side ``v^T J^T J v = ||J v||^2`` costs one product with ``J``; on the
    output side ``u^T J J^T u = ||J^T u||^2`` costs one product with ``J^T``. Blocks
    are the output blocks of ``J``: block ``b``'s trace is ``tr(J_b J_b^T) = ||J_b||_F^2``
    on either side (on the output side each block costs one ``J^T`` product per probe,
    with the probe restricted to the block). One probe counts as one matvec.
    """

    def __init__(self, J, side):
        self.J = J
        self.side = side
        m, n = J.shape
        self.shape = (n, n) if side == "input" else (m, m)
        self.dtype = J.dtype
        self.blocks = J.blocks

    def with_blocks(self, blocks):
        return GramOperator(self.J.with_blocks(blocks), self.side)

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
            return jnp.sum(W * W, axis=-1, keepdims=True)
        cols = []
        for _, a, b in J.blocks:
            mask = jnp.zeros((J.shape[0],), V.dtype).at[a:b].set(1)
            W = J.rmatmat(V * mask)
            cols.append(jnp.sum(W * W, axis=-1))
        return jnp.stack(cols, axis=-1)


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
    return all(hasattr(obj, a) for a in ("mv", "in_structure", "out_structure")) and not isinstance(
        obj, LinearOperator
    )


def _from_lineax(obj, blocks):
    in_struct, out_struct = obj.in_structure(), obj.out_structure()
    zeros_in = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), in_struct)
    zeros_out = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)
    x_flat, unravel_in = ravel_pytree(zeros_in)
    y_flat, _ = ravel_pytree(zeros_out)

    def matvec(v):
        return ravel_pytree(obj.mv(unravel_in(v)))[0]

    if blocks is None:
        blocks = blocks_of_tree(zeros_out)
    return FunctionOperator(
        matvec, (y_flat.shape[0], x_flat.shape[0]), x_flat.dtype, blocks=blocks
    )


def as_operator(obj, *, blocks=None) -> LinearOperator:
    """Wrap what the user has as a sketchtrace operator.

    Accepts NumPy or JAX 2-D arrays (integer/boolean arrays are converted to
    float64), ``scipy.sparse`` matrices and arrays, ``scipy.sparse.linalg.LinearOperator``,
    lineax operators (duck-typed; lineax need not be installed), and sketchtrace
    operators (returned as they are). A bare callable has no shape: wrap it in
    :class:`FunctionOperator`.

    Parameters
    ----------
    blocks : mapping, optional
        Named partition of the output rows, ``{name: size}`` in order (or
        ``{name: slice}``). Block estimators return one estimate per block, all
        from shared probes.
    """
    if isinstance(obj, LinearOperator):
        op = obj
    elif isinstance(obj, (np.ndarray, jax.Array)):
        if obj.ndim != 2:
            raise ValueError(f"op: expected a 2-D matrix; got an array of shape {obj.shape}")
        if np.issubdtype(obj.dtype, np.complexfloating):
            raise TypeError(f"op: complex matrices are not supported; got dtype {obj.dtype}")
        if not np.issubdtype(obj.dtype, np.floating):
            obj = obj.astype(np.float64) if isinstance(obj, np.ndarray) else obj.astype(float)
        op = DenseOperator(_native_float(obj))
    elif _is_scipy_sparse(obj):
        check_float_dtype(obj.dtype, name="op dtype")
        op = SparseOperator(_native_float(obj).tocsr())
    elif _is_scipy_linop(obj):
        check_float_dtype(obj.dtype, name="op dtype")
        op = ScipyOperator(obj)
    elif _is_lineax(obj):
        return _from_lineax(obj, blocks)
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
