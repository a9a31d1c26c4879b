"""True NTK loss weights for PINA (``pina-mathlab``): a weighting that plugs in where PINA's do.

PINA's own ``NeuralTangentKernelWeighting`` weighs condition ``c`` by
``||grad L_c|| / sum_j ||grad L_j||`` of its (mean) loss ``L_c``, smoothed by ``alpha``: the
inverse of the grad-norm rule, so it up-weights the term that already dominates the gradient,
and it is not the NTK trace. :class:`NTKWeighting`
is a ``pina.weighting.BaseWeighting``: pass it as ``weighting=`` to a PINA solver
(e.g. ``PhysicsInformedSingleModelSolver``) and at each refresh it computes, per
condition ``c``, ``tr(K_cc) = ||d r_c / d theta||_F^2`` of the condition's residuals
``r_c`` on the condition's points, exactly, with Hutchinson, or with the
predictor-corrector (pc), and turns the traces into weights with
:func:`pinn_adapters.ntk_weights`' rule (``lambda_c = sum_j T_j / T_c`` by default).

Residuals are PINA's own: ``equation.residual(x, solver.forward(x), solver._params)``
for equation conditions and ``solver.forward(x) - target`` for data conditions,
evaluated with the parameters being differentiated (``torch.func.functional_call``
on the solver).
"""

from __future__ import annotations

try:
    from pina.weighting import BaseWeighting
except ImportError as exc:  # pragma: no cover - exercised without PINA
    raise ImportError("pinn_adapters.torch.pina needs PINA: pip install 'sketchtrace[pina]'") from exc

import torch

from ._blocks import TorchResidualBlocks
from ._weighting import ntk_weighting


def condition_points(problem, name):
    """The points of PINA condition ``name`` (its ``input``, or its discretised domain)."""
    cond = problem.conditions[name]
    pts = getattr(cond, "input", None)
    if pts is None and hasattr(cond, "domain"):
        domains = problem.discretised_domains
        if cond.domain not in domains:
            raise ValueError(
                f"condition {name!r}: domain {cond.domain!r} is not discretised (call problem.discretise_domain)"
            )
        pts = domains[cond.domain]
    if pts is None:
        raise ValueError(f"condition {name!r} has neither input points nor a domain")
    return pts


def condition_residual(solver, name):
    """``fn(model, points)``: the residuals of PINA condition ``name`` (as PINA computes them)."""
    cond = solver.problem.conditions[name]
    equation = getattr(cond, "equation", None)
    target = getattr(cond, "target", None)
    if equation is None and target is None:
        raise ValueError(f"condition {name!r} has no equation and no target: no residual to weight")

    def fn(model, points):
        x = points.clone().requires_grad_(True) if equation is not None else points
        out = model(x)
        r = equation.residual(x, out, solver._params) if equation is not None else out - target
        return torch.as_tensor(r.as_subclass(torch.Tensor) if isinstance(r, torch.Tensor) else r)

    return fn


