"""The generic CPU template: correct for every spec, reasonably fast, never specialised.

It serves what the specialised templates cannot (odd channel counts, depthwise with a
channel multiplier, int8 on a float-only template, ...). Loop nest, NCHW::

    parallel n*oc:                     # independent output planes across cores
      for oh:
        acc[ow] = 0                    # one output row lives in L1
        for ic, kh, kw:
          for ow (vectorized):         # contiguous data when stride is 1
            acc[ow] += data[..] * w[oc, ic, kh, kw]
        out[n, oc, oh, :] = epilogue(acc)

NHWC swaps the roles: the row is ``ow x oc`` and ``oc`` is the contiguous axis.
"""

from __future__ import annotations

from typing import Any

from convgen.knobs import Config, Knob, Space
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import has_block, parallel_outer, spatial_loops, vectorize_inner


class GenericCPU(Template, name="cpu.generic", version=1, families=("x86", "arm"), priority=-100, fallback=True):
    """Parallel rows, vectorized innermost axis where it divides; serves every spec."""

    # priority: the last resort

    def _inner_extent(self, spec: ConvSpec) -> int:
        return spec.out_width if spec.layout == "NCHW" else spec.out_channels

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        return None

    def space(self, spec: ConvSpec, target: Target) -> Space:
        can_vec = self._inner_extent(spec) % target.vector_lanes == 0 and spec.dtype == "float32"
        return Space(
            self.name,
            self.version,
            (
                Knob("vectorize", (False, True) if can_vec else (False,), "vectorize the innermost output axis"),
                Knob("unroll_kw", (False, True), "unroll the kernel-width loop"),
            ),
        )

    def default(self, spec: ConvSpec, target: Target) -> Config:
        return {"vectorize": max(self.space(spec, target)["vectorize"].values), "unroll_kw": spec.kernel[1] <= 3}

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        lanes = target.vector_lanes
        if has_block(sch, "data_pad"):
            pad = sch.get_sblock("data_pad")
            parallel_outer(sch, pad, 2)
            vectorize_inner(sch, pad, lanes)
        conv = sch.get_sblock("conv")
        out = sch.get_sblock("out")
        L = spatial_loops(sch, spec, conv)
        if spec.layout == "NCHW":
            outer, row, inner = (L["n"], L["oc"]), L["oh"], L["ow"]
        else:
            outer, row, inner = (L["n"], L["oh"]), L["ow"], L["oc"]
        sch.reorder(*outer, row, L["ic"], L["kh"], L["kw"], inner)
        sch.parallel(sch.fuse(*outer))
        sch.reverse_compute_at(out, row)
        if config["vectorize"]:
            _, vec = sch.split(inner, [None, lanes])
            sch.vectorize(vec)
            vectorize_inner(sch, out, lanes)
        if config["unroll_kw"]:
            sch.unroll(L["kw"])
        sch.decompose_reduction(conv, L["ic"])


register(GenericCPU())
