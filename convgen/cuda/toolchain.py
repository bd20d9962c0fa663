"""nvcc: finding it, compiling TVM's CUDA source into a fatbin, reading what ptxas reports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ..errors import BuildError, TargetError
from ..target import Target
from .device import toolkit_roots


def find_nvcc(target: Target) -> str:
    """Path of nvcc: the target's ``compiler.nvcc`` on PATH, ``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``."""
    name = str(target.compiler.get("nvcc", "nvcc"))
    candidates = [shutil.which(name)] + [os.path.join(root, "bin", "nvcc") for root in toolkit_roots()]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    hint = target.compiler.get("install_hint", "install the CUDA toolkit")
    raise TargetError(f"nvcc (CUDA toolkit) not found, needed to build {target.name} kernels: {hint}")


@dataclass
class KernelResources:
    """What ptxas reported for one ``__global__`` function."""

    registers: int = 0
    spill_bytes: int = 0     # spill stores + loads, bytes per thread
    stack_bytes: int = 0
    shared_bytes: int = 0    # static shared memory ptxas allocated


@dataclass
class DeviceCode:
    """A fatbin built by nvcc and what ptxas said about its kernels."""

    fatbin: bytes
    arch: str
    kernels: dict[str, KernelResources] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """JSON-able summary for kernel metadata."""
        return {
            "arch": self.arch,
            "fatbin_bytes": len(self.fatbin),
            "kernels": {k: vars(v) for k, v in self.kernels.items()},
        }


# The flags TVM's own nvcc path uses for the code it generates (its half/bfloat16 operators
# need the -U flags), minus --use_fast_math: a convolution needs only fma, and nvcc
# contracts mul+add into fma by default (-fmad=true) anyway.
_NVCC_FLAGS = [
    "-O3",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "-Xptxas=-v",  # ptxas reports registers and spills per kernel: the register check reads them
]


def nvcc_fatbin(source: str, target: Target, *, timeout: float = 300.0) -> DeviceCode:
    """Compile CUDA ``source`` into a fatbin for ``target``'s arch (SASS + PTX).

    Raises :class:`convgen.errors.BuildError` with nvcc's messages when it fails.
    """
    lim = target.gpu_limits()
    cc = "".join(map(str, lim.compute_capability))
    nvcc = find_nvcc(target)
    with tempfile.TemporaryDirectory(prefix="convgen-nvcc-") as tmp:
        src, out = os.path.join(tmp, "kernel.cu"), os.path.join(tmp, "kernel.fatbin")
        with open(src, "w") as fh:
            fh.write(source)
        # sm_XX machine code runs on GPUs of that major version with minor >= XX; the
        # compute_XX PTX lets the driver JIT for any later GPU (an sm_80 kernel on an H100).
        cmd = [nvcc, "--fatbin", f"-gencode=arch=compute_{cc},code=[sm_{cc},compute_{cc}]", *_NVCC_FLAGS, "-o", out, src]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BuildError(f"nvcc took longer than {timeout:.0f} s") from None
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            errors = [line for line in log.splitlines() if "error" in line.lower()] or log.splitlines()[-5:]
            raise BuildError(f"nvcc failed for sm_{cc}: " + " | ".join(e.strip() for e in errors[:5]))
        with open(out, "rb") as fh:
            fatbin = fh.read()
    return DeviceCode(fatbin=fatbin, arch=f"sm_{cc}", kernels=parse_ptxas(log))


def parse_ptxas(log: str) -> dict[str, KernelResources]:
    """Per-kernel registers, spills and shared memory from ``ptxas -v`` output."""
    out: dict[str, KernelResources] = {}
    current: KernelResources | None = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = out.setdefault(m.group(1), KernelResources())
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.stack_bytes = int(m.group(1))
            current.spill_bytes = int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current.registers = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            current.shared_bytes = int(m.group(1))
    return out
