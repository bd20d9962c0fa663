"""Targets: what convgen compiles for, read from the TOML files in ``targets/``.

Pure Python (no TVM import): the runtime side needs a target's description too.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .cpufeatures import host_cpu_flags, request_amx  # noqa: F401 - host_cpu_flags re-exported: auxv, cpuinfo or CPUID
from .cuda.device import device_problem
from .errors import TargetError



@dataclass(frozen=True)
class GPULimits:
    """What a CUDA target allows one thread block (from its TOML)."""

    arch: str                      # "sm_90"
    max_threads_per_block: int
    max_shared_memory_per_block: int  # bytes
    registers_per_block: int       # 32-bit registers one block may use
    max_registers_per_thread: int
    warp_size: int
    sm_count: int
    max_vthread: int
    max_vector_bytes: int

    @property
    def compute_capability(self) -> tuple[int, int]:
        """``(9, 0)`` for ``sm_90``."""
        digits = re.sub(r"\D", "", self.arch)
        return int(digits[:-1]), int(digits[-1])

    def constraints(self) -> dict[str, int]:
        """The dict TVM's ``VerifyGPUCode`` takes."""
        return {
            "max_threads_per_block": self.max_threads_per_block,
            "max_shared_memory_per_block": self.max_shared_memory_per_block,
            "max_vthread": self.max_vthread,
            "max_vector_bytes": self.max_vector_bytes,
            # per-thread local arrays (register tiles): more than a thread's registers spill
            "max_local_memory_per_block": 4 * self.max_registers_per_thread,
        }


