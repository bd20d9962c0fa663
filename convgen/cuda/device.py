"""The runtime side of CUDA: is TVM's CUDA runtime usable here, can this GPU run a target?

Imports nothing of convgen (a target is passed in) and only the TVM runtime: :mod:`convgen.runtime`
and :mod:`convgen.target` use it for kernels loaded on a GPU machine.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import Any

from ..errors import last_line


def toolkit_roots() -> list[str]:
    """CUDA toolkit folders, in the order CUDA's own tools look: $CUDA_HOME, $CUDA_PATH, the
    default install; then versioned installs, newest first."""
    roots = [p for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p]
    return roots + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)


def _cudart_candidates() -> list[str]:
    """Where a pip- or toolkit-installed CUDA 13 runtime library may be: the toolkit folders
    (``$CUDA_HOME``, ``$CUDA_PATH``, ``/usr/local/cuda*``) and the ``nvidia/*/lib`` folders of
    the interpreter's site-packages. Only absolute paths: a library found relative to the
    current directory would be whatever file someone left there, loaded into the process."""
    import site

    found = [os.path.join(r, sub, "libcudart.so.13") for r in toolkit_roots() for sub in ("lib64", "lib")]
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        found += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcudart.so.13")))
    return [p for p in found if os.path.isabs(p) and os.path.isfile(p)]


@functools.cache
def runtime_problem() -> str | None:
    """``None`` if TVM's CUDA runtime is usable in this process, else why not.

    TVM loads ``libtvm_runtime_cuda.so`` at import only if the NVIDIA driver
    (``libcuda.so.1``) and the CUDA 13 runtime (``libcudart.so.13``) load. When the driver
    is there but the runtime library is not on the loader's path (a pip-installed CUDA, a
    toolkit outside ``ld.so.conf``), it is looked for in the usual places and TVM's CUDA
    runtime is loaded again. Only real NVIDIA libraries are ever loaded.
    """
    import tvm

    if tvm.runtime.enabled("cuda"):
        return None
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return "no NVIDIA driver here (libcuda.so.1 does not load)"
    try:
        ctypes.CDLL("libcudart.so.13", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        for path in _cudart_candidates():
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                continue
        else:
            return ("TVM's CUDA runtime needs the CUDA 13 runtime library libcudart.so.13; install "
                    "nvidia-cuda-runtime (pip) or the CUDA 13 toolkit, or add its lib64 to LD_LIBRARY_PATH")
    try:
        from tvm.base import _LOADED_LIBS
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_dir = os.path.dirname(os.path.realpath(_LOADED_LIBS["tvm_runtime"]._name))
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except Exception as e:  # noqa: BLE001 - any loader failure is a reason, not a crash
        return f"TVM's CUDA runtime (libtvm_runtime_cuda.so) does not load: {last_line(e)}"
    return None if tvm.runtime.enabled("cuda") else "TVM's CUDA runtime did not register"


def device_problem(target: Any, device_id: int = 0) -> str | None:
    """``None`` if GPU ``device_id`` can run ``target``'s kernels, else why not.

    The fatbin holds ``sm_XX`` code and ``compute_XX`` PTX, so any GPU of compute
    capability XX or later runs it (later ones through the driver's PTX JIT).
    """
    why = runtime_problem()
    if why:
        return why
    import tvm

    dev = tvm.cuda(device_id)
    if not dev.exist:
        return "no CUDA GPU visible (the driver reports none)"
    have = tuple(int(x) for x in str(dev.compute_version).split("."))
    need = target.gpu_limits().compute_capability
    if have < need:
        return (f"GPU {device_id} ({dev.device_name}) has compute capability {have[0]}.{have[1]}; "
                f"{target.name} kernels need {need[0]}.{need[1]} or later")
    return None
