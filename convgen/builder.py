"""Build: (spec, target, template, config) -> scheduled TIR -> compiled module -> Kernel.

The TVM compiler side of convgen lives here and in :mod:`convgen.compute` and the
templates; :mod:`convgen.runtime` needs none of it.
"""

from __future__ import annotations

import shutil
from typing import Any

from .errors import BuildError, ConfigError, TargetError, last_line
from .knobs import Config
from .arrays import ALIGN
from .runtime import FORMAT, Kernel, set_num_threads
from .spec import ConvSpec
from .target import Target, get_target



def tvm_target(target: Target) -> Any:
    """The ``tvm.target.Target`` of a convgen target (CUDA gets an llvm host)."""
    import tvm

    spec = dict(target.tvm)
    if target.family == "cuda" and "host" not in spec:
        spec["host"] = {"kind": "llvm"}
    return tvm.target.Target(spec)


def check_supported(spec: ConvSpec, target: Target) -> None:
    """Raise ``TargetError`` when ``target`` cannot compute ``spec``'s dtype."""
    if spec.dtype not in target.dtypes:
        raise TargetError(
            f"target {target.name} does not support dtype {spec.dtype} (supported: {', '.join(target.dtypes)})"
        )


def select_template(spec: ConvSpec, target: Target, name: str | None = None) -> Any:
    """The named template (checked to serve ``spec``), or the best one that does."""
    from convgen.schedules import candidates, get_template

    if name is not None:
        template = get_template(name)
        why = template.serves(spec, target)
        if why:
            raise ConfigError(f"template {name} cannot serve {spec.describe()}: {why}")
        return template
    found = candidates(spec, target)
    if not found:
        raise TargetError(f"no template serves {spec.describe()} on {target.name}")
    return found[0]


# What the arguments of a CPU kernel declare as their data alignment: one element. TVM's
# default (64 bytes) lets LLVM use aligned vector moves (vmovaps), which fault on a numpy or
# torch array that happens to start mid-line, so every such call paid a staging copy. With
# the alignment of an element the kernel reads the caller's memory in place; x86 and AArch64
# vector loads cost the same on aligned data whichever instruction reads it.
ARG_ALIGNMENT = 4


def relax_alignment(func: Any, alignment: int = ARG_ALIGNMENT) -> Any:
    """``func`` with every argument buffer declared ``alignment``-byte aligned (its internal
    buffers keep TVM's 64-byte alignment)."""
    from tvm import tirx
    from tvm.tirx.transform.common import BufferReplacer

    remap = {p: tirx.decl_buffer(p.shape, p.dtype, p.name, data_alignment=alignment, offset_factor=1)
             for p in func.params}
    return BufferReplacer(remap)(func)


def schedule(spec: ConvSpec, target: Target, template: Any, config: Config) -> Any:
    """The scheduled ``IRModule``; a config TVM rejects becomes a ``ConfigError``.

    When the template keeps its weights in a form of its own (a packed layout, Winograd's
    transformed filters), the module also holds ``main_prepacked`` (the same kernel taking
    prepared weights) and ``pack_weights`` (the preparation), so callers can prepare once.
    On CPUs the arguments declare the alignment of one element (:data:`ARG_ALIGNMENT`).
    """
    import tvm
    import tvm.s_tir as s_tir

    def scheduled(func: Any) -> Any:
        try:
            sch = s_tir.Schedule(relax_alignment(func) if target.is_cpu else func)
            template.schedule(sch, spec, target, config)
        except ConfigError:
            raise
        except Exception as e:  # ScheduleError and friends: a config the primitives refuse
            raise ConfigError(f"{template.name} could not apply {config}: {last_line(e)}") from None
        return template.finish(sch.mod["main"], spec, target, config)

    def defined(make: Any) -> Any:
        try:
            return make()
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"{template.name} could not define {config}: {last_line(e)}") from None

    funcs = {"main": scheduled(defined(lambda: template.primfunc(spec, target, config)))}
    if target.family != "cuda":  # what the template says of its weights (Template.prepared_weights)
        funcs.update(defined(lambda: template.prepared_weights(spec, target, config, funcs["main"], scheduled)))
        if "pack_weights" in funcs and target.is_cpu:
            funcs["pack_weights"] = relax_alignment(funcs["pack_weights"])
    return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})


def packed_weight_shape(mod: Any) -> list[int] | None:
    """Shape of the prepared weights ``main_prepacked`` takes, or ``None`` if there is none."""
    if "main_prepacked" not in [gv.name_hint for gv in mod.get_global_vars()]:
        return None
    return [int(x) for x in mod["main_prepacked"].params[1].shape]


def compile_module(spec: ConvSpec, target: Target, template: Any, config: Config, *,
                   with_packed_shape: bool = False) -> Any:
    """Schedule and compile; returns the ``tvm.runtime.Executable`` (and, if asked, the
    shape of the prepared weights, see :func:`packed_weight_shape`)."""
    mod = schedule(spec, target, template, config)
    if with_packed_shape:
        return compile_module_from(mod, spec, target, template, config), packed_weight_shape(mod)
    return compile_module_from(mod, spec, target, template, config)


def compile_module_from(mod: Any, spec: ConvSpec, target: Target, template: Any, config: Config) -> Any:
    """Compile a scheduled module for ``target``."""
    import tvm

    if target.family == "cuda":  # GPU resource checks + nvcc fatbin: convgen/cuda/compile.py
        from .cuda.compile import compile_module as compile_cuda

        return compile_cuda(mod, target, tvm_target(target), template, config)
    options = {**template.pass_config, **template.build_options(spec, target, config)}
    try:
        with tvm_target(target), _pass_context(options):
            return tvm.compile(mod, target=tvm_target(target))
    except Exception as e:
        raise BuildError(f"TVM failed to compile {template.name} {config}: {last_line(e)}") from None


