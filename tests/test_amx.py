"""AMX tile templates (``x86.amx_int8``, ``x86.amx_bf16``): spaces, compilation, exact results.

Spaces and the tile budget are plain data (no TVM, no AMX); the kernels compile on any
machine (the x86-amx target's code); they run where the CPU has AMX (and Linux grants its
tile state), against the numpy reference: int8 bit for bit on full-range data, bf16 to fp32
rounding on bf16 values. Elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import convgen
from convgen import ConvSpec
from convgen.arrays import numpy_dtype
from convgen.reference import conv2d_reference, random_inputs, relative_tolerance, tolerance
from convgen.schedules import get_template
from convgen.schedules.x86_amx import TILES, TILE_N, tile_shapes, tiles_used

AMX = convgen.get_target("x86-amx")
RUNS = AMX.runs_here()
WHY = "this CPU has no AMX (amx_tile, amx_int8, amx_bf16), or Linux did not grant its tile state"

INT8 = [
    # 1x1, two rows of tiles, a residual and ReLU on s32 sums
    ConvSpec(in_channels=64, out_channels=32, height=8, width=8, kernel=1, layout="NHWC", dtype="uint8",
             bias=True, residual=True, activation="relu"),
    # 3x3 padded: taps inside the tile product; the padding holds a zero point
    ConvSpec(in_channels=64, out_channels=64, height=10, width=10, kernel=3, padding=1, layout="NHWC", dtype="uint8",
             data_zero_point=7),
    # stride 2 (a tile row is every other pixel), 48 filters (three C tiles), batch 2
    ConvSpec(batch=2, in_channels=64, out_channels=48, height=14, width=14, kernel=3, padding=1, stride=2,
             layout="NHWC", dtype="uint8"),
    # dilation 2; 96 channels (tile rows of 48 bytes); 24 filters padded to 32
    ConvSpec(in_channels=96, out_channels=24, height=9, width=9, kernel=3, padding=2, dilation=2, layout="NHWC",
             dtype="uint8", bias=True),
    # a 7-row map: blocks of 2 or 3 rows compute rows past it (read from the bottom padding)
    ConvSpec(in_channels=64, out_channels=32, height=7, width=7, kernel=3, padding=1, layout="NHWC", dtype="uint8",
             bias=True, activation="relu"),
    ConvSpec(in_channels=128, out_channels=32, height=7, width=7, kernel=1, layout="NHWC", dtype="uint8"),
    # requantized to u8 with a u8 residual in its own scale: the int8 model's blocks
    ConvSpec(in_channels=32, out_channels=64, height=7, width=7, kernel=1, layout="NHWC", dtype="uint8",
             output_dtype="uint8", bias=True, residual=True, residual_dtype="uint8", activation="relu"),
]
BF16 = [
    ConvSpec(in_channels=64, out_channels=32, height=8, width=8, kernel=1, layout="NHWC", dtype="bfloat16",
             activation="relu6"),
    ConvSpec(in_channels=32, out_channels=48, height=9, width=9, kernel=3, padding=1, layout="NHWC",
             dtype="bfloat16", output_dtype="float32", bias=True, residual=True),
    ConvSpec(in_channels=48, out_channels=32, height=11, width=11, kernel=3, padding=1, stride=2, layout="NHWC",
             dtype="bfloat16"),
]


# the folded stems (x86.amx_bf16_stem, x86.amx_int8_stem): few input channels, a row of taps a tile row
STEMS = [
    # ResNet's: 7 taps x 3 channels = 21 of a row's 32 bf16; stride 2, padding 3
    ConvSpec(in_channels=3, out_channels=64, height=30, width=30, kernel=7, stride=2, padding=3, layout="NHWC",
             dtype="bfloat16", bias=True, activation="relu"),
    # MobileNet's: 3x3 stride 2, 32 filters; batch 2, float32 output
    ConvSpec(batch=2, in_channels=3, out_channels=32, height=17, width=16, kernel=3, stride=2, padding=1,
             layout="NHWC", dtype="bfloat16", output_dtype="float32", activation="relu6"),
    # one channel, dilation 2 (a run of taps 2 pixels apart), a residual
    ConvSpec(in_channels=1, out_channels=16, height=12, width=12, kernel=5, padding=4, dilation=2, layout="NHWC",
             dtype="bfloat16", residual=True),
]


STEMS_INT8 = [
    # ResNet's in u8: 21 of a row's 64 bytes; the padding holds the zero point
    ConvSpec(in_channels=3, out_channels=64, height=30, width=30, kernel=7, stride=2, padding=3, layout="NHWC",
             dtype="uint8", data_zero_point=9),
    # requantized to u8 as the int8 model's stem writes it; 4 channels x 3 taps, dilation 2
    ConvSpec(in_channels=4, out_channels=32, height=12, width=12, kernel=3, padding=2, dilation=2, layout="NHWC",
             dtype="uint8", output_dtype="uint8", bias=True, activation="relu"),
]


def full_range(spec: ConvSpec, seed: int) -> list[np.ndarray]:
    """u8 data 0..255 and s8 weights -128..127 (where int16 pair sums would saturate)."""
    arrays = random_inputs(spec, seed)
    rng = np.random.default_rng(seed)
    arrays[0] = rng.integers(0, 256, size=spec.input_shape).astype(np.uint8)
    arrays[1] = rng.integers(-128, 128, size=spec.weight_shape).astype(np.int8)
    return arrays


def configs(tmpl, spec, n=2):
    """The default, ``n`` samples, and for a padded spec the padding copied both ways
    (a stage of its own; inside each task of rows)."""
    space = tmpl.space(spec, AMX)
    default = tmpl.default(spec, AMX)
    both = [{**default, "order": "pixels", "pad": pad} for pad in ("copy", "task")] if "pad" in space.names else []
    return [default] + space.sample(random.Random(7), n) + [space.check(c) for c in both if c != default]


@pytest.mark.parametrize("name", ["x86.amx_int8", "x86.amx_bf16"])
def test_the_tile_budget_and_spaces_are_data(name):
    """Every config of the space keeps C, A and B tiles within the eight registers; the
    space is listed and hashed without TVM or AMX; the default lies in it."""
    tmpl = get_template(name)
    assert all(tiles_used(th, nb) <= TILES for th, nb in tile_shapes(12)) and (4, 1) in tile_shapes(12)
    for spec in INT8 + BF16:
        spec = spec.replace(dtype="uint8" if name.endswith("int8") else "bfloat16", output_dtype=None,
                            residual_dtype=None, data_zero_point=0) if spec.dtype != tmpl.dtypes[0] else spec
        assert tmpl.serves(spec, AMX) is None, spec.describe()
        space = tmpl.space(spec, AMX)
        configs_ = list(space)
        assert configs_ and space.hash == tmpl.space(spec, AMX).hash
        for c in configs_:
            th, nb = c["tile_oh"], c["tile_oc"] // TILE_N
            assert tiles_used(th, nb) <= TILES and c["tile_ow"] <= 16
        assert tmpl.default(spec, AMX) in configs_


def test_the_tile_templates_refuse_what_they_cannot_serve():
    tmpl = get_template("x86.amx_int8")
    spec = INT8[0]
    assert "AMX" in tmpl.serves(spec, convgen.get_target("x86-avx512-bf16"))
    assert "NCHW" in tmpl.serves(spec.replace(layout="NCHW"), AMX)
    assert "input channels" in tmpl.serves(spec.replace(in_channels=3, residual=False), AMX)  # an RGB stem: VNNI's
    assert "grouped" in tmpl.serves(spec.replace(groups=2, residual=False), AMX)
    assert get_template("x86.amx_bf16").serves(spec, AMX) is not None  # uint8 data


def test_amx_kernels_compile_anywhere_with_tile_instructions():
    """The x86-amx target's code builds on any machine: the tile product, the tile
    configuration and the operating system's leave asked for in the library."""
    from convgen.builder import compile_module

    for spec, name, op in ((INT8[1], "x86.amx_int8", "tdpbusd"), (BF16[0], "x86.amx_bf16", "tdpbf16ps")):
        tmpl = get_template(name)
        asm = compile_module(spec, AMX, tmpl, tmpl.default(spec, AMX)).mod.inspect_source("asm")
        assert op in asm and "ldtilecfg" in asm and "tilerelease" in asm and "tilestored" in asm


