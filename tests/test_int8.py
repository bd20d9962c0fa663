"""8-bit convolutions on x86: exact s32 results against the numpy reference.

u8 activations x s8 weights -> s32 sums (``x86.direct_vnni`` on ``vpdpbusd``; ``cpu.generic``
elsewhere), compared bit for bit with numpy's int64 arithmetic on *full-range* data: 0..255
and -128..127, where ``vpmaddubsw``'s int16 pair sums would saturate and show it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import convgen
from convgen import ConvSpec
from convgen.reference import conv2d_reference
from convgen.schedules import get_template
from convgen.schedules.x86_dot import VPDPBUSD, DirectVNNIX86

VNNI_TARGET = convgen.get_target("x86-avx512-bf16")
SPECS = [
    ConvSpec(in_channels=32, out_channels=32, height=9, width=9, kernel=3, padding=1, layout="NHWC", dtype="uint8",
             bias=True, residual=True, activation="relu"),
    ConvSpec(in_channels=16, out_channels=48, height=7, width=10, kernel=3, padding=1, stride=2, layout="NCHW",
             dtype="uint8", bias=True),
    ConvSpec(in_channels=64, out_channels=32, height=8, width=8, kernel=1, layout="NHWC", dtype="uint8"),
    # 24 filters (MobileNet-v2's project layers): off the 16 lanes, the filters padded to 32
    ConvSpec(in_channels=96, out_channels=24, height=8, width=8, kernel=1, layout="NHWC", dtype="uint8", bias=True),
    # input channels off vpdpbusd's 4 (an RGB stem; 6 in NCHW): padded with zero filters, the
    # padded data channels holding the zero point
    ConvSpec(in_channels=3, out_channels=16, height=12, width=11, kernel=7, stride=2, padding=3, layout="NHWC",
             dtype="uint8", data_zero_point=100),
    ConvSpec(in_channels=6, out_channels=20, height=7, width=9, kernel=3, padding=1, layout="NCHW", dtype="uint8",
             bias=True),
]


def full_range(spec: ConvSpec, seed: int) -> list[np.ndarray]:
    """Inputs over the whole u8 / s8 range (bias and residual: moderate s32)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, size=spec.input_shape).astype(np.uint8),
              rng.integers(-128, 128, size=spec.weight_shape).astype(np.int8)]
    if spec.bias:
        arrays.append(rng.integers(-(1 << 16), 1 << 16, size=spec.bias_shape).astype(np.int32))
    if spec.residual:
        arrays.append(rng.integers(-(1 << 16), 1 << 16, size=spec.residual_shape).astype(np.int32))
    return arrays


def check(kernel, spec, seed=0):
    arrays = full_range(spec, seed)
    want = conv2d_reference(spec, *arrays)
    got = kernel(*arrays)
    assert got.dtype == np.int32 and want.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    # worst case magnitude: the test must reach where int16 pair sums overflow
    assert np.abs(want.astype(np.int64)).max() > 1 << 15 or spec.in_channels * np.prod(spec.kernel) < 64
    return arrays


def fast_int8_host() -> bool:
    """Does the host target have ``vpdpbusd`` (x86-avx512-bf16, or x86-amx which extends it),
    so that the model path runs its convolutions in int8?"""
    return VPDPBUSD.available(convgen.get_target("host")) and convgen.get_target("host").runs_here()


def x86_host():
    host = convgen.get_target("host")
    if host.family != "x86":
        pytest.skip(f"x86 templates; the host target is {host.name}")
    return host


def test_int8_specs_default_to_s8_weights_and_s32_outputs():
    spec = SPECS[0]
    assert (spec.filter_dtype, spec.acc_dtype, spec.out_dtype) == ("int8", "int32", "int32")
    with pytest.raises(convgen.SpecError, match="weight_dtype"):
        spec.replace(weight_dtype="uint8")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_the_vnni_loop_nest_without_the_instruction_is_exact(spec):
    """The template's loop nest, layouts and packing, with the 16 x 4 step as plain loops:
    runs on any x86 (the x86-avx2 target's code)."""
    x86_host()
    from convgen import builder
    from convgen.runtime import Kernel

    tmpl = DirectVNNIX86(use_instruction=False)
    target = convgen.get_target("x86-avx2")
    configs = [tmpl.default(spec, VNNI_TARGET)] + tmpl.space(spec, VNNI_TARGET).sample(random.Random(3), 2)
    for config in configs:
        if config["tile_oc"] * config["tile_oh"] * config["tile_ow"] > 16 * 12:
            continue  # an AVX-512 tile spills on AVX2's 16 registers: correct, only slow to build
        executable, packed = builder.compile_module(spec, target, tmpl, config, with_packed_shape=True)
        meta = builder.metadata(spec, target, tmpl, config, "given")
        meta["packed_weight_shape"] = packed
        k = Kernel(meta, executable.mod)
        arrays = check(k, spec)
        np.testing.assert_array_equal(k(arrays[0], k.pack_weights(arrays[1]), *arrays[2:]),
                                      conv2d_reference(spec, *arrays))


