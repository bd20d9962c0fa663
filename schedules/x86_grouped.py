"""x86 grouped convolution with few channels per group (RegNet, ResNeXt): vectors across groups.

A grouped convolution has ``G`` groups of ``cg`` input and ``kg`` output channels; output
channel ``grp*kg + j`` reads input channels ``grp*cg + i``, ``i < cg``. ``x86.direct`` puts
``kg`` filters of one group in the lanes and broadcasts one input value to all of them, so
it needs ``kg`` to be a multiple of the lanes; ``x86.depthwise`` needs ``cg == 1``. With
4 or 8 channels per group (RegNetY-400MF: 8; ResNeXt-50 32x4d: 4 and 8) a vector must hold
several groups, and each lane then needs an input channel of its own group: no broadcast
serves it, and the generic template (not vectorized) ran these layers.

Lanes: groups in the lanes, a rotation for the reduction
--------------------------------------------------------
A vector holds ``tile_j`` (``kj``) consecutive filters ``j`` of ``gv = lanes / kj``
consecutive groups, group-minor: lane ``l = jj * gv + gl`` computes output channel
``(gb*gv + gl) * kg + jb*kj + jj`` (``jb``: which ``kj`` filters of the group, ``gb``: which
block of groups). At step ``i`` of the reduction over a group's ``cg`` input channels, lane
``(jj, gl)`` multiplies input channel ``(jj + i) mod cg`` of its group, so over ``i < cg``
every lane meets each input channel of its group once: the same sum, reordered. The data
are laid out once so that the operand of step ``i`` is one contiguous vector::

    data_pack[n, h, w, gb, r*gv + gl] = data[n, h, w, (gb*gv + gl)*cg + r mod cg]   r < cg + kj - 1
    operand of step i                = data_pack[n, h, w, gb, i*gv : i*gv + lanes]   (unaligned load)
    weights  W[gb, jb, kh, kw, i, l]  = w[filter (gb*gv + gl)*kg + jb*kj + jj, input (jj + i) mod cg]

(rows past ``cg`` repeat the first ``kj - 1``: the rotation's wrap-around, so ``data_pack``
is ``(cg + kj - 1) / cg`` times the input). The ``kg / kj`` vectors ``jb`` of the same
groups read the same data vector, like the direct template's broadcast: ``tile_jb`` of them
share each load.

Register budget
---------------
A register tile is ``tile_oh x tile_ow`` pixels by ``tile_jb`` vectors. Each step
``(kh, kw, i)`` loads one data vector per pixel and ``tile_jb`` weight vectors (shared by
the pixels), then issues ``pixels * tile_jb`` FMAs::

    accumulators = tile_oh * tile_ow * tile_jb
    live         = accumulators + tile_jb (weights) + 1 (data)  <= registers (+1: an FMA reads one operand from memory)
    loads / FMA  = (1 + split) / tile_jb + 1 / pixels

``split``: a data vector starting ``i*gv`` floats into a 64-byte line crosses it and costs
two loads (AVX-512: 7 of 8 steps at ``gv=2``, half at ``gv=8``, none at ``gv=16``).
:func:`estimate` turns this into cycles per useful FMA (2 FMA pipes, 2 loads a cycle, a
4-cycle FMA latency) times the groups computed per group stored. AVX-512 (32 zmm, 16 lanes)
with 8 channels per group: ``tile_j=2`` (8 groups per vector) x ``tile_jb=4`` (all 8
filters) x 2x2 pixels = 16 accumulators + 4 + 1 registers, 16 FMAs per 8 loads. With
``tile_j=8`` (2 groups per vector) a group has one vector and each data load feeds one FMA:
1.4-1.6x slower on the 104-channel layer, measured. AVX2 (16 ymm, 8 lanes), 4 filters per
group: ``tile_j=1`` x ``tile_jb=4`` x 2 pixels = 8 + 4 + 1.

Groups off the lanes
--------------------
When ``gv`` does not divide ``G`` (RegNetY's 104 channels: 13 groups of 8, and 440: 55) the
last block of groups reads the last ``gv`` groups of the tensor (a window ending at channel
``C``); its lanes of groups past ``G`` hold repeats of groups the block before computed,
and are never stored. Every load of the data stage reads whole groups inside the tensor,
so channel counts off the lanes (104 = 6.5 vectors of 16) need no padding; the repeated
groups are the waste :func:`estimate` counts (13 groups on ``gv=8``: 16 computed).

Stages
------
``data_pack`` (once per call, parallel over rows): for NHWC, written out in TIR
(:func:`_shuffle_pack`): per pixel and block, the ``gv*cg`` input channels are loaded as
whole vectors and each vector of ``data_pack`` is one shuffle of them (``vpermps`` /
``vpermt2ps``), zeros for the padding. NCHW gathers across the channel planes (a tensor
expression over the padded input, ``compute.pad_data``). ``weight_pack`` is a gather of the
filters, done once by the library's ``pack_weights`` (``variants``). ``conv_lanes``: the
reduction, computed per register tile under the epilogue's pixel-tile loop (one task: an
image, a block of groups, a row tile); ``out`` (``compute.epilogue``: bias, residual,
ReLU/ReLU6) then reads the tile back to the spec's channel order while it is in cache.

Measured
--------
2-vCPU AMD EPYC (Zen 5), AVX-512, NHWC, batch 1, 2 threads, us per call (median of 9
repeats, median of 3 processes; convgen and torch in separate processes): ``k(x, packed)``
with each template's default, and torch 2.13's ``conv2d`` on channels_last tensors::

    layer                        x86.grouped  cpu.generic  torch   vs torch  vs generic
    RegNetY 104ch g8  28x28               53          185     82      1.5x        3.5x
    RegNetY 208ch g8  14x14               27          230     57      2.1x        8.5x
    RegNetY 440ch g8  7x7                 18           56     49      2.7x        3.1x
    RegNetY 48ch g8   56x56 s2            45          318     55      1.2x        7.1x
    ResNeXt 128ch 32g 56x56              122         1354    306      2.5x         11x
    ResNeXt 256ch 32g 28x28              100         1099    167      1.7x         11x

(the times include the ~5 us of a checked Python call). On one thread the 104-channel
layer's FMAs, counting the repeated groups (16 computed for 13), run at ~70% of the measured
FMA peak (264 GFLOP/s per core). What is left: the data stage (~10% of the time) and the
epilogue, which reads the tile back from lanes ``(jj, gl)`` to channel order with scalar
loads (15-30%: LLVM forwards only the first few from the accumulators, the rest go through
the tile's buffer). NCHW (its data stage a gather across channel planes) is ~1.8x slower
than NHWC, still ahead of the generic template and of torch.

Where ``x86.direct`` also serves (a group's filters a multiple of the lanes: RegNet's 8 on
AVX2, ResNeXt's 16 on AVX-512) it was as fast or up to 20% faster: this template's
priority (9) is below it, so it is the default only where direct does not serve, and is
tuned beside it where both do.
"""