@pytest.mark.skipif(not RUNS, reason=WHY)
@pytest.mark.parametrize("name,spec", [("x86.amx_int8", s) for s in INT8] + [("x86.amx_int8_stem", s) for s in STEMS_INT8],
                         ids=lambda v: v if isinstance(v, str) else v.describe())
def test_tdpbusd_kernels_are_exact_on_full_range_data(name, spec):
    tmpl = get_template(name)
    assert tmpl.serves(spec, AMX) is None
    arrays = full_range(spec, 3)
    want = conv2d_reference(spec, *arrays)
    for config in configs(tmpl, spec):
        k = convgen.build(spec, AMX, config, template=name)
        got = k(*arrays)
        if spec.scaled:  # float epilogue: within one step where a fused multiply-add rounds the other way
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=tolerance(spec),
                                       rtol=relative_tolerance(spec))
            assert (got == want).mean() > 0.99
        else:
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(k(arrays[0], k.pack_weights(arrays[1]), *arrays[2:]), got)


@pytest.mark.skipif(not RUNS, reason=WHY)
@pytest.mark.parametrize("name,spec", [("x86.amx_bf16", s) for s in BF16] + [("x86.amx_bf16_stem", s) for s in STEMS],
                         ids=lambda v: v if isinstance(v, str) else v.describe())
