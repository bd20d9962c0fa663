"""Pooling layers on convgen kernels (:mod:`convgen.pool`) inside an optimized model.

An optimized model's activations are channels_last, and torch's own operators run on one
thread inside its forward (:mod:`convgen.torch.threads`): there torch's max pooling was the
slowest layer left to it (ResNet-50's 3x3/2 over 112x112x64: 435 us in fp32 on one Zen 5
thread, against 56 us for the convgen kernel on the model's two). :func:`replace_pools`
swaps ``nn.MaxPool2d`` / ``F.max_pool2d`` (``dilation=1``, ``ceil_mode=False``, no indices)
and global average pooling (``nn.AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)``)
for :class:`Pool2d`, which runs the kernel on a channels_last CPU tensor of a dtype the
kernel takes and torch's operator on anything else (and under autograd or tracing).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import increment_version

from ..pool import DTYPES, PoolSpec, pool_kernel
from ..target import Target
from ._graph import free_path
from ._module import _hooked, channels_last_input, thread_buffer


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    return None


class Pool2d(nn.Module):
    """Max pooling (``kind="max"``), global average pooling (``kind="avg"``) or the change of
    a network's NCHW input to channels_last (``kind="nhwc"``, see :func:`replace_layout_changes`)
    on convgen kernels, one per input shape and dtype, built on first use (and cached on disk)."""

    def __init__(self, kind: str, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 target: Target, folder: str | None = None) -> None:
        super().__init__()
        self.kind, self.kernel, self.stride, self.padding = kind, kernel, stride, padding
        self.target, self.folder = target, folder
        self._init_state()

    def _init_state(self) -> None:
        self.kernels: dict[tuple, Any] = {}  # (shape, dtype) -> (function, output shape, launch) or the build's exception
        self._outs: dict[tuple, tuple] = {}  # ((shape, dtype), thread) -> (output buffer, its N,C,H,W view)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("kernels", "_outs", "_lock", "_last")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def extra_repr(self) -> str:
        if self.kind == "nhwc":
            return f"NCHW to channels_last, target={self.target.name}"
        if self.kind == "avg":
            return f"global average, target={self.target.name}"
        return f"max {self.kernel}, stride={self.stride}, padding={self.padding}, target={self.target.name}"

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What torch computes (inputs the kernels do not take)."""
        if self.kind == "nhwc":
            return channels_last_input(x)
        if self.kind == "avg":
            return F.adaptive_avg_pool2d(x, 1)
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = self._kernel(x)
        if fn is None:
            return self.torch_forward(x)
        f, out_shape, launch = fn
        reuse = self.reuse_output and not _hooked(self)
        if reuse:
            out, result = thread_buffer(self._outs, (x.shape, x.dtype), out_shape, x.dtype, x.device, True)
        else:
            out = torch.empty(out_shape, dtype=x.dtype)
            result = out.permute(0, 3, 1, 2)
        # channels_last N,C,H,W is N,H,W,C in memory; the layout change reads N,C,H,W as it is
        args = (x if self.kind == "nhwc" else x.permute(0, 2, 3, 1), out)
        f(*args)
        if reuse:
            increment_version(out)
            if not torch.is_grad_enabled():  # what a layer chain replays (see ConvChain's tail)
                self._last = PoolCall(threading.get_ident(), x, result, launch, args)
        return result

    #: as :attr:`convgen.torch.Conv2d.reuse_output`: one output buffer per input shape and thread
    reuse_output = False
    _readers: tuple = ()
    #: the last call into the reused buffer
    _last: "PoolCall | None" = None

    def _kernel(self, x: torch.Tensor) -> tuple | None:
        """The kernel for ``x`` (built now if new), or ``None`` where torch computes it."""
        if type(x) is not torch.Tensor or torch.compiler.is_compiling() or x.device.type != "cpu" or x.dim() != 4:
            return None
        if torch.is_grad_enabled() and x.requires_grad:
            return None
        if self.kind == "nhwc":
            # an input channels_last already passes as it is (torch_forward): only a plain
            # NCHW one is changed (1-channel or 1x1 tensors are both, and pass)
            if not x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
                return None
        elif not x.is_contiguous(memory_format=torch.channels_last):
            return None
        key = (x.shape, x.dtype)
        held = self.kernels.get(key)
        if held is None:
            with self._lock:
                held = self.kernels.get(key)
                if held is None:
                    held = self.kernels[key] = self._build(x)
        return None if isinstance(held, Exception) else held

    def _build(self, x: torch.Tensor) -> Any:
        dtype = str(x.dtype).removeprefix("torch.")
        n, c, h, w = (int(d) for d in x.shape)
        try:
            if dtype not in DTYPES[self.kind]:
                raise ValueError(f"dtype {dtype}: {self.kind} pooling kernels take {', '.join(DTYPES[self.kind])}")
            if self.kind == "avg":
                spec = PoolSpec.global_avg(n, c, h, w, dtype)
            elif self.kind == "nhwc":
                spec = PoolSpec.to_nhwc(n, c, h, w, dtype)
            else:
                spec = PoolSpec("max", n, c, h, w, self.kernel, self.stride, self.padding, dtype)
            f = pool_kernel(spec, self.target, self.folder)
            return f, spec.output_shape, _Launch(f, self.kind)
        except Exception as e:  # noqa: BLE001 - a shape or dtype the kernels do not take: torch serves it
            return e


