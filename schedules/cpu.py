"""What the CPU templates share: the register budget of a tile, and the blocked direct loop nest.

Register budget
---------------
A micro-kernel keeps a tile of accumulators in vector registers. Each step of the reduction
loads the tile's weight vectors and broadcasts one input value::

    live = accumulators + weight vectors + 1 (the broadcast)  <= registers (+1)

The one register over is the x86 case: an FMA can read one operand (the weight vector)
from memory, so the last weight vector need not occupy a register. AArch64's FMLA takes
registers only, so a tile must fit the 32 ``v`` registers outright. The target says which
(``isa.fma_memory_operand`` in its TOML). AVX2: 16 ymm, AVX-512 and NEON: 32.

The direct loop nest
--------------------
One ISA-neutral schedule serves the x86 and ARM direct templates (float32 on FMA/FMLA,
int8 on SDOT): data re-laid out with its channels innermost in blocks of ``tile_ic``, weights
packed to whole channel blocks, the reduction's result tile with ``tile_oc`` channels
innermost, then::

    parallel n, oc blocks, oh blocks:
      for ow blocks:
        for (ic blocks, kh, kw, ic in block)  or  (kh, kw, ic blocks, ic in block):
          for oh, ow in the tile (unrolled):
            for oc in the tile: acc[oh, ow, oc] += data[...] * weight[...]   # vector lanes
        out[tile] = epilogue(acc)                                              # in registers

:func:`direct_loops` builds it and returns the loops by name; each template adds what its
instructions need (vectorize, tensorize) and decomposes the reduction last.

Taps that read only padding
---------------------------
A dilated layer on a small map reads mostly padding: DeepLabV3's ASPP branches on a 28x28
map (3x3, dilation and padding 12 and 24) spend 49% and 82% of their multiply-adds on the
zeros around the image (a tap ``kh`` of output row ``oh`` reads input row
``oh*stride + kh*dilation - pad``, outside the image for most ``(oh, kh)``). The padded copy
stays (a tile that straddles the image's edge still reads zeros), but
:func:`skip_dead_taps` runs each ``kh`` (``kw``) step of the reduction only for a register
tile whose rows (columns) under that tap reach the image: a branch per tile and tap, no
per-element test in the micro-kernel. A skipped step would have added ``0 * w`` to every
accumulator, so the sums are those of the dense loop (NaN or infinite filters aside, whose
products with the padding nobody wants). Measured on the 2-vCPU Zen 5, 512 -> 256 channels
at 28x28, the x86.direct default: dilation 24 5.4x faster, 12 2.0x; that is the work the
tiles skip (82%, 51%), the padded copy itself costs 0.1-0.2 ms of the 1.9 and 4.3 ms left.
Templates apply it (:func:`guard_dead_taps`) where their tiles skip at least
:data:`DEAD_TAP_SHARE` of the work: below that the kernels stay the code they were tuned as.

Prefetching the next weight panel
---------------------------------
In the ``"channels"`` order each thread owns whole weight panels (``W[oc block]``) and
streams its pixel tiles past one panel, then the next. Inside a network the weights come
from memory (a forward reads every layer's once), so the first tile of each panel waits for
it: on 2 threads of the Emerald Rapids Xeon ResNet-50's stage-4 layers took 1.4-1.7x their
time with the weights in cache. :func:`prefetch_next_panel` gives every step of a marked
reduction loop a few ``prefetcht1`` of the *next* panel's same block, each pixel tile its
share of the block's lines, so the next panel reaches L2 spread over the current one's
work (a software prefetch never faults, and the addresses are clamped into the buffer
besides). Templates opt in through a variant (``x86.direct_prefetch``,
``schedules.x86.PrefetchNextPanel``): a changed schedule under an existing name would
leave its records describing kernels that no longer exist.
"""

from __future__ import annotations

import math
from typing import Any

from convgen.knobs import Config, Knob, divisors
from convgen.spec import ConvSpec
from convgen.target import Target

from .common import channels_innermost, pack_weights, spatial_loops


def register_fit(target: Target, accumulators: int, vectors: int, *, budget: int | None = None,
                 memory_operand: bool | None = None) -> str | None:
    """``None`` if ``accumulators`` + ``vectors`` weight vectors + 1 broadcast fit the
    target's vector registers (or ``budget`` of them), else why not. ``memory_operand``
    (default: the target's ``fma_memory_operand``) allows one register over the file."""
    regs = target.registers if budget is None else budget
    spare = target.fma_memory_operand if memory_operand is None else memory_operand
    live = accumulators + vectors + 1
    if live <= regs + int(spare):
        return None
    return f"register tile needs {live} > {regs} registers" + ("" if spare else " (FMA has no memory operand here)")


