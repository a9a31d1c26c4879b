"""Optimizers of a modern PINN recipe: jaxpi's warm-up + exponential decay, and SOAP (as optax transformations).

:func:`warmup_exponential_decay` is optax's ``warmup_exponential_decay_schedule`` with
jaxpi's defaults; :func:`adam` is ``optax.adam`` on it. :func:`soap` is SOAP (Vyas et
al. 2024): Adam run in the eigenbasis of Shampoo's preconditioner, an
``optax.GradientTransformation`` written here (no maintained JAX implementation is on
PyPI). For a parameter ``G`` with ``m x n`` gradient (every dimension ``<=
max_precond_dim`` is rotated; ``d``-dimensional arrays are rotated along each dimension,
1-D arrays and scalars fall back to Adam unless ``precondition_1d``):

1. first call: ``L = (1 - b_s) G G^T``, ``R = (1 - b_s) G^T G``; ``Q_L``, ``Q_R`` their
   eigenvectors (``eigh``, eigenvalues descending); **no parameter change** (as in the
   reference implementation);
2. every later call ``t = 1, 2, ...``: ``G' = Q_L^T G Q_R``; ``m = b1 m + (1 - b1) G'``,
   ``v = b2 v + (1 - b2) G'^2`` (``m``, ``v`` live in the rotated basis); update
   ``-lr sqrt(1 - b2^t) / (1 - b1^t) Q_L (m / (sqrt(v) + eps)) Q_R^T`` (then decoupled
   weight decay ``-lr wd (p + update)``);
3. then ``L <- b_s L + (1 - b_s) G G^T`` (same for ``R``) and, when ``t`` is a multiple
   of ``precondition_frequency``, one power-iteration step per side: sort the columns of
   ``Q`` by the estimated eigenvalues ``diag(Q^T L Q)`` (descending, permuting ``v``'s
   axis alike), ``Q <- qr(L Q).Q``; ``m`` is rotated from the old basis into the new one.

``b_s = shampoo_beta`` defaults to ``b2``. This follows the authors' PyTorch
implementation (``nikhilvyas/SOAP``) step for step (its ``merge_dims`` and
``data_format`` options are left out).

References
----------
N. Vyas, D. Morwani, R. Zhao, M. Kwun, I. Shapira, D. Brandfonbrener, L. Janson,
S. Kakade, "SOAP: improving and stabilizing Shampoo using Adam", ICLR 2025,
arXiv:2409.11321. S. Wang, S. Sankaran, H. Wang, P. Perdikaris, "An expert's guide to
training physics-informed neural networks", arXiv:2308.08468 (2023) (jaxpi's schedule).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sketchtrace.validation import check_bool, check_int, check_real

__all__ = ["warmup_exponential_decay", "adam", "soap", "SoapState"]


def warmup_exponential_decay(
    learning_rate=1e-3, *, warmup_steps=5000, decay_steps=2000, decay_rate=0.9, init_value=0.0, staircase=False
):
    """Linear warm-up from ``init_value`` to ``learning_rate`` over ``warmup_steps``, then ``* decay_rate`` per ``decay_steps``.

    jaxpi's defaults (``optax.warmup_exponential_decay_schedule`` with ``init_value=0``,
    ``peak 1e-3``, 5000 warm-up steps, ``0.9`` every 2000 steps, smooth decay). Pass
    ``warmup_steps=0`` for a plain exponential decay.
    """
    import optax

    lr = check_real(learning_rate, name="learning_rate", low=0.0, low_open=True)
    warmup_steps = check_int(warmup_steps, name="warmup_steps", minimum=0)
    decay_steps = check_int(decay_steps, name="decay_steps", minimum=1)
    decay_rate = check_real(decay_rate, name="decay_rate", low=0.0, low_open=True)
    init_value = check_real(init_value, name="init_value", low=0.0)
    return optax.warmup_exponential_decay_schedule(
        init_value=init_value if warmup_steps else lr,
        peak_value=lr,
        warmup_steps=warmup_steps,
        transition_steps=decay_steps,
        decay_rate=decay_rate,
        staircase=check_bool(staircase, name="staircase"),
    )


def adam(learning_rate=1e-3, *, warmup_steps=5000, decay_steps=2000, decay_rate=0.9, b1=0.9, b2=0.999, eps=1e-8):
    """``optax.adam`` on :func:`warmup_exponential_decay` (jaxpi's default optimizer)."""
    import optax

    schedule = warmup_exponential_decay(
        learning_rate, warmup_steps=warmup_steps, decay_steps=decay_steps, decay_rate=decay_rate
    )
    return optax.adam(schedule, b1=b1, b2=b2, eps=eps)


class SoapState(NamedTuple):
    """SOAP's state: call count and, per parameter leaf, moments and preconditioner factors.

    ``mu``/``nu``: Adam moments in the rotated basis; ``GG[i][d]``/``Q[i][d]``: the
    Kronecker factor of leaf ``i`` along dimension ``d`` and its eigenbasis (``None``
    for a dimension that is not rotated).
    """

    count: jax.Array
    mu: list
    nu: list
    GG: list
    Q: list


def _rotated_dims(shape, max_dim, precondition_1d):
    if len(shape) == 0 or (len(shape) == 1 and not precondition_1d):
        return (False,) * len(shape)
    return tuple(s <= max_dim for s in shape)


def _project(x, Qs):
    """``x`` in the eigenbasis: contract each rotated dimension ``d`` with ``Q_d`` (``Q_L^T X Q_R`` in 2-D)."""
    for Q in Qs:
        x = jnp.moveaxis(x, 0, -1) if Q is None else jnp.tensordot(x, Q, axes=[[0], [0]])
    return x


def _project_back(x, Qs):
    """The inverse of :func:`_project` (``Q_L X Q_R^T`` in 2-D)."""
    for Q in Qs:
        x = jnp.moveaxis(x, 0, -1) if Q is None else jnp.tensordot(x, Q, axes=[[0], [1]])
    return x


def _outer(g, d):
    other = [i for i in range(g.ndim) if i != d]
    return jnp.tensordot(g, g, axes=[other, other])


def _eigh_desc(m):
    _, vecs = jnp.linalg.eigh(m)
    return vecs[:, ::-1]


def _refresh(GG, Qs, nu, mu):
    """One QR power-iteration step per rotated dimension, columns sorted by estimated eigenvalue.

    ``nu`` follows the sort (its axis is permuted alike); ``mu`` is rotated from the old basis
    into the new one.
    """
    out = []
    for d, (m, Q) in enumerate(zip(GG, Qs)):
        if Q is None:
            out.append(None)
            continue
        order = jnp.argsort(-jnp.diagonal(Q.T @ m @ Q))
        nu = jnp.take(nu, order, axis=d)
        out.append(jnp.linalg.qr(m @ Q[:, order])[0])
    return tuple(out), nu, _project(_project_back(mu, Qs), out)


class _Hyper(NamedTuple):
    lr: Any
    b1: float
    b2: float
    shampoo_beta: float
    eps: float
    weight_decay: float
    frequency: int


def _leaf_first(g, GG, h):
    GG = tuple(None if m is None else (1 - h.shampoo_beta) * _outer(g, d) for d, m in enumerate(GG))
    return tuple(None if m is None else _eigh_desc(m) for m in GG), GG


def _leaf_step(g, p, mu, nu, GG, Qs, count, lr, h):
    t = jnp.maximum(count, 1).astype(g.dtype)  # Adam step of the non-initial calls: 1, 2, ...
    gp = _project(g, Qs)
    mu = h.b1 * mu + (1 - h.b1) * gp
    nu = h.b2 * nu + (1 - h.b2) * jnp.square(gp)
    step_size = lr * jnp.sqrt(1 - h.b2**t) / (1 - h.b1**t)
    update = -step_size * _project_back(mu / (jnp.sqrt(nu) + h.eps), Qs)
    if h.weight_decay:
        update = update - lr * h.weight_decay * (p + update)
    update = update.astype(g.dtype)
    GG = tuple(
        None if m is None else h.shampoo_beta * m + (1 - h.shampoo_beta) * _outer(g, d) for d, m in enumerate(GG)
    )
    if any(Q is not None for Q in Qs):
        keep = lambda G, Q, v, m: (Q, v, m)  # noqa: E731
        Qs, nu, mu = jax.lax.cond(count % h.frequency == 0, _refresh, keep, GG, Qs, nu, mu)
    return update, mu, nu, GG, Qs


def _soap_update(grads, state, params, h):
    leaves, treedef = jax.tree.flatten(grads)
    if h.weight_decay and params is None:
        raise ValueError("soap: weight_decay > 0 needs params in update(grads, state, params)")
    p_leaves = treedef.flatten_up_to(params) if params is not None else [None] * len(leaves)
    count = state.count
    lr = h.lr(count) if callable(h.lr) else h.lr

    def first(_):
        out = [_leaf_first(g, GG, h) for g, GG in zip(leaves, state.GG)]
        zeros = [jnp.zeros_like(g) for g in leaves]
        return zeros, list(state.mu), list(state.nu), [o[1] for o in out], [o[0] for o in out]

    def later(_):
        res = [
            _leaf_step(g, p, mu, nu, GG, Q, count, lr, h)
            for g, p, mu, nu, GG, Q in zip(leaves, p_leaves, state.mu, state.nu, state.GG, state.Q)
        ]
        return tuple([r[i] for r in res] for i in range(5))

    updates, mu, nu, GG, Q = jax.lax.cond(count == 0, first, later, None)
    return treedef.unflatten(list(updates)), SoapState(count + 1, list(mu), list(nu), list(GG), list(Q))


def soap(
    learning_rate=3e-3,
    b1=0.95,
    b2=0.95,
    eps=1e-8,
    weight_decay=0.0,
    precondition_frequency=10,
    max_precond_dim=10000,
    *,
    shampoo_beta=None,
    precondition_1d=False,
):
    """SOAP (Vyas et al. 2024) as an ``optax.GradientTransformation``: Adam in Shampoo's eigenbasis.

    Parameters
    ----------
    learning_rate : float or callable
        A constant or an optax schedule (evaluated at the call count, first call 0).
    b1, b2, eps : float
        Adam's moment decays and ``eps`` (added to ``sqrt(v)``, as in the reference code).
    weight_decay : float
        Decoupled weight decay ``-lr wd (p + update)``; needs ``params`` in ``update``.
    precondition_frequency : int
        Refresh the eigenbases every this many steps (one QR power-iteration step).
    max_precond_dim : int
        Dimensions larger than this are not rotated (Adam along them).
    shampoo_beta : float, optional
        Decay of the Kronecker factors ``L``, ``R`` (default ``b2``).
    precondition_1d : bool
        Rotate 1-D parameters too (a full ``d x d`` factor); default Adam for them.

    Notes
    -----
    The first call initialises the eigenbases and returns a zero update; memory per
    ``m x n`` parameter: ``m^2 + n^2`` floats for each of the factors and the bases.
    """
    if not callable(learning_rate):
        learning_rate = check_real(learning_rate, name="learning_rate", low=0.0, low_open=True)
    b1 = check_real(b1, name="b1", low=0.0, high=1.0, high_open=True)
    b2 = check_real(b2, name="b2", low=0.0, high=1.0, high_open=True)
    shampoo_beta = b2 if shampoo_beta is None else check_real(shampoo_beta, name="shampoo_beta", low=0.0, high=1.0)
    h = _Hyper(
        learning_rate,
        b1,
        b2,
        shampoo_beta,
        check_real(eps, name="eps", low=0.0),
        check_real(weight_decay, name="weight_decay", low=0.0),
        check_int(precondition_frequency, name="precondition_frequency", minimum=1),
    )
    max_dim = check_int(max_precond_dim, name="max_precond_dim", minimum=1)
    precondition_1d = check_bool(precondition_1d, name="precondition_1d")

    def init(params):
        leaves = jax.tree.leaves(params)
        GG, Q = [], []
        for x in leaves:
            rot = _rotated_dims(x.shape, max_dim, precondition_1d)
            GG.append(tuple(jnp.zeros((s, s), x.dtype) if r else None for s, r in zip(x.shape, rot)))
            Q.append(tuple(jnp.eye(s, dtype=x.dtype) if r else None for s, r in zip(x.shape, rot)))
        zeros = [jnp.zeros_like(x) for x in leaves]
        return SoapState(jnp.zeros((), jnp.int32), zeros, [jnp.zeros_like(x) for x in leaves], GG, Q)

    def update(grads, state, params=None):
        return _soap_update(grads, state, params, h)

    import optax

    return optax.GradientTransformation(init, update)
