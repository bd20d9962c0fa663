"""Finding a model's convolutions and what can be fused into them, with torch.fx.

``torch.fx.symbolic_trace`` gives the graph (module calls keep their module paths), and
``ShapeProp`` runs the example inputs through it for every tensor's shape, dtype and
memory format. A convolution site is an ``nn.Conv2d`` call followed, each step only when
it is the sole user of the one before, by an eval-mode ``BatchNorm2d`` (folded into the
weights), an add of a tensor of the same shape (the residual), and a ReLU or ReLU6
(ResNet's conv -> BN -> (+ skip) -> ReLU, MobileNet-v2's conv -> BN -> ReLU6 and
conv -> BN -> + skip).
"""

from __future__ import annotations

import contextlib
import io
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..spec import ConvSpec, SpecError


class TraceError(ValueError):
    """The model cannot be traced or run on the example inputs; the message says why."""


_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", torch.relu_: "relu"}


@dataclass
class Site:
    """One ``nn.Conv2d`` (or ``nn.Linear``) call of the traced graph and what follows it."""

    node: torch.fx.Node
    path: str
    conv: nn.Conv2d | nn.Linear
    chain: list[torch.fx.Node] = field(default_factory=list)  # the nodes fused: conv, bn, add, relu
    bn: nn.BatchNorm2d | None = None
    residual: torch.fx.Node | None = None
    activation: str | None = None
    fused: list[str] = field(default_factory=list)
    why_not: str | None = None  # why torch keeps it

    @property
    def input_meta(self) -> Any:
        return self.node.args[0].meta.get("tensor_meta")

    @property
    def linear(self) -> bool:
        """An ``nn.Linear``: a 1x1 convolution over one row of ``prod(x.shape[:-1])`` pixels, NHWC
        (a row, not a batch of one-pixel images, so that the kernel tiles the pixels)."""
        return isinstance(self.conv, nn.Linear)

    def spec(self, *, fused: bool = True, trim: bool = True) -> ConvSpec:
        """The workload at the example input: NHWC for a channels_last input; with the fused
        epilogue (``fused``) or as the module alone computes it; ``trim``: filter taps that
        read only zero padding cut off (:meth:`ConvSpec.without_dead_taps`; the module's
        weights are cut alike, :meth:`taps`)."""
        meta = self.input_meta
        conv = self.conv
        if self.linear:  # y[..., K] = x[..., C] W^T + b: K filters of C x 1 x 1 over a row of N pixels
            n = math.prod(int(d) for d in meta.shape[:-1])
            return ConvSpec(batch=1, in_channels=conv.in_features, out_channels=conv.out_features, height=1, width=n,
                            kernel=1, layout="NHWC", dtype=str(meta.dtype).removeprefix("torch."),
                            bias=conv.bias is not None, residual=fused and self.residual is not None,
                            activation=self.activation if fused else None)
        # an unbatched C x H x W input runs as a batch of one (convgen.torch.Conv2d.forward)
        n, c, h, w = (int(d) for d in ((1, *meta.shape) if len(meta.shape) == 3 else meta.shape))
        layout = "NHWC" if _is_channels_last(meta) else "NCHW"
        bias = conv.bias is not None or (fused and self.bn is not None)
        spec = ConvSpec(batch=n, in_channels=c, out_channels=conv.out_channels, height=h, width=w,
                        kernel=conv.kernel_size, stride=conv.stride, padding=_padding(conv), dilation=conv.dilation,
                        groups=conv.groups, layout=layout, dtype=str(meta.dtype).removeprefix("torch."),
                        bias=bias, residual=fused and self.residual is not None,
                        activation=self.activation if fused else None)
        return spec.without_dead_taps() if trim else spec

    def taps(self) -> tuple[slice, slice]:
        """The rows and columns of the module's filters that :meth:`spec` keeps."""
        if self.linear:
            return slice(None), slice(None)
        (r0, r1), (s0, s1) = self.spec(trim=False).live_taps()
        return slice(r0, r1 + 1), slice(s0, s1 + 1)


def _padding(conv: nn.Conv2d) -> Any:
    if isinstance(conv.padding, str):
        return conv.padding  # "same" (stride 1 in torch) or "valid": ConvSpec resolves both alike
    return tuple(conv.padding)


def _is_channels_last(meta: Any) -> bool:
    return meta.memory_format == torch.channels_last and len(meta.shape) == 4 and meta.shape[1] > 1 \
        and meta.shape[2] * meta.shape[3] > 1


