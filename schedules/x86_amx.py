"""x86 convolutions on AMX tiles: ``tdpbusd`` (AMX-INT8) and ``tdpbf16ps`` (AMX-BF16).

AMX (Sapphire Rapids and later) adds eight tile registers ``tmm0-7`` of up to 16 rows x 64
bytes and one instruction that multiplies two of them into a third::

    tdpbusd   C, A, B   # C[m][n] (s32)  += sum over k, q < 4 of A[m][4k+q] (u8) * B[k][4n+q] (s8)
    tdpbf16ps C, A, B   # C[m][n] (fp32) += sum over k, q < 2 of A[m][2k+q] * B[k][2n+q] (bf16)

a 16 x 16 x 64 (int8) or 16 x 16 x 32 (bf16) product in 16 cycles: 1024 (512) multiply-adds
per cycle, 16x (8x) what ``vpdpbusd`` (``vdpbf16ps``) does in the same time on one port.

The convolution as tile products (NHWC, groups == 1). One block is ``tile_oh`` output rows
x ``tile_ow`` pixels x ``tile_oc`` output channels; its tensor intrinsic (one per layer
shape, :meth:`TileStep.tensor_intrin`) holds the whole reduction, every tap ``(kh, kw)`` and
every ``chunk`` of input channels (64 int8 or 32 bf16: one 64-byte tile row)::

    tilezero C tiles
    for kh, kw, channel chunks:
        tileloadd B tiles   # 16 output channels each, from the packed weights
        for each row r:
            tileloadd A     # tile_ow pixels of row r, straight from the (padded) NHWC input
            tdpbusd  C[r][j] += A . B[j]  for every B tile j
    tilestored C tiles      # to the block's 32-bit buffer, on the stack
    epilogue (vector code)  # bias, residual, activation, requantization, as every template

- **A** (one tile per row of pixels, two registers in turn, so a row's load overlaps the
  previous row's products): pixel ``ow`` of tap ``kw`` sits at input column
  ``ow * stride + kw * dilation``, so a tile row is ``chunk`` channels of one pixel and the
  next row is ``stride * C`` elements further: one strided ``tileloadd`` per row of pixels,
  no copy, any stride and dilation;
- **B** (``tile_oc / 16`` tiles): the weights packed ``K/ob 1 R S C/depth ob depth`` (the
  layout of :mod:`schedules.x86_dot` with all input channels in one block): ``chunk / depth``
  rows of 16 output channels x ``depth`` inputs = 64 bytes, the next row ``ob * depth``
  elements further;
- **C** (``tile_oh * tile_oc / 16`` tiles): the block's sums, zeroed in the tiles and stored
  once, after the last tap (the sums never go through memory between taps).

Tile budget, eight registers (the AMX analogue of :mod:`schedules.cpu`'s register budget)::

    tiles = tile_oh * tile_oc / 16 (C) + min(tile_oh, 2) (A) + tile_oc / 16 (B)  <= 8

2 x 2 (4 C, 2 A, 2 B) is the classic kernel: each A and B tile loaded feeds two products.
A tile's rows are the pixels of a row of the output (``tile_ow`` divides the width, <= 16):
56, 28 and 14 wide maps fill 14 of the 16 rows, 7 wide ones 7, where 4 rows x 16 channels
(4 C, 2 A, 1 B) load fewer bytes per product than 2 x 2: the default weighs the rows a step
loads (``tile_oh * tile_ow`` of A, 16 per B tile) against its multiply-adds. The parallel
loop runs over rows where the weights stay in L2 between blocks of rows, else over blocks of
output channels (each thread keeps its weight panel in L2 across the rows).

Tile shapes are set by ``ldtilecfg`` from a 64-byte constant (:meth:`TileStep.config_ir`, an
LLVM function imported into the module), once per parallel task, and released
(``tilerelease``) at its end: :meth:`AmxX86.finish` puts both around the body of the
parallel loop, since schedule primitives cannot place a statement there. A parallel task
is a block of output channels (or of rows) with all its pixels, so a task configures once
for many blocks: per block, configuring cost 12% of a 64->256 1x1 layer at 56x56. The tile
instructions are ``call_llvm_intrin`` on LLVM's immediate-register intrinsics
(``llvm.x86.tdpbusd(i8 C, i8 A, i8 B)``): TVM 0.27 ships no AMX intrinsic. The intrinsic's
description is the scheduled block's arithmetic written out per shape (unit loops have no
variable in the scheduled block, so none in the description either), its implementation
reads the operands through unsigned views (bf16's legalization would widen a bf16 address).

Linux hands AMX's 8 KB of tile state to a process only when it asks
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``); without it the first tile
instruction raises SIGILL. The library asks itself, on its first tile configuration, so a
kernel runs in any process that loads it (a tuner's worker, an RPC server); convgen's
runtime also asks before it runs one (:func:`convgen.cpufeatures.request_amx`, in
:meth:`convgen.target.Target.runs_here`), so a refusal is a clear error, not a signal.

Measured (Intel Xeon family 6 model 207, Emerald Rapids, 2 vCPUs, 2 threads; interleaved
with the tuned ``vpdpbusd`` kernels and oneDNN's through ``torch.ao``, int8 requantized to
u8, the defaults): ResNet-50's 3x3 layers 2.0-2.7x faster than ``x86.direct_vnni`` (0.77-0.89x
``torch.ao``'s speed), its 1x1 layers 1.4-1.6x (0.84-1.06x ``torch.ao``'s). Since the init
became an empty intrinsic (:meth:`TileStep.tensor_intrin`), the padding copy moved into the
tasks where it is cheap (:meth:`AmxX86.pad_place`), the requantizing epilogue lost its
``vrndscaleps`` (:func:`convgen.compute.epilogue`) and a checked call its 16 us of argument
wrapping (``scripts/bench_precision.py``, each call as a user makes it): the 3x3 layers
0.97-1.07x ``torch.ao``'s speed, the 1x1 layers 1.17-1.38x.
"""

