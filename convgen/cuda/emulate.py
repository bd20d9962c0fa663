"""Numerics without a GPU: a CUDA schedule run serially on the CPU (thread bindings become
loops, shared memory local buffers), for tests against the numpy reference."""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..target import Target


_THREAD_BINDING = re.compile(r'T\.thread_binding\((?P<args>[^=]*?),\s*thread="[^"]*"')
_GPU_SCOPE = re.compile(r'scope="(shared|shared\.dyn|wmma\.\w+)"')


def serialize_threads(mod: Any) -> Any:
    """The scheduled module with every thread binding a serial loop and GPU memory local.

    Done on the TVMScript text of the module (TVM 0.27 has no Python IR mutator): each
    ``T.thread_binding(extent, thread=...)`` becomes ``T.serial(extent)``, keeping the
    loop's annotations, and ``shared``/``shared.dyn``/``wmma.*`` buffers become ``local``;
    the text is parsed back. Nothing else changes, so the loop nest, the copy regions and
    the index arithmetic are the GPU kernel's.
    """
    import tvm

    text = mod.script(show_meta=True)
    serial, n_threads = _THREAD_BINDING.subn(r"T.serial(\g<args>", text)
    serial = _GPU_SCOPE.sub('scope="local"', serial)
    if "thread_binding" in serial:
        raise RuntimeError("a thread binding survived the rewrite (unexpected TVMScript form)")
    out = tvm.script.from_source(serial)
    if n_threads == 0:
        raise RuntimeError("the module has no thread bindings: not a GPU schedule")
    return out


def emulate(spec: Any, target: Target | str, config: Any = None, *, template: str | None = None,
            intrinsics: bool = True) -> Callable[..., np.ndarray]:
    """A CPU callable running ``spec``'s CUDA schedule serially: ``f(data, weight[, bias]) -> out``.

    Same template and config resolution as :func:`convgen.build` (the default config when
    none is given). Tensor-core intrinsics have no CPU form: such a template raises
    ``ConfigError`` unless ``intrinsics=False``, which emulates its loop nest with the
    16x16x16 blocks left as plain loops (the data movement, not the WMMA instructions).
    """
    from tvm import s_tir

    from ..builder import resolve_config
    from ..target import get_target

    target = get_target(target)
    tmpl, config, _ = resolve_config(spec, target, config, template, None, builtin_records=False)
    sch = s_tir.Schedule(tmpl.primfunc(spec, target, config))
    if tmpl.uses_intrinsics and intrinsics:
        raise ConfigError(f"{tmpl.name} uses tensor-core intrinsics, which have no CPU emulation "
                          "(intrinsics=False emulates its loop nest without them)")
    tmpl.schedule(sch, spec, target, config, intrinsics=False)
    run = emulate_module(sch.mod, spec, tmpl.pass_config)
    run.template, run.config = tmpl.name, config  # type: ignore[attr-defined]
    return run


def emulate_module(mod: Any, spec: Any, pass_config: dict[str, Any] | None = None) -> Callable[..., np.ndarray]:
    """The CPU callable of an already scheduled GPU module (see :func:`emulate`)."""
    import tvm

    with tvm.transform.PassContext(config=dict(pass_config or {})):
        func = tvm.compile(serialize_threads(mod), target="llvm").mod["main"]

    def run(*arrays: np.ndarray) -> np.ndarray:
        args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
        out = tvm.runtime.empty(spec.output_shape, spec.out_dtype)
        func(*args, out)
        return out.numpy()

    return run
