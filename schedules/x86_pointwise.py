"""x86 1x1 convolutions on NHWC data: a GEMM ``[pixels x C] . [C x K]`` per image.

In NHWC a 1x1 convolution is a matrix product: each output pixel is a row of ``C`` input
channels times the ``C x K`` filter matrix. The micro-kernel is the direct template's
(:mod:`schedules.cpu`): a tile of ``tile_oh x tile_ow`` pixels by ``tile_oc`` channels
(whole vectors) of accumulators, one broadcast of an input channel per pixel and one FMA per
accumulator for each of the ``C`` steps, the weights packed once into ``K/tile_oc`` panels of
``C x tile_oc`` (one vector load per ``lanes`` filters per step, contiguous over ``C``)::

    accumulators = tile_oh * tile_ow * tile_oc / lanes      (AVX-512: 24-28 of the 32 zmm,
    live         = accumulators + tile_oc / lanes + 1        e.g. 7 pixels x 4 vectors)

What this template adds is the *order* of the work, which decides what the two threads of a
2-vCPU VM find in their caches inside a network rather than in a hot loop:

- ``channels``: the threads split the ``K/tile_oc`` weight panels; each keeps its panels (up
  to ``C x tile_oc x 4`` bytes: 512 KB for ``C = 2048, tile_oc = 64``) in its L2 and streams
  every pixel past them. Right when the weights are large (ResNet's stage 4: 2-4 MB of
  filters over 49 pixels): they are read once.
- ``pixels``: the threads split the rows; each streams every weight panel past its own rows.
  Right when the weights are small and the activations large (56x56 maps of 64-256
  channels: 0.8-3.2 MB of activations, 16-64 KB of weights): the rows a thread reads are the
  rows it wrote in the layer before (also split by rows), still in its own L2, and the output
  it writes stays there for the next layer.

Stride 2 (ResNet's projection shortcuts) reads every other pixel of every other row: the
broadcasts gather from a strided row, the weight stream is unchanged. No padding (a padded
1x1 convolution is served by ``x86.direct``). The epilogue (bias, residual, ReLU) runs on the
tile while it is in registers, as in ``x86.direct``.
"""

from __future__ import annotations

from typing import Any

from convgen.knobs import Config, Knob, Space
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import vectorize_inner
from .cpu import direct_loops, partition_config, pixel_tiles, register_fit, tile_registers
from .x86 import channel_tiles

#: weights at most this large (bytes) are streamed by every thread in the "pixels" order by
#: default: a quarter of a Zen 4/5 or Sapphire Rapids core's L2 (1-2 MB), so the panels and
#: the thread's rows (in, out) stay in it together
PIXELS_WEIGHTS_BYTES = 256 * 1024


class PointwiseX86(Template, name="x86.pointwise", version=1, families=("x86",), dtypes=("float32", "bfloat16"),
                   priority=12):
    """1x1 convolution as a register-blocked GEMM over NHWC pixels, split by channels or by rows."""

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.kernel != (1, 1) or spec.groups != 1:
            return "not a 1x1 convolution without groups"
        if spec.layout != "NHWC":
            return "NCHW data (x86.direct re-lays it out in channel blocks)"
        if any(spec.padding):
            return "a padded 1x1 convolution (x86.direct serves it)"
        return None

    def channel_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        return config["tile_oc"]

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        return config["tile_oc"], spec.in_channels

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        ob = config["tile_oc"]
        return lambda h, w, i, o: (o // ob, h, w, i, o % ob)  # K/ob panels of C x ob, contiguous over C

    def space(self, spec: ConvSpec, target: Target) -> Space:
        lanes, regs = target.vector_lanes, target.registers
        tile_oc = channel_tiles(spec.out_channels, lanes)
        tile_ow = pixel_tiles(spec.out_width, regs - 2)
        tile_oh = pixel_tiles(spec.out_height, regs - 2)

        def fits(config: Config) -> str | None:
            return register_fit(target, *tile_registers(config, lanes))

        return Space(self.name, self.version, (
            Knob("tile_oc", tile_oc, "output channels per register tile (whole vectors)"),
            Knob("tile_ow", tile_ow, "output pixels per row in the register tile"),
            Knob("tile_oh", tile_oh, "output rows in the register tile"),
            Knob("order", ("channels", "pixels"), "what the threads split: weight panels or rows (module docstring)"),
        ), fits)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        lanes = target.vector_lanes
        space = self.space(spec, target)

        # The most accumulators among tiles that issue at least 1.5 FMAs per load (v weight
        # vectors and p pixel broadcasts per step: v*p FMAs for v + p loads), fitting the
        # registers without the FMA's memory operand; then fewer vectors, then longer rows.
        # AVX-512: 2 vectors x 14 pixels (28 + 2 + 1 registers); AVX2: 2 x 6 (12 + 2 + 1).
        # Measured with the tuner's cache flush on a 2-vCPU Zen 5 over 8 ResNet-50 and
        # MobileNet-v2 1x1 layers: 2 vectors x 7-14 pixels won 7 of 8 (12 sampled configs
        # each); 4 x 6, which issues more FMAs per load, ran 5-35% slower.
        # Where no tile reaches 1.5 (AVX2 on rows of 56: 2 x 6 pixels do not divide them), the
        # most FMAs per load, as x86.direct's default.
        def vp(c: Config) -> tuple[int, int]:
            return c["tile_oc"] // lanes, c["tile_oh"] * c["tile_ow"]

        tiles = [c for c in space if c["order"] == "channels"
                 and register_fit(target, *tile_registers(c, lanes), memory_operand=False) is None]
        busy = [c for c in tiles if vp(c)[0] * vp(c)[1] >= 1.5 * sum(vp(c))]
        if busy:
            best = max(busy, key=lambda c: (vp(c)[0] * vp(c)[1], -vp(c)[0], c["tile_ow"]))
        else:
            best = max(tiles, key=lambda c: (vp(c)[0] * vp(c)[1] / sum(vp(c)), c["tile_ow"]))
        weights = 4 * spec.in_channels * spec.out_channels
        rows = spec.batch * spec.out_height // best["tile_oh"]
        order = "pixels" if weights <= PIXELS_WEIGHTS_BYTES and rows >= 8 else "channels"
        return dict(best, order=order)

    def build_options(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        return partition_config(spec, config)

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        accumulators, vectors = tile_registers(config, target.vector_lanes)
        return {"live_registers": accumulators + vectors + 1, "accumulators": accumulators,
                "weight_kib": 4 * spec.in_channels * spec.out_channels / 1024,
                "panel_kib": 4 * spec.in_channels * config["tile_oc"] / 1024,
                "rows": spec.batch * spec.out_height / config["tile_oh"]}

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        # the shared CPU loop nest with the whole reduction over C under the tile (no channel
        # blocks: NHWC data is read as given), in the order the config says
        nest = dict(config, tile_ic=spec.in_channels, reduce_order="ic_kh_kw", unroll_kw=False)
        loops = direct_loops(sch, spec, nest, pack_map=self.weight_pack(spec, target, config),
                             data_lanes=target.vector_lanes, oc_parts=(config["tile_oc"],),
                             ic_parts=(spec.in_channels,), order=config["order"])
        sch.vectorize(loops["oc"][0])
        vectorize_inner(sch, sch.get_sblock("out"), target.vector_lanes)
        sch.decompose_reduction(sch.get_sblock("conv"), loops["reduction"][0])


register(PointwiseX86())
