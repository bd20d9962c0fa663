"""Pooling beside the convolutions: max pooling and global average pooling, NHWC, on CPUs.

A CNN served by convgen still has its pooling layers, and left to torch inside an optimized
forward they run on one thread (:mod:`convgen.torch.threads`). Measured on the 2-vCPU
Zen 5 of this project, ResNet-50's 3x3/2 max pooling of its 112x112x64 stem output took
435 us in fp32 and 284 us in bf16 on torch's single thread, against OpenVINO's 71-102 us
for the same node: 2% of the whole model. Pooling is a stream over memory with a few
comparisons per element, so the kernel is one fixed schedule (``schedules/pool.py``), not a
knob space: rows of output pixels split across the pool's threads, channels in the target's
vectors.

- ``max``: ``out[n, oh, ow, c] = max over the window of x[n, oh*s - p + r, ow*s - p + q, c]``,
  taps outside the input skipped (torch's ``max_pool2d`` with ``dilation=1``,
  ``ceil_mode=False``); exact in any dtype, 8-bit included (max commutes with a monotone
  quantization);
- ``avg`` over the whole image (``adaptive_avg_pool2d(x, 1)``, a CNN's global pooling
  before its classifier): float32 sums, the mean cast to the input's dtype;
- ``nhwc``: the identity window (1x1, stride 1) from an NCHW input to an NHWC output: the
  layout change of a network's input on its way into its first convolution. A stream over
  memory as well: torch's ``contiguous(memory_format=torch.channels_last)`` of a 224x224 RGB
  image took 52 us on one Zen 5 thread (98-128 us inside MobileNet-v2's forward, where the
  input comes from further away); this kernel on the model's two, 16 us.

:class:`PoolSpec` is the workload, frozen and validated like :class:`convgen.ConvSpec`;
:func:`pool_kernel` compiles it (or finds it in the kernel cache) and returns the loaded
function ``f(x, out)`` on NHWC tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from .spec import SpecError
from .target import Target, get_target

KINDS = ("max", "avg", "nhwc")
DTYPES = {"max": ("float32", "bfloat16", "uint8", "int8"), "avg": ("float32", "bfloat16"),
          "nhwc": ("float32", "bfloat16", "uint8", "int8")}


@dataclass(frozen=True)
class PoolSpec:
    """One pooling workload, NHWC. ``kind="avg"`` is global: its window is the whole image
    (``kernel == (height, width)``, stride 1, no padding); ``kind="nhwc"`` is the identity
    (1x1 window, stride 1, no padding) read from an NCHW input."""

    kind: str
    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"kind: {self.kind!r}; pooling is one of {', '.join(KINDS)}")
        for name in ("batch", "channels", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{name}: expected a positive int, got {value!r}")
        for name in ("kernel", "stride", "padding"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)):
                raise SpecError(f"{name}: expected a pair of ints, got {value!r}")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise SpecError(f"kernel and stride must be >= 1 and padding >= 0, got {self.kernel}, {self.stride}, "
                            f"{self.padding}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            # torch's rule: a window must hold one real pixel
            raise SpecError(f"padding {self.padding} larger than half the window {self.kernel}")
        if self.dtype not in DTYPES[self.kind]:
            raise SpecError(f"dtype {self.dtype!r}: {self.kind} pooling takes {', '.join(DTYPES[self.kind])}")
        if self.kind == "avg" and (self.kernel != (self.height, self.width) or self.stride != (1, 1)
                                   or self.padding != (0, 0)):
            raise SpecError("avg pooling is global: kernel = (height, width), stride 1, no padding")
        if self.kind == "nhwc" and (self.kernel, self.stride, self.padding) != ((1, 1), (1, 1), (0, 0)):
            raise SpecError("nhwc (the layout change) is the identity: kernel 1x1, stride 1, no padding")
        if min(self.out_height, self.out_width) < 1:
            raise SpecError(f"window {self.kernel} larger than the padded input {self.height}x{self.width}")

    @classmethod
    def global_avg(cls, batch: int, channels: int, height: int, width: int, dtype: str = "float32") -> "PoolSpec":
        """``adaptive_avg_pool2d(x, 1)`` of an ``N x H x W x C`` input."""
        return cls("avg", batch, channels, height, width, (height, width), dtype=dtype)

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1

    @classmethod
    def to_nhwc(cls, batch: int, channels: int, height: int, width: int, dtype: str = "float32") -> "PoolSpec":
        """The layout change of an ``N x C x H x W`` input to ``N x H x W x C``."""
        return cls("nhwc", batch, channels, height, width, dtype=dtype)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NHWC (NCHW for ``kind="nhwc"``)."""
        if self.kind == "nhwc":
            return (self.batch, self.channels, self.height, self.width)
        return (self.batch, self.height, self.width, self.channels)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_height, self.out_width, self.channels)

    @property
    def key(self) -> str:
        """A stable, readable name of the workload."""
        kh, kw = self.kernel
        return (f"pool-{self.kind}-n{self.batch}-c{self.channels}-{self.height}x{self.width}-k{kh}x{kw}"
                f"-s{self.stride[0]}x{self.stride[1]}-p{self.padding[0]}x{self.padding[1]}-{self.dtype}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute(spec: PoolSpec) -> tuple[Any, Any]:
    """The TE definition: ``(x, out)`` placeholders and result, NHWC (``x`` NCHW for ``nhwc``)."""
    from tvm import te, tirx

    x = te.placeholder(spec.input_shape, spec.dtype, name="x")
    if spec.kind == "nhwc":
        return x, te.compute(spec.output_shape, lambda n, h, w, c: x[n, c, h, w], name="out")
    n_, h_, w_, c_ = spec.input_shape
    kh, kw = spec.kernel
    if spec.kind == "avg":
        r = te.reduce_axis((0, kh), name="r")
        q = te.reduce_axis((0, kw), name="q")
        total = te.compute((n_, 1, 1, c_), lambda n, i, j, c: te.sum(x[n, r, q, c].astype("float32"), axis=[r, q]),
                           name="sum")
        inv = tirx.const(1.0 / (kh * kw), "float32")
        out = te.compute(spec.output_shape, lambda *i: (total(*i) * inv).astype(spec.dtype), name="out")
        return x, out
    (sh, sw), (ph, pw) = spec.stride, spec.padding
    lowest = tirx.min_value(spec.dtype)

    def window(n, oh, ow, c):
        # the taps unrolled into one expression: no reduction to schedule, and a tap outside
        # the input (rows/columns only: the same for every channel of a vector) is the
        # dtype's lowest value, which never wins (every window holds a real pixel)
        best = None
        for r in range(kh):
            for q in range(kw):
                h, w = oh * sh - ph + r, ow * sw - pw + q
                value = x[n, tirx.max(tirx.min(h, h_ - 1), 0), tirx.max(tirx.min(w, w_ - 1), 0), c]
                if ph or pw:
                    value = tirx.if_then_else(tirx.all(h >= 0, h < h_, w >= 0, w < w_), value, lowest)
                best = value if best is None else tirx.max(best, value)
        return best

    return x, te.compute(spec.output_shape, window, name="out")


def pool_key(spec: PoolSpec, target: Target) -> str:
    """The cache name of ``spec``'s library for ``target`` (spec, target, TVM, convgen's source)."""
    import tvm

    from .cache import source_digest

    blob = json.dumps([spec.key, target.to_dict(), tvm.__version__, source_digest()], sort_keys=True, default=str)
    return "pool-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_pool(spec: PoolSpec, target: "str | Target" = "host") -> Any:
    """Compile ``spec`` for ``target``; the ``tvm.runtime.Executable`` (entry point ``main(x, out)``)."""
    import tvm

    from convgen.schedules.pool import schedule_pool

    from .builder import tvm_target

    target = get_target(target)
    if not target.is_cpu:
        raise SpecError(f"pooling kernels are built for CPU targets, not {target.name}")
    x, out = compute(spec)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te_func(x, out)}))
    schedule_pool(sch, spec, target)
    with tvm_target(target):
        return tvm.compile(sch.mod, target=tvm_target(target))


def te_func(x: Any, out: Any) -> Any:
    """``main(x, out)`` as a PrimFunc (no alignment asked of the caller's tensors)."""
    from tvm import te

    from .builder import relax_alignment

    return relax_alignment(te.create_prim_func([x, out]).with_attr("global_symbol", "main"))


def pool_kernel(spec: PoolSpec, target: "str | Target" = "host", folder: str | None = None) -> Any:
    """``spec``'s compiled function ``f(x, out)`` (tensors of :attr:`PoolSpec.input_shape`
    and :attr:`PoolSpec.output_shape`, any DLPack producer), from the kernel cache or built
    into it now (written atomically, as convolutions are)."""
    import tvm

    from .builder import export_library
    from .cache import default_folder, usable_folder, write_atomically

    target = get_target(target)
    folder = usable_folder(folder or default_folder())
    path = os.path.join(folder, pool_key(spec, target) + ".so")
    if not os.path.exists(path):
        executable = build_pool(spec, target)
        write_atomically(path, lambda tmp: export_library(executable, target, tmp))
    try:
        return tvm.runtime.load_module(path)["main"]
    except Exception:  # a damaged cache file: build it again, once
        os.unlink(path)
        return pool_kernel(spec, target, folder)
