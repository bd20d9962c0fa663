"""``convgen.torch.Conv2d`` and the ``convgen::conv2d`` custom op it calls.

The module's ``forward`` is one call of the op, so ``torch.compile`` and ``torch.export``
see an opaque operator with a fake (meta) implementation and trace through; the op's real
implementation finds the module again by its handle, and runs a convgen kernel:

- the layout: a ``channels_last`` tensor is an NHWC array in memory, so it runs an NHWC
  kernel on a permuted view (no copy) and returns a ``channels_last`` result; an NCHW input
  runs the NCHW kernel, or (``layout="NHWC"``, what :func:`convgen.torch.optimize` sets)
  is converted once and runs NHWC too, so a whole network stays channels_last;
- one kernel per (batch, height, width, layout), built on first use and kept (records
  tuned at batch 1 serve other batch sizes: :meth:`convgen.ConvSpec.stand_ins`);
- the weights are packed once per kernel, and again only when the weight tensor changes:
  a new tensor (``data_ptr``), an in-place update (``tensor._version``), or a write through
  ``weight.data`` that neither of those sees, caught by a sample of 16 values checked on
  every call (:class:`WeightWatch`); :meth:`Conv2d.refresh` repacks after edits a sample
  can miss (a few elements of a large filter bank);
- unbatched ``C x H x W`` inputs run as a batch of one, as ``nn.Conv2d`` takes them;
- what the kernel cannot take (another dtype or device, a failed build) is computed by
  torch itself, with the same epilogue: correct, and reported by ``explain``.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import increment_version
from torch.nn.modules import module as torch_module

from ..spec import ConvSpec
from ..target import Target

_LAYERS: "weakref.WeakValueDictionary[str, Conv2d]" = weakref.WeakValueDictionary()
_COUNTER = itertools.count()


def _channels_last(x: torch.Tensor) -> bool:
    """Does ``x`` lie in memory as NHWC (and not also as NCHW, as 1-channel tensors do)?"""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _nhwc_memory(x: torch.Tensor) -> bool:
    """Does ``x`` (N,C,H,W) lie in memory as NHWC, whether or not also as NCHW (a 1x1 map,
    as a linear layer's row of features)? What a quantizer, which reads memory, asks."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def channels_last_input(x: Any) -> Any:
    """A model input as channels_last where it is a 4-D tensor (an unbatched or other input
    passes as it is): what :func:`convgen.torch.optimize` puts where such an input enters."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _out_hw(h: Any, w: Any, weight_shape: Any, stride: list[int], padding: list[int], dilation: list[int]) -> tuple:
    r, s = weight_shape[2], weight_shape[3]
    oh = (h + padding[0] + padding[2] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    ow = (w + padding[1] + padding[3] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return oh, ow


def torch_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                 stride: list[int], padding: list[int], dilation: list[int], groups: int, activation: str) -> torch.Tensor:
    """The same computation in torch's own operators: the fallback, and the gradient."""
    t, left, b, right = padding
    if t == b and left == right:
        y = F.conv2d(x, weight, bias, stride, (t, left), dilation, groups)
    else:
        y = F.conv2d(F.pad(x, (left, right, t, b)), weight, bias, stride, 0, dilation, groups)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = F.relu(y)
    elif activation == "relu6":
        y = F.relu6(y)
    elif activation == "gelu":
        y = F.gelu(y)
    return y


class WeightWatch:
    """Notices when a weight tensor's content may have changed since its weights were packed.

    A new tensor changes ``data_ptr``; an in-place update (``w.mul_(2)``, ``copy_``,
    ``load_state_dict``) bumps ``w._version``. A write through ``w.data`` changes neither:
    ``.data`` is another tensor over the same memory with a version counter of its own, and
    inference tensors (``torch.inference_mode``) track no version at all. So the watch also
    keeps :data:`SAMPLES` values spread evenly over the tensor and compares them on every
    check: any update of the whole tensor (a scale, a re-initialisation, a copy of other
    weights) changes them. An edit of a few elements can fall between them:
    :meth:`Conv2d.refresh` is for that. Cost: ~2 us per check.
    """

    SAMPLES = 16

    def __init__(self, weight: torch.Tensor) -> None:
        self.ptr = weight.data_ptr()
        self.version = _version(weight)
        # a numpy view of the weight's memory (it keeps that memory alive, so a new tensor
        # can never reuse its address) and the positions sampled, evenly spread; a weight on
        # a GPU, or not contiguous, is watched by its address and version alone
        self._view = self._at = None
        self._sample = b""
        if weight.device.type == "cpu" and weight.is_contiguous() and weight.numel():
            self._view = weight.detach().reshape(-1).numpy()
            n = self._view.size
            self._at = np.unique(np.linspace(0, n - 1, min(self.SAMPLES, n)).astype(np.int64))
            self._sample = self._view[self._at].tobytes()

    def changed(self, weight: torch.Tensor) -> bool:
        """Might ``weight`` hold other values than when the watch was made?"""
        if weight.data_ptr() != self.ptr or _version(weight) != self.version:
            return True
        return self._view is not None and self._view[self._at].tobytes() != self._sample


def _version(t: torch.Tensor) -> int | None:
    """``t._version``; ``None`` for an inference tensor, which keeps no version counter."""
    return None if t.is_inference() else t._version


def _nhwc(x: torch.Tensor, layout: str) -> bool:
    """Does the op run (and return) NHWC for input ``x`` and the layout asked for?"""
    return layout == "NHWC" or _channels_last(x)


@torch.library.custom_op("convgen::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
           stride: list[int], padding: list[int], dilation: list[int], groups: int, activation: str,
           layout: str, layer: str, dtype: str) -> torch.Tensor:
    """``activation(conv2d(x, weight) + bias + residual)`` on the convgen kernel of the
    :class:`Conv2d` called ``layer`` (torch's own operators when there is none). The result
    is channels_last when ``x`` is or ``layout`` is ``"NHWC"``, else contiguous; of dtype
    ``dtype`` (``""``: ``x``'s)."""
    module = _LAYERS.get(layer)
    if module is not None:
        y = module._run(x, weight, bias, residual)
        if y is not None:
            return y
    return _on_torch(x, weight, bias, residual, stride, padding, dilation, groups, activation, layout, dtype)


def _on_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
              stride: list[int], padding: list[int], dilation: list[int], groups: int, activation: str,
              layout: str, dtype: str = "") -> torch.Tensor:
    """What torch computes where no kernel serves, in the layout and dtype the kernel would
    return: in the weights' dtype (a bf16 layer's input may arrive in fp32 and the reverse)."""
    wt = weight.dtype
    cast = (lambda t: t if t is None or t.dtype == wt else t.to(wt))  # noqa: E731
    y = torch_conv2d(cast(x), weight, cast(bias), cast(residual), stride, padding, dilation, groups, activation)
    y = y.contiguous(memory_format=torch.channels_last if _nhwc(x, layout) else torch.contiguous_format)
    want = getattr(torch, dtype) if dtype else x.dtype
    return y if y.dtype == want else y.to(want)


