"""Byte formats of CUDA kernels in a TVM library: the embedded module blob, fatbin containers,
and ELF symbols (reading a built ``.so`` needs no TVM and no GPU)."""

from __future__ import annotations

import struct
from typing import Any, Iterator

FATBIN_MAGIC = 0xBA55ED50  # little-endian u32 at the start of every fatbin container


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


def library_bin_c(blob: bytes) -> str:
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