@pytest.mark.skipif(not VNNI_TARGET.runs_here(), reason="this CPU has no AVX512_VNNI (vpdpbusd)")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_vpdpbusd_kernels_are_exact_on_full_range_data(spec):
    tmpl = get_template("x86.direct_vnni")
    assert tmpl.serves(spec, VNNI_TARGET) is None
    for config in [tmpl.default(spec, VNNI_TARGET)] + tmpl.space(spec, VNNI_TARGET).sample(random.Random(1), 3):
        k = convgen.build(spec, VNNI_TARGET, config, template="x86.direct_vnni")
        arrays = check(k, spec, seed=2)
        np.testing.assert_array_equal(k(arrays[0], k.pack_weights(arrays[1]), *arrays[2:]),
                                      conv2d_reference(spec, *arrays))
    assert convgen.build(spec, VNNI_TARGET, builtin_records=False).template == "x86.direct_vnni"
    from convgen.builder import compile_module

    assert "vpdpbusd" in compile_module(spec, VNNI_TARGET, tmpl, tmpl.default(spec, VNNI_TARGET)).mod.inspect_source("asm")


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[0].replace(dtype="int8", residual=False),
                                  SPECS[1].replace(in_channels=6, out_channels=10)],
                         ids=lambda s: s.describe())
def test_every_x86_target_serves_8_bit_data_exactly(spec):
    """Where no dot-product template serves (AVX2, s8 data, odd channel counts) the generic
    template does: slower, never wrong."""
    x86_host()
    for name in ("x86-avx2", "x86-avx512", "x86-avx512-bf16"):
        target = convgen.get_target(name)
        if not target.runs_here():
            continue
        k = convgen.build(spec, target, builtin_records=False)
        rng = np.random.default_rng(4)
        data = (rng.integers(-128, 128, size=spec.input_shape) if spec.dtype == "int8"
                else rng.integers(0, 256, size=spec.input_shape)).astype(spec.dtype)
        arrays = [data, rng.integers(-128, 128, size=spec.weight_shape).astype(np.int8)]
        arrays += [rng.integers(-1000, 1000, size=s).astype(np.int32) for s in
                   ([spec.bias_shape] if spec.bias else []) + ([spec.residual_shape] if spec.residual else [])]
        np.testing.assert_array_equal(k(*arrays), conv2d_reference(spec, *arrays))


