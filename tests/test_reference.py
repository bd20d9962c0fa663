"""The numpy reference itself, against a naive loop over the definition and against torch."""

import itertools

import numpy as np
import pytest

from convgen import ConvSpec
from convgen.reference import conv2d_reference, random_inputs

# no host target involved: the --host-target pass of scripts/test.sh skips this module
pytestmark = pytest.mark.host_neutral


def naive(spec, x, w, b=None):
    """The textbook sum, one output element at a time (NCHW / OIHW)."""
    kh_, kw_ = spec.kernel
    out = np.zeros((spec.batch, spec.out_channels, spec.out_height, spec.out_width))
    pt, pl = spec.padding[0], spec.padding[1]
    for n, k, i, j in itertools.product(*map(range, out.shape)):
        g = k // spec.out_per_group
        acc = 0.0
        for c, r, s in itertools.product(range(spec.in_per_group), range(kh_), range(kw_)):
            y = i * spec.stride[0] + r * spec.dilation[0] - pt
            xx = j * spec.stride[1] + s * spec.dilation[1] - pl
            if 0 <= y < spec.height and 0 <= xx < spec.width:
                rr, ss = (kh_ - 1 - r, kw_ - 1 - s) if spec.flip else (r, s)
                acc += x[n, g * spec.in_per_group + c, y, xx] * w[k, c, rr, ss]
        if b is not None:
            acc += b[k]
        out[n, k, i, j] = max(acc, 0.0) if spec.activation == "relu" else acc
    return out


CASES = [
    dict(in_channels=3, out_channels=4, height=6, width=7, kernel=3, padding=1),
    dict(in_channels=4, out_channels=6, height=7, width=5, kernel=(3, 2), stride=(2, 1), padding=(1, 0, 2, 1), groups=2),
    dict(in_channels=4, out_channels=4, height=8, width=8, kernel=3, dilation=2, padding="same", groups=4, bias=True, activation="relu"),
    dict(batch=2, in_channels=2, out_channels=3, height=5, width=6, kernel=3, flip=True, padding="valid", bias=True),
]


@pytest.mark.parametrize("fields", CASES)
def test_reference_matches_naive_definition(fields):
    spec = ConvSpec(**fields)
    arrays = random_inputs(spec)
    np.testing.assert_allclose(conv2d_reference(spec, *arrays), naive(spec, *arrays), atol=1e-5)


@pytest.mark.parametrize("fields", CASES)
def test_nhwc_reference_is_the_transposed_nchw_one(fields):
    spec = ConvSpec(**fields)
    x, w, *b = random_inputs(spec)
    nhwc = spec.replace(layout="NHWC")
    got = conv2d_reference(nhwc, x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), *b)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), conv2d_reference(spec, x, w, *b), atol=1e-6)


def test_flip_is_true_convolution_scipy_style():
    # 1 channel, no padding: true convolution == correlation with the filter rotated 180°
    spec = ConvSpec(in_channels=1, out_channels=1, height=5, width=5, kernel=3, flip=True)
    x, w = random_inputs(spec)
    rotated = spec.replace(flip=False)
    np.testing.assert_allclose(conv2d_reference(spec, x, w), conv2d_reference(rotated, x, w[:, :, ::-1, ::-1]), atol=1e-6)


def test_reference_matches_torch_where_installed():
    torch = pytest.importorskip("torch")
    spec = ConvSpec(in_channels=6, out_channels=4, height=9, width=8, kernel=3, stride=2, dilation=(1, 2), padding=(1, 2), groups=2, bias=True)
    x, w, b = random_inputs(spec)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=(1, 2), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(conv2d_reference(spec, x, w, b), want.numpy(), atol=1e-5)


def test_gelu_reference_matches_torch_where_installed():
    torch = pytest.importorskip("torch")
    spec = ConvSpec(in_channels=8, out_channels=6, height=7, width=7, kernel=3, padding=1, bias=True,
                    activation="gelu")
    x, w, b = random_inputs(spec, seed=3)
    want = torch.nn.functional.gelu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                               torch.from_numpy(b), padding=1))
    np.testing.assert_allclose(conv2d_reference(spec, x, w, b), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("spec", [
    ConvSpec(in_channels=4, out_channels=3, height=7, width=7, kernel=3, padding=9, dilation=9),
    ConvSpec(in_channels=4, out_channels=3, height=5, width=9, kernel=3, padding=(6, 1, 6, 1), dilation=(6, 1)),
    ConvSpec(in_channels=2, out_channels=2, height=6, width=6, kernel=5, padding=8, dilation=4, stride=2),
    ConvSpec(in_channels=3, out_channels=3, height=4, width=4, kernel=3, padding=(0, 3, 7, 3), dilation=3),
])
def test_cutting_dead_taps_keeps_the_result(spec):
    # the trimmed spec with the filters cut alike gives the naive sum of the whole one
    trimmed = spec.without_dead_taps()
    assert trimmed.kernel[0] * trimmed.kernel[1] < spec.kernel[0] * spec.kernel[1]
    (r0, r1), (s0, s1) = spec.live_taps()
    x, w = random_inputs(spec)
    got = conv2d_reference(trimmed, x, np.ascontiguousarray(w[:, :, r0:r1 + 1, s0:s1 + 1]))
    np.testing.assert_allclose(got, naive(spec, x, w), rtol=1e-5, atol=1e-5)
