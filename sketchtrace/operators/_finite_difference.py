"""Finite-difference Jacobian-vector products and Gram quadratic forms.

``J v`` for ``J = df/dx`` can be approximated by evaluating ``f`` once more:

* ``scheme="forward"``: ``(f(x + h v) - f(x)) / h`` -- one extra evaluation when
  ``f(x)`` is already known (training computes the residuals anyway); error
  ``(h / 2) f''(x)[v, v] + O(h^2)`` per probe;
* ``scheme="central"``: ``(f(x + h v) - f(x - h v)) / (2 h)`` -- two evaluations;
  error ``(h^2 / 6) f'''(x)[v, v, v] + O(h^4)`` per probe.

:class:`FiniteDifferenceGram` turns this into an operator-like object for
``J^T J`` whose Hutchinson quadratic forms ``||(J v)_b||^2`` per output block
``b`` use finite differences instead of JVPs, and :func:`finite_difference_bias`
shows the bias against exact JVPs on the same probes.

A note on the bias of ``||J v||^2``: per probe the forward-difference error is
``O(h)`` and the central one ``O(h^2)``. Averaged over probes with a symmetric
distribution (Gaussian, Rademacher, sphere) the ``O(h)`` term of the forward
scheme, ``h <J v, f''[v, v]>``, is odd in ``v`` and has mean zero, so the bias of
the *trace estimate* is ``O(h^2)`` for both schemes (with different constants);
the per-probe (pathwise) error still shrinks like ``h`` and ``h^2``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from .._optional import jax, jnp, register_pytree_node, require_jax
from .._samplers import probe_rows
from ..validation import check_choice, check_float_dtype
from ._linear import LinearOperator, block_sums, blocks_of_tree, make_blocks

SCHEMES = ("forward", "central")


def default_step(dtype, scheme="forward") -> float:
    """Unit-scale finite-difference step that balances truncation and rounding.

    For a function with derivatives of order one, the forward-difference error is
    about ``h/2 + eps/h`` (truncation plus rounding), smallest at
    ``h = sqrt(eps)``; the central-difference error ``h^2/6 + eps/h`` is smallest
    near ``h = eps^(1/3)``. ``eps`` is the machine epsilon of ``dtype``:

    ========  ===========  ===========
    dtype     forward      central
    ========  ===========  ===========
    float64   1.5e-8       6.1e-6
    float32   3.5e-4       4.9e-3
    ========  ===========  ===========

    :func:`finite_difference_jvp` multiplies this by ``1 + rms(x)`` (the scale of
    the point) when ``h`` is not given.

    Parameters
    ----------
    dtype : floating dtype
    scheme : {"forward", "central"}
    """
    dt = check_float_dtype(dtype)
    check_choice(scheme, SCHEMES, name="scheme")
    eps = float(np.finfo(dt).eps)
    return eps**0.5 if scheme == "forward" else eps ** (1.0 / 3.0)


def _check_h(h):
    """Reject non-positive / non-finite steps when ``h`` is concrete."""
    if h is None:
        return None
    if isinstance(h, bool):
        raise TypeError(f"h must be a positive finite float; got {h!r}")
    if isinstance(h, numbers.Real):
        if not math.isfinite(float(h)) or float(h) <= 0.0:
            raise ValueError(f"h must be a positive finite step; got {h!r}")
        return float(h)
    try:
        arr = jnp.asarray(h)
    except TypeError as exc:
        raise TypeError(f"h must be a positive finite float; got {type(h).__name__}") from exc
    if arr.ndim != 0:
        raise ValueError(f"h must be a scalar step; got an array of shape {arr.shape}")
    if not isinstance(arr, jax.core.Tracer):
        val = float(arr)
        if not math.isfinite(val) or val <= 0.0:
            raise ValueError(f"h must be a positive finite step; got {val!r}")
    return arr


def _flat_dtype(tree, name):
    flat, _ = jax.flatten_util.ravel_pytree(tree)
    if flat.size == 0:
        raise ValueError(f"{name} must contain at least one floating-point entry")
    return check_float_dtype(flat.dtype, name=f"{name} dtype")


def _resolve_step(h, scheme, x_flat):
    h = _check_h(h)
    if h is not None:
        return h
    base = default_step(x_flat.dtype, scheme)
    rms = jnp.sqrt(jnp.mean(jnp.square(x_flat)))
    return base * (1.0 + jax.lax.stop_gradient(rms))


def finite_difference_jvp(f, x, v, *, h=None, scheme="forward", fx=None):
    """Approximate the Jacobian-vector product ``J v`` of ``f`` at ``x`` by finite differences.

    Parameters
    ----------
    f : callable
        ``f(x) -> y``, ``x`` and ``y`` pytrees of floating arrays (close over any
        extra arguments).
    x, v : pytree
        Point and direction, with the same structure, shapes and dtypes.
    h : float, optional
        Step along ``v`` (positive and finite). Default:
        ``default_step(dtype, scheme) * (1 + rms(x))``, which balances truncation
        and rounding for probes ``v`` with entries of order one (Gaussian or
        Rademacher probes).
    scheme : {"forward", "central"}
        ``"forward"``: ``(f(x + h v) - f(x)) / h``, one evaluation of ``f`` when
        ``fx`` is given, error ``O(h)``. ``"central"``:
        ``(f(x + h v) - f(x - h v)) / (2 h)``, two evaluations, error ``O(h^2)``.
    fx : pytree, optional
        ``f(x)`` if already computed (forward scheme only; ignored by ``"central"``).

    Returns
    -------
    pytree
        The approximation of ``J v``, with the structure of ``f(x)``.

    References
    ----------
    D. A. Knoll, D. E. Keyes, "Jacobian-free Newton-Krylov methods: a survey of
    approaches and applications", J. Comput. Phys. 193 (2004).
    doi:10.1016/j.jcp.2003.08.010
    M. Hirsch, F. Pichi, "Convergence and Sketching-Based Efficient Computation of
    Neural Tangent Kernel Weights in Physics-Based Loss", arXiv:2511.15530 (2025).
    """
    if not callable(f):
        raise TypeError(f"f must be callable; got {type(f).__name__}")
    check_choice(scheme, SCHEMES, name="scheme")
    _flat_dtype(x, "x")
    x_flat, unravel = jax.flatten_util.ravel_pytree(x)
    v_flat, _ = jax.flatten_util.ravel_pytree(v)
    if jax.tree.structure(x) != jax.tree.structure(v) or v_flat.shape != x_flat.shape:
        raise ValueError(
            "v must have the structure and shapes of x; got "
            f"{jax.tree.structure(v)} with {v_flat.shape[0]} entries for x with {x_flat.shape[0]} entries"
        )
    step = _resolve_step(h, scheme, x_flat)
    return _fd_flat(lambda xf: f(unravel(xf)), x_flat, v_flat.astype(x_flat.dtype), step, scheme, fx)


def _fd_flat(f_of_flat, x_flat, v_flat, step, scheme, fx):
    """Finite-difference ``J v`` with flat input, pytree output."""
    step = jnp.asarray(step, x_flat.dtype)
    plus = f_of_flat(x_flat + step * v_flat)
    if scheme == "forward":
        base = f_of_flat(x_flat) if fx is None else fx
        return jax.tree.map(lambda a, b: (a - b) / step.astype(jnp.result_type(a)), plus, base)
    minus = f_of_flat(x_flat - step * v_flat)
    return jax.tree.map(lambda a, b: (a - b) / (2 * step).astype(jnp.result_type(a)), plus, minus)


class FiniteDifferenceGram(LinearOperator):
    """``J^T J`` (input side) of ``J = df/dx`` at ``x`` with finite-difference quadratic forms.

    ``quad_forms(V)`` returns, for each probe row ``v`` of ``V`` (length
    ``n = size(x)``), the per-block ``||(J v)_b||^2`` where ``J v`` is computed by
    :func:`finite_difference_jvp` (one evaluation of ``f`` per probe with the
    forward scheme and a known ``f(x)``, two with the central scheme). Its
    expectation over isotropic probes is ``||J_b||_F^2 = tr(J_b^T J_b)`` up to the
    finite-difference bias (see :func:`finite_difference_bias`). Blocks are the
    top-level keys of a dict-valued ``f(x)``, as for :class:`JacobianOperator`.

    It plugs into every quadratic-form based estimator (:func:`hutchinson`,
    :func:`block_traces`, :func:`predictor_corrector`); products ``matmat`` are
    not available (use ``gram(JacobianOperator(f, x), side="input")`` for those).

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> y`` (pytrees of floating arrays).
    x : pytree
        The point.
    *args :
        Extra arguments held fixed.
    h : float, optional
        Step (default: see :func:`finite_difference_jvp`).
    scheme : {"forward", "central"}
    value : pytree, optional
        ``f(x, *args)`` if already computed (e.g. the residuals of a training
        step); saves one evaluation with the forward scheme.
    blocks : mapping, optional
        Named partition of the flattened output (overrides dict keys).

    Attributes
    ----------
    value : pytree or None
        ``f(x, *args)`` (computed here for the forward scheme if not given).
    step : scalar
        The step ``h`` actually used.

    References
    ----------
    M. Hirsch, F. Pichi, arXiv:2511.15530 (2025) (finite-difference sketches of NTK
    block traces). D. Girard (1989), doi:10.1007/BF01395775; M. F. Hutchinson (1990),
    doi:10.1080/03610919008812866.
    """

    symmetric = True
    psd = True
    products = frozenset({"quad_forms"})

    def __init__(self, f, x, *args, h=None, scheme="forward", value=None, blocks=None):
        require_jax("FiniteDifferenceGram")
        if not callable(f):
            raise TypeError(f"f must be callable; got {type(f).__name__}")
        check_choice(scheme, SCHEMES, name="scheme")
        _flat_dtype(x, "x")
        x_flat, unravel = jax.flatten_util.ravel_pytree(x)
        self.f, self.args, self.scheme = f, args, scheme
        self.x_flat, self.unravel_input = x_flat, unravel
        if value is None and scheme == "forward":
            value = self._f_of_flat(x_flat)
        self.value = value
        tree = value if value is not None else jax.eval_shape(self._f_of_flat, x_flat)
        y_leaves = jax.tree.leaves(tree)
        for leaf in y_leaves:
            check_float_dtype(leaf.dtype, name="f(x) dtype")
        out_size = int(sum(int(np.size(leaf)) for leaf in y_leaves))
        self.step = _resolve_step(h, scheme, x_flat)
        self.dtype = np.dtype(x_flat.dtype)
        self.out_blocks = make_blocks(blocks, out_size) if blocks is not None else blocks_of_tree(tree)

    def _f_of_flat(self, xf):
        return self.f(self.unravel_input(xf), *self.args)

    @property
    def shape(self):
        n = int(self.x_flat.shape[0])
        return (n, n)

    # the blocks of J^T J as a Gram operator are J's output blocks
    @property
    def blocks(self):
        return self.out_blocks

    def with_blocks(self, blocks):
        return FiniteDifferenceGram(
            self.f,
            self.unravel_input(self.x_flat),
            *self.args,
            h=self.step,
            scheme=self.scheme,
            value=self.value,
            blocks=blocks,
        )

    def with_structure(self, *, symmetric=None, psd=None):
        if symmetric is False or psd is False:
            raise ValueError("a finite-difference Gram operator is symmetric positive semidefinite by construction")
        return self

    def jvp_rows(self, V):
        """Finite-difference ``J v`` (flattened output) for each row ``v`` of ``V``: ``(k, m)``."""
        V = jnp.asarray(V).astype(self.x_flat.dtype)

        def one(v):
            jv = _fd_flat(self._f_of_flat, self.x_flat, v, self.step, self.scheme, self.value)
            return jax.flatten_util.ravel_pytree(jv)[0]

        return jax.vmap(one)(V)

    def quad_forms(self, V):
        JV = self.jvp_rows(V)
        return block_sums(JV * JV, self.out_blocks)

    def matmat(self, V):
        raise NotImplementedError(
            "FiniteDifferenceGram only provides quadratic forms ||J v||^2 (quad_forms); for products "
            "use sketchtrace.gram(sketchtrace.JacobianOperator(f, x), side='input')"
        )


def _fd_flatten(op):
    return (op.x_flat, op.args, op.value, op.step), (op.f, op.unravel_input, op.scheme, op.dtype, op.out_blocks)


def _fd_unflatten(aux, children):
    op = object.__new__(FiniteDifferenceGram)
    op.x_flat, op.args, op.value, op.step = children
    op.f, op.unravel_input, op.scheme, op.dtype, op.out_blocks = aux
    return op


register_pytree_node(FiniteDifferenceGram, _fd_flatten, _fd_unflatten)


class FiniteDifferenceBias(NamedTuple):
    """What :func:`finite_difference_bias` measured (block axis last).

    Attributes
    ----------
    h : (H,) steps tried.
    fd : (H, k, B) finite-difference quadratic forms per step, probe and block.
    exact : (k, B) JVP quadratic forms on the same probes.
    bias : (H, B) mean over probes of ``fd - exact`` (the bias of the trace estimate
        on these probes; relative: divide by ``exact.mean(0)``).
    relative_bias : (H, B) ``bias / exact.mean(0)``.
    pathwise : (H, B) mean over probes of ``|fd - exact|`` divided by
        ``exact.mean(0)`` (per-probe error: ``O(h)`` forward, ``O(h^2)`` central).
    """

    h: object
    fd: object
    exact: object
    bias: object
    relative_bias: object
    pathwise: object


def finite_difference_bias(key, f, x, *args, h, scheme="forward", num_probes=16, sampler="gaussian"):
    """Compare finite-difference and exact (JVP) quadratic forms ``||(J v)_b||^2`` on the same probes.

    Parameters
    ----------
    key : jax.random key
        Draws ``num_probes`` probes (shared by every step and by the exact JVPs).
    f, x, *args :
        As in :class:`FiniteDifferenceGram`.
    h : sequence of float
        Steps to try (each positive and finite).
    scheme : {"forward", "central"}
    num_probes : int
    sampler : str or callable

    Returns
    -------
    FiniteDifferenceBias
        Fit ``log(pathwise)`` against ``log(h)`` to see the order of the scheme;
        ``relative_bias`` is what the trace estimate inherits.
    """
    hs = [(_check_h(float(s))) for s in np.atleast_1d(np.asarray(h, dtype=float))]
    from ._linear import JacobianOperator, gram

    J = JacobianOperator(f, x, *args, mode="fwd")
    exact_op = gram(J, side="input")
    dt = J.jax_dtype
    V = probe_rows(jax.random.split(key, int(num_probes)), J.shape[1], dt, sampler)
    exact = exact_op.quad_forms(V)
    fds = []
    for s in hs:
        op = FiniteDifferenceGram(f, x, *args, h=s, scheme=scheme, value=J.unravel_output(J.value_flat))
        fds.append(op.quad_forms(V))
    fd = jnp.stack(fds)
    scale = exact.mean(axis=0)
    bias = (fd - exact).mean(axis=1)
    pathwise = jnp.abs(fd - exact).mean(axis=1) / scale
    return FiniteDifferenceBias(jnp.asarray(hs), fd, exact, bias, bias / scale, pathwise)
