"""The template protocol (:class:`Template`) and the registry the template modules add to."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from convgen.knobs import Config, ConfigError, Space
from convgen.spec import ConvSpec
from convgen.target import Target



class Template:
    """Base class of every template: what the builder, the tuner and the CUDA emulation read.

    A template declares itself in its class statement, ``class DirectX86(Template,
    name="x86.direct", version=1, families=("x86",), dtypes=("float32",), priority=10)``
    (the attributes below; an unknown one is a ``TypeError``), and implements
    :meth:`space`, :meth:`default` and :meth:`apply`, and :meth:`supports` for what more it
    needs of a workload; the other methods have defaults.
    """

    #: unique name (records and kernels carry it), and its version: bump it when the
    #: schedule of an existing config changes, so records made with the old one go stale
    name: str = ""
    version: int = 1
    #: the target families it schedules for ("x86", "arm", "cuda")
    families: tuple[str, ...] = ()
    #: the spec dtypes it schedules (empty: any)
    dtypes: tuple[str, ...] = ()
    #: order among the templates serving a workload: higher is built by default
    priority: int = 0
    #: serves every workload, slowly: tuned only where no specialised template serves
    fallback: bool = False
    #: tensorizes onto hardware intrinsics (WMMA) that have no CPU emulation
    uses_intrinsics: bool = False
    #: TVM PassContext options its builds need
    pass_config: Mapping[str, Any] = MappingProxyType({})
    #: an algorithm that is not exact to the spec's elementwise tolerance (Winograd on bf16:
    #: its transformed operands are rounded) declares the normwise relative error it stays
    #: within, ``||got - want|| / ||want||`` on the reference's random data; every check of its
    #: kernels (the tuner's, ``convgen run``, ``Kernel.measure``) then holds it to that bound
    #: (the kernel's metadata carries it). ``None``: the elementwise tolerance.
    error_bound: float | None = None

    def __init_subclass__(cls, **declared: Any) -> None:
        super().__init_subclass__()
        unknown = sorted(set(declared) - set(DECLARED))
        if unknown:
            raise TypeError(f"template {cls.__name__}: unknown declaration(s) {unknown}; known: {list(DECLARED)}")
        for key, value in declared.items():
            setattr(cls, key, value)

    def serves(self, spec: ConvSpec, target: Target) -> str | None:
        """``None`` if this template schedules ``spec`` for ``target``, else why not: the
        target's family (:attr:`families`), the dtype (:attr:`dtypes`), then :meth:`supports`."""
        if target.family not in self.families:
            return f"template {self.name} is for {', '.join(self.families)}, not {target.name}"
        if self.dtypes and spec.dtype not in self.dtypes:
            return f"dtype {spec.dtype} ({', '.join(self.dtypes)} only)"
        return self.supports(spec, target)

    def rank(self, spec: ConvSpec, target: Target) -> int:
        """Order among the templates serving ``spec`` on ``target`` (the highest builds when no
        record names a config): the declared :attr:`priority`, which a template may raise
        for the workloads it is measured to win untuned."""
        return self.priority

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        """What else the template needs of ``spec`` on ``target`` (family and dtype are
        :meth:`serves`'s to check): ``None`` if it can schedule it, else the reason."""
        return None

    def primfunc(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        """The function to schedule: the one conv definition (with the output channels padded
        to :meth:`channel_block`), unless the template computes the convolution by another
        algorithm (Winograd, say), which it then defines here."""
        from convgen.compute import conv2d_primfunc

        return conv2d_primfunc(spec, channel_block=self.channel_block(spec, target, config),
                               input_block=self.input_block(spec, target),
                               row_block=self.row_block(spec, target, config))

    def channel_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        """Output channels the kernel computes in one vector block: the compute pads ``K`` up
        to a multiple of it (see :func:`convgen.compute.padded_channels`); 1 for none."""
        return 1

    def input_block(self, spec: ConvSpec, target: Target) -> int:
        """Input channels the kernel's instruction sums at once: the compute pads ``C`` up to
        a multiple of it with zero filters (see :func:`convgen.compute.padded_inputs`); 1
        for none."""
        return 1

    def row_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        """Output rows the kernel's tile takes at once: the compute rounds the height up to a
        multiple of it (see :func:`convgen.compute.padded_rows`); 1 for none."""
        return 1

    def space(self, spec: ConvSpec, target: Target) -> Space:
        """The knob space for this workload and target."""
        raise NotImplementedError

    def default(self, spec: ConvSpec, target: Target) -> Config:
        """A good untuned config (must lie in :meth:`space`)."""
        raise NotImplementedError

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        """Schedule ``sch`` (a ``tvm.s_tir.Schedule`` of the conv PrimFunc) with ``config``.
        A template that declares :attr:`uses_intrinsics` also takes ``intrinsics=False``:
        leave the tensorized loops as plain loops (for the CPU emulation)."""
        raise NotImplementedError

    def weight_pack(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        """The layout the kernel keeps its weights in, as an index map over the weight's own
        axes (``lambda o, i, h, w: (...)``, padded to :meth:`channel_block` filters), or
        ``None`` when it reads them as given.

        A template that packs weights does it in a block annotated as a layout-rewrite
        preprocess (see :func:`schedules.common.pack_weights`); the builder then also emits
        ``main_prepacked`` (weights already packed) and ``pack_weights``
        (:meth:`pack_function`) so a caller can pack once and call many times.
        """
        return None

    def pack_blocks(self, spec: ConvSpec, target: Target, config: Config) -> tuple[int, int]:
        """``(output, input)`` channels of one block of the packed weights: the unit of work of
        :func:`schedules.common.layout_pack` (``weight_pack`` templates define it)."""
        raise NotImplementedError

    def pack_function(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        """``pack_weights(weight, packed)``: the packing block of ``main`` as a function of its
        own, scheduled the same way; ``None`` when :meth:`weight_pack` is ``None``."""
        index_map = self.weight_pack(spec, target, config)
        if index_map is None:
            return None
        import tvm.s_tir as s_tir

        from convgen.compute import weight_primfunc

        from .common import layout_pack

        sch = s_tir.Schedule(weight_primfunc(spec, self.channel_block(spec, target, config),
                                             self.input_block(spec, target)))
        layout_pack(sch, spec, sch.get_sblock("weight_pad"), index_map, *self.pack_blocks(spec, target, config))
        return sch.mod["main"]

    def variants(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        """Functions to build beside ``main`` when the weight preprocessing is a computation
        rather than a layout change (Winograd's filter transform): ``{"main_prepacked": f,
        "pack_weights": g}`` as unscheduled PrimFuncs, each scheduled by :meth:`apply`."""
        return {}

    def prepared_weights(self, spec: ConvSpec, target: Target, config: Config, main: Any,
                         scheduled: Any) -> dict[str, Any]:
        """How the kernel's weights are prepared, in one place: ``{"main_prepacked": f,
        "pack_weights": g}`` (scheduled PrimFuncs) for a kernel that keeps them in a form of
        its own, ``{}`` for one that reads them as given. ``main``: the scheduled ``main``;
        ``scheduled(func)``: schedules a PrimFunc with this template and config.

        The default serves both kinds of template: :meth:`variants` (a computation, as
        Winograd's filter transform) are scheduled as they are; a :meth:`weight_pack` (a
        layout) becomes ``pack_weights`` (:meth:`pack_function`), and ``main`` without its
        packing block (TVM's ``RemoveWeightLayoutRewriteBlock``: the same loop nest, minus the
        per-call copy) becomes ``main_prepacked``. The pass needs the block to be a plain copy
        of the argument: with padded filters (or input channels), ``main_prepacked`` is made
        from the definition whose weight argument holds them padded already.
        """
        funcs = {name: scheduled(func) for name, func in self.variants(spec, target, config).items()}
        if funcs:
            return funcs
        pack = self.pack_function(spec, target, config)
        if pack is None:
            return {}
        import tvm
        import tvm.s_tir as s_tir

        from convgen.compute import conv2d_primfunc, padded_weight_shape

        block, inputs = self.channel_block(spec, target, config), self.input_block(spec, target)
        if padded_weight_shape(spec, block, inputs) != spec.weight_shape:
            main = scheduled(conv2d_primfunc(spec, channel_block=block, input_block=inputs, prepadded=True,
                                             row_block=self.row_block(spec, target, config)))
        prepacked = s_tir.transform.RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(
            tvm.IRModule({"main": main}))["main"]
        if [int(x) for x in prepacked.params[1].shape] != [int(x) for x in pack.params[1].shape]:
            return {}  # the template did not mark its packing block: main alone then
        return {"main_prepacked": prepacked, "pack_weights": pack}

    def finish(self, func: Any, spec: ConvSpec, target: Target, config: Config) -> Any:
        """The scheduled PrimFunc rewritten where schedule primitives cannot say it (the
        builder calls it on every scheduled function: ``main`` and its variants): a branch
        around a loop, say (:func:`schedules.cpu.guard_dead_taps`). The default returns
        ``func``."""
        return func

    def build_options(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        """TVM ``PassContext`` options the build of ``config`` needs beyond :attr:`pass_config`
        (the ones of every build): a ragged tile's loop partition, say."""
        return {}

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        """Derived numbers for the tuner's cost model (register use, working set, ...).

        The knobs themselves are added by the tuner; override to add what the hardware
        cares about and a tree model cannot easily compute from the knobs.
        """
        return {}

    def schedule(self, sch: Any, spec: ConvSpec, target: Target, config: Config, *, intrinsics: bool = True) -> None:
        """Check ``config`` against the space, then :meth:`apply` it."""
        why = self.serves(spec, target)
        if why:
            raise ConfigError(f"template {self.name} cannot serve {spec.describe()}: {why}")
        config = self.space(spec, target).check(config)
        if intrinsics or not self.uses_intrinsics:  # only those templates know the keyword
            self.apply(sch, spec, target, config)
        else:
            self.apply(sch, spec, target, config, intrinsics=False)

    def __repr__(self) -> str:
        return f"<template {self.name} v{self.version}>"


#: what a class statement may declare: the annotated attributes of :class:`Template`
DECLARED = tuple(Template.__annotations__)


_REGISTRY: dict[str, Template] = {}


def register(template: Template) -> Template:
    """Add a template to the registry (module import time)."""
    _REGISTRY[template.name] = template
    return template
