"""The CPU schedule of pooling (:mod:`convgen.pool`): one fixed schedule, no knobs.

Pooling reads each input element a few times (9/4 on average for a 3x3/2 window) and does
one comparison or add per read: its time is the memory traffic, so there is nothing for a
tuner to find beyond using every core and full vectors:

- the output's rows (``batch x out_height``) are split across the pool's threads (56 rows
  for ResNet-50's max pooling: balanced on 2-16 threads);
- channels, innermost in NHWC, run ``lanes`` at a time, the target's vector of the data's
  dtype (AVX-512: 16 fp32, 32 bf16, 64 u8 lanes), so every load and store is a whole
  vector; a channel count off the vector width leaves one masked tail;
- global average pooling sums in float32 with the channel vector innermost and the window
  outside it: one accumulator vector per channel block, each input row read once, in order;
- the NCHW -> NHWC layout change splits rows likewise; within a row, the few channels of a
  network's input (3 for RGB) unrolled, so each column's channels are one group of
  interleaved stores, which LLVM's loop vectorizer turns into whole-vector loads of each
  channel's row and shuffles (16 us for a 224x224 RGB image on two Zen 5 threads; vectors
  over the fused columns and channels instead gather, 4x slower).
"""

from __future__ import annotations

from typing import Any

from convgen.target import Target

_BITS = {"float32": 32, "bfloat16": 16, "uint8": 8, "int8": 8}


def lanes(spec: Any, target: Target) -> int:
    """Elements of ``spec.dtype`` in one vector register of ``target``."""
    return int(target.isa.get("vector_bits", 128)) // _BITS[spec.dtype]


def schedule_pool(sch: Any, spec: Any, target: Target) -> None:
    """Schedule the ``out`` (and, global average, ``sum``) blocks of :func:`convgen.pool.compute`."""
    if spec.kind == "nhwc":
        n, h, _, c = sch.get_loops(sch.get_sblock("out"))
        sch.parallel(sch.fuse(n, h))
        if spec.channels <= 4:
            sch.unroll(c)
        return
    vec = min(lanes(spec, target), spec.channels)
    if spec.kind == "avg":
        # sum: n, i, j, c | r, q  ->  n, c_out, r, q, c_in (c_in vectorized), init hoisted
        block = sch.get_sblock("sum")
        n, i, j, c, r, q = sch.get_loops(block)
        co, ci = sch.split(c, [None, vec])
        sch.reorder(n, i, j, co, r, q, ci)
        outer = sch.fuse(n, i, j, co)
        sch.parallel(outer)
        init = sch.decompose_reduction(block, r)
        sch.vectorize(sch.get_loops(init)[-1])
        # (TVM vectorizes no loop inside a reduction's update; unrolled, the ``vec`` adds of
        # one window position are one vector add for LLVM's SLP vectorizer)
        sch.unroll(ci)
        sch.reverse_compute_at(sch.get_sblock("out"), outer)
        sch.vectorize(sch.get_loops(sch.get_sblock("out"))[-1])
        return
    block = sch.get_sblock("out")
    n, oh, ow, c = sch.get_loops(block)
    sch.parallel(sch.fuse(n, oh))
    _, ci = sch.split(c, [None, vec])
    sch.vectorize(ci)