def test_a_vnni_kernel_is_refused_clearly_where_the_cpu_lacks_the_feature(tmp_path, monkeypatch):
    import convgen.target as target_module

    spec = SPECS[0]
    path = str(tmp_path / "vnni.so")
    convgen.build(spec, VNNI_TARGET, template="x86.direct_vnni").export(path)  # builds anywhere
    monkeypatch.setattr(target_module, "host_cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    k = convgen.load(path)
    with pytest.raises(convgen.KernelError, match="avx512_vnni"):
        k(*full_range(spec, 0))


# ---- scaled outputs: dequantized to float32, requantized to 8 bits ---------------------------
SCALED = [
    ConvSpec(in_channels=32, out_channels=32, height=9, width=9, kernel=3, padding=1, layout="NHWC", dtype="uint8",
             output_dtype="float32", bias=True, residual=True, activation="relu"),
    ConvSpec(in_channels=64, out_channels=48, height=8, width=8, kernel=1, layout="NCHW", dtype="uint8",
             output_dtype="uint8", bias=True, activation="relu6"),
    ConvSpec(in_channels=16, out_channels=32, height=7, width=7, kernel=3, padding=1, stride=2, layout="NHWC",
             dtype="uint8", output_dtype="int8", bias=True),
]


def test_a_scaled_spec_takes_a_per_channel_scale_and_float_side_inputs():
    spec = SCALED[0]
    assert spec.scaled and not SPECS[0].scaled
    assert [(n, d) for n, _, d in spec.extra_inputs()] == [("scale", "float32"), ("bias", "float32"),
                                                           ("residual", "float32")]
    assert spec.key.endswith("_ofloat32_bias_residual_relu") and ConvSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("spec", SCALED, ids=lambda s: s.describe())
def test_scaled_outputs_match_the_reference(spec):
    """Every x86 template that serves the spec (the VNNI one where the CPU has it, the
    generic one everywhere): float32 within float32 rounding, 8-bit within one step (a fused
    multiply-add may round the other way at a half), exact on most elements."""
    host = x86_host()
    from convgen.reference import random_inputs, relative_tolerance, tolerance

    templates = ["cpu.generic"] + (["x86.direct_vnni"] if VNNI_TARGET.runs_here() else [])
    for name in templates:
        target = VNNI_TARGET if name == "x86.direct_vnni" else host
        k = convgen.build(spec, target, template=name, builtin_records=False)
        arrays = random_inputs(spec, seed=11)
        want = conv2d_reference(spec, *arrays).astype(np.float64)
        got = k(*arrays)
        assert got.dtype == np.dtype(spec.out_dtype)
        np.testing.assert_allclose(got.astype(np.float64), want, atol=tolerance(spec), rtol=relative_tolerance(spec))
        if spec.out_dtype != "float32":
            assert (got.astype(np.float64) == want).mean() > 0.99
            assert want.min() < want.max()  # a test that spans values, not one clamped end


@pytest.mark.parametrize("out_dtype", ["uint8", "int8"])
def test_requantization_rounds_ties_to_even_and_clamps_both_ends(out_dtype):
    """Sums times 0.5 land on exact halves and past both ends of the 8-bit range: the
    epilogue (clamp, then round through the float's mantissa) must give numpy's rint and
    clip bit for bit, negative results of an s8 output included. The host's own template
    (AMX, VNNI or AVX2 code) and the generic one."""
    host = x86_host()
    spec = ConvSpec(in_channels=64, out_channels=32, height=6, width=6, kernel=1, layout="NHWC", dtype="uint8",
                    output_dtype=out_dtype, bias=True)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, size=spec.input_shape).astype(np.uint8)
    w = rng.integers(-3, 4, size=spec.weight_shape).astype(np.int8)
    scale = np.full(spec.out_channels, 0.5, np.float32)
    bias = np.resize(np.array([-250, 0, 250], np.float32), spec.out_channels)  # whole: the halves stay exact
    sums = np.einsum("nhwc,ck->nhwk", x.astype(np.int64), w[0, 0].astype(np.int64))
    info = np.iinfo(out_dtype)
    y = sums * 0.5 + bias
    want = np.clip(np.rint(y), info.min, info.max).astype(out_dtype)
    inside = (y > info.min) & (y < info.max)
    assert (y[inside] % 1 == 0.5).any() and (y > info.max).any() and (y < info.min).any()
    np.testing.assert_array_equal(conv2d_reference(spec, x, w, scale, bias), want)
    for template in (None, "cpu.generic"):
        k = convgen.build(spec, host, template=template, builtin_records=False)
        np.testing.assert_array_equal(k(x, w, scale, bias), want, err_msg=k.template)


def test_a_scaled_kernel_asks_for_its_scale():
    x86_host()
    spec = SCALED[1]
    k = convgen.build(spec, "host", template="cpu.generic", builtin_records=False)
    from convgen.reference import random_inputs

    x, w, scale, b = random_inputs(spec)
    with pytest.raises(ValueError, match="scale"):
        k(x, w, bias=b)
    np.testing.assert_array_equal(k(x, w, scale=scale, bias=b), k(x, w, scale, b))


