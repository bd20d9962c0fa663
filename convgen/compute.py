"""The one definition of the convolution, as a TVM tensor expression.

Every template schedules the PrimFunc made here; none of them says *what* is computed.
Stages (block names are part of the contract with the templates):

``data_pad``    zero padding of the data (absent when there is nothing to pad)
``weight_pad``  the filters padded to whole channel blocks (only when ``channel_block`` pads)
``conv``        the reduction over input channels of a group and the kernel window
``out``         the epilogue: ``+ bias``, ``+ residual``, activation (a copy when there are
                none), so the reduction's result is an intermediate buffer a template may lay
                out as it likes

Loop (block iterator) names: output ``n, oc, oh, ow`` in the spec's layout order,
reduction ``ic, kh, kw``.

A template whose vector blocks of output channels do not divide the channel count asks for
``channel_block``: ``conv`` then computes ``K`` rounded up to a multiple of it (for depthwise,
input channels too), the extra lanes compute channels nobody reads, and ``out`` reads only the real
channels. The padding lives in the packed weights and the tail of the last block, never in
the caller's tensors; padded depthwise channels read zeros.

A template whose instruction sums a fixed number of input channels at once (``vpdpbusd``: 4)
asks for ``input_block``: the reduction then runs over ``C`` rounded up to it, ``data_pad``
adds the missing channels and ``weight_pad`` gives them zero filters, so they add nothing
(an RGB stem's 3 channels as one 4-channel step).

A template whose tile takes a fixed number of output rows (AMX's tiles: one per row) asks for
``row_block``: ``conv`` then computes the output height rounded up to a multiple of it,
``data_pad`` adds the input rows the extra output rows read (with the padding's value), and
``out`` reads only the real rows: a 7-row map in blocks of 2 rows computes 8.
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx

from .spec import ConvSpec


def padded_channels(spec: ConvSpec, channel_block: int) -> int:
    """Output channels of the ``conv`` stage for ``channel_block`` (``K`` rounded up to it).

    Padding serves groups == 1 (pad the filters) and depthwise with multiplier 1 (pad the
    channels, input and output alike); a grouped convolution is never padded.
    """
    k = spec.out_channels
    if channel_block <= 1 or k % channel_block == 0:
        return k
    if spec.groups != 1 and not (spec.is_depthwise and spec.out_per_group == 1):
        raise ValueError(f"channel padding serves groups == 1 or depthwise, not {spec.describe()}")
    return -(-k // channel_block) * channel_block


def padded_inputs(spec: ConvSpec, input_block: int) -> int:
    """Input channels of the ``conv`` stage's reduction for ``input_block`` (``C`` rounded up
    to it); only a convolution with groups == 1 is padded."""
    c = spec.in_channels
    if input_block <= 1 or c % input_block == 0:
        return c
    if spec.groups != 1:
        raise ValueError(f"input channel padding serves groups == 1, not {spec.describe()}")
    return -(-c // input_block) * input_block


def padded_rows(spec: ConvSpec, row_block: int) -> int:
    """Output rows of the ``conv`` stage for ``row_block`` (the height rounded up to it)."""
    return -(-spec.out_height // max(row_block, 1)) * max(row_block, 1)


def pad_data(spec: ConvSpec, data: te.Tensor, padding: tuple[int, int, int, int] | None = None,
             channels: int | None = None) -> te.Tensor:
    """``data`` zero-padded by ``padding`` (top, left, bottom, right; default the spec's) and
    to ``channels`` channels (default: none added), in the spec's layout; ``data`` itself
    when nothing is padded."""
    nchw = spec.layout == "NCHW"
    pt, pl, pb, pr = spec.padding if padding is None else padding
    c_in = spec.in_channels
    channels = c_in if channels is None else channels
    if not any((pt, pl, pb, pr)) and channels == c_in:
        return data
    hp, wp = spec.height + pt + pb, spec.width + pl + pr

    def pad(*idx):
        n, c, h, w = (idx[0], idx[1], idx[2], idx[3]) if nchw else (idx[0], idx[3], idx[1], idx[2])
        inside = [h >= pt, h < pt + spec.height, w >= pl, w < pl + spec.width]
        if channels != c_in:
            inside.append(c < c_in)
        value = data[n, c, h - pt, w - pl] if nchw else data[n, h - pt, w - pl, c]
        # what the padding holds: 0, or the zero point of quantized data (its real 0)
        return tirx.if_then_else(tirx.all(*inside), value, tirx.const(spec.data_zero_point, spec.dtype))

    shape = (spec.batch, channels, hp, wp) if nchw else (spec.batch, hp, wp, channels)
    return te.compute(shape, pad, name="data_pad")


#: 1.5 * 2**23: float32 sums with it are spaced 1 apart, and its low mantissa bits are zero
MAGIC_ROUND = 12582912.0


def epilogue(spec: ConvSpec, conv: te.Tensor, acc_dtype: str | None = None) -> tuple[list[te.Tensor], te.Tensor]:
    """The ``out`` stage over ``conv`` (the reduction's result in the output's layout; it may
    hold padded channels, of which only the real ones are read): ``* scale`` (a
    :attr:`ConvSpec.scaled` spec, the sums then taken to float32), ``+ bias``,
    ``+ residual``, activation, then the cast to the spec's output dtype (rounded half to
    even and clamped for an 8-bit output of float arithmetic). Returns the extra inputs it reads (``spec.extra_inputs()``, in
    argument order) and ``out``."""
    nchw = spec.layout == "NCHW"
    acc = acc_dtype or spec.acc_dtype
    inputs = {name: te.placeholder(shape, dtype, name=name) for name, shape, dtype in spec.extra_inputs()}
    scale, bias, residual = inputs.get("scale"), inputs.get("bias"), inputs.get("residual")
    residual_scale = inputs.get("residual_scale")
    math = "float32" if scale is not None else acc  # the epilogue's arithmetic

    def cast(x):
        return x if x.dtype == math else x.astype(math)

    def body(*idx):
        channel = idx[1] if nchw else idx[3]
        y = cast(conv[idx])
        if scale is not None:
            y = y * scale[channel]
        if bias is not None:
            y = y + cast(bias[channel])
        if residual is not None:
            r = cast(residual[idx])
            y = y + (r * residual_scale[channel] if residual_scale is not None else r)
        if spec.activation in ("relu", "relu6"):
            y = tirx.max(y, tirx.const(0, math))
        if spec.activation == "relu6":  # MobileNet's clipped ReLU
            y = tirx.min(y, tirx.const(6, math))
        if spec.activation == "gelu":
            y = gelu(y, math)
        if spec.requantized:  # clamp, round half to even
            lo, hi = {"uint8": (0, 255), "int8": (-128, 127)}[spec.out_dtype]
            y = tirx.min(tirx.max(y, tirx.const(lo, math)), tirx.const(hi, math))
            # y + 1.5 * 2**23 rounds y half to even (floats there are 1 apart) and holds it in
            # its low mantissa bits, two's complement: its low byte is the 8-bit result. One
            # add where round-then-convert costs a 2-uop vrndscaleps and a vcvttps2dq (x86)
            y = tirx.reinterpret("int32", y + tirx.const(MAGIC_ROUND, math))
            return y.astype(spec.out_dtype)
        return y if math == spec.out_dtype else y.astype(spec.out_dtype)

    return list(inputs.values()), te.compute(spec.output_shape, body, name="out")


#: erf(x) = x P(x^2) / Q(x^2) on x clamped to [-4, 4] (where erf is 1 to float32's precision):
#: the rational approximation of Eigen's and XLA's float erf, max |error| 4.2e-7 against
#: ``math.erf`` on [-10, 10] (measured in float32; the GELU kernels of tests/test_build.py
#: are checked against the reference's ``math.erf``). Plain multiply-adds and one division, so it
#: vectorizes in any template's epilogue; TVM lowers ``tirx.erf`` on CPUs to a scalar libm call.
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
          -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
          -1.45660718464996e-05)


def gelu(y: Any, dt: str) -> Any:
    """``0.5 y (1 + erf(y / sqrt(2)))`` as a TE expression of float dtype ``dt``."""

    def c(v: float) -> Any:
        return tirx.const(v, dt)

    x = tirx.min(tirx.max(y * c(0.7071067811865476), c(-4.0)), c(4.0))
    x2 = x * x
    p = c(_ERF_P[-1])
    for coef in reversed(_ERF_P[:-1]):
        p = p * x2 + c(coef)
    q = c(_ERF_Q[-1])
    for coef in reversed(_ERF_Q[:-1]):
        q = q * x2 + c(coef)
    return c(0.5) * y * (c(1.0) + x * p / q)


def conv2d_te(spec: ConvSpec, acc_dtype: str | None = None, *, channel_block: int = 1, input_block: int = 1,
              row_block: int = 1, prepadded: bool = False) -> tuple[list[te.Tensor], te.Tensor]:
    """The TE tensors: ``([data, weight, (bias), (residual)], out)``.

    ``acc_dtype`` (default ``spec.acc_dtype``) is the type of the ``conv`` stage: fp16 on
    tensor cores accumulates in float32, and ``out`` casts back after the epilogue. The
    function's arguments and result keep the spec's dtypes either way. ``channel_block``:
    see :func:`padded_channels`; ``input_block``: :func:`padded_inputs`; ``prepadded``: the
    weight argument holds the padded filters already (the form whose packing becomes
    ``main_prepacked``); ``row_block``: :func:`padded_rows`.
    """
    nchw = spec.layout == "NCHW"
    kh_, kw_ = spec.kernel
    sh, sw = spec.stride
    dh, dw = spec.dilation
    cg, kg = spec.in_per_group, spec.out_per_group
    acc = acc_dtype or spec.acc_dtype
    k_pad = padded_channels(spec, channel_block)
    c_red = padded_inputs(spec, input_block)
    # depthwise pads its channels on both sides: a padded output channel reads a zero input
    c_pad = c_red + (k_pad - spec.out_channels if spec.groups > 1 else 0)

    data = te.placeholder(spec.input_shape, spec.dtype, name="data")
    h_pad = padded_rows(spec, row_block)
    # the input rows the extra output rows read: below the image, in the bottom padding
    pt, pl, pb, pr = spec.padding
    pb += max(0, (h_pad - 1) * sh + (kh_ - 1) * dh + 1 - (spec.height + pt + pb))
    padded = pad_data(spec, data, padding=(pt, pl, pb, pr), channels=c_pad)
    wshape = padded_weight_shape(spec, channel_block, input_block)
    if prepadded or wshape == spec.weight_shape:
        weight = filters = te.placeholder(wshape, spec.filter_dtype, name="weight")
    else:
        weight = te.placeholder(spec.weight_shape, spec.filter_dtype, name="weight")
        filters = padded_weight(spec, weight, channel_block, input_block)

    ic = te.reduce_axis((0, c_red if spec.groups == 1 else cg), name="ic")
    kh = te.reduce_axis((0, kh_), name="kh")
    kw = te.reduce_axis((0, kw_), name="kw")
    # true convolution reads the filter flipped in both spatial axes
    fh = (kh_ - 1 - kh) if spec.flip else kh
    fw = (kw_ - 1 - kw) if spec.flip else kw

    def channel(oc):
        # input channel of reduction index ic for output channel oc: its group's slice
        return ic if spec.groups == 1 else (oc // kg) * cg + ic

    def cast(x):
        return x if x.dtype == acc else x.astype(acc)

    n, h, w = spec.batch, h_pad, spec.out_width
    if nchw:

        def body(n, oc, oh, ow):
            x = padded[n, channel(oc), oh * sh + kh * dh, ow * sw + kw * dw]
            return te.sum(cast(x) * cast(filters[oc, ic, fh, fw]), axis=[ic, kh, kw])

        conv = te.compute((n, k_pad, h, w), body, name="conv")
    else:

        def body(n, oh, ow, oc):
            x = padded[n, oh * sh + kh * dh, ow * sw + kw * dw, channel(oc)]
            return te.sum(cast(x) * cast(filters[fh, fw, ic, oc]), axis=[ic, kh, kw])

        conv = te.compute((n, h, w, k_pad), body, name="conv")

    inputs, out = epilogue(spec, conv, acc)
    return [data, weight] + inputs, out


def conv2d_primfunc(spec: ConvSpec, acc_dtype: str | None = None, *, channel_block: int = 1, input_block: int = 1,
                    row_block: int = 1, prepadded: bool = False) -> tirx.PrimFunc:
    """The PrimFunc ``main(data, weight, [bias], [residual], out)`` every template schedules."""
    args, out = conv2d_te(spec, acc_dtype, channel_block=channel_block, input_block=input_block,
                          row_block=row_block, prepadded=prepadded)
    return te.create_prim_func(args + [out]).with_attr("global_symbol", "main")


def padded_weight(spec: ConvSpec, weight: te.Tensor, channel_block: int = 1, input_block: int = 1) -> te.Tensor:
    """``weight_pad``: the filters, padded to :func:`padded_channels` by repeating the last
    one and to :func:`padded_inputs` input channels by zeros (a plain copy when none are
    added).

    The padded filters' lanes are computed and never stored, so their values do not matter;
    a copy with a clamped index rather than a zero fill keeps this stage a pure load, the
    form TVM's layout-rewrite pass needs to turn the packing into ``main_prepacked``. Padded
    input channels do enter the sums: their zeros matter (``main_prepacked`` then comes from
    the prepadded definition, as for padded filters).
    """
    nchw = spec.layout == "NCHW"
    k, k_pad = spec.out_channels, padded_channels(spec, channel_block)
    c, c_pad = spec.in_channels, padded_inputs(spec, input_block)
    last = tirx.const(k - 1, "int32")

    def body(*idx):
        o, i = (idx[0], idx[1]) if nchw else (idx[3], idx[2])
        if k_pad != k:
            o = tirx.min(o, last)
        value = weight[o, i, idx[2], idx[3]] if nchw else weight[idx[0], idx[1], i, o]
        if c_pad == c:
            return value
        return tirx.if_then_else(i < c, value, tirx.const(0, spec.filter_dtype))

    return te.compute(padded_weight_shape(spec, channel_block, input_block), body, name="weight_pad")


def padded_weight_shape(spec: ConvSpec, channel_block: int = 1, input_block: int = 1) -> tuple[int, ...]:
    """The weight shape (OIHW or HWIO) with the filters padded to :func:`padded_channels`
    and their input channels to :func:`padded_inputs`."""
    shape = list(spec.weight_shape)
    nchw = spec.layout == "NCHW"
    shape[0 if nchw else 3] = padded_channels(spec, channel_block)
    if spec.groups == 1:
        shape[1 if nchw else 2] = padded_inputs(spec, input_block)
    return tuple(shape)


def weight_primfunc(spec: ConvSpec, channel_block: int = 1, input_block: int = 1) -> tirx.PrimFunc:
    """``main(weight, weight_pad)``: the weight stage of :func:`conv2d_te` alone, which a
    template lays out as its packed weights (the library's ``pack_weights``)."""
    weight = te.placeholder(spec.weight_shape, spec.filter_dtype, name="weight")
    padded = padded_weight(spec, weight, channel_block, input_block)
    return te.create_prim_func([weight, padded]).with_attr("global_symbol", "main")
