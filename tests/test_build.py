"""Kernels vs the numpy reference: property tests over random specs, sampled configs per template."""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convgen
from convgen import ConvSpec
from convgen.builder import compile_module
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.schedules import all_templates, candidates

from .conftest import check_kernel


@st.composite
def specs(draw, max_channels=12):
    groups = draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    cg = draw(st.integers(1, 4))
    kg = draw(st.integers(1, 4))
    if groups == "dw":
        groups, cg, kg = draw(st.integers(2, max_channels)), 1, draw(st.sampled_from([1, 1, 2]))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2])))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.integers(0, 2),
            st.tuples(st.integers(0, 2), st.integers(0, 2)),
            st.tuples(*[st.integers(0, 3)] * 4),
        )
    )
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    height = draw(st.integers(max(eff[0] - 2, 1), 14))
    width = draw(st.integers(max(eff[1] - 2, 1), 14))
    fields = dict(
        batch=draw(st.integers(1, 2)), in_channels=cg * groups, out_channels=kg * groups, height=height,
        width=width, kernel=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
        layout=draw(st.sampled_from(["NCHW", "NHWC"])), bias=draw(st.booleans()), residual=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "relu", "relu6", "gelu"])), flip=draw(st.booleans()),
    )
    try:
        return ConvSpec(**fields)
    except ValueError:  # kernel larger than the padded input: draw again
        from hypothesis import assume

        assume(False)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs())
def test_any_valid_spec_default_build_matches_reference(spec):
    check_kernel(convgen.build(spec, "host", builtin_records=False), spec)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=st.data())
def test_generic_template_serves_every_spec(spec, data):
    tmpl = all_templates()["cpu.generic"]
    host = convgen.get_target("host")
    config = data.draw(st.sampled_from(list(tmpl.space(spec, host))))
    check_kernel(convgen.build(spec, "host", config, template="cpu.generic"), spec)


# Workloads the specialised templates serve (on every x86 target: AVX2's 8 lanes and
# AVX-512's 16; 24 and 20 channels are padded to whole vectors inside the kernels).
TEMPLATE_SPECS = [
    ConvSpec(in_channels=16, out_channels=24, height=8, width=8, kernel=1, bias=True, residual=True, activation="relu"),
    ConvSpec(in_channels=8, out_channels=20, height=9, width=7, kernel=3, padding=1, layout="NHWC", residual=True),
    ConvSpec(in_channels=20, out_channels=20, height=9, width=9, kernel=3, padding=1, groups=20, residual=True,
             activation="relu"),
    ConvSpec(in_channels=16, out_channels=32, height=12, width=14, kernel=3, padding=1),
    ConvSpec(in_channels=8, out_channels=16, height=9, width=9, kernel=3, stride=2, padding=(1, 0, 2, 1), bias=True, activation="relu"),
    ConvSpec(in_channels=24, out_channels=16, height=8, width=8, kernel=1, layout="NHWC", bias=True),
    ConvSpec(in_channels=24, out_channels=32, height=8, width=8, kernel=1, layout="NHWC", bias=True, activation="gelu"),
    ConvSpec(in_channels=3, out_channels=16, height=15, width=15, kernel=5, stride=2, padding=2, flip=True),
    ConvSpec(in_channels=8, out_channels=32, height=7, width=10, kernel=(3, 2), dilation=(2, 1), padding="same", groups=2, layout="NHWC"),
    ConvSpec(batch=2, in_channels=32, out_channels=32, height=10, width=10, kernel=3, padding=1, groups=32, bias=True),
    ConvSpec(in_channels=16, out_channels=16, height=11, width=12, kernel=3, stride=2, padding="same", groups=16, layout="NHWC", activation="relu"),
    ConvSpec(in_channels=16, out_channels=32, height=9, width=16, kernel=3, stride=(2, 1), padding=(1, 0, 2, 1), groups=16),
    ConvSpec(in_channels=24, out_channels=24, height=14, width=14, kernel=5, padding=2, groups=24, bias=True),
]


@pytest.mark.parametrize("spec", TEMPLATE_SPECS, ids=lambda s: s.describe())
def test_sampled_configs_of_every_template_match_reference(spec, host):
    found = candidates(spec, host)
    assert len(found) >= 2, "a specialised template should serve this spec"
    rng = random.Random(spec.key)
    for tmpl in found:
        space = tmpl.space(spec, host)
        configs = [tmpl.default(spec, host)] + space.sample(rng, 3)
        for config in configs:
            check_kernel(convgen.build(spec, host, config, template=tmpl.name), spec)


