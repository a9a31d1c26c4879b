"""True NTK loss weights for DeepXDE (PyTorch backend): a callback for ``model.train``.

``model.train(iterations=..., callbacks=[NTKWeights("pc", period=10)])`` sets
``model.loss_weights`` (which DeepXDE's PyTorch backend reads at every step) to
NTK weights of its loss terms, refreshed every ``period`` iterations. The loss
terms are DeepXDE's own, in its order (PDE components, then boundary/initial
conditions): their residual vectors come from ``model.data.losses`` with a loss
function that returns the error itself, evaluated at the parameters being
differentiated on ``model.data.train_x``. Set ``DDE_BACKEND=pytorch`` before
importing DeepXDE.
"""

from __future__ import annotations

try:
    import deepxde as dde
except ImportError as exc:  # pragma: no cover - exercised without DeepXDE
    raise ImportError("pinn_adapters.torch.deepxde needs DeepXDE: pip install 'sketchtrace[deepxde]'") from exc

import torch

from sketchtrace.validation import check_num_matvecs

from ._blocks import TorchResidualBlocks
from ._ntk import ntk_weighting


def _identity_loss(zero, error):
    return error.reshape(-1)


def loss_term_residuals(model):
    """``fn(net, X) -> list of residual vectors``, one per DeepXDE loss term (its order)."""
    if dde.backend.backend_name != "pytorch":
        raise RuntimeError(
            f"NTKWeights needs DeepXDE's pytorch backend (DDE_BACKEND=pytorch); got {dde.backend.backend_name}"
        )

    def terms(net, X):
        inputs = X.detach().clone().requires_grad_(True)
        dde.grad.clear()
        outputs = net(inputs)
        errs = model.data.losses(None, outputs, _identity_loss, inputs, model)
        dde.grad.clear()
        return errs

    return terms


def term_names(num_pde: int, num_bcs: int) -> tuple[str, ...]:
    """``pde`` (or ``pde0``, ``pde1``, ...) then ``bc0``, ``bc1``, ...: DeepXDE's loss order."""
    pde = ["pde"] if num_pde == 1 else [f"pde{i}" for i in range(num_pde)]
    return tuple(pde + [f"bc{i}" for i in range(num_bcs)])


class NTKWeights(dde.callbacks.Callback):
    """Update ``model.loss_weights`` with NTK weights during ``model.train``.

    Parameters
    ----------
    estimator : {"exact", "hutchinson", "pc"}
        See :func:`pinn_adapters.torch.ntk_weighting`.
    period : int
        Refresh every ``period`` training iterations (the first weights are set when
        training begins).
    seed : int
        Seed of the ``torch.Generator`` for the sketched estimators.
    **options
        Passed to :func:`pinn_adapters.torch.ntk_weighting` (``num_probes``, ``gamma``,
        ``rule``, ``normalize``, ``jvp``, ...).

    Attributes
    ----------
    history : list of (iteration, dict)
        The weights set at each refresh.
    """

    def __init__(self, estimator="exact", *, period=100, seed=0, **options):
        super().__init__()
        self.period = check_num_matvecs(period, name="period")
        self.estimator, self.options = estimator, options
        self.generator = torch.Generator().manual_seed(int(seed))
        self.blocks = self.weighting = self.state = self._params_prev = None
        self.history = []
        lin = torch.nn.Linear(1, 1)  # check the options now, before training
        ntk_weighting(
            TorchResidualBlocks(lin, {"a": lambda m, x: m(x), "b": lambda m, x: m(x)}), estimator=estimator, **options
        )

    def build_blocks(self) -> TorchResidualBlocks:
        """One residual block per DeepXDE loss term (module: ``model.net``)."""
        model = self.model
        terms = loss_term_residuals(model)
        X = self.points()
        num_terms = len(terms(model.net, X))
        num_bcs = len(model.data.bcs)
        names = term_names(num_terms - num_bcs, num_bcs)
        fns = {name: (lambda net, pts, k=k: terms(net, pts)[k]) for k, name in enumerate(names)}
        # every block sees all of train_x (DeepXDE slices its rows), so rows do not follow the points
        return TorchResidualBlocks(model.net, fns, reduction="mean", per_sample="loop", pointwise=False)

    def points(self):
        X = self.model.data.train_x
        return torch.as_tensor(X, dtype=next(self.model.net.parameters()).dtype)

    def on_train_begin(self):
        self.blocks = self.build_blocks()
        self.weighting = ntk_weighting(self.blocks, estimator=self.estimator, **self.options)
        params = self.blocks.params()
        self.state = self.weighting.init(self.generator, params, self._batch())
        self._params_prev = params
        self._set(self.state.weights)

    def on_batch_begin(self):
        step = self.model.train_state.step
        if self.state is None or step == 0 or step % self.period:
            return
        params = self.blocks.params()
        weights, self.state = self.weighting.update(
            self.generator, self.state, self._params_prev, params, self._batch()
        )
        self._params_prev = params
        self._set(weights)

    def _batch(self):
        X = self.points()
        return {n: X for n in self.blocks.names}

    def _set(self, weights):
        w = {n: float(weights[n]) for n in self.blocks.names}
        self.model.loss_weights = [w[n] for n in self.blocks.names]
        self.history.append((int(self.model.train_state.step), w))