def _pass_context(options: dict[str, Any]) -> Any:
    """A ``PassContext`` with ``options`` (and the current optimisation level); none at all
    when there are none, so that a build without options is the build it always was."""
    import contextlib

    import tvm

    if not options:
        return contextlib.nullcontext()
    return tvm.transform.PassContext(opt_level=tvm.transform.PassContext.current().opt_level, config=options)


def export_library(executable: Any, target: Target, path: str) -> None:
    """Link ``executable`` into a shared library for ``target`` (cross-compiling if needed)."""
    cc = target.compiler.get("cc", "g++")
    if shutil.which(cc) is None:
        hint = target.compiler.get("install_hint", "install a C++ compiler")
        raise TargetError(f"the compiler {cc!r} for {target.name} is not installed: {hint}")
    from tvm.support import cc as tvm_cc

    if target.compiler.get("cross"):
        fcompile = tvm_cc.cross_compiler(cc, options=list(target.compiler.get("options", [])))
    else:
        fcompile = tvm_cc.create_shared
    extra = {}
    if target.family == "cuda":  # embed the nvcc fatbin, not CUDA source: convgen/cuda/compile.py
        from .cuda.compile import fpack_imports

        extra["fpack_imports"] = fpack_imports(executable)
    executable.export_library(path, fcompile=fcompile, **extra)


def metadata(spec: ConvSpec, target: Target, template: Any, config: Config, source: str) -> dict[str, Any]:
    """What a kernel file carries about itself: its provenance (:func:`convgen.records.provenance`,
    as records carry it), the target's description, where the config came from, the data
    alignment its arguments declare (CPU: one element; CUDA: TVM's 64 bytes), and the error
    bound of a template that declares one (:attr:`Template.error_bound`)."""
    from .records import provenance

    meta = {**provenance(spec, target, template, config), "format": FORMAT, "target_desc": target.to_dict(),
            "config_source": source, "arg_alignment": ARG_ALIGNMENT if target.is_cpu else ALIGN}
    if template.error_bound is not None:  # the check its runs are held to (Template.error_bound)
        meta["error_bound"] = template.error_bound
    return meta


def build(
    spec: ConvSpec,
    target: str | Target = "host",
    config: Config | None = None,
    *,
    template: str | None = None,
    records: str | list[str] | None = None,
    builtin_records: bool = True,
    num_threads: int | None = None,
) -> Kernel:
    """Compile ``spec`` for ``target`` and return a callable :class:`~convgen.runtime.Kernel`.

    The config is, in order of precedence: ``config`` if given; else the best valid entry
    of ``records`` (a tuning log or a list of them); else the records shipped with convgen
    for this spec and target (unless ``builtin_records=False``); else the template's default.
    ``num_threads`` sets the CPU thread count (default: every CPU this process may use).
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    target = get_target(target)
    check_supported(spec, target)
    tmpl, config, source = resolve_config(spec, target, config, template, records, builtin_records)
    executable, packed = compile_module(spec, target, tmpl, config, with_packed_shape=True)
    meta = metadata(spec, target, tmpl, config, source)
    if packed:
        meta["packed_weight_shape"] = packed
    if target.family == "cuda":  # device-code report (registers, spills, fatbin)
        from .cuda.compile import report

        meta["cuda"] = report(executable)
    module = executable.mod if target.runs_here() else None  # a GPU target runs here only on a fit GPU
    if module is not None and target.is_cpu:
        set_num_threads(num_threads)
    return Kernel(meta, module, num_threads=num_threads,
                  exporter=lambda path: export_library(executable, target, path))


def resolve_config(
    spec: ConvSpec,
    target: Target,
    config: Config | None,
    template: str | None,
    records: str | list[str] | None,
    builtin_records: bool = True,
) -> tuple[Any, Config, str]:
    """(template, config, where the config came from) for a build.

    Records of the spec itself come first (the user's, then the shipped ones); without
    any, the records of its stand-ins (:meth:`ConvSpec.stand_ins`: without its epilogue,
    at batch 1) serve it, and the source says so (``"builtin (batch 1)"``, say).
    """
    if config is not None:
        tmpl = select_template(spec, target, template)
        return tmpl, tmpl.space(spec, target).check(config), "given"
    sources = [(name, paths) for name, paths in (("records", records), ("builtin", _builtin(builtin_records))) if paths]
    if sources:
        from .records import find_config, read

        keys = {s.key for s in [spec] + spec.stand_ins()}
        logs = [(name, [r for r in read(paths) if r.spec_key in keys]) for name, paths in sources]
        for tuned in [spec] + spec.stand_ins():
            for source, log in logs:
                found = find_config(spec, target, log, template=template, tuned_as=[tuned])
                if found is not None:
                    tmpl, cfg, _ = found
                    return tmpl, cfg, source if tuned == spec else f"{source} ({_difference(spec, tuned)})"
    tmpl = select_template(spec, target, template)
    return tmpl, tmpl.default(spec, target), "default"


def _difference(spec: ConvSpec, tuned: ConvSpec) -> str:
    """How a stand-in's records differ from ``spec``: ``"batch 1, no epilogue"``."""
    parts = []
    if tuned.out_dtype != spec.out_dtype:
        parts.append(f"{tuned.out_dtype} output")
    if tuned.batch != spec.batch:
        parts.append(f"batch {tuned.batch}")
    if (tuned.bias, tuned.residual, tuned.activation) != (spec.bias, spec.residual, spec.activation):
        parts.append("no epilogue")
    return ", ".join(parts)


def _builtin(enabled: bool) -> list[str]:
    if not enabled:
        return []
    from .records import builtin_record_files

    return builtin_record_files()