# ---- the model path ------------------------------------------------------------------------------
def test_optimize_in_int8_is_close_to_fp32_and_chains_u8_between_convolutions(tmp_path):
    torch = pytest.importorskip("torch")
    import convgen.torch as ct
    from convgen.torch.models import randomize_batchnorm

    from .torch_models import tiny_resnet

    x86_host()
    torch.manual_seed(0)
    model = randomize_batchnorm(tiny_resnet().eval())
    x = torch.randn(2, 3, 32, 32)
    calibration = [torch.randn(2, 3, 32, 32) for _ in range(8)]
    with pytest.raises(ValueError, match="calibration"):
        ct.optimize(model, x, precision="int8", cache=str(tmp_path))
    fast = ct.optimize(model, x, precision="int8", calibration=calibration, cache=str(tmp_path),
                       builtin_records=False)
    with torch.no_grad():
        want, got = model(x), fast(x)
    assert got.dtype == torch.float32
    assert float((got - want).norm() / want.norm()) < 8e-2
    text = ct.explain(fast)
    layers = ct.conv_layers(model, x, precision="int8")
    if not fast_int8_host():  # no fast 8-bit template here: all float32
        assert "no fast 8-bit" in text and "int8: input quantized" not in text
        assert not any(s.dtype == "uint8" for s in layers.values())
        return
    # the 3-channel stem too: x86.direct_vnni pads its input channels to 4 with zero filters
    stem = next(line for line in text.splitlines() if " 3->" in line)
    assert "uint8->" in stem and "int8: input quantized" in stem
    assert "u8 from" in text  # a chain: one convolution's u8 output is the next one's input
    assert any(s.dtype == "uint8" for s in layers.values())


DEPTHWISE = [
    ConvSpec(in_channels=40, out_channels=40, groups=40, height=9, width=11, kernel=3, padding=1, layout="NHWC",
             dtype="uint8"),  # plain s32 sums; 40 channels: a padded vector on AVX-512
    ConvSpec(in_channels=32, out_channels=32, groups=32, height=12, width=12, kernel=3, padding=1, stride=2,
             layout="NHWC", dtype="uint8", output_dtype="uint8", bias=True, activation="relu6"),  # MobileNet's
    ConvSpec(in_channels=16, out_channels=16, groups=16, height=14, width=14, kernel=7, padding=3, layout="NHWC",
             dtype="uint8", output_dtype="float32", bias=True, residual=True),
]


@pytest.mark.parametrize("spec", DEPTHWISE, ids=lambda s: s.describe())
def test_depthwise_int8_is_exact_on_full_range_data(spec):
    """The 8-bit depthwise templates sum in float32, exact below 2**24: full-range data reaches
    the largest sums a depthwise layer can have; s32 results equal numpy's int64 arithmetic,
    scaled ones are the reference's float32 epilogue on the same exact sums."""
    host = x86_host()
    for tmpl in (get_template("x86.depthwise_int8"), get_template("x86.depthwise_nhwc_int8")):
        assert tmpl.serves(spec, host) is None
        space = tmpl.space(spec, host)
        for config in [tmpl.default(spec, host)] + space.sample(random.Random(3), 2):
            check_exact_depthwise(convgen.build(spec, host, config, template=tmpl.name), spec)


def check_exact_depthwise(k, spec):
    """``k`` against the reference on full-range u8 data: s32 sums exactly, scaled outputs
    within the float32 epilogue's tolerance."""
    from convgen.reference import random_inputs, relative_tolerance, tolerance

    if not spec.scaled:
        check(k, spec, seed=7)
        return
    arrays = random_inputs(spec, seed=5)
    arrays[0] = np.random.default_rng(5).integers(0, 256, size=spec.input_shape).astype(np.uint8)
    want = conv2d_reference(spec, *arrays).astype(np.float64)
    np.testing.assert_allclose(k(*arrays).astype(np.float64), want, atol=tolerance(spec), rtol=relative_tolerance(spec))


def test_depthwise_int8_refuses_what_float32_sums_cannot_hold_exactly():
    tmpl = get_template("x86.depthwise_int8")
    target = convgen.get_target("x86-avx512")
    assert "bias" in tmpl.serves(DEPTHWISE[0].replace(bias=True), target)
    assert "514" in tmpl.serves(DEPTHWISE[0].replace(kernel=23, padding=11), target)
    assert tmpl.serves(DEPTHWISE[0].replace(groups=1), target) is not None


