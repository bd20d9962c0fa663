"""Schedule templates, one module per target family; shipped as ``convgen.schedules``.

A template turns the one TE definition (:mod:`convgen.compute`) into fast code for one
kind of hardware. It declares

- ``supports(spec, target)``: ``None`` if it can serve the workload, else why not;
- ``space(spec, target)``: its knobs as data (:class:`convgen.knobs.Space`);
- ``default(spec, target)``: a good untuned config, reasoned from the hardware;
- ``apply(sch, spec, target, config)``: the schedule, reading a plain-dict config;
- ``primfunc(spec, target, config)``: what to schedule; the one TE definition of
  :mod:`convgen.compute` unless the template implements another algorithm.

:func:`candidates` lists the templates that serve a (spec, target), best first; a
generic template that serves everything comes last.
"""

from __future__ import annotations

from typing import Any

from convgen.knobs import Config, ConfigError, Space
from convgen.spec import ConvSpec
from convgen.target import Target


class Template:
    """Base class: subclasses set ``name``, ``version``, ``families`` and the four methods."""

    name: str = ""
    version: int = 1
    families: tuple[str, ...] = ()

    def supports(self, spec: ConvSpec, target: Target) -> str | None:
        """``None`` if this template can schedule ``spec`` for ``target``, else the reason."""
        raise NotImplementedError

    def primfunc(self, spec: ConvSpec, target: Target, config: Config) -> Any:
        """The function to schedule: the one conv definition (with the output channels padded
        to :meth:`channel_block`), unless the template computes the convolution by another
        algorithm (Winograd, say), which it then defines here."""
        from convgen.compute import conv2d_primfunc

        return conv2d_primfunc(spec, channel_block=self.channel_block(spec, target, config))

    def channel_block(self, spec: ConvSpec, target: Target, config: Config) -> int:
        """Output channels the kernel computes in one vector block: the compute pads ``K`` up
        to a multiple of it (see :func:`convgen.compute.padded_channels`); 1 for none."""
        return 1

    def space(self, spec: ConvSpec, target: Target) -> Space:
        """The knob space for this workload and target."""
        raise NotImplementedError

    def default(self, spec: ConvSpec, target: Target) -> Config:
        """A good untuned config (must lie in :meth:`space`)."""
        raise NotImplementedError

    def apply(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        """Schedule ``sch`` (a ``tvm.s_tir.Schedule`` of the conv PrimFunc) with ``config``."""
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

        sch = s_tir.Schedule(weight_primfunc(spec, self.channel_block(spec, target, config)))
        layout_pack(sch, spec, sch.get_sblock("weight_pad"), index_map, *self.pack_blocks(spec, target, config))
        return sch.mod["main"]

    def variants(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, Any]:
        """Functions to build beside ``main`` when the weight preprocessing is a computation
        rather than a layout change (Winograd's filter transform): ``{"main_prepacked": f,
        "pack_weights": g}`` as unscheduled PrimFuncs, each scheduled by :meth:`apply`."""
        return {}

    def features(self, spec: ConvSpec, target: Target, config: Config) -> dict[str, float]:
        """Derived numbers for the tuner's cost model (register use, working set, ...).

        The knobs themselves are added by the tuner; override to add what the hardware
        cares about and a tree model cannot easily compute from the knobs.
        """
        return {}

    def schedule(self, sch: Any, spec: ConvSpec, target: Target, config: Config) -> None:
        """Check ``config`` against the space, then :meth:`apply` it."""
        why = self.supports(spec, target)
        if why:
            raise ConfigError(f"template {self.name} cannot serve {spec.describe()}: {why}")
        self.apply(sch, spec, target, self.space(spec, target).check(config))

    def __repr__(self) -> str:
        return f"<template {self.name} v{self.version}>"


_REGISTRY: dict[str, Template] = {}
_LOADED = False


def register(template: Template) -> Template:
    """Add a template to the registry (module import time)."""
    _REGISTRY[template.name] = template
    return template


def _load() -> None:
    # Import for the side effect of registering; order = preference within a family.
    # (TVM itself is imported lazily by the templates: these imports are cheap.)
    global _LOADED
    _LOADED = True  # first, so a template module that asks for the registry does not recurse
    try:
        from . import generic, winograd, x86  # noqa: F401, I001
        from . import arm, cuda  # noqa: F401
    except BaseException:
        _LOADED = False  # a broken template module fails loudly, every time, not half-registered
        raise


def all_templates() -> dict[str, Template]:
    """Every registered template by name (the shipped ones, plus any user template registered)."""
    if not _LOADED:
        _load()
    return dict(_REGISTRY)


def get_template(name: str) -> Template:
    """A template by name, with a clear error listing the known ones."""
    templates = all_templates()
    if name not in templates:
        raise ValueError(f"unknown template {name!r}; known: {', '.join(templates)}")
    return templates[name]


def candidates(spec: ConvSpec, target: Target) -> list[Template]:
    """Templates that serve ``spec`` on ``target``, most specialised first, generic last."""
    out = [t for t in all_templates().values() if target.family in t.families and t.supports(spec, target) is None]
    return sorted(out, key=lambda t: getattr(t, "priority", 0), reverse=True)
