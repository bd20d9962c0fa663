"""ARM templates (AArch64 NEON, dotprod): spatial-pack direct convolution and depthwise.

The loop nest is the blocked-channel direct convolution of :mod:`convgen.schedules.cpu`
(an ISA-neutral TIR schedule that reads only the target's vector lanes and registers), the
same "spatial pack" TVM's ``arm_cpu`` strategy used: data packed ``N C/ib H W ib``, weights
packed ``K/ob C/ib R S ib ob``, a register tile of ``tile_oh x tile_ow`` pixels by ``tile_oc``
output channels, the outer loops fused and run in parallel. These classes subclass the x86
ones, inherit their knobs (new ones added there arrive here too) and add what matters on
NEON, applied by loop name after the x86 schedule.

Register budget on NEON (``arm.spatial_pack``)
----------------------------------------------
32 vector registers ``v0-v31`` of 128 bits: 4 fp32 lanes. Each reduction step loads
``tile_oc/4`` weight vectors and, per pixel, one input value, then issues one FMLA per
accumulator::

    accumulators = tile_oh * tile_ow * tile_oc / 4
    live         = accumulators + tile_oc / 4 (weights) + 1 (input value)  <= 32

``tile_oc=8`` (2 vectors) x 12 pixels = 24 accumulators + 2 weight vectors + 1 input =
27 registers; ``tile_oc=8`` x 14 pixels = 28 + 3 = 31 (a 14-wide ResNet row in one tile);
``tile_oc=16`` (4 vectors) x 6 pixels = 24 + 5 = 29. Latency decides the minimum: the A72
has two FP pipes with a 7-cycle chained FMLA, so 14 independent accumulators keep both busy;
the Neoverse-N1's 4-cycle FMLA needs 8. The default takes the widest tile that fits.

The inner step is what the generated assembly shows for the default (28 accumulators,
resnet-like 3x3): one ``ldp q, q`` of weights, then per pixel one ``ldr s`` of input and
two ``fmla v.4s, v.4s, v.s[0]`` (FMLA by element: no separate broadcast), no spills.
``unroll_kh`` unrolls the kernel-height loop (with ``unroll_kw``, the whole window);
``unroll_ic`` unrolls the input-channel block inside the tile (``tile_ic <= 8``): a longer
straight-line body, fewer branches and loads scheduled across channel steps, at the price
of code size (``tile_ic * window`` copies of the tile in the instruction cache).

Speed on ARM cannot be measured on the emulated board (qemu's timings say nothing about a
core's); the knobs are there for a tuning campaign on a real board through the tuner's RPC
runner.
"""

from __future__ import annotations

from typing import Any

from convgen.knobs import Config, ConfigError, Knob, Space, divisors
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import vectorize_inner
from .cpu import direct_loops, register_fit, tile_knobs
from .x86 import DepthwiseX86, DirectX86


def _find_loop(sch: Any, block_name: str, loop_name: str) -> Any:
    """The loop called ``loop_name`` above block ``block_name`` (``ConfigError`` if absent)."""
    block = sch.get_sblock(block_name)
    for loop in sch.get_loops(block):
        if sch.get(loop).loop_var.name == loop_name:
            return loop
    raise ConfigError(f"the base schedule has no loop {loop_name!r} above block {block_name!r}")


def _extend(base: Space, name: str, version: int, extra: tuple[Knob, ...], check: Any) -> Space:
    """``base``'s knobs plus ``extra``, legal when both constraints accept a config.

    The space's version folds in the base template's (``100 * version + base``), so a
    change of the x86 schedule makes records of the ARM template stale too.
    """

    def constraint(config: Config) -> str | None:
        if base.constraint is not None:
            why = base.constraint({k: config[k] for k in base.names})
            if why:
                return why
        return check(config)

    return Space(name, 100 * version + base.version, base.knobs + extra, constraint)


