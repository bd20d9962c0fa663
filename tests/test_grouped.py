"""x86.grouped: grouped convolutions with few channels per group (RegNetY, ResNeXt) vs the reference.

Specs are the networks' layers at reduced spatial size: RegNetY-400MF's 8 channels per group
(104 channels: 13 groups, so the last block of groups overlaps the one before), ResNeXt-50
32x4d's 4 per group, stride 2, dilation, 1x1 and 5x5 kernels, both layouts, each epilogue,
batch 2, and 24 channels (off AVX-512's 16 lanes).
"""

import random

import numpy as np
import pytest

import convgen
from convgen import ConvSpec
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.schedules import all_templates, candidates

from .conftest import check_kernel

GROUPED = "x86.grouped"

SPECS = [
    ConvSpec(in_channels=104, out_channels=104, height=9, width=9, kernel=3, padding=1, groups=13, layout="NHWC"),
    ConvSpec(in_channels=128, out_channels=128, height=10, width=10, kernel=3, padding=1, groups=32, layout="NHWC",
             bias=True, activation="relu"),
    ConvSpec(in_channels=48, out_channels=48, height=11, width=11, kernel=3, stride=2, padding=1, groups=6,
             layout="NHWC", residual=True, activation="relu6"),
    ConvSpec(in_channels=104, out_channels=104, height=9, width=8, kernel=3, padding=2, dilation=2, groups=13,
             bias=True, residual=True),
    ConvSpec(in_channels=64, out_channels=64, height=9, width=9, kernel=5, padding=2, groups=16, layout="NHWC",
             flip=True),
    ConvSpec(in_channels=24, out_channels=24, height=7, width=7, kernel=3, padding="same", groups=3),
    ConvSpec(batch=2, in_channels=64, out_channels=128, height=6, width=7, kernel=1, groups=16, layout="NHWC",
             bias=True),
    ConvSpec(in_channels=256, out_channels=256, height=7, width=7, kernel=3, stride=2, padding=1, groups=32,
             activation="relu"),
]

TARGETS = ["host", "x86-avx2"]


def _target(name):
    target = convgen.get_target(name)
    if not target.runs_here():
        pytest.skip(f"this machine cannot run {name} kernels")
    return target


def _check_prepacked(kernel, spec):
    """``k.pack_weights(w)`` then ``k(x, packed)`` against the reference."""
    arrays = random_inputs(spec, seed=1)
    packed = kernel.pack_weights(arrays[1])
    got = kernel(arrays[0], packed, *arrays[2:])
    np.testing.assert_allclose(got, conv2d_reference(spec, *arrays), rtol=0, atol=tolerance(spec))


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_default_and_sampled_configs_match_reference(spec, target_name):
    target = _target(target_name)
    tmpl = all_templates()[GROUPED]
    assert tmpl.serves(spec, target) is None
    space = tmpl.space(spec, target)
    default = tmpl.default(spec, target)
    assert default in space
    samples = [c for c in space.sample(random.Random(spec.key), 2) if c != default]
    for i, config in enumerate([default] + samples):
        kernel = convgen.build(spec, target, config, template=GROUPED, builtin_records=False)
        assert kernel.meta["packed_weight_shape"], "the kernel keeps its weights packed"
        check_kernel(kernel, spec)
        if i < 2:
            _check_prepacked(kernel, spec)


@pytest.mark.parametrize("target_name", TARGETS)
def test_grouped_is_the_default_where_direct_does_not_serve(target_name):
    # x86.direct serves a group whose filters fill whole vectors (RegNet's 8 on AVX2's 8
    # lanes) and was faster there: it ranks first, this template second
    target = convgen.get_target(target_name)
    for spec in SPECS:
        names = [t.name for t in candidates(spec, target)]
        direct = spec.out_per_group % target.vector_lanes == 0
        assert names[0] == ("x86.direct" if direct else GROUPED), (spec.describe(), names)
        assert GROUPED in names[:2] and "cpu.generic" in names


def test_default_build_of_a_regnet_layer_runs_grouped_and_prepacked(host):
    spec = SPECS[0].replace(bias=True, activation="relu6")
    kernel = convgen.build(spec, host, builtin_records=False)
    if spec.out_per_group % host.vector_lanes:
        assert kernel.meta["template"] == GROUPED
    check_kernel(kernel, spec)
    _check_prepacked(kernel, spec)


def test_what_it_does_not_serve_says_why(host):
    tmpl = all_templates()[GROUPED]
    assert "depthwise" in tmpl.serves(ConvSpec(in_channels=16, out_channels=16, height=8, width=8, groups=16), host)
    assert "not grouped" in tmpl.serves(ConvSpec(in_channels=16, out_channels=16, height=8, width=8), host)
    # 2 groups of 4 filters cannot fill a vector (a vector holds the same filters of whole groups)
    few = ConvSpec(in_channels=8, out_channels=8, height=8, width=8, groups=2)
    assert "cannot fill" in tmpl.serves(few, convgen.get_target("x86-avx512"))
    with pytest.raises(convgen.ConfigError, match="cannot fill"):
        convgen.build(few, "x86-avx512", template=GROUPED)


def test_illegal_tile_is_a_config_error():
    avx2 = convgen.get_target("x86-avx2")  # 16 ymm
    spec = SPECS[1]
    tmpl = all_templates()[GROUPED]
    config = dict(tmpl.default(spec, avx2), tile_j=1, tile_jb=4, tile_ow=5, tile_oh=2)  # 40 accumulators
    with pytest.raises(convgen.ConfigError, match="register"):
        convgen.build(spec, avx2, config, template=GROUPED)
