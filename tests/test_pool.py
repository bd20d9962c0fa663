"""Pooling kernels (convgen.pool) against numpy, and inside optimized models against eager torch."""

from __future__ import annotations

import numpy as np
import pytest

from convgen.pool import PoolSpec, pool_kernel
from convgen.spec import SpecError

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

import convgen.torch as ct  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernels"))


def numpy_max_pool(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """NHWC max pooling, padding never chosen (an independent loop over the windows)."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.empty((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            rows = slice(max(i * sh - ph, 0), min(i * sh - ph + kh, h))
            cols = slice(max(j * sw - pw, 0), min(j * sw - pw + kw, w))
            out[:, i, j, :] = x[:, rows, cols, :].max(axis=(1, 2))
    return out


def random_nhwc(shape, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype in ("uint8", "int8"):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)  # full range, the extremes included
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    return x.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else x


def as_torch(x: np.ndarray) -> "torch.Tensor":
    if x.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(x.view(np.uint16).astype(np.int32)).to(torch.int16).view(torch.bfloat16)
    return torch.from_numpy(x)


MAX_CASES = [  # (batch, channels, height, width, kernel, stride, padding)
    (1, 64, 16, 16, (3, 3), (2, 2), (1, 1)),  # ResNet's stem pooling
    (2, 24, 9, 7, (3, 3), (2, 2), (1, 1)),  # channels off every vector width, odd sizes
    (1, 40, 8, 8, (2, 2), (2, 2), (0, 0)),  # VGG's 2x2/2
    (1, 17, 7, 9, (3, 2), (1, 2), (1, 0)),  # rectangular window, stride 1
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "uint8", "int8"])
@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: f"{c[1]}c{c[2]}x{c[3]}k{c[4]}s{c[5]}p{c[6]}")
def test_max_pooling_is_exact(case, dtype, cache):
    n, c, h, w, kernel, stride, padding = case
    spec = PoolSpec("max", n, c, h, w, kernel, stride, padding, dtype)
    x = random_nhwc(spec.input_shape, dtype, seed=c)
    want = numpy_max_pool(x, kernel, stride, padding)
    got = torch.empty(spec.output_shape, dtype=getattr(torch, dtype))
    pool_kernel(spec, folder=cache)(as_torch(x), got)
    assert got.shape == want.shape
    assert torch.equal(got, as_torch(want))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_global_average_pooling_matches_numpy(dtype, cache):
    spec = PoolSpec.global_avg(2, 40, 7, 5, dtype)  # 40 channels: a masked tail on AVX-512
    x = random_nhwc(spec.input_shape, dtype)
    want = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    got = torch.empty(spec.output_shape, dtype=getattr(torch, dtype))
    pool_kernel(spec, folder=cache)(as_torch(x), got)
    # float32 sums, then one rounding to the dtype
    tol = 1e-5 if dtype == "float32" else 2.0 ** -8
    np.testing.assert_allclose(got.float().numpy(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "uint8"])
@pytest.mark.parametrize("shape", [(1, 3, 9, 13), (2, 5, 4, 6), (1, 17, 3, 7)], ids=lambda s: f"c{s[1]}")
def test_the_layout_change_to_nhwc_is_exact(shape, dtype, cache):
    spec = PoolSpec.to_nhwc(*shape, dtype=dtype)  # RGB (channels unrolled), and wider
    x = random_nhwc(shape, dtype, seed=shape[1])  # an N,C,H,W array here
    got = torch.empty(spec.output_shape, dtype=getattr(torch, dtype))
    pool_kernel(spec, folder=cache)(as_torch(x), got)
    assert spec.input_shape == shape and torch.equal(got, as_torch(np.ascontiguousarray(x.transpose(0, 2, 3, 1))))
    with pytest.raises(SpecError, match="identity"):
        PoolSpec("nhwc", *shape, kernel=(3, 3))


@pytest.mark.parametrize("kwargs, why", [
    (dict(kind="min"), "kind"),
    (dict(dtype="float16"), "dtype"),
    (dict(padding=(2, 2)), "padding"),
    (dict(kernel=(0, 3)), "kernel and stride"),
    (dict(height=0), "height"),
])
def test_bad_pool_specs_are_refused_clearly(kwargs, why):
    args = dict(kind="max", batch=1, channels=8, height=6, width=6, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
    args.update(kwargs)
    with pytest.raises(SpecError, match=why):
        PoolSpec(**args)
    with pytest.raises(SpecError, match="global"):
        PoolSpec("avg", 1, 8, 6, 6, (3, 3))


class Pools(torch.nn.Module):
    """A conv -> max pool (module) -> conv -> max pool (functional) -> ceil-mode pool (left to
    torch) -> global average pool -> linear network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.pool1 = torch.nn.MaxPool2d(3, 2, 1)
        self.conv2 = torch.nn.Conv2d(16, 24, 3, padding=1)
        self.ceil = torch.nn.MaxPool2d(2, ceil_mode=True)
        self.avg = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(24, 5)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), kernel_size=2)
        return self.fc(torch.flatten(self.avg(self.ceil(x)), 1))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_optimized_model_runs_its_pooling_on_kernels_and_matches_eager(precision, cache):
    model = Pools().eval()
    x = torch.randn(2, 3, 21, 19)
    with torch.no_grad():
        fast = ct.optimize(model, x, cache=cache, builtin_records=False, precision=precision)
        got, want = fast(x).float(), model(x)
    pools = {path: m for path, m in fast.named_modules() if isinstance(m, ct.Pool2d)}
    # the ceil-mode pooling stays torch's; the input's change to channels_last is a kernel too
    assert set(pools) == {"pool1", "convgen_pool_0", "avg", "convgen_nhwc_0"}
    assert isinstance(fast.ceil, torch.nn.MaxPool2d)
    for m in pools.values():  # built for the example (by optimize's first call), and served
        assert m.kernels and not any(isinstance(k, Exception) for k in m.kernels.values())
    tol = 2e-5 if precision == "float32" else 2e-2
    assert float((got - want).norm() / want.norm()) < tol
    text = ct.explain(fast)
    assert "max pooling 3x3/2 pad 1" in text and "global average pooling" in text


def test_pool_module_leaves_what_its_kernels_do_not_take_to_torch(cache, host):
    pool = ct.Pool2d("max", (3, 3), (2, 2), (1, 1), host, cache)
    x = torch.randn(1, 8, 9, 9)  # NCHW (not channels_last): torch's operator
    assert torch.equal(pool(x), torch.nn.functional.max_pool2d(x, 3, 2, 1)) and not pool.kernels
    xg = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = pool(xg)  # autograd: torch's, and differentiable
    y.sum().backward()
    assert xg.grad is not None and not pool.kernels
    xd = x.double().contiguous(memory_format=torch.channels_last)  # a dtype the kernels do not take
    assert torch.equal(pool(xd), torch.nn.functional.max_pool2d(xd, 3, 2, 1))
    assert isinstance(next(iter(pool.kernels.values())), Exception)
