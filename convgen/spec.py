"""ConvSpec: one frozen, validated description of a 2D convolution workload.

Pure Python (no TVM), so specs can be created, compared, hashed and stored anywhere,
including on a device that only has the TVM runtime.

Conventions
-----------
- NCHW data goes with OIHW weights ``(out_channels, in_channels/groups, kh, kw)``;
  NHWC data goes with HWIO weights ``(kh, kw, in_channels/groups, out_channels)``.
- The CNN convention (cross-correlation) is the default; ``flip=True`` flips the filter
  in both spatial axes first, which is convolution in the signal-processing sense.
- ``padding`` is stored resolved as ``(top, left, bottom, right)``; ``"same"`` follows
  TensorFlow/PyTorch: output = ceil(input / stride), the odd pixel of padding goes to the
  bottom/right; ``"valid"`` is no padding.
- The epilogue, in order: ``+ bias`` (per output channel), ``+ residual`` (a tensor of the
  output's shape, e.g. ResNet's skip connection), then the activation.
- ``data_zero_point`` (8-bit data only, default 0): the value the padding holds. Quantized
  data ``q = x / s + z`` represents a real 0 by ``z``, so a padded layer of such data pads
  with ``z``; the sums stay the plain sums of ``q * w`` (the ``-z * sum(w)`` term is the
  caller's, folded into the bias by ``convgen.torch``).
- ``residual_dtype`` (a :attr:`ConvSpec.scaled` spec with a residual only; default None: a
  float32 residual in the output's units): ``"uint8"`` (zero point 0, as a ReLU's output
  quantized for the next layer is) or ``"float32"``, with a per-channel ``residual_scale``
  input that brings it to the output's units: ``+ residual[.., k] * residual_scale[k]``
  (u8: its scale over the output's; float32 in real units: one over the output's scale).
  ResNet's int8 blocks pass their u8 outputs on as the next block's input and skip connection
  alike, and write u8 themselves whatever their skip connection's dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import SpecError

LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8")
#: per data dtype: the weight dtypes it pairs with (the first is the default), the output
#: dtypes a kernel may return (the first is the default) and the accumulator's dtype
DTYPE_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # float32 (and, below, scaled 8-bit) results may be rounded and clamped to 8 bits in the
    # epilogue: the quantization of the input of an int8 layer next (a depthwise 1x1 of
    # weights 1/scale and bias zero point is convgen.torch's quantizer)
    "float32": (("float32",), ("float32", "uint8", "int8", "bfloat16"), "float32"),
    "float16": (("float16",), ("float16",), "float16"),
    # bf16 data and weights, fp32 products summed in fp32 (AVX512_BF16's vdpbf16ps, AMX's
    # tdpbf16ps); the output rounded to bf16 for the next layer, or kept in fp32
    "bfloat16": (("bfloat16",), ("bfloat16", "float32"), "float32"),
    # 8-bit data, 8-bit signed weights, exact int32 sums; the output the sums themselves, or
    # scaled per output channel (a ``scale`` input): dequantized to float32, or requantized
    # to 8 bits (see ConvSpec.scaled)
    "int8": (("int8",), ("int32", "float32", "uint8", "int8"), "int32"),
    "uint8": (("int8",), ("int32", "float32", "uint8", "int8"), "int32"),
}
#: the epilogue's activations: ReLU, MobileNet's ReLU6, and GELU (erf form, torch's
#: ``approximate="none"``: ConvNeXt's and ViT-style MLPs' expanding 1x1 / linear layer)
ACTIVATIONS = (None, "relu", "relu6", "gelu")
#: bytes per element of every dtype a kernel reads or writes (the one table: the runtime's
#: overlap and alignment checks and the spec's traffic estimates use it)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int8": 1, "uint8": 1}
# TVM indexes buffers with int32: a tensor of more elements would overflow its index arithmetic.
MAX_ELEMENTS = 2**31 - 1



def _fail(field: str, rule: str, got: Any) -> SpecError:
    return SpecError(f"ConvSpec.{field}: {rule} (got {got!r})")


def _is_int(v: Any) -> bool:
    # numpy integers are fine; bools are ints in Python but never a size.
    return not isinstance(v, bool) and hasattr(v, "__index__")


def _pair(field: str, value: Any, minimum: int) -> tuple[int, int]:
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(_is_int, value)):
        raise _fail(field, "must be an int or a pair of ints (h, w)", value)
    pair = (int(value[0]), int(value[1]))
    if min(pair) < minimum:
        raise _fail(field, f"every entry must be >= {minimum}", value)
    return pair


def _same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True, kw_only=True)
class ConvSpec:
    """A 2D convolution layer: data ``N x C x H x W``, ``K`` filters of ``C/groups x R x S``.

    ``kernel``, ``stride`` and ``dilation`` take an int or ``(h, w)``; ``padding`` takes an
    int, ``(h, w)``, ``(top, left, bottom, right)``, ``"same"`` or ``"valid"``. After
    construction they are normalised tuples, so equal workloads compare and hash equal.
    A rule broken raises :class:`SpecError` (a ``ValueError``) naming the field.
    """

    batch: int = 1
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: Any = 3
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    layout: str = "NCHW"
    dtype: str = "float32"
    weight_dtype: str | None = None
    output_dtype: str | None = None
    bias: bool = False
    residual: bool = False
    activation: str | None = None
    flip: bool = False
    data_zero_point: int = 0
    residual_dtype: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name in ("batch", "in_channels", "out_channels", "height", "width", "groups"):
            value = getattr(self, name)
            if not _is_int(value):
                raise _fail(name, "must be an int", value)
            if value < 1:
                raise _fail(name, "must be >= 1", value)
            set_(name, int(value))
        set_("kernel", _pair("kernel", self.kernel, 1))
        set_("stride", _pair("stride", self.stride, 1))
        set_("dilation", _pair("dilation", self.dilation, 1))
        set_("padding", self._resolve_padding(self.padding))
        for name in ("bias", "residual", "flip"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, "must be True or False", getattr(self, name))
        if self.layout not in LAYOUTS:
            raise _fail("layout", f"must be one of {LAYOUTS}", self.layout)
        if self.dtype not in DTYPES:
            raise _fail("dtype", f"must be one of {DTYPES}", self.dtype)
        weights, outputs, _ = DTYPE_RULES[self.dtype]
        # a dtype the rules give by default is stored as None: one spec, one key, however written
        if self.weight_dtype is not None and self.weight_dtype not in weights:
            raise _fail("weight_dtype", f"{self.dtype} data takes {' or '.join(weights)} weights", self.weight_dtype)
        if self.output_dtype is not None and self.output_dtype not in outputs:
            raise _fail("output_dtype", f"{self.dtype} data gives {' or '.join(outputs)} outputs", self.output_dtype)
        if self.weight_dtype == weights[0]:
            set_("weight_dtype", None)
        if self.output_dtype == outputs[0]:
            set_("output_dtype", None)
        if self.activation not in ACTIVATIONS:
            raise _fail("activation", f"must be one of {ACTIVATIONS}", self.activation)
        if self.activation == "gelu" and self.acc_dtype == "int32" and self.out_dtype == "int32":
            raise _fail("activation", "gelu needs a float epilogue (8-bit data: a scaled, float32 or 8-bit output)",
                        self.activation)
        if not _is_int(self.data_zero_point):
            raise _fail("data_zero_point", "must be an int", self.data_zero_point)
        set_("data_zero_point", int(self.data_zero_point))
        if self.data_zero_point:
            span = {"uint8": (0, 255), "int8": (-128, 127)}.get(self.dtype)
            if span is None:
                raise _fail("data_zero_point", f"is for 8-bit data, not {self.dtype}", self.data_zero_point)
            if not span[0] <= self.data_zero_point <= span[1]:
                raise _fail("data_zero_point", f"must be a {self.dtype} value ({span[0]}..{span[1]})",
                            self.data_zero_point)
        if self.residual_dtype is not None:
            if self.residual_dtype not in ("uint8", "float32"):
                raise _fail("residual_dtype", "must be None (no residual scale), 'uint8' or 'float32'",
                            self.residual_dtype)
            if not (self.residual and self.scaled):
                raise _fail("residual_dtype", "a scaled residual is for a scaled 8-bit spec with a residual "
                            "(8-bit data, a float32 or 8-bit output, residual=True)", self.residual_dtype)
        if self.in_channels % self.groups:
            raise _fail("groups", f"must divide in_channels={self.in_channels}", self.groups)
        if self.out_channels % self.groups:
            raise _fail("groups", f"must divide out_channels={self.out_channels}", self.groups)
        for axis, size, pad, k, d in (
            ("height", self.height, self.padding[0] + self.padding[2], self.kernel[0], self.dilation[0]),
            ("width", self.width, self.padding[1] + self.padding[3], self.kernel[1], self.dilation[1]),
        ):
            if (k - 1) * d + 1 > size + pad:
                raise _fail(
                    "kernel",
                    f"the dilated kernel ({(k - 1) * d + 1}) is larger than the padded input "
                    f"{axis} ({size} + {pad})",
                    self.kernel,
                )
        pt, pl, pb, pr = self.padding
        padded = self.batch * self.in_channels * (self.height + pt + pb) * (self.width + pl + pr)
        for what, n in (("the padded input", padded), ("the weights", math.prod(self.weight_shape)),
                        ("the output", math.prod(self.output_shape))):
            if n > MAX_ELEMENTS:
                raise SpecError(f"ConvSpec: {what} would hold {n} elements, more than the {MAX_ELEMENTS} "
                                "(2**31 - 1) that TVM's int32 indexing can address; split the workload")

    def _resolve_padding(self, padding: Any) -> tuple[int, int, int, int]:
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0, 0, 0)
            if padding == "same":
                top, bottom = _same_padding(self.height, self.kernel[0], self.stride[0], self.dilation[0])
                left, right = _same_padding(self.width, self.kernel[1], self.stride[1], self.dilation[1])
                return (top, left, bottom, right)
            raise _fail("padding", "a string padding must be 'same' or 'valid'", padding)
        if _is_int(padding):
            padding = (padding,) * 4
        if isinstance(padding, (tuple, list)) and len(padding) == 2:
            padding = (padding[0], padding[1], padding[0], padding[1])
        if not isinstance(padding, (tuple, list)) or len(padding) != 4 or not all(map(_is_int, padding)):
            raise _fail("padding", "must be an int, (h, w), (top, left, bottom, right), 'same' or 'valid'", padding)
        if min(padding) < 0:
            raise _fail("padding", "must be >= 0", padding)
        return tuple(int(p) for p in padding)

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def out_height(self) -> int:
        """Output rows."""
        pad = self.padding[0] + self.padding[2]
        return (self.height + pad - (self.kernel[0] - 1) * self.dilation[0] - 1) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        """Output columns."""
        pad = self.padding[1] + self.padding[3]
        return (self.width + pad - (self.kernel[1] - 1) * self.dilation[1] - 1) // self.stride[1] + 1

    @property
    def in_per_group(self) -> int:
        """Input channels each filter sees (``in_channels / groups``)."""
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        """Filters per group (``out_channels / groups``)."""
        return self.out_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (MobileNet-style depthwise)."""
        return self.groups > 1 and self.in_per_group == 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the data tensor in ``layout``."""
        n, c, h, w = self.batch, self.in_channels, self.height, self.width
        return (n, c, h, w) if self.layout == "NCHW" else (n, h, w, c)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """OIHW for NCHW, HWIO for NHWC."""
        k, c, (r, s) = self.out_channels, self.in_per_group, self.kernel
        return (k, c, r, s) if self.layout == "NCHW" else (r, s, c, k)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        """``(out_channels,)``."""
        return (self.out_channels,)

    @property
    def residual_shape(self) -> tuple[int, ...]:
        """The residual added before the activation: the output's shape, in ``layout``."""
        return self.output_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the result in ``layout``."""
        n, k, h, w = self.batch, self.out_channels, self.out_height, self.out_width
        return (n, k, h, w) if self.layout == "NCHW" else (n, h, w, k)

    @property
    def filter_dtype(self) -> str:
        """The weights' dtype (``weight_dtype``, or the default for ``dtype``)."""
        return self.weight_dtype or DTYPE_RULES[self.dtype][0][0]

    @property
    def out_dtype(self) -> str:
        """The output's dtype (``output_dtype``, or the default for ``dtype``: int32 for 8-bit
        data, else ``dtype``); bias and residual have it too, but where :attr:`scaled`."""
        return self.output_dtype or DTYPE_RULES[self.dtype][1][0]

    @property
    def scaled(self) -> bool:
        """Does the kernel scale its integer sums per output channel? For 8-bit data with a
        float32 or 8-bit output it takes a ``scale`` input (float32, one per output channel)
        and computes, in float32::

            y = act(sum * scale[k] + bias[k] + residual)
            out = y                                     (float32: dequantized)
            out = clamp(round_half_even(y), lo, hi)     (uint8 / int8: requantized)

        The caller folds the quantization parameters in: ``scale = s_x * s_w[k] / s_out``,
        bias and residual in the output's units, a data zero point's term ``-z_x * sum(w[k])
        * scale[k]`` into the bias. An 8-bit output has zero point 0 (int8: symmetric; uint8:
        from 0, as a ReLU's output is)."""
        return self.acc_dtype == "int32" and self.out_dtype != "int32"

    @property
    def requantized(self) -> bool:
        """Is the output 8-bit? Then it is the epilogue's float32 result (a :attr:`scaled`
        spec's, or float32 data's: the quantizer) rounded half to even and clamped."""
        return self.out_dtype in ("uint8", "int8")

    @property
    def epilogue_dtype(self) -> str:
        """The dtype of bias and residual: the output's, but float32 where the epilogue's
        arithmetic is float32 and its result goes to 8 bits (:attr:`scaled` sums, a quantized
        float32 output)."""
        return "float32" if self.scaled or self.requantized else self.out_dtype

    def extra_inputs(self) -> list[tuple[str, tuple[int, ...], str]]:
        """``(name, shape, dtype)`` of the inputs after data and weight, in argument order:
        ``scale`` (a :attr:`scaled` spec), ``bias``, ``residual_scale`` (a scaled residual's:
        :attr:`residual_dtype`), ``residual``, each where the spec has it."""
        extras = [("scale", self.bias_shape, "float32")] if self.scaled else []
        if self.bias:
            extras.append(("bias", self.bias_shape, self.epilogue_dtype))
        if self.residual_dtype:
            extras.append(("residual_scale", self.bias_shape, "float32"))
        if self.residual:
            extras.append(("residual", self.residual_shape, self.residual_dtype or self.epilogue_dtype))
        return extras

    @property
    def acc_dtype(self) -> str:
        """The dtype sums are kept in: float32 for float32 and bfloat16 data, int32 for 8-bit."""
        return DTYPE_RULES[self.dtype][2]

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 (zeros of the padding included, as every library counts)."""
        return 2 * self.batch * self.out_channels * self.out_height * self.out_width * (
            self.in_per_group * self.kernel[0] * self.kernel[1]
        )

    @property
    def key(self) -> str:
        """A stable, readable identifier: equal workloads have equal keys."""
        kh, kw = self.kernel
        parts = [
            f"conv2d_{self.layout.lower()}_{self.dtype}",
            f"n{self.batch}_c{self.in_channels}_h{self.height}_w{self.width}",
            f"k{self.out_channels}_r{kh}x{kw}",
            "s{}x{}".format(*self.stride),
            "p{}_{}_{}_{}".format(*self.padding),
            "d{}x{}".format(*self.dilation),
            f"g{self.groups}",
        ]
        if self.weight_dtype:  # only where they differ from dtype's defaults: fp32 keys never change
            parts.append(f"w{self.weight_dtype}")
        if self.output_dtype:
            parts.append(f"o{self.output_dtype}")
        if self.data_zero_point:
            parts.append(f"z{self.data_zero_point}")
        flags = (("bias", self.bias), ("residual", self.residual), (self.activation, self.activation), ("flip", self.flip))
        parts += [flag for flag, on in flags if on]
        if self.residual_dtype:
            parts.append(f"r{self.residual_dtype}")
        return "_".join(parts)

    @property
    def digest(self) -> str:
        """Short hash of :attr:`key` (file names, cache keys)."""
        return hashlib.sha1(self.key.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line a human reads: ``64->64 56x56 k3x3 s1 p1 NCHW float32``."""
        kh, kw = self.kernel
        s = f"{self.in_channels}->{self.out_channels} {self.height}x{self.width} k{kh}x{kw}"
        s += " s{}".format(self.stride[0] if self.stride[0] == self.stride[1] else "{}x{}".format(*self.stride))
        pads = set(self.padding)
        s += f" p{self.padding[0]}" if len(pads) == 1 else " p{},{},{},{}".format(*self.padding)
        if self.dilation != (1, 1):
            s += " d{}x{}".format(*self.dilation)
        if self.groups > 1:
            s += " dw" if self.is_depthwise and self.out_per_group == 1 else f" g{self.groups}"
        if self.batch > 1:
            s += f" n{self.batch}"
        s += f" {self.layout} {self.dtype}"
        if self.output_dtype:
            s += f"->{self.output_dtype}"
        if self.data_zero_point:
            s += f" z{self.data_zero_point}"
        res = f"res({self.residual_dtype})" if self.residual_dtype else "res"
        flags = (("bias", self.bias), (res, self.residual), (self.activation, self.activation), ("flip", self.flip))
        s += "".join(f" +{f}" for f, on in flags if on)
        return s

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``ConvSpec.from_dict(s.to_dict()) == s``."""
        d = dataclasses.asdict(self)
        for name in ("kernel", "stride", "padding", "dilation"):
            d[name] = list(d[name])
        for name in ("weight_dtype", "output_dtype", "residual_dtype"):  # the defaults are left out (older
            if d[name] is None:                                          # readers and records stay as they were)
                del d[name]
        if not d["data_zero_point"]:
            del d["data_zero_point"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConvSpec":
        """Build from a dict (e.g. a JSON/TOML workload entry); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise SpecError(f"ConvSpec: unknown field(s) {unknown}; fields are {sorted(fields)}")
        d = dict(d)
        for name in ("kernel", "stride", "padding", "dilation"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "ConvSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def stand_ins(self) -> list["ConvSpec"]:
        """Workloads whose tuned configs serve this one when it has no records of its own,
        best first: the same convolution with another output dtype of its data (an int8
        layer that requantizes for the next one is tuned as the float32-output layer
        ``conv_layers(precision="int8")`` lists; a float layer that rounds its output to
        bf16 or 8 bits as the one that keeps its own dtype), without its epilogue (bias, residual and
        ReLU add memory traffic, not another loop nest), then the same at batch 1 (tuned
        layers are batch 1; a larger batch only adds parallel work), then both."""
        if self.residual_dtype:  # the same loop nest with a float32 residual: then as that one
            base = self.replace(residual_dtype=None)
            return [base] + [s for s in base.stand_ins() if s != self]
        bare = dict(bias=False, residual=False, activation=None)
        out: list[ConvSpec] = []
        outputs = [{"output_dtype": o} for o in DTYPE_RULES[self.dtype][1]
                   if o != self.out_dtype and o != "int32" and (self.acc_dtype == "int32" or o == self.dtype)]
        zero = [{"data_zero_point": 0}] if self.data_zero_point else []  # the same loop nest, padded with 0
        for changes in (*zero, *outputs, bare, {"batch": 1}, dict(bare, batch=1)):
            s = self.replace(**changes)
            if s != self and s not in out:
                out.append(s)
        return out

    def live_taps(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((first, last) row, (first, last) column)`` of the filter taps that read the input
        for at least one output pixel, within what can be cut off: a tap whose every read
        falls in the zero padding adds nothing (DeepLab's 3x3 at dilation 36 on a 28x28 map
        is a 1x1 convolution: its outer taps read only padding). Only taps whose removal
        leaves the padding non-negative are cut, so :meth:`without_dead_taps` stays exact."""

        def axis(size: int, out: int, k: int, s: int, d: int, before: int, after: int) -> tuple[int, int]:
            def live(t: int) -> bool:  # rows read by tap t: t*d - before + [0, out) * s
                first = t * d - before
                return first + (out - 1) * s >= 0 and first < size

            lo, hi = 0, k - 1
            while lo < hi and not live(lo) and (lo + 1) * d <= before:
                lo += 1
            while hi > lo and not live(hi) and (k - hi) * d <= after:
                hi -= 1
            return lo, hi

        rows = axis(self.height, self.out_height, self.kernel[0], self.stride[0], self.dilation[0],
                    self.padding[0], self.padding[2])
        cols = axis(self.width, self.out_width, self.kernel[1], self.stride[1], self.dilation[1],
                    self.padding[1], self.padding[3])
        return rows, cols

    def without_dead_taps(self) -> "ConvSpec":
        """The same convolution with the taps :meth:`live_taps` finds dead cut off the filter
        (and their reach off the padding): same output, less work. ``self`` when none are;
        the weights of the result are ``w[:, :, r0:r1 + 1, s0:s1 + 1]`` (OIHW)."""
        (r0, r1), (s0, s1) = self.live_taps()
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        if (r0, r1, s0, s1) == (0, kh - 1, 0, kw - 1) or self.data_zero_point:
            return self  # (padding that holds a zero point adds to the sums: no tap is dead)
        pt, pl, pb, pr = self.padding
        padding = (pt - r0 * dh, pl - s0 * dw, pb - (kh - 1 - r1) * dh, pr - (kw - 1 - s1) * dw)
        trimmed = self.replace(kernel=(r1 - r0 + 1, s1 - s0 + 1), padding=padding,
                               dilation=(dh if r1 > r0 else 1, dw if s1 > s0 else 1))
        assert (trimmed.out_height, trimmed.out_width) == (self.out_height, self.out_width)
        return trimmed

    def arithmetic_intensity(self) -> float:
        """FLOPs per byte of compulsory traffic (input + weights + output once)."""
        n_bytes = (DTYPE_BYTES[self.dtype] * math.prod(self.input_shape)
                   + DTYPE_BYTES[self.filter_dtype] * math.prod(self.weight_shape))
        n_bytes += DTYPE_BYTES[self.out_dtype] * math.prod(self.output_shape) * (2 if self.residual else 1)
        return self.flops / n_bytes
