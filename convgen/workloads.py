"""Workloads: the layers a campaign tunes, wherever they come from.

- :class:`ConvLayers`: ``{name: ConvSpec}``, one entry per distinct workload, each counted;
  what every source of layers gives :func:`convgen.tune` (a model importer such as
  :func:`convgen.torch.conv_layers`, the CLI's presets and workload files), so a workload
  listed twice is tuned once and weighted twice, by one rule.
- Built-in presets: the conv layers of common CNNs at batch 1, 224x224. A layer is named
  ``preset.layer``, e.g. ``resnet50.r2_3x3``; ``convgen layers`` lists them.
- Workload files: JSON or TOML, a list of spec dicts (``[{"in_channels": 64, ...}, ...]``, or
  in TOML ``[[layer]]`` tables), each optionally with a ``name``.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from typing import Any, Iterable

from .spec import ConvSpec, SpecError


class ConvLayers(dict):
    """``{name: ConvSpec}``, one entry per distinct workload (under the first name it was
    added with), with ``counts[name]`` (how often it was added: the convolutions of a model
    that compute it) and ``paths[name]`` (every name it was added under).
    :func:`convgen.tune` tunes each once and weights it by its count.

    A model importer is a function that returns one: ``layers = ConvLayers();
    layers.add(path, spec)`` per convolution, in the model's order.
    """

    def __init__(self, named: Iterable[tuple[str, ConvSpec]] = ()) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.paths: dict[str, list[str]] = {}
        self._first: dict[str, str] = {}  # spec key -> the name it is listed under
        for name, spec in named:
            self.add(name, spec)

    def add(self, name: str, spec: ConvSpec) -> str:
        """Count ``spec`` under ``name``; returns the name it is listed under (an earlier one
        when the same workload was added before)."""
        if not isinstance(spec, ConvSpec):
            raise TypeError(f"{name}: expected a ConvSpec, got {type(spec).__name__}")
        first = self._first.setdefault(spec.key, name)
        if first == name and name not in self:
            self[name] = spec
            self.counts[name], self.paths[name] = 0, []
        elif first == name:
            raise ValueError(f"{name!r} names two different workloads")
        self.counts[first] += 1
        self.paths[first].append(name)
        return first

    def merged(self) -> dict[str, list[str]]:
        """``{listed name: [the other names merged into it]}`` for the workloads added more than once."""
        return {name: paths[1:] for name, paths in self.paths.items() if len(paths) > 1}


def _c(cin: int, cout: int, size: int, k: int = 1, s: int = 1, groups: int = 1) -> ConvSpec:
    # "same"-style symmetric padding k//2, as the networks use
    return ConvSpec(in_channels=cin, out_channels=cout, height=size, width=size, kernel=k, stride=s,
                    padding=k // 2, groups=groups)


def _dw(c: int, size: int, s: int = 1) -> ConvSpec:
    return _c(c, c, size, 3, s, groups=c)


PRESETS: dict[str, dict[str, ConvSpec]] = {
    "resnet50": {
        "conv1": _c(3, 64, 224, 7, 2),
        "r2_1x1_reduce": _c(256, 64, 56),
        "r2_3x3": _c(64, 64, 56, 3),
        "r2_1x1_expand": _c(64, 256, 56),
        "r3_3x3_s2": _c(128, 128, 56, 3, 2),
        "r3_3x3": _c(128, 128, 28, 3),
        "r3_1x1_reduce": _c(512, 128, 28),
        "r3_1x1_expand": _c(128, 512, 28),
        "r4_3x3": _c(256, 256, 14, 3),
        "r4_1x1_reduce": _c(1024, 256, 14),
        "r4_1x1_expand": _c(256, 1024, 14),
        "r5_3x3": _c(512, 512, 7, 3),
        "r5_1x1_reduce": _c(2048, 512, 7),
        "r5_1x1_expand": _c(512, 2048, 7),
        # the first block of each stage (torchvision v1.5: stride on the 3x3) and the
        # projection shortcuts, so that the preset holds every convolution of the network
        "r2_1x1_first": _c(64, 64, 56),
        "r3_1x1_first": _c(256, 128, 56),
        "r3_down": _c(256, 512, 56, 1, 2),
        "r4_1x1_first": _c(512, 256, 28),
        "r4_3x3_s2": _c(256, 256, 28, 3, 2),
        "r4_down": _c(512, 1024, 28, 1, 2),
        "r5_1x1_first": _c(1024, 512, 14),
        "r5_3x3_s2": _c(512, 512, 14, 3, 2),
        "r5_down": _c(1024, 2048, 14, 1, 2),
    },
    "resnet18": {
        "conv1": _c(3, 64, 224, 7, 2),
        "r2_3x3": _c(64, 64, 56, 3),
        "r3_3x3_s2": _c(64, 128, 56, 3, 2),
        "r3_3x3": _c(128, 128, 28, 3),
        "r3_down": _c(64, 128, 56, 1, 2),
        "r4_3x3_s2": _c(128, 256, 28, 3, 2),
        "r4_3x3": _c(256, 256, 14, 3),
        "r4_down": _c(128, 256, 28, 1, 2),
        "r5_3x3_s2": _c(256, 512, 14, 3, 2),
        "r5_3x3": _c(512, 512, 7, 3),
        "r5_down": _c(256, 512, 14, 1, 2),
    },
    "mobilenet_v1": {
        "conv0": _c(3, 32, 224, 3, 2),
        "dw32_112": _dw(32, 112),
        "pw32_64_112": _c(32, 64, 112),
        "dw64_112_s2": _dw(64, 112, 2),
        "dw128_56": _dw(128, 56),
        "dw256_28": _dw(256, 28),
        "dw512_14": _dw(512, 14),
        "pw512_512_14": _c(512, 512, 14),
        "dw1024_7": _dw(1024, 7),
    },
    "mobilenet_v2": {
        "conv0": _c(3, 32, 224, 3, 2),
        "dw32_112": _dw(32, 112),
        "pw32_16_112": _c(32, 16, 112),
        "pw16_96_112": _c(16, 96, 112),
        "dw96_112_s2": _dw(96, 112, 2),
        "pw96_24_56": _c(96, 24, 56),
        "pw24_144_56": _c(24, 144, 56),
        "dw144_56": _dw(144, 56),
        "pw144_24_56": _c(144, 24, 56),
        "dw144_56_s2": _dw(144, 56, 2),
        "pw144_32_28": _c(144, 32, 28),
        "pw32_192_28": _c(32, 192, 28),
        "dw192_28": _dw(192, 28),
        "pw192_32_28": _c(192, 32, 28),
        "dw192_28_s2": _dw(192, 28, 2),
        "pw192_64_14": _c(192, 64, 14),
        "pw64_384_14": _c(64, 384, 14),
        "dw384_14": _dw(384, 14),
        "pw384_64_14": _c(384, 64, 14),
        "pw384_96_14": _c(384, 96, 14),
        "pw96_576_14": _c(96, 576, 14),
        "dw576_14": _dw(576, 14),
        "pw576_96_14": _c(576, 96, 14),
        "dw576_14_s2": _dw(576, 14, 2),
        "pw576_160_7": _c(576, 160, 7),
        "pw160_960_7": _c(160, 960, 7),
        "dw960_7": _dw(960, 7),
        "pw960_160_7": _c(960, 160, 7),
        "pw960_320_7": _c(960, 320, 7),
        "pw320_1280_7": _c(320, 1280, 7),
    },
}


def preset(name: str) -> dict[str, ConvSpec]:
    """The layers of a built-in network, by layer name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def layer(name: str) -> ConvSpec:
    """One built-in layer, ``preset.layer`` (e.g. ``resnet50.r2_3x3``)."""
    net, _, lname = name.partition(".")
    layers = preset(net)
    if lname not in layers:
        raise ValueError(f"unknown layer {lname!r} in {net}; known: {', '.join(layers)}")
    return layers[lname]


def all_layers() -> dict[str, ConvSpec]:
    """Every built-in layer by full name."""
    return {f"{net}.{lname}": s for net, layers in PRESETS.items() for lname, s in layers.items()}


def load_workload_file(path: str) -> dict[str, ConvSpec]:
    """Specs from a JSON or TOML workload file, by name (``layer<i>`` when unnamed)."""
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file (a workload file is JSON or TOML)")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        if path.endswith(".toml"):
            data: Any = tomllib.loads(raw.decode())
            data = data.get("layer", data.get("layers", []))
        else:
            data = json.loads(raw)
            if isinstance(data, dict):
                data = data.get("layers", [data])
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot parse workload file: {e}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of conv specs")
    out: dict[str, ConvSpec] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {i} is not a table/object")
        entry = dict(entry)
        name = str(entry.pop("name", f"layer{i}"))
        try:
            out[name] = ConvSpec.from_dict(entry)
        except (SpecError, TypeError) as e:
            raise ValueError(f"{path}: entry {i} ({name}): {e}") from None
    return out
