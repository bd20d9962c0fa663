"""What every ``convgen`` subcommand shares: the help formatter, argument types, the flags
that describe one convolution, and a PyTorch model's convolutions (``--torch-model``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..spec import ACTIVATIONS, DTYPE_RULES, DTYPES, LAYOUTS

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; shows a default only where there is one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if not switch and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _ints(text: str) -> Any:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {text!r}") from None
    return values[0] if len(values) == 1 else tuple(values)


def _padding(text: str) -> Any:
    return text if text in ("same", "valid") else _ints(text)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _bounded_int(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _bounded_int(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _bounded_int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """argparse type: a positive duration in seconds: ``90``, ``90s``, ``10m``, ``1.5h``."""
    value = text.strip().lower()
    scale = _DURATION_UNITS.get(value[-1:], None)
    try:
        seconds = float(value[:-1] if scale else value) * (scale or 1.0)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 10m or 1.5h, got {text!r}")
    return seconds


def _strategy(text: str) -> str:
    from ..tuner.strategies import STRATEGIES

    if text not in STRATEGIES:
        raise argparse.ArgumentTypeError(f"unknown strategy {text!r}; known: {', '.join(STRATEGIES)}")
    return text


_METAVARS = {"positive_int": "N", "nonnegative_int": "N", "int": "N", "positive_float": "SECONDS"}
_KINDS = {"positive_int": positive_int, "nonnegative_int": nonnegative_int, "positive_float": positive_float,
          "duration": duration, "int": int, "strategy": _strategy}


def add_options(group: Any, cls: type) -> None:
    """The flags of an options dataclass (:mod:`convgen.tuner.options`), from its fields: their
    defaults and help text are written once, there."""
    from ..tuner.options import cli_flags

    for flag, f in cli_flags(cls):
        kind, helptext = f.metadata.get("kind", ""), f.metadata["help"]
        if kind == "off_switch":
            group.add_argument(flag, dest=f.name, action="store_false", default=f.default, help=helptext)
            continue
        metavar = f.metadata.get("metavar") or _METAVARS.get(kind)
        extra = {"metavar": metavar} if metavar else {}
        if kind == "strategy":
            from ..tuner.strategies import STRATEGIES

            extra["choices"] = STRATEGIES
        group.add_argument(flag, dest=f.name, type=_KINDS.get(kind, str), default=f.default, help=helptext, **extra)


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """The flags that describe one convolution (or ``--layer`` for a built-in one)."""
    g = p.add_argument_group("workload", "either --layer NAME or the shape flags (-c, -k, --size, ...)")
    g.add_argument("--layer", help="a built-in layer, e.g. resnet50.r2_3x3 (list: convgen layers)")
    g.add_argument("-n", "--batch", type=int, help="batch size [1]")
    g.add_argument("-c", "--in-channels", type=int, help="input channels C")
    g.add_argument("-k", "--out-channels", type=int, help="filters K (output channels)")
    g.add_argument("--size", type=int, help="input height = width")
    g.add_argument("--height", type=int, help="input height H")
    g.add_argument("--width", type=int, help="input width W")
    g.add_argument("--kernel", type=_ints, help="filter size: R or R,S [3]")
    g.add_argument("--stride", type=_ints, help="stride: s or sh,sw [1]")
    g.add_argument("--padding", type=_padding, help="p | ph,pw | top,left,bottom,right | same | valid [0]")
    g.add_argument("--dilation", type=_ints, help="dilation: d or dh,dw [1]")
    g.add_argument("--groups", type=int, help="groups (= channels for depthwise) [1]")
    g.add_argument("--layout", choices=LAYOUTS, help="data layout; weights OIHW / HWIO [NCHW]")
    g.add_argument("--dtype", choices=DTYPES, help="the data's dtype [float32]")
    g.add_argument("--output-dtype", choices=sorted({o for _, outs, _ in DTYPE_RULES.values() for o in outs}),
                   help="the output's, where the data's dtype allows another (float32 -> bfloat16, or uint8/int8 "
                        "rounded and clamped; bfloat16 -> float32; 8-bit data: "
                        "int32 sums, or float32/uint8/int8 scaled by a per-channel scale input) [the data's default]")
    g.add_argument("--bias", action="store_true", default=None, help="add a per-channel bias")
    g.add_argument("--residual", action="store_true", default=None,
                   help="add a residual input (the output's shape) before the activation, as ResNet's skip")
    g.add_argument("--activation", choices=[a for a in ACTIVATIONS if a], help="fuse an activation")
    g.add_argument("--relu", action="store_true", default=None, help="fuse a ReLU (= --activation relu)")
    g.add_argument("--flip", action="store_true", default=None,
                   help="true convolution (flip the filter); default is the CNN cross-correlation")


def spec_from_args(args: argparse.Namespace) -> Any:
    """A ConvSpec from ``add_spec_args`` flags."""
    from ..spec import ConvSpec
    from ..workloads import layer

    fields: dict[str, Any] = {}
    if args.layer:
        fields = layer(args.layer).to_dict()
    if args.size is not None:
        fields["height"] = fields["width"] = args.size
    for name in ("batch", "in_channels", "out_channels", "height", "width", "kernel", "stride", "padding",
                 "dilation", "groups", "layout", "dtype", "output_dtype", "bias", "residual", "activation", "flip"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if args.relu:
        fields["activation"] = "relu"
    missing = [f for f in ("in_channels", "out_channels", "height", "width") if f not in fields]
    if missing:
        flags = {"in_channels": "-c", "out_channels": "-k", "height": "--size/--height", "width": "--size/--width"}
        raise ValueError(f"describe the convolution with --layer NAME or give {', '.join(flags[m] for m in missing)}")
    return ConvSpec.from_dict(fields)


def config_arg(text: str) -> dict:
    """A ``--config`` JSON object of knob values."""
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--config: not valid JSON ({e}): {text!r}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config: expected a JSON object of knob values like '{{\"tile_oc\": 8}}', got {text!r}")
    return config


#: The model importers the command line offers, one line each: ``flag: (function, metavar,
#: help)``. The function, ``"module:name"``, takes ``(source, input_shape, channels_last,
#: precision)`` (the flag's value, ``--input-shape`` or ``None``, not ``--nchw``,
#: ``--precision``) and returns the model's layers as :class:`convgen.workloads.ConvLayers`;
#: ``tune`` and ``layers`` offer every one.
IMPORTERS: dict[str, tuple[str, str, str]] = {
    "--torch-model": ("convgen.torch:import_layers", "PKG.MODULE:FACTORY",
                      "the convolutions of the PyTorch model FACTORY() builds (random weights are fine; put in "
                      "eval mode), e.g. convgen.torch.models:resnet50; needs --input-shape"),
}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def model_source(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(flag, value)`` of the model importer flag given, if any."""
    for flag in IMPORTERS:
        value = getattr(args, _dest(flag), None)
        if value:
            return flag, value
    return None