def int8_model(model, shape, folder):
    """``model`` optimized in int8 (8 random calibration batches of ``shape``) and the relative
    error of its output against eager fp32 on another random input."""
    import torch

    import convgen.torch as ct

    x = torch.randn(*shape)
    fast = ct.optimize(model, x, precision="int8", calibration=[torch.randn(*shape) for _ in range(8)],
                       cache=str(folder), builtin_records=False)
    with torch.no_grad():
        want, got = model(x), fast(x)
    return fast, float((got - want).norm() / want.norm())


def test_mobilenet_blocks_run_their_depthwise_layers_in_int8_chained_and_close_to_fp32(tmp_path):
    """Expand 1x1 -> depthwise -> project 1x1 pass u8 between them; the ReLU6 of a layer that
    writes u8 clamps at 6 in real units (the epilogue works in the output's: a bound of
    6 / scale there, which a plain 6 would cut to a few steps)."""
    torch = pytest.importorskip("torch")
    import convgen.torch as ct

    from .torch_models import tiny_mobilenet

    host = x86_host()
    if not fast_int8_host():
        pytest.skip(f"the int8 chain needs AVX512_VNNI in the host target, not {host.name}")
    torch.manual_seed(0)
    fast, err = int8_model(tiny_mobilenet(), (1, 3, 32, 32), tmp_path)
    assert err < 8e-2
    text = ct.explain(fast)
    assert "dw NCHW uint8->uint8" in text  # a depthwise layer in int8, writing u8 for the next
    assert "x86.depthwise_nhwc_int8" in text or "x86.depthwise_int8" in text


def test_a_padded_layer_whose_input_has_a_zero_point_pads_with_it(tmp_path):
    """A padded convolution whose input is quantized with a zero point (data with negative
    values, no ReLU before) must pad with that zero point, its real 0: padded with u8 0 its
    borders were wrong (relative error 1.5 on 8x8). The spec carries it (data_zero_point)."""
    torch = pytest.importorskip("torch")
    import convgen.torch as ct

    x86_host()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1), torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
    fast, err = int8_model(model, (1, 16, 8, 8), tmp_path)
    assert err < 8e-2
    text = ct.explain(fast)
    if "int8: input quantized" in text:  # a host with a fast 8-bit template: both run int8
        zero = fast.get_submodule("1").in_zero
        assert zero and f"k3x3 s1 p1 NCHW uint8->float32 z{zero}" in text


@pytest.mark.parametrize("template", ["cpu.generic", "x86.direct_vnni", "x86.depthwise_int8", "x86.depthwise_nhwc_int8"])
def test_kernels_pad_with_the_data_zero_point_exactly(template):
    host = x86_host()
    spec = ConvSpec(in_channels=16, out_channels=32, height=7, width=6, kernel=3, padding=(2, 1, 1, 0),
                    layout="NHWC", dtype="uint8", data_zero_point=200)
    if template.startswith("x86.depthwise"):
        spec = spec.replace(out_channels=16, groups=16)
    target = VNNI_TARGET if template == "x86.direct_vnni" else host
    if not target.runs_here():
        pytest.skip(f"{template} needs {target.name}")
    k = convgen.build(spec, target, template=template, builtin_records=False)
    arrays = check(k, spec, seed=9)
    # and the padding did hold 200: the same data padded with 0 gives other border sums
    assert not np.array_equal(conv2d_reference(spec.replace(data_zero_point=0), *arrays), k(*arrays))


def test_the_data_zero_point_is_validated_keyed_and_round_trips():
    spec = SPECS[0].replace(data_zero_point=7)
    assert "_z7_" in spec.key and " z7" in spec.describe() and ConvSpec.from_dict(spec.to_dict()) == spec
    assert "data_zero_point" not in SPECS[0].to_dict() and SPECS[0].data_zero_point == 0
    assert spec.stand_ins()[0] == SPECS[0]  # its records: the loop nest padded with 0
    assert spec.without_dead_taps() is spec
    from convgen.spec import SpecError

    with pytest.raises(SpecError, match="8-bit data"):
        SPECS[0].replace(dtype="float32", data_zero_point=1)
    with pytest.raises(SpecError, match="0..255"):
        SPECS[0].replace(data_zero_point=300)