def trace(model: nn.Module, example_inputs: tuple) -> torch.fx.GraphModule:
    """A traced copy of ``model`` whose nodes carry the shapes of ``example_inputs``."""
    import copy

    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not example_inputs:
        raise ValueError("give example inputs: optimize(model, torch.randn(1, 3, 224, 224)), say")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"example input {i} is a {type(x).__name__}, not a torch.Tensor")
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as e:  # noqa: BLE001 - data-dependent control flow, an untraceable call
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''} (convgen.torch needs a model torch.fx "
                         "can trace; data-dependent control flow in forward is the usual cause)") from None
    try:
        # ShapeProp prints the traceback of a failing node itself: the error below says it once
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as e:  # noqa: BLE001
        cause = e.__cause__ or e
        shapes = ", ".join(str(tuple(x.shape)) for x in example_inputs)
        raise TraceError(f"{type(model).__name__} fails on example inputs of shape {shapes}: "
                         f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from None
    for node in gm.graph.nodes:
        if isinstance(node.type, str):
            # a postponed annotation (``from __future__ import annotations`` in the model's
            # module) is a string: fx would put it among the generated code's globals, which
            # then do not pickle (torch.save of the optimized model failed on it)
            node.type = None
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d):
            meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], torch.fx.Node) else None
            if meta is not None and hasattr(meta, "shape") and len(meta.shape) not in (3, 4):
                raise TraceError(f"the convolution {node.target} gets a {len(meta.shape)}-D input "
                                 f"{tuple(meta.shape)} from example inputs of shape "
                                 f"{', '.join(str(tuple(x.shape)) for x in example_inputs)}: give N,C,H,W "
                                 "(or unbatched C,H,W) inputs")
    return gm


def free_path(gm: torch.fx.GraphModule, prefix: str) -> str:
    """The first ``<prefix>_<i>`` that names nothing in ``gm`` yet: where a module convgen adds
    to the graph (a pooling kernel, a chain) goes."""
    return next(f"{prefix}_{i}" for i in range(len(gm.graph.nodes) + 1) if not hasattr(gm, f"{prefix}_{i}"))


def _sole_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _activation(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str | None:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is nn.GELU:  # the erf form only (approximate="tanh" is another function)
            return "gelu" if m.approximate == "none" else None
        return {nn.ReLU: "relu", nn.ReLU6: "relu6"}.get(type(m))
    if node.op == "call_function" and node.target is F.gelu:
        exact = len(node.args) == 1 and node.kwargs.get("approximate", "none") == "none"
        return "gelu" if exact else None
    if node.op == "call_function" and node.target in _RELUS:
        return _RELUS[node.target]
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _residual_of(add: torch.fx.Node, last: torch.fx.Node) -> torch.fx.Node | None:
    """The other operand of ``add`` when it adds a tensor of ``last``'s shape and dtype."""
    is_add = (add.op == "call_function" and add.target in _ADDS) or (add.op == "call_method" and add.target in ("add", "add_"))
    if not is_add or add.kwargs or len(add.args) != 2 or add.args.count(last) != 1:
        return None
    other = add.args[1] if add.args[0] is last else add.args[0]
    if not isinstance(other, torch.fx.Node):
        return None
    mine, theirs = last.meta.get("tensor_meta"), other.meta.get("tensor_meta")
    if mine is None or theirs is None or not hasattr(theirs, "shape"):
        return None
    return other if (tuple(theirs.shape) == tuple(mine.shape) and theirs.dtype == mine.dtype) else None


def _served_kind(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.Conv2d, nn.Linear))


def sites(gm: torch.fx.GraphModule, *, fuse: bool = True) -> list[Site]:
    """Every ``nn.Conv2d`` and ``nn.Linear`` call of the graph, in order, with what can be
    fused into it (a linear layer is a 1x1 convolution: see :attr:`Site.linear`)."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    out = []
    claimed: set[torch.fx.Node] = set()  # an add of two convolutions fuses into the first only
    for node in gm.graph.nodes:
        if not _served_kind(gm, node):
            continue
        conv = gm.get_submodule(node.target)
        site = Site(node=node, path=node.target, conv=conv, chain=[node])
        out.append(site)
        base = nn.Linear if site.linear else nn.Conv2d
        if type(conv) is not base:
            site.why_not = f"{type(conv).__name__} subclasses {base.__name__}: its forward may compute something else"
            continue
        meta = site.input_meta
        if site.linear:
            if meta is None or not hasattr(meta, "shape") or len(meta.shape) < 1 or not math.prod(meta.shape[:-1]):
                site.why_not = "its input is not one tensor of features"
                continue
        else:
            if conv.padding_mode != "zeros":
                site.why_not = f"padding_mode={conv.padding_mode!r} (convgen pads with zeros)"
                continue
            if meta is None or not hasattr(meta, "shape") or len(meta.shape) not in (3, 4):
                site.why_not = "its input is not one N,C,H,W (or C,H,W) tensor"
                continue
        if not fuse or calls[node.target] > 1:
            continue  # a module called at several places serves each of them unfused
        last = node
        user = _sole_user(last)
        if user is not None and user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.BatchNorm2d):
            bn = gm.get_submodule(user.target)
            if not bn.training and not conv.training and bn.track_running_stats and bn.running_mean is not None:
                site.bn, last = bn, user
                site.chain.append(user)
                site.fused.append(user.target)
        user = _sole_user(last)
        if user is not None and user not in claimed and (other := _residual_of(user, last)) is not None:
            site.residual, last = other, user
            site.chain.append(user)
            site.fused.append("add")
        user = _sole_user(last)
        if user is not None and (act := _activation(gm, user)) is not None:
            site.activation, last = act, user
            site.chain.append(user)
            site.fused.append(act)
        claimed.update(site.chain)
    return out


def site_spec(site: Site, *, fused: bool = True) -> ConvSpec | str:
    """The site's spec, or why it has none (a shape convgen's ConvSpec refuses)."""
    try:
        return site.spec(fused=fused)
    except SpecError as e:
        return str(e)
