"""True NTK (or grad-norm) loss weights for DeepXDE (PyTorch backend): a callback for ``model.train``.

``model.train(iterations=..., callbacks=[NTKWeights()])`` sets ``model.loss_weights``
(which DeepXDE's PyTorch backend reads at every step) to NTK weights of its loss terms,
refreshed every ``period`` iterations (one schedule: ``every`` is an alias). The loss terms
are DeepXDE's own, in its order (PDE components, then boundary/initial conditions). For
``dde.data.PDE``/``TimePDE`` each term is evaluated on its own training points only (the PDE
on the domain points, each condition on its points, through ``data.pde`` and ``bc.error``), so
terms are pointwise: exact traces run on point chunks (linear in the points) and pc draws a
subset of each term's points. Other data classes fall back to ``model.data.losses`` on all of
``train_x``. Set ``DDE_BACKEND=pytorch`` before importing DeepXDE.
"""

from __future__ import annotations

try:
    import deepxde as dde
except ImportError as exc:  # pragma: no cover - exercised without DeepXDE
    raise ImportError("pinn_adapters.torch.deepxde needs DeepXDE: pip install 'sketchtrace[deepxde]'") from exc

import warnings

import numpy as np
import torch

from sketchtrace.validation import check_num_matvecs

from ._blocks import TorchResidualBlocks
from ._weighting import ntk_weighting

DEFAULT_PERIOD = {"pc": 5, "exact": 100, "hutchinson": 100, "gradnorm": 1000, "none": 1}


def _identity_loss(zero, error):
    return error.reshape(-1)


def _check_backend():
    if dde.backend.backend_name != "pytorch":
        raise RuntimeError(
            f"NTKWeights needs DeepXDE's pytorch backend (DDE_BACKEND=pytorch); got {dde.backend.backend_name}"
        )


def loss_term_residuals(model):
    """``fn(net, X) -> list of residual vectors``, one per DeepXDE loss term (its order), on all of ``X``."""
    _check_backend()

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


def _pointwise_supported(data) -> bool:
    return isinstance(data, dde.data.PDE) and getattr(data, "auxiliary_var_fn", None) is None and data.pde is not None


def pointwise_terms(model):
    """``(names, fns, points)``: each DeepXDE loss term as a residual of its own training points."""
    _check_backend()
    data = model.data
    starts = list(map(int, np.cumsum([0] + list(data.num_bcs))))
    X = np.asarray(data.train_x)

    def pde_values(net, pts):
        inputs = pts.detach().clone().requires_grad_(True)
        dde.grad.clear()
        f = data.pde(inputs, net(inputs))
        dde.grad.clear()
        return list(f) if isinstance(f, (list, tuple)) else [f]

    dtype = next(model.net.parameters()).dtype
    pde_pts = torch.as_tensor(X[starts[-1] :], dtype=dtype)
    num_pde = len(pde_values(model.net, pde_pts[:1]))
    names = term_names(num_pde, len(data.bcs))
    fns, points = {}, {}
    for k in range(num_pde):
        fns[names[k]] = lambda net, pts, k=k: pde_values(net, pts)[k].reshape(-1)
        points[names[k]] = pde_pts
    for i, bc in enumerate(data.bcs):
        pts_np = X[starts[i] : starts[i + 1]]

        def bc_fn(net, pts, bc=bc):
            inputs = pts.detach().clone().requires_grad_(True)
            dde.grad.clear()
            err = bc.error(inputs.detach().cpu().numpy(), inputs, net(inputs), 0, pts.shape[0])
            dde.grad.clear()
            return err.reshape(-1)

        fns[names[num_pde + i]] = bc_fn
        points[names[num_pde + i]] = torch.as_tensor(pts_np, dtype=dtype)
    return names, fns, points


