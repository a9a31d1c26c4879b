"""The ``sketchtrace pinn`` flags of :class:`WaveConfig` fields, shared by the run and sweep parsers.

Every field is a flag (``--learning-rate`` for ``learning_rate``), checked by
``WaveConfig.validate`` as it is parsed; :data:`HELP` gives a flag its help line,
:data:`FLAG_NAMES` another name, :data:`WEIGHT_FIELDS` the weightings that use it.
"""

from __future__ import annotations

import argparse
import dataclasses

from sketchtrace.validation import OPTION_INT_MAX

from ._experiment import OPTIMIZERS, WEIGHTS, WaveConfig

FLAG_NAMES = {"num_probes": "--probes"}  # field -> flag, where it is not --field-name
CHOICES = {"weights": WEIGHTS, "optimizer": OPTIMIZERS, "fd": ("forward", "central", "jvp")}
HELP = {
    "weights": "loss weighting",
    "steps": "optimizer steps",
    "width": "hidden width",
    "depth": "hidden layers",
    "n_res": "interior points per batch",
    "n_bc": "points per boundary/initial piece",
    "exact_every": "--weights exact: refresh every N steps",
    "gradnorm_every": "--weights gradnorm: refresh every N steps",
    "gradnorm_momentum": "--weights gradnorm: running-average momentum in [0, 1)",
    "num_probes": "--weights hutchinson/pc: probes per step",
    "gamma": "--weights pc: predictor-corrector damping in (0, 1]",
    "fd": "--weights pc: how J v is evaluated",
    "h": "--weights pc: finite-difference step",
    "x64": "train in float64",
}
# field -> the weightings that use it (the others refuse the flag)
WEIGHT_FIELDS = {
    "exact_every": ("exact",),
    "gradnorm_every": ("gradnorm",),
    "gradnorm_momentum": ("gradnorm",),
    "num_probes": ("hutchinson", "pc"),
    "gamma": ("pc",),
    "fd": ("pc",),
    "h": ("pc",),
}
NOT_FLAGS = ("problem",)  # the subcommand


def flag_of(field: str) -> str:
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _kind(field: dataclasses.Field):
    if isinstance(field.default, bool):
        return bool
    for kind in (int, float, str):
        if isinstance(field.default, kind):
            return kind
    text = str(field.type)
    return float if "float" in text else int if "int" in text else str


def _field_parser(name: str, kind):
    """An argparse type for WaveConfig field ``name``: parse, bound, then ``WaveConfig.validate`` it."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = text  # the validator says what was expected ("an integer >= 1; got str 'x'")
        if kind is int and isinstance(value, int) and abs(value) > OPTION_INT_MAX:
            raise argparse.ArgumentTypeError(f"expected an integer of at most {OPTION_INT_MAX}; got {value}")
        try:
            WaveConfig(**{name: value}).validate()
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            for prefix in (f"{name} must be ", f"{name} must "):
                if msg.startswith(prefix):
                    msg = "expected " + msg[len(prefix) :]
                    break
            raise argparse.ArgumentTypeError(msg) from None
        return value

    parse.__name__ = {int: "integer", float: "number", str: "value"}[kind]
    return parse


def add_config_flags(parser, *, exclude=()):
    """One flag per :class:`WaveConfig` field (not in ``exclude``); unset flags leave no attribute."""
    defaults = WaveConfig()
    for field in dataclasses.fields(WaveConfig):
        if field.name in NOT_FLAGS or field.name in exclude:
            continue
        kind = _kind(field)
        default = getattr(defaults, field.name)
        help_ = f"{HELP.get(field.name, field.name.replace('_', ' '))} (default {default})"
        kw = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_}
        if kind is bool:
            parser.add_argument(flag_of(field.name), action=argparse.BooleanOptionalAction, **kw)
            continue
        if field.name in CHOICES:
            kw["metavar"] = "{" + ",".join(CHOICES[field.name]) + "}"
        parser.add_argument(flag_of(field.name), type=_field_parser(field.name, kind), **kw)


def given_fields(args) -> dict:
    """The WaveConfig fields given on the command line (flags left unset are absent)."""
    fields = [f.name for f in dataclasses.fields(WaveConfig) if f.name not in NOT_FLAGS]
    return {name: getattr(args, name) for name in fields if hasattr(args, name)}
