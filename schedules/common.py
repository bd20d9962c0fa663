"""Helpers shared by the CPU templates: finding the stages, naming loops, packing buffers.

The order of schedule primitives matters in s_tir: ``parallel``/``vectorize`` need the
"compact dataflow" property, which a reduction block loses once ``decompose_reduction``
splits off its init. So every template annotates loops first and decomposes last.
"""

from __future__ import annotations

from typing import Any

from convgen.spec import ConvSpec


def has_block(sch: Any, name: str) -> bool:
    """Does the scheduled function have a block called ``name``?"""
    try:
        sch.get_sblock(name)
    except Exception:  # s_tir raises a ScheduleError subclass when it is absent
        return False
    return True


def spatial_loops(sch: Any, spec: ConvSpec, block: Any) -> dict[str, Any]:
    """The conv block's loops by name: ``n, oc, oh, ow, ic, kh, kw`` (layout-independent)."""
    loops = sch.get_loops(block)
    order = ("n", "oc", "oh", "ow") if spec.layout == "NCHW" else ("n", "oh", "ow", "oc")
    return dict(zip(order + ("ic", "kh", "kw"), loops))


def data_stage(sch: Any, spec: ConvSpec, conv: Any) -> Any:
    """The block producing the conv's data operand: ``data_pad``, or a new copy of ``data``.

    Templates that re-lay out the data need a stage to do it in; with zero padding there is
    none, so a ``cache_read`` makes one (a copy the padding would have cost anyway).
    """
    if has_block(sch, "data_pad"):
        return sch.get_sblock("data_pad")
    return sch.cache_read(conv, "data", "global")


def parallel_outer(sch: Any, block: Any, n_loops: int) -> Any:
    """Fuse the block's outer ``n_loops`` loops and run them in parallel."""
    loops = sch.get_loops(block)[:n_loops]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)
    return fused


def vectorize_inner(sch: Any, block: Any, lanes: int) -> None:
    """Vectorize the innermost loop of a copy-like block by ``lanes`` when it divides."""
    loops = sch.get_loops(block)
    extent = _extent(sch, loops[-1])
    if extent is not None and extent % lanes == 0 and extent > 1:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)
    elif extent is not None and 1 < extent <= lanes:
        sch.vectorize(loops[-1])


def _extent(sch: Any, loop: Any) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if hasattr(extent, "value") or isinstance(extent, int) else None


# The attribute TVM's RemoveWeightLayoutRewriteBlock pass looks for: the builder removes the
# annotated block (and takes the packed buffer as the parameter) to make ``main_prepacked``.
PACK_ATTR = "meta_schedule.layout_rewrite_preproc"


def pack_weights(sch: Any, spec: ConvSpec, conv: Any, index_map: Any, ob: int, ib: int) -> Any:
    """Copy the weights into the layout ``index_map`` gives, scheduled by :func:`layout_pack`;
    returns that block.

    Weights as given are copied by a new block, marked as the weight-layout preprocess that
    the builder's ``main_prepacked`` drops. When the compute pads the filters, its
    ``weight_pad`` stage writes the packed layout itself (``main_prepacked`` then comes from
    the definition whose weights arrive padded, see :func:`convgen.compute.conv2d_te`).
    """
    if has_block(sch, "weight_pad"):
        wpack = sch.get_sblock("weight_pad")
    else:
        wpack = sch.cache_read(conv, "weight", "global")
        sch.annotate(wpack, PACK_ATTR, True)
    layout_pack(sch, spec, wpack, index_map, ob, ib)
    return wpack


def layout_pack(sch: Any, spec: ConvSpec, block: Any, index_map: Any, ob: int, ib: int) -> None:
    """Write ``block``'s output (weights in the spec's layout, OIHW or HWIO) through
    ``index_map`` into blocks of ``ob`` output x ``ib`` input channels, at memory speed.

    The same schedule serves the packing inside ``main`` and the library's ``pack_weights``.
    Each (output block, input block) pair is one parallel task, so no two threads write one
    cache line. HWIO weights have the output channels innermost on both sides: a vector
    copy. OIHW weights are transposed (``o`` goes innermost) in tiles of 16 x 16 channels
    per tap, 16 floats being one 64-byte line: a tile reads 16 source lines and writes 16
    destination lines, all in L1, every byte of each line used. Measured on ResNet-50's
    256x256 3x3 filters (2.4 MB, 2 threads, Zen 4): 82-120 us tiled; 350 us in source order
    (each line written 16 times, far apart); 290 us in destination order (strided reads).
    """
    sch.transform_layout(block, ("write", 0), index_map)
    loops = sch.get_loops(block)
    if spec.layout == "NHWC":
        h, w, i, o = loops
        oo, oi = sch.split(o, [None, ob])
        io, ii = sch.split(i, [None, ib])
        sch.reorder(oo, io, h, w, ii, oi)
        sch.vectorize(oi)
    else:
        o, i, h, w = loops
        to, ti = _largest_divisor(ob, 16), _largest_divisor(ib, 16)
        oo, o1, o2 = sch.split(o, [None, ob // to, to])
        io, i1, i2 = sch.split(i, [None, ib // ti, ti])
        sch.reorder(oo, io, o1, i1, h, w, i2, o2)
        sch.unroll(o2)
    sch.parallel(sch.fuse(oo, io))


def _largest_divisor(n: int, upto: int) -> int:
    return max(d for d in range(1, min(n, upto) + 1) if n % d == 0)


def channels_innermost(sch: Any, spec: ConvSpec, conv: Any, block: int, lanes: int, *,
                       loops: bool = True) -> Any:
    """Lay out the data stage with channels innermost, in blocks of ``block`` for NCHW data
    (``N C/block H W block``: a vector of channels per pixel); NHWC has them innermost
    already, so only its padding copy (if any) is scheduled. Returns the data stage (None for
    unpadded NHWC data, read in place); ``loops=False`` leaves its loops unscheduled, for a
    template that computes it inside its own loop nest."""
    if spec.layout == "NCHW":
        data = data_stage(sch, spec, conv)
        sch.transform_layout(data, ("write", 0), lambda n, c, h, w: (n, c // block, h, w, c % block))
        if loops:
            n, c, h, w = sch.get_loops(data)
            co, ci = sch.split(c, [None, block])
            sch.reorder(n, co, h, w, ci)
            sch.parallel(sch.fuse(n, co, h))
        return data
    if not has_block(sch, "data_pad"):
        return None
    data = sch.get_sblock("data_pad")
    if loops:
        parallel_outer(sch, data, 2)
        vectorize_inner(sch, data, lanes)
    return data