def _split(config: Config, base: Space) -> Config:
    """The part of ``config`` the base (x86) template knows."""
    return {k: config[k] for k in base.names}


class SpatialPackARM(DirectX86, name="arm.spatial_pack", version=2, families=("arm",), priority=10):
    """Direct convolution for NEON: x86.direct's loop nest plus NEON unrolling knobs."""

    def space(self, spec: ConvSpec, target: Target) -> Space:
        base = super().space(spec, target)

        def fits(config: Config) -> str | None:
            # (the base constraint holds the register tile to the 32 registers: FMLA has no
            # memory operand, target.fma_memory_operand)
            # 8 channels x a 3x3 window (kh, kw unrolled too) x 28 FMLAs = 2016 instructions,
            # ~8 KiB: beyond that the body crowds the 48 KiB (A72) / 64 KiB (N1) I-cache.
            if config["unroll_ic"] and config["tile_ic"] > 8:
                return f"unroll_ic needs tile_ic <= 8 (got {config['tile_ic']})"
            return None

        extra = (
            Knob("unroll_kh", (False, True), "unroll the kernel-height loop"),
            Knob("unroll_ic", (False, True), "unroll the input-channel block inside the register tile"),
        )
        return _extend(base, self.name, self.version, extra, fits)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        lanes = target.vector_lanes
        space = self.space(spec, target)
        # NEON's FMLA takes its multiplier from a lane of a loaded vector (by-element form),
        # so broadcasts cost no extra loads as they do on x86: the default is simply the
        # largest accumulator tile, tile_oc = 2 vectors and the widest pixel run that fits
        # (up to 14 pixels: 28 accumulators + 2 weights + 1 input = 31 of 32 registers).
        # Rolled kh and ic loops keep the code small; unrolling them is the tuner's call.
        tile_oc = 2 * lanes if 2 * lanes in space["tile_oc"].values else space["tile_oc"].values[0]
        vec = tile_oc // lanes
        fit = [w for w in space["tile_ow"].values if register_fit(target, w * vec, vec) is None]
        config = {"tile_oc": tile_oc, "tile_ic": max(d for d in space["tile_ic"].values if d <= 8),
                  "tile_ow": max(fit) if fit else 1, "tile_oh": 1, "reduce_order": "ic_kh_kw",
                  "unroll_kw": spec.kernel[1] <= 3, "unroll_kh": False, "unroll_ic": False}
        return space.check(config)

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        base = super().space(spec, target)
        super().apply(sch, spec, target, _split(config, base))
        # The base schedule splits ic into ic_0 (blocks) and ic_1 (the block) and keeps kh
        # whole; decompose_reduction renamed the update block to conv_update. Unroll is a
        # plain loop annotation, legal after the decomposition.
        if config["unroll_kh"]:
            sch.unroll(_find_loop(sch, "conv_update", "kh"))
        if config["unroll_ic"]:
            sch.unroll(_find_loop(sch, "conv_update", "ic_1"))


class DepthwiseARM(DepthwiseX86, name="arm.depthwise", version=3, families=("arm",), priority=20):
    """Depthwise for NEON: 4-channel vectors, a run of pixels, the window unrolled.

    Loads bound it (each FMLA needs its own data vector): ``tile_ow * tile_c/4``
    accumulators plus ``tile_c/4`` weight vectors per tap. The default (x86's rule, in half
    the registers) is 4 channels x up to 14 pixels: 14 accumulators + 1 weight + 1 input,
    the other 16 registers left to the data vectors in flight.
    """

    def space(self, spec: ConvSpec, target: Target) -> Space:
        base = super().space(spec, target)
        extra = (Knob("unroll_kh", (False, True), "unroll the kernel-height loop"),)
        # (the base constraint holds the tile to the 32 registers: FMLA has no memory operand)
        return _extend(base, self.name, self.version, extra, lambda config: None)

    def default_pad(self, spec: ConvSpec, space: Space) -> str:
        return "copy"  # the x86 measurements do not carry over unmeasured: one pass, as before

    def default(self, spec: ConvSpec, target: Target) -> Config:
        config = dict(super().default(spec, target), unroll_kh=spec.kernel[0] <= 3)
        return self.space(spec, target).check(config)

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        base = super().space(spec, target)
        super().apply(sch, spec, target, _split(config, base))
        if config["unroll_kh"]:
            sch.unroll(_find_loop(sch, "conv_update", "kh"))