def model_layers(args: argparse.Namespace) -> Any:
    """The distinct convolutions of the model an importer flag names (:data:`IMPORTERS`)."""
    import importlib

    flag, source = model_source(args)
    module_name, _, name = IMPORTERS[flag][0].partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except ImportError as e:
        raise ValueError(f"{flag} needs {e.name}: pip install 'convgen[torch]'" if e.name == "torch"
                         else f"{flag}: {e}") from None
    shape = args.input_shape if isinstance(args.input_shape, tuple) or args.input_shape is None else (args.input_shape,)
    return function(source, shape, not args.nchw, args.precision)


def add_model_args(p: Any) -> None:
    """One flag per model importer (:data:`IMPORTERS`), ``--input-shape`` and ``--nchw``."""
    g = p.add_argument_group("models")
    for flag, (_, metavar, helptext) in IMPORTERS.items():
        g.add_argument(flag, dest=_dest(flag), metavar=metavar, help=helptext)
    g.add_argument("--input-shape", type=_shape, metavar="N,C,H,W", help="the model's input shape, e.g. 1,3,224,224")
    g.add_argument("--nchw", action="store_true",
                   help="NCHW kernels, as convgen.torch.optimize(..., channels_last=False) runs (default: NHWC)")
    g.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default="float32",
                   help="what the model's convolutions compute in, as optimize(..., precision=) runs them "
                        "(int8: u8 data, s8 weights, a float32 output; the u8 outputs of chained layers are "
                        "decided by calibration, in optimize)")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 1,3,224,224, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape
