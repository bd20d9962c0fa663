"""CUDA machinery: resource checks, nvcc fatbins, TVM's CUDA runtime, CPU emulation.

Kernels for a GPU are built on a machine that usually has none. What can be proven there
is proven before anything runs:

1. **Static checks.** The scheduled TIR is lowered as far as TVM's own ``VerifyGPUCode``
   needs and checked against the target's limits (threads and shared memory per block,
   virtual threads, vector width); after nvcc, the registers ptxas assigned are checked
   against the register file. Templates reject most impossible configs in their knob
   constraint already; this catches what that arithmetic missed. Failures raise
   :class:`~convgen.knobs.ConfigError` naming the limit.
2. **Device code ahead of time.** Without a CUDA runtime in the process, ``tvm.compile``
   keeps the kernel as CUDA *source* (TVM's "fallback" CUDA module), which a GPU machine
   would have to compile when loading. convgen compiles that source with nvcc into a
   fatbin (SASS for the target's ``sm_XX`` plus ``compute_XX`` PTX for later GPUs) and,
   when exporting, writes the fatbin in place of the source into the library's embedded
   module blob (:func:`patch_library_bin`). The ``.so`` then loads on a GPU machine with
   nothing but TVM's runtime: no nvcc, no NVRTC there. Where a CUDA runtime *is* loaded
   (a GPU build machine), TVM compiles during ``tvm.compile`` through its
   ``tvm_callback_cuda_compile`` hook; convgen points that hook at the same nvcc call for
   the duration of the compile (:func:`_nvcc_hook`) and restores TVM's own afterwards.
   No stand-in driver library is ever loaded and no environment variable is set.
3. **Numerics without a GPU.** :func:`emulate` takes the same scheduled loop nest, turns
   every thread binding (blockIdx, vthread, threadIdx) into a serial loop and shared
   memory into local buffers, builds it for the CPU and returns a callable; tests compare
   it with the numpy reference. Serially, each "thread" performs the whole cooperative
   copy of a tile before using it, so a copy with wrong bounds gives wrong numbers. Races
   and missing barriers are not modelled (TVM inserts the barriers), nor are tensor-core
   intrinsics, which have no CPU implementation (``intrinsics=False`` emulates a
   tensor-core template's loop nest with its 16x16x16 tiles as plain loops).

The runtime-side helpers (:func:`runtime_problem`, :func:`device_problem`) import only the
TVM runtime: :mod:`convgen.runtime` uses them for kernels loaded on a GPU machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .builder import _last_line
from .knobs import ConfigError
from .target import Target, TargetError

FATBIN_MAGIC = 0xBA55ED50  # little-endian u32 at the start of every fatbin container


# ---- target limits -------------------------------------------------------------------------------
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


def limits(target: Target) -> GPULimits:
    """The per-block limits of a CUDA target."""
    if target.family != "cuda":
        raise TargetError(f"{target.name} is not a CUDA target")
    tvm_, isa = target.tvm, target.isa
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
        raise TargetError(f"CUDA target {target.name} lacks tvm.{e.args[0]} (arch and per-block limits are required)") from None


# ---- nvcc ----------------------------------------------------------------------------------------
def _toolkit_roots() -> list[str]:
    """CUDA toolkit folders, in the order CUDA's own tools look: $CUDA_HOME, $CUDA_PATH, the
    default install; then versioned installs, newest first."""
    roots = [p for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p]
    return roots + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)


def find_nvcc(target: Target) -> str:
    """Path of nvcc: the target's ``compiler.nvcc`` on PATH, ``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``."""
    name = str(target.compiler.get("nvcc", "nvcc"))
    candidates = [shutil.which(name)] + [os.path.join(root, "bin", "nvcc") for root in _toolkit_roots()]
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
    log: str = ""

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

    Raises :class:`convgen.builder.BuildError` with nvcc's messages when it fails.
    """
    from .builder import BuildError

    lim = limits(target)
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
    return DeviceCode(fatbin=fatbin, arch=f"sm_{cc}", kernels=parse_ptxas(log), log=log)


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


# ---- static checks -------------------------------------------------------------------------------
def lower_for_verify(mod: Any, tvm_target: Any) -> Any:
    """Lower a scheduled module as far as ``VerifyGPUCode`` needs (MetaSchedule's list).

    The passes of TVM's s_tir pipeline up to shared-memory merging: thread bindings become
    launch attributes, buffers are flattened and compacted, virtual threads injected, so
    the allocation sizes are the ones the kernel will have.
    """
    import tvm
    from tvm import s_tir, tirx

    rewrite = not tvm.transform.PassContext.current().config.get("tirx.disable_storage_rewrite", False)
    passes = [
        tirx.transform.BindTarget(tvm_target),
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.LiftThreadBinding(),
        s_tir.transform.ManifestSharedMemoryLocalStage(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerAutoCopy(),
        s_tir.transform.UnifyThreadBinding(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.InjectSoftwarePipeline(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        tirx.transform.NarrowDataType(32),
        tirx.transform.StmtSimplify(),
        tirx.transform.VectorizeLoop(True),
        s_tir.transform.InjectVirtualThread(),
        s_tir.transform.InjectDoubleBuffer(),
        *([tirx.transform.StorageRewrite()] if rewrite else []),
        s_tir.transform.MergeSharedMemoryAllocations(),
    ]
    return tvm.ir.transform.Sequential(passes)(mod)


def verify(mod: Any, target: Target, tvm_target: Any) -> None:
    """Run TVM's ``VerifyGPUCode`` on a scheduled module; ``ConfigError`` naming each violated limit."""
    import tvm

    try:
        lowered = lower_for_verify(mod, tvm_target)
    except Exception as e:  # a schedule TVM cannot lower is not a buildable config either
        raise ConfigError(f"cannot lower for the GPU checks: {_last_line(e)}") from None
    check = tvm.get_global_func("s_tir.transform.VerifyGPUCode")(limits(target).constraints())
    try:
        check(lowered)
    except Exception as e:  # TVM lists the violations, then prints the whole function
        text = str(e)
        found = re.search(r"violated:\n(.*?)\n\s*In function", text, re.S)
        why = "; ".join(line.strip() for line in found.group(1).splitlines()) if found else _last_line(e)
        raise ConfigError(f"exceeds {target.name} limits (VerifyGPUCode): {why}") from None


def check_registers(code: DeviceCode, threads: dict[str, int], target: Target) -> None:
    """Registers x threads of each kernel must fit the register file a block may use.

    TVM emits ``__launch_bounds__(threads)``, so ptxas caps registers itself and spills the
    rest; a kernel that still does not fit would fail every launch with "too many
    resources requested", which this catches before anything runs.
    """
    lim = limits(target)
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


# ---- compiling (the builder's hook) --------------------------------------------------------------
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

    from .builder import BuildError

    with tvm.transform.PassContext(config=dict(getattr(template, "pass_config", {}))):
        verify(mod, target, tvm_target)
        with _nvcc_hook(target) as compiled:
            try:
                with tvm_target:
                    executable = tvm.compile(mod, target=tvm_target)
            except (ConfigError, BuildError, TargetError):
                raise
            except Exception as e:
                raise BuildError(f"TVM failed to compile {template.name} {config}: {_last_line(e)}") from None
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


# ---- exporting: the fatbin goes into the library blob --------------------------------------------
def _u64(buf: bytes, pos: int) -> tuple[int, int]:
    return struct.unpack_from("<Q", buf, pos)[0], pos + 8


def _str(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _u64(buf, pos)
    if pos + n > len(buf):
        raise ValueError("truncated string")
    return bytes(buf[pos : pos + n]), pos + n


def _pack_str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def iter_library_bin(blob: bytes) -> Iterator[tuple[bytes, bytes | None]]:
    """``(kind, payload)`` of each module in a TVM library blob (``_lib`` has no payload).

    Layout (tvm_ffi ``ProcessLibraryBin``): ``<nbytes:u64> <indptr:vec<u64>>
    <child_indices:vec<u64>>`` then per module ``<kind:str>`` and, unless the kind is
    ``_lib``, ``<bytes:str>``; ``str`` and ``vec`` are a u64 count then the items.
    """
    nbytes, pos = _u64(blob, 0)
    if nbytes != len(blob) - 8:
        raise ValueError(f"library blob says {nbytes} bytes, has {len(blob) - 8}")
    n, pos = _u64(blob, pos)
    indptr = struct.unpack_from(f"<{n}Q", blob, pos)
    pos += 8 * n
    n, pos = _u64(blob, pos)
    pos += 8 * n
    for _ in range(len(indptr) - 1):
        kind, pos = _str(blob, pos)
        payload = None
        if kind != b"_lib":
            payload, pos = _str(blob, pos)
        yield kind, payload
    if pos != len(blob):
        raise ValueError("trailing bytes after the last module")


def split_cuda_payload(payload: bytes, source: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """``(fmt, fmap, code)`` of a serialized CUDA module: ``<fmt:str> <fmap> <code:str>``.

    ``fmap`` (the kernel table) is kept as opaque bytes: ``code`` is the last field, so it
    is found from the end; when the code is expected to be ``source`` that is checked.
    """
    fmt, pos = _str(payload, 0)
    # the code is the trailing <u64 length><bytes>; try the known source first, else scan
    if source is not None:
        n = len(source)
        if payload.endswith(source) and struct.unpack_from("<Q", payload, len(payload) - n - 8)[0] == n:
            return fmt, payload[pos : len(payload) - n - 8], source
        raise ValueError("the CUDA module's code is not the expected source")
    # Scan from the front: the first u64 that spans exactly to the end is the code's length
    # (the kernel table before it holds short counts and names, never such a length).
    for start in range(pos, len(payload) - 7):
        n = struct.unpack_from("<Q", payload, start)[0]
        if start + 8 + n == len(payload):
            return fmt, payload[pos:start], payload[start + 8 :]
    raise ValueError("cannot find the code field of the CUDA module")


def patch_library_bin(blob: bytes, fatbin: bytes, source: str) -> bytes:
    """The blob with each source-only CUDA module (fmt ``cuda``) replaced by ``fatbin``.

    Modules already holding binary code (compiled by a loaded CUDA runtime) are kept. The
    result is checked to hold no CUDA module in source form.
    """
    _, pos = _u64(blob, 0)
    n, pos2 = _u64(blob, pos)
    pos2 += 8 * n
    n, pos2 = _u64(blob, pos2)
    pos2 += 8 * n
    out = bytearray(blob[8:pos2])
    for kind, payload in iter_library_bin(blob):
        out += _pack_str(kind)
        if payload is None:
            continue
        if kind == b"cuda":
            fmt = _str(payload, 0)[0]
            if fmt == b"cuda":
                _, fmap, _ = split_cuda_payload(payload, source.encode())
                payload = _pack_str(b"fatbin") + fmap + _pack_str(fatbin)
        out += _pack_str(payload)
    patched = struct.pack("<Q", len(out)) + bytes(out)
    for kind, payload in iter_library_bin(patched):
        if kind == b"cuda" and _str(payload, 0)[0] == b"cuda":
            raise RuntimeError("a CUDA module is still in source form after embedding the fatbin")
    return patched


def _library_bin_c(blob: bytes) -> str:
    # What TVM's PackImportsToC writes: an exported byte array the loader finds by name.
    # The extern declaration gives the const array external linkage when compiled as C++.
    lines = [
        '#ifdef __cplusplus\nextern "C" {\n#endif',
        "extern const unsigned char __tvm_ffi__library_bin[];",
        f"const unsigned char __tvm_ffi__library_bin[{len(blob)}] = {{",
    ]
    lines += [",".join(map(str, blob[i : i + 40])) + "," for i in range(0, len(blob), 40)]
    lines += ["};", "#ifdef __cplusplus\n}\n#endif", ""]
    return "\n".join(lines)


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
            fh.write(_library_bin_c(patch_library_bin(blob, code.fatbin, source)))
        return path

    return pack


# ---- reading a built library (tests, tools) ------------------------------------------------------
def _elf_symbol_bytes(data: bytes, name: bytes) -> bytes:
    """The bytes of a defined symbol in an ELF64 little-endian shared library."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for sec in sections:
        if sec[1] not in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strtab = sections[sec[6]]
        for i in range(sec[5] // sec[9]):
            st_name, _, _, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, sec[4] + i * sec[9])
            end = data.index(b"\0", strtab[4] + st_name)
            if data[strtab[4] + st_name : end] == name and 0 < st_shndx < shnum:
                host = sections[st_shndx]  # file offset = value - section address + section offset
                start = st_value - host[3] + host[4]
                return data[start : start + st_size]
    raise ValueError(f"symbol {name.decode()} not found")


def library_device_code(path: str) -> list[dict[str, Any]]:
    """The CUDA modules embedded in a built ``.so``: format, code size, fatbin contents.

    Needs no TVM and no GPU: reads ``__tvm_ffi__library_bin`` from the ELF file.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    blob = _elf_symbol_bytes(data, b"__tvm_ffi__library_bin")
    out = []
    for kind, payload in iter_library_bin(blob):
        if kind != b"cuda":
            continue
        fmt, _, code = split_cuda_payload(payload)
        entry: dict[str, Any] = {"format": fmt.decode(), "bytes": len(code)}
        if len(code) >= 4 and struct.unpack_from("<I", code, 0)[0] == FATBIN_MAGIC:
            entry.update(fatbin_contents(code))
        out.append(entry)
    return out


def fatbin_contents(fatbin: bytes) -> dict[str, list[str]]:
    """``{"sass": ["sm_90"], "ptx": ["compute_90"]}``: the entries of a fatbin container.

    Container header ``<magic:u32> <version:u16> <header_size:u16> <size:u64>``; each entry
    ``<kind:u16 (1 PTX, 2 ELF)> <u16> <header_size:u32> <payload_size:u64> ...`` with the
    architecture as a u32 at offset 28 of the entry header.
    """
    magic, _, header, size = struct.unpack_from("<IHHQ", fatbin, 0)
    if magic != FATBIN_MAGIC:
        raise ValueError("not a fatbin")
    found: dict[str, list[str]] = {"sass": [], "ptx": []}
    pos = header
    while pos + 32 <= min(len(fatbin), header + size):
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", fatbin, pos)
        arch, = struct.unpack_from("<I", fatbin, pos + 28)
        if kind == 2:
            found["sass"].append(f"sm_{arch}")
        elif kind == 1:
            found["ptx"].append(f"compute_{arch}")
        pos += entry_header + payload
    return found


# ---- runtime side (TVM runtime only) -------------------------------------------------------------
def _cudart_candidates() -> list[str]:
    """Where a pip- or toolkit-installed CUDA 13 runtime library may be: the toolkit folders
    (``$CUDA_HOME``, ``$CUDA_PATH``, ``/usr/local/cuda*``) and the ``nvidia/*/lib`` folders of
    the interpreter's site-packages. Only absolute paths: a library found relative to the
    current directory would be whatever file someone left there, loaded into the process."""
    import site

    found = [os.path.join(r, sub, "libcudart.so.13") for r in _toolkit_roots() for sub in ("lib64", "lib")]
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
        return f"TVM's CUDA runtime (libtvm_runtime_cuda.so) does not load: {_last_line(e)}"
    return None if tvm.runtime.enabled("cuda") else "TVM's CUDA runtime did not register"


def device_problem(target: Target, device_id: int = 0) -> str | None:
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
    need = limits(target).compute_capability
    if have < need:
        return (f"GPU {device_id} ({dev.device_name}) has compute capability {have[0]}.{have[1]}; "
                f"{target.name} kernels need {need[0]}.{need[1]} or later")
    return None


# ---- CPU emulation -------------------------------------------------------------------------------
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

    from .builder import resolve_config
    from .target import get_target

    target = get_target(target)
    tmpl, config, _ = resolve_config(spec, target, config, template, None, builtin_records=False)
    sch = s_tir.Schedule(tmpl.primfunc(spec, target, config))
    if getattr(tmpl, "tensor_core", False):
        if intrinsics:
            raise ConfigError(f"{tmpl.name} uses tensor-core intrinsics, which have no CPU emulation "
                              "(intrinsics=False emulates its loop nest without them)")
        tmpl.apply(sch, spec, target, tmpl.space(spec, target).check(config), tensorize=False)
    else:
        tmpl.schedule(sch, spec, target, config)
    run = emulate_module(sch.mod, spec, getattr(tmpl, "pass_config", None))
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