def _has_dotprod(target: Target) -> bool:
    return "asimddp" in target.cpu_flags or "+dotprod" in target.tvm.get("mattr", ())


_SDOT_INTRIN = "convgen.arm.sdot_4x4_i8i8s32"


def _sdot_intrin() -> str:
    """Register (once) and name the tensor intrinsic: 4 int32 lanes += 4x4 int8 dot products.

    The same description as TVM's ``dot_4x4_i8i8s32_sdot``, declared here because its module
    can only be imported with every target's intrinsics (``tvm.s_tir.tensor_intrin``: CUDA,
    ROCm, Hexagon, ...), which takes 90 s. Its buffers ask for element alignment only: the
    input may be the caller's array, which kernels read in place at any element boundary.
    """
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(_SDOT_INTRIN, allow_missing=True) is not None:
        return _SDOT_INTRIN

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        # A: 4 input channels of one pixel; B: 4 output x 4 input channels; C: 4 outputs
        A = T.match_buffer(a, (4,), "int8", offset_factor=1, align=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1, align=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, align=4)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            for i, k in T.grid(4, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1, align=1)
        B = T.match_buffer(b, (4, 4), "int8", offset_factor=1, align=1)
        C = T.match_buffer(c, (4,), "int32", offset_factor=1, align=4)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            # the 4 input bytes as one int32, broadcast to 4 lanes (LD1R), seen as 16 bytes
            a_x16 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4), dtype="int8x16")
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], "int32x4"),
                a_x16,
                B.vload([0, 0], "int8x16"),
                dtype="int32x4",
            )

    TensorIntrin.register(_SDOT_INTRIN, desc, impl)
    return _SDOT_INTRIN


