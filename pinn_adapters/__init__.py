"""pinn_adapters: NTK loss weights for physics-informed networks, built on sketchtrace.

Every name is loaded on first use (PEP 562 module ``__getattr__``): ``import pinn_adapters``
imports nothing but this file, so the torch side (:mod:`pinn_adapters.torch`) runs without JAX
and the training app is not imported with the weightings. The JAX names need JAX (the ``pinn``
extra); host libraries (Flax, Equinox, jinns, optax, tqdm) are imported inside the functions
that need them.
"""

import importlib

#: public name -> the module that defines it (relative to this package), loaded on first use
_NAMES = {
    "ResidualBlocks": "._blocks",
    "MixedBlock": "._blocks",
    "ntk_traces": "._ntk",
    "ntk_weights": "._ntk",
    "ntk_weighting": "._weighting",
    "gradnorm_weighting": "._weighting",
    "grad_norm_weighting": "._weighting",
    "NTKWeighting": "._weighting",
    "WeightingState": "._weighting",
    "Weighting": "._weighting_api",  # pure Python: also the torch side's
}

#: The training application's names (``import pinn_adapters`` does not import the app, its
#: optimizers, checkpoints or plots).
_APP_NAMES = ("NonFiniteError", "TrainResult", "TrainState", "Trainer", "load_checkpoint", "save_checkpoint", "train")

#: subpackages and modules reachable as attributes (``pa.nets``, ``pa.problems``, ...)
_SUBMODULES = ("causal", "nets", "optim", "problems", "sampling", "second_order")

_EXTRA = "pip install 'sketchtrace[pinn]'"


def __getattr__(name):
    if name in _NAMES or name in _APP_NAMES or name in _SUBMODULES:
        where = _NAMES.get(name, ".app" if name in _APP_NAMES else f".{name}")
        try:
            module = importlib.import_module(where, __name__)
        except ImportError as exc:
            if _jax_importable():
                raise
            raise ImportError(
                f"pinn_adapters.{name} needs JAX ({_EXTRA}); the torch side is pinn_adapters.torch"
            ) from exc
        return module if name in _SUBMODULES else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jax_importable() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_APP_NAMES) | set(_SUBMODULES))


__all__ = [
    "ResidualBlocks",
    "MixedBlock",
    "ntk_traces",
    "ntk_weights",
    "ntk_weighting",
    "gradnorm_weighting",
    "grad_norm_weighting",
    "NTKWeighting",
    "Weighting",
    "WeightingState",
    "train",
    "Trainer",
    "TrainResult",
    "TrainState",
    "NonFiniteError",
    "save_checkpoint",
    "load_checkpoint",
    "problems",
    "nets",
    "causal",
    "optim",
    "sampling",
    "second_order",
]
