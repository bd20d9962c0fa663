"""x86 templates (AVX2, AVX-512): blocked-channel direct convolution and depthwise.

Register budget of the micro-kernel (``x86.direct``)
------------------------------------------------------
The innermost loops keep a tile of ``tile_oh x tile_ow`` output pixels by ``tile_oc``
output channels in vector registers. Each step of the reduction loads ``tile_oc/lanes``
weight vectors, broadcasts one input value per pixel and issues one FMA per accumulator::

    accumulators = tile_oh * tile_ow * tile_oc / lanes
    live         = accumulators + tile_oc / lanes (weights) + 1 (broadcast)  <= registers

The constraint allows one register over the file: an x86 FMA can read one weight vector
as its memory operand. AVX2 has 16 ymm (8 lanes): ``tile_oc=8`` allows up to 15 pixels
(15+1+1), ``tile_oc=16`` 7 pixels (14+2+1 = 17), ``tile_oc=32`` 3. AVX-512 has 32 zmm
(16 lanes): ``tile_oc=16`` x 31 pixels, ``tile_oc=32`` x 15, ``tile_oc=64`` x 6. With two
FMA ports and a 4-cycle latency at least 8 independent accumulators keep both ports busy;
the default (see ``DirectX86.default``) then maximises FMAs per load.

Layouts
-------
Vectorizing over output channels needs channels innermost: the padded data is written as
``N C/ib H W ib`` (NCHW input; NHWC already has channels innermost), the weights are packed
to ``K/ob C/ib R S ib ob`` (once, by the library's ``pack_weights``, for the
``main_prepacked`` entry point; ``main`` packs them on every call: ``K*C*R*S`` floats,
small next to the ``K*C*R*S*OH*OW`` multiply-adds), and the reduction's result tile is ``ob``-innermost so
the accumulators are whole vectors. The epilogue (bias, residual, ReLU, back to the user's
layout) runs under the pixel-tile loop while the tile is still in registers.

Channel counts that are not a multiple of the lanes (24 filters on AVX-512's 16 lanes) are
padded inside the kernel: the compute appends zero filters up to a whole number of
``tile_oc`` blocks (:func:`convgen.compute.padded_channels`), so the packed weights carry
the padding, the last block's tail lanes compute zeros, and the epilogue stores only the
real channels. 24 filters in 2 blocks of 16 do 33% more FMAs than needed; the generic
template, which cannot vectorize over channels at all, ran such layers at ~6% of peak.
"""

from __future__ import annotations

import math
from typing import Any

from convgen.knobs import Config, Knob, Space, divisors
from convgen.spec import DTYPE_BYTES, ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import channels_innermost, has_block, pack_weights, parallel_outer, spatial_loops, vectorize_inner
from .cpu import (LOOP_PARTITION, direct_loops, guard_dead_taps, partition_config, pixel_tiles, prefetch_direct,
                  register_fit, tile_knobs, tile_registers)


def pad_places(spec: ConvSpec) -> tuple[str, ...]:
    """Where a depthwise kernel may make its padded input (see :class:`DepthwiseX86`): NHWC
    data without padding has no such stage (the kernel reads the caller's array)."""
    if spec.layout == "NCHW" or any(spec.padding):
        return ("copy", "row", "tile")
    return ("copy",)