@pytest.mark.parametrize("channels,width", [(3, 32), (24, 10), (3, 7), (64, 5)])
def test_the_quantizing_kernel_matches_round_half_even_on_any_channel_count(tmp_path, channels, width):
    """A float input's quantization (per tensor, so the kernel may view a row's ``W x C``
    values as wider channel vectors: 3 channels x 32 pixels as 3 x 32 / 32 pixels of 32, 24
    x 10 as 15 of 16; 3 x 7 has no such view) against numpy's round half to even."""
    torch = pytest.importorskip("torch")
    from convgen.torch._quant import quantizer_spec

    x86_host()
    torch.manual_seed(channels)
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, 16, 3, padding=1)).eval()
    fast, _ = int8_model(model, (2, channels, 6, width), tmp_path)
    layer = fast.get_submodule("0")
    if layer.kernels and not any(k.spec.dtype == "uint8" for k in layer.kernels.values()):
        pytest.skip("no fast 8-bit template on this host: the layer runs float32")
    x = (torch.randn(2, channels, 6, width) * 3).contiguous(memory_format=torch.channels_last)
    view = quantizer_spec(x)
    assert view.in_channels % 16 == 0 or channels * width % 16
    q = layer._input_as(x, torch.uint8)
    assert q.shape == x.shape and q.dtype == torch.uint8
    xs = x.numpy().astype(np.float32)
    want = np.clip(np.rint(xs * np.float32(1.0 / layer.in_scale) + np.float32(layer.in_zero)), 0, 255)
    got = q.numpy().astype(np.float32)
    # float32 x * (1/s) + z, contracted to one FMA or not: at most one step apart at a tie
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.999


def test_linear_layers_run_int8_close_to_fp32(tmp_path):
    """A classifier's matrix-vector products in int8 (s8 weights: a quarter of float32's
    bytes), over 2-D and 3-D inputs, against eager fp32."""
    torch = pytest.importorskip("torch")
    import convgen.torch as ct

    x86_host()
    torch.manual_seed(3)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
            self.fc1, self.fc2 = torch.nn.Linear(32, 48), torch.nn.Linear(48, 10)
            self.tokens = torch.nn.Linear(8, 24)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            z = self.fc2(torch.relu(self.fc1(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))))
            return z, self.tokens(y.flatten(2).transpose(1, 2)[..., :8])  # a 3-D input: [N, H*W, 8]

    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    fast = ct.optimize(model, x, precision="int8", calibration=[torch.randn(2, 3, 8, 8) for _ in range(8)],
                       cache=str(tmp_path), builtin_records=False)
    with torch.no_grad():
        for xb in (x, x[:1]):  # batch 1: the classifier's input is a 1x1 map, NCHW and NHWC alike
            for want, got in zip(model(xb), fast(xb)):
                assert got.shape == want.shape and float((got - want).norm() / want.norm()) < 8e-2
    text = ct.explain(fast)
    if not fast_int8_host():
        return
    for name in ("fc1", "fc2", "tokens"):
        line = next(line for line in text.splitlines() if line.startswith(name + ":"))
        assert "linear" in line and "int8: " in line, line
    assert type(fast.get_submodule("fc2")).__name__ == "QLinear"


def test_a_convolution_before_a_max_pooling_writes_u8_for_the_int8_layers_after_it(tmp_path):
    """ResNet's stem: conv -> ReLU -> max pooling -> two int8 convolutions. The max of u8
    values is the u8 of the max, so the stem writes u8 at their scale and the pooling pools
    it; where a float32 layer also reads the pooling (a grouped one), the stem writes float32."""
    torch = pytest.importorskip("torch")
    import convgen.torch as ct

    x86_host()
    torch.manual_seed(11)

    class Stem(torch.nn.Module):
        def __init__(self, grouped: bool):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 16, 7, stride=2, padding=3)
            self.pool = torch.nn.MaxPool2d(3, 2, 1)
            self.a, self.b = torch.nn.Conv2d(16, 32, 1), torch.nn.Conv2d(16, 16, 3, padding=1, groups=8 if grouped else 1)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv1(x)))
            return self.a(y).sum(1, keepdim=True) + self.b(y).sum(1, keepdim=True)

    for grouped in (False, True):
        fast, err = int8_model(Stem(grouped).eval(), (1, 3, 32, 32), tmp_path)
        assert err < 8e-2
        stem = next(line for line in ct.explain(fast).splitlines() if line.startswith("conv1:"))
        if not fast_int8_host():
            continue
        if grouped:  # b stays float32: the pooling's output must be float32 for it
            assert "output float32" in stem, stem
        else:
            assert "uint8->uint8" in stem and "output u8 for a, b" in stem, stem


