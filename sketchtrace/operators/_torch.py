"""PyTorch operators: tensors (dense, sparse COO/CSR), callables on tensors, ``torch.func`` Jacobians.

They follow the :class:`~sketchtrace.operators.LinearOperator` interface with torch
tensors in place of JAX arrays: ``matmat(V)`` maps ``(k, n)`` probe rows to
``(k, m)``, ``rmatmat(U)`` applies the transpose and ``quad_forms(V)`` returns the
``(k, B)`` per-block quadratic forms. ``dtype`` is a ``torch.dtype`` and
``device`` the device of the operator's tensors; the torch backend
(a ``torch.Generator`` as the key) draws probes in that dtype on that device.

This module imports torch; ``import sketchtrace`` does not (the public names are
loaded lazily by :mod:`sketchtrace.operators`).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Mapping

import torch
from torch.func import functional_call, jvp, vjp, vmap

from ..validation import check_bool, check_choice
from ._linear import (
    ALL_PRODUCTS,
    DenseOperator,
    FunctionOperator,
    GramOperator,
    JacobianOperator,
    LinearOperator,
    ScipyOperator,
    SparseOperator,
    TransposedOperator,
    _check_structure,
    block_sums,
    concat_columns,
    make_blocks,
    restrict_columns,
)

_LAYOUTS = (torch.strided, torch.sparse_coo, torch.sparse_csr)

#: ATen's parallel grain (``at::internal::GRAIN_SIZE``): an elementwise op or reduction over fewer
#: elements runs on the calling thread.
_GRAIN = 32768

#: Above this many elements the intra-op threads pay for their wake-up: ops run whole.
_SERIAL_MAX = 1 << 21


def serial_rows(fn, *xs, width=None):
    """``fn(*xs)``, computed over blocks of leading rows small enough for torch to run each op inline.

    On CPU, torch spreads every op over more than ``_GRAIN`` elements across its intra-op threads;
    waking them costs microseconds on an idle machine and milliseconds on a loaded one (a niced
    process whose second core is busy), which for the probe draw and the quadratic forms' products
    and row sums (a few small ops next to one large product) was most of the estimator's overhead.
    ``fn`` must act row by row (elementwise ops, reductions over the trailing dimensions) and return
    a tensor with one leading row per input row; ``width`` is the largest number of elements per
    row of any intermediate (default: a row of ``xs[0]``). The result is bitwise the same as
    ``fn(*xs)``: elementwise ops do not depend on the split, and torch reduces each row of a
    multi-row reduction serially. Runs ``fn`` whole off CPU, with one thread, for rows of
    ``_GRAIN`` elements or more and above ``_SERIAL_MAX`` elements.
    """
    x = xs[0]
    k = x.shape[0] if x.ndim else 0
    width = width if width is not None else math.prod(x.shape[1:])
    if not 0 < width < _GRAIN or not _GRAIN <= k * width <= _SERIAL_MAX or x.device.type != "cpu":
        return fn(*xs)
    if torch.get_num_threads() == 1:
        return fn(*xs)
    step = (_GRAIN - 1) // width
    out = None
    for lo in range(0, k, step):
        part = fn(*(t[lo : lo + step] for t in xs))
        if out is None:
            out = part.new_empty((k, *part.shape[1:]))  # no fill: torch.empty launches no parallel op
        out[lo : lo + part.shape[0]].copy_(part)
    return out


@block_sums.register(torch.Tensor)
def torch_block_sums(W, blocks):
    """Sum the columns of ``W`` (``(k, m)``) over each block: ``(k, B)``."""
    if blocks is None:
        return W.sum(dim=-1, keepdim=True)
    return torch.stack([W[..., a:b].sum(dim=-1) for _, a, b in blocks], dim=-1)


@restrict_columns.register(torch.Tensor)
def _restrict_columns_torch(V, start, stop):
    out = torch.zeros_like(V)
    out[..., start:stop] = V[..., start:stop]
    return out


@concat_columns.register(torch.Tensor)
def _concat_columns_torch(first, cols):
    return torch.cat(cols, dim=-1)


def _row_quad_forms(V, W, blocks):
    """``(k, B)`` block sums of ``V * W`` (the products' row sums, computed inline: :func:`serial_rows`)."""
    return serial_rows(lambda v, w: torch_block_sums(v * w, blocks), V, W)


def check_torch_dtype(dtype, *, name="dtype") -> torch.dtype:
    """A real floating ``torch.dtype`` (``float32``/``float64``/...), or a clear error."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating torch dtype (torch.float32 or torch.float64); got {dtype!r}")
    return dtype


class TorchOperator(LinearOperator):
    """Base of the torch operators: ``shape``, ``dtype`` (torch), ``device`` and ``blocks``."""

    device: torch.device

    @property
    def jax_dtype(self):  # the dtype estimators draw probes in (a torch dtype here)
        return self.dtype

    def with_blocks(self, blocks):
        new = copy.copy(self)
        new.blocks = make_blocks(blocks, self.shape[0])
        return new

    def quad_forms(self, V):
        return _row_quad_forms(V, self.matmat(V), self.blocks)

    def __matmul__(self, v):
        return self.matvec(v) if v.ndim == 1 else self.matmat(v.T).T

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


def _declare(op, symmetric, psd):
    op.symmetric, op.psd = _check_structure(symmetric, psd)
    if op.symmetric and op.shape[0] != op.shape[1]:
        raise ValueError(f"symmetric=True needs a square operator; shape is {op.shape}")


class TorchTensorOperator(TorchOperator):
    """A 2-D torch tensor: dense (strided) or sparse (COO or CSR); integer tensors become float64.

    ``symmetric`` / ``psd`` declare structure (see :class:`~sketchtrace.LinearOperator`).
    """

    def __init__(self, A, *, blocks=None, symmetric=None, psd=None):
        if not isinstance(A, torch.Tensor):
            raise TypeError(f"op: expected a torch.Tensor; got {type(A).__name__}")
        if A.layout not in _LAYOUTS:
            raise TypeError(f"op: torch layout {A.layout} is not supported; use a dense, COO or CSR tensor")
        if A.ndim != 2:
            raise ValueError(f"op: expected a 2-D matrix; got a tensor of shape {tuple(A.shape)}")
        if A.is_complex():
            raise TypeError(f"op: complex matrices are not supported; got dtype {A.dtype}")
        if not A.is_floating_point():
            A = A.to(torch.float64)
        if A.layout == torch.sparse_coo:
            A = A.coalesce()
        self.A = A.detach()
        self.shape = (int(A.shape[0]), int(A.shape[1]))
        self.dtype = A.dtype
        self.device = A.device
        self.blocks = make_blocks(blocks, self.shape[0])
        _declare(self, symmetric, psd)

    @property
    def is_sparse(self) -> bool:
        return self.A.layout != torch.strided

    def matmat(self, V):
        if self.is_sparse:
            return (self.A @ V.T).T
        return V @ self.A.T

    def rmatmat(self, U):
        if self.is_sparse:
            return (self.A.t() @ U.T).T
        return U @ self.A

    def diagonal(self):
        """The diagonal (exact traces need no products for a stored matrix)."""
        if self.A.layout == torch.strided:
            return torch.diagonal(self.A).clone()
        coo = self.A.to_sparse_coo().coalesce() if self.A.layout == torch.sparse_csr else self.A
        i, j = coo.indices()
        on = i == j
        d = torch.zeros(min(self.shape), dtype=self.dtype, device=self.device)
        return d.index_add_(0, i[on], coo.values()[on])


class TorchFunctionOperator(TorchOperator):
    """A linear callable on torch tensors, ``matvec(v) -> A v``, with declared shape and dtype.

    ``matvec`` is applied to a block of probes with ``torch.func.vmap``; pass
    ``vectorized=False`` for callables ``vmap`` cannot trace (then it is called
    once per probe). ``rmatvec`` (``u -> A^T u``) is optional.
    """

    def __init__(
        self,
        matvec,
        shape,
        dtype,
        *,
        device="cpu",
        rmatvec=None,
        blocks=None,
        vectorized=True,
        symmetric=None,
        psd=None,
    ):
        if not callable(matvec):
            raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
        if rmatvec is not None and not callable(rmatvec):
            raise TypeError(f"rmatvec must be callable or None; got {type(rmatvec).__name__}")
        m, n = _as_shape(shape)
        self.fn, self.rmatvec_fn, self.vectorized = matvec, rmatvec, check_bool(vectorized, name="vectorized")
        self.shape = (m, n)
        self.dtype = check_torch_dtype(dtype)
        self.device = torch.device(device)
        self.blocks = make_blocks(blocks, m)
        _declare(self, symmetric, psd)

    @property
    def products(self):
        return ALL_PRODUCTS if self.rmatvec_fn is not None else frozenset({"matmat", "quad_forms"})

    def _apply(self, fn, V, out_dim, what):
        Y = vmap(fn)(V) if self.vectorized else torch.stack([fn(v) for v in V])
        if not isinstance(Y, torch.Tensor) or tuple(Y.shape) != (V.shape[0], out_dim):
            got = tuple(Y.shape[1:]) if isinstance(Y, torch.Tensor) else type(Y).__name__
            raise ValueError(
                f"{what} returned shape {got} for a probe of shape ({V.shape[1]},); declared shape is "
                f"{self.shape}, so it must return shape ({out_dim},)"
            )
        return Y.to(V.dtype)

    def matmat(self, V):
        return self._apply(self.fn, V, self.shape[0], "matvec")

    def rmatmat(self, U):
        if self.rmatvec_fn is None:
            raise NotImplementedError("TorchFunctionOperator has no transpose product: pass rmatvec=")
        return self._apply(self.rmatvec_fn, U, self.shape[1], "rmatvec")


def _as_shape(shape):
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape, shape)
    try:
        m, n = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"shape must be an int n or a pair (m, n); got {shape!r}") from exc
    if m <= 0 or n <= 0:
        raise ValueError(f"shape must have positive dimensions; got {(m, n)}")
    return m, n


# ----------------------------------------------------------------------------- Jacobians


class _Flat:
    """Flatten a tensor or an (ordered) dict of tensors to one vector and back."""

    def __init__(self, tree, what):
        if isinstance(tree, torch.Tensor):
            self.names, self.shapes = None, [tuple(tree.shape)]
            leaves = [tree]
        elif isinstance(tree, Mapping) and tree and all(isinstance(v, torch.Tensor) for v in tree.values()):
            self.names = tuple(str(k) for k in tree)
            self.shapes = [tuple(v.shape) for v in tree.values()]
            leaves = list(tree.values())
        else:
            raise TypeError(f"{what} must be a torch.Tensor or a non-empty dict of tensors; got {type(tree).__name__}")
        for leaf in leaves:
            if not leaf.is_floating_point():
                raise TypeError(f"{what} must hold real floating tensors; got dtype {leaf.dtype}")
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dtype = leaves[0].dtype
        self.device = leaves[0].device

    def ravel(self, tree):
        leaves = [tree] if self.names is None else [tree[k] for k in self.names]
        return torch.cat([leaf.reshape(-1) for leaf in leaves])

    def unravel(self, flat):
        parts = [p.reshape(s) for p, s in zip(torch.split(flat, self.sizes), self.shapes)]
        return parts[0] if self.names is None else dict(zip(self.names, parts))

    def blocks(self):
        return None if self.names is None else make_blocks(dict(zip(self.names, self.sizes)), sum(self.sizes))


class TorchJacobianOperator(TorchOperator):
    """The Jacobian ``J = df/dx`` of a torch function at ``x``, applied with ``torch.func``.

    Parameters
    ----------
    f : callable
        ``f(x, *args)`` -> a tensor or a dict of tensors (the dict's keys, in order,
        are the output blocks: e.g. the residual blocks of a PINN).
    x : tensor or dict of tensors
        The linearisation point (e.g. a module's parameters).
    *args : tuple
        Held fixed (not differentiated).
    blocks : mapping, optional
        Named output row blocks, ``name -> size`` or ``name -> (start, stop)`` (default:
        the keys of a dict output, in order).

    Notes
    -----
    ``matmat`` maps ``(k, n)`` rows to ``(k, m)`` with ``vmap`` of ``torch.func.jvp``
    (forward mode); ``rmatmat`` uses the ``torch.func.vjp`` taken once here.
    ``value`` holds ``f(x, *args)``. Use :func:`module_jacobian` for the Jacobian
    with respect to an ``nn.Module``'s parameters.
    """

    def __init__(self, f, x, *args, blocks=None):
        if not callable(f):
            raise TypeError(f"f must be callable; got {type(f).__name__}")
        self._xin = _Flat(x, "x")
        x = x.detach() if isinstance(x, torch.Tensor) else {k: v.detach() for k, v in x.items()}
        self.x_flat = self._xin.ravel(x)
        self._f, self._args = f, args
        y = f(x, *args)
        self._yout = _Flat(y, "f(x)")
        self.value = y.detach() if isinstance(y, torch.Tensor) else {k: v.detach() for k, v in y.items()}
        self.value_flat = self._yout.ravel(self.value)
        self.shape = (int(self.value_flat.shape[0]), int(self.x_flat.shape[0]))
        self.dtype = torch.promote_types(self._xin.dtype, self._yout.dtype)
        self.device = self._xin.device
        self.blocks = make_blocks(blocks, self.shape[0]) if blocks is not None else self._yout.blocks()
        self._vjp = None

    def flat_f(self, x_flat):
        return self._yout.ravel(self._f(self._xin.unravel(x_flat), *self._args))

    def unravel_input(self, v):
        return self._xin.unravel(v)

    def unravel_output(self, u):
        return self._yout.unravel(u)

    def matmat(self, V):
        xf = self.x_flat
        out = vmap(lambda v: jvp(self.flat_f, (xf,), (v,))[1])(V.to(xf.dtype))
        return out.to(V.dtype)

    def rmatmat(self, U):
        if self._vjp is None:
            _, self._vjp = vjp(self.flat_f, self.x_flat)
        return vmap(lambda u: self._vjp(u)[0])(U.to(self.value_flat.dtype)).to(U.dtype)


def module_jacobian(module, f, *args, params=None, blocks=None):
    """The Jacobian of ``f`` with respect to an ``nn.Module``'s parameters.

    ``f(model, *args)`` receives ``model``, a callable that evaluates ``module`` with
    the parameters being differentiated (``torch.func.functional_call``), and returns
    a tensor or a dict of tensors (one block per key). ``params`` defaults to the
    module's named parameters (detached).
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    if params is None:
        params = {k: v.detach() for k, v in module.named_parameters()}
    if not params:
        raise ValueError("module has no parameters to differentiate")

    def g(p, *a):
        return f(lambda *inputs: functional_call(module, p, inputs), *a)

    return TorchJacobianOperator(g, params, *args, blocks=blocks)


class TorchGramOperator(GramOperator, TorchOperator):
    """:class:`~sketchtrace.GramOperator` of a torch operator ``J`` (``J J^T`` or ``J^T J``).

    The products are :class:`~sketchtrace.GramOperator`'s own (they run in the namespace of the
    probes); this subclass only adds the torch ``device`` of ``J``.
    """

    @property
    def device(self):
        return self.J.device


class _TorchView(TorchOperator):
    """A sketchtrace operator whose products take torch tensors, seen by the torch backend.

    Its products are the wrapped operator's own; ``dtype`` becomes the matching torch dtype
    and ``device`` the operator's (CPU when it declares none). Nothing is written onto the
    wrapped operator.
    """

    def __init__(self, op, device=None):
        self.op = op
        self.shape = tuple(op.shape)
        self.dtype = _torch_dtype(op.dtype)
        self.device = torch.device(device if device is not None else getattr(op, "device", "cpu"))
        self.blocks = op.blocks
        self.symmetric, self.psd = op.symmetric, op.psd

    @property
    def products(self):
        return self.op.products

    def with_blocks(self, blocks):
        return _TorchView(self.op.with_blocks(blocks), self.device)

    def _checked(self, Y, what):
        if not isinstance(Y, torch.Tensor):
            raise TypeError(
                f"op: {type(self.op).__name__}.{what} returned {type(Y).__name__} for torch probes; the torch "
                "backend (a torch.Generator as key) needs products that take and return torch tensors"
            )
        return Y

    def matmat(self, V):
        return self._checked(self.op.matmat(V), "matmat")

    def rmatmat(self, U):
        return self._checked(self.op.rmatmat(U), "rmatmat")

    def quad_forms(self, V):
        if type(self.op).quad_forms is LinearOperator.quad_forms and "matmat" in self.op.products:
            return _row_quad_forms(V, self.matmat(V), self.blocks)  # the default, on checked products
        return self._checked(self.op.quad_forms(V), "quad_forms")


def _torch_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    import numpy as np

    table = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}
    try:
        return table[np.dtype(dtype)]
    except (KeyError, TypeError) as exc:
        raise TypeError(f"op dtype {dtype!r}: the torch backend needs float32 or float64") from exc


def torch_gram(J, side="auto"):
    """The Gram operator of a torch operator (``side`` as in :func:`sketchtrace.gram`)."""
    check_choice(side, ("output", "input", "auto"), name="side")
    J = as_torch_operator(J)
    if side == "auto":
        m, n = J.shape
        side = "input" if n <= m else "output"
    return TorchGramOperator(J, side)


def as_torch_operator(obj, *, blocks=None, symmetric=None, psd=None) -> TorchOperator:
    """Wrap a torch tensor (dense/COO/CSR) or a NumPy/SciPy matrix as a torch operator.

    NumPy arrays and ``scipy.sparse`` matrices (and sketchtrace's Dense/Sparse
    operators around them) are converted once to CPU tensors of the same dtype.
    ``symmetric`` / ``psd`` declare structure (``None`` keeps the operator's own).
    """
    op = _convert(obj)
    if blocks is not None:
        op = op.with_blocks(blocks)
    if symmetric is not None or psd is not None:
        op = op.with_structure(symmetric=symmetric, psd=psd)
    return op


@functools.singledispatch
def to_torch_operator(obj) -> TorchOperator:
    """The torch backend's form of ``obj`` (one registration per operator or array type).

    Register a type with ``to_torch_operator.register(MyType)``; sketchtrace operators not
    registered run through their own products (which must take torch tensors).
    """
    if callable(obj):
        raise TypeError(
            "op: a bare callable has no declared shape or dtype; wrap it as "
            "sketchtrace.operators.TorchFunctionOperator(matvec, shape, dtype)"
        )
    raise TypeError(
        f"op: the torch backend (a torch.Generator as key) takes torch tensors, torch operators "
        f"(sketchtrace.operators.TorchFunctionOperator, TorchJacobianOperator, torch_gram) or NumPy/SciPy "
        f"matrices; got {type(obj).__name__} (JAX operators need a jax.random key)"
    )


@to_torch_operator.register(LinearOperator)
def _generic_to_torch(op):
    return _TorchView(op)


@to_torch_operator.register(FunctionOperator)
@to_torch_operator.register(JacobianOperator)
@to_torch_operator.register(ScipyOperator)
def _jax_only_to_torch(op):
    raise TypeError(
        f"op: the torch backend (a torch.Generator as key) takes torch tensors, torch operators "
        f"(sketchtrace.operators.TorchFunctionOperator, TorchJacobianOperator, torch_gram) or NumPy/SciPy "
        f"matrices; got {type(op).__name__} (JAX operators need a jax.random key)"
    )


@to_torch_operator.register(TorchOperator)
@to_torch_operator.register(TorchGramOperator)
def _torch_as_is(op):
    return op


@to_torch_operator.register(torch.Tensor)
def _from_tensor(A):
    return TorchTensorOperator(A)


@to_torch_operator.register(DenseOperator)
def _from_dense(op):
    return TorchTensorOperator(_tensor_from_numpy(op.A), blocks=op.blocks, symmetric=op.symmetric, psd=op.psd)


@to_torch_operator.register(SparseOperator)
def _from_sparse(op):
    return TorchTensorOperator(_csr_from_scipy(op.S), blocks=op.blocks, symmetric=op.symmetric, psd=op.psd)


@to_torch_operator.register(GramOperator)
def _from_gram(op):
    return TorchGramOperator(to_torch_operator(op.J), op.side)


@to_torch_operator.register(TransposedOperator)
def _from_transposed(op):
    base = to_torch_operator(op.base)
    return _TorchView(TransposedOperator(base, op.blocks), base.device)


def _register_host_types():
    import numpy as np
    import scipy.sparse as sp

    to_torch_operator.register(np.ndarray, lambda A: TorchTensorOperator(_tensor_from_numpy(A)))
    for cls in (sp.spmatrix, getattr(sp, "sparray", None)):
        if cls is not None:
            to_torch_operator.register(cls, lambda S: TorchTensorOperator(_csr_from_scipy(S)))


_register_host_types()


def _convert(obj) -> TorchOperator:
    return to_torch_operator(obj)


def _tensor_from_numpy(A):
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(np.asarray(A)))


def _csr_from_scipy(S):
    import numpy as np

    S = S.tocsr()
    with warnings.catch_warnings():  # torch's one-time notice; the invariants are checked (a corrupt CSR raises)
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(S.indptr.astype(np.int64)),
            torch.from_numpy(S.indices.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(S.data)),
            size=S.shape,
            check_invariants=True,
        )
