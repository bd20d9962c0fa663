"""The builder's CUDA path: static checks, ``tvm.compile`` with nvcc as TVM's CUDA compiler,
and the export that embeds the nvcc fatbin (never CUDA source) in the library."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, Iterator

from ..errors import BuildError, ConfigError, TargetError, last_line
from ..target import Target
from .fatbin import library_bin_c, patch_library_bin
from .toolchain import DeviceCode, nvcc_fatbin
from .verify import check_registers, launch_threads, verify


_hook_lock = threading.Lock()
_hook_depth = 0
_hook_saved: Any = None
_hook_local = threading.local()


def _nvcc_callback(code: str) -> bytes:
    """``tvm_callback_cuda_compile`` while convgen compiles: nvcc to a fatbin for the target."""
    target = getattr(_hook_local, "target", None)
    if target is None:  # a CUDA compile elsewhere in the process (another thread): TVM's own
        if _hook_saved is None:
            raise RuntimeError("no CUDA compile callback outside a convgen build")
        return _hook_saved(code)
    device = nvcc_fatbin(code, target)
    _hook_local.compiled.append(device)
    return device.fatbin


@contextlib.contextmanager
def _nvcc_hook(target: Target) -> Iterator[list[DeviceCode]]:
    """Point TVM's CUDA compile callback at nvcc for ``target`` during a compile.

    TVM calls the global ``tvm_callback_cuda_compile`` only when its CUDA runtime is loaded
    (a GPU machine); it defaults to NVRTC, which needs the ``cuda-bindings`` package. The
    override is registered while at least one convgen compile runs (reference-counted, so
    concurrent builds in threads are fine) and TVM's function is put back afterwards.
    """
    import tvm_ffi

    global _hook_depth, _hook_saved
    with _hook_lock:
        if _hook_depth == 0:
            _hook_saved = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", _nvcc_callback, override=True)
        _hook_depth += 1
    _hook_local.target, _hook_local.compiled = target, []
    try:
        yield _hook_local.compiled
    finally:
        _hook_local.target = None
        with _hook_lock:
            _hook_depth -= 1
            if _hook_depth == 0 and _hook_saved is not None:
                tvm_ffi.register_global_func("tvm_callback_cuda_compile", _hook_saved, override=True)


def device_module(executable: Any) -> Any:
    """The CUDA module imported by a compiled executable's host module."""
    for m in executable.mod.imports:
        if m.kind == "cuda":
            return m
    raise RuntimeError("the compiled module has no CUDA device module")


def compile_module(mod: Any, target: Target, tvm_target: Any, template: Any, config: Any) -> Any:
    """Check, compile and nvcc-compile a scheduled module; returns the ``Executable``.

    A template's ``pass_config`` (a dict of TVM PassContext options) applies to the checks
    and the compile. The executable carries the :class:`DeviceCode` as
    ``executable.convgen_device_code`` (export embeds its fatbin).
    """
    import tvm

    with tvm.transform.PassContext(config=dict(template.pass_config)):
        verify(mod, target, tvm_target)
        with _nvcc_hook(target) as compiled:
            try:
                with tvm_target:
                    executable = tvm.compile(mod, target=tvm_target)
            except (ConfigError, BuildError, TargetError):
                raise
            except Exception as e:
                raise BuildError(f"TVM failed to compile {template.name} {config}: {last_line(e)}") from None
    dev = device_module(executable)
    source = dev.inspect_source("cuda")
    # The CUDA runtime compiled it already through the hook (GPU machine), or the module is
    # TVM's source-only fallback and nvcc runs now, so errors surface at build time.
    code = compiled[-1] if compiled else nvcc_fatbin(source, target)
    check_registers(code, launch_threads(source), target)
    executable.convgen_device_code = code
    return executable


def report(executable: Any) -> dict[str, Any]:
    """What the kernel metadata records about the device code (registers, spills, size)."""
    code = getattr(executable, "convgen_device_code", None)
    return code.report() if code is not None else {}


def fpack_imports(executable: Any) -> Callable[..., str]:
    """An ``fpack_imports`` for ``export_library`` that embeds the nvcc fatbin, not CUDA source."""
    code: DeviceCode | None = getattr(executable, "convgen_device_code", None)
    if code is None:
        raise RuntimeError("this executable was not compiled by convgen.cuda.compile_module (no fatbin)")
    source = device_module(executable).inspect_source("cuda")

    def pack(mod: Any, is_system_lib: bool, symbol_prefix: str, workspace_dir: str) -> str:
        import tvm

        if is_system_lib or symbol_prefix:
            raise RuntimeError("convgen CUDA kernels are exported as shared libraries, not system libs")
        blob = bytes(tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes())
        path = os.path.join(workspace_dir, "devc.c")
        with open(path, "w") as fh:
            fh.write(library_bin_c(patch_library_bin(blob, code.fatbin, source)))
        return path

    return pack
