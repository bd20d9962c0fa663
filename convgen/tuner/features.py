"""Feature vectors for the cost model: a template's knob-derived numbers plus the workload's.

The workload part (log sizes, kernel, stride, groups, arithmetic intensity) lets one model
rank configs of different layers, which is what makes transfer between layers work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..knobs import Config
from ..spec import ConvSpec
from ..target import Target


def spec_features(spec: ConvSpec) -> dict[str, float]:
    """Numbers describing the workload (shared by every config of it)."""
    return {
        "w_log_c": math.log2(spec.in_per_group),
        "w_log_k": math.log2(spec.out_per_group),
        "w_log_oh": math.log2(spec.out_height),
        "w_log_ow": math.log2(spec.out_width),
        "w_kh": spec.kernel[0],
        "w_kw": spec.kernel[1],
        "w_stride": spec.stride[0],
        "w_groups": math.log2(spec.groups),
        "w_log_flops": math.log2(spec.flops),
        "w_intensity": spec.arithmetic_intensity(),
        "w_nhwc": float(spec.layout == "NHWC"),
    }


class Featurizer:
    """Maps configs of one (spec, template) to fixed-length vectors (keys fixed per template).

    Knobs become numbers (booleans 0/1, categorical values their index in the knob's
    list), then the template's derived features and the workload's are appended.
    """

    def __init__(self, spec: ConvSpec, target: Target, template: Any) -> None:
        self.spec, self.target, self.template = spec, target, template
        self.space = template.space(spec, target)
        self._spec_feats = spec_features(spec)
        self.keys = sorted(self._dict(template.default(spec, target)))

    def _dict(self, config: Config) -> dict[str, float]:
        f = dict(self._spec_feats)
        for knob in self.space.knobs:
            v = config[knob.name]
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            f[f"k_{knob.name}"] = float(v) if numeric else float(knob.values.index(v))
        f.update(self.template.features(self.spec, self.target, config))
        return f

    def __call__(self, configs: list[Config]) -> np.ndarray:
        rows = []
        for c in configs:
            d = self._dict(c)
            rows.append([float(d.get(k, 0.0)) for k in self.keys])
        return np.asarray(rows, dtype=np.float32).reshape(len(configs), len(self.keys))
