"""Post-training static quantization for ``optimize(model, x, precision="int8", calibration=...)``.

What runs in int8, and how (the arithmetic of :attr:`convgen.ConvSpec.scaled`):

- **Weights**: per output channel, symmetric: ``s_w[k] = max|w[k]| / 127``, ``q_w = round(w /
  s_w)`` in ``[-127, 127]`` (-128 unused: a symmetric range). Quantized again whenever the
  float weights change (the same :class:`~convgen.torch._module.WeightWatch` as packing).
- **Activations**: per tensor, from the calibration batches, by a min/max observer
  (:class:`MinMax`): the input of every int8 convolution, its range ``[lo, hi]`` over all
  batches, widened to contain 0. ``lo >= 0`` (after a ReLU): ``u8 = round(x / s)``,
  ``s = hi / 255``, zero point 0; otherwise ``s = (hi - lo) / 255`` and a zero point
  ``z = round(-lo / s)``. Min/max is the plainest observer; values outside the calibrated
  range clamp (a calibration set that misses a layer's extremes costs accuracy there).
- **The kernel**: u8 data x s8 weights -> exact s32 sums, then per channel ``y = sum *
  s_x * s_w[k] + b[k] - z * s_x * s_w[k] * sum(q_w[k])`` (the zero point's term folded into
  the bias), the residual and activation in float32: a float32 output.
- **Chains**: a convolution whose readers are all int8 convolutions (or a max pooling read
  only by int8 convolutions: ResNet's stem), as their input or as their residual, and whose
  output those that take it as input quantize with zero point 0 (it comes out of a ReLU)
  writes that u8 tensor itself: its epilogue divides by their scale and rounds (``uint8``
  output). They then skip their quantization; a layer adding it as its residual takes it as
  u8 with that scale (``ConvSpec.residual_dtype``: ``+ r * s_r / s_out`` per channel): a
  ResNet block's output goes to the next block's first 1x1 and skip connection in u8. ResNet's
  bottlenecks chain their 1x1 -> 3x3 -> 1x1, MobileNet-v2's inverted residuals their expand
  1x1 -> depthwise 3x3 (``x86.depthwise_int8``) -> project 1x1; the last one (its residual
  add) returns float32.

Convolutions no fast int8 template serves (grouped ones; every convolution on a CPU without
VNNI) stay float32 (:func:`convgen.torch.explain` says so). An RGB stem runs int8: ``x86.direct_vnni``
pads its 3 input channels to 4 with zero filters.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Iterable

import torch

from ._graph import Site


class MinMax:
    """The range of every tensor it is shown, then the affine u8 parameters that cover it."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def __call__(self, t: torch.Tensor) -> None:
        t = t.detach()
        if t.numel():
            self.lo, self.hi = min(self.lo, float(t.min())), max(self.hi, float(t.max()))

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi

    def params(self) -> tuple[float, int]:
        """``(scale, zero_point)`` of the u8 quantization of the range (0 included)."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        scale = (hi - lo) / 255 or 1.0  # an all-zero tensor: any scale
        return scale, min(255, max(0, round(-lo / scale)))


def calibrate(gm: torch.fx.GraphModule, found: list[Site], batches: Iterable[Any]) -> dict[str, MinMax]:
    """Run the traced model (torch's own operators) on each calibration batch and observe
    the input of every convolution site; returns the observers by site path."""
    if batches is None:
        raise ValueError("precision='int8' needs calibration batches: calibration=[x1, x2, ...] "
                         "(inputs as the model takes them; 8 or more representative ones)")
    observers = {site.path: MinMax() for site in found}
    hooks = [site.conv.register_forward_pre_hook(lambda m, args, o=observers[site.path]: o(args[0]))
             for site in found]
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                gm(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
                count += 1
    finally:
        for h in hooks:
            h.remove()
    if not count:
        raise ValueError("precision='int8': the calibration iterable was empty (give 8 or more batches)")
    return observers


def chained(found: list[Site], int8: set[str],
            observers: dict[str, MinMax]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Which int8 site writes u8 for which: ``{producer path: (the paths of the sites that read
    it as their input, of those that add it as their residual)}`` (see the module docstring
    for the conditions)."""
    first = {site.node: site for site in found}
    # the node of an int8 site's chain that adds its residual -> that site
    adds = {node: site for site in found if site.residual is not None and site.path in int8
            for node in site.chain if site.residual in node.args}
    out = {}
    for site in found:
        if site.path not in int8:
            continue
        last = site.chain[-1]
        users = list(last.users)
        if len(users) == 1 and users[0] not in first and _max_pooling(users[0]):
            # a max pooling between (ResNet's stem): the max of u8 values is the u8 of the
            # max (rounding and clamping keep order), so it pools the u8 tensor as it is
            last, users = users[0], list(users[0].users)
        inputs = [first[u] for u in users if u in first]
        residuals = [adds[u] for u in users if u not in first and u in adds and adds[u].residual is last]
        if not inputs or len(inputs) + len(residuals) != len(users):
            continue  # a reader that takes no u8 (or none to give the scale)
        if all(c.path in int8 and c.node.args[0] is last and observers[c.path].params()[1] == 0 for c in inputs):
            out[site.path] = (tuple(c.path for c in inputs), tuple(c.path for c in residuals))
    return out


def _max_pooling(node: torch.fx.Node) -> bool:
    """Is ``node`` a max pooling (``nn.MaxPool2d`` or ``F.max_pool2d``) returning values only?"""
    if node.op == "call_module":
        m = node.graph.owning_module.get_submodule(node.target)
        return isinstance(m, torch.nn.MaxPool2d) and not m.return_indices
    if node.op == "call_function" and node.target in (torch.nn.functional.max_pool2d, torch.max_pool2d):
        return not node.kwargs.get("return_indices", False) and len(node.args) < 7
    return False


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric s8 weights and their scales (``weight`` is K x ...)."""
    w = weight.detach().float()
    scale = w.reshape(w.shape[0], -1).abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale.reshape(-1, *([1] * (w.dim() - 1)))).clamp_(-127, 127).to(torch.int8)
    return q, scale


#: the last tensor quantized, ``(weakref to it, its version, scale, zero point, the u8 tensor)``:
#: two layers that read one tensor (a ResNet block's first 1x1 and its downsample) observe the
#: same values, so have the same parameters, and the second reuses the first's u8 copy
_LAST: list[Any] = [None]


def quantize_input(x: torch.Tensor, scale: float, zero_point: int, kernel: Any = None) -> torch.Tensor:
    """``x`` as u8: ``round(x / scale) + zero_point`` clamped to [0, 255], in ``x``'s memory
    format. ``kernel(x)``, where given, computes it (a convgen kernel: :func:`quantizer_spec`);
    torch's operators otherwise (5 passes, 4-5x slower: its float-to-u8 conversion alone
    costs more than the kernel). The same tensor object (unchanged since: its version) at the
    same parameters is quantized once."""
    q = quantized_already(x, scale, zero_point)
    if q is not None:
        return q
    if kernel is not None:
        q = kernel(x)
    else:
        q = x * (1.0 / scale)
        if zero_point:
            q.add_(zero_point)
        q = q.round_().clamp_(0, 255).to(torch.uint8)
    remember_quantized(x, scale, zero_point, q)
    return q


def quantized_already(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor | None:
    """The u8 copy of ``x`` at these parameters made last (:data:`_LAST`), if ``x`` is the same
    tensor unchanged since (its version; an inference tensor, which has none, never matches)."""
    last = _LAST[0]
    version = None if x.is_inference() else x._version
    if last is not None and last[0]() is x and last[1:4] == (version, scale, zero_point) and version is not None:
        return last[4]
    return None


def remember_quantized(x: torch.Tensor, scale: float, zero_point: int, q: torch.Tensor) -> None:
    """``q`` is ``x`` quantized at these parameters (for :func:`quantized_already`)."""
    _LAST[0] = (weakref.ref(x), None if x.is_inference() else x._version, scale, zero_point, q)


def quantizer_spec(x: torch.Tensor) -> Any:
    """The convgen workload that quantizes a channels_last ``x`` (N, C, H, W): a depthwise 1x1
    convolution, NHWC, of weights ``1 / scale`` and bias ``zero_point``, whose float32 result
    the epilogue rounds half to even and clamps to u8 (one pass over memory, vectorized and
    on every core).

    The scale and zero point are per tensor, so the kernel may see each row of ``W x C``
    values as whatever pixels and channels suit its vectors: a channel count off the 16-lane
    vectors (an RGB input's 3, MobileNet-v2's 24) is viewed as ``W * C / C'`` pixels of ``C'``
    channels, ``C'`` the widest of 64, 32, 16 that divides the row. Measured on the 2-vCPU Zen 5:
    a 224x224 RGB image 84 -> 10 us, 112x112x24 162 -> 19 us (whole vectors instead of a
    masked tail on every pixel)."""
    from ..spec import ConvSpec

    n, c, h, w = (int(d) for d in x.shape)
    if c % 16:
        c_view = next((v for v in (64, 32, 16) if w * c % v == 0), None)
        if c_view is not None:
            w, c = w * c // c_view, c_view
    return ConvSpec(batch=n, in_channels=c, out_channels=c, height=h, width=w, kernel=1, groups=c, layout="NHWC",
                    dtype="float32", output_dtype="uint8", bias=True)
