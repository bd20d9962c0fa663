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
"""

from __future__ import annotations

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


def partition_config(spec: ConvSpec, config: Config) -> dict[str, Any]:
    """The TVM pass options a config's build needs: loop partition for ragged tiles (only
    then, so the code of every other config stays what it was)."""
    if needs_partition(spec, config):
        return {"s_tir.LoopPartition": {"partition_const_loop": True}}
    return {}


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
                 oc_parts: tuple[int, ...], ic_parts: tuple[int, ...], order: str = "channels") -> dict[str, Any]:
    """The blocked direct loop nest above, on the conv PrimFunc in ``sch``.

    ``pack_map``: the packed weight layout (an index map over the weight's axes);
    ``data_lanes``: vector lanes of the data stage's copy; ``oc_parts`` / ``ic_parts``: how
    ``tile_oc`` / ``tile_ic`` split below their block loop (``(tile_oc,)`` for float lanes,
    ``(tile_oc // 4, 4)`` for SDOT's 4x4 blocks); the last ``ic`` part, when there are two,
    goes innermost (SDOT's 4 channels). ``order``: ``"channels"`` (the nest above: the
    threads split the output-channel blocks, each keeps its weight panel and reads every
    pixel) or ``"pixels"`` (``parallel n, oh blocks: for ow blocks: for oc blocks``: the
    threads split the rows, each reads every weight and keeps its pixels, which the layer
    before wrote on the same core when it was split alike). Returns the loops the templates
    go on with: ``oc`` (the parts below the output-channel block loop) and ``reduction``
    (outermost first; not decomposed yet).
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
    return {"oc": oc, "reduction": reduction}
