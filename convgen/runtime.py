"""The runtime wrapper: load a kernel, check inputs, run it from numpy, DLPack or torch.

Needs only the TVM runtime (works with ``TVM_USE_RUNTIME_LIB=1``): nothing here imports
``tvm.s_tir``, ``tvm.topi``, ``tvm.relax``, the templates or the tuner, so a device with
just the runtime can load and run convgen kernels.

A convgen ``.so`` is an ordinary TVM shared library followed by a metadata trailer
(spec, target, template, config, versions as JSON, then its length and a magic tag).
The dynamic loader ignores bytes past the ELF sections; :func:`read_metadata` reads the
trailer with plain file I/O, so metadata is available even for a cross-compiled library
this machine cannot load.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Sequence

import numpy as np

from .spec import ConvSpec
from .target import Target, TargetError, _from_toml, all_targets, available_cpus

_MAGIC = b"\0CONVGEN-META-v1"
_ALIGN = 64  # TVM refuses DLPack tensors whose data is not 64-byte aligned

# The CPUs this process may use, read before TVM's thread pool first starts: its default
# start pins the calling thread to one core on x86, after which the mask would read {0}.
try:
    _PROCESS_MASK: list[int] = sorted(os.sched_getaffinity(0))
except AttributeError:  # not Linux
    _PROCESS_MASK = []
_threads_configured: int | None = None


class KernelError(RuntimeError):
    """A kernel cannot run here (wrong machine, missing file, broken library)."""


# ---- threads --------------------------------------------------------------------------------
def default_num_threads() -> int:
    """The CPUs this process may run on (affinity mask; VMs and containers respected).

    TVM's own default halves the logical CPUs on x86 (it assumes hyper-threads), which on a
    2-vCPU VM leaves one core idle; convgen sets the count itself.
    """
    return len(_PROCESS_MASK) or available_cpus()


def set_num_threads(n: int | None = None) -> int:
    """Size TVM's CPU thread pool to ``n`` threads (default: :func:`default_num_threads`).

    Worker ``i`` is pinned to the ``i``-th CPU of the process's affinity mask (threads that
    float share cores now and then: a 2-thread kernel measured 1.5x slower in those
    spells). The calling thread keeps the whole mask, so other libraries in the process
    (torch's OpenMP pool, say) still see every core. Returns the thread count in effect.
    """
    global _threads_configured
    n = default_num_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    if _threads_configured == n:
        return n
    import tvm

    # mode -2 = kSpecifyOneCorePerThread over the listed CPUs
    tvm.get_global_func("runtime.config_threadpool")(-2, n, [str(c) for c in _PROCESS_MASK])
    if _PROCESS_MASK:
        os.sched_setaffinity(0, _PROCESS_MASK)
    _threads_configured = n
    return n


def current_num_threads() -> int:
    """Threads TVM's pool uses now."""
    import tvm

    return int(tvm.runtime.num_threads())


# ---- metadata trailer -----------------------------------------------------------------------
def write_metadata(path: str, meta: dict[str, Any]) -> None:
    """Append convgen's metadata trailer to the library at ``path``."""
    blob = json.dumps(meta, sort_keys=True).encode()
    with open(path, "ab") as fh:
        fh.write(blob + len(blob).to_bytes(8, "little") + _MAGIC)


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata of a convgen ``.so`` (no TVM needed); ``KernelError`` if it has none."""
    if not os.path.isfile(path):
        raise KernelError(f"{path}: no such file")
    tail = len(_MAGIC) + 8
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size < tail:
            raise KernelError(f"{path}: not a convgen kernel (too small)")
        fh.seek(size - tail)
        footer = fh.read(tail)
        if footer[8:] != _MAGIC:
            raise KernelError(f"{path}: not a convgen kernel (no metadata trailer; was it built by convgen?)")
        length = int.from_bytes(footer[:8], "little")
        if length > size - tail:
            raise KernelError(f"{path}: corrupt metadata trailer")
        fh.seek(size - tail - length)
        try:
            return json.loads(fh.read(length))
        except ValueError as e:
            raise KernelError(f"{path}: corrupt metadata trailer ({e})") from None


def target_from_metadata(meta: dict[str, Any]) -> Target:
    """The target a kernel was built for (from its embedded description)."""
    desc = meta.get("target_desc")
    if desc:
        return _from_toml(desc)
    name = meta.get("target", "")
    if name in all_targets():
        return all_targets()[name]
    raise TargetError(f"kernel metadata names an unknown target {name!r}")


# ---- arrays ---------------------------------------------------------------------------------
def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous numpy array whose data is 64-byte aligned (zero-copy in)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def _describe(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__name__}"


class Kernel:
    """A compiled convolution: call it like ``y = k(x, w)`` or ``k(x, w, b, out=y)``.

    Inputs are checked (type, dtype, shape, contiguity, device) before anything runs.
    numpy in gives numpy out, torch in gives torch out (zero-copy through DLPack when the
    data is 64-byte aligned), ``tvm.runtime.Tensor`` in gives one out.
    """

    def __init__(self, meta: dict[str, Any], module: Any = None, *, path: str | None = None,
                 num_threads: int | None = None, executable: Any = None) -> None:
        self.meta = meta
        self.spec = ConvSpec.from_dict(meta["spec"])
        self.target = target_from_metadata(meta)
        self.template: str = meta.get("template", "")
        self.config: dict[str, Any] = meta.get("config", {})
        self.path = path
        self.num_threads = default_num_threads() if num_threads is None else int(num_threads)
        self._module = module
        self._executable = executable  # set when built in this process (export needs it)
        self._functions: dict[str, Any] = {}  # looked up once: a module lookup costs ~0.2 ms
        self._runs_here: bool | None = None
        self._layout = json.dumps([self.spec.key, self.template, meta.get("space_hash"), self.config], sort_keys=True)
        self._staging: dict[str, np.ndarray] = {}

    # -- properties -----------------------------------------------------------------------
    @property
    def runs_here(self) -> bool:
        """Can this machine run the kernel (same ISA and CPU features, or a CUDA GPU of the
        target's compute capability or later: see :meth:`convgen.target.Target.runs_here`)?"""
        if self._runs_here is None:
            self._runs_here = self.target.runs_here()
        return self._runs_here

    @property
    def device(self) -> Any:
        """The TVM device the kernel runs on."""
        import tvm

        return tvm.cuda(0) if self.target.family == "cuda" else tvm.cpu(0)

    @property
    def module(self) -> Any:
        """The TVM runtime module (loaded on first use)."""
        if self._module is None:
            self._require_runnable()
            import tvm

            try:
                self._module = tvm.runtime.load_module(self.path)
            except Exception as e:  # a broken or foreign library: say so, no TVM trace
                raise KernelError(f"{self.path}: TVM could not load the library: {str(e).splitlines()[-1]}") from None
        return self._module

    def _require_runnable(self) -> None:
        if not self.runs_here:
            import platform

            where = f"this {platform.machine()} machine"
            hint = f"run it on the device (convgen run {self.path or 'conv.so'} --rpc HOST:PORT)"
            if self.target.family == "cuda":
                from .cuda import device_problem

                raise KernelError(f"kernel for {self.target.name} cannot run on {where}: "
                                  f"{device_problem(self.target)}; {hint}")
            raise KernelError(
                f"kernel for {self.target.name} needs CPU features {list(self.target.cpu_flags)} "
                f"({self.target.family}); {where} cannot run it; {hint}"
            )

    @property
    def func(self) -> Any:
        """The packed function ``main(data, weight, [bias], out)``."""
        return self.function("main")

    def function(self, name: str) -> Any:
        """One of the library's entry points (``main``, ``main_prepacked``, ``pack_weights``)."""
        f = self._functions.get(name)
        if f is None:
            f = self._functions[name] = self.module[name]
        return f

    def arg_specs(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of each argument, output last."""
        s = self.spec
        args = [("data", s.input_shape, s.dtype), ("weight", s.weight_shape, s.dtype)]
        if s.bias:
            args.append(("bias", s.bias_shape, s.out_dtype))
        return args + [("out", s.output_shape, s.out_dtype)]

    # -- calling --------------------------------------------------------------------------
    def __call__(self, data: Any, weight: Any, bias: Any = None, *, out: Any = None) -> Any:
        """Run the convolution; returns ``out`` (allocated if not given) in the input's kind."""
        s = self.spec
        if s.bias and bias is None:
            raise ValueError(f"this kernel was built with bias=True: call k(data, weight, bias) with bias of shape {s.bias_shape}")
        if not s.bias and bias is not None:
            raise ValueError("this kernel was built without bias: rebuild with bias=True to pass one")
        self._require_runnable()
        if self.num_threads != _threads_configured and self.target.is_cpu:
            set_num_threads(self.num_threads)
        specs = self.arg_specs()
        func = self.func
        if isinstance(weight, PackedWeights):
            func = self._prepacked_func(weight)
            specs[1] = ("weight", tuple(weight.tensor.shape), s.dtype)
            weight = weight.tensor
        given = [data, weight] + ([bias] if s.bias else [])
        tensors = [self._to_tvm(x, *spec_) for x, spec_ in zip(given, specs)]
        kind = self._kind(data)
        name, shape, dtype = specs[-1]
        if out is None:
            out_t, finish = self._allocate(kind, shape, dtype, data)
        else:
            if self._kind(out) != kind:
                raise TypeError(f"out: expected the same kind of array as data ({_describe(data)}), got {_describe(out)}")
            out_t, finish = self._to_tvm_out(out, name, shape, dtype)
        try:
            if kind == "torch" and self.target.family == "cuda":
                import tvm_ffi

                # launch on torch's current stream, ordered with the torch work around it
                with tvm_ffi.use_torch_stream():
                    func(*tensors, out_t)
            else:
                func(*tensors, out_t)
        except Exception as e:
            raise KernelError(f"kernel {self.template} failed: {str(e).splitlines()[-1]}") from None
        return finish()

    def pack_weights(self, weight: Any) -> "PackedWeights":
        """Weights in the kernel's own layout, for calls ``k(x, packed)`` that skip the copy.

        Inference calls a layer many times with the same weights; packing once moves the
        ``K*C*R*S`` layout change out of every call. Kernels that read weights as given
        (the generic template) just hold them. Packed weights belong to this kernel's
        layout: another kernel refuses them.
        """
        self._require_runnable()
        w = self._to_tvm(weight, "weight", self.spec.weight_shape, self.spec.dtype)
        shape = self.meta.get("packed_weight_shape")
        if not shape:
            import tvm

            held = tvm.runtime.empty(self.spec.weight_shape, self.spec.dtype, self.device)
            held.copyfrom(w)
            return PackedWeights(held, self._layout)
        import tvm

        packed = tvm.runtime.empty(tuple(shape), self.spec.dtype, self.device)
        self.function("pack_weights")(w, packed)
        return PackedWeights(packed, self._layout)

    def _prepacked_func(self, packed: "PackedWeights") -> Any:
        if packed.layout != self._layout:
            raise ValueError("weight: these packed weights belong to another kernel (another spec, template "
                             "or config); pack them with this kernel's pack_weights()")
        return self.function("main_prepacked") if self.meta.get("packed_weight_shape") else self.func

    def _kind(self, x: Any) -> str:
        import tvm

        if isinstance(x, np.ndarray):
            return "numpy"
        if isinstance(x, tvm.runtime.Tensor):
            return "tvm"
        if type(x).__module__.split(".")[0] == "torch":
            return "torch"
        if hasattr(x, "__dlpack__"):
            return "dlpack"
        raise TypeError(f"expected a numpy array, a DLPack tensor (torch, ...) or a tvm Tensor, got {_describe(x)}")

    def _check(self, name: str, shape: tuple, dtype: str, got_shape: tuple, got_dtype: str, contiguous: bool) -> None:
        if got_dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {got_dtype}")
        if tuple(got_shape) != tuple(shape):
            layout = {"data": self.spec.layout, "weight": "OIHW" if self.spec.layout == "NCHW" else "HWIO",
                      "out": self.spec.layout, "bias": "K"}[name]
            raise ValueError(f"{name}: expected shape {tuple(shape)} ({layout}), got {tuple(got_shape)}")
        if not contiguous:
            raise ValueError(f"{name}: must be C-contiguous (use np.ascontiguousarray / tensor.contiguous())")

    def _check_device(self, name: str, device_type: int) -> None:
        want = 2 if self.target.family == "cuda" else 1  # kDLCUDA / kDLCPU
        # A CUDA kernel dereferences its pointers on the GPU: host tensors (torch CPU, a
        # CPU tvm Tensor) are refused; numpy arrays are copied to the GPU instead.
        if device_type != want:
            where = {1: "cpu", 2: "cuda"}.get(device_type, f"device type {device_type}")
            raise ValueError(f"{name}: the tensor lives on {where}; this {self.target.name} kernel needs "
                             f"{'a CPU' if want == 1 else 'a CUDA'} tensor")

    def _to_tvm(self, x: Any, name: str, shape: tuple, dtype: str) -> Any:
        import tvm

        kind = self._kind(x)
        if kind == "numpy":
            self._check(name, shape, dtype, x.shape, str(x.dtype), x.flags.c_contiguous)
            return self._from_numpy(x, name)
        if kind == "tvm":
            self._check(name, shape, dtype, tuple(x.shape), str(x.dtype), True)
            self._check_device(name, x.device.dlpack_device_type())
            return x
        try:
            dev_type, _ = x.__dlpack_device__()
        except Exception as e:
            raise TypeError(f"{name}: cannot read the DLPack device of {_describe(x)}: {e}") from None
        self._check_device(name, int(dev_type))
        try:
            t = tvm.runtime.from_dlpack(x)
        except Exception as e:
            msg = str(e)
            if "aligned" in msg and int(dev_type) == 1:
                arr = np.from_dlpack(x)  # a CPU view: copy to an aligned staging buffer
                self._check(name, shape, dtype, arr.shape, str(arr.dtype), arr.flags.c_contiguous)
                return self._from_numpy(arr, name)
            raise TypeError(f"{name}: {_describe(x)} cannot be passed through DLPack: {msg.splitlines()[-1]}") from None
        contiguous = t.is_contiguous() if hasattr(t, "is_contiguous") else True
        self._check(name, shape, dtype, tuple(t.shape), str(t.dtype), contiguous)
        return t

    def _from_numpy(self, x: np.ndarray, name: str) -> Any:
        import tvm

        if self.target.family == "cuda":
            return tvm.runtime.tensor(x, self.device)
        if x.ctypes.data % _ALIGN == 0:
            return tvm.runtime.from_dlpack(x)
        buf = self._staging.get(name)
        if buf is None or buf.shape != x.shape:
            buf = self._staging[name] = aligned_empty(x.shape, x.dtype)
        np.copyto(buf, x)
        return tvm.runtime.from_dlpack(buf)

    def _allocate(self, kind: str, shape: tuple, dtype: str, like: Any) -> tuple[Any, Any]:
        """A fresh output: (tvm tensor to write, function returning what the caller gets)."""
        import tvm

        if kind == "numpy" and self.target.is_cpu:
            arr = aligned_empty(shape, dtype)
            return tvm.runtime.from_dlpack(arr), lambda: arr
        if self.target.family == "cuda" and kind == "torch":
            # on the input's GPU (cuda:1 stays on cuda:1), from torch's caching allocator
            torch = sys.modules["torch"]
            arr = torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
            return tvm.runtime.from_dlpack(arr), lambda: arr
        if self.target.family == "cuda" and kind == "dlpack":
            t = tvm.runtime.empty(shape, dtype, tvm.cuda(int(like.__dlpack_device__()[1])))
            return t, lambda: t  # a tvm Tensor: itself a DLPack GPU tensor
        if self.target.family == "cuda" and kind == "tvm":
            t = tvm.runtime.empty(shape, dtype, like.device)
            return t, lambda: t
        t = tvm.runtime.empty(shape, dtype, self.device)
        if kind == "numpy":  # GPU kernel, host arrays: copy the result back
            return t, t.numpy
        if kind == "torch":
            return t, lambda: sys.modules["torch"].from_dlpack(t)
        if kind == "dlpack":
            return t, lambda: np.from_dlpack(t)
        return t, lambda: t

    def _to_tvm_out(self, out: Any, name: str, shape: tuple, dtype: str) -> tuple[Any, Any]:
        """Wrap a caller's ``out=``; unaligned numpy goes through a staging tensor."""
        import tvm

        if isinstance(out, np.ndarray):
            self._check(name, shape, dtype, out.shape, str(out.dtype), out.flags.c_contiguous)
            if not out.flags.writeable:
                raise ValueError("out: the array is read-only")
            if self.target.is_cpu and out.ctypes.data % _ALIGN == 0:
                return tvm.runtime.from_dlpack(out), lambda: out
            staging = tvm.runtime.empty(shape, dtype, self.device)

            def finish():
                np.copyto(out, staging.numpy())
                return out

            return staging, finish
        return self._to_tvm(out, name, shape, dtype), lambda: out

    # -- measuring, exporting -------------------------------------------------------------
    def benchmark(self, *, number: int = 10, repeat: int = 5, min_repeat_ms: int = 100,
                  cache_flush_bytes: int = 0, seed: int = 0) -> list[float]:
        """Seconds per call, one entry per repeat, measured by TVM's ``time_evaluator``.

        Kernels that keep their own weight layout are timed as deployed: weights packed
        once (:meth:`pack_weights`), then ``main_prepacked``.
        """
        from .reference import random_inputs

        self._require_runnable()
        if self.target.is_cpu:
            set_num_threads(self.num_threads)
        dev = self.device
        import tvm

        arrays = random_inputs(self.spec, seed)
        args = [tvm.runtime.tensor(a, dev) for a in arrays]
        name = "main"
        if self.meta.get("packed_weight_shape"):
            args[1], name = self.pack_weights(arrays[1]).tensor, "main_prepacked"
        args.append(tvm.runtime.empty(self.spec.output_shape, self.spec.out_dtype, dev))
        ev = self.module.time_evaluator(name, dev, number=number, repeat=repeat,
                                        min_repeat_ms=min_repeat_ms, cache_flush_bytes=cache_flush_bytes)
        return [float(t) for t in ev(*args).results]

    def export(self, path: str) -> str:
        """Write the shared library with its metadata to ``path``; returns ``path``."""
        if self._executable is not None:
            from .builder import export_library

            export_library(self._executable, self.target, path)
            write_metadata(path, self.meta)
        elif self.path and os.path.abspath(self.path) != os.path.abspath(path):
            shutil.copyfile(self.path, path)
        elif not self.path:
            raise KernelError("nothing to export: the kernel has neither a build nor a file")
        return path

    def __repr__(self) -> str:
        return f"<convgen.Kernel {self.spec.describe()} on {self.target.name} via {self.template} {self.config}>"


class PackedWeights:
    """Weights already in a kernel's layout (from :meth:`Kernel.pack_weights`)."""

    __slots__ = ("tensor", "layout")

    def __init__(self, tensor: Any, layout: str) -> None:
        self.tensor = tensor
        self.layout = layout

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.tensor.shape)

    def __repr__(self) -> str:
        return f"<convgen.PackedWeights {self.shape}>"


def load(path: str, *, num_threads: int | None = None) -> Kernel:
    """Load a kernel written by :meth:`Kernel.export` (or ``convgen build``).

    Works with the TVM runtime alone. A kernel built for another machine (aarch64, a GPU)
    loads for inspection; calling it says where it can run.
    """
    meta = read_metadata(path)
    if meta.get("format") != 1:
        raise KernelError(f"{path}: unsupported convgen metadata format {meta.get('format')!r}")
    kernel = Kernel(meta, path=path, num_threads=num_threads)
    if kernel.runs_here:
        if kernel.target.is_cpu:
            set_num_threads(kernel.num_threads)
        kernel.module  # load now so a broken file fails here, not at the first call
    return kernel
