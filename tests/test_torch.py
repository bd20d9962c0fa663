"""convgen.torch: PyTorch models on convgen kernels, checked against eager torch itself.

Every comparison is with the original model run by torch (oneDNN), an implementation
independent of convgen's; BatchNorm statistics are randomized so that folding them is
really exercised. Kernels are cached in one folder for the session (several tests share
the shapes of one model).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import convgen.torch as ct  # noqa: E402

from . import torch_models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 2e-3  # relative error (norm of the difference over the norm of the reference)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernels"))


def rel_err(got, want):
    return float((got - want).norm() / want.norm())


def served_fraction(model):
    convgen_convs = sum(isinstance(m, ct.Conv2d) for m in model.modules())
    torch_convs = sum(type(m) is torch.nn.Conv2d for m in model.modules())
    return convgen_convs / (convgen_convs + torch_convs)


@pytest.fixture(scope="module", params=["tiny_resnet", "tiny_bottleneck", "tiny_mobilenet"])
def optimized(request, cache):
    model = getattr(torch_models, request.param)()
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = ct.optimize(model, x, cache=cache, builtin_records=False)
    return model, fast, before


def test_outputs_match_eager_at_batch_1_and_3_and_channels_last(optimized):
    model, fast, _ = optimized
    assert served_fraction(fast) >= 0.75
    torch.manual_seed(0)
    with torch.no_grad():
        for x in (torch.randn(1, 3, 32, 32), torch.randn(3, 3, 32, 32),
                  torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)):
            assert rel_err(fast(x), model(x)) <= TOL, tuple(x.shape)
    # one kernel per shape: batch 1 (built by optimize), 3 and 2 (built on first use)
    conv = next(m for m in fast.modules() if isinstance(m, ct.Conv2d))
    assert {k[0] for k in conv.kernels} >= {1, 2, 3}


def test_under_torch_compile_and_export(optimized):
    model, fast, _ = optimized
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        assert rel_err(torch.compile(fast)(x), want) <= TOL
        exported = torch.export.export(fast, (x,))
        assert any(node.target is torch.ops.convgen.conv2d.default for node in exported.graph.nodes)
        assert rel_err(exported.module()(x), want) <= TOL


def test_the_original_model_is_untouched(optimized):
    model, fast, before = optimized
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, ct.Conv2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_batchnorm_relu_and_residual_are_fused_into_the_kernels(cache):
    fast = ct.optimize(torch_models.tiny_resnet(), torch.randn(1, 3, 32, 32), cache=cache, builtin_records=False)
    convs = {name: m for name, m in fast.named_modules() if isinstance(m, ct.Conv2d)}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    second = convs["layer1.0.conv2"]  # conv -> bn -> + identity -> relu
    assert second.fused == ("layer1.0.bn2", "add", "relu") and second.spec.residual and second.spec.bias
    assert convs["layer2.0.downsample.0"].fused == ("layer2.0.downsample.1",)
    text = ct.explain(fast)
    assert "layer1.0.conv2: convgen" in text and "+bias +res +relu" in text


def test_weights_are_packed_once_and_again_when_they_change(cache):
    from convgen.torch.models import randomize_batchnorm

    model = randomize_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)))
    x = torch.randn(1, 3, 10, 10)
    fast = ct.optimize(model.eval(), x, cache=cache, builtin_records=False)
    conv = next(m for m in fast.modules() if isinstance(m, ct.Conv2d))
    with torch.no_grad():
        fast(x)
        packed = {k: id(v[1]) for k, v in conv._packed.items()}
        fast(x)
        assert {k: id(v[1]) for k, v in conv._packed.items()} == packed  # packed once, at optimize
        conv.weight.mul_(-0.5)  # in place: tensor._version moves on
        y = fast(x)
        want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)  # torch, with the new weights
    assert {k: id(v[1]) for k, v in conv._packed.items()} != packed
    assert rel_err(y, want) <= TOL


def test_a_conv_convgen_cannot_serve_stays_on_torch_and_says_why(cache):
    model = torch_models.ReflectPadded().eval()
    x = torch.randn(2, 3, 12, 12)
    fast = ct.optimize(model, x, cache=cache)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= TOL
    text = ct.explain(fast)
    assert "conv: convgen" in text
    assert "reflect: torch (padding_mode='reflect'" in text


def test_inputs_convgen_cannot_take_fall_back_to_torch_correctly(cache):
    model = torch_models.tiny_resnet()
    fast = ct.optimize(model, torch.randn(1, 3, 32, 32), cache=cache, builtin_records=False)
    x64 = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():  # float64: torch computes it (BatchNorm was folded in float32: ~1e-8)
        assert rel_err(fast.double()(x64), model.double()(x64)) <= 1e-6


def test_bad_models_and_inputs_raise_clear_errors():
    with pytest.raises(ct.TraceError, match="torch.fx cannot trace DataDependent"):
        ct.optimize(torch_models.DataDependent(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ct.TraceError, match="3-?D input"):
        ct.optimize(torch_models.tiny_resnet(), torch.randn(3, 32, 32))
    with pytest.raises(ct.TraceError, match="fails on example inputs of shape"):
        ct.optimize(torch_models.tiny_resnet(), torch.randn(1, 5, 32, 32))
    with pytest.raises(ValueError, match="example inputs"):
        ct.optimize(torch_models.tiny_resnet())
    with pytest.raises(TypeError, match="nn.Module"):
        ct.optimize(lambda x: x, torch.randn(1, 3, 8, 8))


def test_conv_layers_lists_distinct_workloads_counted():
    model = torch_models.tiny_bottleneck()
    layers = ct.conv_layers(model, torch.randn(1, 3, 32, 32))
    # every convolution, and every linear layer (a 1x1 convolution over a row of pixels)
    assert sum(layers.counts.values()) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert set(layers) == set(layers.counts) and all(name in dict(model.named_modules()) for name in layers)
    stem = layers["conv1"]
    assert (stem.in_channels, stem.out_channels, stem.kernel, stem.stride, stem.height) == (3, 8, (7, 7), (2, 2), 32)
    assert stem.bias and stem.activation == "relu" and stem.layout == "NHWC"
    # layer1's two blocks share their 3x3 (and 1x1) shapes: listed once, counted twice
    assert layers.counts["layer1.0.conv2"] == 2 and "layer1.1.conv2" not in layers
    bare = ct.conv_layers(model, torch.randn(1, 3, 32, 32), fused=False, channels_last=False)
    assert not bare["conv1"].bias and bare["conv1"].activation is None and bare["conv1"].layout == "NCHW"


def test_the_custom_op_passes_opcheck(cache):
    model = torch_models.tiny_resnet()
    fast = ct.optimize(model, torch.randn(2, 3, 32, 32), cache=cache, builtin_records=False)
    conv = dict(fast.named_modules())["layer1.0.conv2"]
    x = torch.randn(2, 8, 8, 8)
    r = torch.randn(2, 8, 8, 8)
    params = (conv.stride, conv.padding, conv.dilation, conv.groups, conv.activation, conv.layout, conv._handle, "")
    op = torch.ops.convgen.conv2d.default
    torch.library.opcheck(op, (x, conv.weight.detach(), conv.bias.detach(), r, *params))
    torch.library.opcheck(op, (x.contiguous(memory_format=torch.channels_last), conv.weight.detach().requires_grad_(),
                               conv.bias.detach(), r.requires_grad_(), *params))
    # and the result is the convolution torch computes (its own operators, not convgen's fallback)
    assert conv.activation == "relu" and list(conv.padding) == [1, 1, 1, 1] and list(conv.dilation) == [1, 1]
    want = torch.relu(torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, 1, 1, conv.groups) + r)
    assert rel_err(op(x, conv.weight.detach(), conv.bias.detach(), r, *params), want) <= TOL


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_cli_layers_and_tune_a_torch_model(tmp_path, host):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "convgen", *args], capture_output=True, text=True, timeout=600,
                              cwd=ROOT)

    out = run("layers", "--torch-model", "tests.torch_models:tiny_mobilenet", "--input-shape", "1,3,16,16")
    assert out.returncode == 0, out.stderr
    assert "distinct convolutions" in out.stdout and "features.0.0" in out.stdout and "+relu6" in out.stdout
    bad = run("layers", "--torch-model", "tests.torch_models:nothing", "--input-shape", "1,3,16,16")
    assert bad.returncode == 2 and "no callable 'nothing'" in bad.stderr and "Traceback" not in bad.stderr
    records = str(tmp_path / "r.jsonl")
    out = run("tune", "--torch-model", "tests.torch_models:tiny_resnet", "--input-shape", "1,3,16,16",
              "--trials", "6", "--batch-size", "1", "--records", records, "--refine", "0", "-q", "--target", host.name)
    assert out.returncode == 0, out.stderr
    from convgen import records as rec

    tuned = {r.spec_key for r in rec.read(records)}
    layers = ct.conv_layers(torch_models.tiny_resnet(), torch.randn(1, 3, 16, 16))
    assert tuned <= {s.key for s in layers.values()} and len(tuned) >= 3  # the model's own fused specs


def test_linear_layers_run_as_one_pixel_convolutions(cache):
    # a classifier head: conv -> pool -> flatten -> linear -> relu -> linear; and a linear
    # layer over a sequence (3-D input): y[..., K] = x[..., C] W^T + b, against eager torch
    torch.manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(24, 40), torch.nn.ReLU(),
                               torch.nn.Linear(40, 10)).eval()
    x = torch.randn(2, 3, 9, 9)
    fast = ct.optimize(head, x, cache=cache, builtin_records=False)
    with torch.no_grad():
        assert rel_err(fast(x), head(x)) <= TOL
        x5 = torch.randn(5, 3, 9, 9)  # another batch: a kernel of its own, built on first use
        assert rel_err(fast(x5), head(x5)) <= TOL
    text = ct.explain(fast)
    assert "3: convgen linear 24->40  [fused relu]" in text and text.splitlines()[-1] == "2 of 2 linear layers run convgen kernels"
    seq = torch.nn.Sequential(torch.nn.Linear(16, 8)).eval()
    xs = torch.randn(4, 6, 16)
    fast_seq = ct.optimize(seq, xs, cache=cache, builtin_records=False)
    with torch.no_grad():
        got = fast_seq(xs)
        assert got.shape == (4, 6, 8) and rel_err(got, seq(xs)) <= TOL
