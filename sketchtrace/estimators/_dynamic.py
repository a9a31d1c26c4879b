"""Dynamic trace estimation over a slowly changing sequence of operators.

Two optax-style estimators (``init`` / ``update`` over an explicit state pytree):

* :func:`predictor_corrector` (DeltaShift): carry the estimate forward and
  correct it with Hutchinson quadratic forms of the SAME probe on consecutive
  operators,

      T_{t+1} = (1 - gamma) (T_t - q_v(A_t)) + q_v(A_{t+1}),

  unbiased at every step when the first estimate is; ``gamma = 1`` is fresh
  Hutchinson at every step.
* :func:`moving_average`: a fresh probe each step,
  ``T_{t+1} = (1 - beta) T_t + beta q_v(A_{t+1})`` (biased toward stale values).

:func:`optimal_gamma` is the closed-form damping that minimises the stationary
variance of the predictor-corrector given the size of the change;
``predictor_corrector(gamma="auto")`` applies it online from observed quadratic
forms.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple

import numpy as np

from .._estimate import Estimate
from .._optional import xnp as jnp  # jax.numpy; numpy without JAX (JAX is an extra)
from .._samplers import SAMPLERS
from ..backends import backend_for_key, namespace_of
from ..operators import LinearOperator
from ..validation import check_choice, check_chunk_size, check_num_matvecs, check_probability, check_square
from ._compiled import BackendCompiled

_SEM_METHODS = ("auto", "replicas", "recursion")
AUTO_GAMMA_MIN = 1e-4
AUTO_GAMMA_WARMUP = 5  # observations before gamma='auto' leaves its start value


class DynamicState(NamedTuple):
    """State of a dynamic trace estimator (a pytree of arrays only).

    Attributes
    ----------
    estimate : (R, B) array
        Running estimate of each of the ``R = num_probes`` independent replicas
        for each of the ``B`` blocks (``B = 1`` for an operator without blocks).
        The reported value is the mean over replicas.
    variance : (B,) array
        Tracked variance of the reported value (the variance recursion).
    last : (2, R, B) array
        The previous update's quadratic forms ``q(op_prev)`` and ``q(op_next)``
        (used by the variance recursion and ``gamma="auto"``).
    moments : (3, B) array
        Exponential averages of ``Var q(A)``, ``Cov(q(A_t), q(A_{t+1}))`` and
        ``Var q(A_{t+1} - A_t)`` (``gamma="auto"``).
    gamma : (B,) array
        The damping used for the next update.
    step : int32 scalar
        Number of updates so far.
    matvecs : int32 scalar
        Matvecs spent so far (init included).

    signature : (0, kind, n, B, R, sampler) int32 array, holding no data
        What made the state, recorded in its (static) shape: the estimator kind
        (1 predictor-corrector, 2 moving average), the probe dimension ``n``, the
        number of blocks, ``num_probes`` and the sampler (its index in the built-in
        samplers, 0 for a callable). Shapes are static, so ``update`` refuses a state
        of another configuration or operator size, naming the field, eagerly and at
        ``jit`` trace time; the empty array survives ``np.savez``, checkpoints and
        ``jax.eval_shape``. ``None`` (a state from before it existed) is not checked.

    The state is data only: the configuration (kind, gamma, sampler, ...) lives in
    the estimator object that made it, as with optax; ``signature`` records it.
    A state of the wrong shape (another ``num_probes`` or number of blocks) is refused.
    """

    estimate: Any
    variance: Any
    last: Any
    moments: Any
    gamma: Any
    step: Any
    matvecs: Any
    signature: Any = None


# ----------------------------------------------------------------------------- helpers


def optimal_gamma(var_change, cov_consecutive):
    """Damping ``gamma`` that minimises the stationary variance of the predictor-corrector.

    With one probe per step the correction ``q_v(A_{t+1}) - (1 - gamma) q_v(A_t)``
    has variance ``gamma^2 a + 2 gamma c + d``, where ``a = Var q(A)``,
    ``c = Cov(q(A), q(A_{t+1} - A_t))`` and ``d = Var q(A_{t+1} - A_t)``; for
    Gaussian probes and symmetric matrices ``Var q(M) = 2 ||M||_F^2``. If these
    stay roughly constant the estimate's variance settles at
    ``(gamma^2 a + 2 gamma c + d) / (gamma (2 - gamma))``, which is smallest at

        gamma* = (-d + sqrt(d^2 + 4 s d)) / (2 s),   s = a + c = Cov(q(A_t), q(A_{t+1})).

    For a small relative change ``r = d / s`` this is ``gamma* ~ sqrt(r)``, i.e. the
    relative Frobenius size of one step's change ``||A_{t+1} - A_t||_F / ||A_t||_F``;
    ``gamma* -> 1`` (fresh Hutchinson) as the change grows. The stationary
    variance at ``gamma*`` is about ``sqrt(r)`` times Hutchinson's with the same
    probes per step, i.e. DeltaShift needs about ``2 sqrt(r)`` of Hutchinson's
    matvecs for equal accuracy.

    Parameters
    ----------
    var_change : float or array
        ``d = Var q(A_{t+1} - A_t)`` (``2 ||A_{t+1} - A_t||_F^2`` for Gaussian probes).
    cov_consecutive : float or array
        ``s = Cov(q(A_t), q(A_{t+1}))`` (``2 <A_t, A_{t+1}>_F`` for Gaussian probes).

    Returns
    -------
    gamma : array in ``[1e-4, 1]``
        ``1`` when ``s <= 0`` (consecutive operators uncorrelated: nothing to carry).

    References
    ----------
    P. Dharangutte, C. Musco, "Dynamic Trace Estimation", NeurIPS 2021,
    arXiv:2110.13752 (DeltaShift; they also describe an adaptive, parameter-free
    choice of gamma from variance estimates -- this closed form is our own
    derivation of the same idea).
    """
    return _optimal_gamma(jnp, jnp.asarray(var_change), jnp.asarray(cov_consecutive))


def _optimal_gamma(xp, d, s):
    d = xp.maximum(d, 0.0)
    safe_s = xp.where(s > 0, s, 1.0)
    g = (-d + xp.sqrt(d * d + 4.0 * safe_s * d)) / (2.0 * safe_s)
    g = xp.where(s > 0, g, 1.0)
    return xp.clip(g, AUTO_GAMMA_MIN, 1.0)


def predictor_corrector_step(estimate, x, y, gamma):
    """One predictor-corrector (DeltaShift) step on given quadratic forms: ``(new_estimate, correction)``.

    The recursion of :func:`predictor_corrector` and of the NTK weightings' ``"pc"``
    (``pinn_adapters.ntk_weighting`` and ``pinn_adapters.torch.ntk_weighting`` call it):
    with ``x = v^T A_t v`` and ``y = v^T A_{t+1} v`` quadratic forms of the SAME probe
    ``v`` on consecutive operators,

        new_estimate = (1 - gamma) (estimate - x) + y,    correction = y - (1 - gamma) x.

    The prediction ``(1 - gamma) estimate`` carries the previous estimate forward and the
    correction adds the probe's view of the change; ``new_estimate`` is unbiased for
    ``tr(A_{t+1})`` when ``estimate`` is unbiased for ``tr(A_t)`` and independent of
    ``v``, and ``Var new_estimate = (1 - gamma)^2 Var estimate + Var correction`` (the
    recursion behind the estimator's standard error). ``gamma = 1`` gives ``y``, a fresh
    Hutchinson sample (``x`` is then unused: pass ``0``).

    Plain arithmetic on array-likes: it runs on JAX arrays (inside ``jit``), NumPy arrays
    and torch tensors alike, elementwise with broadcasting.

    Parameters
    ----------
    estimate : array
        Current estimate per replica and block, e.g. ``(R, B)``.
    x, y : array
        Quadratic forms of the probes on the previous and the next operator (shape of
        ``estimate``); ``x`` may be ``0`` when ``gamma == 1``.
    gamma : float or array
        Damping in ``(0, 1]`` (an array broadcasts, e.g. one value per block ``(B,)``).

    Returns
    -------
    (new_estimate, correction) : tuple of arrays

    Examples
    --------
    >>> import numpy as np
    >>> new, c = predictor_corrector_step(np.array([10.0]), np.array([9.0]), np.array([11.0]), 0.5)
    >>> float(new[0]), float(c[0])
    (11.5, 6.5)
    """
    keep = 1.0 - gamma
    return keep * (estimate - x) + y, y - keep * x


def _check_gamma(gamma, name="gamma", allow_auto=True):
    if allow_auto and isinstance(gamma, str):
        if gamma != "auto":
            raise ValueError(f"{name} must be a float in (0, 1] or 'auto'; got {gamma!r}")
        return gamma
    label = f"{name} (a number or 'auto')" if allow_auto else name
    if hasattr(gamma, "shape") and not isinstance(gamma, np.generic):  # an array may be traced: not static
        raise TypeError(f"{label} must be a Python or NumPy number (static configuration); got {type(gamma).__name__}")
    return check_probability(gamma, name=label, low_open=True)


def _dtype(d):
    """A NumPy dtype, or a torch dtype as it is (the torch backend's probes are torch)."""
    return d if type(d).__module__ == "torch" else np.dtype(d)


class _OpInfo(NamedTuple):
    op: Any
    n: int
    dtype: Any
    blocks: Any
    names: tuple | None
    B: int


class _DuckQuadForms(LinearOperator):
    """Deprecated: an object with only ``probe_dim``, ``blocks``, ``jax_dtype`` and ``quad_forms``."""

    products = frozenset({"quad_forms"})

    def __init__(self, obj):
        n = int(obj.probe_dim)
        self.obj, self.shape, self.blocks = obj, (n, n), obj.blocks
        dt = getattr(obj, "jax_dtype", None)
        self.dtype = np.dtype(obj.dtype if dt is None else dt)

    def quad_forms(self, V):
        return self.obj.quad_forms(V)


def _prepare(bk, op, name):
    """Prepare ``op`` (anything :func:`as_operator` takes) for the key's backend."""
    if op is None:
        raise TypeError(f"{name} must be an operator; got None")
    if not isinstance(op, LinearOperator) and hasattr(op, "quad_forms") and hasattr(op, "probe_dim"):
        warnings.warn(
            f"{name}: duck-typed quad-form objects are deprecated; subclass sketchtrace.LinearOperator "
            "with products = frozenset({'quad_forms'}) (see docs/architecture.md)",
            DeprecationWarning,
            stacklevel=4,
        )
        op = _DuckQuadForms(op)
    try:
        op = bk.prepare(op)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from exc
    check_square(op, name=name)
    names = op.block_names
    B = 1 if names is None else len(names)
    return _OpInfo(op, int(op.probe_dim), _dtype(bk.probe_dtype(op)), op.blocks, names, B)


def _check_pair(a: _OpInfo, b: _OpInfo):
    if a.n != b.n:
        raise ValueError(f"op_prev and op_next must have the same shape; got probe dimensions {a.n} and {b.n}")
    if getattr(a.op, "shape", None) is not None and getattr(b.op, "shape", None) is not None:
        if tuple(a.op.shape) != tuple(b.op.shape):
            raise ValueError(
                f"op_prev and op_next must have the same shape; got {tuple(a.op.shape)} and {tuple(b.op.shape)}"
            )
    if a.names != b.names or (a.blocks is not None and b.blocks is not None and tuple(a.blocks) != tuple(b.blocks)):
        raise ValueError(f"op_prev and op_next must have the same blocks; got {a.blocks} and {b.blocks}")
    if a.dtype != b.dtype:
        raise ValueError(f"op_prev and op_next must have the same dtype; got {a.dtype} and {b.dtype}")


# ----------------------------------------------------------------------------- estimator


@dataclasses.dataclass(frozen=True)
class DynamicTraceEstimator:
    """An optax-style dynamic trace estimator: ``init``, ``update`` and ``estimate``.

    Build it with :func:`predictor_corrector` or :func:`moving_average`; the
    fields are its static configuration.
    """

    kind: str
    num_probes: int
    gamma: Any  # float, or "auto" (predictor-corrector); beta for the moving average
    sampler: Any
    init_matvecs: int | None
    sem: str
    moment_decay: float
    chunk_size: int | None

    # -- configuration helpers
    def _init_probes_per_replica(self):
        if self.init_matvecs is not None:
            return max(1, self.init_matvecs // self.num_probes)
        g = 0.1 if self.gamma == "auto" else self.gamma
        return max(1, math.ceil((2.0 - g) / g - 1e-9))

    def _use_replicas(self):
        if self.sem == "replicas":
            return True
        # "auto": the recursion. Measured (benchmarks/sem_coverage.py), the replicas' spread with few
        # replicas undercovers (71 % at R = 2, 90 % at R = 8) where the recursion covers 92-94 %.
        return False

    def _signature(self, info: _OpInfo) -> tuple:
        """The shape of ``DynamicState.signature`` for this estimator and operator."""
        kind = {"predictor_corrector": 1, "moving_average": 2}[self.kind]
        sampler = 0 if callable(self.sampler) else 1 + sorted(SAMPLERS).index(self.sampler)
        return (0, kind, int(info.n), int(info.B), int(self.num_probes), sampler)

    def _check_state(self, state, info: _OpInfo):
        if not isinstance(state, DynamicState):
            raise TypeError(
                f"state must be the DynamicState returned by init (or a previous update); got {type(state).__name__}"
            )
        R, B = self.num_probes, info.B
        est = state.estimate
        if getattr(est, "ndim", None) != 2 or tuple(est.shape) != (R, B):
            raise ValueError(
                f"state does not match this estimator: its estimate has shape {getattr(est, 'shape', None)}, "
                f"expected (num_probes, num_blocks) = ({R}, {B}). Was it made by a different configuration "
                "(or is it a batch of states: vmap the update over it)?"
            )
        if _dtype(est.dtype) != info.dtype:
            raise ValueError(f"state dtype {est.dtype} does not match the operator dtype {info.dtype}")
        if state.signature is not None:
            got, want = tuple(state.signature.shape)[-6:], self._signature(info)
            fields = (
                "",
                "kind (1 predictor_corrector, 2 moving_average)",
                "probe dimension n",
                "num_blocks",
                "num_probes",
                f"sampler (index in {sorted(SAMPLERS)}, 0 a callable)",
            )
            for field, a, b in zip(fields, got, want):
                if a != b:
                    raise ValueError(
                        f"state does not match this estimator and operator: it was made for {field} = {a}; "
                        f"this call has {field} = {b}. Use the state from this estimator's init on an operator "
                        "of the same size and blocks"
                    )

    # -- public API
    def init(self, key, op0) -> DynamicState:
        """An unbiased first estimate of ``tr(op0)`` (per block) and the initial state.

        Each of the ``num_probes`` replicas starts from its own Hutchinson estimate
        with ``init_matvecs // num_probes`` probes (all replicas share the exact
        trace when ``init_matvecs`` reaches the probe dimension).
        """
        bk = backend_for_key(key)
        xp = bk.xp
        info = _prepare(bk, op0, "op0")
        R, B, n, dt = self.num_probes, info.B, info.n, info.dtype
        m0 = self._init_probes_per_replica()
        if m0 * R >= n:
            Q = bk.exact_quad_forms(info.op, self.chunk_size)
            bk.check_finite("op0", Q)
            T0 = xp.astype(xp.broadcast_to(Q.sum(axis=0), (R, B)), dt)
            var0 = xp.zeros((B,), dt)
            spent = n
        else:
            Q = bk.quad_forms(key, info.op, m0 * R, self.sampler, self.chunk_size)
            bk.check_finite("op0", Q)
            Q = xp.astype(Q, dt)
            T0 = Q.reshape(R, m0, B).mean(axis=1)
            if m0 * R >= 2:
                var0 = xp.var(Q, axis=0, correction=1) / (m0 * R)
            else:  # one sample: E[q^2] = tr^2 + Var q >= Var q (conservative)
                var0 = Q[0] ** 2
            spent = m0 * R
        if self.gamma == "auto":
            # until the data say otherwise, keep the memory that matches the first estimate:
            # Hutchinson with m probes has the stationary variance of gamma = 2 / (m + 1)
            g0 = 2.0 / (min(m0, n) + 1.0) if m0 * R < n else 2.0 / (n + 1.0)
        else:
            g0 = self.gamma
        return DynamicState(
            estimate=T0,
            variance=var0,
            last=xp.zeros((2, R, B), dt),
            moments=xp.zeros((3, B), dt),
            gamma=xp.full((B,), g0, dt),
            step=xp.zeros((), xp.int32),
            matvecs=xp.asarray(spent, xp.int32),
            signature=xp.zeros(self._signature(info), xp.int32),
        )

    def update(self, key, state, op_prev, op_next):
        """One step: ``(Estimate or dict of Estimate, new state)``.

        Predictor-corrector: each of the ``num_probes`` fresh probes is applied to
        ``op_prev`` and ``op_next`` (``2 * num_probes`` matvecs, reported in
        ``num_matvecs``; ``num_probes`` when ``gamma == 1``, which never needs
        ``op_prev``). Moving average: ``op_prev`` is ignored (may be ``None``)
        and ``num_probes`` matvecs are spent on ``op_next``.

        For an operator with blocks the result is a dict ``name -> Estimate``
        (per-block traces from shared probes), otherwise a single ``Estimate``.
        """
        bk = backend_for_key(key)
        xp = bk.xp
        nxt = _prepare(bk, op_next, "op_next")
        needs_prev = self.kind == "predictor_corrector" and self.gamma != 1.0
        prv = None
        if needs_prev:
            prv = _prepare(bk, op_prev, "op_prev")
            _check_pair(prv, nxt)
        self._check_state(state, nxt)
        R, n, dt = self.num_probes, nxt.n, nxt.dtype
        V = bk.probes(key, R, n, dt, self.sampler)
        y = xp.astype(xp.asarray(bk.quad_forms_of(nxt.op, V)), dt)
        bk.check_finite("op_next", y)
        if needs_prev:
            x = xp.astype(xp.asarray(bk.quad_forms_of(prv.op, V)), dt)
            bk.check_finite("op_prev", x)
        else:
            x = xp.zeros_like(y)
        # one compiled kernel for the recursion where the backend compiles (eager calls stay cheap)
        new_state, value, sem = _COMPILED_STEP.get(bk)(self, state, x, y, xp)
        new_state = new_state._replace(signature=state.signature)
        spent = _spent(self)
        return self._report_values(value, sem, nxt.names, spent), new_state

    def estimate(self, state, block_names=None):
        """The current estimate held in ``state`` (``num_matvecs`` = total spent so far).

        With ``block_names`` a dict ``name -> Estimate``; without them a single
        ``Estimate`` (whose ``value`` and ``sem`` are per-block arrays when the
        state holds several blocks).
        """
        xp = namespace_of(state.estimate)
        return self._report(state, None if block_names is None else tuple(block_names), state.matvecs, xp)

    def _report(self, state, names, spent, xp):
        value, sem = _value_sem(self, state, xp)
        return self._report_values(value, sem, names, spent)

    def _report_values(self, value, sem, names, spent):
        dof = self.num_probes - 1 if self._use_replicas() else None  # the replicas' spread: R - 1
        if names is None:
            if value.shape[0] == 1:
                return Estimate(value[0], sem[0], spent, dof=dof)
            return Estimate(value, sem, spent, dof=dof)  # per-block arrays (no names given)
        return {name: Estimate(value[i], sem[i], spent, dof=dof) for i, name in enumerate(names)}


def _value_sem(self, state, xp):
    T = state.estimate
    R = T.shape[0]
    value = T.mean(axis=0)
    if self._use_replicas():
        if R >= 2:
            sem = xp.sqrt(xp.var(T, axis=0, correction=1) / R)
        else:
            sem = xp.full(value.shape, math.inf, value.dtype)
    else:
        sem = xp.sqrt(xp.maximum(state.variance, 0.0))
    return value, sem


def _spent(self):
    if self.kind == "moving_average" or self.gamma == 1.0:
        return self.num_probes
    return 2 * self.num_probes


def _step_and_report(self, state, x, y, xp):
    new_state, _ = _step(self, state, x, y, xp)
    value, sem = _value_sem(self, new_state, xp)
    return new_state, value, sem


# compiled once per backend and held by this object (the estimators' one compile-cache mechanism)
_COMPILED_STEP = BackendCompiled(_step_and_report, static_argnames=("self", "xp"))


def _step(self, state, x, y, xp):
    """The recursion on concrete quadratic forms ``x = q(op_prev)``, ``y = q(op_next)`` (``(R, B)``)."""
    R = self.num_probes
    first = state.step == 0
    dt = state.estimate.dtype
    w = self.moment_decay
    if self.kind == "moving_average":
        beta = state.gamma
        new_T = (1.0 - beta) * state.estimate + beta * y
        if R >= 2:
            s2 = xp.var(y, axis=0, correction=1)
        else:
            s2 = xp.where(first, y[0] ** 2, 0.5 * (y[0] - state.last[1, 0]) ** 2)
        new_var = (1.0 - beta) ** 2 * state.variance + beta**2 * s2 / R
        spent = R
        new_moments, new_gamma = state.moments, state.gamma
    else:
        gamma = state.gamma
        new_T, c = predictor_corrector_step(state.estimate, x, y, gamma)  # the one pc recursion
        if R >= 2:
            s2 = xp.var(c, axis=0, correction=1)
        else:
            c_prev = state.last[1, 0] - (1.0 - gamma) * state.last[0, 0]
            s2 = xp.where(first, c[0] ** 2, 0.5 * (c[0] - c_prev) ** 2)
        new_var = (1.0 - gamma) ** 2 * state.variance + s2 / R
        spent = R if self.gamma == 1.0 else 2 * R
        new_moments, new_gamma = state.moments, gamma
        if self.gamma == "auto":
            # moments of (x, y) pairs: across replicas (same step) or consecutive steps (R = 1)
            dx_ = y - x
            if R >= 2:
                xm, ym = x.mean(axis=0), y.mean(axis=0)
                var_x = xp.var(x, axis=0, correction=1)
                cov_xy = ((x - xm) * (y - ym)).sum(axis=0) / (R - 1)
                var_d = xp.var(dx_, axis=0, correction=1)
                obs = xp.stack([var_x, cov_xy, var_d])
                valid = xp.asarray(True)
            else:
                px, py = state.last[0, 0], state.last[1, 0]
                obs = xp.stack(
                    [0.5 * (x[0] - px) ** 2, 0.5 * (x[0] - px) * (y[0] - py), 0.5 * ((y[0] - x[0]) - (py - px)) ** 2]
                )
                valid = ~first
            # observations so far, this one included: a running mean until 1/w of them, then an EMA
            num_obs = state.step + (1 if R >= 2 else 0)
            mix = xp.maximum(w, 1.0 / xp.astype(xp.maximum(num_obs, 1), dt))
            upd = (1.0 - mix) * state.moments + mix * obs
            new_moments = xp.where(valid, upd, state.moments)
            g = xp.astype(_optimal_gamma(xp, new_moments[2], new_moments[1]), dt)
            new_gamma = xp.where(valid & (num_obs >= AUTO_GAMMA_WARMUP), g, gamma)
    new_state = DynamicState(
        estimate=xp.astype(new_T, dt),
        variance=xp.astype(new_var, dt),
        last=xp.astype(xp.stack([x, y]), dt),
        moments=xp.astype(xp.asarray(new_moments), dt),
        gamma=xp.astype(xp.asarray(new_gamma), dt),
        step=state.step + 1,
        matvecs=state.matvecs + spent,
    )
    return new_state, spent


# ----------------------------------------------------------------------------- constructors


def predictor_corrector(
    *,
    num_probes=1,
    gamma=0.1,
    sampler="gaussian",
    init_matvecs=None,
    sem="auto",
    moment_decay=0.05,
    chunk_size=None,
) -> DynamicTraceEstimator:
    """Predictor-corrector (DeltaShift) trace estimation along a sequence of operators.

    ``pc.init(key, op0) -> state`` gives an unbiased estimate of ``tr(op0)``;
    ``pc.update(key, state, op_prev, op_next) -> (estimate, state)`` applies each
    of ``num_probes`` fresh probes ``v`` to both operators and sets

        T_{t+1} = (1 - gamma) (T_t - v^T A_t v) + v^T A_{t+1} v

    per replica and per block. If ``T_t`` is unbiased for ``tr(A_t)`` then
    ``T_{t+1}`` is unbiased for ``tr(A_{t+1})`` (the probe is independent of
    ``T_t``). The variance obeys ``Var T_{t+1} = (1 - gamma)^2 Var T_t +
    Var q_v(A_{t+1} - (1 - gamma) A_t)``: damping forgets old noise geometrically,
    so the variance stays bounded for ``gamma > 0``, and when consecutive
    operators are close the correction is much less noisy than a fresh
    Hutchinson sample. ``gamma = 1`` is plain Hutchinson with ``num_probes``
    probes at every step (same key, same value).

    Parameters
    ----------
    num_probes : int
        Probes per update (``R``). Each probe drives its own replica of the
        recursion; the estimate is the replica mean.
    gamma : float in (0, 1] or "auto"
        Damping. ``"auto"`` chooses it per block before every update from
        exponential averages (weight ``moment_decay``) of the observed quadratic
        forms, with :func:`optimal_gamma`: it needs no extra matvecs. Until five
        observations are in, it keeps the damping whose stationary variance
        matches the initial estimate, ``2 / (m + 1)`` for an initial Hutchinson
        estimate with ``m`` probes per replica (``2 / (n + 1)`` after an exact
        one). Because gamma then depends (weakly) on past probes the estimate is
        unbiased only up to ``O(moment_decay)`` correlation effects (a fixed
        gamma is exactly unbiased); a test checks that no bias is detectable
        with 1000 seeds.
    sampler : {"gaussian", "rademacher", "sphere"} or callable
    init_matvecs : int, optional
        Probes for the first estimate (split over the replicas). Default:
        ``num_probes * ceil((2 - gamma) / gamma)``, the Hutchinson budget whose
        variance equals the recursion's stationary variance for a slowly
        changing operator (19 probes per replica at ``gamma = 0.1``; ``gamma =
        0.1`` is assumed for ``"auto"``). When it reaches the probe dimension the
        exact trace is computed instead.
    sem : {"auto", "replicas", "recursion"}
        How the standard error is obtained. ``"replicas"``: the spread of the
        ``R >= 2`` independent replicas, ``std / sqrt(R)`` (``inf`` for ``R = 1``).
        ``"recursion"``: the variance recursion above with the per-step correction
        variance estimated from the data -- across replicas when ``R >= 2``,
        otherwise from the difference of consecutive one-probe corrections,
        ``(c_t - c_{t-1})^2 / 2`` (slightly conservative when the operator drifts;
        ``c_1^2`` at the first step). ``"auto"`` (default): the recursion, which
        covers (measured); the replicas' sem has only ``R - 1`` degrees of freedom.
    moment_decay : float in (0, 1]
        Weight of the newest observation in the averages used by ``gamma="auto"``.
    chunk_size : int, optional
        Chunking of the probes of the (possibly large) initial estimate.

    Returns
    -------
    DynamicTraceEstimator
        With ``init``, ``update`` and ``estimate(state, block_names=None)``. The
        state is a :class:`DynamicState` (arrays only: jit, vmap over keys,
        ``np.savez`` / restore). Updates return a single :class:`Estimate` for an
        operator without blocks, a dict ``name -> Estimate`` for a block operator;
        ``num_matvecs`` counts both operators (``2 * num_probes``).

    Operators: anything :func:`as_operator` accepts, including operators with
    quadratic forms only (e.g. :class:`FiniteDifferenceGram`); a custom operator
    subclasses :class:`LinearOperator` (see docs/architecture.md). A
    ``numpy.random.Generator`` key runs on the numba backend when it is available.

    References
    ----------
    P. Dharangutte, C. Musco, "Dynamic Trace Estimation", NeurIPS 2021,
    arXiv:2110.13752.
    D. P. Woodruff, F. Zhang, Q. Zhang, "Optimal Query Complexities for Dynamic
    Trace Estimation", NeurIPS 2022, arXiv:2209.15219.
    M. Hirsch, F. Pichi, "Convergence and Sketching-Based Efficient Computation of
    Neural Tangent Kernel Weights in Physics-Based Loss", arXiv:2511.15530 (2025).
    """
    num_probes = check_num_matvecs(num_probes, name="num_probes")
    gamma = _check_gamma(gamma)
    return _build("predictor_corrector", num_probes, gamma, sampler, init_matvecs, sem, moment_decay, chunk_size)


def moving_average(
    *, num_probes=1, beta=0.1, sampler="gaussian", init_matvecs=None, sem="auto", chunk_size=None
) -> DynamicTraceEstimator:
    """Exponential moving average of fresh Hutchinson estimates along a sequence.

    ``T_{t+1} = (1 - beta) T_t + beta q_v(A_{t+1})`` with ``num_probes`` fresh
    probes per step (``num_probes`` matvecs; ``update(key, state, op_prev,
    op_next)`` ignores ``op_prev``, which may be ``None``, so it is a drop-in
    alternative to :func:`predictor_corrector`). Its variance settles at
    ``beta / (2 - beta)`` times one step's Hutchinson variance, but it is
    biased toward stale values: for a trace drifting by ``delta`` per step the lag
    bias is about ``delta (1 - beta) / beta``. The reported standard error covers
    the random part only (the variance recursion ``(1 - beta)^2 V + beta^2
    Var q / R``, or the replica spread), not the lag bias.

    Parameters
    ----------
    num_probes, sampler, init_matvecs, sem, chunk_size :
        As in :func:`predictor_corrector` (default ``init_matvecs`` uses ``beta``
        in place of ``gamma``).
    beta : float in (0, 1]
        Weight of the newest sample (``1`` is fresh Hutchinson each step).

    References
    ----------
    M. Hirsch, F. Pichi, arXiv:2511.15530 (2025) (moving-average variant); S. Wang,
    X. Yu, P. Perdikaris, "When and why PINNs fail to train: a neural tangent kernel
    perspective", J. Comput. Phys. 449 (2022), doi:10.1016/j.jcp.2021.110768.
    """
    num_probes = check_num_matvecs(num_probes, name="num_probes")
    beta = _check_gamma(beta, name="beta", allow_auto=False)
    return _build("moving_average", num_probes, beta, sampler, init_matvecs, sem, 0.05, chunk_size)


def _build(kind, num_probes, gamma, sampler, init_matvecs, sem, moment_decay, chunk_size):
    if not (callable(sampler) or sampler in SAMPLERS):
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)} or a callable; got {sampler!r}")
    if init_matvecs is not None:
        init_matvecs = check_num_matvecs(init_matvecs, name="init_matvecs")
        if init_matvecs < num_probes:
            raise ValueError(
                f"init_matvecs must be >= num_probes ({num_probes}) so that every replica starts from "
                f"its own estimate; got {init_matvecs}"
            )
    check_choice(sem, _SEM_METHODS, name="sem")
    moment_decay = check_probability(moment_decay, name="moment_decay", low_open=True)
    chunk_size = check_chunk_size(chunk_size)
    return DynamicTraceEstimator(kind, num_probes, gamma, sampler, init_matvecs, sem, float(moment_decay), chunk_size)