class NTKWeights(dde.callbacks.Callback):
    """Update ``model.loss_weights`` with NTK (or grad-norm) weights during ``model.train``.

    Parameters
    ----------
    estimator : {"pc", "exact", "hutchinson", "gradnorm", "none"}
        See :func:`pinn_adapters.torch.ntk_weighting` (default ``"pc"``: subsampled
        predictor-corrector, refreshed every 5 iterations).
    period : int, optional
        Refresh every ``period`` training iterations (first weights when training begins).
        Default: 5 for pc (a pc refresh measured 1.8 iterations on the Burgers example), 100 for
        exact and Hutchinson, 1000 for gradnorm (jaxpi's).
    every : int, optional
        Alias of ``period`` (give one of them).
    seed : int
        Seed of the ``torch.Generator`` for the sketched estimators.
    user_weights : {"multiply", "refuse"}
        What to do with ``loss_weights`` given to ``model.compile``: multiply them into the
        NTK weights (kept as fixed factors) or raise.
    **options
        Passed to :func:`pinn_adapters.torch.ntk_weighting` (``num_probes``, ``gamma``,
        ``rule``, ``normalize``, ``subsample``, ``ema``, ``cap``, ``initial``, ...). The callback owns
        the schedule: ``every`` goes to ``period``; ``jvp="func"`` is refused (DeepXDE's residuals
        use ``torch.autograd``, which ``torch.func`` cannot transform).

    Notes
    -----
    ``model.compile("L-BFGS")`` resets ``loss_weights``. Train the L-BFGS phase with this callback
    too: its weights are then held fixed at the last refresh (L-BFGS needs one fixed objective),
    with a warning that says so; or pass ``loss_weights=callback.loss_weights`` to that compile.

    Attributes
    ----------
    history : list of (iteration, dict)
        The weights set at each refresh (and only there).
    loss_weights : list of float or None
        The weights last set (user factors included).
    """

    def __init__(self, estimator="pc", *, period=None, every=None, seed=0, user_weights="multiply", **options):
        super().__init__()
        if period is not None and every is not None:
            raise ValueError("give period= or its alias every=, not both (they are one schedule)")
        if user_weights not in ("multiply", "refuse"):
            raise ValueError(f"user_weights must be 'multiply' or 'refuse'; got {user_weights!r}")
        if options.get("jvp") == "func":
            raise ValueError(
                "jvp='func' cannot differentiate DeepXDE's autograd residuals; use 'forward' or 'autograd'"
            )
        period = every if period is None else period
        if estimator not in DEFAULT_PERIOD:
            ntk_weighting(_stub_blocks(), estimator=estimator)  # the named-choice error
        self.period = check_num_matvecs(DEFAULT_PERIOD[estimator] if period is None else period, name="period")
        self.estimator, self.options, self.user_weights = estimator, options, user_weights
        self.generator = torch.Generator().manual_seed(int(seed))
        self.blocks = self.weighting = self.state = self._params_prev = self._points = None
        self._user = None
        self.history, self.loss_weights = [], None
        ntk_weighting(_stub_blocks(), estimator=estimator, **options)  # check the options now, before training

    def build_blocks(self) -> TorchResidualBlocks:
        """One residual block per DeepXDE loss term (module: ``model.net``)."""
        model = self.model
        if _pointwise_supported(model.data):
            names, fns, self._points = pointwise_terms(model)
            return TorchResidualBlocks(model.net, fns, reduction="mean", per_sample="loop", pointwise=True)
        terms = loss_term_residuals(model)
        X = torch.as_tensor(model.data.train_x, dtype=next(model.net.parameters()).dtype)
        names = term_names(len(terms(model.net, X)) - len(model.data.bcs), len(model.data.bcs))
        fns = {name: (lambda net, pts, k=k: terms(net, pts)[k]) for k, name in enumerate(names)}
        self._points = {n: X for n in names}
        # every block sees all of train_x (DeepXDE slices its rows), so rows do not follow the points
        return TorchResidualBlocks(model.net, fns, reduction="mean", per_sample="loop", pointwise=False)

    def on_train_begin(self):
        model = self.model
        lbfgs = str(getattr(model, "opt_name", "")).upper().startswith("L-BFGS")
        if lbfgs:
            if self.loss_weights is None:
                self._start()
            model.loss_weights = list(self.loss_weights)
            warnings.warn(
                "NTKWeights: L-BFGS phase runs with the weights of the last refresh held fixed "
                f"({self.loss_weights}); L-BFGS needs one fixed objective",
                stacklevel=2,
            )
            self._lbfgs = True
            return
        self._lbfgs = False
        self._start()

    def _start(self):
        model = self.model
        user = model.loss_weights
        if self._user is None and user is not None:
            if self.user_weights == "refuse":
                raise ValueError(
                    "NTKWeights sets model.loss_weights itself; compile without loss_weights, or use "
                    "NTKWeights(..., user_weights='multiply') to keep them as fixed factors"
                )
            self._user = [float(u) for u in user]
        self.blocks = self.build_blocks()
        if self._user is not None and len(self._user) != len(self.blocks.names):
            raise ValueError(
                f"model.loss_weights has {len(self._user)} entries; DeepXDE has {len(self.blocks.names)} loss terms"
            )
        self.weighting = ntk_weighting(self.blocks, estimator=self.estimator, **self.options)
        params = self.blocks.params()
        self.state = self.weighting.init(self.generator, params, self._points)
        self._params_prev = params
        self._set(self.state.weights)

    def on_batch_begin(self):
        step = self.model.train_state.step
        if self.state is None or self._lbfgs or step == 0 or step % self.period:
            return
        params = self.blocks.params()
        weights, self.state = self.weighting.update(self.generator, self.state, self._params_prev, params, self._points)
        self._params_prev = params
        self._set(weights)

    def _set(self, weights):
        w = {n: float(weights[n]) for n in self.blocks.names}
        factors = self._user or [1.0] * len(w)
        self.loss_weights = [f * w[n] for f, n in zip(factors, self.blocks.names)]
        self.model.loss_weights = list(self.loss_weights)
        self.history.append((int(self.model.train_state.step), w))


def _stub_blocks():
    """A one-parameter stand-in used only to check the options before the model exists."""
    lin = torch.nn.Linear(1, 1)
    return TorchResidualBlocks(lin, {"a": lambda m, x: m(x), "b": lambda m, x: m(x)})