#: pixel tiles offered beside a dimension's divisors when it has none worth a tile (17, 149):
#: the last tile of a row is shorter (a tail loop of its own, see :func:`needs_partition`)
RAGGED = (2, 4, 6, 8, 12, 14, 16)


def pixel_tiles(extent: int, upto: int, *, least: int = 4) -> tuple[int, ...]:
    """Tile sizes along an output dimension of ``extent``: its divisors up to ``upto``, and,
    when no divisor at all lies in ``[least, max(RAGGED)]`` (a prime width like Inception's 17), the
    :data:`RAGGED` sizes too. Dimensions with good divisors (every ResNet and MobileNet map:
    112, 56, 28, 14, 7) get their divisors alone, so their spaces, space hashes and records
    are those of before ragged tiles existed."""
    found = divisors(extent, upto=upto)
    if any(least <= d <= max(RAGGED) for d in divisors(extent)) or extent <= least:
        return tuple(found)
    return tuple(sorted(set(found) | {t for t in RAGGED if t < extent and t <= upto}))


def needs_partition(spec: ConvSpec, config: Config) -> bool:
    """Does the config tile a dimension by a size that does not divide it? Its blocks then
    carry a bounds predicate, which TVM's loop partition moves to a tail loop so that the
    main tiles stay branch-free (:func:`partition_config`)."""
    return bool(spec.out_width % config.get("tile_ow", 1) or spec.out_height % config.get("tile_oh", 1))


#: the TVM pass option that splits loops at constant bounds (a ragged tile's tail, a padded
#: border) from their uniform part
LOOP_PARTITION = {"s_tir.LoopPartition": {"partition_const_loop": True}}


def partition_config(spec: ConvSpec, config: Config) -> dict[str, Any]:
    """The TVM pass options a config's build needs: loop partition for ragged tiles (only
    then, so the code of every other config stays what it was)."""
    return dict(LOOP_PARTITION) if needs_partition(spec, config) else {}


def tile_knobs(tile_oc: tuple, tile_ic: tuple, tile_ow: tuple, tile_oh: tuple) -> tuple[Knob, ...]:
    """The knobs of a blocked direct convolution (x86, ARM float and ARM int8)."""
    return (
        Knob("tile_oc", tile_oc, "output channels per register tile (a multiple of the vector lanes)"),
        Knob("tile_ic", tile_ic, "input-channel block of the packed data and weights"),
        Knob("tile_ow", tile_ow, "output pixels per row in the register tile"),
        Knob("tile_oh", tile_oh, "output rows in the register tile"),
        Knob("reduce_order", ("ic_kh_kw", "kh_kw_ic"), "order of the reduction loops outside the channel block"),
        Knob("unroll_kw", (False, True), "unroll the kernel-width loop"),
    )


def tile_registers(config: Config, lanes: int) -> tuple[int, int]:
    """``(accumulators, weight vectors)`` of a direct tile: ``tile_oh * tile_ow`` pixels by
    ``tile_oc / lanes`` vectors of channels."""
    vec = config["tile_oc"] // lanes
    return config["tile_oh"] * config["tile_ow"] * vec, vec