class DotprodInt8ARM(Template, name="arm.dotprod_int8", version=1, families=("arm",), dtypes=("int8",), priority=30):
    """int8 x int8 -> int32 direct convolution on SDOT (ARMv8.2 dot product).

    One ``sdot v.4s, v.16b, v.4b[0]``-style step multiplies 4 input channels of one pixel
    (a 32-bit value broadcast to the 4 lanes) by a 4x4 block of weights (4 output channels x
    the same 4 input channels, 16 bytes) and adds the four 4-term sums into 4 int32 lanes:
    16 multiply-adds per instruction, 4x an fp32 FMLA. The intrinsic (TVM's
    ``dot_4x4_i8i8s32_sdot``, see :func:`_sdot_intrin`) is tensorized onto the innermost
    ``oc4 x ic4`` loops.

    Layouts: data ``N C/ib H W ib`` (NCHW; NHWC already has the channels innermost), weights
    ``K/ob C/ib R S ib/4 ob 4`` so each 4x4 block is 16 contiguous bytes, the int32 result
    tile ``ob`` innermost. Register budget, in int32x4 accumulators::

        accumulators = tile_oh * tile_ow * tile_oc/4 <= 16

    (half the 32 registers: the other half holds the weight blocks and the LD1R-broadcast
    inputs LLVM keeps in flight; see ``space``). 8 channels x 8 pixels = 16 SDOTs per
    input-channel step, 256 multiply-adds.

    Groups are not served (a group's channels would have to be 4-aligned within each
    4x4 block); those and other channel counts go to ``cpu.generic``.
    """

    def __init__(self, sdot: bool = True) -> None:
        # sdot=False leaves the oc4 x ic4 loops scalar: the same loop nest and layouts,
        # compilable and checkable on any CPU (tests run it on the x86 host).
        self.sdot = sdot

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if not _has_dotprod(target):
            return f"target {target.name} has no dot product instructions (+dotprod)"
        if spec.groups != 1:
            return "grouped convolution"
        if spec.in_channels % 4 or spec.out_channels % 4:
            return "channels not a multiple of 4 (SDOT reduces 4 input channels into 4 outputs)"
        return None

    def space(self, spec: ConvSpec, target: Target) -> Space:
        regs = target.registers
        tile_oc = tuple(m for m in (4, 8, 16) if spec.out_channels % m == 0)
        tile_ic = tuple(d for d in divisors(spec.in_channels, upto=64) if d % 4 == 0)
        tile_ow = tuple(divisors(spec.out_width, upto=regs - 2))
        tile_oh = tuple(divisors(spec.out_height, upto=4))

        def fits(config: Config) -> str | None:
            vec = config["tile_oc"] // 4
            acc = config["tile_oh"] * config["tile_ow"] * vec
            # SDOT takes its input as a whole register (an LD1R broadcast, not a lane), and
            # LLVM keeps several in flight: the generated code spills from 24 accumulators
            # on and is clean at 16, so half the registers is the accumulator budget.
            if acc > regs // 2:
                return f"register tile has {acc} > {regs // 2} int32x4 accumulators (spills)"
            return None

        # tile_oc and tile_ic in steps of 4: one SDOT multiplies 4 int8 channels for 4 outputs
        return Space(self.name, self.version, tile_knobs(tile_oc, tile_ic, tile_ow, tile_oh), fits)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        space = self.space(spec, target)
        regs = target.registers
        # 2 weight blocks (8 output channels) x up to 8 pixels = 16 accumulators.
        tile_oc = 8 if 8 in space["tile_oc"].values else space["tile_oc"].values[0]
        vec = tile_oc // 4
        fit = [w for w in space["tile_ow"].values if w * vec <= regs // 2]
        # 8 channels = 2 SDOT steps per pixel and tap: 16 (4 steps) spilled in the 3x3 case
        ib = [d for d in space["tile_ic"].values if d <= 8]
        return space.check({
            "tile_oc": tile_oc,
            "tile_ic": max(ib),
            "tile_ow": max(fit) if fit else 1,
            "tile_oh": 1,
            "reduce_order": "ic_kh_kw",
            "unroll_kw": spec.kernel[1] <= 3,
        })

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        return config["tile_oc"], config["tile_ic"]

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        ob, ib = config["tile_oc"], config["tile_ic"]

        def blocked(o, i, h, w):
            if ib == 4:  # no ib/4 axis: an axis of extent 1 makes the index map degenerate
                return (o // ob, i // 4, h, w, o % ob, i % 4)
            return (o // ob, i // ib, h, w, i % ib // 4, o % ob, i % 4)

        if spec.layout == "NCHW":
            return blocked
        return lambda h, w, i, o: blocked(o, i, h, w)

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        # the shared CPU loop nest (schedules/cpu.py), with SDOT's 4x4 blocks innermost:
        # 4 output channels per int32 accumulator, 4 input channels per dot product
        loops = direct_loops(sch, spec, config, pack_map=self.weight_pack(spec, target, config),
                             data_lanes=16,  # 16 int8 lanes for the data copy
                             oc_parts=(config["tile_oc"] // 4, 4), ic_parts=(config["tile_ic"] // 4, 4))
        ocv, oc4 = loops["oc"]
        sch.unroll(ocv)
        vectorize_inner(sch, sch.get_sblock("out"), 4)
        init = sch.decompose_reduction(sch.get_sblock("conv"), loops["reduction"][0])
        sch.vectorize(sch.get_loops(init)[-1])
        if self.sdot:
            sch.tensorize(oc4, _sdot_intrin())


register(SpatialPackARM())
register(DepthwiseARM())
register(DotprodInt8ARM())