from __future__ import annotations

from typing import Any

from convgen.knobs import Config, Knob, Space, divisors
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import has_block
from .cpu import register_fit


def _geometry(spec: ConvSpec, lanes: int, kj: int) -> dict[str, int]:
    """The lane layout for ``tile_j = kj``: ``gv`` groups per vector, ``GB`` blocks of them,
    ``JB`` vectors per group, ``Q`` floats of ``data_pack`` per pixel and block (rows
    ``cg + kj - 1`` of ``gv`` groups, rounded up to whole vectors)."""
    gv = lanes // kj
    cg, kg = spec.in_per_group, spec.out_per_group
    return {"L": lanes, "kj": kj, "gv": gv, "GB": -(-spec.groups // gv), "JB": kg // kj,
            "Q": -(-(cg + kj - 1) * gv // lanes) * lanes, "cg": cg, "kg": kg}


def _block_groups(spec: ConvSpec, gv: int, gb: int) -> list[int]:
    """The group each lane position ``gl`` of block ``gb`` reads: its own, or for positions
    past the last group of the last block, a repeat (never stored)."""
    G = spec.groups
    return [gb * gv + gl if gb * gv + gl < G else G - gv + gl for gl in range(gv)]


def estimate(spec: ConvSpec, lanes: int, config: Config) -> float:
    """Rough cycles per useful FMA of the micro-kernel (the module docstring's arithmetic)."""
    geo = _geometry(spec, lanes, config["tile_j"])
    waste = geo["GB"] * geo["gv"] / spec.groups  # groups computed per group stored
    pixels, jb = config["tile_oh"] * config["tile_ow"], config["tile_jb"]
    vec = 4 * lanes
    split = sum((4 * i * geo["gv"]) % 64 + vec > 64 for i in range(geo["cg"])) / geo["cg"]
    loads = (1 + split) / jb + 1 / pixels
    return waste * max(0.5, loads / 2, 4 / (pixels * jb))


def _source_chunks(size: int, lanes: int) -> list[int]:
    """Starts of the vectors that load ``size`` contiguous floats: whole vectors of ``lanes``,
    the last one moved back to end at ``size`` (overlapping the one before) so that no load
    reads past the window; one vector of ``size`` lanes when it is shorter."""
    if size <= lanes:
        return [0]
    starts = list(range(0, size - lanes + 1, lanes))
    if size % lanes:
        starts.append(size - lanes)
    return starts


def _shuffle_pack(spec: ConvSpec, geo: dict[str, int], data: Any, out: Any) -> Any:
    """The NHWC ``data_pack`` stage, written out (the body of a ``te.extern``).

    For each padded pixel and block of ``gv`` groups: load the window of ``gv*cg`` input
    channels the block reads (contiguous) as whole vectors and write each ``lanes``-wide
    vector of ``data_pack`` as one ``Shuffle`` of them; pixels of the padding get zeros.
    A block inside the tensor reads its own groups; the last one (when ``gv`` does not
    divide the groups) reads the window of the last ``gv`` groups with its own pattern.

    Written out because a tensor expression can only say "gather": TVM then scalarizes the
    loads and LLVM rebuilt them into chains of inserts and broadcasts (the data stage was
    2-3x slower for blocks over one vector; it is ~4 us for RegNet's 104 channels at 28x28).
    """
    from tvm import tirx

    L, gv, cg, kj, GB, Q = (geo[k] for k in ("L", "gv", "cg", "kj", "GB", "Q"))
    G = spec.groups
    N, H, W = spec.batch, spec.height, spec.width
    pt, pl, pb, pr = spec.padding
    HP, WP = H + pt + pb, W + pl + pr
    size = gv * cg
    starts = _source_chunks(size, L)
    width = min(size, L)

    def i32(v: int) -> Any:
        return tirx.IntImm("int32", v)

    def ramp(base: Any, lanes: int) -> Any:
        return tirx.Ramp(base, i32(1), lanes)

    nh, w = tirx.Var("nh", "int32"), tirx.Var("w", "int32")
    n, h = nh // HP, nh % HP
    hi, wi = h - pt, w - pl

    def block(gb: Any, c0: Any, rel: list[int]) -> Any:
        """The stores of block ``gb``: its window of ``gv*cg`` channels starts at ``c0``, lane
        position ``gl`` reads the window's group ``rel[gl]``."""
        vectors = [tirx.BufferLoad(data, [n, hi, wi, ramp(c0 + st, width)]) for st in starts]
        vectors *= -(-L // (width * len(vectors)))  # a shuffle gives at most the lanes it is given

        def source(q: int) -> int:
            r, gl = divmod(q, gv)
            offset = rel[gl] * cg + r % cg if r < cg + kj - 1 else 0  # lanes past the rows: never read
            k = max(k for k, st in enumerate(starts) if st <= offset)
            return k * width + offset - starts[k]

        stores = []
        for m in range(Q // L):
            idx = [source(m * L + lane) for lane in range(L)]
            if len(vectors) == 1 and width == L and idx == list(range(L)):
                value = vectors[0]
            else:
                value = tirx.Shuffle(vectors, [i32(x) for x in idx])
            stores.append(tirx.BufferStore(out, value, [n, h, w, gb, ramp(i32(m * L), L)]))
        return tirx.SeqStmt(stores) if len(stores) > 1 else stores[0]

    full = G // gv  # blocks of gv groups of their own
    parts = []
    if full:
        gb = tirx.Var("gb", "int32")
        parts.append(tirx.For(gb, i32(0), i32(full), tirx.ForKind.SERIAL,
                              block(gb, gb * (gv * cg), list(range(gv)))))
    if full < GB:  # the last block: the window of the last gv groups
        rel = [g - (G - gv) for g in _block_groups(spec, gv, GB - 1)]
        parts.append(block(i32(GB - 1), i32((G - gv) * cg), rel))
    body = tirx.SeqStmt(parts) if len(parts) > 1 else parts[0]
    if any(spec.padding):
        gz = tirx.Var("gz", "int32")
        zero = tirx.Broadcast(tirx.const(0, spec.dtype), L)
        zeros = tirx.For(gz, i32(0), i32(GB), tirx.ForKind.SERIAL, tirx.SeqStmt(
            [tirx.BufferStore(out, zero, [n, h, w, gz, ramp(i32(m * L), L)]) for m in range(Q // L)]))
        body = tirx.IfThenElse(tirx.all(hi >= 0, hi < H, wi >= 0, wi < W), body, zeros)
    return tirx.For(nh, i32(0), i32(N * HP), tirx.ForKind.PARALLEL,
                    tirx.For(w, i32(0), i32(WP), tirx.ForKind.SERIAL, body))


def _vectorize_copy(sch: Any, block: Any, lanes: int) -> None:
    """Vectorize a copy's innermost loop by the widest power of two up to ``lanes`` dividing it."""
    loop = sch.get_loops(block)[-1]
    extent = sch.get(loop).extent
    if not hasattr(extent, "value"):
        return
    width = lanes
    while width > 1 and int(extent.value) % width:
        width //= 2
    if width > 1:
        sch.vectorize(sch.split(loop, [None, width])[1])


class GroupedX86(Template, name="x86.grouped", version=1, families=("x86",), dtypes=("float32",), priority=9):
    """Grouped convolution, few channels per group: groups and filters in the lanes."""

    # priority: above the generic template; below x86.direct, which was as fast or up to 20%
    # faster where it also serves (a group's filters a multiple of the lanes)

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.groups == 1:
            return "not grouped (x86.direct serves groups == 1)"
        if spec.in_per_group == 1:
            return "one input channel per group (depthwise: x86.depthwise, or cpu.generic for a channel multiplier)"
        if not self._tile_j(spec, target.vector_lanes):
            return (f"{spec.groups} groups of {spec.out_per_group} filters cannot fill {target.vector_lanes} lanes "
                    "(a vector holds the same filters of lanes/tile_j whole groups)")
        return None

    def _tile_j(self, spec: ConvSpec, lanes: int) -> tuple[int, ...]:
        # filters of a group per vector: dividing the group's filters and the lanes, with no
        # more groups per vector than there are groups
        return tuple(d for d in divisors(lanes) if spec.out_per_group % d == 0 and lanes // d <= spec.groups)

    def space(self, spec: ConvSpec, target: Target) -> Space:
        lanes, regs = target.vector_lanes, target.registers
        kg = spec.out_per_group
        tile_j = self._tile_j(spec, lanes)
        tile_jb = sorted({d for kj in tile_j for d in divisors(kg // kj, upto=8)})
        tile_ow = tuple(divisors(spec.out_width, upto=regs - 2))
        tile_oh = tuple(divisors(spec.out_height, upto=4))

        def fits(c: Config) -> str | None:
            if (kg // c["tile_j"]) % c["tile_jb"]:
                return f"tile_jb={c['tile_jb']} does not divide the {kg // c['tile_j']} vectors of a group"
            return register_fit(target, c["tile_oh"] * c["tile_ow"] * c["tile_jb"], c["tile_jb"])

        return Space(self.name, self.version, (
            Knob("tile_j", tile_j, "filters of one group per vector; the vector holds lanes/tile_j groups"),
            Knob("tile_jb", tuple(tile_jb), "vectors of the same groups per register tile (they share each data load)"),
            Knob("tile_ow", tile_ow, "output pixels per row in the register tile"),
            Knob("tile_oh", tile_oh, "output rows in the register tile"),
            Knob("unroll_kw", (False, True), "unroll the kernel-width loop"),
        ), fits)

    def default(self, spec: ConvSpec, target: Target) -> Config:
        # The least estimated cycles per useful FMA (estimate(): loads, FMA latency, repeated
        # groups) among tiles that fit the registers without the FMA's memory operand; ties go
        # to more vectors per data load, then more accumulators, then square pixel tiles. The
        # kernel-width loop stays rolled: unrolled, LLVM keeps each data vector live for the
        # next pixel's next tap and spills (1.4x slower on AVX2's 16 registers, 1.0-1.1x on
        # AVX-512). One thread, 2-vCPU Zen 5, NHWC: the default was the fastest or within 10%
        # of the fastest of 11-16 configs (the estimate's best and random ones) on RegNetY's
        # 104/208/440/48(stride 2) and ResNeXt's 128/32 and 256/32 layers.
        lanes = target.vector_lanes

        def key(c: Config) -> tuple:
            acc = c["tile_oh"] * c["tile_ow"] * c["tile_jb"]
            return (round(estimate(spec, lanes, c), 3), -c["tile_jb"], -acc, abs(c["tile_oh"] - c["tile_ow"]))

        fit = [c for c in self.space(spec, target) if not c["unroll_kw"] and register_fit(
            target, c["tile_oh"] * c["tile_ow"] * c["tile_jb"], c["tile_jb"], memory_operand=False) is None]
        return min(fit, key=key)

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        lanes = target.vector_lanes
        geo = _geometry(spec, lanes, config["tile_j"])
        acc = config["tile_oh"] * config["tile_ow"] * config["tile_jb"]
        return {"estimate": estimate(spec, lanes, config), "group_waste": geo["GB"] * geo["gv"] / spec.groups,
                "accumulators": acc, "live_registers": acc + config["tile_jb"] + 1,
                "data_pack_ratio": geo["GB"] * geo["Q"] / spec.in_channels,
                "tasks": spec.batch * geo["GB"] * (spec.out_height // config["tile_oh"])}

    # -- the algorithm ------------------------------------------------------------------------
    def _te(self, spec: ConvSpec, target: Target, config: Config, prepacked: bool) -> tuple:
        """``(arguments, out, weight, packed weight)`` of the definition above."""
        from tvm import te, tirx

        from convgen.compute import epilogue, pad_data

        geo = _geometry(spec, target.vector_lanes, config["tile_j"])
        L, kj, gv, GB, JB, Q, cg, kg = (geo[k] for k in ("L", "kj", "gv", "GB", "JB", "Q", "cg", "kg"))
        G = spec.groups
        nchw = spec.layout == "NCHW"
        R, S = spec.kernel
        sh, sw = spec.stride
        dh, dw = spec.dilation
        N, OH, OW = spec.batch, spec.out_height, spec.out_width
        pt, pl, pb, pr = spec.padding
        HP, WP = spec.height + pt + pb, spec.width + pl + pr
        dt = spec.dtype

        def group(gb, gl):
            # the group lane position gl of block gb reads (_block_groups): past the last
            # group, the last block repeats the groups before it
            g = gb * gv + gl
            return tirx.if_then_else(g < G, g, g - (GB * gv - G)) if G % gv else g

        data = te.placeholder(spec.input_shape, dt, name="data")
        if nchw:
            padded = pad_data(spec, data)
            D = te.compute((N, GB, HP, WP, Q), lambda n, gb, h, w, q: padded[
                n, group(gb, q % gv) * cg + (q // gv) % cg, h, w], name="data_pack")
        else:
            D = te.extern((N, HP, WP, GB, Q), [data], lambda ins, outs: _shuffle_pack(spec, geo, ins[0], outs[0]),
                          name="data_pack", dtype=dt)

        weight = te.placeholder(spec.weight_shape, dt, name="weight")
        wshape = (GB, JB, R, S, cg, L)
        if prepacked:
            W = te.placeholder(wshape, dt, name="weight_packed")
        else:
            def w_body(gb, jb, r, s, i, lane):
                jj = lane // gv
                o = group(gb, lane % gv) * kg + jb * kj + jj
                ic = (jj + i) % cg
                fr = R - 1 - r if spec.flip else r  # true convolution reads the filter flipped
                fs = S - 1 - s if spec.flip else s
                return weight[o, ic, fr, fs] if nchw else weight[fr, fs, ic, o]

            W = te.compute(wshape, w_body, name="weight_pack")

        i = te.reduce_axis((0, cg), name="i")
        r = te.reduce_axis((0, R), name="r")
        s = te.reduce_axis((0, S), name="s")

        def dval(n, h, w, gb, q):
            return D[n, gb, h, w, q] if nchw else D[n, h, w, gb, q]

        acc = te.compute(
            (N, OH, OW, GB, JB, L),
            lambda n, oh, ow, gb, jb, lane: te.sum(
                dval(n, oh * sh + r * dh, ow * sw + s * dw, gb, i * gv + lane) * W[gb, jb, r, s, i, lane],
                axis=[r, s, i]),
            name="conv_lanes")

        def lanes_of(n, h, w, c):
            grp, j = c // kg, c % kg
            return acc[n, h, w, grp // gv, j // kj, (j % kj) * gv + grp % gv]

        if nchw:
            conv = te.compute(spec.output_shape, lambda n, c, h, w: lanes_of(n, h, w, c), name="conv")
        else:
            conv = te.compute(spec.output_shape, lambda n, h, w, c: lanes_of(n, h, w, c), name="conv")
        inputs, out = epilogue(spec, conv)
        return [data, W if prepacked else weight] + inputs, out, weight, W

    def primfunc(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        from tvm import te

        args, out, _, _ = self._te(spec, target, config, prepacked=False)
        return te.create_prim_func(args + [out])

    def variants(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        from tvm import te

        args, out, _, _ = self._te(spec, target, config, prepacked=True)
        _, _, weight, W = self._te(spec, target, config, prepacked=False)
        return {"main_prepacked": te.create_prim_func(args + [out]), "pack_weights": te.create_prim_func([weight, W])}

    # -- the schedule ---------------------------------------------------------------------------
    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        lanes = target.vector_lanes
        nchw = spec.layout == "NCHW"
        geo = _geometry(spec, lanes, config["tile_j"])
        if has_block(sch, "weight_pack"):
            gb, jb, *_ = sch.get_loops(sch.get_sblock("weight_pack"))
            sch.parallel(sch.fuse(gb, jb))
        if not has_block(sch, "conv_lanes"):
            return  # pack_weights alone
        if nchw:
            self._schedule_nchw_data(sch, spec, lanes)
        # (NHWC: data_pack is written out with its loops, see _shuffle_pack)

        conv = sch.get_sblock("conv_lanes")
        sch.compute_inline(sch.get_sblock("conv"))
        out = sch.get_sblock("out")
        # the epilogue's loops lead: one task is (image, block of groups, row tile); the
        # reduction is computed under its pixel tile, the tile is stored right after it
        if nchw:
            n, c, oh, ow = sch.get_loops(out)
        else:
            n, oh, ow, c = sch.get_loops(out)
        grp, j = sch.split(c, [None, geo["kg"]])
        cgb, gl = sch.split(grp, [None, geo["gv"]])  # past the last group: a predicate on the group alone
        oho, ohi = sch.split(oh, [None, config["tile_oh"]])
        owo, owi = sch.split(ow, [None, config["tile_ow"]])
        if nchw:
            sch.reorder(n, cgb, oho, owo, gl, j, ohi, owi)
        else:
            sch.reorder(n, cgb, oho, owo, ohi, owi, gl, j)
        sch.parallel(sch.fuse(n, cgb, oho))
        sch.set_scope(conv, 0, "local")
        sch.compute_at(conv, owo, preserve_unit_loops=True)

        # the micro-kernel: (kh, kw, i) outside, pixels x tile_jb vectors of lanes inside
        n, oh, ow, gb, jb, lane, r, s, i = sch.get_loops(conv)[-9:]
        jbo, jbi = sch.split(jb, [None, config["tile_jb"]])
        sch.reorder(jbo, r, s, i, oh, ow, jbi, lane)
        sch.vectorize(lane)
        sch.unroll(jbi)
        sch.unroll(ow)
        sch.unroll(oh)
        if config["unroll_kw"]:
            sch.unroll(s)
        sch.unroll(owi)
        if not nchw:
            sch.unroll(gl)
            sch.unroll(ohi)
            if geo["kg"] > 1:
                sch.vectorize(j)  # a group's filters: contiguous in the output
        sch.decompose_reduction(conv, r)

    def _schedule_nchw_data(self, sch: Any, spec: ConvSpec, lanes: int) -> None:
        """NCHW: the padded input in one parallel pass (zeros, then the interior as vector
        copies), then ``data_pack`` gathers across its channel planes, parallel over rows."""
        if has_block(sch, "data_pad"):
            pad = sch.get_sblock("data_pad")
            sch.parallel(sch.fuse(*sch.get_loops(pad)[:3]))
            fill = sch.decompose_padding(pad, sch.get_loops(pad)[1])
            _vectorize_copy(sch, pad, lanes)
            _vectorize_copy(sch, fill, lanes)
        dp = sch.get_sblock("data_pack")
        loops = sch.get_loops(dp)
        sch.parallel(sch.fuse(*loops[:3]))
        sch.unroll(loops[-1])


register(GroupedX86())
