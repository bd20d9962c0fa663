"""convgen.torch on the model patterns of convgen.torch.models.PATTERNS, against eager torch.

Each pattern is one block or head of a real network whose convolutions differ from
ResNet's and MobileNet-v2's (7x7 and 5x5 depthwise, grouped 3x3, squeeze-excitation on
1x1 maps, dilations up to 36 on a 28x28 map, 1x7 / 7x1, 11x11 stride 4), at its real
input shape, batch 1. The optimized model must compute what eager torch (oneDNN) computes,
to 1e-4, and serve every convolution with a convgen kernel (``explain`` says so).

The templates' default configs are used (``builtin_records=False``): the same kernels on
every machine of a target, built in a few seconds each; kernels are cached in a folder of
the test session, not in ``~/.cache``. The tests depend on the host's ISA (its templates
and lane counts), so they are not marked ``host_neutral``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import convgen.torch as ct  # noqa: E402
from convgen.torch.models import PATTERNS  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pattern-kernels"))


def conv_paths(model):
    return [path for path, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_matches_eager_and_every_convolution_runs_convgen(name, cache):
    factory, shape = PATTERNS[name]
    model = factory()
    torch.manual_seed(0)
    x = torch.randn(shape)
    fast = ct.optimize(model, x, cache=cache, builtin_records=False)
    with torch.no_grad():
        want = model(x)
        got = fast(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    text = ct.explain(fast)
    lines = text.splitlines()
    paths = conv_paths(model)
    assert paths, f"{name} has no convolutions"
    for path in paths:
        assert any(line.startswith(f"{path}: convgen ") for line in lines), f"{path} not served:\n{text}"
    assert "torch (" not in text, text  # no convolution left to torch, no kernel that failed to build
    assert f"{len(paths)} of {len(paths)} convolutions run convgen kernels" in lines
    linears = [path for path, m in model.named_modules() if type(m) is torch.nn.Linear]
    if linears:  # served too, as 1x1 convolutions of one-pixel images
        assert lines[-1] == f"{len(linears)} of {len(linears)} linear layers run convgen kernels"


def test_patterns_have_their_documented_input_shapes():
    for name, (factory, shape) in PATTERNS.items():
        model = factory()
        assert not model.training, name
        with torch.no_grad():
            out = model(torch.randn(shape))
        assert out.dim() == 4 and out.shape[0] == shape[0], name
        assert factory.__doc__ and "Input" in factory.__doc__, name


def test_an_input_read_by_several_layers_becomes_channels_last_once(cache):
    """Inception's block input feeds four branches and a pooling: converted to channels_last
    where it enters the graph (one copy, a view for every reader; before, each convolution
    made its own copy and the pooling ran on NCHW data)."""
    factory, shape = PATTERNS["inception_block"]
    model = factory()
    x = torch.randn(shape)
    fast = ct.optimize(model, x, cache=cache, builtin_records=False)
    placeholder = next(n for n in fast.graph.nodes if n.op == "placeholder")
    (only,) = placeholder.users  # the conversion (on a convgen kernel), and nothing else reads the raw input
    assert only.op == "call_module" and isinstance(fast.get_submodule(only.target), ct.Pool2d)
    assert fast.get_submodule(only.target).kind == "nhwc"
    with torch.no_grad():
        want, got = model(x), fast(x)
    assert got.is_contiguous() and float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_convnext_gelu_runs_in_the_expanding_layers_epilogue(cache):
    """ConvNeXt's GELU (erf form) after its expanding linear layer is fused into that layer's
    kernel (left to torch it ran on one thread inside the forward); a tanh GELU is another
    function and stays torch's."""
    factory, shape = PATTERNS["convnext_block"]
    model = factory()
    x = torch.randn(shape)
    fast = ct.optimize(model, x, cache=cache, builtin_records=False)
    assert "[fused gelu]" in ct.explain(fast)
    assert not any(isinstance(m, torch.nn.GELU) for m in fast.modules())
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
        for m in model.modules():
            if isinstance(m, torch.nn.GELU):
                m.approximate = "tanh"
        tanh = ct.optimize(model, x, cache=cache, builtin_records=False)
        assert "[fused gelu]" not in ct.explain(tanh)
        torch.testing.assert_close(tanh(x), model(x), rtol=1e-4, atol=1e-4)
