"""x86 direct convolutions on dot-product instructions: AVX512_BF16 and AVX512_VNNI.

Both instructions add a short dot product into each of 16 32-bit lanes::

    vdpbf16ps acc, a, b   # acc[j] (fp32) += a[2j] * b[2j] + a[2j+1] * b[2j+1]         (bf16)
    vpdpbusd  acc, a, b   # acc[j] (s32)  += sum over q < 4 of a[4j+q] (u8) * b[4j+q] (s8)

that is 32 (bf16) or 64 (int8) multiply-adds in the issue slot of one fp32 FMA's 16. The
micro-kernel is the direct template's (:mod:`schedules.cpu`) with the reduction over input
channels taken ``depth`` (2 or 4) at a time, the instruction's data as a :class:`DotStep`:

- the weights are packed ``K/ob C/ib R S ib/depth ob depth``: for ``depth`` input channels,
  each of the ``ob`` output channels holds its ``depth`` weights side by side, so one
  64-byte load is the ``b`` operand of 16 output channels;
- the ``depth`` input channels of one pixel (adjacent in NHWC or in the blocked NCHW copy:
  one 32-bit load in both cases) are broadcast to the 16 lanes as the ``a`` operand;
- ``tile_oh x tile_ow`` pixels by ``tile_oc / 16`` vectors of 32-bit accumulators::

      accumulators = tile_oh * tile_ow * tile_oc / 16
      live         = accumulators + tile_oc / 16 (weights) + 1 (the broadcast)  <= 32

  (AVX-512's 32 zmm; LLVM folds the weight load into the instruction as its memory operand
  and the broadcast as ``{1to16}``, so the budget is the fp32 template's). Each step of the
  reduction issues ``accumulators`` instructions: the same registers and loads per
  instruction as fp32, two (bf16) or four (int8) times the work.

The epilogue (bias, residual, activation, the rounding to a bf16 output) runs on the 32-bit
tile. TVM ships no usable intrinsic for either instruction: its bf16 legalization lowers
``bfloat16x32`` values to ``<32 x float>``, which LLVM refuses as the intrinsic's operand,
and its ``dot_16x4_vnni`` passes ``<16 x i32>`` where LLVM 22 declares ``<64 x i8>``. So the
tensor intrinsic loads the operands through *unsigned views* of their buffers (``uint16``
for bf16, ``uint8``: same element size, same offsets, no bf16 value to widen), bit-casts
them to ``int32`` and calls a few lines of LLVM IR (:meth:`DotStep.llvm_ir`), imported into
the module (``pragma_import_llvm``) and inlined, that bit-cast them to the types LLVM
declares. The loads stay TVM's, with its alias information: read through raw pointers
instead, LLVM could not keep the accumulators in registers (it stored all of them after
every instruction: 2.5x slower, measured on Zen 5).

Input channels off ``depth`` (an RGB stem's 3) are padded to it with zero filters in the
compute (:func:`convgen.compute.padded_inputs`): the padded data channels hold the zero point,
which the zero weights cancel. Shapes these templates do not take (grouped, CPUs without the
instruction) go to the fp32 templates run on the same data (bf16: a 16-bit
shift to fp32, fp32 FMAs) or to ``cpu.generic`` (int8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convgen.knobs import Config, Space, divisors
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import vectorize_inner
from .cpu import direct_loops, guard_dead_taps, partition_config, pixel_tiles, prefetch_direct, register_fit, tile_knobs
from .x86 import PrefetchNextPanel, channel_tiles


@dataclass(frozen=True)
class DotStep:
    """One dot-product instruction as data: its operands' dtypes, how many input channels it
    sums per lane (``depth``), the CPU flag and LLVM feature that provide it, and LLVM's name."""

    instruction: str  # the mnemonic, for messages
    flag: str  # /proc/cpuinfo's name for the feature
    mattr: str  # LLVM's
    data: str  # dtype of a (broadcast from one pixel)
    weight: str  # dtype of b (16 output channels x depth)
    acc: str  # dtype of the 16 lanes
    depth: int  # input channels per lane per instruction
    llvm_name: str  # the LLVM intrinsic
    llvm_element: str  # LLVM's element type of a and b
    lanes: int = 16  # 512-bit accumulators

    @property
    def function(self) -> str:
        """The wrapper's name in the module."""
        return f"convgen_{self.instruction}"

    @property
    def intrin(self) -> str:
        """The tensor intrinsic's registered name."""
        return f"convgen.x86.{self.instruction}_{self.lanes}x{self.depth}"

    def llvm_ir(self) -> str:
        """``acc = f(acc, a, b)``: ``a`` the ``depth`` input channels of one pixel as 32 bits
        broadcast to every lane, ``b`` ``lanes x depth`` weights, both as ``<lanes x i32>``
        (what TVM can load from an int32 view of the buffers), bit-cast to the element type
        LLVM declares the intrinsic with."""
        acc = "float" if self.acc == "float32" else "i32"
        n = self.lanes * self.depth
        vec, elem, words = f"<{self.lanes} x {acc}>", f"<{n} x {self.llvm_element}>", f"<{self.lanes} x i32>"
        return f"""
declare {vec} @{self.llvm_name}({vec}, {elem}, {elem})
define {vec} @{self.function}({vec} %acc, {words} %a, {words} %b) alwaysinline {{
  %av = bitcast {words} %a to {elem}
  %bv = bitcast {words} %b to {elem}
  %r = call {vec} @{self.llvm_name}({vec} %acc, {elem} %av, {elem} %bv)
  ret {vec} %r
}}
"""

    def available(self, target: Target) -> bool:
        """Does the target's code have the instruction?"""
        return self.flag in target.cpu_flags and self.mattr in target.tvm.get("mattr", ())

    def tensor_intrin(self) -> str:
        """Register (once) and name the tensor intrinsic: ``lanes`` accumulators += ``lanes x
        depth`` products. ``A``: ``depth`` input channels of one pixel; ``B``: ``lanes`` output
        channels x the same input channels, contiguous; ``C``: the accumulators. Buffers ask
        for element alignment only (the input may be the caller's array, read in place)."""
        from tvm.s_tir import TensorIntrin
        from tvm.script import tirx as T

        if TensorIntrin.get(self.intrin, allow_missing=True) is not None:
            return self.intrin
        lanes, depth, acc = self.lanes, self.depth, self.acc
        data, weight, function = self.data, self.weight, self.function
        acc_vector = f"{acc}x{lanes}"
        bits = f"uint{512 // (lanes * depth)}"  # uint16 for bf16, uint8 for 8-bit data

        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (depth,), data, offset_factor=1, align=1)
            B = T.match_buffer(b, (lanes, depth), weight, offset_factor=1, align=1)
            C = T.match_buffer(c, (lanes,), acc, offset_factor=1, align=4)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
                T.writes(C[0:lanes])
                for i, k in T.grid(lanes, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], acc) * T.cast(B[vi, vk], acc)

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (depth,), data, offset_factor=1, align=1)
            B = T.match_buffer(b, (lanes, depth), weight, offset_factor=1, align=1)
            C = T.match_buffer(c, (lanes,), acc, offset_factor=1, align=4)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
                T.writes(C[0:lanes])
                # unsigned views of the operands (same element size, same offsets): loads TVM
                # emits with its alias information, so LLVM keeps the accumulators in
                # registers, and no bf16 value for TVM's bf16 legalization to widen to fp32
                Av = T.decl_buffer((depth,), bits, data=A.data, elem_offset=A.elem_offset)
                Bv = T.decl_buffer((lanes * depth,), bits, data=B.data, elem_offset=B.elem_offset)
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_pure_extern(
                    acc_vector, function, C.vload([0], acc_vector),
                    T.broadcast(T.reinterpret("int32", Av.vload([0], f"{bits}x{depth}")), lanes),
                    T.reinterpret(f"int32x{lanes}", Bv.vload([0], f"{bits}x{lanes * depth}")))

        TensorIntrin.register(self.intrin, desc, impl)
        return self.intrin


