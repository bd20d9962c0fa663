"""The CPU features this process may use, named as Linux's ``/proc/cpuinfo`` names them.

On aarch64 the kernel tells each process in its auxiliary vector (``getauxval(AT_HWCAP)``,
``AT_HWCAP2``): under qemu-user (multi-arch containers, an emulated CI board)
``/proc/cpuinfo`` describes the x86 host, while the auxiliary vector describes the CPU qemu
emulates, the one that runs the kernel. So aarch64 reads the auxiliary vector first and
falls back to ``/proc/cpuinfo``. x86 reads ``/proc/cpuinfo`` and, where it is unreadable
(a sandbox without ``/proc``), asks the CPU itself with ``CPUID`` and ``XGETBV`` (the
operating system must also save the vector registers: XCR0).

Pure Python with ctypes: the runtime side uses it, no TVM needed.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform

AT_HWCAP, AT_HWCAP2 = 16, 26

# arch/arm64/include/uapi/asm/hwcap.h: bit -> the name /proc/cpuinfo prints
_ARM_HWCAP = {0: "fp", 1: "asimd", 2: "evtstrm", 3: "aes", 4: "pmull", 5: "sha1", 6: "sha2", 7: "crc32",
              8: "atomics", 9: "fphp", 10: "asimdhp", 11: "cpuid", 12: "asimdrdm", 13: "jscvt", 14: "fcma",
              15: "lrcpc", 16: "dcpop", 17: "sha3", 18: "sm3", 19: "sm4", 20: "asimddp", 21: "sha512",
              22: "sve", 23: "asimdfhm", 24: "dit", 25: "uscat", 26: "ilrcpc", 27: "flagm", 28: "ssbs",
              29: "sb", 30: "paca", 31: "pacg"}
_ARM_HWCAP2 = {0: "dcpodp", 1: "sve2", 2: "sveaes", 3: "svepmull", 4: "svebitperm", 5: "svesha3", 6: "svesm4",
               7: "flagm2", 8: "frint", 9: "svei8mm", 10: "svef32mm", 11: "svef64mm", 12: "svebf16", 13: "i8mm",
               14: "bf16", 15: "dgh", 16: "rng", 17: "bti"}


def cpuinfo_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The ``flags`` (x86) or ``Features`` (arm) line of ``path``; ``None`` if unreadable."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def auxv_flags() -> frozenset[str] | None:
    """aarch64 features from ``getauxval(AT_HWCAP/AT_HWCAP2)``; ``None`` where there is none."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hwcap, hwcap2 = getauxval(AT_HWCAP), getauxval(AT_HWCAP2)
    if not hwcap:
        return None
    return frozenset([name for bit, name in _ARM_HWCAP.items() if hwcap >> bit & 1] +
                     [name for bit, name in _ARM_HWCAP2.items() if hwcap2 >> bit & 1])


# x86-64 System V: void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4]) and uint64 xgetbv0(void)
_CPUID = bytes([0x53,                    # push rbx (callee-saved; CPUID writes it)
                0x49, 0x89, 0xD0,        # mov r8, rdx (out: CPUID writes edx)
                0x89, 0xF8, 0x89, 0xF1,  # mov eax, edi; mov ecx, esi
                0x0F, 0xA2,              # cpuid
                0x41, 0x89, 0x00, 0x41, 0x89, 0x58, 0x04,  # mov [r8], eax; mov [r8+4], ebx
                0x41, 0x89, 0x48, 0x08, 0x41, 0x89, 0x50, 0x0C,  # mov [r8+8], ecx; mov [r8+12], edx
                0x5B, 0xC3])             # pop rbx; ret
_XGETBV = bytes([0x31, 0xC9, 0x0F, 0x01, 0xD0,  # xor ecx, ecx; xgetbv (XCR0 in edx:eax)
                 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3])  # shl rdx, 32; or rax, rdx; ret


def cpuid_flags() -> frozenset[str] | None:
    """x86 features from ``CPUID``/``XGETBV`` (the ones convgen's targets name); ``None``
    where machine code cannot be run (a kernel that refuses executable mappings)."""
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    buf.write(_CPUID + bytes(64 - len(_CPUID)) + _XGETBV)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4))(base)
    xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64)(base + 64)

    def regs(leaf: int, sub: int = 0) -> list[int]:
        out = (ctypes.c_uint32 * 4)()
        cpuid(leaf, sub, ctypes.byref(out))
        return list(out)

    flags = set()
    top = regs(0)[0]
    _, _, ecx, edx = regs(1)
    for bit, name in ((12, "fma"), (19, "sse4_1"), (20, "sse4_2"), (28, "avx"), (27, "osxsave")):
        if ecx >> bit & 1:
            flags.add(name)
    if edx >> 26 & 1:
        flags.add("sse2")
    if top >= 7:
        _, ebx, ecx7, edx7 = regs(7)
        for bit, name in ((5, "avx2"), (16, "avx512f"), (17, "avx512dq"), (28, "avx512cd"), (30, "avx512bw"),
                          (31, "avx512vl")):
            if ebx >> bit & 1:
                flags.add(name)
        for bit, name in ((1, "avx512vbmi"), (11, "avx512_vnni")):
            if ecx7 >> bit & 1:
                flags.add(name)
        for bit, name in ((22, "amx_bf16"), (24, "amx_tile"), (25, "amx_int8")):
            if edx7 >> bit & 1:
                flags.add(name)
        if regs(7, 1)[0] >> 5 & 1:  # leaf 7 subleaf 1, EAX bit 5
            flags.add("avx512_bf16")
    # the OS must save the vector state: XCR0 bits 1-2 (xmm, ymm), 5-7 (the AVX-512 state)
    xcr0 = xgetbv() if "osxsave" in flags else 0
    if xcr0 & 0b110 != 0b110:
        flags -= {"avx", "avx2", "fma"} | {f for f in flags if f.startswith("avx512")}
    elif xcr0 & 0b11100000 != 0b11100000:
        flags -= {f for f in flags if f.startswith("avx512")}
    buf.close()
    return frozenset(flags - {"osxsave"})


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """CPU feature flags of this process (see the module docstring); empty if unknowable."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        order = (auxv_flags, cpuinfo_flags)
    elif machine in ("x86_64", "amd64"):
        order = (cpuinfo_flags, cpuid_flags)
    else:
        order = (cpuinfo_flags,)
    for read in order:
        flags = read()
        if flags:
            return flags
    return frozenset()


#: Linux x86-64: ``arch_prctl``'s system call number, its request for an extended state
#: component, and AMX's tile data component (arch/x86/include/uapi/asm/prctl.h)
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


@functools.cache
def request_amx() -> str | None:
    """Ask Linux for AMX's tile state (8 KB per thread, granted per process on request since
    Linux 5.16; without it the first tile instruction raises SIGILL). ``None`` once granted
    (asking again is harmless), else why it was not."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"AMX tiles are granted by Linux on x86-64, not {platform.system()} on {platform.machine()}"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                          ctypes.c_long(XFEATURE_XTILEDATA))
    except (OSError, AttributeError) as e:
        return f"could not ask Linux for AMX tiles: {e}"
    if rc != 0:
        return f"Linux refused AMX tile state to this process (arch_prctl: {os.strerror(ctypes.get_errno())})"
    return None
