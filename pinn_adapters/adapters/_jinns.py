"""jinns losses: NTK weights from its per-sample residual terms, written into its loss weights.

Tested with jinns 1.10.2. jinns' own dynamic loss weights (``update_weight_method``:
``soft_adapt``, ``lr_annealing``, ``ReLoBRaLo``, ``prior_loss``) are a closed list, and its
``update_weights`` hook receives only the reduced loss terms and their gradients, never the
parameters and the batch that NTK traces need. So the weights are computed here from
``evaluate_per_sample(params, batch)`` (the unreduced residual of every loss term at every
sample), and :func:`pinn_adapters.adapters.jinns_train` is a training loop over jinns' loss
and data objects that refreshes them inside one compiled run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sketchtrace.validation import check_bool, check_positive_int

from .._blocks import ResidualBlocks
from .._ntk import ntk_traces, ntk_weights, residual_rows

# loss term -> the batch field holding its samples (jinns 1.10: _prepare_loss_terms)
TERM_FIELDS = {
    "dyn_loss": ("domain_batch", "temporal_batch"),
    "boundary_loss": ("border_batch",),
    "initial_condition": ("initial_batch",),
}
_OPAQUE_FIELDS = ("param_batch_dict", "obs_batch_dict")


def _term_field(batch, name):
    for field in TERM_FIELDS.get(name, ()):
        if getattr(batch, field, None) is not None:
            return field
    return None


class JinnsBlocks(ResidualBlocks):
    """Residual blocks of a jinns loss; a batch is a jinns batch object.

    A term with its own samples (``dyn_loss``: ``domain_batch``/``temporal_batch``,
    ``boundary_loss``: ``border_batch``, ``initial_condition``: ``initial_batch``) gets
    those samples as its points, so exact traces use per-point gradients (verified
    pointwise at the first concrete call, see :meth:`ResidualBlocks.check_pointwise`).
    Other terms (observations, normalisation), and every term when the batch carries
    ``param_batch_dict`` or ``obs_batch_dict``, get the whole batch (an opaque block:
    exact traces take ``min(p, rows)`` whole-block Jacobian products).
    """

    def __init__(self, fns, *, per_point, **kwargs):
        super().__init__(fns, **kwargs)
        self._per_point = check_bool(per_point, name="per_point")
        self._template = None

    def _opaque(self, batch) -> bool:
        return not self._per_point or any(getattr(batch, f, None) is not None for f in _OPAQUE_FIELDS)

    def coerce_batch(self, batch):
        if isinstance(batch, Mapping):
            return batch
        if (
            not hasattr(batch, "__dataclass_fields__")
            and not hasattr(batch, "domain_batch")
            and not hasattr(batch, "temporal_batch")
        ):
            raise TypeError(f"batch must be a jinns batch object (from data.get_batch()); got {type(batch).__name__}")
        if self._opaque(batch):
            return {n: batch for n in self.names}
        # one sample of every field, as zeros from the shapes only (safe under jit: no tracer is kept)
        self._template = jax.tree.map(lambda a: np.zeros((1,) + tuple(a.shape[1:]), a.dtype), batch)
        out = {}
        for n in self.names:
            field = _term_field(batch, n)
            out[n] = getattr(batch, field) if field is not None else batch
        return out

    def pointwise_modes(self, params, batch):
        batch = self.coerce_batch(batch)
        if any(not isinstance(batch[n], (jax.Array, np.ndarray)) for n in self.names):
            modes = super().pointwise_modes(params, {n: batch[n] for n in self.names})
            return tuple(m and isinstance(batch[n], (jax.Array, np.ndarray)) for m, n in zip(modes, self.names))
        return super().pointwise_modes(params, batch)

    def full_batch(self, name, points):
        """A jinns batch for term ``name``: ``points`` (its samples), or the batch itself."""
        if not isinstance(points, (jax.Array, np.ndarray)):
            return points
        if self._template is None:
            raise ValueError("JinnsBlocks: pass a jinns batch object before per-term points")
        import equinox as eqx

        field = _term_field(self._template, name)
        return eqx.tree_at(lambda b: getattr(b, field), self._template, points)


def _check_loss(loss, params):
    for attr in ("evaluate_per_sample", "loss_weights", "u"):
        if not hasattr(loss, attr):
            raise TypeError(
                f"loss must be a jinns loss (LossPDEStatio, LossPDENonStatio, LossODE) with "
                f"evaluate_per_sample and loss_weights; got {type(loss).__name__} (no {attr!r})"
            )
    if not hasattr(params, "nn_params"):
        raise TypeError(f"params must be jinns.parameters.Params (with nn_params); got {type(params).__name__}")


def _active_terms(loss):
    lw = loss.loss_weights
    return tuple(f.name for f in dataclasses.fields(lw) if getattr(lw, f.name, None) is not None)


def from_jinns(loss, params, *, terms=None):
    """Residual blocks over ``params.nn_params`` from a jinns loss's per-sample terms.

    Parameters
    ----------
    loss : jinns loss (``LossPDEStatio``, ``LossPDENonStatio``, ``LossODE``)
    params : jinns.parameters.Params
        Current parameters; the network parameters ``params.nn_params`` are
        differentiated, the equation parameters are held fixed.
    terms : sequence of str, optional
        Loss terms to use as blocks (default: those with a loss weight set, e.g.
        ``("dyn_loss", "boundary_loss")``). A term with several parts (a tuple of
        dynamic losses, the boundary facets) is one block.

    Returns
    -------
    (JinnsBlocks, nn_params)
        A batch for these blocks is the jinns batch object itself (e.g. from
        ``data_generator.get_batch()``). The reduction is jinns' mean over samples.
        For a PINN network each term's samples are its points (per-point exact
        traces, about one gradient step's cost); for a SPINN, or a batch with
        parameter or observation batches, the whole batch is one opaque block
        (``min(p, rows)`` whole-block Jacobian products).
    """
    import equinox as eqx

    _check_loss(loss, params)
    names = tuple(terms) if terms is not None else _active_terms(loss)
    if not names:
        raise ValueError("the jinns loss has no active terms (no loss weight is set)")
    try:
        from jinns.nn import PINN

        per_point = isinstance(loss.u, PINN)
    except ImportError:  # pragma: no cover - jinns layout changed
        per_point = False
    holder = {}

    def make(name):
        def fn(nn_params, points):
            p = eqx.tree_at(lambda q: q.nn_params, params, nn_params)
            per_sample = loss.evaluate_per_sample(p, holder["blocks"].full_batch(name, points))
            leaves = jax.tree.leaves(getattr(per_sample, name))
            if not leaves:
                raise ValueError(f"jinns loss term {name!r} has no residuals for this batch")
            if len(leaves) == 1:
                return leaves[0].reshape(leaves[0].shape[0], -1)
            return jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)

        return fn

    blocks = holder["blocks"] = JinnsBlocks(
        {n: make(n) for n in names}, reduction="mean", pointwise=True, per_point=per_point
    )
    return blocks, params.nn_params


def jinns_loss_with_weights(loss, weights, *, terms=None):
    """``loss`` with ``loss_weights`` set from ``weights`` (dict term -> scalar; jit-safe).

    A term whose weight is a tuple (several dynamic losses) gets the block weight in
    every entry. ``loss`` itself is unchanged (an Equinox ``tree_at``).
    """
    import equinox as eqx

    lw = loss.loss_weights
    new = {}
    for name in terms or weights:
        if name not in weights:
            raise ValueError(f"weights has no entry for loss term {name!r}; it has {sorted(weights)}")
        old = getattr(lw, name)
        val = jnp.asarray(weights[name])
        new[name] = tuple(val for _ in old) if isinstance(old, tuple) else val
    if not dataclasses.is_dataclass(lw):  # pragma: no cover - jinns weights are dataclass-like eqx modules
        raise TypeError(f"cannot rebuild jinns loss weights of type {type(lw).__name__}")
    return eqx.tree_at(lambda l: l.loss_weights, loss, dataclasses.replace(lw, **new))


def jinns_ntk_weights(
    key, loss, params, batch, *, method="exact", num_matvecs=None, rule="wang2022", cap=None, chunk_size=256, terms=None
):
    """Compute NTK weights for a jinns loss and return the loss with them as ``loss_weights``.

    ``lambda_i = sum_j tr(K_jj) / tr(K_ii)`` over the loss terms (``rule="wang2022"``)
    or jaxpi's per-sample-mean rule (``rule="jaxpi"``); traces from
    :func:`pinn_adapters.ntk_traces` with ``method`` (``"exact"``, ``"hutchinson"``, ...).
    A term whose weight is a tuple (several dynamic losses) gets the block weight in
    every entry. The same as ``JinnsNTKWeights(method=..., ...)(key, loss, params, batch)``.

    The computation is compiled (``equinox.filter_jit``; ``method``, ``num_matvecs``,
    ``rule``, ``cap``, ``chunk_size`` and ``terms`` are static): the first call with a
    given configuration, loss structure and batch shape compiles, later calls (new
    parameters, new batches, the loss returned by the previous call) reuse it (JAX's
    compilation cache of the one module function; nothing is stored here). Exact traces of
    a PINN's terms take per-point gradients (jinns evaluates every term sample by sample),
    about one gradient step's cost; :func:`jinns_train` refreshes the weights inside its own
    compiled training loop.

    Returns
    -------
    (new_loss, weights)
        ``new_loss`` is ``loss`` with its ``loss_weights`` replaced (an Equinox
        ``tree_at``; ``loss`` itself is unchanged); ``weights`` is the dict used.
    """
    weigher = JinnsNTKWeights(
        method=method, num_matvecs=num_matvecs, rule=rule, cap=cap, chunk_size=chunk_size, terms=terms
    )
    return weigher(key, loss, params, batch)


class JinnsNTKWeights:
    """A jinns NTK-weight configuration and its compiled function (:func:`jinns_ntk_weights` as an object).

    ``weigher = JinnsNTKWeights(method="exact")``; ``new_loss, weights = weigher(key, loss,
    params, batch)``. The object holds the ``equinox.filter_jit`` of the computation with
    the configuration static, the way :class:`pinn_adapters.Trainer` holds a training step:
    one compilation per loss structure and batch shape, reused by every call.

    Parameters
    ----------
    method, num_matvecs, rule, cap, chunk_size, terms
        As for :func:`jinns_ntk_weights`.
    """

    def __init__(self, *, method="exact", num_matvecs=None, rule="wang2022", cap=None, chunk_size=256, terms=None):
        import equinox as eqx

        terms = None if terms is None else tuple(terms)
        self.config = {
            "method": method,
            "num_matvecs": num_matvecs,
            "rule": rule,
            "cap": cap,
            "chunk_size": chunk_size,
            "terms": terms,
        }
        self._compiled = eqx.filter_jit(_jinns_ntk_weights)

    def __repr__(self):
        return "JinnsNTKWeights(" + ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + ")"

    def __call__(self, key, loss, params, batch):
        """``(new_loss, weights)``: ``loss`` with the NTK weights at ``params`` on ``batch``."""
        _check_loss(loss, params)
        return self._compiled(key, loss, params, batch, **self.config)


def _jinns_ntk_weights(key, loss, params, batch, *, method, num_matvecs, rule, cap, chunk_size, terms):
    blocks, nn_params = from_jinns(loss, params, terms=terms)
    w = jinns_weights_fn(blocks, method=method, num_matvecs=num_matvecs, rule=rule, cap=cap, chunk_size=chunk_size)(
        key, nn_params, batch
    )
    return jinns_loss_with_weights(loss, w, terms=blocks.names), w


def jinns_weights_fn(blocks, *, method="exact", num_matvecs=None, rule="wang2022", cap=None, chunk_size=256):
    """``weights(key, nn_params, batch) -> dict``: NTK weights of ``blocks`` (traceable, jit-safe)."""

    def weights(key, nn_params, batch):
        tr = ntk_traces(
            key,
            blocks,
            nn_params,
            batch,
            method=method,
            num_matvecs=num_matvecs,
            normalize="sum",
            chunk_size=chunk_size,
        )
        sizes = residual_rows(blocks, nn_params, blocks.coerce_batch(batch)) if rule == "jaxpi" else None
        return ntk_weights(tr, rule=rule, cap=cap, sizes=sizes)

    return weights


class JinnsTrainResult(NamedTuple):
    """Outcome of :func:`jinns_train`.

    ``history`` holds one entry per iteration: ``"loss"`` the weighted total jinns
    minimised, ``"terms"`` dict term -> the *unweighted* loss term (comparable across
    weightings), ``"weights"`` dict term -> the weight used at that iteration.
    ``seconds``: wall time of the one compilation (``"compile"``) and of the run (``"run"``).
    """

    params: Any
    loss: Any
    opt_state: Any
    data: Any
    history: dict
    seconds: dict


def jinns_train(
    key,
    loss,
    params,
    data,
    optimizer,
    *,
    n_iter,
    every=250,
    method="exact",
    num_matvecs=None,
    rule="wang2022",
    cap=None,
    chunk_size=256,
    terms=None,
    opt_state=None,
):
    """Train a jinns problem with NTK loss weights refreshed inside one compiled run.

    jinns' ``solve`` has no place for weights that need the parameters and the
    batch (its ``update_weight_method`` is a closed list whose hook sees only the
    reduced loss terms and their gradients), so this is the same gradient loop built
    from jinns' public pieces: ``data.get_batch()``, ``loss.values_and_grads``,
    ``loss.ponderate_and_sum_gradient`` / ``ponderate_and_sum_loss`` and an optax
    ``optimizer``, inside one ``jax.lax.scan`` compiled once (``equinox.filter_jit``).
    Every ``every`` iterations (from iteration 0) the loss weights are recomputed with
    :func:`jinns_weights_fn` at the current parameters and batch (``jax.lax.cond``: the
    other iterations pay nothing). ``every=None`` trains with ``loss``'s own weights
    (the unweighted reference on the same loop).

    Parameters
    ----------
    key : jax.random key or None
        Randomness for the sketched methods (split once per iteration); may be
        ``None`` for ``method="exact"`` or ``every=None``.
    loss, params : jinns loss and jinns.parameters.Params
    data : jinns data generator (``get_batch()`` returning ``(data, batch)``)
    optimizer : optax.GradientTransformation
    n_iter : int
        Iterations.
    every : int or None
        Refresh period of the NTK weights.
    method, num_matvecs, rule, cap, chunk_size, terms : see :func:`jinns_ntk_weights`
    opt_state : optional
        Optimizer state to continue from (default ``optimizer.init(params)``).

    Returns
    -------
    JinnsTrainResult
        Final parameters, the loss carrying the last weights, optimizer state, data
        generator and the per-iteration history.
    """
    import equinox as eqx

    _check_loss(loss, params)
    n_iter = check_positive_int(n_iter, name="n_iter")
    every = None if every is None else check_positive_int(every, name="every")
    if not callable(getattr(data, "get_batch", None)):
        raise TypeError(f"data must be a jinns data generator with get_batch(); got {type(data).__name__}")
    blocks, _ = from_jinns(loss, params, terms=terms)
    names = blocks.names
    if every is not None:
        weights_fn = jinns_weights_fn(
            blocks, method=method, num_matvecs=num_matvecs, rule=rule, cap=cap, chunk_size=chunk_size
        )
        blocks.pointwise_modes(params.nn_params, data.get_batch()[1])  # the one-off pointwise check, concrete
    if key is None:
        if every is not None and method != "exact":
            raise ValueError(f"key is required for method={method!r} (a jax.random.key); only 'exact' takes None")
        key = jax.random.key(0)  # never used for randomness: exact weights or no weighting
    if opt_state is None:
        opt_state = optimizer.init(params)
    dtype = jax.flatten_util.ravel_pytree(params.nn_params)[0].dtype
    w0 = {n: jnp.asarray(jax.tree.leaves(getattr(loss.loss_weights, n))[0], dtype) for n in names}

    def refresh(key, params, batch):
        return {n: v.astype(dtype) for n, v in weights_fn(key, params.nn_params, batch).items()}

    def one(carry, i):
        params, opt_state, w, data, key = carry
        data, batch = data.get_batch()
        key, sub = jax.random.split(key)
        if every is not None:
            w = jax.lax.cond(i % every == 0, lambda: refresh(sub, params, batch), lambda: w)
        weighted = jinns_loss_with_weights(loss, w, terms=names)
        loss_terms, grad_terms = weighted.values_and_grads(params, batch)
        updates, opt_state = optimizer.update(weighted.ponderate_and_sum_gradient(grad_terms), opt_state, params)
        params = eqx.apply_updates(params, updates)
        record = {
            "loss": weighted.ponderate_and_sum_loss(loss_terms),
            "terms": {n: sum(jax.tree.leaves(getattr(loss_terms, n))) for n in names},
            "weights": dict(w),
        }
        return (params, opt_state, w, data, key), record

    @eqx.filter_jit
    def run(params, opt_state, w, data, key):
        return jax.lax.scan(one, (params, opt_state, w, data, key), jnp.arange(n_iter))

    t0 = time.perf_counter()
    compiled = run.lower(params, opt_state, w0, data, key).compile()
    t1 = time.perf_counter()
    (params, opt_state, w, data, _), history = jax.block_until_ready(compiled(params, opt_state, w0, data, key))
    seconds = {"compile": t1 - t0, "run": time.perf_counter() - t1}
    return JinnsTrainResult(params, jinns_loss_with_weights(loss, w, terms=names), opt_state, data, history, seconds)