def _direct(x: Any, *params: torch.Tensor | None) -> bool:
    """May the module run its kernel itself rather than through the custom op? Yes in eager
    mode with nothing to differentiate: the op's dispatch (~8 us a call) buys what tracing
    (torch.compile, torch.export, torch.fx) and autograd need, and nothing else."""
    if type(x) is not torch.Tensor or torch.compiler.is_compiling():
        return False  # a Proxy, a FakeTensor, a traced call
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (x, *params))


@conv2d.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, activation, layout, layer, dtype):
    oh, ow = _out_hw(x.shape[2], x.shape[3], weight.shape, stride, padding, dilation)
    fmt = torch.channels_last if _nhwc(x, layout) else torch.contiguous_format
    out = getattr(torch, dtype) if dtype else x.dtype
    return torch.empty((x.shape[0], weight.shape[0], oh, ow), dtype=out, device=x.device, memory_format=fmt)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in inputs[:4]])
    ctx.present = [t is not None for t in inputs[:4]]
    ctx.params = inputs[4:9]  # stride, padding, dilation, groups, activation


def _backward(ctx, grad):
    # the gradient of the same expression in torch's operators, recomputed (training through
    # a convgen model is correct; the kernels themselves are for inference)
    saved = [t if on else None for t, on in zip(ctx.saved_tensors, ctx.present)]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(needs) if t is not None else None
                  for t, needs in zip(saved, ctx.needs_input_grad[:4])]
        y = torch_conv2d(*leaves, *ctx.params)
        wanted = [t for t, needs in zip(leaves, ctx.needs_input_grad[:4]) if t is not None and needs]
        grads = iter(torch.autograd.grad(y, wanted, grad)) if wanted else iter(())
    out = [next(grads) if t is not None and needs else None for t, needs in zip(leaves, ctx.needs_input_grad[:4])]
    return (*out, None, None, None, None, None, None, None, None)


conv2d.register_autograd(_backward, setup_context=_setup_context)


