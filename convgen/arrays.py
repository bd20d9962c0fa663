"""Arrays in and out of a kernel: numpy, DLPack producers (torch, ...) and tvm Tensors.

A :class:`~convgen.runtime.Kernel` runs TVM functions that take ``tvm.runtime.Tensor``
arguments; callers hold numpy arrays or torch tensors. :class:`ArgumentIO` turns each
argument into a tensor the kernel reads, checked first (type, dtype, shape, contiguity,
device), zero-copy wherever the data allows it, and makes the output the caller gets back
in the kind it passed (numpy in, numpy out; torch in, torch out). Runtime side: numpy, the
TVM runtime and nothing of the compiler.

Zero-copy needs the data aligned as the kernel declares (CPU kernels built by convgen take
any element-aligned array; older ones 64 bytes) and, for numpy, a writable array (numpy
refuses to export read-only ones through DLPack). Anything else goes through a staging
buffer kept per calling thread, so a kernel called again and again with one shape
allocates once.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any, Sequence

import numpy as np

from .lazy import tvm as _tvm
from .lazy import tvm_ffi as _tvm_ffi
from .spec import DTYPE_BYTES, ConvSpec

ALIGN = 64  # TVM's default data alignment: what a kernel that declares none needs

#: (name, shape, dtype) of one kernel argument
ArgSpec = tuple[str, tuple[int, ...], str]


def numpy_dtype(name: Any) -> np.dtype:
    """The numpy dtype of a convgen dtype name; ``bfloat16`` is ``ml_dtypes.bfloat16`` (numpy
    has none; TVM's runtime returns bf16 tensors as such arrays)."""
    if isinstance(name, str) and name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes is a dependency of convgen
            raise TypeError("bfloat16 arrays need ml_dtypes: pip install ml_dtypes") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous numpy array whose data is 64-byte aligned (zero-copy in)."""
    dtype = numpy_dtype(dtype)
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize  # (np.prod: 10x slower, per call)
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    offset = (-raw.__array_interface__["data"][0]) % ALIGN
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def describe(x: Any) -> str:
    """``module.Type`` of an argument, for error messages."""
    return f"{type(x).__module__}.{type(x).__name__}"


def refuse_overlap(out: Any, inputs: list[Any], specs: Sequence[ArgSpec]) -> None:
    """Raise ``ValueError`` when the memory the kernel writes overlaps memory it reads (it
    would read its own half-written output: a wrong result, no error)."""
    start = out.data_ptr()
    end = start + out.numel() * DTYPE_BYTES[specs[-1][2]]
    for t, (name, _, dtype) in zip(inputs, specs):
        lo = t.data_ptr()
        if lo < end and start < lo + t.numel() * DTYPE_BYTES.get(dtype, 4) and t.device == out.device:
            raise ValueError(f"out: overlaps the {name} argument; the kernel reads {name} while it writes out, "
                             "so pass a separate output array")


def _bf16_view(x: np.ndarray, align: int) -> Any:
    """A numpy ``ml_dtypes.bfloat16`` array as a tvm Tensor over its memory. numpy exports no
    dtype of its own through DLPack, so the bits go as uint16 and the tensor is re-typed: a
    bf16 and a uint16 are the same 16 bits."""
    if x.dtype.name != "bfloat16":
        raise TypeError(f"arrays of {x.dtype} cannot be passed to a kernel")
    bits = _tvm_ffi().from_dlpack(x.view(np.uint16), require_alignment=align, require_contiguous=True)
    return bits._create_view(tuple(x.shape), "bfloat16")


def kind_of(x: Any) -> str:
    """``"numpy"``, ``"tvm"``, ``"torch"`` or ``"dlpack"``; ``TypeError`` for anything else."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, _tvm().runtime.Tensor):
        return "tvm"
    if type(x).__module__.split(".")[0] == "torch":
        return "torch"
    if hasattr(x, "__dlpack__"):
        return "dlpack"
    raise TypeError(f"expected a numpy array, a DLPack tensor (torch, ...) or a tvm Tensor, got {describe(x)}")


class ArgumentIO:
    """Checks and converts the arguments of one kernel (see the module docstring).

    ``spec``: the workload (argument names and layouts for messages); ``target``: its name,
    for messages; ``cuda``: the kernel runs on a GPU; ``arg_align``: the data alignment its
    arguments declare; ``device``: a function giving its TVM device.
    """

    def __init__(self, spec: ConvSpec, target: str, *, cuda: bool, arg_align: int, device: Any) -> None:
        self.spec = spec
        self.target = target
        self.cuda = cuda
        self.device_type = 2 if cuda else 1  # kDLCUDA / kDLCPU
        self.arg_align = arg_align
        self._device = device
        # np.empty where the kernel takes any element-aligned output: 0.5 us, where an
        # aligned_empty costs 7 (it allocates a byte buffer and slices it)
        self.out_in_place = arg_align <= DTYPE_BYTES.get(spec.out_dtype, ALIGN)
        self._local = threading.local()  # staging buffers, one set per calling thread

    # -- checks ---------------------------------------------------------------------------
    def check(self, name: str, shape: tuple, dtype: str, got_shape: tuple, got_dtype: Any, contiguous: bool) -> None:
        """Raise ``TypeError``/``ValueError`` unless an argument has the dtype, shape and
        contiguity the kernel takes. ``got_dtype``: a numpy dtype (compared with the name in C:
        ``str()`` of a numpy dtype costs microseconds on every call) or a dtype name."""
        if got_dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {got_dtype}")
        if tuple(got_shape) != tuple(shape):
            layout = {"weight": "OIHW" if self.spec.layout == "NCHW" else "HWIO", "bias": "K"}.get(name, self.spec.layout)
            raise ValueError(f"{name}: expected shape {tuple(shape)} ({layout}), got {tuple(got_shape)}")
        if not contiguous:
            raise ValueError(f"{name}: must be C-contiguous (use np.ascontiguousarray / tensor.contiguous())")

    def check_device(self, name: str, device_type: int) -> None:
        """Raise ``ValueError`` unless a tensor lives where the kernel runs. A CUDA kernel
        dereferences its pointers on the GPU: host tensors (torch CPU, a CPU tvm Tensor) are
        refused; numpy arrays are copied to the GPU instead."""
        if device_type != self.device_type:
            where = {1: "cpu", 2: "cuda"}.get(device_type, f"device type {device_type}")
            raise ValueError(f"{name}: the tensor lives on {where}; this {self.target} kernel needs "
                             f"{'a CPU' if self.device_type == 1 else 'a CUDA'} tensor")

    # -- inputs ---------------------------------------------------------------------------
    def to_tvm(self, x: Any, name: str, shape: tuple, dtype: str, kind: str | None = None) -> Any:
        """``x`` checked and wrapped as a tvm Tensor the kernel reads (a staged copy when
        it cannot go zero-copy); ``kind`` is :func:`kind_of` ``(x)`` when the caller has it."""
        if kind is None:
            kind = kind_of(x)
        if kind == "numpy":
            self.check(name, shape, dtype, x.shape, x.dtype, x.flags.c_contiguous)
            return self._from_numpy(x, name)
        if kind == "tvm":
            self.check(name, shape, dtype, tuple(x.shape), str(x.dtype), True)
            self.check_device(name, x.device.dlpack_device_type())
            return x
        t, host = self._from_dlpack(x, name, shape, dtype)
        return t if host is None else self._from_numpy(host, name)

    def _import(self, x: Any) -> Any:
        """``x`` (numpy or another DLPack producer) as a tvm Tensor viewing its memory; raises
        when its data breaks the kernel's declared alignment or the export is refused."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "V":
            return _bf16_view(x, self.arg_align)
        return _tvm_ffi().from_dlpack(x, require_alignment=self.arg_align, require_contiguous=True)

    def _from_dlpack(self, x: Any, name: str, shape: tuple, dtype: str) -> tuple[Any, np.ndarray | None]:
        """A DLPack tensor, checked: ``(tvm Tensor, None)`` zero-copy, or ``(None, numpy view)``
        when its CPU data breaks the kernel's alignment and has to go through a staging buffer.

        The import comes first and the device is read from the imported tensor: asking a torch
        tensor for ``__dlpack_device__`` costs 2 us, a third of a checked call's wrapping of
        one argument (measured on a Xeon, torch 2.13); only a refused import asks it."""
        if getattr(x, "requires_grad", False):
            raise TypeError(f"{name}: the tensor requires grad, and convgen kernels record no gradients; "
                            "pass tensor.detach()")
        try:
            t = self._import(x)
        except Exception as e:
            try:
                dev_type, _ = x.__dlpack_device__()
            except Exception as e2:
                raise TypeError(f"{name}: cannot read the DLPack device of {describe(x)}: {e2}") from None
            self.check_device(name, int(dev_type))
            msg = str(e)
            if int(dev_type) == 1 and ("align" in msg or "contiguous" in msg):
                arr = np.from_dlpack(x)  # a CPU view of the caller's memory
                self.check(name, shape, dtype, arr.shape, arr.dtype, arr.flags.c_contiguous)
                return None, arr
            raise TypeError(f"{name}: {describe(x)} cannot be passed through DLPack: {msg.splitlines()[-1]}") from None
        self.check_device(name, t.device.dlpack_device_type())
        self.check(name, shape, dtype, tuple(t.shape), str(t.dtype), True)
        return t, None

    def _from_numpy(self, x: np.ndarray, name: str) -> Any:
        """A checked numpy array as a tvm Tensor: zero-copy when its data is writable and
        aligned as the kernel declares, else a copy in a staging buffer (on the GPU for a
        CUDA kernel)."""
        if self.cuda:
            return _tvm().runtime.tensor(x, self._device())
        if x.flags.writeable:
            try:
                return self._import(x)
            except Exception:  # noqa: BLE001 (misaligned for an older kernel; TVM's error type is not public)
                pass
        buf, t = self._staging(name, x.shape, x.dtype)
        np.copyto(buf, x)
        return t

    def _staging(self, name: str, shape: tuple, dtype: Any) -> tuple[np.ndarray, Any]:
        """This thread's 64-byte aligned host buffer for argument ``name``, and a tvm Tensor
        viewing it (kept between calls: a kernel is called again and again with one shape)."""
        staging = getattr(self._local, "staging", None)
        if staging is None:
            staging = self._local.staging = {}
        entry = staging.get(name)
        if entry is None or entry[0].shape != tuple(shape) or entry[0].dtype != dtype:
            buf = aligned_empty(shape, dtype)
            entry = staging[name] = (buf, _bf16_view(buf, ALIGN) if buf.dtype.kind == "V" else _tvm().runtime.from_dlpack(buf))
        return entry

    # -- the output -----------------------------------------------------------------------
    def allocate(self, kind: str, shape: tuple, dtype: str, like: Any) -> tuple[Any, Any]:
        """A fresh output: (tvm tensor to write, function returning what the caller gets)."""
        tvm = _tvm()
        if kind == "numpy" and not self.cuda:
            arr = np.empty(shape, numpy_dtype(dtype)) if self.out_in_place else aligned_empty(shape, dtype)
            return self._import(arr), lambda: arr
        if self.cuda and kind == "torch":
            # on the input's GPU (cuda:1 stays on cuda:1), from torch's caching allocator
            torch = sys.modules["torch"]
            arr = torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
            return tvm.runtime.from_dlpack(arr), lambda: arr
        if self.cuda and kind == "dlpack":
            t = tvm.runtime.empty(shape, dtype, tvm.cuda(int(like.__dlpack_device__()[1])))
            return t, lambda: t  # a tvm Tensor: itself a DLPack GPU tensor
        if self.cuda and kind == "tvm":
            t = tvm.runtime.empty(shape, dtype, like.device)
            return t, lambda: t
        if kind == "torch":
            # torch's own allocator (64-byte aligned on CPUs): 2 us, where a tvm tensor and
            # its export to torch cost 8 (measured on a Xeon, torch 2.13)
            torch = sys.modules["torch"]
            arr = torch.empty(shape, dtype=getattr(torch, dtype))
            try:
                return self._import(arr), lambda: arr
            except Exception:  # noqa: BLE001 (an alignment torch does not give; TVM's error type is not public)
                pass
        t = tvm.runtime.empty(shape, dtype, self._device())
        if kind == "numpy":  # GPU kernel, host arrays: copy the result back
            return t, t.numpy
        if kind == "torch":
            return t, lambda: sys.modules["torch"].from_dlpack(t)
        if kind == "dlpack":
            return t, lambda: np.from_dlpack(t)
        return t, lambda: t

    def to_tvm_out(self, out: Any, name: str, shape: tuple, dtype: str, kind: str) -> tuple[Any, Any]:
        """Wrap a caller's ``out=``: (tvm tensor to write, function returning ``out``).

        Where the kernel cannot write ``out`` in place (unaligned CPU data, numpy or
        DLPack/torch; host numpy for a GPU kernel) it writes a staging tensor, and the
        function copies the result into ``out``.
        """
        tvm = _tvm()
        if kind == "numpy":
            self.check(name, shape, dtype, out.shape, out.dtype, out.flags.c_contiguous)
            if not out.flags.writeable:
                raise ValueError("out: the array is read-only")
            if self.cuda:
                staging = tvm.runtime.empty(shape, dtype, self._device())

                def finish_device():
                    np.copyto(out, staging.numpy())
                    return out

                return staging, finish_device
            try:
                return self._import(out), lambda: out
            except Exception:  # noqa: BLE001 (misaligned for an older kernel)
                host = out
        elif kind == "tvm":
            return self.to_tvm(out, name, shape, dtype, kind), lambda: out
        else:
            t, host = self._from_dlpack(out, name, shape, dtype)
            if host is None:
                return t, lambda: out
        # the kernel writes every output element: nothing to copy in, only the result out
        buf, t = self._staging(name, shape, dtype)

        def finish():
            np.copyto(host, buf)
            return out

        return t, finish