from __future__ import annotations

import hashlib
import linecache
from dataclasses import dataclass
from typing import Any

from convgen.cpufeatures import ARCH_REQ_XCOMP_PERM, SYS_ARCH_PRCTL, XFEATURE_XTILEDATA
from convgen.knobs import Config, Knob, Space, divisors
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import channels_innermost, pack_weights, spatial_loops, vectorize_inner
from .x86 import channel_tiles

#: AMX's tile registers
TILES = 8
#: the widest tile row (bytes) and the most rows
ROW_BYTES, ROWS = 64, 16
#: output-channel blocks (x batch) from which those alone are the parallel tasks (each
#: configures the tiles once): below it, the row blocks are split too
TASKS = 8
#: output channels of one C tile: 16 32-bit lanes of a 64-byte row
TILE_N = 16
#: the most bytes the tasks may copy twice (halo rows) for the padding copy to go inside
#: them (:meth:`AmxX86.pad_place`)
PAD_EXTRA_BYTES = 128 * 1024


@dataclass(frozen=True)
class TileStep:
    """One AMX tile product as data: operand dtypes, input channels per 32-bit lane
    (``depth``), the CPU flags and LLVM features it needs, and LLVM's intrinsic."""

    instruction: str  # the mnemonic, for messages
    flags: tuple[str, ...]  # /proc/cpuinfo's names
    mattr: tuple[str, ...]  # LLVM's
    data: str
    weight: str
    acc: str
    depth: int
    llvm_name: str

    @property
    def element_bytes(self) -> int:
        return 4 // self.depth

    @property
    def most_channels(self) -> int:
        """Input channels of one 64-byte tile row."""
        return ROW_BYTES // self.element_bytes

    def available(self, target: Target) -> bool:
        """Does the target's code have the instruction?"""
        mattr = target.tvm.get("mattr", ())
        return all(f in target.cpu_flags for f in self.flags) and all(m in mattr for m in self.mattr)

    def chunk(self, ib: int) -> int:
        """Input channels per tile product for a reduction block of ``ib`` channels: the most
        that fit a 64-byte row and divide ``ib`` in whole ``depth`` groups."""
        return max(d for d in divisors(ib, upto=self.most_channels) if d % self.depth == 0)

    def config_ir(self, name: str, th: int, tw: int, nb: int, chunk: int) -> str:
        """LLVM IR of ``void @name()``: ``ldtilecfg`` from a constant 64-byte configuration
        (palette 1; per tile its bytes per row at offset 16 + 2t and rows at 48 + t) for
        ``th * nb`` C tiles, then :func:`a_tiles` A tiles, then ``nb`` B tiles."""
        cfg = bytearray(64)
        cfg[0] = 1

        def tile(t: int, rows: int, colsb: int) -> None:
            cfg[16 + 2 * t:18 + 2 * t] = colsb.to_bytes(2, "little")
            cfg[48 + t] = rows

        for t in range(th * nb):
            tile(t, tw, ROW_BYTES)
        for r in range(a_tiles(th)):
            tile(th * nb + r, tw, chunk * self.element_bytes)
        for j in range(nb):
            tile(th * nb + a_tiles(th) + j, chunk // self.depth, ROW_BYTES)
        data = "".join(f"\\{b:02X}" for b in cfg)
        # the first call in a process asks Linux for the tile state (module docstring), so
        # the library runs in any process that loads it (a tuner's worker, an RPC server)
        return f"""
@{name}.cfg = private unnamed_addr constant [64 x i8] c"{data}", align 64
@{name}.asked = private global i32 0
declare void @llvm.x86.ldtilecfg(ptr)
declare i64 @syscall(i64, ...)
define void @{name}() alwaysinline {{
entry:
  %asked = load i32, ptr @{name}.asked
  %first = icmp eq i32 %asked, 0
  br i1 %first, label %ask, label %configure
ask:
  %rc = call i64 (i64, ...) @syscall(i64 {SYS_ARCH_PRCTL}, i64 {ARCH_REQ_XCOMP_PERM}, i64 {XFEATURE_XTILEDATA})
  store i32 1, ptr @{name}.asked
  br label %configure
configure:
  call void @llvm.x86.ldtilecfg(ptr @{name}.cfg)
  ret void
}}
"""

    def tensor_intrin(self, spec: ConvSpec, th: int, tw: int, nb: int) -> tuple[str, str]:
        """Register (once per shape) and name the tensor intrinsics of one block: the ``th x
        tw`` pixels by ``nb * 16`` output channels, ``(zero, update)``.

        ``update`` sums the whole reduction (every tap, every input channel) into the sums
        and stores them last; its implementation starts from ``tilezero``, never from the
        sums in memory. ``zero`` is the reduction's init, which sets those sums to zero: its
        implementation is empty, as the sums start at zero in the tiles. Without it the init
        stays a loop of vector stores (a 3.5 KB memset per block of 2 x 14 x 32 int32 sums,
        overwritten by the tiles' stores). The pair computes what the init and the update
        describe; either alone does not, and the template places both, on one block.

        The description is the scheduled block's own arithmetic, written out as TVMScript
        (:meth:`intrin_source`): its variables are the block's, less those of unit extent
        (a 1x1 kernel has no tap variables, a single row of pixels no row variable), which
        the scheduled block drops too."""
        from tvm import tirx
        from tvm.s_tir import TensorIntrin
        from tvm.script import tirx as T

        name = (f"convgen.x86.{self.instruction}_{th}x{tw}x{nb}_c{spec.in_channels}_k{spec.kernel[0]}x{spec.kernel[1]}"
                f"_s{spec.stride[0]}x{spec.stride[1]}_d{spec.dilation[0]}x{spec.dilation[1]}")
        if TensorIntrin.get(name, allow_missing=True) is None:
            source, where = self.intrin_source(spec, th, tw, nb), f"<{name}>"
            # the TVMScript parser reads a function's source through linecache
            linecache.cache[where] = (len(source), None, source.splitlines(True), where)
            scope = {"T": T, "tirx": tirx}
            exec(compile(source, where, "exec"), scope)  # noqa: S102 - text made above, from numbers
            TensorIntrin.register(name, scope["desc"], scope["impl"])
            TensorIntrin.register(name + "_zero", scope["zero_desc"], scope["zero_impl"])
        return name + "_zero", name

    def intrin_source(self, spec: ConvSpec, th: int, tw: int, nb: int) -> str:
        """TVMScript of the description and implementation of :meth:`tensor_intrin`."""
        (R, S), (sh, sw), (dh, dw), C = spec.kernel, spec.stride, spec.dilation, spec.in_channels
        depth, acc, esize, ob = self.depth, self.acc, self.element_bytes, nb * TILE_N
        chunk = self.chunk(C)
        ah, aw = (th - 1) * sh + (R - 1) * dh + 1, (tw - 1) * sw + (S - 1) * dw + 1  # the input region
        rows, taps_h, taps_w = th > 1, R > 1, S > 1
        a_first, b_first = th * nb, th * nb + a_tiles(th)  # tile numbers: C tiles, then A, then B

        def idx(*parts: tuple[bool, str]) -> str:
            return ", ".join(p for keep, p in parts if keep)

        def term(var: str, step: int) -> str:
            return var if step == 1 else f"{var} * {step}"

        a_shape = idx((rows or taps_h, str(ah)), (True, str(aw)), (True, str(C)))
        b_shape = idx((taps_h, str(R)), (taps_w, str(S)), (True, f"{C // depth}, {ob}, {depth}"))
        c_shape = idx((rows, str(th)), (True, f"{tw}, {ob}"))
        a_row = " + ".join([term("vh", sh)] * rows + [term("vr", dh)] * taps_h) or "0"
        a_col = " + ".join([term("vw", sw)] + [term("vs", dw)] * taps_w)
        a_at = idx((rows or taps_h, a_row), (True, a_col), (True, "vk"))
        b_at = idx((taps_h, "vr"), (taps_w, "vs"), (True, f"vk // {depth}, vo, vk % {depth}"))
        c_at = idx((rows, "vh"), (True, "vw, vo"))
        loops = [("h", th, rows), ("w", tw, True), ("o", ob, True), ("r", R, taps_h), ("s", S, taps_w),
                 ("k", C // depth, True), ("q", depth, True)]
        loop_vars = ", ".join(v for v, _, keep in loops if keep)
        loop_ext = ", ".join(str(e) for _, e, keep in loops if keep)
        zero_vars = ", ".join(v for v, _, keep in loops[:3] if keep)
        zero_ext = ", ".join(str(e) for _, e, keep in loops[:3] if keep)
        # block variables in the scheduled block's order: oh, ow, oc, ic, kh, kw
        binds = [f"v{v} = T.axis.spatial({e}, {v})" for v, e, keep in loops[:3] if keep]
        binds.append(f"vk = T.axis.reduce({C}, k * {depth} + q)")
        binds += [f"v{v} = T.axis.reduce({e}, {v})" for v, e, keep in loops[3:5] if keep]
        full = lambda shape: ", ".join(f"0:{d.strip()}" for d in shape.split(","))  # noqa: E731
        bits = f"uint{8 * esize}"
        # strides of the operands (elements): symbolic, the buffers' own once tensorized
        a_strides = idx((rows or taps_h, "sa0"), (True, "sa"), (True, "1"))
        b_strides = idx((taps_h, "sb0"), (taps_w, "sb1"), (True, f"sb, {depth}, 1"))
        c_strides = idx((rows, "sc0"), (True, "sc, 1"))
        strides = [n for keep, n in ((rows or taps_h, "sa0"), (True, "sa"), (taps_h, "sb0"), (taps_w, "sb1"),
                                     (True, "sb"), (rows, "sc0"), (True, "sc")) if keep]

        def a_tile(r: int) -> str:  # row r of the block's pixels at tap (kr, ks), channel chunk kc
            row = " + ".join([f"{r * sh}"] + ([f"kr * {dh}"] if taps_h else []))
            col = "ks" + (f" * {dw}" if dw != 1 else "") if taps_w else "0"
            at = idx((rows or taps_h, row), (True, col), (True, f"kc * {chunk}"))
            return (f"T.call_llvm_intrin('void', 'llvm.x86.tileloadd64', T.int8({a_first + r % 2}), "
                    f"T.address_of(Av[{at}]), T.Cast('int64', sa * {sw * esize}))")

        def b_tile(j: int) -> str:
            at = idx((taps_h, "kr"), (taps_w, "ks"), (True, f"kc * {chunk // depth}, {j * TILE_N}, 0"))
            return (f"T.call_llvm_intrin('void', 'llvm.x86.tileloadd64', T.int8({b_first + j}), "
                    f"T.address_of(Bv[{at}]), T.Cast('int64', sb * {esize}))")

        def c_tile(t: int) -> str:
            at = idx((rows, str(t // nb)), (True, f"0, {t % nb * TILE_N}"))
            return (f"T.call_llvm_intrin('void', 'llvm.x86.tilestored64', T.int8({t}), T.address_of(C[{at}]), "
                    f"T.Cast('int64', sc * 4))")

        body = [f"T.evaluate(T.call_llvm_intrin('void', 'llvm.x86.tilezero', T.int8({t})))" for t in range(th * nb)]
        # B tiles first, then each row's A tile (two registers in turn: a row's load overlaps
        # the previous row's products) and its products with every B tile
        inner = [b_tile(j) for j in range(nb)]
        for r in range(th):
            inner.append(a_tile(r))
            inner += [f"T.call_llvm_intrin('void', '{self.llvm_name}', T.int8({r * nb + j}), "
                      f"T.int8({a_first + r % 2}), T.int8({b_first + j}))" for j in range(nb)]
        level = 0  # for taps (those of extent > 1), for chunks: load A, B; the products
        for v, e in (("kr", R), ("ks", S)):
            if e > 1:
                body.append("    " * level + f"for {v} in range({e}):")
                level += 1
        body.append("    " * level + f"for kc in range({C // chunk}):")
        body += ["    " * (level + 1) + f"T.evaluate({x})" for x in inner]
        body += [f"T.evaluate({c_tile(t)})" for t in range(th * nb)]
        pad = " " * 8
        impl_body = "\n".join(pad + line for line in body)
        cast_a, cast_b = f"T.cast(A[{a_at}], '{acc}')", f"T.cast(B[{b_at}], '{acc}')"
        return f"""
@T.prim_func(s_tir=True)
def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, ({a_shape}), '{self.data}', offset_factor=1, align=1)
    B = T.match_buffer(b, ({b_shape}), '{self.weight}', offset_factor=1, align=1)
    C = T.match_buffer(c, ({c_shape}), '{acc}', offset_factor=1, align=1, scope='local')
    with T.sblock("root"):
        T.reads(C[{full(c_shape)}], A[{full(a_shape)}], B[{full(b_shape)}])
        T.writes(C[{full(c_shape)}])
        for {loop_vars} in T.grid({loop_ext}):
            with T.sblock("update"):
                {chr(10).join(" " * 16 + b if i else b for i, b in enumerate(binds))}
                T.reads(C[{c_at}], A[{a_at}], B[{b_at}])
                T.writes(C[{c_at}])
                C[{c_at}] = C[{c_at}] + {cast_a} * {cast_b}


{"; ".join(f"{n} = tirx.Var('{n}', 'int32')" for n in strides)}


@T.prim_func(s_tir=True)
def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, ({a_shape}), '{self.data}', offset_factor=1, align=1, strides=({a_strides}))
    B = T.match_buffer(b, ({b_shape}), '{self.weight}', offset_factor=1, align=1, strides=({b_strides}))
    C = T.match_buffer(c, ({c_shape}), '{acc}', offset_factor=1, align=1, strides=({c_strides}), scope='local')
    with T.sblock("root"):
        T.reads(C[{full(c_shape)}], A[{full(a_shape)}], B[{full(b_shape)}])
        T.writes(C[{full(c_shape)}])
        # the tiles read raw memory: 16-bit views of bf16 buffers (TVM's bf16 legalization
        # widens every bf16 element it sees, an address's included)
        Av = T.decl_buffer(({a_shape}), '{bits}', data=A.data, elem_offset=A.elem_offset, strides=({a_strides}))
        Bv = T.decl_buffer(({b_shape}), '{bits}', data=B.data, elem_offset=B.elem_offset, strides=({b_strides}))
{impl_body}


@T.prim_func(s_tir=True)
def zero_desc(c: T.handle) -> None:
    C = T.match_buffer(c, ({c_shape}), '{acc}', offset_factor=1, align=1, scope='local')
    with T.sblock("root"):
        T.reads()
        T.writes(C[{full(c_shape)}])
        for {zero_vars} in T.grid({zero_ext}):
            with T.sblock("init"):
                {chr(10).join(" " * 16 + b if i else b for i, b in enumerate(binds[:-1 - taps_h - taps_w]))}
                T.reads()
                T.writes(C[{c_at}])
                C[{c_at}] = T.cast(0, '{acc}')


@T.prim_func(s_tir=True)
def zero_impl(c: T.handle) -> None:
    C = T.match_buffer(c, ({c_shape}), '{acc}', offset_factor=1, align=1, strides=({c_strides}), scope='local')
    with T.sblock("root"):
        T.reads()
        T.writes(C[{full(c_shape)}])
        T.evaluate(0)  # the update's tilezero
"""



#: AMX-INT8 (Sapphire Rapids+): u8 x s8 quads into s32, exact
TDPBUSD = TileStep("tdpbusd", ("amx_tile", "amx_int8"), ("+amx-tile", "+amx-int8"), "uint8", "int8", "int32", 4,
                   "llvm.x86.tdpbusd")
#: AMX-BF16 (Sapphire Rapids+): bf16 pairs into fp32
TDPBF16PS = TileStep("tdpbf16ps", ("amx_tile", "amx_bf16"), ("+amx-tile", "+amx-bf16"), "bfloat16", "bfloat16",
                     "float32", 2, "llvm.x86.tdpbf16ps")


def a_tiles(th: int) -> int:
    """A tile registers of a block of ``th`` rows: one per row up to two, reloaded in turn."""
    return min(th, 2)


def tiles_used(th: int, nb: int) -> int:
    """Tile registers of a block: ``th * nb`` C, :func:`a_tiles` A, ``nb`` B."""
    return th * nb + a_tiles(th) + nb


def tile_shapes(out_height: int) -> list[tuple[int, int]]:
    """``(tile_oh, C tiles per row)`` pairs within the eight tiles (module docstring); a
    ``tile_oh`` that does not divide the height computes the last block's rows past it."""
    return [(th, nb) for th in (1, 2, 3, 4) for nb in (1, 2, 3)
            if tiles_used(th, nb) <= TILES and th <= out_height]


class AmxX86(Template):
    """The convolution as AMX tile products (module docstring). A subclass names its
    :class:`TileStep`."""

    step: TileStep

    def refusal(self, spec: ConvSpec, target: Target, row: str) -> str | None:
        """What every tile template needs: the instruction, its weight dtype, no groups, NHWC
        data (``row``: what a tile row holds, for the message)."""
        step = self.step
        if not step.available(target):
            return f"target {target.name} has no {'/'.join(f.upper() for f in step.flags)} ({step.instruction})"
        if spec.filter_dtype != step.weight:
            return f"{spec.filter_dtype} weights ({step.instruction} takes {step.weight})"
        if spec.groups != 1:
            return "grouped convolution"
        if spec.layout != "NHWC":
            return f"NCHW data (a tile row is {row}: NHWC only)"
        return None

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        step = self.step
        why = self.refusal(spec, target, "one pixel's channels")
        if why:
            return why
        if spec.in_channels % step.depth or spec.in_channels < 4 * step.depth:
            # an RGB stem would fill 4 of a row's 64 bytes: vpdpbusd serves it
            return f"{spec.in_channels} input channels (a multiple of {step.depth}, at least {4 * step.depth})"
        if divisors(spec.out_width, upto=ROWS)[-1] == 1:  # a classifier's 1x1 map: vpdpbusd's
            return f"output width {spec.out_width} has no divisor in 2..{ROWS} for a tile's rows"
        return None

    def channel_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        return config["tile_oc"]

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        return config["tile_oc"], spec.in_channels

    def row_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        # a 7-row map in blocks of 4 rows computes 8: each weight tile loaded (1 KB, from L2)
        # feeds 4 rows of 7 pixels instead of one
        return config["tile_oh"]

    def space(self, spec: ConvSpec, target: Target) -> Space:
        tile_oc = tuple(t for t in channel_tiles(spec.out_channels, TILE_N) if t <= 3 * TILE_N)
        tile_oc = tuple(sorted(set(tile_oc) | {m * TILE_N for m in (1, 2, 3) if spec.out_channels % (m * TILE_N) == 0}))
        knobs = (
            Knob("tile_oc", tile_oc, "output channels per block: 16 per C tile, one B tile each"),
            Knob("tile_ow", tuple(d for d in divisors(spec.out_width, upto=ROWS) if d > 1),
                 "output pixels of a row: the rows of the A and C tiles"),
            Knob("tile_oh", tuple(sorted({th for th, _ in tile_shapes(spec.out_height)})),
                 "output rows: one A tile load each (two registers in turn)"),
            Knob("order", ("channels", "pixels"),
                 "parallel over output-channel blocks, pixels inner (each thread keeps its weight panel), "
                 "or over rows, channel blocks inner (each keeps its pixels)"),
        )
        if any(spec.padding):
            knobs += (Knob("pad", ("copy", "task"),
                           "the padding copy: a parallel stage of its own, or inside each task of order=pixels "
                           "(its block of rows and their halo, into L1; no stage to start and join)"),)

        def fits(config: Config) -> str | None:
            th, nb = config["tile_oh"], config["tile_oc"] // TILE_N
            tiles = tiles_used(th, nb)
            return None if tiles <= TILES else f"{tiles} tiles > {TILES}"

        return Space(self.name, self.version, knobs, fits)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        space = self.space(spec, target)

        # the most multiply-adds per 64-byte row loaded: a step loads th A tiles of tile_ow
        # rows and nb B tiles of 16 for th * nb products of tile_ow x 16 sums, per row
        # computed (rows past the map are waste); then the widest rows. 2 x 2 on 14-wide
        # rows, 4 x 1 on 7-wide ones (512->512 3x3 at 7x7: 68 us, 2 x 2 74, 1 x 2 79)
        def score(c: Config) -> tuple:
            th, nb, tw = c["tile_oh"], c["tile_oc"] // TILE_N, c["tile_ow"]
            waste = -(-spec.out_height // th) * th / spec.out_height
            return (th * tw * nb * TILE_N / (th * tw + nb * TILE_N) / waste, tw, -c["tile_oc"])

        # rows in parallel (each thread reads every weight for each block of rows, writes
        # whole output rows) where the weights stay in L2 between the blocks; else channel
        # blocks in parallel, each thread keeping its panel in L2 across the rows. Measured on
        # a Xeon with AMX (2 MB L2), 2 threads: 64->256 1x1 at 56x56 (16 KB of weights) rows
        # 71 us vs panels 142; 2048->512 1x1 at 7x7 (1 MB) 41 vs 55; 512->512 3x3 at 7x7
        # (2.4 MB) panels 2.2x faster
        weights = spec.kernel[0] * spec.kernel[1] * spec.in_channels * spec.out_channels * self.step.element_bytes
        order = "pixels" if weights <= int(target.isa.get("l2_kib", 1024)) * 1024 else "channels"
        best = max((c for c in space if c["order"] == order and c.get("pad", "copy") == "copy"), key=score)
        if "pad" in space.names:
            best = space.check({**best, "pad": self.pad_place(spec, best)})
        return best

    def pad_place(self, spec: ConvSpec, config: Config) -> str:
        """Where the default copies the padded input: inside each task of ``order="pixels"``
        (no parallel stage to start and join: ~2-4 us on 2 threads) unless the tasks' halo
        rows, copied twice, add more than :data:`PAD_EXTRA_BYTES` (about what 2 cores copy in
        that time). Measured (int8, defaults otherwise): ResNet-50's 3x3 layers at 28x28
        and 14x14, stride 1 and 2, 0.95-0.99x the time with the copy in the tasks; 64->64 at
        56x56, where the halo adds 200 KB, 1.04x."""
        if config["order"] != "pixels":
            return "copy"
        (R, _), (s, _), (d, _) = spec.kernel, spec.stride, spec.dilation
        th = config["tile_oh"]
        rows = (th - 1) * s + (R - 1) * d + 1  # input rows of a task
        tasks = spec.batch * -(-spec.out_height // th)
        padded_h, padded_w = spec.height + spec.padding[0] + spec.padding[2], spec.width + spec.padding[1] + spec.padding[3]
        extra = (tasks * rows - spec.batch * padded_h) * padded_w * spec.in_channels * self.step.element_bytes
        return "task" if extra <= PAD_EXTRA_BYTES else "copy"

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        ob, depth = config["tile_oc"], self.step.depth
        # x86_dot's layout with the whole reduction in one input block:
        # K/ob 1 R S C/depth ob depth
        if spec.kernel[1] == 1 < spec.kernel[0]:
            # an R x 1 kernel: its unit tap axis goes before R (the same memory). tensorize
            # matches a block's region of the buffer only when its unit axes lead
            return lambda h, w, i, o: (o // ob, i // spec.in_channels, w, h, i // depth, o % ob, i % depth)
        return lambda h, w, i, o: (o // ob, i // spec.in_channels, h, w, i // depth, o % ob, i % depth)

    def config_function(self, spec: ConvSpec, config: Config) -> str:
        """The name of the kernel's tile-configuration function (content-named)."""
        shape = (config["tile_oh"], config["tile_ow"], config["tile_oc"] // TILE_N, self.step.chunk(spec.in_channels))
        return "convgen_amx_cfg_" + hashlib.sha1(repr((self.step.instruction, shape)).encode()).hexdigest()[:12]

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        step = self.step
        ob, th, tw = config["tile_oc"], config["tile_oh"], config["tile_ow"]
        conv = sch.get_sblock("conv")
        # the padding copy: a stage of its own (a parallel loop: ~4 us to start and join on 2
        # threads) where a task's blocks read all rows; inside each task where it reads a block
        # of rows (below)
        in_task = config["order"] == "pixels" and config.get("pad", "copy") == "task"
        data = channels_innermost(sch, spec, conv, spec.in_channels, ROW_BYTES // step.element_bytes, loops=not in_task)
        pack_weights(sch, spec, conv, self.weight_pack(spec, target, config), ob, spec.in_channels)
        L = spatial_loops(sch, spec, conv)
        oco, oci = sch.split(L["oc"], [None, ob])
        oho, ohi = sch.split(L["oh"], [None, th])
        owo, owi = sch.split(L["ow"], [None, tw])
        ick, icq = sch.split(L["ic"], [None, step.depth])
        # the tile product's loops in its description's order; unit taps (a 1x1 kernel) stay
        # outside, as the description has no variable for them
        (R, S) = spec.kernel
        taps = [lp for lp, e in ((L["kh"], R), (L["kw"], S)) if e > 1]
        units = [lp for lp, e in ((L["kh"], R), (L["kw"], S)) if e == 1]
        unit = [ohi, owi, oci, *taps, ick, icq]
        # few parallel tasks, each configuring the tiles once (ldtilecfg and tilerelease are
        # not free): the output-channel (row) blocks alone where there are enough of them
        n, blocks = spec.batch, -(-spec.out_channels // ob)
        if config["order"] == "channels":
            sch.reorder(L["n"], oco, oho, owo, *units, *unit)
            outer = sch.fuse(L["n"], oco) if n * blocks >= TASKS else sch.fuse(L["n"], oco, oho)
        else:
            sch.reorder(L["n"], oho, owo, oco, *units, *unit)
            outer = sch.fuse(L["n"], oho)
        sch.parallel(outer)
        if data is not None and in_task:
            sch.compute_at(data, outer)
            vectorize_inner(sch, data, ROW_BYTES // step.element_bytes)
        # the block's sums: a stack buffer of the block (a global one that size is a heap
        # workspace, allocated per block)
        sch.set_scope(conv, 0, "local")
        sch.reverse_compute_at(sch.get_sblock("out"), oco if config["order"] == "pixels" else owo)
        vectorize_inner(sch, sch.get_sblock("out"), TILE_N)
        sch.annotate(outer, "pragma_import_llvm", step.config_ir(self.config_function(spec, config), th, tw,
                                                                  ob // TILE_N, step.chunk(spec.in_channels)))
        # the init (zero sums) as its own block, before the block's loops, for the empty
        # intrinsic that stands for it (TileStep.tensor_intrin); a single row's unit loop
        # stays outside (the intrinsics have no row variable then)
        zero, update = step.tensor_intrin(spec, th, tw, ob // TILE_N)
        init = sch.decompose_reduction(conv, units[0] if units else ohi)
        init_loops = sch.get_loops(init)[-3:]  # its ohi, owi, oci
        sch.tensorize(init_loops[0] if th > 1 else init_loops[1], zero)
        sch.tensorize(ohi if th > 1 else owi, update)

    def finish(self, func: Any, spec: ConvSpec, target: Target, config: Config) -> Any:
        """Each parallel task configures the tiles first and releases them last."""
        import tvm_ffi
        from tvm import tirx

        name = self.config_function(spec, config)
        configure = tirx.Evaluate(tirx.call_extern("void", name))
        release = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.x86.tilerelease"))

        def on_for(loop: Any) -> Any:
            if loop.kind != tirx.ForKind.PARALLEL or not _has_tiles(loop.body):
                return loop
            return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind,
                            tirx.SeqStmt([configure, loop.body, release]), loop.thread_binding, loop.annotations)

        return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, on_for), order="post"))


def _has_tiles(stmt: Any) -> bool:
    """Does ``stmt`` hold a tensorized tile product?"""
    import tvm
    import tvm_ffi

    found = False
    intrin = tvm.ir.Op.get("tirx.call_llvm_intrin")

    def on_call(call: Any) -> None:
        nonlocal found
        found = found or call.op.same_as(intrin)

    tvm_ffi.structural_walk(stmt, [(tvm.ir.Call, on_call)])
    return found


class AmxInt8X86(AmxX86, name="x86.amx_int8", version=1, families=("x86",), dtypes=("uint8",), priority=40):
    """u8 x s8 -> s32 convolution on AMX-INT8's ``tdpbusd``: exact integer sums."""

    step = TDPBUSD


class AmxBF16X86(AmxX86, name="x86.amx_bf16", version=1, families=("x86",), dtypes=("bfloat16",), priority=40):
    """bf16 convolution on AMX-BF16's ``tdpbf16ps``: fp32 sums of bf16 products."""

    step = TDPBF16PS


register(AmxInt8X86())
register(AmxBF16X86())


class FoldedStem:
    """A stem's few input channels on AMX tiles: each output pixel's taps along a row folded
    into one tile row (mixed into a tile template: :class:`AmxBF16StemX86`,
    :class:`AmxInt8StemX86`).

    An RGB image has 3 channels: one pixel's are 3-6 of a tile row's 64 bytes, which is why
    the tile templates refuse it. A row of taps (``S`` of them, ``dw`` apart) reads ``S * C``
    consecutive values of an NHWC row (21 for a 7x7 stem): the template copies them,
    zero-filled to one tile row (:meth:`fold`: 32 bf16 or 64 u8 values), into a folded input
    ``data_pad[n, r, ow, j]`` = padded row ``r`` at output column ``ow``, ``j = kw * C + c``,
    and computes the convolution with kernel ``R x 1``, stride ``sh x 1`` on it: the tile
    template's own loops, tile product and epilogue (:meth:`folded` is that spec). The
    weights are folded the same way (``w[r, j // C, j % C, k]``, zeros past ``S * C``) by
    ``pack_weights``. Pixels outside the image hold the data's zero point, as the spec's
    padding does.

    Arithmetic, ResNet-50's 7x7 stem (224x224, stride 2, 64 filters) in bf16: 112 x 112 x 64
    x 7 tile products of depth 32 (21 real: 1.5x the multiply-adds), the folded input 230 x
    112 x 64 bytes = 1.6 MB written once; 22 k ``tdpbf16ps`` of 16 rows. fp32 FMAs
    (``x86.direct``) do the real 118 M multiply-adds at 32 per cycle per core at best.
    Measured (Emerald Rapids, 2 threads): 230 us against ``x86.direct``'s 920 (fp32 data,
    bf16 output, its tuned record) and ``x86.direct_bf16``'s 2000 (bf16 data, channels
    padded to 4). A model in bfloat16 gives its stem bf16 data where the bf16 one serves
    (:func:`convgen.torch._in_precision`).
    """

    step: TileStep

    def fold(self) -> int:
        """Values of one folded tile row: a 64-byte row of the step's data."""
        return self.step.most_channels

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        step = self.step
        why = self.refusal(spec, target, "one pixel's run of taps")
        if why:
            return why
        if spec.in_channels >= 4 * step.depth:
            return f"{spec.in_channels} input channels: the tile template takes them without folding"
        if spec.in_channels * spec.kernel[1] > self.fold():
            return f"{spec.kernel[1]} taps x {spec.in_channels} channels > {self.fold()} (one tile row)"
        if spec.out_channels % TILE_N:
            return f"{spec.out_channels} filters (whole C tiles of {TILE_N} only)"
        if spec.flip:
            return "a flipped (true) convolution"
        if divisors(spec.out_width, upto=ROWS)[-1] == 1:
            return f"output width {spec.out_width} has no divisor in 2..{ROWS} for a tile's rows"
        return None

    def folded(self, spec: ConvSpec) -> ConvSpec:
        """The convolution the tiles compute: the folded input (:meth:`fold` channels, the
        padded rows, the output's columns), kernel ``R x 1``, stride ``sh x 1``."""
        (R, _), (sh, _), (dh, _) = spec.kernel, spec.stride, spec.dilation
        return ConvSpec(batch=spec.batch, in_channels=self.fold(), out_channels=spec.out_channels,
                        height=(spec.out_height - 1) * sh + (R - 1) * dh + 1, width=spec.out_width,
                        kernel=(R, 1), stride=(sh, 1), dilation=(dh, 1), layout="NHWC", dtype=spec.dtype)

    def space(self, spec: ConvSpec, target: Target) -> Space:
        return super().space(self.folded(spec), target)  # named after this template (self.name)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        return super().default(self.folded(spec), target)

    def primfunc(self, spec: ConvSpec, target: Target, config: Config, prefolded: bool = False) -> Any:
        """``main``: the fold of the data (``data_pad``) and of the weights (``weight_pad``,
        or, ``prefolded``, the weight argument holds them folded: the definition whose
        packing becomes ``main_prepacked``), the ``R x 1`` reduction, the spec's epilogue."""
        from tvm import te, tirx

        from convgen.compute import epilogue, padded_rows

        folded, (R, S), (sh, sw), (dh, dw) = self.folded(spec), spec.kernel, spec.stride, spec.dilation
        C, pt, pl, J, acc = spec.in_channels, spec.padding[0], spec.padding[1], self.fold(), self.step.acc
        rows = (padded_rows(spec, config["tile_oh"]) - 1) * sh + (R - 1) * dh + 1
        data = te.placeholder(spec.input_shape, spec.dtype, name="data")

        def fold(n, r, ow, j):
            h, w = r - pt, ow * sw - pl + (j // C) * dw  # for dw == 1, consecutive j: consecutive memory
            inside = tirx.all(h >= 0, h < spec.height, w >= 0, w < spec.width)
            # outside the image the padding's value (the zero point); past S * C taps, zero
            # filters: any value
            return tirx.if_then_else(tirx.all(inside, j < S * C), data[n, h, w, j % C],
                                     tirx.const(spec.data_zero_point, spec.dtype))

        data_pad = te.compute((spec.batch, rows, spec.out_width, J), fold, name="data_pad")
        if prefolded:
            weight = filters = te.placeholder(folded.weight_shape, spec.filter_dtype, name="weight")
        else:
            weight = te.placeholder(spec.weight_shape, spec.filter_dtype, name="weight")
            filters = self._fold_weights(spec, weight)
        j, kh = te.reduce_axis((0, J), name="ic"), te.reduce_axis((0, R), name="kh")
        kw = te.reduce_axis((0, 1), name="kw")
        conv = te.compute(
            (spec.batch, padded_rows(spec, config["tile_oh"]), spec.out_width, spec.out_channels),
            lambda n, oh, ow, oc: te.sum(data_pad[n, oh * sh + kh * dh, ow + kw, j].astype(acc)
                                         * filters[kh, kw, j, oc].astype(acc), axis=[j, kh, kw]),
            name="conv")
        inputs, out = epilogue(spec, conv, acc)
        return te.create_prim_func([data, weight] + inputs + [out]).with_attr("global_symbol", "main")

    def _fold_weights(self, spec: ConvSpec, weight: Any) -> Any:
        """``weight_pad``: HWIO filters folded to ``R x 1 x fold x K``, zeros past ``S * C``."""
        from tvm import te, tirx

        C, S, dt = spec.in_channels, spec.kernel[1], spec.filter_dtype
        return te.compute((spec.kernel[0], 1, self.fold(), spec.out_channels),
                          lambda r, s, j, o: tirx.if_then_else(j < S * C, weight[r, j // C, j % C, o], tirx.const(0, dt)),
                          name="weight_pad")

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        return super().weight_pack(self.folded(spec), target, config)

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        return config["tile_oc"], self.fold()

    def pack_function(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        """``pack_weights(weight, packed)``: the fold of the weights, in the tiles' layout."""
        import tvm.s_tir as s_tir
        from tvm import te

        from .common import layout_pack

        weight = te.placeholder(spec.weight_shape, spec.filter_dtype, name="weight")
        func = te.create_prim_func([weight, self._fold_weights(spec, weight)]).with_attr("global_symbol", "main")
        sch = s_tir.Schedule(func)
        layout_pack(sch, self.folded(spec), sch.get_sblock("weight_pad"), self.weight_pack(spec, target, config),
                    *self.pack_blocks(spec, target, config))
        return sch.mod["main"]

    def prepared_weights(self, spec: ConvSpec, target: Target, config: Config, main: Any,
                         scheduled: Any) -> dict[str, Any]:
        """``pack_weights`` folds and packs; ``main_prepacked`` is the prefolded definition
        without its packing block (:meth:`Template.prepared_weights`'s route)."""
        import tvm
        import tvm.s_tir as s_tir

        main = scheduled(self.primfunc(spec, target, config, prefolded=True))
        prepacked = s_tir.transform.RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(
            tvm.IRModule({"main": main}))["main"]
        return {"main_prepacked": prepacked, "pack_weights": self.pack_function(spec, target, config)}

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        super().apply(sch, self.folded(spec), target, config)

    def config_function(self, spec: ConvSpec, config: Config) -> str:
        return super().config_function(self.folded(spec), config)

    def finish(self, func: Any, spec: ConvSpec, target: Target, config: Config) -> Any:
        return super().finish(func, self.folded(spec), target, config)


class AmxBF16StemX86(FoldedStem, AmxBF16X86, name="x86.amx_bf16_stem", version=1, families=("x86",),
                     dtypes=("bfloat16",), priority=41):
    """An RGB stem in bf16 on ``tdpbf16ps``: 32 folded values a tile row (:class:`FoldedStem`)."""


class AmxInt8StemX86(FoldedStem, AmxInt8X86, name="x86.amx_int8_stem", version=1, families=("x86",),
                     dtypes=("uint8",), priority=41):
    """An RGB stem in u8 x s8 on ``tdpbusd``: 64 folded values a tile row (:class:`FoldedStem`)."""


register(AmxBF16StemX86())
register(AmxInt8StemX86())
