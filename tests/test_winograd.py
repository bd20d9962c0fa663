"""Winograd F(2x2,3x3) and F(4x4,3x3): the algebra, correctness, and its error bounds."""

import random

import numpy as np
import pytest

import convgen
from convgen import ConvSpec, workloads
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.schedules import get_template
from convgen.schedules.winograd import transform_matrices


WINO = get_template("x86.winograd")


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_1d_correlation(m):
    # F(m, 3): y = A^T [(G g) * (B^T d)] equals the direct correlation of d by g.
    A, B, G = transform_matrices(m)
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
    want = np.array([d[i : i + 3] @ g for i in range(m)])
    np.testing.assert_allclose(A.T @ ((G @ g) * (B.T @ d)), want, atol=1e-12)


SPECS = [
    ConvSpec(in_channels=16, out_channels=16, height=10, width=10, kernel=3, padding=1, bias=True),
    ConvSpec(in_channels=8, out_channels=16, height=7, width=9, kernel=3, padding=(1, 0, 2, 1), layout="NHWC",
             flip=True, activation="relu"),
    ConvSpec(batch=2, in_channels=5, out_channels=8, height=6, width=5, kernel=3, padding="valid"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_sampled_configs_match_reference_per_call_and_prepacked(spec, host):
    if why := WINO.supports(spec, host):  # 8 output channels on 16 AVX-512 lanes
        pytest.skip(why)
    space = WINO.space(spec, host)
    configs = [WINO.default(spec, host)] + space.sample(random.Random(spec.key), 3)
    assert {c["tile_m"] for c in space} == {2, 4}
    for config in configs:
        k = convgen.build(spec, host, config, template=WINO.name)
        x, w, *b = random_inputs(spec)
        want = conv2d_reference(spec, x, w, *b)
        np.testing.assert_allclose(k(x, w, *b), want, atol=tolerance(spec))
        np.testing.assert_allclose(k(x, k.pack_weights(w), *b), want, atol=tolerance(spec))


@pytest.mark.parametrize("m,bound", [(2, 3e-6), (4, 3e-5)])
def test_error_stays_within_bounds_on_a_resnet_layer(host, m, bound):
    # 256 channels, 14x14 (ResNet-50 stage 4): max error relative to the output's range.
    # Measured: F(2x2) ~7e-7, F(4x4) ~5e-6; the direct method ~2e-6. Both far inside the
    # tolerance the tuner verifies new bests against.
    spec = workloads.layer("resnet50.r4_3x3")
    config = next(c for c in WINO.space(spec, host) if c["tile_m"] == m)
    arrays = random_inputs(spec)
    want = conv2d_reference(spec, *arrays)
    err = np.abs(convgen.build(spec, host, config, template=WINO.name)(*arrays) - want).max()
    assert err / np.abs(want).max() < bound
    assert err < tolerance(spec)


def test_winograd_serves_only_3x3_stride_1(host):
    assert WINO.supports(SPECS[0].replace(stride=2), host)
    assert WINO.supports(SPECS[0].replace(kernel=5, padding=2), host)
    assert WINO.supports(SPECS[0], host) is None
    # it is never the untuned default: the tuner picks it where it wins
    assert convgen.build(SPECS[0], host, builtin_records=False).template == "x86.direct"


def test_winograd_is_the_untuned_default_where_it_was_measured_to_win():
    from convgen.schedules import candidates

    avx512, avx2 = convgen.get_target("x86-avx512"), convgen.get_target("x86-avx2")
    wide = ConvSpec(in_channels=256, out_channels=256, height=28, width=28, kernel=3, padding=1, layout="NHWC")
    narrow = wide.replace(in_channels=32, out_channels=32)
    # 2.4 MB of weights (4.2 MB transformed): the variant that prefetches them (test_prefetch.py)
    assert [t.name for t in candidates(wide, avx512)][:2] == ["x86.winograd_prefetch", "x86.winograd"]
    assert candidates(narrow, avx512)[0].name == "x86.direct"  # 32 registers: the direct tile wins there
    assert candidates(narrow, avx2)[0].name == "x86.winograd"
    assert candidates(wide.replace(stride=2), avx512)[0].name == "x86.direct_prefetch"  # not served: stride 2


BF16_TARGET = convgen.get_target("x86-avx512-bf16")


def check_bf16_winograd(k, spec):
    """The kernel's own check (Kernel.measure: its metadata's error bound, normwise) passes,
    and, independently, the normwise error against the reference is within the bound."""
    from convgen.schedules.winograd import WinogradBF16X86

    assert k.meta["error_bound"] == WinogradBF16X86.error_bound
    run = k.measure(number=1, repeat=1, min_repeat_ms=0)
    assert run.verified and run.measure == "normwise relative error", run.mismatch
    x, w, *rest = random_inputs(spec, seed=4)
    want = conv2d_reference(spec, x, w, *rest).astype(np.float64)
    for got in (k(x, w, *rest), k(x, k.pack_weights(w), *rest)):
        err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want)
        assert err < WinogradBF16X86.error_bound
    return err


BF16_SPECS = [
    ConvSpec(in_channels=64, out_channels=64, height=14, width=14, kernel=3, padding=1, layout="NHWC",
             dtype="bfloat16", bias=True, activation="relu"),
    ConvSpec(in_channels=32, out_channels=48, height=7, width=9, kernel=3, padding=1, layout="NCHW",
             dtype="bfloat16", output_dtype="float32", residual=True),
]


@pytest.mark.parametrize("spec", BF16_SPECS, ids=lambda s: s.describe())
def test_bf16_winograd_without_the_instruction_holds_its_error_bound(spec, host):
    # the loop nest with vdpbf16ps's step as plain loops: runs on any x86
    from convgen import builder
    from convgen.runtime import Kernel
    from convgen.schedules.winograd import WinogradBF16X86

    if host.family != "x86":
        pytest.skip(f"x86 templates; the host target is {host.name}")
    tmpl, target = WinogradBF16X86(use_instruction=False), convgen.get_target("x86-avx2")
    for config in [tmpl.default(spec, BF16_TARGET)] + tmpl.space(spec, BF16_TARGET).sample(random.Random(2), 2):
        if config["tile_p"] * config["tile_k"] > 16 * 12:
            continue  # an AVX-512 tile spills on AVX2's 16 registers: correct, only slow to build
        executable, packed = builder.compile_module(spec, target, tmpl, config, with_packed_shape=True)
        meta = dict(builder.metadata(spec, target, tmpl, config, "given"), packed_weight_shape=packed)
        check_bf16_winograd(Kernel(meta, executable.mod), spec)


@pytest.mark.skipif(not BF16_TARGET.runs_here(), reason="this CPU has no AVX512_BF16 (vdpbf16ps)")
def test_bf16_winograd_on_vdpbf16ps_is_the_default_where_measured_and_holds_its_bound():
    spec = workloads.layer("resnet50.r4_3x3").replace(layout="NHWC", dtype="bfloat16", bias=True)
    k = convgen.build(spec, BF16_TARGET, builtin_records=False)
    assert k.template == "x86.winograd_bf16"
    err = check_bf16_winograd(k, spec)
    assert err > 1e-3  # not exact to the elementwise tolerance: what the declared bound is for
    few = spec.replace(in_channels=32, out_channels=32)
    assert convgen.build(few, BF16_TARGET, builtin_records=False).template == "x86.direct_bf16"


def test_a_kernel_past_its_error_bound_fails_its_check(host):
    # the bound is what the check holds a kernel to: an exact fp32 kernel given a bound of 0
    # fails it (its sums differ from the reference's in the last bits), with the measure named
    from convgen.timing import measure_kernel

    spec = SPECS[0]
    k = convgen.build(spec, host, builtin_records=False)
    ok = measure_kernel(k.module, spec, k.device, timed=False, error_bound=1e-5)
    bad = measure_kernel(k.module, spec, k.device, timed=False, error_bound=0.0)
    assert ok.verified and bad.verified is False and "normwise relative error" in bad.mismatch