# depthwise layers for every place of the padded input: both layouts, stride 2, channels off
# the lanes (20), batch 2, no padding (NCHW still makes a blocked copy), an epilogue
DEPTHWISE_SPECS = [
    ConvSpec(in_channels=32, out_channels=32, height=9, width=11, kernel=3, padding=1, groups=32, layout="NHWC"),
    ConvSpec(in_channels=32, out_channels=32, height=9, width=11, kernel=3, padding=1, groups=32),
    ConvSpec(batch=2, in_channels=20, out_channels=20, height=10, width=10, kernel=3, stride=2, padding=1, groups=20,
             layout="NHWC", bias=True, activation="relu6"),
    ConvSpec(in_channels=20, out_channels=20, height=10, width=10, kernel=3, stride=2, padding=(0, 1, 1, 0), groups=20,
             residual=True),
    ConvSpec(in_channels=16, out_channels=16, height=8, width=8, kernel=3, padding=0, groups=16),
]


@pytest.mark.parametrize("spec", DEPTHWISE_SPECS, ids=lambda s: s.describe())
def test_every_place_of_the_depthwise_padded_input_matches_reference(spec, host):
    tmpl = all_templates()["x86.depthwise"]
    default = tmpl.default(spec, host)
    places = tmpl.space(spec, host)["pad"].values
    assert places == ("copy", "row", "tile")
    for place in places:
        config = dict(default, pad=place)
        check_kernel(convgen.build(spec, host, config, template=tmpl.name), spec)



# NHWC depthwise split by output rows (x86.depthwise_nhwc): stride 2 with channels off the
# lanes and batch 2, dilation 2, 5x5 and 7x7 windows, asymmetric padding, none, bf16 data
NHWC_DEPTHWISE_SPECS = [
    ConvSpec(batch=2, in_channels=20, out_channels=20, height=10, width=10, kernel=3, stride=2, padding=1, groups=20,
             layout="NHWC", bias=True, activation="relu6"),
    ConvSpec(in_channels=32, out_channels=32, height=12, width=9, kernel=3, padding=2, dilation=2, groups=32,
             layout="NHWC", residual=True),
    ConvSpec(in_channels=24, out_channels=24, height=9, width=14, kernel=(5, 7), padding=(2, 3, 1, 0), groups=24,
             layout="NHWC", flip=True),
    ConvSpec(in_channels=16, out_channels=16, height=8, width=8, kernel=3, groups=16, layout="NHWC", bias=True),
    ConvSpec(in_channels=48, out_channels=48, height=7, width=7, kernel=3, padding=1, groups=48, layout="NHWC",
             dtype="bfloat16", bias=True, activation="relu"),
]


@pytest.mark.parametrize("spec", NHWC_DEPTHWISE_SPECS, ids=lambda s: s.describe())
def test_row_split_nhwc_depthwise_matches_reference_for_every_padding_and_partition(spec, host):
    tmpl = all_templates()["x86.depthwise_nhwc"]
    space = tmpl.space(spec, host)
    assert space["pad"].values == (("inline", "tile") if any(spec.padding) else ("inline",))
    default = tmpl.default(spec, host)
    assert default in space
    for pad in space["pad"].values:
        for partition in (False, True):
            config = dict(default, pad=pad, partition=partition)
            check_kernel(convgen.build(spec, host, config, template=tmpl.name), spec)
    # the longest pixel tile too (a ragged-free divisor of the width, up to half the registers)
    widest = dict(default, tile_ow=max(w for w in space["tile_ow"].values if dict(default, tile_ow=w) in space))
    check_kernel(convgen.build(spec, host, widest, template=tmpl.name), spec)


def test_nhwc_depthwise_defaults_to_the_row_split_template(host):
    nhwc = ConvSpec(in_channels=32, out_channels=32, height=14, width=14, kernel=3, padding=1, groups=32, layout="NHWC")
    assert candidates(nhwc, host)[0].name == "x86.depthwise_nhwc"
    assert "x86.depthwise_nhwc" not in [t.name for t in candidates(nhwc.replace(layout="NCHW"), host)]

def test_unpadded_nhwc_depthwise_has_no_copy_to_place(host):
    spec = ConvSpec(in_channels=16, out_channels=16, height=8, width=8, kernel=3, groups=16, layout="NHWC")
    tmpl = all_templates()["x86.depthwise"]
    assert tmpl.space(spec, host)["pad"].values == ("copy",)
    with pytest.raises(convgen.ConfigError, match="pad"):
        convgen.build(spec, host, dict(tmpl.default(spec, host), pad="row"), template=tmpl.name)


