"""Winograd F(m x m, 3 x 3) for 3x3 stride-1 convolutions on x86.

A 3x3 convolution of an ``m x m`` output tile needs ``9 m^2`` multiply-adds directly and
``(m + 2)^2`` in the Winograd domain, where the work becomes ``(m + 2)^2`` independent
GEMMs over the channels (Lavin & Gray, 2015)::

    U = G g G^T   (weights, per filter and channel: packed once)     alpha x alpha
    V = B^T d B   (data, per input tile and channel)                alpha x alpha
    M = sum_c U * V (a K x P x C GEMM per point of the alpha x alpha grid)
    Y = A^T M A   (back to an m x m output tile)

F(2x2, 3x3) does 2.25x fewer multiplies than the direct method, F(4x4, 3x3) 4x, at the
price of transforms and of rounding: the transform constants grow with m (F(4x4) loses
about two decimal digits in float32). The tuner picks this template only where it is
faster; ``tests/test_winograd.py`` bounds its error against the reference.

Layouts are chosen in the definition itself (this template defines its own algorithm):
``U[e, n, K/kb, C, kb]`` and ``M[e, n, K/kb, P, kb]`` keep ``kb`` output channels in vector
lanes, so the GEMM micro-kernel is the direct template's: ``tile_p`` tiles x ``kb`` channels
of accumulators, one broadcast of ``V`` per tile per channel.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from convgen.knobs import Config, Knob, Space, divisors
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import has_block
from .cpu import PREFETCH, prefetch_next_panel, register_fit
from .x86 import PREFETCH_WEIGHTS_BYTES, weight_bytes
from .x86_dot import VDPBF16PS


#: input channels per step of the GEMM's reduction in which :class:`WinogradPrefetchX86`
#: prefetches (a few cache lines of the next panel per 16 rows of ``tile_k`` lanes)
PREFETCH_CHANNELS = 16


@functools.cache
def transform_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, G) of F(m, 3) from TVM's Cook-Toom construction (float64)."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a, b, g = _cook_toom_convolution(_interpolation_points(m + 2), m, 3)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def _bilinear(left: np.ndarray, right: np.ndarray, i: Any, j: Any, term: Any, dtype: str) -> Any:
    """``sum_{a,b} left[a, i] * right[b, j] * term(a, b)`` for symbolic ``i, j``, as a select
    over their values of sums with the zero coefficients dropped. Once the ``i, j`` loops
    are unrolled, each select folds to the few terms of its (i, j)."""
    from tvm import tirx

    out = tirx.const(0.0, dtype)
    for ii in range(left.shape[1]):
        for jj in range(right.shape[1]):
            s = None
            for a in range(left.shape[0]):
                for b in range(right.shape[0]):
                    coef = left[a, ii] * right[b, jj]
                    if coef == 0:
                        continue
                    t = term(a, b) * tirx.const(float(coef), dtype)
                    s = t if s is None else s + t
            if s is not None:
                out = tirx.Select(tirx.all(i == ii, j == jj), s, out)
    return out


class WinogradX86(Template, name="x86.winograd", version=1, families=("x86",), dtypes=("float32",), priority=5):
    """Winograd F(2x2,3x3) / F(4x4,3x3): transforms + a vectorized batched GEMM."""

    # priority: below x86.direct, except where rank() says it wins untuned

    def rank(self, spec: ConvSpec, target: Target) -> int:
        """Above ``x86.direct`` (the untuned default) where many channels amortize the
        transforms. Measured on Zen 5, both templates' default configs (F(2x2) here), every
        argument but the input flushed before each call: on AVX-512, 1.3-1.8x faster than the
        direct default with 128-512 channels (7x7 to 28x28 maps), 0.87-0.93x with 64 and
        0.54x with 32; on AVX2, whose 16 registers hold a smaller direct tile, 1.3-1.9x
        from 32 to 512 channels."""
        least = 128 if target.registers >= 32 else 32
        return 15 if min(spec.in_channels, spec.out_channels) >= least else self.priority

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.kernel != (3, 3) or spec.stride != (1, 1) or spec.dilation != (1, 1) or spec.groups != 1:
            return "Winograd here is for 3x3, stride 1, no dilation, no groups"
        return None  # output channels off the lanes: the last block's tail lanes are padding

    def _tiles(self, spec: ConvSpec, m: int) -> int:
        return spec.batch * (-(-spec.out_height // m)) * (-(-spec.out_width // m))

    def space(self, spec: ConvSpec, target: Target) -> Space:
        lanes, regs = target.vector_lanes, target.registers
        # blocks of 1 or 2 vectors; a channel count off the lanes gets 1 (its tail is padding)
        tile_k = tuple(x * lanes for x in (1, 2) if spec.out_channels % (x * lanes) == 0) or (lanes,)
        tile_p = sorted(set(divisors(self._tiles(spec, 2), upto=regs - 2)) | set(divisors(self._tiles(spec, 4), upto=regs - 2)))

        return Space(self.name, self.version, (
            Knob("tile_m", (2, 4), "output tile m of F(m x m, 3 x 3)"),
            Knob("tile_k", tile_k, "output channels in vector lanes of the GEMM"),
            Knob("tile_p", tuple(tile_p), "Winograd tiles per GEMM register tile"),
        ), self._legal(spec, target, lanes))

    def _legal(self, spec: ConvSpec, target: Target, lanes: int) -> Any:
        """The space's rule: ``tile_p`` divides the tiles, the GEMM's register tile of ``tile_p``
        tiles x ``tile_k / lanes`` vectors fits the registers."""

        def legal(c: Config) -> str | None:
            if self._tiles(spec, c["tile_m"]) % c["tile_p"]:
                return "tile_p must divide the number of tiles"
            vec = c["tile_k"] // lanes
            return register_fit(target, c["tile_p"] * vec, vec)

        return legal

    def default(self, spec: ConvSpec, target: Target) -> Config:
        lanes, regs = target.vector_lanes, target.registers
        tiles = self._tiles(spec, 2)
        fit = [p for p in divisors(tiles, upto=regs - 2) if register_fit(target, p, 1, memory_operand=False) is None]
        return {"tile_m": 2, "tile_k": lanes, "tile_p": max(fit)}

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        alpha = config["tile_m"] + 2
        return {"gemm_flops_ratio": alpha * alpha / (9.0 * config["tile_m"] ** 2),
                "tiles": float(self._tiles(spec, config["tile_m"]))}

    # -- the algorithm ------------------------------------------------------------------------
    def _te(self, spec: ConvSpec, config: Config, prepacked: bool):
        from tvm import te, tirx

        from convgen.compute import epilogue

        m, kb = config["tile_m"], config["tile_k"]
        alpha = m + 2
        A, B, G = transform_matrices(m)
        nchw = spec.layout == "NCHW"
        C, K = spec.in_channels, spec.out_channels
        KB = -(-K // kb)  # channel blocks: K not a multiple of kb is padded with unread lanes
        dt = spec.dtype

        data = te.placeholder(spec.input_shape, dt, name="data")
        weight = te.placeholder(spec.weight_shape, dt, name="weight")
        data_pad, P, tile_origin, tile_of = tiled(spec, data, m)

        def dpad(n, c, h, w):
            return data_pad[n, c, h, w] if nchw else data_pad[n, h, w, c]

        def v_body(e, nu, p, c):
            n, h0, w0 = tile_origin(p)
            return _bilinear(B, B, e, nu, lambda a, b: dpad(n, c, h0 + a, w0 + b), dt)

        V = te.compute((alpha, alpha, P, C), v_body, name="data_transform")

        if prepacked:
            U = te.placeholder((alpha, alpha, KB, C, kb), dt, name="weight_packed")
        else:
            def g(ko, ki, c, a, b):
                k = tirx.min(ko * kb + ki, K - 1)  # padded lanes repeat the last filter; never stored
                return weight[k, c, a, b] if nchw else weight[a, b, c, k]

            # the filters with kb of them innermost (a transpose for OIHW), so that the
            # transform below reads whole vectors: 9 loads and 36 stores of kb lanes per
            # (block, channel) instead of 36 gathers across filters
            wb = te.compute((KB, C, 3, 3, kb), lambda ko, c, a, b, ki: g(ko, ki, c, a, b), name="weight_blocked")
            flip = (lambda a, b: (2 - a, 2 - b)) if spec.flip else (lambda a, b: (a, b))
            U = te.compute((alpha, alpha, KB, C, kb),
                           lambda e, nu, ko, c, ki: _bilinear(G.T, G.T, e, nu, lambda a, b: wb[(ko, c, *flip(a, b), ki)], dt),
                           name="weight_transform")

        rc = te.reduce_axis((0, C), name="rc")
        M = te.compute((alpha, alpha, KB, P, kb),
                       lambda e, nu, ko, p, ki: te.sum(U[e, nu, ko, rc, ki] * V[e, nu, p, rc], axis=rc),
                       name="batch_gemm")

        def y(n, k, h, w):
            p = tile_of(n, h, w)
            return _bilinear(A, A, h % m, w % m, lambda a, b: M[a, b, k // kb, p, k % kb], dt)

        if nchw:
            conv = te.compute(spec.output_shape, lambda n, k, h, w: y(n, k, h, w), name="conv")
        else:
            conv = te.compute(spec.output_shape, lambda n, h, w, k: y(n, k, h, w), name="conv")
        inputs, out = epilogue(spec, conv)
        return [data, U if prepacked else weight] + inputs, out, weight, U

    def primfunc(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        from tvm import te

        args, out, _, _ = self._te(spec, config, prepacked=False)
        return te.create_prim_func(args + [out])

    def variants(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        from tvm import te

        args, out, _, _ = self._te(spec, config, prepacked=True)
        _, _, weight, U = self._te(spec, config, prepacked=False)
        return {"main_prepacked": te.create_prim_func(args + [out]), "pack_weights": te.create_prim_func([weight, U])}

    # -- the schedule ---------------------------------------------------------------------------
    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        lanes = target.vector_lanes
        tp = config["tile_p"]
        if has_block(sch, "weight_transform"):
            wt = sch.get_sblock("weight_transform")
            e, nu, ko, c, ki = sch.get_loops(wt)
            sch.reorder(ko, c, e, nu, ki)
            sch.parallel(ko)
            # the blocked filters of one (block, channel) made where they are used: 9 x kb
            # floats, in L1; from OIHW each filter's 9 taps are one contiguous read
            wb = sch.get_sblock("weight_blocked")
            sch.compute_at(wb, c)
            a, b, k = sch.get_loops(wb)[-3:]
            if spec.layout == "NCHW":
                sch.reorder(k, a, b)
                sch.unroll(a)
                sch.unroll(b)
            else:
                sch.vectorize(k)
            sch.unroll(e)
            sch.unroll(nu)
            sch.vectorize(ki)
        if not has_block(sch, "data_transform"):
            return  # pack_weights: the weight transform alone
        if has_block(sch, "data_pad"):  # absent when neither the spec nor the tiles pad
            loops = sch.get_loops(sch.get_sblock("data_pad"))
            sch.parallel(sch.fuse(loops[0], loops[1]))
        dtb = sch.get_sblock("data_transform")
        e, nu, p, c = sch.get_loops(dtb)
        sch.reorder(p, c, e, nu)
        sch.parallel(p)
        sch.unroll(e)
        sch.unroll(nu)

        gemm = sch.get_sblock("batch_gemm")
        e, nu, ko, p, ki, rc = sch.get_loops(gemm)
        po, pi = sch.split(p, [None, tp])
        sch.reorder(e, nu, ko, po, rc, pi, ki)
        sch.parallel(sch.fuse(e, nu, ko))
        sch.unroll(pi)
        sch.vectorize(ki)
        first = rc
        if self.prefetch:  # steps of PREFETCH_CHANNELS rows of U, each one contiguous block
            first, _ = sch.split(rc, [None, math.gcd(spec.in_channels, PREFETCH_CHANNELS)])
            sch.annotate(first, PREFETCH, 1)

        output_transform(sch, spec, config["tile_m"], lanes)
        sch.decompose_reduction(gemm, first)

    #: prefetch the next panel of U (:class:`WinogradPrefetchX86`)
    prefetch = False

    def finish(self, func: Any, spec: ConvSpec, target: Target, config: Config) -> Any:
        if not self.prefetch:
            return func
        tp = config["tile_p"]
        # a thread's task is one U[e, nu, oc block] (C x tile_k), streamed past P / tile_p
        # groups of tiles; batch_gemm's dimension 3 is the tile
        return prefetch_next_panel(func, tasks=self._tiles(spec, config["tile_m"]) // tp, task=lambda mins: mins[3] // tp,
                                   weights=("weight_packed", "weight_transform"), acc="batch_gemm", panel_dims=3)


class WinogradBF16X86(WinogradX86, name="x86.winograd_bf16", version=1, families=("x86",), dtypes=("bfloat16",),
                      priority=5, error_bound=1e-2):
    """Winograd on bf16 data: transforms in fp32, the batched GEMM on ``vdpbf16ps``.

    Why: on bf16 data the direct template (``x86.direct_bf16``) runs near the bf16 peak
    (ResNet-50's 3x3 layers at 85-90% of twice the fp32 FMA rate on Zen 5), and is still
    no faster than the fp32 Winograd (0.99-1.19x on those layers): only fewer multiplies
    are left to gain. Here the transforms compute in fp32 on the exact bf16 values and round
    their results to bf16 once (``V``; ``U`` when the weights are packed); the GEMM sums
    those products in fp32, two input channels per instruction, as ``x86.direct_bf16``
    does (:class:`~schedules.x86_dot.DotStep`):

    - ``U[e, nu, K/kb, C/2, kb, 2]``: for a pair of input channels, each of the ``kb``
      filters holds its two transformed weights side by side: one 64-byte load is the
      ``b`` operand of 16 filters;
    - ``V[e, nu, P, C]``: the two channels of a tile are adjacent, one 32-bit broadcast is
      the ``a`` operand;
    - ``tile_p`` tiles x ``tile_k / 16`` vectors of fp32 accumulators, within AVX-512's 32
      registers as in the fp32 template (``tile_p * tile_k/16 + tile_k/16 + 1 <= 32``).

    What it costs in accuracy: the two extra roundings to bf16 (of ``V`` and ``U``) are
    relative errors of 2**-9 each on values the transforms grew (F(2x2)'s B has entries
    of 1, F(4x4)'s up to 5), and the output transform adds several such products with
    alternating signs. Measured on the reference's random data: a normwise relative error of
    4e-3 against the reference on the same bf16 values (a direct bf16 kernel's is that of
    fp32 sums, ~1e-6, or of the bf16 output rounding), so the template declares
    ``error_bound=1e-2`` and every check of its kernels (the tuner's, ``convgen run``) holds
    them to that instead of the elementwise tolerance. ``tests/test_winograd.py`` checks it
    against the reference; ``bench_torch.py`` prints the whole network's error.
    """

    step = VDPBF16PS

    def __init__(self, use_instruction: bool = True) -> None:
        self.use_instruction = use_instruction

    def rank(self, spec: ConvSpec, target: Target) -> int:
        """Above ``x86.direct_bf16`` (30) with 64 channels or more: measured on Zen 5, both
        templates' defaults on ResNet-50's four 3x3 layers (64-512 channels, NHWC, batch 1,
        prepacked, interleaved): 1.14-1.45x faster (0.22 vs 0.25 ms at 64 channels on 56x56,
        0.18 vs 0.25 ms at 512 on 7x7). Fewer channels were not measured."""
        return 35 if min(spec.in_channels, spec.out_channels) >= 64 else self.priority

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if self.use_instruction and not self.step.available(target):
            return f"target {target.name} has no {self.step.flag.upper()} ({self.step.instruction})"
        if spec.filter_dtype != "bfloat16":
            return f"{spec.filter_dtype} weights (vdpbf16ps takes bfloat16)"
        if spec.in_channels % 2:
            return f"input channels ({spec.in_channels}) not even: vdpbf16ps takes them in pairs"
        return super().supports(spec, target)

    def space(self, spec: ConvSpec, target: Target) -> Space:
        space = super().space(spec, target)
        # tile_k in the instruction's 16 fp32 lanes (AVX-512), whatever the target's fp32 lanes
        lanes = self.step.lanes
        tile_k = tuple(x * lanes for x in (1, 2) if spec.out_channels % (x * lanes) == 0) or (lanes,)
        # F(2x2) only: larger tiles' transforms grow values before the roundings to bf16;
        # normwise error on random data measured 4e-3 for F(2x2), 1.4e-2 for F(3x3) and
        # 1.6e-2 for F(4x4), the last two near all a bf16 ResNet-50 may lose (2e-2)
        replace = {"tile_m": (2,), "tile_k": tile_k,
                   "tile_p": tuple(divisors(self._tiles(spec, 2), upto=target.registers - 2))}
        knobs = tuple(Knob(k.name, replace.get(k.name, k.values), k.doc) for k in space.knobs)
        return Space(self.name, self.version, knobs, self._legal(spec, target, lanes))

    def default(self, spec: ConvSpec, target: Target) -> Config:
        return dict(super().default(spec, target), tile_k=self.step.lanes)

    def _te(self, spec: ConvSpec, config: Config, prepacked: bool):
        from tvm import te, tirx

        from convgen.compute import epilogue

        m, kb = config["tile_m"], config["tile_k"]
        alpha = m + 2
        A, B, G = transform_matrices(m)
        nchw = spec.layout == "NCHW"
        C, K = spec.in_channels, spec.out_channels
        KB = -(-K // kb)
        f32, bf16 = "float32", "bfloat16"

        data = te.placeholder(spec.input_shape, bf16, name="data")
        weight = te.placeholder(spec.weight_shape, bf16, name="weight")
        data_pad, P, tile_origin, tile_of = tiled(spec, data, m)

        def dpad(n, c, h, w):
            return (data_pad[n, c, h, w] if nchw else data_pad[n, h, w, c]).astype(f32)

        def v_body(e, nu, p, c):
            n, h0, w0 = tile_origin(p)
            return _bilinear(B, B, e, nu, lambda a, b: dpad(n, c, h0 + a, w0 + b), f32).astype(bf16)

        V = te.compute((alpha, alpha, P, C), v_body, name="data_transform")

        if prepacked:
            U = te.placeholder((alpha, alpha, KB, C // 2, kb, 2), bf16, name="weight_packed")
        else:
            flip = (lambda a, b: (2 - a, 2 - b)) if spec.flip else (lambda a, b: (a, b))

            def g(ko, ci, ki, pair, a, b):
                k, c = tirx.min(ko * kb + ki, K - 1), ci * 2 + pair  # padded lanes repeat the last filter
                a, b = flip(a, b)
                return (weight[k, c, a, b] if nchw else weight[a, b, c, k]).astype(f32)

            U = te.compute((alpha, alpha, KB, C // 2, kb, 2),
                           lambda e, nu, ko, ci, ki, pair: _bilinear(
                               G.T, G.T, e, nu, lambda a, b: g(ko, ci, ki, pair, a, b), f32).astype(bf16),
                           name="weight_transform")

        rc = te.reduce_axis((0, C // 2), name="rc")
        rp = te.reduce_axis((0, 2), name="rp")
        M = te.compute((alpha, alpha, KB, P, kb),
                       lambda e, nu, ko, p, ki: te.sum(V[e, nu, p, rc * 2 + rp].astype(f32)
                                                       * U[e, nu, ko, rc, ki, rp].astype(f32), axis=[rc, rp]),
                       name="batch_gemm")

        def y(n, k, h, w):
            p = tile_of(n, h, w)
            return _bilinear(A, A, h % m, w % m, lambda a, b: M[a, b, k // kb, p, k % kb], f32)

        if nchw:
            conv = te.compute(spec.output_shape, lambda n, k, h, w: y(n, k, h, w), name="conv")
        else:
            conv = te.compute(spec.output_shape, lambda n, h, w, k: y(n, k, h, w), name="conv")
        inputs, out = epilogue(spec, conv, f32)
        return [data, U if prepacked else weight] + inputs, out, weight, U

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        step, tp = self.step, config["tile_p"]
        if has_block(sch, "weight_transform"):
            wt = sch.get_sblock("weight_transform")
            e, nu, ko, ci, ki, pair = sch.get_loops(wt)
            sch.reorder(ko, ci, e, nu, ki, pair)
            sch.parallel(ko)
            sch.unroll(e)
            sch.unroll(nu)
        if not has_block(sch, "data_transform"):
            return  # pack_weights: the weight transform alone
        if has_block(sch, "data_pad"):
            loops = sch.get_loops(sch.get_sblock("data_pad"))
            sch.parallel(sch.fuse(loops[0], loops[1]))
        dtb = sch.get_sblock("data_transform")
        e, nu, p, c = sch.get_loops(dtb)
        if spec.layout == "NHWC" and spec.in_channels % step.lanes == 0:
            # channels in fp32 vectors: a tile's (m+2)^2 pixels are loaded as 16 channels each,
            # the transform's adds run 16 lanes wide, and V's rows are stored whole
            co, ci = sch.split(c, [None, step.lanes])
            sch.reorder(p, co, e, nu, ci)
            sch.vectorize(ci)
        else:
            sch.reorder(p, c, e, nu)
        sch.parallel(p)
        sch.unroll(e)
        sch.unroll(nu)

        # the GEMM: per (e, nu, filter block), tile_p tiles x tile_k filters of fp32
        # accumulators; each step of the reduction over channel pairs is tile_k/16
        # instructions per tile, the pair of V broadcast, 16 filters' pairs of U loaded
        gemm = sch.get_sblock("batch_gemm")
        e, nu, ko, p, ki, rc, rp = sch.get_loops(gemm)
        po, pi = sch.split(p, [None, tp])
        kv, kl = sch.split(ki, [None, step.lanes])
        sch.reorder(e, nu, ko, po, rc, pi, kv, kl, rp)
        outer = sch.fuse(e, nu, ko)
        sch.parallel(outer)
        sch.unroll(pi)
        sch.unroll(kv)
        init = sch.decompose_reduction(gemm, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        if self.use_instruction:
            sch.annotate(outer, "pragma_import_llvm", step.llvm_ir())
            sch.tensorize(kl, step.tensor_intrin())

        output_transform(sch, spec, config["tile_m"], step.lanes)


def tiled(spec: ConvSpec, data: Any, m: int) -> tuple[Any, int, Any, Any]:
    """``(data_pad, P, tile_origin, tile_of)``: ``data`` with the spec's padding and zeros up to
    whole ``m x m`` output tiles at the bottom and right, the number of tiles ``P`` (batch
    included), ``tile_origin(p) -> (n, h0, w0)`` where tile ``p`` reads ``data_pad``, and
    ``tile_of(n, h, w) -> p``, the tile of output pixel ``(h, w)``."""
    from convgen.compute import pad_data

    nH, nW = -(-spec.out_height // m), -(-spec.out_width // m)
    pt, pl = spec.padding[0], spec.padding[1]
    data_pad = pad_data(spec, data, (pt, pl, nH * m + 2 - spec.height - pt, nW * m + 2 - spec.width - pl))

    def tile_origin(p: Any) -> tuple:
        return p // (nH * nW), (p // nW) % nH * m, p % nW * m

    def tile_of(n: Any, h: Any, w: Any) -> Any:
        return (n * nH + h // m) * nW + w // m

    return data_pad, spec.batch * nH * nW, tile_origin, tile_of


def output_transform(sch: Any, spec: ConvSpec, m: int, lanes: int) -> None:
    """Schedule ``conv`` (the output transform, ``A^T M A`` per ``m x m`` tile) with the
    epilogue under it: parallel over rows of tiles (and output channels in NCHW), each tile's
    pixels unrolled, NHWC channels in vectors of ``lanes``."""
    conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
    names = ("n", "k", "h", "w") if spec.layout == "NCHW" else ("n", "h", "w", "k")
    L = dict(zip(names, sch.get_loops(conv)))
    ho, hi = sch.split(L["h"], [None, m])
    wo, wi = sch.split(L["w"], [None, m])
    if spec.layout == "NCHW":
        sch.reorder(L["n"], L["k"], ho, wo, hi, wi)
        sch.parallel(sch.fuse(L["n"], L["k"], ho))
    else:
        ko, ki = sch.split(L["k"], [None, lanes])
        sch.reorder(L["n"], ho, ko, wo, hi, wi, ki)
        sch.parallel(sch.fuse(L["n"], ho))
        sch.vectorize(ki)
    sch.reverse_compute_at(out, wo)
    sch.unroll(hi)
    sch.unroll(wi)


class WinogradPrefetchX86(WinogradX86, name="x86.winograd_prefetch", version=1, families=("x86",),
                          dtypes=("float32",), priority=4):
    """``x86.winograd`` whose threads prefetch the next panel of transformed weights.

    A thread's GEMM task reads one ``U[e, nu, oc block]`` (``C x tile_k``: 16 KB for 256
    channels) from memory, where a network leaves it, then reuses it for each group of
    tiles. Here every step of :data:`PREFETCH_CHANNELS` input channels also prefetches its
    share of the same rows of the next panel (:func:`schedules.cpu.prefetch_next_panel`).
    F(2x2)'s transformed weights are 16/9 of the filters: 4.2 MB for 256 channels, whose
    layer took 1.5x its cached time with them in memory (Emerald Rapids, 2 threads: 562 vs
    371 us; prefetching: 423). Serves the layers whose transformed weights reach
    :data:`~schedules.x86.PREFETCH_WEIGHTS_BYTES`, and is the default there where
    ``x86.winograd`` is.
    """

    prefetch = True

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        size = weight_bytes(spec) * 16 // 9  # F(2x2): 4x4 transformed taps for 3x3
        if size < PREFETCH_WEIGHTS_BYTES:
            return f"{size // 1024} KiB of transformed weights: prefetching pays from {PREFETCH_WEIGHTS_BYTES // 1024} KiB"
        return super().supports(spec, target)

    def rank(self, spec: ConvSpec, target: Target) -> int:
        plain = super().rank(spec, target)
        return plain + 1 if plain > WinogradX86.priority else self.priority


register(WinogradX86())
register(WinogradPrefetchX86())
register(WinogradBF16X86())