def direct_loops(sch: Any, spec: ConvSpec, config: Config, *, pack_map: Any, data_lanes: int,
                 oc_parts: tuple[int, ...], ic_parts: tuple[int, ...], order: str = "channels",
                 prefetch: bool = False) -> dict[str, Any]:
    """The blocked direct loop nest above, on the conv PrimFunc in ``sch``.

    ``pack_map``: the packed weight layout (an index map over the weight's axes);
    ``data_lanes``: vector lanes of the data stage's copy; ``oc_parts`` / ``ic_parts``: how
    ``tile_oc`` / ``tile_ic`` split below their block loop (``(tile_oc,)`` for float lanes,
    ``(tile_oc // 4, 4)`` for SDOT's 4x4 blocks); the last ``ic`` part, when there are two,
    goes innermost (SDOT's 4 channels). ``order``: ``"channels"`` (the nest above: the
    threads split the output-channel blocks, each keeps its weight panel and reads every
    pixel) or ``"pixels"`` (``parallel n, oh blocks: for ow blocks: for oc blocks``: the
    threads split the rows, each reads every weight and keeps its pixels, which the layer
    before wrote on the same core when it was split alike). ``prefetch`` (``"channels"``
    order): mark the loop whose every step reads one whole block of a weight panel, for
    :func:`prefetch_direct`. Returns the loops the templates go on with: ``oc`` (the
    parts below the output-channel block loop) and ``reduction`` (outermost first; not
    decomposed yet).
    """
    ob, ib = config["tile_oc"], config["tile_ic"]
    conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
    # data: channels innermost in blocks of ib (NHWC has them innermost already)
    channels_innermost(sch, spec, conv, ib, data_lanes)
    # weights: whole channel blocks, contiguous per (ic, kh, kw): see the template's weight_pack
    pack_weights(sch, spec, conv, pack_map, ob, ib)
    # the reduction's result tile, ob innermost, so accumulators are whole vectors
    if spec.layout == "NCHW":
        sch.transform_layout(conv, ("write", 0), lambda n, k, h, w: (n, k // ob, h, w, k % ob))
    L = spatial_loops(sch, spec, conv)
    oco, *oc = sch.split(L["oc"], [None, *oc_parts])
    oho, ohi = sch.split(L["oh"], [None, config["tile_oh"]])
    owo, owi = sch.split(L["ow"], [None, config["tile_ow"]])
    ico, *ic = sch.split(L["ic"], [None, *ic_parts])
    ic_mid, ic_inner = ic[0], ic[1:]
    if config["reduce_order"] == "ic_kh_kw":
        reduction = [ico, L["kh"], L["kw"], ic_mid]
    else:
        reduction = [L["kh"], L["kw"], ico, ic_mid]
    if order == "pixels":
        sch.reorder(L["n"], oho, owo, oco, *reduction, ohi, owi, *oc, *ic_inner)
        sch.parallel(sch.fuse(L["n"], oho))
        sch.reverse_compute_at(out, oco)
    else:
        sch.reorder(L["n"], oco, oho, owo, *reduction, ohi, owi, *oc, *ic_inner)
        sch.parallel(sch.fuse(L["n"], oco, oho))
        sch.reverse_compute_at(out, owo)
    sch.unroll(owi)
    sch.unroll(ohi)
    if config["unroll_kw"]:
        sch.unroll(L["kw"])
    if prefetch:
        if order != "channels":
            raise ValueError("prefetch_next_panel needs the threads to own weight panels (order 'channels')")
        # the loop above the channels in a block: each of its steps reads W[oc block, ic block, kh, kw, :, :]
        sch.annotate(reduction[-2], PREFETCH, 1)
    return {"oc": oc, "reduction": reduction}


#: the share of a layer's multiply-adds that must read only padding (for the config's tiles)
#: before a template guards its tap loops (:func:`guard_dead_taps`): 3x3 layers padded by one
#: on maps of 14x14 and more stay below it (9% with one-pixel tiles, less with larger ones),
#: dilated layers on small maps are far above it (DeepLabV3's: 49% and 82%)
DEAD_TAP_SHARE = 0.125


def dead_tap_share(spec: ConvSpec, tile_oh: int, tile_ow: int) -> float:
    """The share of the dense loop's multiply-adds that :func:`skip_dead_taps` skips with
    register tiles of ``tile_oh x tile_ow`` output pixels (a ragged last tile included):
    those of the (tile, tap) pairs whose rows or columns all read padding."""

    def live(out: int, tile: int, stride: int, dilation: int, taps: int, pad: int, size: int) -> float:
        done = 0
        for start in range(0, out, tile):
            rows = range(start, min(start + tile, out))
            done += len(rows) * sum(any(0 <= o * stride + k * dilation - pad < size for o in rows) for k in range(taps))
        return done / (out * taps)

    rows = live(spec.out_height, tile_oh, spec.stride[0], spec.dilation[0], spec.kernel[0], spec.padding[0], spec.height)
    cols = live(spec.out_width, tile_ow, spec.stride[1], spec.dilation[1], spec.kernel[1], spec.padding[1], spec.width)
    return 1.0 - rows * cols


def guard_dead_taps(func: Any, spec: ConvSpec, config: Config) -> Any:
    """A direct template's :meth:`~schedules.base.Template.finish`: ``func`` with
    :func:`skip_dead_taps` where the config's tiles skip at least :data:`DEAD_TAP_SHARE`."""
    if dead_tap_share(spec, config["tile_oh"], config["tile_ow"]) < DEAD_TAP_SHARE:
        return func
    return skip_dead_taps(func, spec)


def block_regions(body: Any, names: tuple[str, ...], kind: str) -> tuple[list[Any], list[tuple[Any, list]]]:
    """The loops in ``body`` and its blocks' ``kind`` (``"reads"``/``"writes"``) regions of
    the buffers ``names``: ``(buffer, [(min, extent)])`` per region, the mins in loop
    variables (the blocks' bindings substituted)."""
    import tvm
    import tvm_ffi
    from tvm import tirx
    from tvm.s_tir.stmt import SBlockRealize

    loops, found = [], []

    def on_realize(realize: Any) -> None:
        bind = {iv.var: value for iv, value in zip(realize.block.iter_vars, realize.iter_values)}
        for region in getattr(realize.block, kind):
            if getattr(region.source, "name", None) in names:
                found.append((region.source, [(tvm_ffi.structural_map(r.min, (tvm.ir.Var, lambda v: bind.get(v, v))),
                                               r.extent) for r in region.region]))

    tvm_ffi.structural_walk(body, [(tirx.For, loops.append), (SBlockRealize, on_realize)])
    return loops, found


def skip_dead_taps(func: Any, spec: ConvSpec) -> Any:
    """``func`` (a scheduled direct convolution) with the body of each loop named ``kh``
    (``kw``) run only when the blocks under it read some row (column) of the image from the
    padded input ``data_pad``; see the module docstring.

    The rows a block reads are the region its ``T.reads`` declares on ``data_pad`` (so a
    tensorized block counts as well as a scalar one), with its bindings substituted and the
    loops inside the tap loop relaxed to their ranges: a bound per tile in the loop
    variables outside, no assumption on the loop nest's shape. Exact only where the padding
    adds nothing: a quantized input whose padding holds a non-zero zero point is refused.
    """
    import tvm_ffi
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer
    from tvm.tirx.analysis import undefined_vars
    from tvm.sym.int_set import IntervalSet

    if spec.data_zero_point:
        raise ValueError(f"the padding of {spec.describe()} holds its zero point: its taps are not dead")
    # padded row (column) coordinates of the image: [pad, pad + size)
    image = {"kh": (spec.padding[0], spec.height), "kw": (spec.padding[1], spec.width)}

    def on_for(loop: Any) -> Any:
        tap = loop.loop_var.name
        if tap not in image:
            return loop
        loops, found = block_regions(loop.body, ("data_pad",), "reads")
        regions = [region for _, region in found]
        analyzer = Analyzer()
        inner = {lp.loop_var: IntervalSet(lp.min, lp.min + lp.extent - 1) for lp in loops}
        start, size = image[tap]
        live = []
        for region in regions:
            # the dimension indexed by this tap; the others do not depend on it
            dims = [(lo, ext) for lo, ext in region if any(v.same_as(loop.loop_var) for v in undefined_vars(lo))]
            if len(dims) != 1:
                return loop  # not the shape this guard understands: leave the loop dense
            lo, ext = dims[0]
            span = analyzer.int_set(lo, inner)
            live.append(tirx.all(span.max_value + ext - 1 >= start, span.min_value < start + size))
        if not live:
            return loop
        cond = analyzer.simplify(live[0] if len(live) == 1 else tirx.any(*live))
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, tirx.IfThenElse(cond, loop.body, None),
                        loop.thread_binding, loop.annotations)

    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, on_for), order="post"))



