"""ConvSpec: normalisation, validation messages, derived sizes, keys."""

import pytest

from convgen import ConvSpec, SpecError

# no host target involved: the --host-target pass of scripts/test.sh skips this module
pytestmark = pytest.mark.host_neutral

BASE = dict(in_channels=8, out_channels=16, height=10, width=12)


def test_normalises_scalars_to_pairs_and_padding_to_four():
    s = ConvSpec(**BASE, kernel=3, stride=2, padding=(1, 2), dilation=1)
    assert s.kernel == (3, 3) and s.stride == (2, 2) and s.dilation == (1, 1)
    assert s.padding == (1, 2, 1, 2)


@pytest.mark.parametrize("size,k,stride,dil", [(10, 3, 1, 1), (10, 3, 2, 1), (11, 4, 3, 1), (7, 3, 2, 2), (5, 1, 2, 1)])
def test_same_padding_gives_ceil_output_with_extra_bottom_right(size, k, stride, dil):
    s = ConvSpec(in_channels=1, out_channels=1, height=size, width=size, kernel=k, stride=stride, dilation=dil, padding="same")
    assert s.out_height == -(-size // stride) == s.out_width
    top, left, bottom, right = s.padding
    assert bottom - top in (0, 1) and right - left in (0, 1)


def test_valid_padding_is_zero():
    assert ConvSpec(**BASE, padding="valid").padding == (0, 0, 0, 0)


def test_output_size_formula():
    s = ConvSpec(**BASE, kernel=(3, 5), stride=(2, 1), padding=(1, 2, 0, 1), dilation=(2, 1))
    # H: (10 + 1 - 2*2 - 1) // 2 + 1 = 4 ; W: (12 + 3 - 4 - 1) // 1 + 1 = 11
    assert (s.out_height, s.out_width) == (4, 11)


def test_shapes_by_layout():
    s = ConvSpec(**BASE, kernel=3, groups=2)
    assert s.input_shape == (1, 8, 10, 12) and s.weight_shape == (16, 4, 3, 3)
    t = s.replace(layout="NHWC")
    assert t.input_shape == (1, 10, 12, 8) and t.weight_shape == (3, 3, 4, 16)
    assert t.output_shape == (1, t.out_height, t.out_width, 16)


@pytest.mark.parametrize(
    "changes,field",
    [
        (dict(height=0), "height"),
        (dict(in_channels=-3), "in_channels"),
        (dict(kernel=0), "kernel"),
        (dict(kernel=(3, 3, 3)), "kernel"),
        (dict(stride=0), "stride"),
        (dict(dilation=(1, 0)), "dilation"),
        (dict(padding=-1), "padding"),
        (dict(padding="full"), "padding"),
        (dict(padding=(1, 2, 3)), "padding"),
        (dict(groups=3), "groups"),
        (dict(groups=0), "groups"),
        (dict(layout="NCWH"), "layout"),
        (dict(dtype="float64"), "dtype"),
        (dict(activation="swish"), "activation"),
        (dict(kernel=13), "kernel"),  # larger than the 10-row input
        (dict(kernel=3, dilation=6), "kernel"),
        (dict(height=2.5), "height"),
        (dict(bias="yes"), "bias"),
        (dict(batch=True), "batch"),
    ],
)
def test_bad_specs_name_the_field(changes, field):
    with pytest.raises(SpecError, match=rf"ConvSpec\.{field}"):
        ConvSpec(**{**BASE, **changes})
    assert issubclass(SpecError, ValueError)


def test_kernel_fits_once_padded():
    s = ConvSpec(in_channels=1, out_channels=1, height=2, width=2, kernel=3, padding=1)
    assert (s.out_height, s.out_width) == (2, 2)


def test_equal_workloads_have_equal_keys_and_hash():
    a = ConvSpec(**BASE, kernel=3, padding="same")
    b = ConvSpec(**BASE, kernel=(3, 3), padding=(1, 1, 1, 1))
    assert a == b and a.key == b.key and hash(a) == hash(b)
    assert a.key != a.replace(flip=True).key != a.replace(bias=True).key


def test_key_is_stable_text():
    s = ConvSpec(in_channels=64, out_channels=64, height=56, width=56, kernel=3, padding=1)
    assert s.key == "conv2d_nchw_float32_n1_c64_h56_w56_k64_r3x3_s1x1_p1_1_1_1_d1x1_g1"


def test_the_epilogue_is_part_of_the_key_and_old_keys_stay():
    s = ConvSpec(in_channels=64, out_channels=64, height=56, width=56, kernel=3, padding=1)
    r = s.replace(bias=True, residual=True, activation="relu6")
    assert r.key == s.key + "_bias_residual_relu6" and "+res" in r.describe() and "+relu6" in r.describe()
    assert r.residual_shape == r.output_shape
    assert ConvSpec.from_dict({k: v for k, v in s.to_dict().items() if k != "residual"}) == s  # older records
    assert r.stand_ins() == [s]  # batch 1 already: only the bare convolution
    with pytest.raises(SpecError, match="residual"):
        ConvSpec(**BASE, residual="yes")


def test_stand_ins_drop_the_epilogue_then_the_batch():
    s = ConvSpec(batch=4, in_channels=8, out_channels=8, height=8, width=8, bias=True, activation="relu")
    assert s.stand_ins() == [s.replace(bias=False, activation=None), s.replace(batch=1),
                             s.replace(batch=1, bias=False, activation=None)]
    assert ConvSpec(in_channels=8, out_channels=8, height=8, width=8).stand_ins() == []


def test_dict_round_trip_and_unknown_fields():
    s = ConvSpec(**BASE, kernel=3, groups=4, bias=True, activation="relu", flip=True, layout="NHWC")
    assert ConvSpec.from_dict(s.to_dict()) == s
    with pytest.raises(SpecError, match="unknown field"):
        ConvSpec.from_dict({**s.to_dict(), "colour": 1})


def test_frozen():
    s = ConvSpec(**BASE)
    with pytest.raises(Exception):
        s.height = 3  # type: ignore[misc]


def test_flops_counts_multiply_adds_twice():
    s = ConvSpec(in_channels=4, out_channels=6, height=5, width=5, kernel=3, padding=1, groups=2)
    assert s.flops == 2 * 6 * 5 * 5 * 2 * 9


def test_gelu_needs_a_float_epilogue():
    base = ConvSpec(in_channels=8, out_channels=8, height=6, width=6, kernel=1, activation="gelu")
    assert base.describe().endswith("+gelu")
    assert base.replace(dtype="uint8", output_dtype="float32").activation == "gelu"  # scaled: float epilogue
    with pytest.raises(SpecError, match="gelu needs a float epilogue"):
        base.replace(dtype="uint8")  # int32 sums out: no float to apply it to
