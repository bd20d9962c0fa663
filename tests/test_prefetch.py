"""x86.direct_prefetch: the next weight panel prefetched while a thread computes on this one.

The prefetches change no result, so the kernels are checked against the numpy reference like
every template's, and the prefetches themselves are checked by evaluating their addresses:
over every register tile and reduction step of a panel they must cover each cache line of
the next panel, and never point outside the packed weights.
"""

import itertools
import math

import pytest

import convgen
from convgen import ConvSpec
from convgen.builder import schedule
from convgen.schedules import all_templates, candidates
from convgen.schedules.cpu import PREFETCH, register_fit, tile_registers
from convgen.schedules.x86 import PREFETCH_MAX_PIXELS, PREFETCH_WEIGHTS_BYTES, weight_bytes

from .conftest import check_kernel

NAME = "x86.direct_prefetch"

# (the variants serve layers with at least PREFETCH_WEIGHTS_BYTES of weights: 128 channels 3x3)
# batch 2 with stride 2 and channels off the lanes (144: padded to whole channel tiles), a
# ragged row (width 17: tiles that do not divide it), NCHW 1x1, bf16, groups with dilation
SPECS = [
    ConvSpec(batch=2, in_channels=128, out_channels=144, height=9, width=9, kernel=3, stride=2, padding=1,
             layout="NHWC", bias=True, activation="relu"),
    ConvSpec(in_channels=128, out_channels=128, height=5, width=17, kernel=3, padding=1, layout="NHWC", residual=True),
    ConvSpec(in_channels=512, out_channels=256, height=7, width=7, kernel=1, bias=True),
    ConvSpec(in_channels=256, out_channels=128, height=7, width=7, kernel=3, padding=1, layout="NHWC", dtype="bfloat16",
             bias=True, activation="relu"),
    ConvSpec(in_channels=256, out_channels=256, height=6, width=6, kernel=3, padding=2, dilation=2, groups=2,
             layout="NHWC", flip=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_prefetching_kernels_match_reference_in_both_reduction_orders(spec, host):
    tmpl = all_templates()[NAME]
    default = tmpl.default(spec, host)
    for order in ("ic_kh_kw", "kh_kw_ic"):
        config = dict(default, reduce_order=order)
        if config in tmpl.space(spec, host):
            check_kernel(convgen.build(spec, host, config, template=NAME), spec)
    widest = max((c for c in tmpl.space(spec, host)), key=lambda c: (c["tile_oh"] * c["tile_ow"], c["tile_oc"]))
    check_kernel(convgen.build(spec, host, widest, template=NAME), spec)


@pytest.mark.parametrize("name, spec", [
    ("x86.direct_bf16_prefetch", ConvSpec(in_channels=256, out_channels=128, height=7, width=7, kernel=3, padding=1,
                                          layout="NHWC", dtype="bfloat16", bias=True, activation="relu")),
    ("x86.direct_vnni_prefetch", ConvSpec(in_channels=256, out_channels=256, height=7, width=7, kernel=3, padding=1,
                                          layout="NHWC", dtype="uint8", weight_dtype="int8", output_dtype="int32")),
])
def test_prefetching_instruction_kernels_match_reference(name, spec, host):
    tmpl = all_templates()[name]
    if why := tmpl.serves(spec, host):  # a CPU without the instruction
        pytest.skip(why)
    check_kernel(convgen.build(spec, host, template=name, builtin_records=False), spec)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_prefetching_winograd_matches_reference_per_call_and_prepacked(layout, host):
    import numpy as np

    from convgen.reference import conv2d_reference, random_inputs, tolerance

    spec = ConvSpec(in_channels=128, out_channels=128, height=8, width=10, kernel=3, padding=1, layout=layout, bias=True)
    tmpl = all_templates()["x86.winograd_prefetch"]
    for m in (2, 4):
        config = next(c for c in tmpl.space(spec, host) if c["tile_m"] == m)
        k = convgen.build(spec, host, config, template=tmpl.name)
        x, w, *b = random_inputs(spec)
        want = conv2d_reference(spec, x, w, *b)
        np.testing.assert_allclose(k(x, w, *b), want, atol=tolerance(spec))
        np.testing.assert_allclose(k(x, k.pack_weights(w), *b), want, atol=tolerance(spec))


def _prefetches(func):
    """``(loops, [index expressions])`` of the prefetch calls in ``func``'s marked loop."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    loops, marked, calls = [], [], []
    tvm_ffi.structural_walk(func.body, [(tirx.For, loops.append)])
    marked = [lp for lp in loops if PREFETCH in lp.annotations]
    assert len(marked) == 1

    def on_call(call):
        if call.op.same_as(tvm.ir.Op.get("tirx.call_llvm_intrin")):
            (address,) = [a for a in call.args if isinstance(a, tvm.ir.expr.Call) and a.op.name == "tirx.address_of"]
            calls.append(address.args[0])

    tvm_ffi.structural_walk(marked[0].body, [(tvm.ir.expr.Call, on_call)])
    return loops, calls


def _direct(spec, config):
    """A direct nest's panel: its parallel loop runs (n, channel block, row block)."""
    rows = -(-spec.out_height // config["tile_oh"])
    return 1, lambda fused, blocks: fused // rows % blocks


def _winograd(spec, config):
    """A Winograd GEMM's panel: its parallel loop runs (e, nu, channel block), one panel each."""
    return 3, lambda fused, blocks: fused


@pytest.mark.parametrize("template, spec, config, panels", [
    # (tile_oc: "lanes" is one vector of the host, 8 or 16 floats)
    # 3 one-row tiles share each 64-channel block of a panel: a third of its lines each
    ("x86.direct_prefetch", ConvSpec(in_channels=128, out_channels=128, height=3, width=3, kernel=3, padding=1,
                                     layout="NHWC"),
     {"tile_oc": "lanes", "tile_ic": 64, "tile_ow": 3, "tile_oh": 1, "reduce_order": "kh_kw_ic", "unroll_kw": True}, _direct),
    # 1x1, batch 2, 4 tiles of one pixel
    ("x86.direct_prefetch", ConvSpec(batch=2, in_channels=512, out_channels=256, height=2, width=2, kernel=1,
                                     layout="NHWC", bias=True),
     {"tile_oc": "lanes", "tile_ic": 64, "tile_ow": 1, "tile_oh": 1, "reduce_order": "ic_kh_kw", "unroll_kw": False}, _direct),
    # NCHW, ragged tiles (17 = 4 x 4 + 1)
    ("x86.direct_prefetch", ConvSpec(in_channels=128, out_channels=128, height=2, width=17, kernel=3, padding=1),
     {"tile_oc": "lanes", "tile_ic": 32, "tile_ow": 4, "tile_oh": 2, "reduce_order": "ic_kh_kw", "unroll_kw": False}, _direct),
    # bf16 pairs and int8 quads of input channels (tensorized steps), 2 tiles of 4 pixels
    ("x86.direct_bf16_prefetch", ConvSpec(in_channels=256, out_channels=128, height=2, width=4, kernel=3, padding=1,
                                          layout="NHWC", dtype="bfloat16"),
     {"tile_oc": 16, "tile_ic": 32, "tile_ow": 4, "tile_oh": 1, "reduce_order": "kh_kw_ic", "unroll_kw": True}, _direct),
    ("x86.direct_vnni_prefetch", ConvSpec(in_channels=256, out_channels=256, height=2, width=4, kernel=3, padding=1,
                                          layout="NHWC", dtype="uint8", weight_dtype="int8", output_dtype="int32"),
     {"tile_oc": 32, "tile_ic": 64, "tile_ow": 4, "tile_oh": 1, "reduce_order": "ic_kh_kw", "unroll_kw": False}, _direct),
    # Winograd F(2x2): 4 tiles in groups of 2 per panel of 128 channels (8 steps of 16)
    ("x86.winograd_prefetch", ConvSpec(in_channels=128, out_channels=128, height=4, width=4, kernel=3, padding=1,
                                       layout="NHWC"),
     {"tile_m": 2, "tile_k": 16, "tile_p": 2}, _winograd),
])
def test_each_panel_prefetches_every_line_of_the_next_one_and_nothing_outside(template, spec, config, panels, host):
    import tvm
    import tvm_ffi
    from tvm.sym.analyzer import Analyzer
    from tvm.tirx.analysis import undefined_vars

    tmpl = all_templates()[template]
    if why := tmpl.serves(spec, host):  # bf16 and VNNI variants on a CPU without the instruction
        pytest.skip(why)
    config = tmpl.space(spec, host).check({k: host.vector_lanes if v == "lanes" else v for k, v in config.items()})
    func = schedule(spec, host, tmpl, config)["main_prepacked"]
    shape = [int(d) for d in func.params[1].shape]  # the prepared weights
    loops, addresses = _prefetches(func)
    assert addresses, "no prefetch in the marked loop"
    extents = {lp.loop_var: int(lp.extent) for lp in loops}
    dtypes = {lp.loop_var: lp.loop_var.ty for lp in loops}
    variables = list({v for a in addresses for i in a.indices for v in undefined_vars(i)})
    (fused,) = [v for v in variables if "fused" in v.name]  # the parallel loop: which panel
    dims, panel_of = panels(spec, config)
    blocks, per_panel = math.prod(shape[:dims]), math.prod(shape[dims:])
    line = 64 // {"float32": 4, "bfloat16": 2, "int8": 1}[str(func.params[1].dtype)]  # elements per cache line
    lines = -(-per_panel // line)
    want = {p: set(range((p + 1) * lines, (p + 2) * lines)) for p in range(blocks - 1)}
    got = {p: set() for p in range(blocks)}
    analyzer = Analyzer()
    # each index within its dimension (checked per address below), and the flat element
    flats = []
    for address in addresses:
        flat = 0
        for i, d in zip(address.indices, shape):
            flat = flat * d + i
        inside = tvm.tirx.all(*[tvm.tirx.all(i >= 0, i < d) for i, d in zip(address.indices, shape)])
        flats.append((flat, inside))
    for values in itertools.product(*(range(extents[v]) for v in variables)):
        bind = {v: tvm.tirx.const(x, dtypes[v]) for v, x in zip(variables, values)}
        panel = panel_of(values[variables.index(fused)], blocks)
        for flat, inside in flats:
            at, ok = (analyzer.simplify(tvm_ffi.structural_map(e, (tvm.ir.Var, lambda v: bind.get(v, v))))
                      for e in (flat, inside))
            assert bool(ok), f"a prefetch outside the packed weights at {dict(zip(map(str, variables), values))}"
            got[panel].add(int(at) // line)
    for p in range(blocks - 1):
        assert got[p] == want[p], f"panel {p} prefetched {sorted(got[p] - want[p])[:4]}, missed {sorted(want[p] - got[p])[:4]}"
    assert got[blocks - 1] <= set(range((blocks - 1) * lines, blocks * lines))  # the last: its own last line


def test_the_space_keeps_no_tile_that_needs_the_fma_memory_operand(host):
    spec = ConvSpec(in_channels=256, out_channels=512, height=7, width=7, kernel=1, layout="NHWC")
    space = all_templates()[NAME].space(spec, host)
    assert len(space) > 0
    for config in space:
        assert register_fit(host, *tile_registers(config, host.vector_lanes), memory_operand=False) is None
    direct = all_templates()["x86.direct"].space(spec, host)
    assert space.hash != direct.hash and len(space) <= len(direct)


def test_layers_with_megabytes_of_weights_default_to_prefetching(host):
    big = ConvSpec(in_channels=256, out_channels=256, height=28, width=28, kernel=3, stride=2, padding=1, layout="NHWC")
    small = big.replace(in_channels=64, out_channels=64)
    assert weight_bytes(big) >= PREFETCH_WEIGHTS_BYTES > weight_bytes(small)
    assert big.out_height * big.out_width <= PREFETCH_MAX_PIXELS < big.height * big.width
    assert candidates(big, host)[0].name == NAME
    assert candidates(small, host)[0].name == "x86.direct"
    assert NAME not in [t.name for t in candidates(small, host)]  # served only where prefetching pays
    assert NAME not in [t.name for t in candidates(big.replace(stride=1), host)]  # 28x28 outputs: neither
    # 1x1 layers: above x86.pointwise where the weights are large
    wide = ConvSpec(in_channels=1024, out_channels=256, height=14, width=14, kernel=1, layout="NHWC")
    assert candidates(wide, host)[0].name == NAME
    assert candidates(wide.replace(in_channels=64), host)[0].name == "x86.pointwise"