#: the annotation a template puts on the loop :func:`prefetch_next_panel` fills
PREFETCH = "convgen.prefetch_next_panel"

#: what one software prefetch brings in: a cache line of every x86 and AArch64 core
LINE_BYTES = 64


def prefetch_next_panel(func: Any, *, tasks: int, task: Any, weights: tuple[str, ...], acc: str,
                        panel_dims: int = 1) -> Any:
    """``func`` with the next weight panel prefetched into L2 while a thread computes with this one.

    For nests whose threads each own whole panels of the packed weights (the first
    ``panel_dims`` dimensions of the buffer named in ``weights`` pick one) and stream them
    past ``tasks`` register tiles in turn: ``x86.direct``'s ``W[oc block]`` past the pixel
    tiles, Winograd's ``U[e, nu, oc block]`` past the tile groups. Each step of the loop
    marked :data:`PREFETCH` reads one contiguous block of the panel (the region its blocks
    read, inner loops relaxed); the step prefetches the same block of the panel after it in
    memory (the last panel: its own last line), but only this tile's share of the block's
    cache lines: tile ``task(mins)`` (``mins``: where the region of ``acc`` the step writes
    starts, per dimension) of ``tasks`` takes ``ceil(lines / tasks)`` of them, so the next
    panel arrives spread evenly over the current one's work. The indices are clamped into
    the buffer, not guarded by a branch in the micro-kernel's loop; their arithmetic still
    takes registers, so a tile that needs the FMA's memory operand spills (the variants'
    spaces leave those out: :class:`schedules.x86.PrefetchNextPanel`). Where a marked loop
    reads no contiguous block, it is left as it is.
    """
    import tvm
    import tvm_ffi
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer
    from tvm.sym.int_set import IntervalSet

    def relaxed(region: list, inner: dict, analyzer: Any) -> list[tuple[Any, int]] | None:
        """``(min, extent)`` per dimension over the inner loops; ``None`` if an extent is not constant."""
        out = []
        for lo, ext in region:
            span = analyzer.int_set(lo, inner)
            low = analyzer.simplify(span.min_value)
            extent = analyzer.simplify(span.max_value + ext - low)
            if not isinstance(extent, tirx.IntImm):
                return None
            out.append((low, int(extent)))
        return out

    def on_for(loop: Any) -> Any:
        if PREFETCH not in loop.annotations:
            return loop
        loops, read = block_regions(loop.body, weights, "reads")
        _, wrote = block_regions(loop.body, (acc,), "writes")
        if not read or not wrote:
            return loop
        analyzer = Analyzer()
        inner = {lp.loop_var: IntervalSet(lp.min, lp.min + lp.extent - 1) for lp in loops}
        buf, block = read[0][0], relaxed(read[0][1], inner, analyzer)
        tile = relaxed(wrote[0][1], inner, analyzer)
        shape = [int(d) for d in buf.shape]
        if block is None or tile is None:
            return loop
        # contiguous: after the first dimension the block spans, every dimension whole
        spanned = [i for i, (_, ext) in enumerate(block) if ext > 1]
        if not spanned or any(block[i][1] != shape[i] for i in range(spanned[0] + 1, len(shape))):
            return loop
        elems = math.prod(ext for _, ext in block)
        per_line = max(1, LINE_BYTES * 8 // tvm.runtime.DataType(buf.dtype).bits)
        lines = -(-elems // per_line)
        share = -(-lines // tasks)
        flat = 0
        for (lo, _), size in zip(block, shape):
            flat = flat * size + lo
        nxt = flat + math.prod(shape[panel_dims:])  # the same block of the next panel
        last = math.prod(shape) - 1
        mine = task([lo for lo, _ in tile])
        calls = []
        for p in range(share):
            at = tirx.min(nxt + tirx.min(mine * share + p, lines - 1) * per_line, last)
            index = []
            for size in reversed(shape):
                index.append(analyzer.simplify(at % size))
                at = at // size
            # llvm.prefetch(address, read, locality 2 = prefetcht1: into L2, data cache)
            call = tirx.call_llvm_intrin("void", "llvm.prefetch.p0", tirx.address_of(tirx.BufferLoad(buf, index[::-1])),
                                         tirx.const(0, "int32"), tirx.const(2, "int32"), tirx.const(1, "int32"))
            calls.append(tirx.Evaluate(call))
        body = tirx.SeqStmt([*calls, loop.body])
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations)

    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, on_for), order="post"))


def prefetch_direct(func: Any, spec: ConvSpec, config: Config) -> Any:
    """:func:`prefetch_next_panel` on a :func:`direct_loops` nest built with ``prefetch=True``:
    the panels are ``W[oc block]`` of the packed weights (``weight_global``), the tiles that
    read one are an image's ``out_height / tile_oh x out_width / tile_ow`` pixel tiles."""
    rows, cols = -(-spec.out_height // config["tile_oh"]), -(-spec.out_width // config["tile_ow"])
    oh, ow = (1, 2) if spec.layout == "NHWC" else (2, 3)  # in the accumulator ``conv``

    def task(mins: list) -> Any:
        return (mins[oh] // config["tile_oh"]) * cols + mins[ow] // config["tile_ow"]

    return prefetch_next_panel(func, tasks=rows * cols, task=task, weights=("weight_global",), acc="conv")