class NTKWeighting(BaseWeighting):
    """NTK (or grad-norm) weights for a PINA solver's conditions.

    Parameters
    ----------
    estimator : {"pc", "exact", "hutchinson", "gradnorm", "none"}
        How the per-condition weights are computed (see
        :func:`pinn_adapters.torch.ntk_weighting`; default ``"pc"``, subsampled).
    seed : int
        Seed of the ``torch.Generator`` used by the sketched estimators.
    update_every_n_epochs : int
        PINA's refresh period (in epochs); one refresh per such epoch, at its first training
        batch (PINA calls the hook at every batch, and during validation: those reuse the weights).
    alpha : float, optional
        PINA's name for the smoothing (``w <- alpha w_old + (1 - alpha) w_new``): the same as
        ``ema`` (give one of them).
    normalize : {"sum", "mean", None}
        How the traces are normalised (see :func:`pinn_adapters.torch.ntk_weighting`). Default
        ``"sum"``, the whole-block traces of Wang, Yu and Perdikaris' rule, chosen by measurement on
        PINA's Poisson tutorial: there the PDE rows' per-row NTK diagonal is about 465x the boundary
        rows' smaller at initialisation, so per-row (``"mean"``) traces put a weight of 466 on the
        PDE, the boundary is left unfitted and the relative L2 ends at 2.2-2.5 (none: 0.67-0.86);
        whole-block traces end at 0.38-0.41 (two seeds, 1,000 epochs; ``docs/adapters.md``).
    **options
        Passed to :func:`pinn_adapters.torch.ntk_weighting` (``num_probes``, ``gamma``,
        ``rule``, ``subsample``, ``ema``, ``cap``, ...). PINA's residuals use
        ``torch.autograd``: exact traces run on point chunks, pc's ``J v`` are forward
        differences (``jvp="autograd"`` is exact); ``jvp="func"`` is refused.

    Notes
    -----
    Refreshes use each condition's *training* points only (the data module's train split),
    never its validation or test split.
    """

    def __init__(self, estimator="pc", *, seed=0, update_every_n_epochs=1, alpha=None, normalize="sum", **options):
        super().__init__(update_every_n_epochs=update_every_n_epochs, aggregator="sum")
        options["normalize"] = normalize
        if alpha is not None:
            if "ema" in options:
                raise ValueError("give alpha= (PINA's name) or ema=, not both: they are the same smoothing")
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
                raise ValueError(f"alpha must be a number in [0, 1) (PINA's smoothing, our ema); got {alpha!r}")
            options["ema"] = float(alpha) if alpha > 0 else None
        if options.get("jvp") == "func":
            raise ValueError("jvp='func' cannot differentiate PINA's autograd residuals; use 'forward' or 'autograd'")
        if "every" in options:
            raise ValueError("PINA schedules the refreshes: use update_every_n_epochs=, not every=")
        self.estimator, self.options = estimator, options
        self.generator = torch.Generator().manual_seed(int(seed))
        self._weighting = self._blocks = self._state = self._params_prev = None
        self._last_epoch = None
        self.refreshes = 0
        ntk_weighting(_probe_blocks(), estimator=estimator, **options)  # check the options before training

    def _probe_cfg(self) -> dict:
        """The configuration these options give (checked on a stand-in)."""
        return ntk_weighting(_probe_blocks(), estimator=self.estimator, **self.options).config

    def _setup(self, names):
        solver = self.solver
        fns = {n: condition_residual(solver, n) for n in names}
        self._blocks = TorchResidualBlocks(solver, fns, reduction="mean", per_sample="loop")
        self._weighting = ntk_weighting(self._blocks, estimator=self.estimator, **self.options)

    def batch(self):
        """Block name -> the condition's training points (the data module's train split)."""
        out = {}
        dm = getattr(getattr(self.solver, "_trainer", None) and self.solver.trainer, "data_module", None)
        for n in self._blocks.names:
            pts = condition_points(self.solver.problem, n)
            split = getattr(dm, "split_idxs", {}).get(n) if dm is not None else None
            if split is not None and len(split["train"]) < len(pts):
                pts = pts[torch.as_tensor(split["train"], dtype=torch.long)]
            out[n] = pts
        return out

    def update_weights(self, losses):
        """PINA's hook: ``{condition: weight}``, refreshed once per scheduled epoch while training."""
        saved = self.last_saved_weights()
        epoch = self.solver.trainer.current_epoch
        if saved and (not self.solver.training or epoch == self._last_epoch):
            return saved  # validation, or a later batch of an epoch already refreshed
        if self._blocks is None or set(self._blocks.names) != set(losses):
            self._setup(tuple(losses))
            self._state = None
        params = self._blocks.params()
        batch = self.batch()
        if self._state is None:
            self._state = self._weighting.init(self.generator, params, batch)
            weights = self._state.weights
        else:
            weights, self._state = self._weighting.update(self.generator, self._state, self._params_prev, params, batch)
        self._params_prev, self._last_epoch = params, epoch
        self.refreshes += 1
        return {n: weights[n].to(losses[n].dtype) for n in losses}

    @property
    def traces(self) -> dict:
        """The latest per-condition NTK traces (or gradient norms for ``"gradnorm"``)."""
        return {} if self._state is None else dict(self._state.traces)


def _probe_blocks():
    """A one-parameter stand-in used only to check the options before the solver exists."""
    lin = torch.nn.Linear(1, 1)
    return TorchResidualBlocks(lin, {"a": lambda model, x: model(x), "b": lambda model, x: model(x)})
