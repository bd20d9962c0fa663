"""fp16 tensor-core template for CUDA: NHWC convolution as an implicit GEMM on WMMA.

The convolution is a matrix product once the output pixels and the reduction are
flattened (no im2col buffer is ever built; the flattening is an index map)::

    C[m, n] = sum_k A[m, k] * B[k, n]        m = (batch, oh, ow)    M = N*OH*OW
                                             n = output channel     N = K
                                             k = (kh, kw, ic)       K = R*S*C
    A[m, k] = data_pad[batch, oh*s + kh*d, ow*s + kw*d, ic]   (gathered while copying)
    B[k, n] = weight[kh, kw, ic, n]                           (HWIO is already [K, N])

``k`` runs over ``ic`` fastest, so a row of A is contiguous in NHWC data for one tap and
the copies into shared memory are vector loads. The product is padded to whole tiles
(``pad_einsum``) and tiled like TVM's dlight WMMA matmul::

    blockIdx.x <- M tiles (16*warp_m*frag_m rows)   blockIdx.y <- N tiles (16*warp_n*frag_n)
      threadIdx.y <- warp_m * warp_n warps           threadIdx.x <- 32 lanes
        for k_o:                                     16*chunk_k columns of K per stage
          A_shared, B_shared <- cooperative vector copies (padding, im2col gather)
          for k_i in chunk_k, frag_m x frag_n:       wmma::load_matrix_sync, mma_sync
        C fragments (fp32) -> shared -> bias, ReLU, fp16 -> global (vectorized)

The fragments accumulate in fp32 (``wmma.accumulator`` of float32: the TE definition
is asked for a float32 ``conv`` stage, see :func:`convgen.compute.conv2d_te`), the
output is rounded to fp16 once, after the epilogue.

The WMMA intrinsics are defined here rather than imported from
``tvm.s_tir.tensor_intrin.cuda``: that module registers ~250 intrinsics when imported and
takes 50-110 s on a 2-core machine (TVMScript parsing of each, with the import machinery
on the stack); the five needed here take well under a second, are registered on first
use under ``convgen_``-prefixed names and are the same TIR as TVM's
``get_wmma_*_intrin(16, 16, 16, ...)`` (a slow test checks that they are structurally
equal).

The tensor-core kernels cannot be emulated on the CPU (WMMA has no CPU form): CI builds
them and runs the static checks; ``scripts/gpu_check.py`` checks their numbers on a GPU.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from convgen.knobs import Config, Knob, Space
from convgen.spec import ConvSpec
from convgen.target import Target

from .base import Template, register

WMMA = 16  # the m16n16k16 fragment shape
WARP = 32


# ---- the WMMA intrinsics (TVM's definitions, registered lazily) ---------------------------------
def _fragment_index(buffer: Any, stride: Any, rows: int, cols: int) -> Any:
    # which 16x16 fragment of the buffer the region starts at (TVM's get_wmma_fragment_index)
    return buffer.elem_offset // stride // rows * (stride // cols) + buffer.elem_offset % stride // cols


@functools.cache
def wmma_intrinsics() -> dict[str, str]:
    """Register the five WMMA intrinsics once; returns their names by role."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    from tvm.tirx import Cast

    n = WMMA
    names = {
        "load_a": "convgen_wmma_load_16x16x16_f16_a_shared_dyn",
        "load_b": "convgen_wmma_load_16x16x16_f16_b_shared_dyn",
        "compute": "convgen_wmma_sync_16x16x16_f16f16f32",
        "init": "convgen_wmma_fill_16x16x16_f32",
        "store": "convgen_wmma_store_16x16x16_f32_shared_dyn",
    }

    def load(frag: str):
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (n, n), "float16", align=64, offset_factor=n, scope="shared.dyn")
            C = T.match_buffer(c, (n, n), "float16", align=64, offset_factor=n, scope=f"wmma.matrix_{frag}")
            with T.sblock("root"):
                T.reads(A[0:n, 0:n])
                T.writes(C[0:n, 0:n])
                for i, j in T.grid(n, n):
                    with T.sblock("load"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        C[vi, vj] = A[vi, vj]

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, c: T.handle) -> None:
            s1 = T.int32()
            s0 = T.int32()
            d1 = T.int32()
            d0 = T.int32()
            A = T.match_buffer(a, (n, n), "float16", align=64, offset_factor=n, scope="shared.dyn", strides=[s1, s0])
            C = T.match_buffer(c, (n, n), "float16", align=64, offset_factor=n, scope=f"wmma.matrix_{frag}",
                               strides=[d1, d0])
            with T.sblock("root"):
                T.reads(A[0:n, 0:n])
                T.writes(C[0:n, 0:n])
                T.evaluate(T.tvm_load_matrix_sync(C.data, n, n, n, _fragment_index(C, d1, n, n),
                                                  A.access_ptr("r", ptr_type="float16"), s1, "row_major",
                                                  dtype="void"))

        return desc, impl

    @T.prim_func(s_tir=True)
    def sync_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n, n), "float16", align=64, offset_factor=n, scope="wmma.matrix_a")
        B = T.match_buffer(b, (n, n), "float16", align=64, offset_factor=n, scope="wmma.matrix_b")
        C = T.match_buffer(c, (n, n), "float32", align=64, offset_factor=n, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads(C[0:n, 0:n], A[0:n, 0:n], B[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            for i, j, k in T.grid(n, n, n):
                with T.sblock(""):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + Cast("float32", A[vi, vk]) * Cast("float32", B[vk, vj])

    @T.prim_func(s_tir=True)
    def sync_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        a1 = T.int32()
        a0 = T.int32()
        b1 = T.int32()
        b0 = T.int32()
        c1 = T.int32()
        c0 = T.int32()
        A = T.match_buffer(a, (n, n), "float16", align=64, offset_factor=n, scope="wmma.matrix_a", strides=[a1, a0])
        B = T.match_buffer(b, (n, n), "float16", align=64, offset_factor=n, scope="wmma.matrix_b", strides=[b1, b0])
        C = T.match_buffer(c, (n, n), "float32", align=64, offset_factor=n, scope="wmma.accumulator",
                           strides=[c1, c0])
        with T.sblock("root"):
            T.reads(C[0:n, 0:n], A[0:n, 0:n], B[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            T.evaluate(T.tvm_mma_sync(C.data, _fragment_index(C, c1, n, n), A.data, _fragment_index(A, a1, n, n),
                                      B.data, _fragment_index(B, b1, n, n), C.data, _fragment_index(C, c1, n, n),
                                      dtype="void"))

    @T.prim_func(s_tir=True)
    def fill_desc(c: T.handle) -> None:
        C = T.match_buffer(c, (n, n), "float32", align=64, offset_factor=n, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:n, 0:n])
            for i, j in T.grid(n, n):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = T.float32(0)

    @T.prim_func(s_tir=True)
    def fill_impl(c: T.handle) -> None:
        d1 = T.int32()
        d0 = T.int32()
        C = T.match_buffer(c, (n, n), "float32", align=64, offset_factor=n, scope="wmma.accumulator",
                           strides=[d1, d0])
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:n, 0:n])
            T.evaluate(T.tvm_fill_fragment(C.data, n, n, n, _fragment_index(C, d1, n, n), T.float32(0),
                                           dtype="void"))

    @T.prim_func(s_tir=True)
    def store_desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n, n), "float32", align=64, offset_factor=n, scope="wmma.accumulator")
        C = T.match_buffer(c, (n, n), "float32", align=64, offset_factor=n, scope="shared.dyn")
        with T.sblock("root"):
            T.reads(A[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            for i, j in T.grid(n, n):
                with T.sblock("store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = A[vi, vj]

    @T.prim_func(s_tir=True)
    def store_impl(a: T.handle, c: T.handle) -> None:
        s1 = T.int32()
        s0 = T.int32()
        d1 = T.int32()
        d0 = T.int32()
        A = T.match_buffer(a, (n, n), "float32", align=64, offset_factor=n, scope="wmma.accumulator",
                           strides=[d1, d0])
        C = T.match_buffer(c, (n, n), "float32", align=64, offset_factor=n, scope="shared.dyn", strides=[s1, s0])
        with T.sblock("root"):
            T.reads(A[0:n, 0:n])
            T.writes(C[0:n, 0:n])
            T.evaluate(T.tvm_store_matrix_sync(A.data, n, n, n, _fragment_index(A, d1, n, n),
                                               C.access_ptr("w", ptr_type="float32"), s1, "row_major",
                                               dtype="void"))

    pairs = {
        "load_a": load("a"),
        "load_b": load("b"),
        "compute": (sync_desc, sync_impl),
        "init": (fill_desc, fill_impl),
        "store": (store_desc, store_impl),
    }
    for role, (desc, impl) in pairs.items():
        TensorIntrin.register(names[role], desc, impl, override=True)
    return names


# ---- schedule helpers ----------------------------------------------------------------------------
def _producers(sch: Any, block: Any) -> list[Any]:
    out = []
    for p in sch.get_producers(block):
        out += [p, *_producers(sch, p)]
    return out


def _inline_producers(sch: Any, block: Any) -> None:
    """Inline every chain of producers of ``block`` that can be (padding, reindex, data_pad)."""
    while True:
        done = 0
        for p in _producers(sch, block):
            try:
                sch.compute_inline(p)
                done += 1
            except Exception:  # noqa: BLE001 - not inlinable (an input, a reduction): keep it
                continue
        if not done:
            return


def _inline_consumers(sch: Any, block: Any) -> None:
    """Fold every consumer chain of ``block`` into it (unpadding, reindex, the epilogue)."""
    while True:
        done = 0
        for c in sch.get_consumers(block):
            try:
                sch.reverse_compute_inline(c)
                done += 1
            except Exception:  # noqa: BLE001
                try:
                    sch.compute_inline(c)
                    done += 1
                except Exception:  # noqa: BLE001
                    continue
        if not done:
            break
    if sch.get_consumers(block):
        raise RuntimeError("the epilogue could not be folded into the tensor-core store")


_BLOCK_ROLES = ("n", "oh", "ow", "oc", "ic", "kh", "kw")  # the NHWC conv block's iterators


def _access_roles(sch: Any, block: Any, kind: str, index: int) -> list[str | None]:
    """The block iterator behind each dimension of a reindexed operand (``None``: constant).

    After ``reindex`` the block accesses the new buffer with its own iterators, one per
    dimension, in an order and with a set TVM chooses (unit extents, such as a 1x1
    kernel's ``kh``, may be left out), so the layout maps are built from that access
    rather than assumed.
    """
    stmt = sch.get(block)
    region = (stmt.reads if kind == "read" else stmt.writes)[index].region
    names = list(zip((iv.var for iv in stmt.iter_vars), _BLOCK_ROLES))
    return [next((name for var, name in names if r.min.same_as(var)), None) for r in region]


def _index_map(roles: Any, fn: Any) -> Any:
    """An IndexMap over ``roles`` (missing iterators are 0) computing ``fn(values by role)``."""
    from tvm.tirx import IndexMap, const

    def mapping(*args: Any) -> Any:
        values = {r: const(0, "int32") for r in _BLOCK_ROLES}
        values.update((r, a) for r, a in zip(roles, args) if r is not None)
        return fn(values)

    return IndexMap.from_func(mapping, ndim=len(roles), index_dtype="int32")


class TensorCoreCUDA(Template, name="cuda.tensorcore", version=1, families=("cuda",), dtypes=("float16",),
                     priority=20, uses_intrinsics=True, pass_config={"tirx.disable_storage_rewrite": True}):
    """fp16 NHWC convolution as an implicit GEMM on WMMA tensor cores, fp32 accumulation."""

    # uses_intrinsics: convgen.cuda.emulate refuses it (WMMA has no CPU form). pass_config:
    # TVM's StorageRewrite may place the fp32 C tile inside the (larger) fp16 A/B buffer and
    # then fails in LowerIntrin ("tvm_access_ptr element type must match"); without it,
    # MergeSharedMemoryAllocations still overlaps the two by lifetime.

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        if spec.layout != "NHWC":
            return "layout NCHW (the implicit GEMM reads NHWC rows; NCHW fp16 goes to cuda.generic)"
        if spec.groups != 1:
            return "grouped convolution"
        if spec.in_channels % 2 or spec.out_channels % 2:
            return "odd channel counts (the copies move pairs of halves at least)"
        return None

    def primfunc(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        from convgen.compute import conv2d_primfunc

        return conv2d_primfunc(spec, acc_dtype="float32")

    @staticmethod
    def _tile(config: Config) -> tuple[int, int, int]:
        """(BM, BN, BK): the block's tile of the GEMM."""
        return (WMMA * config["warp_m"] * config["frag_m"], WMMA * config["warp_n"] * config["frag_n"],
                WMMA * config["chunk_k"])

    @classmethod
    def shared_bytes(cls, config: Config) -> int:
        """Shared memory of a block: the A and B stages, or the fp32 C tile if larger.

        A and B rows are padded by 8 halves against bank conflicts (the ``storage_align``
        in :meth:`apply`). The C tile reuses the A/B space (TVM merges dynamic shared
        allocations whose lifetimes do not overlap), so the block needs the larger of the
        two; tests check this against what TVM allocates.
        """
        bm, bn, bk = cls._tile(config)
        return max(2 * (bm * (bk + 8) + bk * (bn + 8)), 4 * bm * bn)

    def space(self, spec: ConvSpec, target: Target) -> Space:
        gpu = target.gpu_limits()
        vec = tuple(v for v in (2, 4, 8) if spec.in_channels % v == 0 and spec.out_channels % v == 0)
        m = spec.batch * spec.out_height * spec.out_width

        def fits(config: Config) -> str | None:
            warps = config["warp_m"] * config["warp_n"]
            if warps * WARP > gpu.max_threads_per_block:
                return f"{warps * WARP} threads per block > {gpu.max_threads_per_block}"
            smem = self.shared_bytes(config)
            if smem > gpu.max_shared_memory_per_block:
                return f"shared memory {smem} bytes > {gpu.max_shared_memory_per_block}"
            # accumulators: 8 fp32 registers per thread per 16x16 fragment, so the knobs'
            # largest warp tile (4 x 4 fragments) holds 128 of the 255 registers a thread has
            bm = self._tile(config)[0]
            if bm > 2 * max(m, WMMA) and config["frag_m"] > 1:
                return f"M tile {bm} far larger than the {m} output pixels"
            return None

        return Space(
            self.name,
            self.version,
            (
                Knob("warp_m", (1, 2, 4), "warps per block along the output pixels"),
                Knob("warp_n", (1, 2, 4), "warps per block along the output channels"),
                Knob("frag_m", (1, 2, 4), "16x16 fragments per warp along the pixels"),
                Knob("frag_n", (1, 2, 4), "16x16 fragments per warp along the channels"),
                Knob("chunk_k", (1, 2, 4), "16-deep reduction steps per shared-memory stage"),
                Knob("vec", vec or (1,), "halves per vector load when copying to shared memory"),
            ),
            fits,
        )

    def _score(self, spec: ConvSpec, target: Target, config: Config) -> float:
        """Heuristic quality (higher is better): every SM busy, 4-8 warps, large block and
        warp tiles (operand reuse from shared memory and from fragments), little padding of
        the GEMM, 32-deep stages, wide copies."""
        bm, bn, bk = self._tile(config)
        m, n = spec.batch * spec.out_height * spec.out_width, spec.out_channels
        k = spec.in_channels * spec.kernel[0] * spec.kernel[1]
        blocks = -(-m // bm) * -(-n // bn)
        waste = (-(-m // bm) * bm * -(-n // bn) * bn * -(-k // bk) * bk) / (m * n * k) - 1
        warps = config["warp_m"] * config["warp_n"]
        sms = target.gpu_limits().sm_count
        penalty = max(0.0, math.log2(sms / blocks))             # fill the GPU
        penalty += 0.5 * abs(math.log2(warps) - 2.5)           # 4..8 warps
        penalty += max(0.0, math.log2(32 / (bm * bn / (bm + bn))))  # 64x64 tiles or larger
        fm, fn = config["frag_m"], config["frag_n"]
        penalty += max(0.0, math.log2((fm + fn) / (fm * fn)))  # >= 2x2 fragments per warp
        penalty += 2 * waste                                   # padded work is wasted work
        penalty += 0.25 * abs(config["chunk_k"] - 2)
        penalty += 0.25 * math.log2(8 / config["vec"])
        return -penalty

    def default(self, spec: ConvSpec, target: Target) -> Config:
        space = self.space(spec, target)
        return max(space, key=lambda c: self._score(spec, target, c))  # first best in grid order

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        bm, bn, bk = self._tile(config)
        m = spec.batch * spec.out_height * spec.out_width
        return {"tile_m": float(bm), "tile_n": float(bn), "tile_k": float(bk),
                "warps": float(config["warp_m"] * config["warp_n"]),
                "shared_kib": self.shared_bytes(config) / 1024,
                "blocks": float(-(-m // bm) * -(-spec.out_channels // bn))}

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config, *, intrinsics: bool = True) -> None:
        """The schedule; ``intrinsics=False`` leaves the 16x16x16 blocks as plain loops (the
        CPU emulation checks the index maps, padding and epilogue that way)."""
        intrin = wmma_intrinsics() if intrinsics else {}
        wm, wn, fm, fn, ck = (config[k] for k in ("warp_m", "warp_n", "frag_m", "frag_n", "chunk_k"))
        vec = config["vec"]
        warps = wm * wn
        oh, ow = spec.out_height, spec.out_width
        (_, s), c = spec.kernel, spec.in_channels
        conv = sch.get_sblock("conv")

        # -- the convolution as C[m, n] += A[m, k] * B[k, n] ---------------------------------
        def gemm(v: dict[str, Any]) -> dict[str, Any]:
            return {"m": (v["n"] * oh + v["oh"]) * ow + v["ow"], "n": v["oc"],
                    "k": (v["kh"] * s + v["kw"]) * c + v["ic"]}

        for access, rows_cols in ((("read", 0), "mk"), (("read", 1), "kn"), (("write", 0), "mn")):
            stage = sch.reindex(conv, access)  # a copy of the operand indexed by conv's iterators
            roles = _access_roles(sch, conv, *access)
            sch.transform_layout(stage, ("write", 0) if access[0] == "read" else ("read", 0),
                                 _index_map(roles, lambda v, rc=rows_cols: [gemm(v)[a] for a in rc]))
        sch.transform_block_layout(conv, _index_map(_BLOCK_ROLES, lambda v: [gemm(v)[a] for a in "mnk"]))
        # whole tiles: M, N, K padded up (zeros in, the extra outputs never stored)
        sch.pad_einsum(conv, [WMMA * wm * fm, WMMA * wn * fn, WMMA * ck])

        # -- tiles: 16x16x16 blocks of the loop nest become the WMMA calls --------------------
        i, j, k = sch.get_loops(conv)
        i, ii = sch.split(i, [None, WMMA])
        j, ji = sch.split(j, [None, WMMA])
        k, ki = sch.split(k, [None, WMMA])
        sch.reorder(i, j, k, ii, ji, ki)
        inner = conv
        outer = sch.blockize(ii)
        i0, i1, i2 = sch.split(i, [None, wm, fm])
        j0, j1, j2 = sch.split(j, [None, wn, fn])
        k0, k1 = sch.split(k, [None, ck])
        sch.reorder(i0, j0, i1, j1, k0, k1, i2, j2)
        sch.bind(i0, "blockIdx.x")
        sch.bind(j0, "blockIdx.y")
        ty = sch.fuse(i1, j1)
        sch.bind(ty, "threadIdx.y")

        # -- global -> shared: all warps copy a stage, vectorized along the contiguous K / N --
        def to_shared(index: int) -> Any:
            stage = sch.cache_read(outer, index, "shared.dyn")
            sch.compute_at(stage, k0, preserve_unit_loops=True)
            fused = sch.fuse(*sch.get_loops(stage)[-2:])
            _, t_y, t_x, t_v = sch.split(fused, [None, warps, WARP, vec])
            sch.bind(t_y, "threadIdx.y")
            sch.bind(t_x, "threadIdx.x")
            sch.vectorize(t_v)
            # rows 8 halves (16 bytes) longer than a multiple of 16: the 16 rows a
            # load_matrix_sync reads start in different banks
            sch.storage_align(stage, 0, axis=-2, factor=16, offset=8)
            return stage

        a_shared = to_shared(0)
        b_shared = to_shared(1)
        _inline_producers(sch, a_shared)  # im2col gather, padding: computed while copying
        _inline_producers(sch, b_shared)

        # -- shared -> fragments, fp32 accumulators -> shared -> epilogue -> global -----------
        a_frag = sch.cache_read(outer, 0, "wmma.matrix_a")
        b_frag = sch.cache_read(outer, 1, "wmma.matrix_b")
        sch.compute_at(a_frag, k1, preserve_unit_loops=True)
        sch.compute_at(b_frag, k1, preserve_unit_loops=True)
        c_shared = sch.cache_write(outer, 0, "shared.dyn")
        c_frag = sch.cache_write(outer, 0, "wmma.accumulator")
        # (the fp32 staging tile stays unpadded: its only writer is the tensorized fragment
        # store, and tensorize drops a storage_align annotation on that block)
        sch.reverse_compute_at(c_frag, ty, preserve_unit_loops=True)
        sch.reverse_compute_at(c_shared, ty, preserve_unit_loops=True)
        init = sch.decompose_reduction(outer, k0)

        for frag in (a_frag, b_frag, c_frag):
            y, x = sch.get_loops(frag)[-2:]
            y0, y1 = sch.split(y, [None, WMMA])
            x0, x1 = sch.split(x, [None, WMMA])
            sch.reorder(y0, x0, y1, x1)
        if intrinsics:
            sch.tensorize(sch.get_loops(a_frag)[-2], intrin["load_a"])
            sch.tensorize(sch.get_loops(b_frag)[-2], intrin["load_b"])
            sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], intrin["init"])
            sch.tensorize(sch.get_loops(c_frag)[-2], intrin["store"])
            sch.tensorize(sch.get_loops(inner)[-3], intrin["compute"])

        _inline_consumers(sch, c_shared)  # unpad, reindex, bias + ReLU + fp16 cast
        fused = sch.fuse(*sch.get_loops(c_shared)[-2:])
        # reads 4-byte accumulators: 4 lanes is the 16-byte vector limit
        _, t_x, t_v = sch.split(fused, [None, WARP, min(vec, 4)])
        sch.bind(t_x, "threadIdx.x")
        sch.vectorize(t_v)


register(TensorCoreCUDA())
