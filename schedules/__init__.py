"""Schedule templates, one module per target family; shipped as ``convgen.schedules``.

A template turns the one TE definition (:mod:`convgen.compute`) into fast code for one
kind of hardware. It declares

- ``supports(spec, target)``: ``None`` if it can serve the workload, else why not;
- ``space(spec, target)``: its knobs as data (:class:`convgen.knobs.Space`);
- ``default(spec, target)``: a good untuned config, reasoned from the hardware;
- ``apply(sch, spec, target, config)``: the schedule, reading a plain-dict config;
- ``primfunc(spec, target, config)``: what to schedule; the one TE definition of
  :mod:`convgen.compute` unless the template implements another algorithm.

The protocol, with every attribute the builder and the tuner read, is :class:`Template`
(:mod:`.base`); template modules import it from there and register their instances.

:func:`candidates` lists the templates that serve a (spec, target), best first; a
generic template that serves everything comes last.
"""

from __future__ import annotations

from convgen.spec import ConvSpec
from convgen.target import Target

from .base import _REGISTRY, Template, register

__all__ = ["Template", "register", "all_templates", "get_template", "candidates"]
_LOADED = False


def _load() -> None:
    # Import for the side effect of registering; order = preference within a family.
    # (TVM itself is imported lazily by the templates: these imports are cheap.)
    global _LOADED
    _LOADED = True  # first, so a template module that asks for the registry does not recurse
    try:
        from . import generic, winograd, x86, x86_amx, x86_dot, x86_grouped, x86_pointwise  # noqa: F401, I001
        from . import arm, cuda, cuda_tc  # noqa: F401
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
    out = [t for t in all_templates().values() if t.serves(spec, target) is None]
    return sorted(out, key=lambda t: t.rank(spec, target), reverse=True)