def test_a_1x1_depthwise_defaults_to_one_pixel_of_the_widest_channel_tile_and_matches_reference(host):
    # convgen.torch's int8 quantizer (weights 1/scale, bias the zero point, u8 out) and a float
    # one with an epilogue, channels off the lanes, batch 2: nothing to reuse across pixels,
    # so the default reads each pixel's channels as one run (x86.DepthwiseX86.default)
    tmpl = all_templates()["x86.depthwise"]
    quantizer = ConvSpec(in_channels=64, out_channels=64, height=7, width=9, kernel=1, groups=64, layout="NHWC",
                         output_dtype="uint8", bias=True)
    scale = ConvSpec(batch=2, in_channels=40, out_channels=40, height=5, width=6, kernel=1, groups=40, layout="NHWC",
                     bias=True, activation="relu6")
    for spec in (quantizer, scale):
        config = tmpl.default(spec, host)
        assert config["tile_ow"] == 1 and config["tile_c"] == max(tmpl.space(spec, host)["tile_c"].values)
        k = convgen.build(spec, host, config, template=tmpl.name)
        if spec is scale:
            check_kernel(k, spec)
            continue
        arrays = random_inputs(spec, seed=3)
        got, want = k(*arrays), conv2d_reference(spec, *arrays)
        assert got.dtype == want.dtype == np.uint8
        # rounding half to even after a fused multiply-add may land one step away at a half
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and np.mean(got == want) > 0.99


def test_avx512_kernels_compile_here(host):
    # This machine may lack AVX-512: compile (no run) the default of each template.
    t = convgen.get_target("x86-avx512")
    for spec in TEMPLATE_SPECS[:3]:
        for tmpl in candidates(spec, t):
            compile_module(spec, t, tmpl, tmpl.default(spec, t))


def test_illegal_config_is_a_clear_config_error():
    # x86-avx2 (16 ymm; also builds on AVX-512 hosts): 32 channels = 4 vectors x 14 pixels
    # needs 4*14 accumulators, far over the register file
    avx2 = convgen.get_target("x86-avx2")
    spec = ConvSpec(in_channels=16, out_channels=32, height=12, width=14, kernel=3, padding=1)
    with pytest.raises(convgen.ConfigError, match="tile_ow"):
        convgen.build(spec, avx2, {"tile_oc": 8, "tile_ic": 8, "tile_ow": 5, "tile_oh": 1,
                                   "reduce_order": "ic_kh_kw", "unroll_kw": False}, template="x86.direct")
    with pytest.raises(convgen.ConfigError, match="register"):
        convgen.build(spec, avx2, {"tile_oc": 32, "tile_ic": 8, "tile_ow": 14, "tile_oh": 1,
                                   "reduce_order": "ic_kh_kw", "unroll_kw": False}, template="x86.direct")


def test_template_that_cannot_serve_says_why(host):
    # 5 filters per group: the blocked template pads channels only for groups == 1 and depthwise
    odd = ConvSpec(in_channels=6, out_channels=10, height=8, width=8, kernel=3, groups=2)
    with pytest.raises(convgen.ConfigError, match="multiple of"):
        convgen.build(odd, host, template="x86.direct")
    check_kernel(convgen.build(odd, host), odd)  # the generic template serves it


def test_unsupported_dtype_names_the_target():
    spec = ConvSpec(in_channels=8, out_channels=8, height=8, width=8, dtype="float16")
    with pytest.raises(convgen.TargetError, match="x86-avx2 does not support dtype float16"):
        convgen.build(spec, "x86-avx2")


def test_output_of_degenerate_padding_rows_is_bias_only(host):
    # padding wider than the kernel: the border rows see only zeros
    spec = ConvSpec(in_channels=8, out_channels=8, height=4, width=4, kernel=1, padding=2, bias=True)
    k = convgen.build(spec, host)
    y = check_kernel(k, spec)
    assert np.all(y[:, :, 0, :] == y[:, :, 0, :1])


@pytest.mark.parametrize("target_name", ["x86-avx2", "x86-avx512"])
def test_no_preset_layer_falls_to_the_generic_template(target_name):
    from convgen import workloads

    target = convgen.get_target(target_name)
    for name, spec in workloads.all_layers().items():
        for layout in ("NCHW", "NHWC"):
            served = candidates(spec.replace(layout=layout), target)
            assert served[0].name != "cpu.generic", f"{name} {layout} on {target_name}: only the generic template"