# ---- scaled residuals: a u8 skip connection, a float32 one into a u8 output -------------------
RESIDUALS = [
    ConvSpec(in_channels=64, out_channels=32, height=6, width=7, kernel=1, layout="NHWC", dtype="uint8",
             output_dtype="uint8", bias=True, residual=True, activation="relu", residual_dtype="uint8"),
    ConvSpec(in_channels=16, out_channels=24, height=7, width=9, kernel=3, padding=1, layout="NCHW", dtype="uint8",
             output_dtype="float32", residual=True, residual_dtype="uint8"),
    ConvSpec(in_channels=32, out_channels=48, height=5, width=5, kernel=1, layout="NHWC", dtype="uint8",
             output_dtype="uint8", bias=True, residual=True, activation="relu", residual_dtype="float32"),
]


def test_a_scaled_residual_is_validated_keyed_and_stands_in_for_by_its_float_form():
    spec = RESIDUALS[0]
    assert spec.key.endswith("_ruint8") and "+res(uint8)" in spec.describe()
    assert ConvSpec.from_dict(spec.to_dict()) == spec and "residual_dtype" not in SPECS[0].to_dict()
    assert [name for name, _, _ in spec.extra_inputs()] == ["scale", "bias", "residual_scale", "residual"]
    assert spec.extra_inputs()[-1][2] == "uint8" and RESIDUALS[2].extra_inputs()[-1][2] == "float32"
    assert spec.stand_ins()[0] == spec.replace(residual_dtype=None)  # the same loop nest: its records serve
    for bad, match in ((dict(residual_dtype="int8"), "must be None"), (dict(residual=False), "scaled residual"),
                       (dict(output_dtype="int32"), "scaled residual")):
        with pytest.raises(convgen.SpecError, match=match):
            spec.replace(**bad)


@pytest.mark.parametrize("spec", RESIDUALS, ids=lambda s: s.describe())
def test_scaled_residuals_match_the_reference(spec):
    """``+ residual * residual_scale`` per channel, on the VNNI template (its loop nest without
    the instruction on any x86) and on the host's own choice."""
    from convgen import builder
    from convgen.reference import random_inputs
    from convgen.runtime import Kernel

    host = x86_host()
    tmpl = DirectVNNIX86(use_instruction=False)
    target = convgen.get_target("x86-avx2")
    config = tmpl.default(spec, target)  # (a tile for AVX2's 16 registers)
    executable, packed = builder.compile_module(spec, target, tmpl, config, with_packed_shape=True)
    meta = builder.metadata(spec, target, tmpl, config, "given")
    meta["packed_weight_shape"] = packed
    kernels = [Kernel(meta, executable.mod), convgen.build(spec, host, builtin_records=False)]
    arrays = random_inputs(spec, seed=4)
    want = conv2d_reference(spec, *arrays)
    # the scaled residual moves the result: the check would catch a residual_scale ignored
    assert not np.allclose(conv2d_reference(spec, *arrays[:-2], np.ones_like(arrays[-2]), arrays[-1]), want)
    for k in kernels:
        got = k(*arrays)
        if spec.requantized:  # float32 arithmetic rounded to u8: one step at a tie, at most
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and (got == want).mean() > 0.99
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_resnet_blocks_pass_their_u8_outputs_as_the_next_blocks_input_and_skip_connection(tmp_path):
    """Each block's last convolution writes u8 for the next block's first one and for its
    residual add (a u8 skip connection, scaled in the epilogue); the first block's skip
    connection (its downsample's float32) is scaled to the u8 output's units. Outputs stay
    within int8's error of fp32."""
    torch = pytest.importorskip("torch")
    import convgen.torch as ct
    from convgen.torch.models import randomize_batchnorm

    from .torch_models import tiny_bottleneck

    x86_host()
    torch.manual_seed(7)
    model = randomize_batchnorm(tiny_bottleneck().eval())
    fast, err = int8_model(model, (1, 3, 32, 32), tmp_path)
    assert err < 8e-2
    if not fast_int8_host():
        return
    text = ct.explain(fast)
    assert "+res(uint8)" in text and "residual u8 from" in text, text
    assert "+res(float32)" in text and "uint8->uint8" in text