@dataclass(frozen=True)
class Target:
    """One compilation target: a TVM target dict plus what templates need to know."""

    name: str
    description: str
    family: str  # "x86", "arm" or "cuda": picks the schedule templates
    tvm: dict[str, Any]
    dtypes: tuple[str, ...]
    cpu_flags: tuple[str, ...] = ()
    rpc_key: str = ""
    extends: str = ""  # the target this one adds CPU features to: its records serve this one too
    isa: dict[str, Any] = field(default_factory=dict)
    peak: dict[str, Any] = field(default_factory=dict)
    compiler: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def lineage(self) -> tuple[str, ...]:
        """This target's name, then the targets it extends, nearest first: tuning records of
        any of them serve it (an AVX512_BF16 machine keeps the fp32 records of AVX-512)."""
        names, name = [self.name], self.extends
        while name and name not in names:
            names.append(name)
            parent = all_targets().get(name)
            name = parent.extends if parent is not None else ""
        return tuple(names)

    @property
    def vector_lanes(self) -> int:
        """fp32 lanes of one vector register (8 for AVX2, 16 for AVX-512, 4 for NEON)."""
        return int(self.isa.get("vector_bits", 128)) // 32

    @property
    def registers(self) -> int:
        """Architectural vector registers: the budget for a register tile."""
        return int(self.isa.get("registers", 16))

    @property
    def fma_memory_operand(self) -> bool:
        """Can a vector FMA read one operand from memory (x86: yes; AArch64 FMLA: no)? A
        register tile may then hold one weight vector fewer than it uses."""
        return bool(self.isa.get("fma_memory_operand", False))

    @property
    def is_cpu(self) -> bool:
        """True for targets whose kernels run on the CPU that loads them."""
        return self.family in ("x86", "arm")

    def nominal_peak_gflops(self, cores: int, dtype: str = "float32") -> float:
        """Nominal peak of ``cores`` cores for ``dtype`` (GFLOP/s, or GOP/s for int8) from the
        TOML's ``[peak]``: per-cycle figure x clock on CPUs, the whole chip on GPUs (fp16 on
        tensor cores). A dtype without its own figure falls back to the fp32 one."""
        if self.family == "cuda":  # GPU peaks are given for the whole chip
            key = "fp16_tensor_tflops" if dtype == "float16" else "fp32_tflops"
            return float(self.peak.get(key, self.peak.get("fp32_tflops", 0))) * 1e3
        key = {"int8": "int8_ops_per_cycle", "uint8": "int8_ops_per_cycle", "bfloat16": "bf16_flops_per_cycle"}
        per_cycle = self.peak.get(key.get(dtype, "flops_per_cycle"))
        per_cycle = per_cycle if per_cycle is not None else self.peak.get("flops_per_cycle", 0)
        return float(per_cycle) * float(self.peak.get("ghz", 0)) * cores

    def gpu_limits(self) -> "GPULimits":
        """The per-block limits of a CUDA target (``TargetError`` for another family, or one
        whose TOML lacks them)."""
        if self.family != "cuda":
            raise TargetError(f"{self.name} is not a CUDA target")
        tvm_, isa = self.tvm, self.isa
        try:
            return GPULimits(
                arch=str(tvm_["arch"]),
                max_threads_per_block=int(tvm_["max_threads_per_block"]),
                max_shared_memory_per_block=int(tvm_["max_shared_memory_per_block"]),
                registers_per_block=int(tvm_.get("registers_per_block", isa.get("registers_per_sm", 65536))),
                max_registers_per_thread=int(isa.get("max_registers_per_thread", 255)),
                warp_size=int(tvm_.get("thread_warp_size", 32)),
                sm_count=int(isa.get("sm_count", 80)),
                max_vthread=int(isa.get("max_vthread", 8)),
                max_vector_bytes=int(isa.get("max_vector_bytes", 16)),
            )
        except KeyError as e:
            raise TargetError(f"CUDA target {self.name} lacks tvm.{e.args[0]} "
                              "(arch and per-block limits are required)") from None

    def runs_here(self) -> bool:
        """Can kernels for this target run on this machine (ISA and CPU flags present, or a
        CUDA GPU of the target's compute capability or later)?"""
        if self.family == "cuda":
            return device_problem(self) is None
        if not self.is_cpu:
            return False
        want = {"x86": ("x86_64", "amd64"), "arm": ("aarch64", "arm64")}[self.family]
        if platform.machine().lower() not in want:
            return False
        if not set(self.cpu_flags) <= host_cpu_flags():
            return False
        # AMX's tiles also need the operating system's leave, asked for once per process
        return "amx_tile" not in self.cpu_flags or request_amx() is None

    def to_dict(self) -> dict[str, Any]:
        """The TOML content, for metadata: ``Target.from_dict(t.to_dict()) == t``."""
        return dict(self.raw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Target":
        """A target from its TOML content (a ``targets/*.toml`` file, kernel metadata, or
        :meth:`to_dict` on the other side of a process boundary)."""
        return _from_toml(data)


_TABLES = ("tvm", "isa", "peak", "compiler")
_STRINGS = ("name", "family", "description", "rpc_key", "extends")


def _from_toml(data: dict[str, Any]) -> Target:
    if not isinstance(data, dict):
        raise TargetError(f"a target description must be a table, got {type(data).__name__}")
    for key in ("name", "family", "tvm"):
        if key not in data:
            raise TargetError(f"target description lacks the field {key!r}")
    for key in _TABLES:
        if not isinstance(data.get(key, {}), dict):
            raise TargetError(f"target description: {key!r} must be a table")
    for key in _STRINGS:
        if not isinstance(data.get(key, ""), str):
            raise TargetError(f"target description: {key!r} must be a string")
    for key in ("dtypes", "cpu_flags"):
        value = data.get(key, [])
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TargetError(f"target description: {key!r} must be a list of strings")
    return Target(
        name=data["name"],
        description=data.get("description", ""),
        family=data["family"],
        tvm=dict(data["tvm"]),
        dtypes=tuple(data.get("dtypes", ["float32"])),
        cpu_flags=tuple(data.get("cpu_flags", ())),
        rpc_key=data.get("rpc_key", data["name"]),
        extends=data.get("extends", ""),
        isa=dict(data.get("isa", {})),
        peak=dict(data.get("peak", {})),
        compiler=dict(data.get("compiler", {})),
        raw=data,
    )


@functools.cache
def all_targets() -> dict[str, Target]:
    """Every target shipped in ``targets/``, by name."""
    out = {}
    for entry in sorted(resources.files("convgen.targets").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            target = _from_toml(tomllib.loads(entry.read_text()))
            out[target.name] = target
    return out


def host_cpu_name() -> str:
    """The CPU, for records and benchmark tables: its model name and, on x86, its family and
    model numbers (``AMD EPYC (family 25 model 17)``): a VM's model name alone ("AMD EPYC")
    does not tell a Zen 1 from a Zen 4 or a Zen 5, and records rank the configs tuned on the
    CPU at hand first (:func:`convgen.records.find_config`)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break  # the first processor's block is enough
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def host_target() -> Target:
    """The widest-vector CPU target this machine can run."""
    candidates = [t for t in all_targets().values() if t.is_cpu and t.runs_here()]
    if not candidates:
        raise TargetError(
            f"no shipped target runs on this machine ({platform.machine()}, flags "
            f"{' '.join(sorted(host_cpu_flags())[:12])}...); pass --target explicitly"
        )
    return max(candidates, key=lambda t: (t.isa.get("vector_bits", 0), len(t.cpu_flags)))


def get_target(target: "str | Target") -> Target:
    """Resolve a name (``"host"``, ``"x86-avx2"``, ...) or a Target to a Target."""
    if isinstance(target, Target):
        return target
    if target == "host":
        return host_target()
    targets = all_targets()
    if target not in targets:
        raise TargetError(f"unknown target {target!r}; known: host, {', '.join(targets)}")
    return targets[target]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; containers and taskset respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
