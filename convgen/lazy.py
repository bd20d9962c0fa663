"""``tvm`` and ``tvm_ffi``, imported on first use and bound once.

``import convgen`` stays light (specs, records and the CLI's help need no TVM), and on a
device with ``TVM_USE_RUNTIME_LIB=1`` the first use imports the runtime alone. A leaf module:
the runtime and its array conversion both get TVM from here.
"""

from __future__ import annotations

from typing import Any

_tvm_module: Any = None
_tvm_ffi_module: Any = None


def tvm() -> Any:
    """The ``tvm`` package."""
    global _tvm_module
    if _tvm_module is None:
        import tvm as module

        _tvm_module = module
    return _tvm_module


def tvm_ffi() -> Any:
    """The ``tvm_ffi`` package."""
    global _tvm_ffi_module
    if _tvm_ffi_module is None:
        import tvm_ffi as module

        _tvm_ffi_module = module
    return _tvm_ffi_module
