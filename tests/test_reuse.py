"""Reused output buffers and replayed launches in optimized models (Conv2d.reuse_output, _Fast,
ConvChain).

An optimized model's inner layers write one buffer per shape and thread and replay their
last launch when called with the same tensors. None of that may show: every result is
compared with eager torch (an independent implementation), across calls that change the
input, the weights, the thread and the hooks between them.
"""

from __future__ import annotations

import copy
import pickle
import threading

import pytest

torch = pytest.importorskip("torch")

import convgen  # noqa: E402
import convgen.torch as ct  # noqa: E402

from . import torch_models  # noqa: E402

TOL = 2e-3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="module")
def pair(cache):
    model = torch_models.tiny_bottleneck()
    with torch.no_grad():
        return model, ct.optimize(model, torch.randn(1, 3, 32, 32), cache=cache, builtin_records=False)


def rel_err(got, want):
    return float((got - want).norm() / want.norm())


def test_inner_layers_reuse_their_outputs_and_the_rest_do_not(pair):
    _, fast = pair
    layers = {path: m for path, m in fast.named_modules() if isinstance(m, (ct.Conv2d, ct.Pool2d))}
    reused = {path for path, m in layers.items() if m.reuse_output}
    # the stem (conv1+bn+relu, fused) is read by the max pooling, a convgen layer: it reuses;
    # the global pooling (read by torch's flatten) and the classifier (the model's output)
    # reuse theirs only as the tail of the chain, which returns a copy of the classifier's
    assert "layer1.0.conv1" in reused and "layer1.0.conv3" in reused and "maxpool" in reused
    (chain,) = chains(fast)
    assert chain.tail == (fast.avgpool, (), fast.fc) and {"avgpool", "fc"} <= reused
    assert len(reused) >= len(layers) - 1


def test_results_stay_right_across_calls_and_earlier_results_are_not_overwritten(pair):
    model, fast = pair
    xs = [torch.randn(1, 3, 32, 32) for _ in range(3)]
    with torch.no_grad():
        wants = [model(x) for x in xs]
        gots = [fast(x) for x in xs]  # each call replays the inner layers on the last one's buffers
        again = fast(xs[0])
        x = xs[1].clone()
        first = fast(x)
        x.mul_(-1)  # the same input tensor, new values: the stem reads it again
        second = fast(x)
        want_second = model(x)
    for got, want in zip(gots, wants):
        assert rel_err(got, want) < TOL
    assert rel_err(again, wants[0]) < TOL
    assert rel_err(first, wants[1]) < TOL and rel_err(second, want_second) < TOL


def replaying(model, x, cache):
    """``model`` optimized and called twice on ``x``: its layers replay their launches now."""
    with torch.no_grad():
        fast = ct.optimize(model, x, cache=cache, builtin_records=False)
        fast(x)
        fast(x)
    return fast


def test_a_weight_change_between_calls_is_seen(cache):
    model = torch_models.tiny_bottleneck()
    x = torch.randn(1, 3, 32, 32)
    fast = replaying(model, x, cache)
    with torch.no_grad():
        conv = fast.get_submodule("layer2.0.conv2")
        assert conv._fast is not None
        conv.weight.mul_(-0.5)
        model.layer2[0].conv2.weight.mul_(-0.5)  # (the BatchNorm folded into it scales the same)
        assert rel_err(fast(x), model(x)) < TOL


def test_a_hook_that_keeps_a_layers_output_keeps_its_values(pair):
    model, fast = pair
    kept = []
    handle = fast.get_submodule("layer1.0.conv2").register_forward_hook(lambda m, i, o: kept.append(o))
    want_hook = []
    handle_model = model.layer1[0].relu.register_forward_hook(lambda m, i, o: want_hook.append(o.clone()))
    try:
        xs = [torch.randn(1, 3, 32, 32) for _ in range(2)]
        with torch.no_grad():
            for x in xs:
                fast(x)
                model(x)
    finally:
        handle.remove()
        handle_model.remove()
    # the block's ReLU runs three times per forward in torchvision's Bottleneck: the second
    # call is conv2's (conv1, conv2, then conv3 + skip)
    assert kept[0].data_ptr() != kept[1].data_ptr()  # fresh tensors while hooked
    assert rel_err(kept[0], want_hook[1]) < TOL and rel_err(kept[1], want_hook[4]) < TOL


def test_threads_running_one_model_at_once_get_their_own_results(pair):
    model, fast = pair
    xs = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    with torch.no_grad():
        wants = [model(x) for x in xs]
    errors: list[float] = []

    def worker(i: int) -> None:
        with torch.no_grad():
            for _ in range(20):
                errors.append(rel_err(fast(xs[i]), wants[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 80 and max(errors) < TOL


def test_autograd_calls_do_not_replay(cache):
    model = torch_models.tiny_resnet()
    x = torch.randn(1, 3, 32, 32)
    fast = replaying(model, x, cache)
    xg = x.clone().requires_grad_()
    y = fast(xg)  # grad enabled: the custom op's path, differentiable
    y.sum().backward()
    assert xg.grad is not None and rel_err(y.detach(), model(x).detach()) < TOL


def skip_without_vnni():
    target = convgen.get_target("host")
    if target.family != "x86" or "avx512_vnni" not in target.cpu_flags:
        pytest.skip(f"int8 layers need a fast 8-bit template (AVX512_VNNI); the host target {target.name} has none")


def optimize_int8(model, x, folder):
    """``model`` in int8, calibrated on 8 random batches of ``x``'s shape."""
    calibration = [torch.randn(x.shape) for _ in range(8)]
    return ct.optimize(model, x, precision="int8", calibration=calibration, cache=str(folder), builtin_records=False)


def test_int8_layers_reading_reused_buffers_quantize_each_new_value(tmp_path):
    skip_without_vnni()
    # the grouped first layer stays float32 and writes a reused buffer; the second, int8,
    # quantizes it on every call: a quantization kept for the same tensor object (and version)
    # must not outlive the buffer's next value
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1, groups=2), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, padding=1)).eval()
    x1, x2 = torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        fast = optimize_int8(model, x1, tmp_path)
        a1, a2, b1 = fast(x1).clone(), fast(x2).clone(), fast(x1).clone()
        w1, w2 = model(x1), model(x2)
    assert fast.get_submodule("0").reuse_output and "int8: input quantized" in ct.explain(fast)
    assert torch.equal(a1, b1)  # the same input, the same result (nothing stale from x2's call)
    assert rel_err(a1, w1) < 8e-2 and rel_err(a2, w2) < 8e-2


def chains(model):
    return [m for m in model.modules() if isinstance(m, ct.ConvChain)]


def test_a_network_body_runs_as_one_chain_of_its_reused_layers(cache):
    model = torch_models.tiny_bottleneck()
    x = torch.randn(1, 3, 32, 32)
    fast = replaying(model, x, cache)
    (chain,) = chains(fast)
    reused = [m for m in fast.modules() if isinstance(m, ct.Conv2d) and m.reuse_output]
    # every reused convolution but the stem, which the max pooling (no convolution) follows,
    # and the classifier, the chain's tail with the global pooling
    stem = fast.get_submodule("conv1")
    assert {id(m) for m in chain.layers} == {id(m) for m in reused if m is not stem and m is not fast.fc}
    segments = chain._program.segments  # replaying: every layer's launch, then the tail's, back to back
    assert [type(s) for s in segments] == [convgen.runtime.Launches] and len(segments[0]) == len(chain.layers) + 2
    assert "launched back to back" in ct.explain(fast)
    # the layers keep their own paths: the state_dict has the original model's keys
    assert not any(k.startswith("convgen_chain") for k in fast.state_dict())
    xs = [torch.randn(1, 3, 32, 32) for _ in range(3)]
    with torch.no_grad():
        for x in xs:
            assert rel_err(fast(x), model(x)) < TOL


def test_a_hook_on_a_chained_layer_runs_the_chain_one_by_one(cache):
    model = torch_models.tiny_bottleneck()
    x = torch.randn(1, 3, 32, 32)
    fast = replaying(model, x, cache)
    (chain,) = chains(fast)
    seen = []
    handle = fast.get_submodule("layer2.0.conv2").register_forward_pre_hook(lambda m, args: seen.append(1))
    with torch.no_grad():
        try:
            got = fast(x)
            assert len(seen) == 1 and rel_err(got, model(x)) < TOL
        finally:
            handle.remove()
        fast(x)  # (the program recorded while hooked calls that layer, whose buffer is back: one by one)
        fast(x)
        assert chain._program is not None and len(seen) == 1  # replaying again, the hook gone
        assert all(isinstance(s, convgen.runtime.Launches) for s in chain._program.segments)


def test_refresh_after_an_edit_of_one_weight_element_is_seen_by_the_chain(cache):
    torch.manual_seed(1)
    # no BatchNorm: the convgen layers' weights are the model's own, edited alike below
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    fast = replaying(model, x, cache)
    (chain,) = chains(fast)
    conv = fast.get_submodule("2")
    assert conv in chain.layers and chain._program is not None
    held = next(iter(conv._packed.values()))[0]
    i = next(i for i in range(conv.weight.numel()) if i not in set(held._at.tolist()))  # one no sample sees
    with torch.no_grad():
        for w in (conv.weight, model[2].weight):
            w.data.view(-1)[i] += 3.0
        ct.refresh(fast)
        assert rel_err(fast(x), model(x)) < TOL


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_model_chains_its_own_layers(how, cache):
    model = torch_models.tiny_bottleneck()
    x = torch.randn(1, 3, 32, 32)
    fast = replaying(model, x, cache)
    other = copy.deepcopy(fast) if how == "deepcopy" else pickle.loads(pickle.dumps(fast))
    (chain,) = chains(other)
    own, original = {id(m) for m in other.modules()}, {id(m) for m in fast.modules()}
    assert chain._program is None and all(id(m) in own and id(m) not in original for m in chain.layers)
    with torch.no_grad():
        other.get_submodule("layer1.0.conv3").weight.mul_(2.0)  # the copy's layer, not the original's
        model.layer1[0].conv3.weight.mul_(2.0)
        for _ in range(2):
            assert rel_err(other(x), model(x)) < TOL


def test_a_chain_replays_the_int8_layers_that_quantize_a_float_input_quantization_first(tmp_path):
    skip_without_vnni()
    torch.manual_seed(2)
    # fp32 grouped stem -> int8 layer quantizing its float input, writing u8 -> int8 layer
    # reading that u8 in place -> the output layer: the chain holds the first three
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1, groups=2), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 8, 1)).eval()
    xs = [torch.randn(1, 4, 16, 16) for _ in range(3)]
    with torch.no_grad():
        fast = optimize_int8(model, xs[0], tmp_path)
        firsts = [fast(x).clone() for x in xs]
        (chain,) = chains(fast)
        # the quantizing layer replays too: its quantizing kernel's launch, then its own
        assert [type(s).__name__ for s in chain._program.segments] == ["Launches"]
        assert len(chain.layers[1]._fast.pre) == 1 and not chain.layers[2]._fast.pre
        assert len(chain._program.segments[0]) == len(chain.layers) + 1
        again = [fast(x).clone() for x in xs]  # replayed
        wants = [model(x) for x in xs]
    for first, repeat, want in zip(firsts, again, wants):
        assert torch.equal(first, repeat) and rel_err(repeat, want) < 8e-2


