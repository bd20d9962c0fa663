"""The static checks of a CUDA schedule: TVM's ``VerifyGPUCode`` on the lowered module, and the
registers ptxas assigned against the register file."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError, last_line
from ..target import Target
from .toolchain import DeviceCode


# MetaSchedule's lowering before VerifyGPUCode, in order (after BindTarget): (namespace, pass, args)
_VERIFY_PASSES = (
    ("s_tir", "LowerCrossThreadReduction"), ("s_tir", "LowerInitBlock"),
    ("s_tir", "PlanAndUpdateBufferAllocationLocation"), ("s_tir", "ConvertBlocksToOpaque"),
    ("s_tir", "LiftThreadBinding"), ("s_tir", "ManifestSharedMemoryLocalStage"), ("s_tir", "CompactBufferAllocation"),
    ("s_tir", "LowerAutoCopy"), ("s_tir", "UnifyThreadBinding"), ("s_tir", "LowerMatchBuffer"),
    ("s_tir", "InjectSoftwarePipeline"), ("s_tir", "LowerOpaqueBlock"), ("tirx", "FlattenBuffer"),
    ("tirx", "NarrowDataType", 32), ("tirx", "StmtSimplify"), ("tirx", "VectorizeLoop", True),
    ("s_tir", "InjectVirtualThread"), ("s_tir", "InjectDoubleBuffer"), ("tirx", "StorageRewrite"),
    ("s_tir", "MergeSharedMemoryAllocations"),
)


def lower_for_verify(mod: Any, tvm_target: Any) -> Any:
    """Lower a scheduled module as far as ``VerifyGPUCode`` needs (MetaSchedule's list).

    The passes of TVM's s_tir pipeline up to shared-memory merging: thread bindings become
    launch attributes, buffers are flattened and compacted, virtual threads injected, so
    the allocation sizes are the ones the kernel will have.
    """
    import tvm
    from tvm import s_tir, tirx

    rewrite = not tvm.transform.PassContext.current().config.get("tirx.disable_storage_rewrite", False)
    namespaces = {"s_tir": s_tir.transform, "tirx": tirx.transform}
    passes = [tirx.transform.BindTarget(tvm_target)]
    for ns, name, *args in _VERIFY_PASSES:
        if name != "StorageRewrite" or rewrite:
            passes.append(getattr(namespaces[ns], name)(*args))
    return tvm.ir.transform.Sequential(passes)(mod)


def verify(mod: Any, target: Target, tvm_target: Any) -> None:
    """Run TVM's ``VerifyGPUCode`` on a scheduled module; ``ConfigError`` naming each violated limit."""
    import tvm

    try:
        lowered = lower_for_verify(mod, tvm_target)
    except Exception as e:  # a schedule TVM cannot lower is not a buildable config either
        raise ConfigError(f"cannot lower for the GPU checks: {last_line(e)}") from None
    check = tvm.get_global_func("s_tir.transform.VerifyGPUCode")(target.gpu_limits().constraints())
    try:
        check(lowered)
    except Exception as e:  # TVM lists the violations, then prints the whole function
        text = str(e)
        found = re.search(r"violated:\n(.*?)\n\s*In function", text, re.S)
        why = "; ".join(line.strip() for line in found.group(1).splitlines()) if found else last_line(e)
        raise ConfigError(f"exceeds {target.name} limits (VerifyGPUCode): {why}") from None


def check_registers(code: DeviceCode, threads: dict[str, int], target: Target) -> None:
    """Registers x threads of each kernel must fit the register file a block may use.

    TVM emits ``__launch_bounds__(threads)``, so ptxas caps registers itself and spills the
    rest; a kernel that still does not fit would fail every launch with "too many
    resources requested", which this catches before anything runs.
    """
    lim = target.gpu_limits()
    for name, res in code.kernels.items():
        n = threads.get(name, 0)
        # registers are allocated per warp in units of 256 (8 per thread)
        per_thread = -(-res.registers // 8) * 8
        warps = -(-n // lim.warp_size)
        if per_thread * lim.warp_size * warps > lim.registers_per_block:
            raise ConfigError(
                f"{name}: {res.registers} registers x {n} threads exceed the {lim.registers_per_block} "
                f"registers a {target.name} block may use"
            )


def launch_threads(source: str) -> dict[str, int]:
    """Threads per block of each kernel, from the ``__launch_bounds__`` TVM writes."""
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r"__launch_bounds__\((\d+)\)\s+(\w+)\s*\(", source)}