def test_padded_channel_lanes_never_reach_the_output(host):
    # 20 filters on 16 (AVX-512) or 8 (AVX2) lanes: the last block's tail lanes are padding.
    # The output is poisoned first: an unwritten channel stays NaN, a padded lane written
    # past the end would land in the next pixel's channels and change them.
    spec = ConvSpec(in_channels=8, out_channels=20, height=6, width=5, kernel=3, padding=1, layout="NHWC",
                    bias=True, residual=True, activation="relu")
    x, w, b, r = random_inputs(spec)
    want = conv2d_reference(spec, x, w, b, r)
    for tmpl in candidates(spec, host):
        k = convgen.build(spec, host, template=tmpl.name, builtin_records=False)
        out = np.full(spec.output_shape, np.nan, np.float32)
        k(x, w, b, r, out=out)
        np.testing.assert_allclose(out, want, atol=tolerance(spec))
        if k.meta.get("packed_weight_shape"):
            out[...] = np.nan
            k(x, k.pack_weights(w), b, r, out=out)
            np.testing.assert_allclose(out, want, atol=tolerance(spec))


# dilated layers on small maps (DeepLabV3's ASPP): most taps read only padding, and the direct
# templates skip them per register tile (schedules/cpu.py); stride 2, NCHW, batch 2, a ragged width
DEAD_TAP_SPECS = [
    ConvSpec(in_channels=16, out_channels=32, height=12, width=12, kernel=3, padding=6, dilation=6, layout="NHWC",
             bias=True, activation="relu"),
    ConvSpec(batch=2, in_channels=16, out_channels=24, height=11, width=9, kernel=3, padding=(5, 4, 5, 4),
             dilation=(5, 4), stride=2, residual=True),
    ConvSpec(in_channels=8, out_channels=16, height=17, width=17, kernel=3, padding=9, dilation=9, layout="NHWC"),
]


@pytest.mark.parametrize("spec", DEAD_TAP_SPECS, ids=lambda s: s.describe())
def test_taps_that_read_only_padding_are_skipped_and_the_sums_stay_exact(spec, host):
    from convgen.builder import schedule
    from convgen.schedules.cpu import DEAD_TAP_SHARE, dead_tap_share

    if host.family != "x86":
        pytest.skip(f"x86.direct; the host target is {host.name}")
    tmpl = all_templates()["x86.direct"]
    configs = [tmpl.default(spec, host)] + tmpl.space(spec, host).sample(random.Random(spec.key), 4)
    x, w, *rest = random_inputs(spec)
    want = conv2d_reference(spec, x, w, *rest)
    for config in configs:
        guarded = dead_tap_share(spec, config["tile_oh"], config["tile_ow"]) >= DEAD_TAP_SHARE
        assert ("if " in schedule(spec, host, tmpl, config)["main"].script()) == guarded
        k = convgen.build(spec, host, config, template=tmpl.name)
        np.testing.assert_allclose(k(x, w, *rest), want, rtol=0, atol=tolerance(spec))
        if k.meta.get("packed_weight_shape"):
            np.testing.assert_allclose(k(x, k.pack_weights(w), *rest), want, rtol=0, atol=tolerance(spec))
    assert dead_tap_share(spec, configs[0]["tile_oh"], configs[0]["tile_ow"]) >= DEAD_TAP_SHARE  # the default skips


def test_the_dead_tap_share_counts_the_multiply_adds_that_read_padding():
    from convgen.schedules.cpu import dead_tap_share

    for spec in DEAD_TAP_SPECS + [ConvSpec(in_channels=8, out_channels=8, height=56, width=56, kernel=3, padding=1)]:
        # one-pixel tiles skip exactly the (pixel, tap) pairs outside the image: count them
        rows = np.arange(spec.out_height)[:, None] * spec.stride[0] + np.arange(spec.kernel[0]) * spec.dilation[0]
        cols = np.arange(spec.out_width)[:, None] * spec.stride[1] + np.arange(spec.kernel[1]) * spec.dilation[1]
        row_in = (rows >= spec.padding[0]) & (rows < spec.padding[0] + spec.height)
        col_in = (cols >= spec.padding[1]) & (cols < spec.padding[1] + spec.width)
        live = row_in[:, None, :, None] & col_in[None, :, None, :]
        assert dead_tap_share(spec, 1, 1) == pytest.approx(1 - live.mean())
    # ResNet's 3x3 layers stay below the share: their kernels are the code they were tuned as
    assert dead_tap_share(DEAD_TAP_SPECS[0].replace(height=14, width=14, padding=1, dilation=1), 1, 1) < 0.125