def test_tdpbf16ps_kernels_match_the_bf16_reference(name, spec):
    tmpl = get_template(name)
    arrays = random_inputs(spec, seed=5)
    want = conv2d_reference(spec, *arrays).astype(np.float64)
    for config in configs(tmpl, spec):
        k = convgen.build(spec, AMX, config, template=name)
        got = k(*arrays)
        assert got.dtype == numpy_dtype(spec.out_dtype)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=relative_tolerance(spec), atol=tolerance(spec))
        np.testing.assert_array_equal(k(arrays[0], k.pack_weights(arrays[1]), *arrays[2:]), got)


def test_an_amx_kernel_is_refused_clearly_where_the_cpu_lacks_the_feature(tmp_path, monkeypatch):
    import convgen.target as target_module

    spec = INT8[1]
    path = str(tmp_path / "amx.so")
    convgen.build(spec, AMX, template="x86.amx_int8").export(path)  # builds anywhere
    monkeypatch.setattr(target_module, "host_cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512_vnni"})
    k = convgen.load(path)
    with pytest.raises(convgen.KernelError, match="amx_tile"):
        k(*full_range(spec, 0))


def test_records_tuned_without_the_tile_template_do_not_outrank_it():
    """A uint8 record tuned for x86-avx512-bf16 (which has no AMX) serves that target, but on
    x86-amx the tile template's default does: the record never competed with it. Float32
    records of the parent still serve (no tile template for float32)."""
    from convgen.records import Record, find_config, make_record

    u8 = INT8[1]
    vnni = get_template("x86.direct_vnni")
    parent = convgen.get_target("x86-avx512-bf16")
    rec = Record(make_record(u8, parent, vnni, vnni.default(u8, parent), times=[1e-4] * 3))
    assert find_config(u8, parent, [rec])[0].name == "x86.direct_vnni"
    assert find_config(u8, AMX, [rec]) is None
    # asked for by name, the template keeps its records on the child target too
    assert find_config(u8, AMX, [rec], template="x86.direct_vnni")[0].name == "x86.direct_vnni"
    fp32 = u8.replace(dtype="float32", data_zero_point=0)
    direct = get_template("x86.direct")
    rec32 = Record(make_record(fp32, parent, direct, direct.default(fp32, parent), times=[1e-4] * 3))
    assert find_config(fp32, AMX, [rec32])[0].name == "x86.direct"


