"""What every ``convgen`` subcommand shares: the help formatter, argument types, the flags
that describe one convolution, and a PyTorch model's convolutions (``--torch-model``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; shows a default only where there is one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and "%(default)" not in text:
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
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="data layout; weights OIHW / HWIO [NCHW]")
    g.add_argument("--dtype", choices=["float32", "float16", "int8"], help="[float32]")
    g.add_argument("--bias", action="store_true", default=None, help="add a per-channel bias")
    g.add_argument("--residual", action="store_true", default=None,
                   help="add a residual input (the output's shape) before the activation, as ResNet's skip")
    g.add_argument("--activation", choices=["relu", "relu6"], help="fuse an activation")
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
                 "dilation", "groups", "layout", "dtype", "bias", "residual", "activation", "flip"):
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


def torch_model_layers(args: argparse.Namespace) -> Any:
    """The distinct convolutions of ``--torch-model`` at ``--input-shape``, as
    :func:`convgen.torch.conv_layers` gives them (counted)."""
    if not args.input_shape:
        raise ValueError("--torch-model needs --input-shape N,C,H,W (e.g. 1,3,224,224)")
    try:
        import torch

        import convgen.torch as ct
    except ImportError:
        raise ValueError("--torch-model needs PyTorch: pip install 'convgen[torch]'") from None
    model = ct.model_from_factory(args.torch_model)
    shape = args.input_shape if isinstance(args.input_shape, tuple) else (args.input_shape,)
    return ct.conv_layers(model, torch.randn(*shape), channels_last=not args.nchw)


def add_torch_model_args(p: Any) -> None:
    """``--torch-model``, ``--input-shape`` and ``--nchw`` (for ``tune`` and ``layers``)."""
    g = p.add_argument_group("PyTorch model")
    g.add_argument("--torch-model", metavar="PKG.MODULE:FACTORY",
                   help="the convolutions of the model FACTORY() builds (random weights are fine; put in eval "
                        "mode), e.g. convgen.torch.models:resnet50")
    g.add_argument("--input-shape", type=_shape, metavar="N,C,H,W", help="the model's input shape, e.g. 1,3,224,224")
    g.add_argument("--nchw", action="store_true",
                   help="NCHW kernels, as convgen.torch.optimize(..., channels_last=False) runs (default: NHWC)")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 1,3,224,224, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape
