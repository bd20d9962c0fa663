"""PyTorch models in and out: tune a model's convolutions, run the model on convgen kernels.

>>> import torch, convgen.torch
>>> from convgen.torch.models import resnet50
>>> model = resnet50()                                   # any nn.Module torch.fx can trace
>>> x = torch.randn(1, 3, 224, 224)
>>> convgen.tune(convgen.torch.conv_layers(model, x), "host", trials=400, records="r50.jsonl")
>>> fast = convgen.torch.optimize(model, x, records="r50.jsonl")   # a copy; model is untouched
>>> y = fast(x)                                          # also fast(x8), fast(x.to(memory_format=torch.channels_last))
>>> print(convgen.torch.explain(fast))                   # per conv: what runs, and why

:func:`optimize` traces the model with ``torch.fx``, folds eval-mode BatchNorm into the
convolutions, fuses a following residual add and ReLU/ReLU6 into the kernels' epilogue, and
swaps each convolution it can serve for a :class:`Conv2d` of its own, whose ``forward`` is
the custom op ``convgen::conv2d`` (so ``torch.compile`` and ``torch.export`` trace through).
Kernels come from records (yours, then the shipped ones, then the template's default),
are built in parallel and cached on disk (``~/.cache/convgen/kernels``: the second
``optimize`` of a model builds nothing), and their weights are packed once. Anything it
cannot serve stays on torch, correct, and :func:`explain` says why.
"""

from __future__ import annotations

try:
    import torch
except ImportError as e:  # pragma: no cover - the torch extra is not installed
    raise ImportError("convgen.torch needs PyTorch: pip install 'convgen[torch]'") from e

import time
from typing import Any

from torch import nn

from ..errors import last_line
from ..spec import ConvSpec
from ..target import Target, get_target
from ..workloads import ConvLayers
from ._graph import Site, TraceError, site_spec, sites, trace
from ._module import Conv2d, Linear, QConv2d, QLinear, channels_last_input, conv2d, torch_conv2d
from ._chain import ConvChain, chain_layers
from ._pool import Pool2d, replace_layout_changes, replace_pools
from .threads import configure_threads, torch_single_threaded_forward

__all__ = ["conv_layers", "optimize", "explain", "refresh", "PRECISIONS", "Conv2d", "Linear", "ConvLayers", "TraceError", "conv2d",
           "configure_threads", "torch_conv2d", "model_from_factory", "import_layers"]


PRECISIONS = ("float32", "bfloat16", "int8")
"""What :func:`optimize` and :func:`conv_layers` take as ``precision``: what the convolutions
compute in. bfloat16: bf16 data and weights, fp32 sums, bf16 activations between them. int8:
u8 activations, s8 weights, s32 sums, a float32 epilogue (post-training quantization from
calibration batches, see :mod:`convgen.torch._quant`). The model's inputs and outputs keep
their dtype either way."""


#: the template that multiplies a stem's 1-3 input channels in bf16 (AMX tiles, each pixel's
#: row of taps folded into one tile row); where it does not serve, such a stem stays float32
FOLDED_STEM = "x86.amx_bf16_stem"


def _in_precision(spec: ConvSpec, precision: str, target: Target | None = None, nhwc: bool = True) -> ConvSpec:
    """``spec`` computed in ``precision`` (a float32 spec of the model, otherwise as it is).
    int8: u8 data, a float32 (dequantized) output, and a bias (where the input's zero point
    is folded in). ``target`` and ``nhwc`` (its kernels run channels_last): where the
    kernel will run, for an RGB stem in bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32" or spec.dtype != "float32":
        return spec
    if precision == "int8":
        return spec.replace(dtype="uint8", output_dtype="float32", bias=True)
    if spec.groups == 1 and spec.in_channels < 4:
        # bf16's arithmetic gain is vdpbf16ps's pairs along C; with 1-3 input channels (an
        # RGB stem) the kernel multiplies in fp32 anyway, so it reads the model's fp32 input
        # as it is (no conversion pass) and writes bf16 for the next layer. On AMX the
        # folded stem multiplies bf16 tiles (ResNet-50's 7x7 stem 0.25x x86.direct's time,
        # Emerald Rapids): there the input is converted (one pass over 3 channels) for it
        from ..schedules import get_template

        bf16 = spec.replace(dtype=precision)
        if target is not None and get_template(FOLDED_STEM).serves(bf16.replace(layout="NHWC" if nhwc else spec.layout),
                                                                   target) is None:
            return bf16
        return spec.replace(output_dtype=precision)
    return spec.replace(dtype=precision)


def conv_layers(model: nn.Module, *example_inputs: torch.Tensor, fused: bool = True,
                channels_last: bool = True, precision: str = "float32", target: str | Target = "host") -> ConvLayers:
    """The distinct convolution workloads of ``model`` at the example inputs' shapes.

    Names are module paths (``layer1.0.conv2``); a workload computed by several modules
    is listed once, under its first path, and counted. With ``fused`` (the default) each
    spec is the convolution as :func:`optimize` runs it: eval-mode BatchNorm folded into a
    bias, the residual add and ReLU/ReLU6 that follow it fused, so tuning them gives
    records that match exactly. ``channels_last`` (the default, as :func:`optimize`'s)
    gives NHWC specs; ``False`` the example input's own layout. ``precision``: the dtype the
    convolutions compute in, as :func:`optimize` runs them (so a campaign tunes the kernels
    the model runs; in int8, a layer no fast 8-bit template of ``target`` serves is listed in
    float32, as :func:`optimize` runs it). Convolutions convgen cannot serve (see
    :func:`explain`) are left out.
    """
    gm = trace(model, example_inputs)
    out = ConvLayers()
    for site in sites(gm, fuse=fused):
        spec = site_spec(site, fused=fused)
        if site.why_not or isinstance(spec, str):
            continue
        wanted = _in_precision(spec, precision, get_target(target), channels_last)
        if wanted.dtype == "uint8" and _cannot_serve(wanted.replace(layout="NHWC"), get_target(target)):
            wanted = spec
        spec = wanted
        out.add(site.path, spec.replace(layout="NHWC") if channels_last else spec)
    return out


def optimize(model: nn.Module, *example_inputs: torch.Tensor, target: str | Target = "host", records: Any = None,
             builtin_records: bool = True, num_threads: int | None = None, cache: str | None = None,
             parallel: int | None = None, threads: bool = True, channels_last: bool = True,
             precision: str = "float32", calibration: Any = None) -> torch.fx.GraphModule:
    """A copy of ``model`` whose convolutions run convgen kernels (``model`` is untouched).

    ``example_inputs`` fix the shapes kernels are built for now (other batch sizes, image
    sizes and channels_last inputs get theirs on first use). ``records``: tuning logs to
    take configs from (before the shipped ones; ``builtin_records=False`` ignores those).
    ``num_threads``: CPU threads of the kernels (default: every CPU of the process).
    ``cache``: the folder of compiled kernels (default ``~/.cache/convgen/kernels``);
    ``parallel``: build processes (default one per CPU). ``threads``: run torch's own
    operators on one thread inside the model's forward, so torch's spinning OpenMP workers
    leave the cores to the kernels (see :mod:`convgen.torch.threads`).
    ``channels_last`` (default): every convolution runs an NHWC kernel, whatever the
    input's layout: an NCHW input is converted once, where it enters the graph, then
    activations stay channels_last through torch's pooling and adds, and 4-D outputs come
    back in the layout the original model returns. NHWC kernels read 1x1 inputs in place
    and store whole vectors, where NCHW ones re-lay out the data on every call.
    ``channels_last=False`` runs NCHW kernels for NCHW tensors.
    ``precision="bfloat16"``: the convolutions compute in bf16 (bf16 data and weights, fp32
    sums: AVX512_BF16's ``vdpbf16ps`` where the CPU has it, fp32 math on bf16 values
    elsewhere), the activations between them are bf16 (half the memory traffic), the
    model's inputs and outputs keep their dtype; a layer convgen cannot serve in bf16 runs
    its fp32 kernel, and :func:`explain` says which and why. An RGB stem (fewer than 4 input
    channels) runs fp32 math on the fp32 input and writes bf16 (``float32->bfloat16``).
    ``precision="int8"`` with ``calibration`` (an iterable of inputs as the model takes them,
    8 or more representative batches): post-training static quantization
    (:mod:`convgen.torch._quant`): each convolution a fast 8-bit template serves runs u8 x s8
    with a float32 epilogue, consecutive ones pass u8 between them where the graph allows;
    the rest stays float32, and :func:`explain` says which and why.

    Raises :class:`TraceError` (a ``ValueError``) when torch.fx cannot trace the model or
    the model fails on the example inputs.
    """
    from ..cache import kernels

    target = get_target(target)
    gm = trace(model, example_inputs)
    found = sites(gm)
    build = {"records": records, "builtin_records": builtin_records, "num_threads": num_threads, "folder": cache}
    served: list[tuple[Site, ConvSpec]] = []
    report: dict[str, str] = {}
    runs_here = target.runs_here()
    fell_back: dict[str, str] = {}  # layers that run fp32 although the precision asked for less
    observers: dict[str, Any] = {}
    if precision == "int8":
        from ._quant import calibrate

        observers = calibrate(gm, [site for site in found if not site.why_not], calibration)
    for site in found:
        spec = site_spec(site)
        why = site.why_not or (spec if isinstance(spec, str) else None)
        if why is None and not runs_here:
            why = f"target {target.name} does not run on this machine"
        if why is None:
            wanted = _in_precision(spec, precision, target, channels_last and target.is_cpu)
            reason = _cannot_serve(wanted, target) if wanted is not spec else None
            if reason is None and wanted.dtype == "uint8" and not observers[site.path].seen:
                reason = "no calibration batch reached it"
            elif reason is None and wanted.dtype == "uint8" and any(wanted.padding):
                # the padding holds the input's zero point, its real 0 (a kernel padding with
                # u8 0 would read -zero steps there: wrong borders)
                wanted = wanted.replace(data_zero_point=observers[site.path].params()[1])
            if reason:
                fell_back[site.path] = f"float32 ({precision} not served: {reason})"
            else:
                spec = wanted
        if why is None and spec.dtype not in target.dtypes:
            why = f"dtype {spec.dtype}; {target.name} kernels take {', '.join(target.dtypes)}"
        device = "cuda" if target.family == "cuda" else "cpu"
        if why is None and site.conv.weight.device.type != device:
            why = f"weights on {site.conv.weight.device.type}; {target.name} kernels run on {device}"
        if why is None:
            served.append((site, spec))
        else:
            report[site.path] = why
    quant: dict[str, dict[str, Any]] = {}  # int8 sites: how each quantizes its input and output
    if precision == "int8":
        served, quant = _int8_plan(found, served, observers)
    t0 = time.perf_counter()
    if channels_last and target.is_cpu:
        served = [(site, spec.replace(layout="NHWC")) for site, spec in served]
    built = kernels([spec for _, spec in served], target, parallel=parallel, **build)
    replaced: dict[torch.fx.Node, torch.fx.Node] = {}
    pools: list[str] = []
    layout = "NHWC" if channels_last and target.is_cpu else "NCHW"
    read = {site.node.args[0] for site, _ in served}  # (before _rewrite erases the nodes)
    for (site, spec), kernel in zip(served, built):
        module = _convgen_module(site, spec, target, build, layout, quant.get(site.path))
        module.kernels[(spec.batch, spec.height, spec.width, spec.layout)] = kernel
        _rewrite(gm, site, module, replaced)
    if served:
        _outputs_as_before(gm, layout=layout == "NHWC")
        if layout == "NHWC":
            _inputs_channels_last(gm, read)
            if runs_here:  # the activations are channels_last: pooling (and the layout change) on convgen kernels too
                pools = replace_pools(gm, target, cache) + replace_layout_changes(gm, target, cache)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    mark_reused_outputs(gm)
    chain_layers(gm)
    gm.recompile()
    gm.convgen_torch_convs = report  # the convolutions left to torch, and why
    gm.convgen_precision = {"asked": precision, "fell_back": fell_back,
                            "int8": {path: q["note"] for path, q in quant.items()}}
    gm.convgen_build_seconds = time.perf_counter() - t0
    with torch.no_grad():  # pack the weights of the kernels just built
        for module in gm.modules():
            if isinstance(module, Conv2d):
                for key, kernel in module.kernels.items():
                    if not isinstance(kernel, Exception):
                        module._pack(key, kernel, module.weight)
    if target.is_cpu:
        configure_threads(num_threads)
        if threads and served:
            torch_single_threaded_forward(gm)
    if pools:  # build the pooling kernels of the example's shapes and dtypes (known once it runs)
        with torch.no_grad():
            try:
                gm(*example_inputs)
            except Exception:  # noqa: BLE001 - ran under ShapeProp already; a call that fails raises there again
                pass
    return gm


def _cannot_serve(spec: ConvSpec, target: Target) -> str | None:
    """Why no template serves ``spec`` on ``target`` (``None``: one does). 8-bit data needs a
    fast template: the generic loop nest would be slower than the float32 kernel."""
    if spec.dtype not in target.dtypes:
        return f"{target.name} kernels take {', '.join(target.dtypes)}"
    from ..schedules import candidates

    found = candidates(spec, target)
    if spec.acc_dtype == "int32":
        found = [t for t in found if not t.fallback]
        if not found:
            return f"no fast 8-bit {target.name} template serves {spec.describe()}"
    return None if found else f"no {target.name} template serves {spec.describe()}"


def _int8_plan(found: list[Site], served: list[tuple[Site, ConvSpec]],
               observers: dict[str, Any]) -> tuple[list[tuple[Site, ConvSpec]], dict[str, dict[str, Any]]]:
    """The int8 sites' quantization: each one's input scale and zero point (its observer),
    and, where a site writes u8 for the next (:func:`convgen.torch._quant.chained`), a uint8
    output at that one's scale. Returns the served list with those outputs and, per path,
    the :class:`~convgen.torch._module.QConv2d` arguments and a note for :func:`explain`."""
    from ._quant import chained

    int8 = {site.path for site, spec in served if spec.dtype == "uint8"}
    chain = chained(found, int8, observers)
    feeds = {consumer: producer for producer, (inputs, _) in chain.items() for consumer in inputs}
    skips = {consumer: producer for producer, (_, residuals) in chain.items() for consumer in residuals}
    # what each producer writes: u8 at the scale its input readers quantize with (one tensor)
    scales = {producer: observers[inputs[0]].params()[0] for producer, (inputs, _) in chain.items()}
    quant: dict[str, dict[str, Any]] = {}
    out = []
    for site, spec in served:
        if site.path in int8:
            scale, zero = observers[site.path].params()
            q: dict[str, Any] = {"in_scale": scale, "in_zero": zero, "out_scale": None}
            source = f"u8 from {feeds[site.path]}" if site.path in feeds else f"input quantized (scale {scale:.3g}, " \
                                                                               f"zero point {zero})"
            if site.path in skips:  # its residual comes in u8 at the producer's output scale
                q["residual_scale"] = scales[skips[site.path]]
                spec = spec.replace(residual_dtype="uint8")
                source += f", residual u8 from {skips[site.path]}"
            if site.path in chain:
                q["out_scale"] = scales[site.path]
                spec = spec.replace(output_dtype="uint8")
                if spec.residual and site.path not in skips:  # a float32 residual, in real units
                    q["residual_scale"] = 1.0  # (the epilogue works in the output's: r / out_scale)
                    spec = spec.replace(residual_dtype="float32")
                if spec.activation == "relu6":
                    # the kernel's epilogue works in the output's units (scale folded in), where
                    # ReLU6's bound is 6 / out_scale, not 6; the u8 clamp at 255 is that bound
                    # or tighter (the consumer's observer saw this ReLU6's outputs: out_scale =
                    # max / 255 <= 6 / 255), so the kernel clamps at 0 and 255 only
                    spec = spec.replace(activation="relu")
            readers = ", ".join(sum(chain[site.path], ())) if site.path in chain else ""
            q["note"] = f"int8: {source}, output " + (f"u8 for {readers}" if readers else "float32")
            quant[site.path] = q
        out.append((site, spec))
    return out, quant


def mark_reused_outputs(gm: torch.fx.GraphModule) -> list[str]:
    """Let each convgen layer whose output never leaves the forward reuse one output buffer
    (:attr:`Conv2d.reuse_output`); returns their paths.

    A layer qualifies when the graph calls it once and every reader of its output is a
    convgen layer called once (a :class:`Conv2d`, as input or residual, or a :class:`Pool2d`):
    those compute into fresh memory or their own buffers and return nothing that aliases
    their inputs, so no reference to the buffer survives the forward, and its next write
    cannot change a tensor anyone holds. A model output, a torch operator (which may return
    a view: ``flatten``, ``contiguous``) or a shared module keeps fresh outputs. A hook on
    the layer or on a reader (which could keep the tensor) turns reuse off while it is
    registered. ResNet-50: 54 of its 56 convgen layers (its 53 convolutions and the max
    pooling; not the global pooling, read by torch's flatten, nor the classifier, whose
    output is the model's)."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def layer(node: torch.fx.Node) -> nn.Module | None:
        if node.op != "call_module" or calls[node.target] != 1:
            return None
        m = gm.get_submodule(node.target)
        return m if isinstance(m, (Conv2d, Pool2d)) and not isinstance(m, Linear) else None

    marked = []
    for node in gm.graph.nodes:
        m = layer(node)
        readers = [layer(user) for user in node.users]
        if m is None or not readers or any(r is None for r in readers):
            continue
        m.reuse_output, m._readers = True, tuple(readers)
        marked.append(node.target)
    return marked


def _outputs_as_before(gm: torch.fx.GraphModule, *, layout: bool) -> None:
    """Give each output the original model returns its dtype back (a bf16 network's outputs
    are the dtype its model returns) and, with ``layout``, make each 4-D (or unbatched 3-D)
    contiguous one contiguous again (channels_last activations would otherwise leak out of a
    channels_last network)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")

    def restore(arg: Any) -> Any:
        if not isinstance(arg, torch.fx.Node):
            return arg
        meta = arg.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            return arg
        with gm.graph.inserting_before(output):
            if meta.dtype.is_floating_point:
                arg = gm.graph.call_method("to", (arg, meta.dtype))  # a no-op where it already is
            if layout and len(meta.shape) in (3, 4) and meta.memory_format == torch.contiguous_format:
                arg = gm.graph.call_method("contiguous", (arg,))
        return arg

    output.args = torch.fx.node.map_aggregate(output.args, restore)


def _inputs_channels_last(gm: torch.fx.GraphModule, read: set) -> None:
    """Convert each 4-D floating input of the model that a served convolution reads to
    channels_last once, where it enters the graph: every layer that reads it (Inception's
    four branches and its pooling, say) then gets the NHWC data as a view instead of making
    its own copy. (A channels_last input passes unchanged, an unbatched one too: see
    :func:`~convgen.torch._module.channels_last_input`.)"""
    for node in list(gm.graph.nodes):
        meta = node.meta.get("tensor_meta")
        if node.op != "placeholder" or node not in read or meta is None or not hasattr(meta, "shape"):
            continue
        if len(meta.shape) != 4 or not meta.dtype.is_floating_point:
            continue
        users = list(node.users)
        with gm.graph.inserting_after(node):
            converted = gm.graph.call_function(channels_last_input, (node,))
        for user in users:
            user.replace_input_with(node, converted)


def import_layers(source: str, input_shape: tuple[int, ...] | None, channels_last: bool = True,
                  precision: str = "float32") -> ConvLayers:
    """The model importer of the command line (``--torch-model``): the distinct convolutions
    of the model ``PKG.MODULE:FACTORY`` builds (:func:`model_from_factory`) at ``input_shape``
    (random inputs), as :func:`conv_layers` gives them."""
    if not input_shape:
        raise ValueError("--torch-model needs --input-shape N,C,H,W (e.g. 1,3,224,224)")
    return conv_layers(model_from_factory(source), torch.randn(*input_shape), channels_last=channels_last,
                       precision=precision)


def model_from_factory(text: str) -> nn.Module:
    """The model ``PKG.MODULE:FACTORY`` builds (``FACTORY()``, then ``.eval()``): how the CLI's
    ``--torch-model`` gets one, e.g. ``convgen.torch.models:resnet50``."""
    import importlib

    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--torch-model: expected PKG.MODULE:FACTORY (e.g. convgen.torch.models:resnet50), got {text!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--torch-model: cannot import {module_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--torch-model: {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--torch-model: {text}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _convgen_module(site: Site, spec: ConvSpec, target: Target, build: dict, layout: str,
                    quant: dict[str, Any] | None = None) -> Conv2d:
    conv = site.conv
    extra = {} if quant is None else {k: v for k, v in quant.items() if k != "note"}
    if site.linear:  # weights [K, C] as K filters of C x 1 x 1
        return (Linear if quant is None else QLinear)(
            conv.weight[:, :, None, None], conv.bias, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
            activation=site.activation, residual=site.residual is not None, spec=spec.replace(layout="NCHW"),
            target=target, build=build, fused=tuple(site.fused), layout="NHWC", **extra)
    if site.bn is not None:
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        conv = fuse_conv_bn_eval(conv, site.bn)
    rows, cols = site.taps()  # the taps that read only padding are cut off (spec and weights alike)
    kind = Conv2d if quant is None else QConv2d
    return kind(conv.weight[:, :, rows, cols], conv.bias, stride=spec.stride, padding=spec.padding,
                dilation=spec.dilation,
                groups=spec.groups, activation=site.activation, residual=site.residual is not None,
                spec=spec.replace(layout="NCHW"), target=target, build=build, fused=tuple(site.fused),
                layout=layout, **extra)


def _rewrite(gm: torch.fx.GraphModule, site: Site, module: Conv2d, replaced: dict) -> None:
    """Replace the site's chain of nodes with one call of ``module`` (at the module's path);
    ``replaced`` maps the chains' last nodes rewritten so far to their new calls (a later
    site's input or residual may be one of them)."""
    gm.add_submodule(site.path, module)
    last = site.chain[-1]
    args = tuple(replaced.get(a, a) for a in (site.node.args[0], site.residual) if a is not None)
    with gm.graph.inserting_after(last):
        new = gm.graph.call_module(site.path, args)
    new.meta = dict(last.meta)
    last.replace_all_uses_with(new)
    replaced[last] = new
    for node in reversed(site.chain):
        gm.graph.erase_node(node)


def refresh(model: nn.Module) -> None:
    """Pack the weights of every convgen convolution of ``model`` again at its next call.

    Weight changes are noticed by themselves (a new tensor, an in-place update, a write of
    the whole tensor through ``.data``: see :class:`~convgen.torch._module.WeightWatch`);
    an edit of a few elements through ``weight.data`` or under ``torch.inference_mode`` can
    fall between the values sampled, so call this after one."""
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.refresh()


def explain(model: nn.Module) -> str:
    """One line per convolution of an :func:`optimize`'d model: what runs it and why.

    ``convgen``: the template, its config and where the config came from (``records``,
    ``builtin``, ``default``; ``(batch 1)`` when records of another batch size serve it),
    per input shape built so far, and what was fused. ``torch``: the reason convgen does
    not serve it.
    """
    rows = []
    torch_convs = getattr(model, "convgen_torch_convs", {})
    counts = {"convolutions": [0, 0], "linear layers": [0, 0]}  # [served, total]
    for path, m in model.named_modules():
        if isinstance(m, Conv2d):
            count = counts["linear layers" if isinstance(m, Linear) else "convolutions"]
            count[1] += 1
            built = [k for k in m.kernels.values() if not isinstance(k, Exception)]
            count[0] += bool(built) or not m.kernels  # no shape run yet: its kernels come on first use
            fused = f"  [fused {', '.join(m.fused)}]" if m.fused else ""
            where = "convgen" if built or not m.kernels else "torch"
            what = f"linear {m.spec.in_channels}->{m.spec.out_channels}" if isinstance(m, Linear) else m.spec.describe()
            precision = getattr(model, "convgen_precision", {})
            note = precision.get("fell_back", {}).get(path) or precision.get("int8", {}).get(path)
            rows.append(f"{path}: {where} {what}{fused}" + (f"  [{note}]" if note else ""))
            for (n, h, w, layout), k in sorted(m.kernels.items(), key=lambda kv: str(kv[0])):
                shape = f"{n * h * w} rows" if isinstance(m, Linear) else f"n{n} {h}x{w} {layout}"
                if isinstance(k, Exception):
                    rows.append(f"    {shape}: torch (the kernel did not build: {last_line(k)[:300]})")
                else:
                    rows.append(f"    {shape}: {k.template} {k.config} ({k.meta.get('config_source', '?')} config)")
        elif isinstance(m, Pool2d):
            if m.kind == "nhwc":
                rows.append(f"{path}: the input to channels_last: a convgen kernel on NCHW CPU inputs, torch otherwise")
            else:
                what = "global average pooling" if m.kind == "avg" else \
                    f"max pooling {m.kernel[0]}x{m.kernel[1]}/{m.stride[0]} pad {m.padding[0]}"
                rows.append(f"{path}: {what}: convgen kernels on channels_last CPU inputs, torch otherwise")
            for (shape, dtype), k in sorted(m.kernels.items(), key=lambda kv: str(kv[0])):
                where = f"torch ({last_line(k)[:200]})" if isinstance(k, Exception) else "convgen"
                rows.append(f"    {tuple(shape)} {str(dtype).removeprefix('torch.')}: {where}")
        elif isinstance(m, ConvChain):
            head = ", then the global pooling and classifier (a copy returned)" if m.tail else ""
            rows.append(f"{path}: {len(m.layers)} convolutions{head} launched back to back while nothing changes "
                        "(each one by one otherwise)")
        elif isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and path in torch_convs):
            counts["linear layers" if isinstance(m, nn.Linear) else "convolutions"][1] += 1
            rows.append(f"{path}: torch ({torch_convs.get(path, 'not optimized by convgen')})")
    if not rows:
        return "no convolutions"
    summary = [f"{served} of {total} {kind} run convgen kernels" for kind, (served, total) in counts.items()
               if total or kind == "convolutions"]
    return "\n".join(rows + summary)