def channel_tiles(channels: int, lanes: int) -> tuple[int, ...]:
    """Channel tiles of 1, 2 and 4 vectors: those dividing ``channels`` when the lanes do;
    otherwise those up to the channels rounded up to whole vectors (the compute pads)."""
    if channels % lanes == 0:
        return tuple(m * lanes for m in (1, 2, 4) if channels % (m * lanes) == 0)
    whole = -(-channels // lanes) * lanes
    return tuple(m * lanes for m in (1, 2, 4) if m * lanes <= whole)


class DirectX86(Template, name="x86.direct", version=1, families=("x86",), dtypes=("float32", "bfloat16"),
                priority=10):
    """Direct convolution, output channels in vector lanes, a register tile of pixels."""

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.groups > 1 and spec.out_per_group % target.vector_lanes:
            # padding would have to go inside every group: the generic template serves these
            return f"output channels per group ({spec.out_per_group}) not a multiple of {target.vector_lanes} lanes"
        return None

    def channel_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        return config["tile_oc"]

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        return config["tile_oc"], config["tile_ic"]

    def space(self, spec: ConvSpec, target: Target) -> Space:
        lanes, regs = target.vector_lanes, target.registers
        tile_oc = channel_tiles(spec.out_per_group, lanes)
        tile_ic = tuple(divisors(spec.in_per_group, upto=64))
        tile_ow = pixel_tiles(spec.out_width, regs - 2)
        tile_oh = pixel_tiles(spec.out_height, 4, least=2)

        def fits(config: Config) -> str | None:
            return register_fit(target, *tile_registers(config, lanes))

        return Space(self.name, self.version, tile_knobs(tile_oc, tile_ic, tile_ow, tile_oh), fits)

    def build_options(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        return partition_config(spec, config)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        lanes = target.vector_lanes
        space = self.space(spec, target)
        # Each reduction step loads v weight vectors and broadcasts p pixels for v*p FMAs.
        # Loads, not FMAs, limit the micro-kernel (on AMD Zen a 256-bit broadcast costs as
        # much as an FMA issue slot), so the default maximises FMAs per load, v*p / (v + p),
        # within the register file (v*p accumulators + v weights + 1 broadcast <= registers).
        # AVX2 (16 registers): 2 vectors of channels x 2x2 pixels (8 FMAs per 6 loads);
        # AVX-512 (32): 4 vectors (64 channels) x 2x2 pixels (16 FMAs per 8 loads) where the
        # channels divide, else 2 x 7 or so. Ties go to square pixel tiles, whose input rows
        # overlap under a 3x3 window.
        def score(c: Config) -> tuple:
            v, p = c["tile_oc"] // lanes, c["tile_oh"] * c["tile_ow"]
            return (v * p / (v + p), -abs(c["tile_oh"] - c["tile_ow"]), c["tile_ow"])

        tiles = [c for c in space if c["reduce_order"] == "ic_kh_kw" and c["unroll_kw"] and c["tile_ic"] == space["tile_ic"].values[-1]
                 and register_fit(target, *tile_registers(c, lanes), memory_operand=False) is None]
        best = max(tiles, key=score)
        # the largest channel block up to 64: the packed data of one pixel stays in 4 cache lines
        return dict(best, unroll_kw=spec.kernel[1] <= 3)

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        lanes = target.vector_lanes
        accumulators, vectors = tile_registers(config, lanes)
        f = {"live_registers": accumulators + vectors + 1, "accumulators": accumulators}
        # bytes of packed weights one output tile streams (the L1/L2 working set)
        f["weight_tile_kib"] = 4 * config["tile_oc"] * spec.in_per_group * spec.kernel[0] * spec.kernel[1] / 1024
        f["tasks"] = spec.batch * -(-spec.out_channels // config["tile_oc"]) * (spec.out_height // config["tile_oh"])
        return f

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        ob, ib = config["tile_oc"], config["tile_ic"]
        if spec.layout == "NCHW":
            return lambda o, i, h, w: (o // ob, i // ib, h, w, i % ib, o % ob)
        return lambda h, w, i, o: (o // ob, i // ib, h, w, i % ib, o % ob)

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        # the shared CPU loop nest (schedules/cpu.py), output channels in vector lanes
        loops = direct_loops(sch, spec, config, pack_map=self.weight_pack(spec, target, config),
                             data_lanes=target.vector_lanes, oc_parts=(config["tile_oc"],),
                             ic_parts=(config["tile_ic"],), prefetch=self.prefetch)
        sch.vectorize(loops["oc"][0])
        if spec.layout == "NHWC":
            vectorize_inner(sch, sch.get_sblock("out"), target.vector_lanes)
        sch.decompose_reduction(sch.get_sblock("conv"), loops["reduction"][0])

    #: prefetch the next weight panel (:class:`DirectPrefetchX86`)
    prefetch = False

    def finish(self, func: Any, spec: ConvSpec, target: Target, config: Config) -> Any:
        # dilated layers on small maps: the taps a tile reads only padding with are skipped
        func = guard_dead_taps(func, spec, config)
        return prefetch_direct(func, spec, config) if self.prefetch else func


#: weights from this size up are worth prefetching, on output maps of at most
#: :data:`PREFETCH_MAX_PIXELS` pixels: a layer's weights are read once per forward, from
#: memory (ResNet-50 holds 100 MB of them), and the first register tile of each panel waits
#: for it. Measured on the Emerald Rapids Xeon (2 threads, weights evicted before each call):
#: ResNet-50's and MobileNet-v2's layers with 0.6-9.4 MB of weights on 7x7 and 14x14 maps
#: 0.70-0.94x the time (tuned, inside ResNet-50, 10 of its 12 such specs ran 5-25% faster)
PREFETCH_WEIGHTS_BYTES = 512 * 1024
#: output pixels per image up to which the direct variants serve: each image streams every
#: panel past its pixel tiles, and on larger maps those tiles' work hides the panel's fetch
#: while the prefetches cost the tile loop: the defaults on 512 -> 256 1x1 at 28x28 and 128
#: channels 3x3 stride 2 at 56x56 (0.5-0.6 MB of weights) ran 1.03x and 1.14x
#: ``x86.pointwise``'s / ``x86.direct``'s time (tuned, inside ResNet-50, 1.20x and 1.12x)
PREFETCH_MAX_PIXELS = 14 * 14


class PrefetchNextPanel:
    """A direct template's variant whose threads prefetch the next weight panel while they
    compute on this one (:func:`schedules.cpu.prefetch_next_panel`): mixed in before the
    template it varies (``class DirectPrefetchX86(PrefetchNextPanel, DirectX86, ...)``).

    Serves the layers with at least :data:`PREFETCH_WEIGHTS_BYTES` of weights and output
    maps of at most :data:`PREFETCH_MAX_PIXELS` pixels, with the template's space less the
    tiles that need the FMA's memory operand (one register over the file): with the
    prefetches' address arithmetic in the loop LLVM loads every weight vector into a
    register and spills accumulators (2048 -> 512 channels 1x1 at 7x7, 28 accumulators: 1.5x
    the time with the weights in cache). Its priority, above the template's, makes it the default where it serves.
    """

    prefetch = True

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        size, pixels = weight_bytes(spec), spec.out_height * spec.out_width
        if size < PREFETCH_WEIGHTS_BYTES:
            return f"{size // 1024} KiB of weights: prefetching pays from {PREFETCH_WEIGHTS_BYTES // 1024} KiB"
        if pixels > PREFETCH_MAX_PIXELS:
            return f"{pixels} output pixels per image: prefetching pays up to {PREFETCH_MAX_PIXELS}"
        return super().supports(spec, target)

    def space(self, spec: ConvSpec, target: Target) -> Space:
        step = getattr(self, "step", None)  # an instruction's accumulator lanes (x86_dot), or the target's
        lanes = step.lanes if step is not None else target.vector_lanes

        def fits(config: Config) -> str | None:
            return register_fit(target, *tile_registers(config, lanes), memory_operand=False)

        return Space(self.name, self.version, super().space(spec, target).knobs, fits)


class DirectPrefetchX86(PrefetchNextPanel, DirectX86, name="x86.direct_prefetch", version=1, families=("x86",),
                        dtypes=("float32", "bfloat16"), priority=13):
    """``x86.direct`` whose threads prefetch the next weight panel while they compute on this one.

    ``x86.direct``'s threads each own whole weight panels (``C x R x S x tile_oc``: 0.6-1.2
    MB for 512 channels 3x3) and stream the pixel tiles past them; inside a network the first
    tile of each panel waits for it to come from memory. On 2 threads of the Emerald Rapids
    Xeon ResNet-50's 512-channel 3x3 layer at 7x7 (9.4 MB of weights) took 1.5x its time with
    the weights in cache (940 vs 620 us). Here each step of the reduction also prefetches
    its share of the next panel into L2: a few ``prefetcht1`` per block of ``tile_ic``
    channels, spread over the panel's tiles (:class:`PrefetchNextPanel`).

    The default for such layers but Winograd's (priority 13: above ``x86.direct`` and
    ``x86.pointwise``, below a ``x86.winograd`` that ranks itself up). The defaults against
    ``x86.pointwise``'s on six 1x1 layers with 0.6-4 MB of weights (ResNet-50's stages 3-4,
    MobileNet-v2's last two; weights evicted before each call, Emerald Rapids, 2 threads):
    0.70-0.94x the time with AVX-512, 0.75-0.97x with AVX2 code (``x86-avx2``) on the same CPU.
    """


def weight_bytes(spec: ConvSpec) -> int:
    """Bytes of ``spec``'s weights in their own dtype."""
    return DTYPE_BYTES[spec.filter_dtype] * math.prod(spec.weight_shape)


class DepthwiseX86(Template, name="x86.depthwise", version=2, families=("x86",), dtypes=("float32", "bfloat16"),
                   priority=20):
    """Depthwise (one input channel per group, multiplier 1): channels in vector lanes.

    Each FMA needs its own data vector (no broadcast reuse across channels), so the kernel
    is bound by loads, not FMAs: the tile is ``tile_ow`` pixels x ``tile_c`` channels with
    the ``R*S`` weight vectors reused across the pixels of the tile.

    With ~2 FLOPs per byte of input, the padded (for NCHW also channel-blocked) copy of the
    input costs as much as the convolution when it is a pass of its own; ``pad`` places it.
    ``copy`` makes it in one parallel pass before the convolution; ``row`` makes the ``R``
    padded input rows an output row reads inside the parallel loop (a per-task buffer,
    still in L1 when the FMAs read it; each input row is made ``R/stride`` times); ``tile``
    makes only a register tile's window. Measured on a 2-vCPU Zen 4, against ``copy`` with
    the other knobs at their defaults: NHWC ``row`` 0.76x (128 channels at 56x56) to 3.5x
    (96 channels at 112x112, stride 2); NCHW stride 1 ``row`` 0.75-0.98x (the blocked copy is
    a gather across channel planes, repeated ``R`` times), stride 2 1.2-1.4x. Tuned (24-56
    trials per layer), the NHWC MobileNet layers chose ``tile`` for 13 of 15, the NCHW ones
    ``copy`` for 8 of the 10 stride-1 layers and ``row``/``tile`` for 4 of the 5 stride-2
    ones; the defaults follow.
    """

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if not (spec.is_depthwise and spec.out_per_group == 1):
            return "not depthwise with channel multiplier 1"
        return None  # a channel count off the lanes is padded (input and output channels)

    def channel_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        return config["tile_c"]

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        return config["tile_c"], 1

    def space(self, spec: ConvSpec, target: Target) -> Space:
        lanes, regs = target.vector_lanes, target.registers
        tile_c = channel_tiles(spec.out_channels, lanes)
        tile_ow = tuple(divisors(spec.out_width, upto=regs - 2))

        def fits(config: Config) -> str | None:
            vec = config["tile_c"] // lanes
            return register_fit(target, config["tile_ow"] * vec, vec)

        return Space(
            self.name,
            self.version,
            (
                Knob("tile_c", tile_c, "channels per register tile"),
                Knob("tile_ow", tile_ow, "output pixels per register tile"),
                Knob("unroll_kw", (False, True), "unroll the kernel-width loop"),
                Knob("pad", pad_places(spec), "where the padded input is made: one pass (copy), per output row, per tile"),
            ),
            fits,
        )

    def default(self, spec: ConvSpec, target: Target) -> Config:
        lanes, regs = target.vector_lanes, target.registers
        space = self.space(spec, target)
        pad = self.default_pad(spec, space)
        if spec.kernel == (1, 1) and spec.layout == "NHWC" and not any(spec.padding):
            # A 1x1 depthwise (a per-channel scale: convgen.torch's int8 quantizer) has one
            # weight vector per channel block and so nothing to reuse across the pixels of a
            # tile, while each pixel's channels are one contiguous run of NHWC memory: the
            # widest channel tile and one pixel read and write it as such. Measured on the
            # 2-vCPU Zen 5 (fp32 -> u8, hot loop, ResNet-50's quantizers, 64-2048 channels):
            # 2.5-4.6x faster than 16 channels x 14 pixels, the best of each space; inside
            # int8 ResNet-50 0.91x the time, MobileNet-v2 0.94x (one process, interleaved).
            return {"tile_c": max(space["tile_c"].values), "tile_ow": 1, "unroll_kw": True, "pad": pad}
        tile_c = space["tile_c"].values[0]
        vec = tile_c // lanes
        # leave room for the data vector and one weight vector per tap in flight
        fit = [w for w in space["tile_ow"].values
               if register_fit(target, w * vec, vec, budget=regs // 2, memory_operand=False) is None]
        tile_ow = max(fit) if fit else 1
        if pad == "tile":
            # a tile with its own window of (tile_ow - 1) * stride + S padded columns: short
            # for 3x3 (1.39x the register-filling tile, with "row", over the 15 NHWC MobileNet
            # layers on AVX-512, 1.19x on AVX2, 2-vCPU Zen 4), longer for wider filters, whose
            # window would otherwise be mostly halo: 2S - 4 pixels, 2 for 3x3, 6 for 5x5, 10 for
            # 7x7 (measured with the tuner's cache flush on a 2-vCPU Zen 5: ConvNeXt's 7x7 on
            # 96x56x56 2.7x faster at 14 than at 2, EfficientNet's 5x5 on 240x28x28 1.5x at 7)
            want = max(2, 2 * spec.kernel[1] - 4)
            fits = [w for w in space["tile_ow"].values
                    if register_fit(target, w * vec, vec, budget=regs // 2, memory_operand=False) is None]
            longer = [w for w in fits if w >= want]
            tile_ow = min(longer) if longer else max(fits, default=1)
        return {"tile_c": tile_c, "tile_ow": tile_ow, "unroll_kw": True, "pad": pad}

    def default_pad(self, spec: ConvSpec, space: Space) -> str:
        """The default place of the padded input (measurements in the class docstring)."""
        places = space["pad"].values
        if spec.layout == "NHWC" and "tile" in places:
            return "tile"
        if max(spec.stride) > 1 and "row" in places:  # each input row is made R/stride = 1.5 times
            return "row"
        return "copy"

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        cb = config["tile_c"]
        if spec.layout == "NCHW":
            return lambda o, i, h, w: (o // cb, i, h, w, o % cb)
        return lambda h, w, i, o: (o // cb, i, h, w, o % cb)

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        cb, rw = config["tile_c"], config["tile_ow"]
        nchw = spec.layout == "NCHW"
        conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
        place = config["pad"]
        data = channels_innermost(sch, spec, conv, cb, target.vector_lanes, loops=place == "copy")
        if nchw:
            sch.transform_layout(conv, ("write", 0), lambda n, k, h, w: (n, k // cb, h, w, k % cb))

        pack_weights(sch, spec, conv, self.weight_pack(spec, target, config), cb, 1)

        L = spatial_loops(sch, spec, conv)
        oco, oci = sch.split(L["oc"], [None, cb])
        owo, owi = sch.split(L["ow"], [None, rw])
        sch.reorder(L["n"], oco, L["oh"], owo, L["ic"], L["kh"], L["kw"], owi, oci)
        row = sch.fuse(L["n"], oco, L["oh"])
        sch.parallel(row)
        sch.reverse_compute_at(out, owo)
        if place != "copy":
            sch.compute_at(data, row if place == "row" else owo)
            if nchw:  # its loops follow the block's (c, h, w), unit extents dropped: channels last
                inner = sch.get_loops(data)[1 if place == "row" else 2:]
                sch.reorder(*inner[1:], inner[0])
            vectorize_inner(sch, data, target.vector_lanes)
        sch.vectorize(oci)
        sch.unroll(owi)
        if config["unroll_kw"]:
            sch.unroll(L["kw"])
        if not nchw:
            vectorize_inner(sch, out, target.vector_lanes)
        sch.decompose_reduction(conv, L["ic"])


class DepthwiseNHWCX86(DepthwiseX86, name="x86.depthwise_nhwc", version=1, families=("x86",),
                       dtypes=("float32", "bfloat16"), priority=22):
    """Depthwise on NHWC data, the threads splitting output *rows*: a row's pixel tiles each
    walk every channel block, so the input is read along NHWC memory as it lies.

    :class:`DepthwiseX86` makes a channel block the outer parallel loop (``n, c/tile_c, oh``):
    each task reads ``tile_c`` of every pixel's channels, 64-256 bytes out of each
    ``4*C``-byte pixel, a strided walk whose lines other tasks fetch again later from L3.
    Here a task is one output row; under each tile of ``tile_ow`` pixels the channel blocks
    run in turn, so the ``R`` input rows are read contiguously, once per row task (stride-2
    layers: 1.5 times), and the output row is written in order. The register tile is still
    ``tile_ow`` pixels x ``tile_c`` channels (``tile_ow * tile_c/lanes`` accumulators, the
    ``R*S`` taps' weight vectors loaded per tap and reused across the pixels).

    Padding (``pad``): ``inline`` reads the input through the bounds test (the padded stage
    is inlined: a select per load, uniform over the channel lanes), with ``partition`` the
    loop partition pass splits the border tiles from the interior ones where it can;
    ``tile`` copies each tile's padded window first (as :class:`DepthwiseX86`'s ``tile``).
    Measured on a 2-vCPU Intel Xeon (Emerald Rapids), MobileNet-v2's 10 distinct NHWC
    depthwise layers, every config of this template against :class:`DepthwiseX86`'s default,
    hot loop: the best of this space ran 1.1-2.6x faster than that default (96 channels at
    112x112 stride 2: 96 vs 228 us, where the best of that template's space took 204),
    16-channel tiles of 7-8 pixels and ``inline`` best on most; ``partition`` within 10%
    either way.
    """

    # what it serves, its channel blocks and weight packing are DepthwiseX86's (NHWC only)

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.layout != "NHWC":
            return "NCHW data (x86.depthwise and x86.depthwise_rows serve it)"
        return super().supports(spec, target)

    def space(self, spec: ConvSpec, target: Target) -> Space:
        lanes, regs = target.vector_lanes, target.registers
        pads = ("inline", "tile") if any(spec.padding) else ("inline",)

        def fits(config: Config) -> str | None:
            vec = config["tile_c"] // lanes
            return register_fit(target, config["tile_ow"] * vec, vec)

        return Space(self.name, self.version, (
            Knob("tile_c", channel_tiles(spec.out_channels, lanes), "channels per register tile"),
            Knob("tile_ow", tuple(divisors(spec.out_width, upto=regs // 2)), "output pixels per register tile"),
            Knob("pad", pads, "padding: a bounds test per load (inline) or a padded window per tile"),
            Knob("partition", (False, True), "split border tiles from interior ones (loop partition)"),
        ), fits)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        # one vector of channels, the longest pixel tile up to 8 (4-8 accumulators hide the
        # FMA latency; longer tiles only lengthen the row's tail): the measured best or
        # within 10% of it on 8 of the 10 layers above
        space = self.space(spec, target)
        if spec.kernel == (1, 1):
            # a per-channel scale (convgen.torch's quantizers): no weights to reuse across
            # pixels, so one pixel's channels in the widest tile, as DepthwiseX86.default
            return {"tile_c": max(space["tile_c"].values), "tile_ow": 1, "pad": "inline", "partition": False}
        tile_ow = max(w for w in space["tile_ow"].values if w <= 8)
        return {"tile_c": space["tile_c"].values[0], "tile_ow": tile_ow, "pad": "inline", "partition": False}

    def build_options(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        return dict(LOOP_PARTITION) if config["partition"] else {}

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        cb, rw = config["tile_c"], config["tile_ow"]
        conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
        data = sch.get_sblock("data_pad") if has_block(sch, "data_pad") else None
        pack_weights(sch, spec, conv, self.weight_pack(spec, target, config), cb, 1)
        L = spatial_loops(sch, spec, conv)
        oco, oci = sch.split(L["oc"], [None, cb])
        owo, owi = sch.split(L["ow"], [None, rw])
        sch.reorder(L["n"], L["oh"], owo, oco, L["ic"], L["kh"], L["kw"], owi, oci)
        sch.parallel(sch.fuse(L["n"], L["oh"]))
        sch.reverse_compute_at(out, oco)
        if data is not None:
            if config["pad"] == "inline":
                sch.compute_inline(data)
            else:
                sch.compute_at(data, oco)
                vectorize_inner(sch, data, target.vector_lanes)
        sch.vectorize(oci)
        sch.unroll(owi)
        sch.unroll(L["kw"])
        vectorize_inner(sch, out, target.vector_lanes)
        sch.decompose_reduction(conv, L["ic"])


class DepthwiseRowsX86(Template, name="x86.depthwise_rows", version=1, families=("x86",), dtypes=("float32",),
                       priority=25):
    """Depthwise on NCHW data as given: output rows in vector lanes, no layout change.

    ``out[c, oh, ow:ow+8] += w[c, kh, kw] * data[c, oh+kh, ow+kw : ow+kw+8]``: one broadcast
    weight and one unaligned row load per FMA, contiguous because the stride is 1. Depthwise
    layers move little data per FLOP, so skipping the NCHW->NCHWc copy of the channel-blocked
    template matters more than its aligned loads. Registers: ``tile_oh x tile_w``
    accumulators + the weight + the data vector.
    """

    def _vec(self, spec: ConvSpec, target: Target) -> int | None:
        lanes = target.vector_lanes
        if spec.out_width % lanes == 0:
            return lanes
        return spec.out_width if spec.out_width <= 2 * lanes else None

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.layout != "NCHW" or not spec.is_depthwise:
            return "not NCHW depthwise"
        if spec.stride[1] != 1:
            return "a row stride > 1 would gather (the channel-blocked template serves it)"
        if self._vec(spec, target) is None:
            return f"output width {spec.out_width} is neither a multiple of {target.vector_lanes} nor short"
        return None

    def space(self, spec: ConvSpec, target: Target) -> Space:
        vec = self._vec(spec, target)
        return Space(
            self.name,
            self.version,
            (
                Knob("tile_oh", tuple(divisors(spec.out_height, upto=4)), "output rows per register tile"),
                Knob("tile_w", tuple(divisors(spec.out_width // vec, upto=8)), "row vectors per register tile"),
                Knob("unroll_kw", (False, True), "unroll the kernel-width loop"),
            ),
            # accumulators + the broadcast weight + the data row
            lambda c: register_fit(target, c["tile_oh"] * c["tile_w"], 1, memory_operand=False),
        )

    def default(self, spec: ConvSpec, target: Target) -> Config:
        space = self.space(spec, target)
        # 4-6 accumulators hide the FMA latency; more only lengthens the row tail.
        best = max((c for c in space if c["unroll_kw"] and c["tile_oh"] * c["tile_w"] <= 6),
                   key=lambda c: (c["tile_oh"] * c["tile_w"], c["tile_w"]))
        return best

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        vec = self._vec(spec, target)
        conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
        if spec.padding != (0, 0, 0, 0):
            pad = sch.get_sblock("data_pad")
            parallel_outer(sch, pad, 2)
            vectorize_inner(sch, pad, target.vector_lanes)
        L = spatial_loops(sch, spec, conv)
        oho, ohi = sch.split(L["oh"], [None, config["tile_oh"]])
        owo, owt, owv = sch.split(L["ow"], [None, config["tile_w"], vec])
        sch.reorder(L["n"], L["oc"], oho, owo, L["ic"], L["kh"], L["kw"], ohi, owt, owv)
        sch.parallel(sch.fuse(L["n"], L["oc"], oho))
        sch.reverse_compute_at(out, owo)
        sch.vectorize(owv)
        sch.unroll(owt)
        sch.unroll(ohi)
        if config["unroll_kw"]:
            sch.unroll(L["kw"])
        vectorize_inner(sch, out, vec)
        sch.decompose_reduction(conv, L["ic"])


class Int8Depthwise:
    """Depthwise on u8 data and s8 weights, its sums in float32: what a float depthwise
    schedule (:class:`DepthwiseX86`, :class:`DepthwiseNHWCX86`) needs to run 8-bit layers.

    A depthwise output sums ``R*S`` products of one channel, ``|u8 * s8| <= 255 * 128``: below
    2**24 up to 514 taps (22x22), so float32 holds every partial sum exactly and the kernel's
    result is the exact integer sum. No dot-product instruction helps here (``vpdpbusd`` sums
    4 *channels*; a depthwise tap has one), and AVX-512's 32-bit integer multiply
    (``vpmulld``) issues at half the FMA rate with 2.5x its latency on Zen 4/5 and Intel
    alike, so the arithmetic is the fp32 template's FMAs on widened values
    (``vpmovzxbd``/``vpmovsxbd`` + ``vcvtdq2ps`` per vector of 16). What int8 buys is the
    memory: the input is read as bytes (a quarter of fp32's traffic, and these layers are
    bound by loads, not FMAs), and a u8 output lets MobileNet-v2's expand 1x1 -> depthwise ->
    project 1x1 chain pass bytes from one to the next instead of re-quantizing float32.

    Served: scaled outputs (the float32 epilogue of :attr:`ConvSpec.scaled`, which the model
    path uses) and plain s32 sums without bias or residual; an s32 bias or residual could
    take a sum past float32's exact range.
    """

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        why = super().supports(spec, target)
        if why:
            return why
        if spec.filter_dtype != "int8":
            return f"{spec.filter_dtype} weights (s8 only)"
        if spec.kernel[0] * spec.kernel[1] > 514:
            return f"{spec.kernel[0]}x{spec.kernel[1]} taps: float32 sums are exact up to 514"
        if not spec.scaled and (spec.bias or spec.residual):
            return "an s32 bias or residual (float32 sums are exact for the products only)"
        return None

    def primfunc(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        from convgen.compute import conv2d_primfunc

        return conv2d_primfunc(spec, acc_dtype="float32", channel_block=self.channel_block(spec, target, config))


class DepthwiseInt8X86(Int8Depthwise, DepthwiseX86, name="x86.depthwise_int8", version=1, families=("x86",),
                       dtypes=("uint8",), priority=20):
    """:class:`DepthwiseX86`'s schedule on u8 data (:class:`Int8Depthwise`)."""


class DepthwiseNHWCInt8X86(Int8Depthwise, DepthwiseNHWCX86, name="x86.depthwise_nhwc_int8", version=1,
                           families=("x86",), dtypes=("uint8",), priority=22):
    """:class:`DepthwiseNHWCX86`'s schedule (threads split output rows) on u8 data
    (:class:`Int8Depthwise`): a quarter of the float template's input bytes, read the same
    way, along NHWC memory."""


register(DirectX86())
register(DirectPrefetchX86())
register(DepthwiseX86())
register(DepthwiseNHWCX86())
register(DepthwiseRowsX86())
register(DepthwiseInt8X86())
register(DepthwiseNHWCInt8X86())
