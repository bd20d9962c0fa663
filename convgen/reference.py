"""A numpy reference convolution, written independently of the TE definition.

It slides the filter by slicing: for each kernel tap ``(i, j)`` it takes the strided,
dilated window of the padded input and contracts the channels of each group with one
matrix product, accumulating in float64 (int64 for 8-bit data). Tests and ``convgen run``
check kernels against it.

bfloat16 arrays are numpy arrays of ``ml_dtypes.bfloat16`` (what TVM's runtime gives back):
the reference computes exactly on their values (every bf16 value is an fp32 value), then
rounds the result to the output's dtype; a kernel does fp32 math on the same values, so the
two differ by fp32 rounding, plus the bf16 rounding of a bf16 output
(:func:`relative_tolerance`).
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import numpy_dtype
from .spec import ConvSpec

_erf = np.vectorize(math.erf, otypes=[np.float64])


def conv2d_reference(spec: ConvSpec, data: np.ndarray, weight: np.ndarray, *extras: np.ndarray,
                     scale: np.ndarray | None = None, bias: np.ndarray | None = None,
                     residual: np.ndarray | None = None, residual_scale: np.ndarray | None = None) -> np.ndarray:
    """``spec``'s convolution of ``data`` by ``weight`` (``* scale``, + ``bias``, + ``residual``
    (``* residual_scale`` where the spec has a ``residual_dtype``), activation), in ``spec.layout``. The spec's extra
    inputs (``spec.extra_inputs()``) come positionally, in that order, as :func:`random_inputs`
    returns them, or by keyword."""
    names = [name for name, _, _ in spec.extra_inputs()]
    if len(extras) > len(names):
        raise TypeError(f"{spec.describe()} takes {2 + len(names)} inputs, got {2 + len(extras)}")
    given = dict(zip(names, extras))
    scale, bias, residual = given.get("scale", scale), given.get("bias", bias), given.get("residual", residual)
    residual_scale = given.get("residual_scale", residual_scale)
    if spec.scaled and scale is None:
        raise TypeError(f"{spec.describe()} needs scale")
    if spec.residual_dtype and residual is not None and residual_scale is None:
        raise TypeError(f"{spec.describe()} needs residual_scale")
    if spec.layout == "NHWC":
        data = np.transpose(data, (0, 3, 1, 2))  # -> NCHW
        weight = np.transpose(weight, (3, 2, 0, 1))  # HWIO -> OIHW
    wide = np.int64 if spec.acc_dtype == "int32" else np.float64
    x = data.astype(wide)
    w = weight.astype(wide)
    if spec.flip:
        w = w[:, :, ::-1, ::-1]
    pt, pl, pb, pr = spec.padding
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=spec.data_zero_point)
    n, g = spec.batch, spec.groups
    cg, kg = spec.in_per_group, spec.out_per_group
    oh, ow = spec.out_height, spec.out_width
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    x = x.reshape(n, g, cg, x.shape[2], x.shape[3])
    w = w.reshape(g, kg, cg, spec.kernel[0], spec.kernel[1])
    y = np.zeros((n, g, kg, oh, ow), dtype=wide)
    for i in range(spec.kernel[0]):
        for j in range(spec.kernel[1]):
            window = x[:, :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            y += np.einsum("ngchw,gkc->ngkhw", window, w[:, :, :, i, j])
    y = y.reshape(n, spec.out_channels, oh, ow)
    if spec.scaled:  # the kernel's float32 epilogue, operation by operation (see ConvSpec.scaled)
        y = y.astype(np.float32) * scale.astype(np.float32).reshape(1, -1, 1, 1)
        wide = np.float32
    if bias is not None:
        y = y + bias.astype(wide).reshape(1, -1, 1, 1)
    if residual is not None:
        r = residual.astype(wide)
        r = np.transpose(r, (0, 3, 1, 2)) if spec.layout == "NHWC" else r
        if spec.residual_dtype:  # to the output's units, per channel, in float32 as the kernel
            r = r * residual_scale.astype(np.float32).reshape(1, -1, 1, 1)
        y = y + r
    if spec.activation in ("relu", "relu6"):
        y = np.maximum(y, 0)
    if spec.activation == "relu6":
        y = np.minimum(y, 6)
    if spec.activation == "gelu":  # erf from the standard library, in float64
        y = 0.5 * y * (1.0 + _erf(y.astype(np.float64) / math.sqrt(2.0))).astype(y.dtype)
    if spec.requantized:
        info = np.iinfo(spec.out_dtype)
        y = np.clip(np.rint(y), info.min, info.max)  # round half to even, as the kernel
    if spec.layout == "NHWC":
        y = np.transpose(y, (0, 2, 3, 1))
    return np.ascontiguousarray(y.astype(numpy_dtype(spec.out_dtype)))


def random_inputs(spec: ConvSpec, seed: int = 0) -> list[np.ndarray]:
    """Random data, weight (and scale, bias, residual) for ``spec``, in argument order:
    uniform in [-1, 1), small ints for 8-bit data; a scale that maps the integer sums to
    tens (so an 8-bit output spans its range, clamped at the ends)."""
    rng = np.random.default_rng(seed)

    def draw(shape, dtype):
        if dtype in ("int8", "int32"):
            return rng.integers(-8, 8, size=shape).astype(dtype)
        if dtype == "uint8":
            return rng.integers(0, 16, size=shape).astype(dtype)
        return rng.uniform(-1, 1, size=shape).astype(numpy_dtype(dtype))

    arrays = [draw(spec.input_shape, spec.dtype), draw(spec.weight_shape, spec.filter_dtype)]
    terms = spec.in_per_group * spec.kernel[0] * spec.kernel[1]
    for name, shape, dtype in spec.extra_inputs():
        if name == "scale":  # a sum's spread is about sqrt(terms) * 8 * 8
            arrays.append((rng.uniform(0.5, 1.5, size=shape) * 64 / (8 * 8 * terms**0.5)).astype(np.float32))
        elif name == "residual_scale":  # a residual (u8: 0..15) to a few units
            arrays.append(rng.uniform(0.1, 0.5, size=shape).astype(np.float32))
        elif dtype == "uint8":  # a u8 residual
            arrays.append(draw(shape, dtype))
        elif spec.scaled:  # bias and residual in the output's units
            arrays.append(rng.uniform(-8, 8, size=shape).astype(np.float32))
        else:
            arrays.append(draw(shape, dtype))
    return arrays


def tolerance(spec: ConvSpec) -> float:
    """Absolute tolerance for comparing with the reference, scaled by the reduction length.

    Inputs in [-1, 1): each output sums ``C/g * R * S`` products, so float32 rounding
    grows about like sqrt(terms) * eps * typical magnitude; 1e-5 per term is generous and
    still catches any indexing error (those are O(1)).
    """
    terms = spec.in_per_group * spec.kernel[0] * spec.kernel[1]
    if spec.requantized:
        return 1.0  # an 8-bit result of float arithmetic: one step of rounding either way at a half
    if spec.scaled:  # exact sums, a float32 epilogue whose multiply-add LLVM may fuse
        return 1e-5
    if spec.acc_dtype == "int32":
        return 0.0  # integer sums are exact
    eps = {"float32": 1e-5, "float16": 2e-3}[spec.acc_dtype]  # bf16 data: fp32 sums of exact products
    return eps * max(terms, 1) ** 0.5 * 4


def relative_tolerance(spec: ConvSpec) -> float:
    """The part of the tolerance proportional to the result: a bf16 output is rounded to 8
    significant bits, and the reference's and the kernel's fp32 sums (added in other orders)
    may round to neighbouring bf16 values: one unit in the last place, which is up to 2**-7
    of the value (just above a power of two). 0 for other outputs."""
    if spec.scaled and spec.out_dtype == "float32":
        return 1e-6  # a few float32 roundings of the epilogue
    return 2.0**-7 if spec.out_dtype == "bfloat16" else 0.0