class Conv2d(nn.Module):
    """A convolution served by convgen kernels: ``nn.Conv2d``'s arithmetic with BatchNorm
    folded in and the epilogue fused (``+ residual``, ReLU/ReLU6), one kernel per input
    shape and layout.

    Made by :func:`convgen.torch.optimize`. ``spec`` is the workload at the example input's
    shape; ``fused`` names what was folded into it; ``kernels`` maps
    ``(batch, height, width, layout)`` to the :class:`convgen.Kernel` (or the error that
    kept that shape on torch).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: tuple[int, int],
                 padding: tuple[int, int, int, int], dilation: tuple[int, int], groups: int,
                 activation: str | None, residual: bool, spec: ConvSpec, target: Target, build: dict[str, Any],
                 fused: tuple[str, ...] = (), layout: str = "NHWC") -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.activation = activation or ""
        self.residual = residual
        self.spec = spec
        self.target = target
        self.fused = fused
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' (follow the input) or 'NHWC', got {layout!r}")
        self.layout = layout
        self._build = dict(build)
        self._init_state()

    def _init_state(self) -> None:
        self.kernels: dict[tuple, Any] = {}
        # shape key -> its ConvSpec: made once per shape (ConvSpec.replace re-validates the
        # whole spec, ~20 us, which is too much for every call of every layer)
        self._specs: dict[tuple, ConvSpec] = {}
        self._packed: dict[tuple, tuple] = {}  # shape key -> (WeightWatch, PackedWeights)
        # per input (shape, dtype, device, layout): how a call runs, worked out on its first
        # call (None: torch computes it), so later calls check nothing twice
        self._plans: dict[tuple, _Plan | None] = {}
        self._converted_bias: tuple | None = None  # ((data_ptr, version, dtype), the bias in the kernel's dtype)
        self._outs: dict[tuple, tuple] = {}  # (shape key, thread) -> (output buffer, its N,C,H,W view): reused outputs
        self._fast: _Fast | None = None  # the last call's launch, replayed while nothing changed (see _Fast)
        self._lock = threading.Lock()
        self._handle = f"{type(self).__name__}-{next(_COUNTER)}"
        _LAYERS[self._handle] = self

    # a copy (copy.deepcopy, pickle) gets its own handle; compiled kernels are rebuilt or
    # found in the cache on first use
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("kernels", "_specs", "_packed", "_plans", "_converted_bias", "_outs", "_fast", "_lock",
                     "_handle"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __call__(self, x: Any, residual: Any = None) -> Any:
        # the steady state of an optimized model first: the same tensors as the last call, no
        # hooks (holds() checks), so nn.Module.__call__ would only call forward (~2 us of
        # Python, a fifth of what is left of a layer's call); everything else goes through it
        fast = self._fast
        if fast is not None and x is fast.x and residual is fast.residual and fast.holds(self):
            return fast.run()
        return nn.Module.__call__(self, x, residual)  # looked up per call: torch.fx patches it to trace

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``activation(conv(x) + bias [+ residual])``; ``residual`` is required exactly when
        the module fused a skip connection. ``x`` is ``N x C x H x W``, or ``C x H x W``
        unbatched (as ``nn.Conv2d`` takes it; the result is unbatched too)."""
        if (residual is not None) != self.residual:
            raise TypeError(f"this convgen.torch.Conv2d {'needs' if self.residual else 'takes no'} residual input")
        # the parameters straight from their dict: nn.Module.__getattr__ costs ~0.3 us a read,
        # and a layer's call is worth a few us beside kernels of 10-50 us
        params = self._parameters
        weight, bias = params["weight"], params.get("bias")
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
            residual = residual.unsqueeze(0) if residual is not None else None
        if _direct(x, weight, bias, residual):  # eager inference: no op dispatch
            y = self._run(x, weight, bias, residual, reuse=self.reuse_output)
            if y is None:
                y = self._torch(x, weight, bias, residual)
        elif self.through_op:
            y = torch.ops.convgen.conv2d(x, weight, bias, residual, self.stride, self.padding, self.dilation,
                                         self.groups, self.activation, self.layout, self._handle, self._op_dtype())
        else:
            y = self._torch(x, weight, bias, residual)
        return y.squeeze(0) if unbatched else y

    #: traced and differentiated through the custom op ``convgen::conv2d`` (its fake
    #: implementation and autograd formula take float inputs)
    through_op = True

    def _op_dtype(self) -> str:
        """The result's dtype as the op takes it: the spec's output, ``""`` (the input's) for fp32."""
        return self.spec.out_dtype if self.spec.dtype != "float32" else ""

    def _torch(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None) -> torch.Tensor:
        """What torch computes where no kernel serves (:func:`_on_torch`)."""
        return _on_torch(x, weight, bias, residual, self.stride, self.padding, self.dilation, self.groups,
                         self.activation, self.layout, self._op_dtype())

    def refresh(self) -> None:
        """Pack the weights again at the next call. Changes to ``weight`` are noticed by
        themselves (see :class:`WeightWatch`) except an edit of a few elements through
        ``weight.data`` or under ``torch.inference_mode``: call this after such an edit."""
        self._packed.clear()
        self._plans.clear()
        self._fast = None

    def extra_repr(self) -> str:
        fused = f", fused={'+'.join(self.fused)}" if self.fused else ""
        return f"{self.spec.describe()}, target={self.target.name}, layout={self.layout}{fused}"

    # -- what runs ------------------------------------------------------------------------
    def spec_for(self, x: torch.Tensor) -> ConvSpec:
        """The workload of input ``x`` (its batch and size; NHWC for a channels_last input or
        ``layout="NHWC"``)."""
        return self._spec(self._key(x))

    def _key(self, x: torch.Tensor) -> tuple:
        n, _, h, w = x.shape
        return int(n), int(h), int(w), "NHWC" if _nhwc(x, self.layout) else "NCHW"

    def _spec(self, key: tuple) -> ConvSpec:
        spec = self._specs.get(key)
        if spec is None:
            n, h, w, layout = key
            spec = self._specs[key] = self.spec.replace(batch=n, height=h, width=w, layout=layout)
        return spec

    def why_not(self, x: torch.Tensor) -> str | None:
        """Why ``x`` goes to torch instead of a convgen kernel, or ``None``."""
        want = "cuda" if self.target.family == "cuda" else "cpu"
        if x.device.type != want:
            return f"input on {x.device.type}; {self.target.name} kernels run on {want}"
        if x.dim() != 4:
            return f"input of rank {x.dim()}, not N,C,H,W"
        dtype = str(x.dtype).removeprefix("torch.")
        # a kernel takes its own dtype, or float32 (converted: a network's input); a bf16
        # network's fp32 stem (float32 -> bfloat16) takes a bf16 input too (widened exactly)
        takes = (self.spec.dtype, "float32") + (("bfloat16",) if self.spec.out_dtype == "bfloat16" else ())
        if dtype not in takes or dtype not in self.target.dtypes:
            return f"dtype {dtype}; this layer's {self.target.name} kernels take {self.spec.dtype}"
        return None

    def kernel_for(self, spec: ConvSpec) -> Any:
        """The kernel of ``spec`` (built now if this shape is new), or the exception of its build."""
        key = (spec.batch, spec.height, spec.width, spec.layout)
        kernel = self.kernels.get(key)
        if kernel is None:
            with self._lock:
                kernel = self.kernels.get(key)
                if kernel is None:
                    from ..cache import kernels

                    kernel = self.kernels[key] = kernels([spec], self.target, parallel=1, **self._build)[0]
        return kernel

    def _pack(self, key: tuple, kernel: Any, weight: torch.Tensor) -> Any:
        """``kernel``'s packed weights, packed again only when ``weight`` changed since."""
        held = self._packed.get(key)
        if held is None or held[0].changed(weight):
            watch = WeightWatch(weight)  # before packing: a change while packing is seen next call
            w = weight.detach()
            want = getattr(torch, kernel.spec.filter_dtype)
            w = w if w.dtype == want else w.to(want)  # fp32 parameters of a bf16 layer
            w = w.permute(2, 3, 1, 0).contiguous() if key[3] == "NHWC" else w.contiguous()  # OIHW -> HWIO
            held = self._packed[key] = (watch, kernel.pack_weights(w))
        return held[1]

    def _run(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             residual: torch.Tensor | None, reuse: bool = False) -> torch.Tensor | None:
        """The kernel's result, or ``None`` to let torch compute it; with ``reuse`` (eager
        inference, a layer whose output never leaves the forward) in this thread's output
        buffer, never inside the custom op (whose results must be fresh tensors).

        The first call of an input shape (and dtype, device, layout) checks everything once
        and keeps a :class:`_Plan`; later calls make the arguments and launch the kernel bare
        (:meth:`convgen.Kernel.launcher`): ~4 us beyond the kernel, where a checked call
        through the runtime costs 15.
        """
        if x.dim() != 4:
            return None
        nhwc = self.layout == "NHWC" or _channels_last(x)
        key = (x.shape, x.dtype, x.device, nhwc)
        plan = self._plans.get(key, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = self._plans[key] = self._plan(x, nhwc)
        if plan is None or weight.dtype not in plan.weight_dtypes:
            return None
        held = self._packed.get(plan.key)
        if held is None or held[0].changed(weight):
            self._pack(plan.key, plan.kernel, weight)
            held = self._packed[plan.key]
        # (no detach: this runs where nothing is differentiated, or inside the custom op)
        given = x  # what the caller passed: a replay is recorded only if the kernel reads it in place
        pre: tuple = ()  # launches that make the kernel's input from it (an int8 layer's quantization)
        keep = reuse and not _hooked(self)  # into this layer's reused buffers (see reuse_output)
        if x.dtype != plan.dtype:  # an fp32 activation into a bf16 layer (the network's input, say)
            x, pre = self._converted(x, plan.dtype, keep)
        if nhwc:  # a view when x is channels_last already (one copy at a network's first conv)
            args = [x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1), held[1].tensor]
        else:
            args = [x.contiguous(), held[1].tensor]
        if len(held) > 2:  # what the weights' preparation made for the epilogue (int8: scale, bias)
            args += held[2](bias)
        elif bias is not None:
            args.append(bias if bias.dtype == plan.side_dtype else self._bias_as(bias, plan.side_dtype))
        if residual is not None:
            r = residual if residual.dtype == plan.residual_dtype else residual.to(plan.residual_dtype)
            args.append(r.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1) if nhwc else r.contiguous())
        if keep:
            out, result = thread_buffer(self._outs, plan.key, plan.out_shape, plan.out_dtype, plan.device, nhwc)
            plan.launch(*args, out)
            increment_version(out)  # a new value: caches keyed on (tensor, version) see it
            if not torch.is_grad_enabled() and _in_place(args, given, residual, pre):
                self._fast = _Fast(given, residual, weight, held[0], bias, plan.launch, (*args, out), out, result, pre)
            return result
        out = torch.empty(plan.out_shape, dtype=plan.out_dtype, device=plan.device)
        plan.launch(*args, out)
        return out.permute(0, 3, 1, 2) if nhwc else out

    #: set by :func:`convgen.torch.optimize` where the layer's output never leaves the forward
    #: (every reader is one convgen layer: :func:`mark_reused_outputs`): its output is then one
    #: buffer per input shape and thread, written again by every call, and a call whose
    #: arguments are the same tensors as the last one replays its launch (:class:`_Fast`)
    reuse_output = False
    _readers: tuple = ()  # the modules that read the output (their hooks would see the buffer)


    def _input_as(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x`` in the kernel's input dtype (a float32 network input into a bf16 layer)."""
        return x.to(dtype)

    def _converted(self, x: torch.Tensor, dtype: torch.dtype, reuse: bool) -> tuple[torch.Tensor, tuple]:
        """``(x in dtype, pre)``: ``pre`` holds the ``(launch, args)`` that made it where a kernel
        wrote it into this layer's reused buffer from ``x`` in place (``reuse``: the call may
        keep such a buffer), so that a replay can launch them again; ``()`` otherwise."""
        return self._input_as(x, dtype), ()

    def _bias_as(self, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The bias in the kernel's dtype: converted once, again only when the bias changes."""
        bias = bias.detach()
        if bias.dtype == dtype:
            return bias
        held = self._converted_bias
        stamp = (bias.data_ptr(), _version(bias), dtype)
        if held is None or held[0] != stamp:
            held = self._converted_bias = (stamp, bias.to(dtype))
        return held[1]

    def _plan(self, x: torch.Tensor, nhwc: bool) -> "_Plan | None":
        """How calls with inputs like ``x`` run, checked once: ``None`` when torch computes them
        (see :meth:`why_not`, another channel count, a kernel that did not build)."""
        if self.why_not(x) is not None or int(x.shape[1]) != self.spec.in_channels:
            return None  # (a wrong channel count: torch raises its own error)
        key = self._key(x)
        spec = self._spec(key)
        kernel = self.kernel_for(spec)
        if isinstance(kernel, Exception):
            return None
        plan = _Plan(key, kernel, kernel.launcher(prepacked=True), tuple(spec.output_shape), spec)
        plan.device = x.device
        return plan


def thread_buffer(outs: dict, key: Any, shape: tuple, dtype: torch.dtype, device: Any,
                  nhwc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The calling thread's reused output buffer for ``key`` in ``outs`` (made on first use)
    and the tensor a layer returns: its N,C,H,W view for an NHWC buffer."""
    key = (key, threading.get_ident())
    held = outs.get(key)
    if held is None:
        out = torch.empty(shape, dtype=dtype, device=device)
        held = outs[key] = (out, out.permute(0, 3, 1, 2) if nhwc else out)
    return held


def _hooked(module: nn.Module) -> bool:
    """Could a hook see ``module``'s output (its own, a reader's, a global one)? A hook may keep
    the tensor, which a reused buffer would change under it."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in (module, *module._readers))


def _in_place(args: list, x: torch.Tensor, residual: torch.Tensor | None, pre: tuple = ()) -> bool:
    """Do the kernel's data arguments read ``x`` and ``residual`` in place (no converted copy,
    which a replay would read stale)? With ``pre`` (the launches converting ``x``): does the
    first of them read ``x`` in place and the last write what the kernel reads?"""
    if pre:
        first, last = pre[0][1], pre[-1][1]
        if first[0].data_ptr() != x.data_ptr() or first[0].dtype != x.dtype or last[-1].data_ptr() != args[0].data_ptr():
            return False
    elif args[0].data_ptr() != x.data_ptr() or args[0].dtype != x.dtype:
        return False
    return residual is None or (args[-1].data_ptr() == residual.data_ptr() and args[-1].dtype == residual.dtype)


class _Fast:
    """A layer's last call, replayed while its arguments are the same tensors: the steady
    state of an optimized model, whose layers read the reused output buffers of the layers
    before them (:attr:`Conv2d.reuse_output`). Replaying skips the plan lookup, the layout
    views, the allocation and the argument conversions (~7 us of a ~10 us call on Zen 5);
    :meth:`holds` checks what could make the recorded launch wrong: another thread, autograd,
    hooks, the input's memory or shape, the weights (:class:`WeightWatch`), the bias."""

    __slots__ = ("x", "residual", "thread", "ptr", "shape", "weight", "watch", "bias", "bias_version", "launch",
                 "args", "out", "result", "pre")

    def __init__(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, watch: WeightWatch,
                 bias: torch.Tensor | None, launch: Any, args: tuple, out: torch.Tensor, result: torch.Tensor,
                 pre: tuple = ()) -> None:
        self.x, self.residual, self.thread = x, residual, threading.get_ident()
        self.ptr, self.shape = x.data_ptr(), x.shape
        self.weight, self.watch = weight, watch
        self.bias, self.bias_version = bias, None if bias is None else _version(bias)
        self.launch, self.args, self.out, self.result = launch, args, out, result
        self.pre = pre  # (launch, args) pairs run first: the conversion of x the kernel reads

    def holds(self, module: "Conv2d") -> bool:
        params = module._parameters
        weight, bias = params["weight"], params.get("bias")
        return (self.thread == threading.get_ident() and not torch.is_grad_enabled() and weight is self.weight
                and bias is self.bias and (bias is None or _version(bias) == self.bias_version)
                and self.x.data_ptr() == self.ptr and self.x.shape == self.shape
                and not self.watch.changed(weight) and not _hooked(module))

    def run(self) -> torch.Tensor:
        for launch, args in self.pre:
            launch(*args)
        self.launch(*self.args)
        increment_version(self.out)
        return self.result

    def launches(self) -> list[tuple[Any, tuple]]:
        """What :meth:`run` launches, in order: ``(launch, args)`` pairs."""
        return [*self.pre, (self.launch, self.args)]


class _Plan:
    """What a call with one input shape needs: the kernel's shape key, the kernel, its bare
    entry point, the output's shape (in the kernel's layout) and the torch dtypes of its
    input and output, and those of weights it takes (packed in the kernel's)."""

    __slots__ = ("key", "kernel", "launch", "out_shape", "dtype", "out_dtype", "side_dtype", "residual_dtype",
                 "weight_dtypes", "device")

    def __init__(self, key: tuple, kernel: Any, launch: Any, out_shape: tuple, spec: ConvSpec) -> None:
        self.key, self.kernel, self.launch, self.out_shape = key, kernel, launch, out_shape
        self.dtype, self.out_dtype = getattr(torch, spec.dtype), getattr(torch, spec.out_dtype)
        self.side_dtype = getattr(torch, spec.epilogue_dtype)  # bias and residual
        self.residual_dtype = getattr(torch, spec.residual_dtype or spec.epilogue_dtype)
        self.weight_dtypes = {torch.float32, getattr(torch, spec.filter_dtype)}
        self.device = None  # the input's, set by Conv2d._plan (a plan is per device)


_UNPLANNED = object()


class _Quantizer:
    """A QConv2d's quantizing kernel for one input shape: ``launch(x_nhwc.view(view),
    packed.tensor, bias, out.view(view))`` writes ``round(x / scale) + zero_point`` clamped
    to u8 (``shape``: the input's NHWC shape; ``view``: the same values as the kernel's
    NHWC workload sees them, see :func:`~convgen.torch._quant.quantizer_spec`); calling it on a
    channels_last ``x`` returns a fresh result in ``x``'s N,C,H,W form."""

    __slots__ = ("launch", "packed", "bias", "shape", "view")

    def __init__(self, launch: Any, packed: Any, bias: torch.Tensor, shape: tuple, view: tuple) -> None:
        self.launch, self.packed, self.bias, self.shape, self.view = launch, packed, bias, shape, view

    def args(self, t: torch.Tensor, out: torch.Tensor) -> tuple:
        """The launch's arguments: channels_last ``t`` (N,C,H,W) into NHWC ``out``."""
        return (t.permute(0, 2, 3, 1).view(self.view), self.packed.tensor, self.bias, out.view(self.view))

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=torch.uint8)
        self.launch(*self.args(t, out))
        return out.permute(0, 3, 1, 2)


class Linear(Conv2d):
    """An ``nn.Linear`` served by a convgen kernel: ``y[..., K] = x[..., C] W^T + b`` is a 1x1
    convolution over one row of ``prod(x.shape[:-1])`` pixels (NHWC, where the features are
    the channels), the epilogue fused as for :class:`Conv2d`. torch runs its own operators on one
    thread inside an optimized model (see :mod:`convgen.torch.threads`): a classifier's
    matrix-vector product is then better off on convgen's pool, every core of it."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``activation(x W^T + b [+ residual])`` over the last axis of ``x``."""
        lead, k = x.shape[:-1], self.weight.shape[0]
        # one row of pixels, NHWC in memory: x[..., C] is already [1, 1, N, C] (a view)
        x4 = x.reshape(1, 1, -1, x.shape[-1]).permute(0, 3, 1, 2)
        r4 = residual.reshape(1, 1, -1, k).permute(0, 3, 1, 2) if residual is not None else None
        return super().forward(x4, r4).permute(0, 2, 3, 1).reshape(*lead, k)

    def extra_repr(self) -> str:
        return "linear, " + super().extra_repr()


class QConv2d(Conv2d):
    """A convolution served by an 8-bit kernel (``optimize(..., precision="int8")``): u8
    activations, s8 weights quantized per output channel, exact s32 sums, the epilogue in
    float32 (see :mod:`convgen.torch._quant` for the arithmetic and the observers).

    ``in_scale``/``in_zero``: how a float32 input is quantized (one ``round``/``clamp`` pass);
    a uint8 input is taken as it comes (its producer quantized it with these). ``out_scale``:
    ``None`` for a float32 output, else the next layer's input scale (a ``uint8`` output).
    ``residual_scale``: the scale of the residual where the spec scales it (``residual_dtype``):
    a uint8 residual's (its producer's ``out_scale``), 1.0 for a float32 one in real units
    into a layer that writes u8 (its epilogue works in the output's units); else ``None``.
    """

    def __init__(self, *args: Any, in_scale: float, in_zero: int, out_scale: float | None = None,
                 residual_scale: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_scale, self.in_zero, self.out_scale = float(in_scale), int(in_zero), out_scale
        self.residual_scale = residual_scale

    #: where something is differentiated or traced, torch computes the layer on the dequantized
    #: input (the op's autograd formula takes float inputs), so a u8 chain stays consistent
    through_op = False

    def _torch(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None) -> torch.Tensor:
        """Where no kernel serves: torch's operators on the dequantized input, the output
        quantized at the next layer's scale where this one writes u8 for it."""
        xf = (x.float() - self.in_zero) * self.in_scale if x.dtype == torch.uint8 else x
        if residual is not None and residual.dtype == torch.uint8:
            residual = residual.float() * self.residual_scale
        y = torch_conv2d(xf, weight, bias, residual, self.stride, self.padding, self.dilation, self.groups,
                         self.activation)
        if self.out_scale is not None:  # what the next layer takes: u8 at its scale
            y = torch.clamp(torch.round(y / self.out_scale), 0, 255).to(torch.uint8)
        return y

    def _init_state(self) -> None:
        super()._init_state()
        self._quantizers: dict[tuple, Any] = {}  # input shape -> its quantizing kernel (None: torch's ops)
        self._qbufs: dict[tuple, tuple] = {}  # (input shape, thread) -> its reused u8 buffer (see _converted)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_quantizers", None)
        state.pop("_qbufs", None)
        return state

    def _quantizer_for(self, x: torch.Tensor) -> Any:
        key = (x.shape, x.device)
        kernel = self._quantizers.get(key, _UNPLANNED)
        if kernel is _UNPLANNED:
            kernel = self._quantizers[key] = self._quantizer(x)
        return kernel

    def _input_as(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        from ._quant import quantize_input

        kernel = self._quantizer_for(x)
        return quantize_input(x, self.in_scale, self.in_zero, kernel if _nhwc_memory(x) else None)

    def _converted(self, x: torch.Tensor, dtype: torch.dtype, reuse: bool) -> tuple[torch.Tensor, tuple]:
        """A float input quantized into this layer's reused u8 buffer by its quantizing kernel,
        and that launch: a chain replays it before the layer's own, so the layer (a ResNet
        block's first 1x1, reading the block before's float32 output) is launched among the
        others instead of called. Measured on ResNet-50 int8 (20 such layers of 52): its
        forward 0.93x the time on the 2-vCPU Zen 5. Where another layer quantized the same
        tensor already (a block's downsample beside its first 1x1), its u8 copy is taken
        (:func:`convgen.torch._quant.quantize_input`) and nothing is recorded."""
        from ._quant import quantized_already, remember_quantized

        kernel = self._quantizer_for(x) if reuse and _nhwc_memory(x) and x.dtype == torch.float32 else None
        if kernel is None:
            return self._input_as(x, dtype), ()
        q = quantized_already(x, self.in_scale, self.in_zero)
        if q is not None:
            return q, ()
        out, result = thread_buffer(self._qbufs, x.shape, kernel.shape, torch.uint8, x.device, True)
        call = (kernel.launch, kernel.args(x, out))
        call[0](*call[1])
        increment_version(out)
        remember_quantized(x, self.in_scale, self.in_zero, result)
        return result, (call,)

    def _quantizer(self, x: torch.Tensor) -> Any:
        """``x -> u8`` on a convgen kernel (:func:`convgen.torch._quant.quantizer_spec`), built
        (or found in the cache) on the first input of this shape; ``None`` (torch's operators)
        where it cannot be."""
        from ..cache import kernels
        from ._quant import quantizer_spec

        if x.device.type != "cpu" or x.dim() != 4:
            return None
        spec = quantizer_spec(x)
        kernel = kernels([spec], self.target, parallel=1, **self._build)[0]
        if isinstance(kernel, Exception):
            return None
        c = spec.in_channels
        n, channels, h, w = x.shape
        return _Quantizer(kernel.launcher(prepacked=True), kernel.pack_weights(torch.full((1, 1, 1, c), 1.0 / self.in_scale)),
                          torch.full((c,), float(self.in_zero)), (n, h, w, channels), tuple(spec.output_shape))

    def _pack(self, key: tuple, kernel: Any, weight: torch.Tensor) -> Any:
        """Quantize and pack the weights; keep the epilogue's ``scale`` and the bias with the
        zero point's term folded in, both in the output's units."""
        from ._quant import quantize_weight

        watch = WeightWatch(weight)
        q, s_w = quantize_weight(weight)
        out = self.out_scale or 1.0
        scale = (self.in_scale * s_w / out).float().contiguous()
        # the input's zero point adds z * sum(q_w[k]) to every sum: taken off through the bias
        offset = -self.in_zero * q.reshape(q.shape[0], -1).sum(dim=1).float() * scale
        q = q.permute(2, 3, 1, 0).contiguous() if key[3] == "NHWC" else q.contiguous()
        folded: dict[str, Any] = {}

        # a scaled residual to the output's units: r * s_r / s_out, a per-channel input of the kernel
        rscale = [torch.full((scale.shape[0],), self.residual_scale / out)] if self.spec.residual_dtype else []

        def epilogue_args(bias: torch.Tensor | None) -> list[torch.Tensor]:
            stamp = None if bias is None else (bias.data_ptr(), _version(bias))
            if folded.get("stamp", 0) != stamp:  # the bias in the output's units, once per bias
                b = offset if bias is None else bias.detach().float() / out + offset
                folded["stamp"] = stamp
                folded["args"] = ([scale, b.contiguous()] if self.spec.bias else [scale]) + rscale
            return folded["args"]

        packed = kernel.pack_weights(q)
        self._packed[key] = (watch, packed, epilogue_args)
        return packed


class QLinear(Linear, QConv2d):
    """A linear layer served by an 8-bit kernel (``optimize(..., precision="int8")``): the
    :class:`Linear` row of pixels with :class:`QConv2d`'s quantization. A classifier's
    matrix-vector product reads each weight once: s8 weights are a quarter of float32's bytes
    from memory (ResNet-50's 2048 x 1000: 2 MB instead of 8)."""
