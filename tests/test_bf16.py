"""bfloat16 convolutions: specs, the reference, kernels on any x86 and on AVX512_BF16, models.

The reference computes exactly on the bf16 values (every bf16 value is an fp32 value) and
rounds once to the output's dtype; a kernel does fp32 math on the same values. Kernels are
checked on any x86 (the fp32 templates on bf16 data, and ``x86.direct_bf16``'s loop nest with
its ``vdpbf16ps`` step left as plain loops); the instruction itself where the CPU has it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import convgen
from convgen import ConvSpec
from convgen.reference import conv2d_reference, random_inputs, relative_tolerance, tolerance
from convgen.schedules import get_template
from convgen.schedules.x86_dot import DirectBF16X86

BF16_TARGET = convgen.get_target("x86-avx512-bf16")
SPECS = [
    ConvSpec(in_channels=32, out_channels=32, height=9, width=9, kernel=3, padding=1, layout="NHWC", dtype="bfloat16",
             bias=True, residual=True, activation="relu"),
    ConvSpec(in_channels=16, out_channels=48, height=7, width=10, kernel=3, padding=1, stride=2, layout="NCHW",
             dtype="bfloat16", output_dtype="float32", bias=True),
    ConvSpec(in_channels=64, out_channels=32, height=8, width=8, kernel=1, layout="NHWC", dtype="bfloat16",
             activation="relu6"),
    # dilated on a small map: the taps that read only padding are skipped per tile
    ConvSpec(in_channels=16, out_channels=32, height=12, width=12, kernel=3, padding=6, dilation=6, layout="NHWC",
             dtype="bfloat16", bias=True),
]


def check(kernel, spec, arrays=None):
    arrays = arrays or random_inputs(spec, seed=5)
    got = kernel(*arrays)
    want = conv2d_reference(spec, *arrays)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=relative_tolerance(spec),
                               atol=tolerance(spec))


def x86_host():
    host = convgen.get_target("host")
    if host.family != "x86":
        pytest.skip(f"x86 templates; the host target is {host.name}")
    return host


def test_dtype_fields_keep_fp32_keys_and_validate():
    fp32 = ConvSpec(in_channels=8, out_channels=8, height=8, width=8, kernel=3)
    assert fp32.key == "conv2d_nchw_float32_n1_c8_h8_w8_k8_r3x3_s1x1_p0_0_0_0_d1x1_g1"
    assert "weight_dtype" not in fp32.to_dict() and "output_dtype" not in fp32.to_dict()
    b = fp32.replace(dtype="bfloat16", output_dtype="float32")
    assert (b.filter_dtype, b.acc_dtype, b.out_dtype) == ("bfloat16", "float32", "float32")
    assert b.key.endswith("_ofloat32") and ConvSpec.from_dict(b.to_dict()) == b
    assert fp32.replace(dtype="bfloat16", output_dtype="bfloat16") == fp32.replace(dtype="bfloat16")  # the default
    with pytest.raises(convgen.SpecError, match="output_dtype"):
        fp32.replace(output_dtype="float16")
    stem = fp32.replace(in_channels=3, output_dtype="bfloat16")  # fp32 math, the output rounded to bf16
    assert stem.key.endswith("_obfloat16") and "float32->bfloat16" in stem.describe()
    assert stem.epilogue_dtype == "bfloat16" and stem.acc_dtype == "float32"
    assert stem.stand_ins()[0] == stem.replace(output_dtype="float32")  # tuned as the fp32 layer
    assert b.stand_ins()[0] == b.replace(output_dtype="bfloat16")
    with pytest.raises(convgen.SpecError, match="weight_dtype"):
        fp32.replace(dtype="bfloat16", weight_dtype="float32")


def test_an_rgb_stem_reads_float32_and_writes_bf16():
    # convgen.torch's bf16 stem: vdpbf16ps pairs channels, 3 of them gain nothing, so the kernel
    # multiplies in fp32 on the model's own input and rounds its output to bf16 once
    x86_host()
    spec = ConvSpec(in_channels=3, out_channels=32, height=15, width=15, kernel=7, stride=2, padding=3, layout="NHWC",
                    bias=True, activation="relu", output_dtype="bfloat16")
    k = convgen.build(spec, builtin_records=False)
    assert k.template == "x86.direct"
    check(k, spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_fp32_templates_run_bf16_data_on_any_x86(spec):
    host = x86_host()
    for target in {t.name: t for t in (host, convgen.get_target("x86-avx2"))}.values():
        if not target.runs_here():
            continue
        k = convgen.build(spec, target, builtin_records=False)
        assert k.template in ("x86.direct", "x86.pointwise", "x86.direct_bf16", "x86.amx_bf16")
        check(k, spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_the_bf16_loop_nest_without_the_instruction_matches_the_reference(spec):
    x86_host()
    from convgen.builder import compile_module
    from convgen.runtime import Kernel

    tmpl = DirectBF16X86(use_instruction=False)  # compilable and runnable on any x86
    target = convgen.get_target("x86-avx2")  # vdpbf16ps-free code
    configs = [tmpl.default(spec, BF16_TARGET)]
    configs += tmpl.space(spec, BF16_TARGET).sample(random.Random(3), 2)
    for config in configs:
        config = {**config}
        if config["tile_oc"] * config["tile_oh"] * config["tile_ow"] > 16 * 12:
            continue  # an AVX-512 tile spills on AVX2's 16 registers: correct, only slow to build
        from convgen import builder

        executable, packed = compile_module(spec, target, tmpl, config, with_packed_shape=True)
        meta = builder.metadata(spec, target, tmpl, config, "given")
        meta["packed_weight_shape"] = packed
        k = Kernel(meta, executable.mod)
        check(k, spec)
        arrays = random_inputs(spec, seed=6)
        got = k(arrays[0], k.pack_weights(arrays[1]), *arrays[2:])
        want = conv2d_reference(spec, *arrays)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=relative_tolerance(spec),
                                   atol=tolerance(spec))


@pytest.mark.skipif(not BF16_TARGET.runs_here(), reason="this CPU has no AVX512_BF16 (vdpbf16ps)")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_vdpbf16ps_kernels_match_the_reference(spec):
    tmpl = get_template("x86.direct_bf16")
    assert tmpl.serves(spec, BF16_TARGET) is None
    configs = [tmpl.default(spec, BF16_TARGET)] + tmpl.space(spec, BF16_TARGET).sample(random.Random(1), 3)
    for config in configs:
        k = convgen.build(spec, BF16_TARGET, config, template="x86.direct_bf16")
        check(k, spec)
        arrays = random_inputs(spec, seed=7)
        got = k(arrays[0], k.pack_weights(arrays[1]), *arrays[2:])
        np.testing.assert_allclose(got.astype(np.float64), conv2d_reference(spec, *arrays).astype(np.float64),
                                   rtol=relative_tolerance(spec), atol=tolerance(spec))
    assert convgen.build(spec, BF16_TARGET, builtin_records=False).template == "x86.direct_bf16"


def test_a_bf16_kernel_is_refused_clearly_where_the_cpu_lacks_the_feature(tmp_path, monkeypatch):
    import convgen.target as target_module

    spec = SPECS[0]
    path = str(tmp_path / "bf16.so")
    convgen.build(spec, BF16_TARGET, template="x86.direct_bf16").export(path)  # builds anywhere
    monkeypatch.setattr(target_module, "host_cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    k = convgen.load(path)  # loads for inspection
    with pytest.raises(convgen.KernelError, match="avx512_bf16"):
        k(*random_inputs(spec))


def test_torch_tensors_in_bf16():
    torch = pytest.importorskip("torch")
    x86_host()
    spec = SPECS[0]
    k = convgen.build(spec, "host", builtin_records=False)
    arrays = random_inputs(spec, seed=8)
    tensors = [torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16) for a in arrays]
    got = k(*tensors)
    assert got.dtype == torch.bfloat16
    want = conv2d_reference(spec, *arrays)
    np.testing.assert_allclose(got.float().numpy(), want.astype(np.float64), rtol=relative_tolerance(spec),
                               atol=tolerance(spec))


def test_optimize_in_bf16_matches_the_fp32_model_within_bf16_error(tmp_path):
    torch = pytest.importorskip("torch")
    import convgen.torch as ct

    host = x86_host()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1, groups=32), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 64, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(64, 10)).eval()
    from convgen.torch.models import randomize_batchnorm

    randomize_batchnorm(model)
    x = torch.randn(2, 3, 16, 16)
    fast = ct.optimize(model, x, precision="bfloat16", cache=str(tmp_path), builtin_records=False)
    with torch.no_grad():
        want, got = model(x), fast(x)
    assert got.dtype == torch.float32  # the model's output keeps its dtype
    assert float((got - want).norm() / want.norm()) < 2e-2
    text = ct.explain(fast)
    assert "bfloat16" in text and "4 of 4 convolutions" not in text  # 3 convolutions + 1 linear
    layers = list(ct.conv_layers(model, x, precision="bfloat16").values())
    assert all(s.dtype == "bfloat16" for s in layers[1:])
    from convgen.schedules import get_template
    from convgen.torch import FOLDED_STEM

    if get_template(FOLDED_STEM).serves(layers[0].replace(dtype="bfloat16"), host) is None:
        # AMX: the RGB stem multiplies bf16 tiles, its input converted once
        assert layers[0].dtype == "bfloat16" and FOLDED_STEM in text
    else:
        assert (layers[0].dtype, layers[0].out_dtype) == ("float32", "bfloat16")  # the RGB stem, fp32 in
        assert "float32->bfloat16" in text
    # a bf16 input goes to the stem's kernel too (widened exactly), not to torch's fp32 conv
    with torch.no_grad():
        got16 = fast(x.to(torch.bfloat16))
    assert float((got16.float() - want).norm() / want.norm()) < 2e-2