#: AVX512_BF16 (Zen 4+, Cooper Lake, Sapphire Rapids): bf16 pairs into fp32
VDPBF16PS = DotStep("vdpbf16ps", "avx512_bf16", "+avx512bf16", "bfloat16", "bfloat16", "float32", 2,
                    "llvm.x86.avx512bf16.dpbf16ps.512", "bfloat")
#: AVX512_VNNI (Ice Lake+, Zen 4+): u8 x s8 quads into s32, exact (no int16 saturation, as
#: ``vpmaddubsw`` has)
VPDPBUSD = DotStep("vpdpbusd", "avx512_vnni", "+avx512vnni", "uint8", "int8", "int32", 4,
                   "llvm.x86.avx512.vpdpbusd.512", "i8")


class DotX86(Template):
    """The direct convolution on a :class:`DotStep`: input channels ``depth`` at a time,
    output channels in 16 32-bit lanes, a register tile of pixels (module docstring). A
    subclass names its step; ``use_instruction=False`` keeps the loop nest and layouts with
    the step as plain loops, compilable and checkable on a CPU without the instruction."""

    step: DotStep

    def __init__(self, use_instruction: bool = True) -> None:
        self.use_instruction = use_instruction

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        step = self.step
        if self.use_instruction and not step.available(target):
            return f"target {target.name} has no {step.flag.upper()} ({step.instruction})"
        if spec.filter_dtype != step.weight:
            return f"{spec.filter_dtype} weights ({step.instruction} takes {step.weight})"
        if spec.groups != 1:
            return "grouped convolution"
        # input channels off the step's depth (an RGB stem's 3) are padded with zero filters
        # (one 4-channel step for 3 channels: 3/4 of the instruction's work is useful), output
        # channels off the lanes with filters nobody reads (see x86.py)
        return None

    def input_block(self, spec: ConvSpec, target: Target) -> int:
        return self.step.depth

    def space(self, spec: ConvSpec, target: Target) -> Space:
        regs, lanes, depth = target.registers, self.step.lanes, self.step.depth
        tile_oc = channel_tiles(spec.out_channels, lanes)  # 24 filters: one vector padded to 32
        channels = -(-spec.in_channels // depth) * depth  # padded (convgen.compute.padded_inputs)
        tile_ic = tuple(d for d in divisors(channels, upto=16 * depth) if d % depth == 0)
        tile_ow = pixel_tiles(spec.out_width, regs - 2)
        tile_oh = pixel_tiles(spec.out_height, 4, least=2)

        def fits(config: Config) -> str | None:
            vec = config["tile_oc"] // lanes
            return register_fit(target, config["tile_oh"] * config["tile_ow"] * vec, vec)

        return Space(self.name, self.version, tile_knobs(tile_oc, tile_ic, tile_ow, tile_oh), fits)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        space, lanes = self.space(spec, target), self.step.lanes

        # as x86.direct's default: the most instructions per load, v*p / (v + p), within the
        # registers without the memory operand (AVX-512: 4 vectors x 2x2 pixels, or 2 x 7)
        def score(c: Config) -> tuple:
            v, p = c["tile_oc"] // lanes, c["tile_oh"] * c["tile_ow"]
            return (v * p / (v + p), -abs(c["tile_oh"] - c["tile_ow"]), c["tile_ow"])

        tiles = [c for c in space if c["reduce_order"] == "ic_kh_kw" and c["unroll_kw"]
                 and c["tile_ic"] == space["tile_ic"].values[-1]
                 and register_fit(target, c["tile_oh"] * c["tile_ow"] * c["tile_oc"] // lanes, c["tile_oc"] // lanes,
                                  memory_operand=False) is None]
        return dict(max(tiles, key=score), unroll_kw=spec.kernel[1] <= 3)

    def channel_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        return config["tile_oc"]

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        return config["tile_oc"], config["tile_ic"]

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        ob, ib, depth = config["tile_oc"], config["tile_ic"], self.step.depth

        def blocked(o, i, h, w):
            if ib == depth:  # no ib/depth axis: an axis of extent 1 makes the index map degenerate
                return (o // ob, i // depth, h, w, o % ob, i % depth)
            return (o // ob, i // ib, h, w, i % ib // depth, o % ob, i % depth)

        if spec.layout == "NCHW":
            return blocked
        return lambda h, w, i, o: blocked(o, i, h, w)

    def build_options(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        return partition_config(spec, config)

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        # the shared CPU loop nest with the instruction's lanes x depth block innermost
        step = self.step
        loops = direct_loops(sch, spec, config, pack_map=self.weight_pack(spec, target, config),
                             data_lanes=step.lanes * step.depth,  # a zmm of data
                             oc_parts=(config["tile_oc"] // step.lanes, step.lanes),
                             ic_parts=(config["tile_ic"] // step.depth, step.depth), prefetch=self.prefetch)
        ocv, oc_lanes = loops["oc"]
        sch.unroll(ocv)
        vectorize_inner(sch, sch.get_sblock("out"), step.lanes)
        outer = sch.get_loops(sch.get_sblock("conv"))[0]
        init = sch.decompose_reduction(sch.get_sblock("conv"), loops["reduction"][0])
        sch.vectorize(sch.get_loops(init)[-1])
        if self.use_instruction:
            # the LLVM function the intrinsic calls, imported once around the whole nest
            sch.annotate(outer, "pragma_import_llvm", step.llvm_ir())
            sch.tensorize(oc_lanes, step.tensor_intrin())

    #: prefetch the next weight panel (:class:`~schedules.x86.PrefetchNextPanel`)
    prefetch = False

    def finish(self, func: Any, spec: ConvSpec, target: Target, config: Config) -> Any:
        # as x86.direct; not where the padding holds a quantized input's non-zero zero point
        func = func if spec.data_zero_point else guard_dead_taps(func, spec, config)
        return prefetch_direct(func, spec, config) if self.prefetch else func


class DirectBF16X86(DotX86, name="x86.direct_bf16", version=1, families=("x86",), dtypes=("bfloat16",),
                    priority=30):
    """bf16 direct convolution on ``vdpbf16ps`` (AVX512_BF16): input channels in pairs."""

    step = VDPBF16PS


class DirectVNNIX86(DotX86, name="x86.direct_vnni", version=1, families=("x86",), dtypes=("uint8",), priority=30):
    """u8 x s8 -> s32 direct convolution on ``vpdpbusd`` (AVX512_VNNI): input channels in
    fours, exact integer sums."""

    step = VPDPBUSD


class DirectBF16PrefetchX86(PrefetchNextPanel, DirectBF16X86, name="x86.direct_bf16_prefetch", version=1,
                            families=("x86",), dtypes=("bfloat16",), priority=31):
    """``x86.direct_bf16`` prefetching the next weight panel (:class:`~schedules.x86.PrefetchNextPanel`).
    The defaults, weights evicted before each call (Emerald Rapids, 2 threads, ResNet-50's
    layers with 0.5-4.7 MB of bf16 weights): 0.88-0.99x ``x86.direct_bf16``'s time."""


class DirectVNNIPrefetchX86(PrefetchNextPanel, DirectVNNIX86, name="x86.direct_vnni_prefetch", version=1,
                            families=("x86",), dtypes=("uint8",), priority=31):
    """``x86.direct_vnni`` prefetching the next weight panel (:class:`~schedules.x86.PrefetchNextPanel`).
    The defaults, as measured for ``x86.direct_bf16_prefetch``, on ResNet-50's stage-4 layers
    (1-2.4 MB of s8 weights): 0.72-0.74x ``x86.direct_vnni``'s time."""


register(DirectBF16X86())
register(DirectVNNIX86())
register(DirectBF16PrefetchX86())
register(DirectVNNIPrefetchX86())