@pytest.mark.parametrize("spec", [INT8[5], INT8[2].replace(height=13, width=14), INT8[3]], ids=lambda s: s.describe())
def test_the_row_blocked_definition_computes_the_real_rows_exactly(spec):
    """``row_block`` (rows past the map, read from the bottom padding) changes no output:
    the one definition, unscheduled, compiled for the CPU, against the reference."""
    import tvm

    from convgen.compute import conv2d_primfunc, padded_rows

    assert padded_rows(spec, 3) % 3 == 0 and padded_rows(spec, 3) >= spec.out_height
    lib = tvm.compile(conv2d_primfunc(spec, row_block=3), target="llvm")
    arrays = full_range(spec, 4)
    out = tvm.runtime.empty(spec.output_shape, spec.out_dtype)
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    np.testing.assert_array_equal(out.numpy(), conv2d_reference(spec, *arrays))


def test_the_folded_stem_serves_few_channels_and_says_why_not_otherwise():
    tmpl = get_template("x86.amx_bf16_stem")
    for spec in STEMS:
        assert tmpl.serves(spec, AMX) is None, spec.describe()
        space = tmpl.space(spec, AMX)
        assert tmpl.default(spec, AMX) in list(space) and space.hash == tmpl.space(spec, AMX).hash
    spec = STEMS[0]
    assert "AMX" in tmpl.serves(spec, convgen.get_target("x86-avx512-bf16"))
    assert "without folding" in tmpl.serves(spec.replace(in_channels=16), AMX)  # x86.amx_bf16's
    assert "one tile row" in tmpl.serves(spec.replace(in_channels=5), AMX)  # 7 x 5 > 32
    assert "NCHW" in tmpl.serves(spec.replace(layout="NCHW"), AMX)
    assert "float32" in tmpl.serves(spec.replace(dtype="float32"), AMX)
    assert "whole C tiles" in tmpl.serves(spec.replace(out_channels=24), AMX)
    # the highest rank where it serves: it builds by default on AMX
    from convgen.builder import select_template

    assert select_template(spec, AMX).name == "x86.amx_bf16_stem"


def test_an_r_by_1_kernel_compiles_on_the_tile_templates():
    """A 7x1 kernel (Inception's) tensorizes: its packed weights put the unit tap axis first
    (a tensorized region's unit axes must lead; with it after the 7 taps the tile template
    raised a ConfigError). And the folded stem, whose product is an R x 1 kernel."""
    from convgen.builder import compile_module

    spec = ConvSpec(in_channels=64, out_channels=32, height=9, width=8, kernel=(7, 1), padding=(3, 0),
                    layout="NHWC", dtype="uint8")
    for s, name in ((spec, "x86.amx_int8"), (STEMS[0], "x86.amx_bf16_stem")):
        tmpl = get_template(name)
        assert "tdp" in compile_module(s, AMX, tmpl, tmpl.default(s, AMX)).mod.inspect_source("asm")
    if RUNS:
        arrays = full_range(spec, 2)
        np.testing.assert_array_equal(convgen.build(spec, AMX, template="x86.amx_int8")(*arrays),
                                      conv2d_reference(spec, *arrays))



def test_a_bf16_model_gives_its_rgb_stem_bf16_data_only_where_the_folded_stem_serves():
    """``precision="bfloat16"``: on AMX the stem takes bf16 data (the folded template); on a
    CPU without it, float32 data with a bf16 output (fp32 FMAs, no conversion pass)."""
    pytest.importorskip("torch")
    from convgen.torch import _in_precision

    stem = ConvSpec(in_channels=3, out_channels=64, height=224, width=224, kernel=7, stride=2, padding=3,
                    bias=True, activation="relu")
    assert _in_precision(stem, "bfloat16", AMX).dtype == "bfloat16"
    assert _in_precision(stem, "bfloat16", AMX, nhwc=False).dtype == "float32"  # NCHW kernels: no fold
    on_zen4 = _in_precision(stem, "bfloat16", convgen.get_target("x86-avx512-bf16"))
    assert (on_zen4.dtype, on_zen4.out_dtype) == ("float32", "bfloat16")

