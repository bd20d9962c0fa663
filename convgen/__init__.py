"""convgen: tuned, hardware-targeted 2D convolution kernels generated with Apache TVM.

>>> import convgen
>>> spec = convgen.ConvSpec(in_channels=64, out_channels=64, height=56, width=56, kernel=3, padding=1)
>>> k = convgen.build(spec, target="host")      # compile (tuned records if any, else default)
>>> y = k(x, w)                                 # numpy in, numpy out
>>> k.export("conv.so"); k2 = convgen.load("conv.so")

Importing convgen is cheap and does not load the TVM compiler: :func:`load` and the
runtime need only the TVM runtime; :func:`build` and :func:`tune` import the compiler
side when first called.
"""

from __future__ import annotations

from .errors import ConfigError, KernelError, SpecError, TargetError
from .knobs import Knob, Space
from .runtime import Kernel, PackedWeights, aligned_empty, load, set_num_threads
from .spec import ConvSpec
from .target import Target, all_targets, get_target
from .version import __version__


def build(spec, target="host", config=None, **kwargs):
    """Compile ``spec`` for ``target``; see :func:`convgen.builder.build`."""
    from .builder import build as _build

    return _build(spec, target, config, **kwargs)


def tune(specs, target="host", **kwargs):
    """Autotune one spec or a list; see :func:`convgen.tuner.tune`."""
    from .tuner import tune as _tune

    return _tune(specs, target, **kwargs)


__all__ = [
    "ConvSpec", "SpecError", "Target", "TargetError", "Kernel", "KernelError", "ConfigError",
    "Knob", "Space", "PackedWeights", "build", "tune", "load", "set_num_threads", "aligned_empty", "all_targets",
    "get_target", "__version__",
]