class TwoReaders(torch.nn.Module):
    """A float tensor read by two int8 layers (a ResNet block's first 1x1 and its downsample):
    the second takes the first's u8 copy."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.a = torch.nn.Conv2d(16, 16, 1)
        self.b = torch.nn.Conv2d(16, 16, 1)
        self.c = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.c(torch.relu(self.a(h)) + self.b(h))


def test_two_int8_layers_quantizing_one_float_tensor_stay_right_replayed(tmp_path):
    skip_without_vnni()
    torch.manual_seed(3)
    model = TwoReaders().eval()
    xs = [torch.randn(1, 3, 16, 16) for _ in range(4)]
    with torch.no_grad():
        fast = optimize_int8(model, xs[0], tmp_path)
        firsts = [fast(x).clone() for x in xs]
        again = [fast(x).clone() for x in xs]  # steady state: replays where the graph chains
        wants = [model(x) for x in xs]
    for first, repeat, want in zip(firsts, again, wants):
        assert torch.equal(first, repeat) and rel_err(repeat, want) < 8e-2
    # consecutive different inputs: nothing stale from the call before
    assert not torch.equal(again[0], again[1])


def test_a_replay_writes_the_inner_values_into_few_buffers_and_returns_the_layers_own(cache):
    # tiny MobileNet-v2: inverted residuals, so some values live across a block (the skip)
    model = torch_models.tiny_mobilenet()
    x = torch.randn(1, 3, 32, 32)
    fast = replaying(model, x, cache)
    (chain,) = chains(fast)
    program = chain._program
    inner = [v for i, v in enumerate(program.values[len(program.entries):])
             if len(program.entries) + i not in chain.exits]
    storages = {v.untyped_storage().data_ptr() for v in inner}
    own = {layer._fast.out.untyped_storage().data_ptr() for layer in chain.layers}
    assert len(storages) < len(inner) / 2 and not storages & own  # a few buffers of the program's
    with torch.no_grad():
        for xi in [torch.randn(1, 3, 32, 32) for _ in range(3)]:
            assert rel_err(fast(xi), model(xi)) < TOL
            assert chain._program is program  # replayed, not recorded again
    # what the chain returns is still its last layer's own buffer
    results = program.result if isinstance(program.result, tuple) else (program.result,)
    assert all(r.untyped_storage().data_ptr() in own for r in results)


def test_the_chain_launches_the_global_pooling_and_classifier_and_returns_fresh_outputs(cache):
    """A CNN's head (global average pooling, flatten, Dropout, classifier) is launched with
    the chain's layers; the chain returns a copy of the classifier's buffer, so an output
    held by the caller keeps its value through later calls. A Dropout put in training mode,
    or a hook on the classifier, has the head called as the graph calls it."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Dropout(0.5), torch.nn.Linear(32, 10)).eval()
    xs = [torch.randn(2, 3, 12, 12) for _ in range(3)]
    fast = replaying(model, xs[0], cache)
    (chain,) = chains(fast)
    assert chain.tail is not None and isinstance(chain.tail[1][0], torch.nn.Dropout)
    assert chain._program.tail is not None  # replaying the head too
    with torch.no_grad():
        gots = [fast(x) for x in xs]
        wants = [model(x) for x in xs]
        assert len({g.data_ptr() for g in gots}) == 3  # fresh tensors, none overwritten since
        for got, want in zip(gots, wants):
            assert got.shape == want.shape and rel_err(got, want) < TOL
        seen = []
        handle = fast.get_submodule("9").register_forward_hook(lambda m, args, out: seen.append(out.clone()))
        try:
            got = fast(xs[0])
        finally:
            handle.remove()
        assert len(seen) == 1 and torch.equal(seen[0], got) and rel_err(got, wants[0]) < TOL
        fast.get_submodule("8").train()  # Dropout now drops: the head runs one by one, as torch's
        a, b = fast(xs[0]), fast(xs[0])
        assert not torch.equal(a, b) and not torch.equal(a, gots[0])
        fast.get_submodule("8").eval()
        for _ in range(2):
            assert rel_err(fast(xs[1]), wants[1]) < TOL
        # the classifier's weights changed in place (the original model's and the copy's): seen
        model[9].weight.mul_(-2.0)
        fast.get_submodule("9").weight.mul_(-2.0)
        for _ in range(2):
            assert rel_err(fast(xs[1]), model(xs[1])) < TOL


def test_the_per_layer_benchmark_names_every_replayed_launch_of_a_chain_with_a_head(cache):
    """scripts/bench_layers.py times each launch of a replay by layer: the head's launches
    (the pooling's, the classifier's) come after the layers' and carry their own paths."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    try:
        from bench_layers import ChainTimer
    finally:
        sys.path.pop(0)
    model = torch_models.tiny_bottleneck()
    x = torch.randn(1, 3, 32, 32)
    fast = replaying(model, x, cache)
    (chain,) = chains(fast)
    timer = ChainTimer(fast)
    (names,) = timer.paths.values()
    assert names[-2:] == ["avgpool", "fc"] and len(names) == len(chain.layers) + 2
    with torch.no_grad(), timer.timing():
        got = fast(x)
    timer.end_round()
    assert rel_err(got, model(x)) < TOL and all(timer.rounds[p][0] > 0 for p in names)