class PoolCall(NamedTuple):
    """A :class:`Pool2d` call into its reused buffer, as a chain replays it."""

    thread: int
    x: torch.Tensor
    result: torch.Tensor  # what the call returned (a view of ``args[1]``)
    launch: "_Launch"
    args: tuple  # (input as the kernel reads it, output buffer)


class _Launch:
    """A pooling kernel's entry point as :class:`convgen.runtime.Launches` takes one (the
    kernel runs on the calling thread's pool as it is: no thread count of its own)."""

    __slots__ = ("func", "template")
    threads, cpu = None, False

    def __init__(self, func: Any, kind: str) -> None:
        self.func, self.template = func, f"pool.{kind}"

    def __call__(self, *args: Any) -> None:
        self.func(*args)


def _max_args(args: tuple, kwargs: dict) -> tuple | None:
    """``(kernel, stride, padding)`` of a ``max_pool2d(x, kernel_size, stride, padding,
    dilation, ceil_mode, return_indices)`` call the kernels serve, else ``None``."""
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    given = dict(zip(names, args[1:]))
    given.update(kwargs)
    kernel = _pair(given.get("kernel_size"))
    stride = _pair(given.get("stride") or given.get("kernel_size"))
    padding = _pair(given.get("padding", 0))
    if None in (kernel, stride, padding) or _pair(given.get("dilation", 1)) != (1, 1):
        return None
    if given.get("ceil_mode", False) or given.get("return_indices", False):
        return None
    return kernel, stride, padding


def _pool_of(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple | None:
    """``(kind, kernel, stride, padding)`` if ``node`` is a pooling the kernels serve."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is nn.MaxPool2d:
            args = _max_args((None, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices), {})
            return None if args is None else ("max", *args)
        if type(m) is nn.AdaptiveAvgPool2d and _pair(m.output_size) == (1, 1):
            return ("avg", (1, 1), (1, 1), (0, 0))
    elif node.op == "call_function":
        if node.target is F.max_pool2d:
            args = _max_args(node.args, node.kwargs)
            return None if args is None else ("max", *args)
        if node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            if _pair(size) == (1, 1):
                return ("avg", (1, 1), (1, 1), (0, 0))
    return None


def replace_pools(gm: torch.fx.GraphModule, target: Target, folder: str | None = None) -> list[str]:
    """Replace each pooling of ``gm`` the kernels serve with a :class:`Pool2d` (at the
    module's path, or ``convgen_pool_<i>`` for a functional call); returns their paths."""
    paths = []
    for node in list(gm.graph.nodes):
        found = _pool_of(gm, node)
        if found is None:
            continue
        kind, kernel, stride, padding = found
        module = Pool2d(kind, kernel, stride, padding, target, folder)
        if node.op == "call_module":
            path = node.target
            gm.add_submodule(path, module)  # replaces the torch module at its path
        else:
            path = free_path(gm, "convgen_pool")
            gm.add_submodule(path, module)
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(path, (node.args[0],))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        paths.append(path)
    return paths


def replace_layout_changes(gm: torch.fx.GraphModule, target: Target, folder: str | None = None) -> list[str]:
    """Replace each change of a model input to channels_last (the
    :func:`~convgen.torch._module.channels_last_input` calls :func:`convgen.torch.optimize`
    puts where such an input enters) with a :class:`Pool2d` of kind ``nhwc``
    (``convgen_nhwc_<i>``): the same result from a kernel on the model's threads, into a
    reused buffer where only convgen layers read it. Returns their paths."""
    paths = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not channels_last_input:
            continue
        path = free_path(gm, "convgen_nhwc")
        gm.add_submodule(path, Pool2d("nhwc", (1, 1), (1, 1), (0, 0), target, folder))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(path, tuple(node.args))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        paths.append(path)
    return paths
