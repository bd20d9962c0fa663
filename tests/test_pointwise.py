"""x86.pointwise (1x1 convolutions on NHWC data as a GEMM) against the numpy reference."""

from __future__ import annotations

import random

import numpy as np
import pytest

import convgen
from convgen import ConvSpec
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.schedules import candidates, get_template

SPECS = [
    ConvSpec(in_channels=64, out_channels=48, height=9, width=7, kernel=1, layout="NHWC", bias=True, residual=True,
             activation="relu"),
    ConvSpec(in_channels=24, out_channels=40, height=11, width=10, kernel=1, stride=2, layout="NHWC",
             activation="relu6"),  # 40 filters: whole vectors padded on both ISAs
    ConvSpec(batch=2, in_channels=17, out_channels=32, height=5, width=6, kernel=1, layout="NHWC", bias=True),
]
TEMPLATE = get_template("x86.pointwise")


def targets():
    out = [convgen.get_target("host")]
    avx2 = convgen.get_target("x86-avx2")
    if avx2.runs_here() and avx2 != out[0]:
        out.append(avx2)
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_default_and_sampled_configs_match_the_reference_both_entry_points(spec):
    for target in targets():
        if target.family != "x86":
            pytest.skip(f"x86.pointwise is for x86; the host target is {target.name}")
        space = TEMPLATE.space(spec, target)
        configs = [TEMPLATE.default(spec, target)] + space.sample(random.Random(spec.digest), 3)
        assert {"channels", "pixels"} <= {c["order"] for c in space}  # both orders are in the space
        for config in configs:
            k = convgen.build(spec, target, config, template="x86.pointwise")
            arrays = random_inputs(spec, seed=2)
            want = conv2d_reference(spec, *arrays)
            np.testing.assert_allclose(k(*arrays), want, rtol=0, atol=tolerance(spec), err_msg=f"{target.name} {config}")
            packed = k.pack_weights(arrays[1])
            got = k(arrays[0], packed, *arrays[2:])
            np.testing.assert_allclose(got, want, rtol=0, atol=tolerance(spec), err_msg=f"{target.name} {config} prepacked")


def test_it_serves_unpadded_nhwc_1x1_only_and_is_the_default_there():
    host = convgen.get_target("host")
    if host.family != "x86":
        pytest.skip(f"x86.pointwise is for x86; the host target is {host.name}")
    spec = SPECS[0]
    assert candidates(spec, host)[0].name == "x86.pointwise"
    assert "NCHW" in TEMPLATE.serves(spec.replace(layout="NCHW"), host)
    assert "padded" in TEMPLATE.serves(spec.replace(padding=1), host)
    assert "1x1" in TEMPLATE.serves(spec.replace(kernel=3, padding=1), host)


@pytest.mark.parametrize("template,spec", [
    ("x86.pointwise", ConvSpec(in_channels=32, out_channels=48, height=17, width=17, kernel=1, layout="NHWC", bias=True,
                               activation="relu")),
    ("x86.direct", ConvSpec(in_channels=24, out_channels=32, height=17, width=17, kernel=(1, 7), padding=(0, 3),
                            layout="NHWC", residual=True)),
    ("x86.direct", ConvSpec(in_channels=16, out_channels=16, height=13, width=17, kernel=(7, 1), padding=(3, 0),
                            layout="NCHW", bias=True)),
], ids=lambda x: x if isinstance(x, str) else x.describe())
def test_ragged_tiles_on_prime_widths_match_the_reference(template, spec):
    # 17 has no divisor worth a tile: the space offers tiles that leave a shorter last one
    from convgen.schedules.cpu import needs_partition

    target = convgen.get_target("host")
    if target.family != "x86":
        pytest.skip(f"{template} is for x86; the host target is {target.name}")
    tmpl = get_template(template)
    space = tmpl.space(spec, target)
    assert 8 in space["tile_ow"].values and 17 % 8
    ragged = [c for c in space if needs_partition(spec, c)]
    for config in [tmpl.default(spec, target)] + random.Random(1).sample(ragged, 3):
        k = convgen.build(spec, target, config, template=template)
        arrays = random_inputs(spec, seed=4)
        np.testing.assert_allclose(k(*arrays), conv2d_reference(spec, *arrays), rtol=0, atol=tolerance(spec),
                                   err_msg=str(config))
