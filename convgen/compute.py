"""The one definition of the convolution, as a TVM tensor expression.

Every template schedules the PrimFunc made here; none of them says *what* is computed.
Stages (block names are part of the contract with the templates):

``data_pad``  zero padding of the data (absent when the padding is zero)
``conv``      the reduction over input channels of a group and the kernel window
``out``       the epilogue: bias add and activation (a copy when there are none), so the
              reduction's result is an intermediate buffer a template may lay out as it likes

Loop (block iterator) names: output ``n, oc, oh, ow`` in the spec's layout order,
reduction ``ic, kh, kw``.
"""

from __future__ import annotations

from tvm import te, tirx

from .spec import ConvSpec


def conv2d_te(spec: ConvSpec, acc_dtype: str | None = None) -> tuple[list[te.Tensor], te.Tensor]:
    """The TE tensors: ``([data, weight, (bias)], out)``.

    ``acc_dtype`` (default ``spec.out_dtype``) is the type of the ``conv`` stage: fp16 on
    tensor cores accumulates in float32, and ``out`` casts back after bias and activation.
    The function's arguments and result keep the spec's dtypes either way.
    """
    nchw = spec.layout == "NCHW"
    kh_, kw_ = spec.kernel
    sh, sw = spec.stride
    dh, dw = spec.dilation
    pt, pl, pb, pr = spec.padding
    cg, kg = spec.in_per_group, spec.out_per_group
    acc = acc_dtype or spec.out_dtype

    data = te.placeholder(spec.input_shape, spec.dtype, name="data")
    weight = te.placeholder(spec.weight_shape, spec.dtype, name="weight")
    args = [data, weight]

    if any(spec.padding):
        hp, wp = spec.height + pt + pb, spec.width + pl + pr

        def pad(*idx):
            n, c, h, w = (idx[0], idx[1], idx[2], idx[3]) if nchw else (idx[0], idx[3], idx[1], idx[2])
            inside = tirx.all(h >= pt, h < pt + spec.height, w >= pl, w < pl + spec.width)
            value = data[n, c, h - pt, w - pl] if nchw else data[n, h - pt, w - pl, c]
            return tirx.if_then_else(inside, value, tirx.const(0, spec.dtype))

        shape = (spec.batch, spec.in_channels, hp, wp) if nchw else (spec.batch, hp, wp, spec.in_channels)
        padded = te.compute(shape, pad, name="data_pad")
    else:
        padded = data

    ic = te.reduce_axis((0, cg), name="ic")
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

    if nchw:

        def body(n, oc, oh, ow):
            x = padded[n, channel(oc), oh * sh + kh * dh, ow * sw + kw * dw]
            return te.sum(cast(x) * cast(weight[oc, ic, fh, fw]), axis=[ic, kh, kw])

    else:

        def body(n, oh, ow, oc):
            x = padded[n, oh * sh + kh * dh, ow * sw + kw * dw, channel(oc)]
            return te.sum(cast(x) * cast(weight[fh, fw, ic, oc]), axis=[ic, kh, kw])

    conv = te.compute(spec.output_shape, body, name="conv")

    bias = None
    if spec.bias:
        bias = te.placeholder(spec.bias_shape, spec.out_dtype, name="bias")
        args.append(bias)

    def epilogue(*idx):
        oc = idx[1] if nchw else idx[3]
        y = conv(*idx)
        if bias is not None:
            y = y + cast(bias[oc])
        if spec.activation == "relu":
            y = tirx.max(y, tirx.const(0, acc))
        return y if acc == spec.out_dtype else y.astype(spec.out_dtype)

    out = te.compute(spec.output_shape, epilogue, name="out")
    return args, out


def conv2d_primfunc(spec: ConvSpec, acc_dtype: str | None = None) -> tirx.PrimFunc:
    """The PrimFunc ``main(data, weight, [bias], out)`` every template schedules."""
    args, out = conv2d_te(spec, acc_dtype)
    return te.create_prim_func(args + [out]).with_attr("global_symbol", "main")
