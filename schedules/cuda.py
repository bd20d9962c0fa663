"""CUDA templates: a tiled direct convolution (fp32, NCHW and NHWC) and a generic fallback.

``cuda.direct`` follows TVM's classic ``conv2d_direct`` CUDA schedule, on s_tir::

    blockIdx.x  <- (n, f/Fb, y/Yb, x/Xb)            one block per output tile
      vthread   <- (vf, vy, vx)                     interleaved sub-tiles (bank spread)
        threadIdx.x <- (tf, ty, tx)                 x-fastest (NCHW) / f-fastest (NHWC)
          for rc_o, kh_o, kw_o:                     one shared-memory stage per step
            weight_shared <- cooperative copy       every thread copies a strided part
            data_shared   <- cooperative copy       (padding applied while copying)
            for rc_i, kh_i, kw_i, fi, yi, xi:       register tile: fi*yi*xi accumulators
              acc += data_shared * weight_shared
          out <- epilogue(acc)                      bias + ReLU from registers

Output axes are split four ways (block / vthread / thread / inner: the knobs ``tile_f``,
``tile_y``, ``tile_x`` give the last three as ``[vthread, threads, inner]``), the reduction
over input channels and the kernel window by ``tile_rc``, ``tile_ry``, ``tile_rx``.

Resource budget, checked in the knob constraint so the tuner never samples a config the
GPU cannot launch (TVM's VerifyGPUCode re-checks every build):

- threads per block ``tf*ty*tx`` between one warp and ``max_threads_per_block``;
- shared memory ``4 * (Fb*rc*ry*rx + rc*Hspan*Wspan)`` bytes within the target's
  48 KiB, ``Hspan = (Yb-1)*stride + (ry-1)*dilation + 1`` (likewise W), plus the odd
  row stride that keeps a warp's reads in distinct banks;
- the register tile ``vf*fi * vy*yi * vx*xi`` at most 64 accumulators (each thread also
  holds the operands of a step; 255 registers is the hard limit, ~128 keeps two blocks
  per SM);
- at most ``max_vthread`` (8) virtual threads.

``cuda.generic`` computes one output element per thread and serves every spec (groups,
depthwise, dilation, fp16, any layout) as the fallback.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from convgen.knobs import Config, Knob, Space, divisors
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register
from .common import has_block, spatial_loops


def _split_values(extent: int, vthreads: tuple[int, ...], threads: int, inner: int) -> tuple[list[int], ...]:
    """``[vthread, threads, inner]`` triples whose product divides ``extent``."""
    out = []
    for v, t, i in itertools.product(vthreads, divisors(extent, upto=threads), divisors(extent, upto=inner)):
        if extent % (v * t * i) == 0:
            out.append([v, t, i])
    return tuple(out)


class DirectCUDA(Template, name="cuda.direct", version=1, families=("cuda",), dtypes=("float32",), priority=10):
    """Tiled direct convolution: shared-memory staging, a register tile per thread."""

    def __init__(self) -> None:
        self._defaults: dict[Any, Config] = {}  # the default search scores ~10^4 configs

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.groups != 1:
            return "grouped convolution (cuda.generic serves it)"
        return None

    # -- geometry ------------------------------------------------------------------------
    @staticmethod
    def _axes(spec: ConvSpec) -> dict[str, int]:
        return {"f": spec.out_channels, "y": spec.out_height, "x": spec.out_width}

    @staticmethod
    def _shared_words(spec: ConvSpec, config: Config) -> tuple[int, int]:
        """(weight tile, data tile) in 4-byte words, including the bank-conflict padding."""
        fb = math.prod(config["tile_f"])
        yb = math.prod(config["tile_y"])
        xb = math.prod(config["tile_x"])
        rc, ry, rx = config["tile_rc"], config["tile_ry"], config["tile_rx"]
        (sh, sw), (dh, dw) = spec.stride, spec.dilation
        hspan = (yb - 1) * sh + (ry - 1) * dh + 1
        wspan = (xb - 1) * sw + (rx - 1) * dw + 1
        if spec.layout == "NCHW":
            # weights [Fb, rc, ry, rx]: threads of a warp differ in f, so the f-stride is
            # padded to an odd number of words (see apply)
            weight = fb * _padded(rc * ry * rx)
            data = rc * hspan * wspan
        else:
            # data [Hspan, Wspan, rc]: threads of a warp differ in x, the x-stride is padded
            weight = ry * rx * rc * fb
            data = hspan * wspan * _padded(rc)
        return weight, data

    def _threads(self, config: Config) -> int:
        return config["tile_f"][1] * config["tile_y"][1] * config["tile_x"][1]

    @staticmethod
    def _accumulators(config: Config) -> int:
        f, y, x = config["tile_f"], config["tile_y"], config["tile_x"]
        return f[0] * f[2] * y[0] * y[2] * x[0] * x[2]

    def space(self, spec: ConvSpec, target: Target) -> Space:
        gpu = target.gpu_limits()
        axes = self._axes(spec)
        c, (r, s) = spec.in_per_group, spec.kernel
        # which axis the threads of a warp run along: the contiguous one of the layout
        fast = "x" if spec.layout == "NCHW" else "f"
        knobs = (
            Knob("tile_f", _split_values(axes["f"], (1, 2, 4), 32 if fast == "f" else 16, 8),
                 "output channels per block as [vthreads, threads, per-thread]"),
            Knob("tile_y", _split_values(axes["y"], (1,), 16, 4), "output rows per block as [vthreads, threads, per-thread]"),
            Knob("tile_x", _split_values(axes["x"], (1, 2), 32 if fast == "x" else 16, 4),
                 "output columns per block as [vthreads, threads, per-thread]"),
            Knob("tile_rc", tuple(divisors(c, upto=16)), "input channels per shared-memory stage"),
            Knob("tile_ry", tuple(sorted({1, r})), "kernel rows per stage (1, or the whole window)"),
            Knob("tile_rx", tuple(sorted({1, s})), "kernel columns per stage (1, or the whole window)"),
            Knob("auto_unroll_max_step", (0, 512, 1500), "TVM's auto-unroll limit on the kernel body"),
            Knob("unroll_explicit", (False, True), "unroll in TIR (True) or leave #pragma unroll to nvcc"),
        )
        total = axes["f"] * axes["y"] * axes["x"]
        min_threads = min(gpu.warp_size, total)
        smem_words = gpu.max_shared_memory_per_block // 4

        def fits(config: Config) -> str | None:
            threads = self._threads(config)
            if not min_threads <= threads <= gpu.max_threads_per_block:
                return f"{threads} threads per block (allowed {min_threads}..{gpu.max_threads_per_block})"
            vthreads = config["tile_f"][0] * config["tile_y"][0] * config["tile_x"][0]
            if vthreads > gpu.max_vthread:
                return f"{vthreads} virtual threads > {gpu.max_vthread}"
            acc = self._accumulators(config)
            if acc > 64:
                return f"register tile of {acc} accumulators > 64"
            weight, data = self._shared_words(spec, config)
            if weight + data > smem_words:
                return f"shared memory {4 * (weight + data)} bytes > {gpu.max_shared_memory_per_block}"
            return None

        return Space(self.name, self.version, knobs, fits)

    def _score(self, spec: ConvSpec, target: Target, config: Config) -> float:
        """Heuristic quality of a config (higher is better): what a GPU likes, roughly.

        Occupancy (every SM busy twice over), 128-256 threads, data reuse at both levels
        (FMAs per word copied into shared memory; FMAs per word read from it into
        registers), shared memory small enough for two blocks per SM, coalesced access.
        """
        gpu = target.gpu_limits()
        threads, acc = self._threads(config), self._accumulators(config)
        fb, yb, xb = (math.prod(config[k]) for k in ("tile_f", "tile_y", "tile_x"))
        blocks = spec.batch * (spec.out_channels // fb) * (spec.out_height // yb) * (spec.out_width // xb)
        weight, data = self._shared_words(spec, config)
        rc, ry, rx = config["tile_rc"], config["tile_ry"], config["tile_rx"]
        fmas = fb * yb * xb * rc * ry * rx                       # per shared-memory stage
        f, y, x = config["tile_f"], config["tile_y"], config["tile_x"]
        fi, pi = f[0] * f[2], y[0] * y[2] * x[0] * x[2]          # per thread: channels, pixels
        fast = config["tile_x"][1] if spec.layout == "NCHW" else config["tile_f"][1]
        penalty = abs(math.log2(threads) - 7.5)                  # 128..256 threads
        if blocks < gpu.sm_count:                                # every SM busy
            penalty += math.log2(gpu.sm_count / blocks)
        penalty += max(0.0, math.log2(32 / (fmas / (weight + data))))   # >= 32 FMAs per copied word
        penalty += max(0.0, math.log2(4 / (fi * pi / (fi + pi))))      # >= 4 FMAs per shared read
        penalty += max(0.0, math.log2(acc / 32))                 # registers left for operands
        if 4 * (weight + data) > 24 * 1024:                      # two blocks per SM
            penalty += 2 * (4 * (weight + data) / (24 * 1024) - 1)
        if fast < min(8, {"NCHW": spec.out_width, "NHWC": spec.out_channels}[spec.layout]):
            penalty += 1.0                                       # coalesced loads and stores
        if rc < min(8, spec.in_per_group):
            penalty += 1.0                                       # fewer barriers per FMA
        return -penalty

    def default(self, spec: ConvSpec, target: Target) -> Config:
        key = (spec, target.name, json.dumps([target.tvm, target.isa], sort_keys=True))
        if key not in self._defaults:
            self._defaults[key] = self._search_default(spec, target)
        return dict(self._defaults[key])

    def _search_default(self, spec: ConvSpec, target: Target) -> Config:
        """The best plain config by :meth:`_score` (no virtual threads: the tuner explores those).

        Stages the whole kernel window when it fits, else one row of it, else one tap.
        """
        space = self.space(spec, target)
        r, s = spec.kernel
        plain = {k: [v for v in space[k].values if v[0] == 1] for k in ("tile_f", "tile_y", "tile_x")}
        for ry, rx in ((r, s), (1, s), (1, 1)):
            best, best_score = None, -math.inf
            for f, y, x in itertools.product(plain["tile_f"], plain["tile_y"], plain["tile_x"]):
                if not 1 <= f[1] * y[1] * x[1] <= 1024 or f[2] * y[2] * x[2] > 64:
                    continue  # cheap part of the constraint first: threads, register tile
                for rc in space["tile_rc"].values:
                    config = {"tile_f": f, "tile_y": y, "tile_x": x, "tile_rc": rc, "tile_ry": ry, "tile_rx": rx,
                              "auto_unroll_max_step": 512, "unroll_explicit": True}
                    if space.constraint(config):
                        continue
                    score = self._score(spec, target, config)
                    if score > best_score:
                        best, best_score = config, score
            if best is not None:
                return space.check(best)
        raise ValueError(f"no legal cuda.direct config for {spec.describe()} on {target.name}")

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        weight, data = self._shared_words(spec, config)
        out = {f"{k}_{part}": float(v) for k in ("tile_f", "tile_y", "tile_x")
               for part, v in zip(("vthread", "threads", "inner"), config[k])}
        out.update(threads=float(self._threads(config)), accumulators=float(self._accumulators(config)),
                   shared_kib=4 * (weight + data) / 1024, score=self._score(spec, target, config))
        return out

    # -- the schedule --------------------------------------------------------------------
    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        nchw = spec.layout == "NCHW"
        conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
        L = spatial_loops(sch, spec, conv)
        fb, fv, ft, fi = sch.split(L["oc"], [None, *config["tile_f"]])
        yb, yv, yt, yi = sch.split(L["oh"], [None, *config["tile_y"]])
        xb, xv, xt, xi = sch.split(L["ow"], [None, *config["tile_x"]])
        rco, rci = sch.split(L["ic"], [None, config["tile_rc"]])
        kho, khi = sch.split(L["kh"], [None, config["tile_ry"]])
        kwo, kwi = sch.split(L["kw"], [None, config["tile_rx"]])
        # Consecutive threads (and the innermost register tile) run along the layout's
        # contiguous axis, so a warp's global loads and stores coalesce.
        threads = (ft, yt, xt) if nchw else (yt, xt, ft)
        inner = (fi, yi, xi) if nchw else (yi, xi, fi)
        sch.reorder(L["n"], fb, yb, xb, fv, yv, xv, *threads, rco, kho, kwo, rci, khi, kwi, *inner)
        bx = sch.fuse(L["n"], fb, yb, xb)  # one grid axis: blockIdx.y/z cap at 65535
        tx = sch.fuse(*threads)
        sch.bind(bx, "blockIdx.x")
        sch.bind(fv, "vthread.z")
        sch.bind(yv, "vthread.y")
        sch.bind(xv, "vthread.x")
        sch.bind(tx, "threadIdx.x")
        # The epilogue runs per thread on its register tile; the accumulators live in registers.
        sch.reverse_compute_at(out, tx)
        sch.set_scope(conv, 0, "local")

        n_threads = self._threads(config)
        weight = sch.cache_read(conv, "weight", "shared")
        data_name = "data_pad" if has_block(sch, "data_pad") else "data"
        data = sch.cache_read(conv, data_name, "shared")
        for stage in (weight, data):
            sch.compute_at(stage, kwo, preserve_unit_loops=True)
        if data_name == "data_pad":
            sch.compute_inline(sch.get_sblock("data_pad"))  # pad while copying to shared
        # Bank conflicts: the threads of a warp read the weight tile at different f (NCHW:
        # [f, c, kh, kw]) or the data tile at different x (NHWC: [h, w, c]). With an odd
        # row stride (in 4-byte words) up to 32 different rows fall in 32 different banks;
        # threads reading the same word get it broadcast.
        if nchw:
            sch.storage_align(weight, 0, axis=0, factor=2, offset=1)
        else:
            sch.storage_align(data, 0, axis=2, factor=2, offset=1)
        for stage in (weight, data):
            # cooperative copy: the tile's elements in order, thread t takes t, t+T, ...
            fused = sch.fuse(*sch.get_loops(stage)[-4:])
            _, t = sch.split(fused, [None, n_threads])
            sch.bind(t, "threadIdx.x")

        sch.annotate(bx, "pragma_auto_unroll_max_step", config["auto_unroll_max_step"])
        sch.annotate(bx, "pragma_unroll_explicit", config["unroll_explicit"])
        sch.decompose_reduction(conv, rco)


def _padded(words: int) -> int:
    """``words`` rounded up to odd (what ``storage_align(factor=2, offset=1)`` does)."""
    return words | 1


class GenericCUDA(Template, name="cuda.generic", version=1, families=("cuda",), priority=-100, fallback=True):
    """One thread per output element, the reduction in a register: correct for every spec.

    fp16 accumulates in an fp32 register and rounds once, after bias and activation.

    Consecutive threads compute consecutive elements of the output in memory order, so
    output stores and (NCHW: data, NHWC: weight) loads coalesce; nothing is staged.
    """

    # priority: the last resort

    def primfunc(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        # fp16 accumulates in fp32 (one rounding at the end), like cuDNN and the tensor cores
        from convgen.compute import conv2d_primfunc

        return conv2d_primfunc(spec, acc_dtype="float32" if spec.dtype == "float16" else None)

    def space(self, spec: ConvSpec, target: Target) -> Space:
        gpu = target.gpu_limits()
        threads = tuple(t for t in (64, 128, 256, 512) if t <= gpu.max_threads_per_block)
        return Space(
            self.name,
            self.version,
            (
                Knob("threads", threads, "threads per block (one output element each)"),
                Knob("auto_unroll_max_step", (0, 16, 64), "TVM's auto-unroll limit (the kernel window loops)"),
            ),
        )

    def default(self, spec: ConvSpec, target: Target) -> Config:
        return {"threads": 256, "auto_unroll_max_step": 64 if spec.kernel[0] * spec.kernel[1] <= 16 else 16}

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        if has_block(sch, "data_pad"):
            sch.compute_inline(sch.get_sblock("data_pad"))
        conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
        bx, tx = sch.split(sch.fuse(*sch.get_loops(out)), [None, config["threads"]])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.compute_at(conv, tx, preserve_unit_loops=True)
        sch.set_scope(conv, 0, "local")
        sch.annotate(bx, "pragma_auto_unroll_max_step", config["auto_unroll_max_step"])
        sch.annotate(bx, "pragma_unroll_explicit", True)
        try:
            sch.decompose_reduction(conv, sch.get_loops(conv)[-3])  # zero the register first
        except Exception:  # noqa: BLE001 - see below
            # s_tir decomposes only when it can prove the fused thread index quasi-affine,
            # which fails for some extents; the init then stays a guarded store inside the
            # first reduction step (correct, one predicate per step)
            pass


register(DirectCUDA())
register(GenericCUDA())
