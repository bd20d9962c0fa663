"""The runtime wrapper: load a kernel, check inputs, run it from numpy, DLPack or torch.

Needs only the TVM runtime (works with ``TVM_USE_RUNTIME_LIB=1``): nothing here imports
``tvm.s_tir``, ``tvm.topi``, ``tvm.relax``, the templates or the tuner, so a device with
just the runtime can load and run convgen kernels.

A convgen ``.so`` is an ordinary TVM shared library followed by a metadata trailer
(spec, target, template, config, versions, the library's SHA-256, as JSON, then its length
and a magic tag). The dynamic loader ignores bytes past the ELF sections; :func:`read_metadata`
reads the trailer with plain file I/O, so metadata is available even for a cross-compiled
library this machine cannot load.

Before anything is loaded, :func:`load` checks what a file claims: the metadata is a
well-formed record of this format, the library bytes hash to the SHA-256 it carries (a
truncated or corrupted file is refused before ``dlopen``, never a signal), it was built by
a compatible TVM and tvm-ffi, and, when the caller pins one (``load(path, sha256=...)``),
the whole file hashes to the value the deployment vetted. The verified bytes are loaded
from a private copy, so the file cannot change between the check and the load. The
embedded hash catches accidents (a partial copy, a bad disk, an edited file); it is no
signature: whoever can write a library can write its trailer too. Pinning the file's hash
is what guards against a swapped library.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import threading
from typing import Any


from .arrays import ALIGN, ArgumentIO, describe, kind_of, refuse_overlap
from .arrays import aligned_empty  # noqa: F401 - re-exported as convgen.aligned_empty
from .errors import KernelError, KernelNotFoundError, NotAKernelError
from .lazy import tvm as _tvm
from .lazy import tvm_ffi as _tvm_ffi
from .spec import ConvSpec
from .target import Target, TargetError, all_targets, available_cpus
from .version import minor_version

_MAGIC = b"\0CONVGEN-META-v1"
FORMAT = 2  # 2: the metadata carries the library's SHA-256 (1, before: no hash; refused)

# The CPUs this process may use, read before TVM's thread pool first starts: its default
# start pins the calling thread to one core on x86, after which the mask would read {0}.
try:
    _PROCESS_MASK: list[int] = sorted(os.sched_getaffinity(0))
except AttributeError:  # not Linux
    _PROCESS_MASK = []
# TVM keeps one CPU thread pool per calling thread (ThreadPool::ThreadLocal), so the thread
# count configured is tracked per Python thread too.
_thread_state = threading.local()
# Libraries loaded so far, by the SHA-256 of their bytes (verified before the load). TVM never
# unloads a library, and each load maps a private copy: a service that loaded one kernel file
# again and again mapped it again and again (~37 KB each, never given back). One load per
# distinct content, shared by every Kernel of it: the functions hold no state.
_LIBRARIES: dict[str, Any] = {}
_LIBRARIES_LOCK = threading.Lock()


# ---- fork -----------------------------------------------------------------------------------
# TVM's thread pool does not survive fork: the child inherits the pool's bookkeeping but not
# its worker threads, so the first parallel kernel the forking thread runs waits forever for
# workers that do not exist (multiprocessing's default start method on Linux is fork). The
# pool cannot be reset either (ThreadPool::Reset joins the vanished threads and hangs, and
# re-configuring it sets the affinity of the parent's thread ids). So in the child the thread
# that forked runs its kernels on itself: TVM launches serially when its concurrency is 1
# (TVMBackendParallelLaunch), which SetMaxConcurrency sets for the calling thread alone. Other
# threads the child starts get pools of their own, at full width.
_SET_MAX_CONCURRENCY = "_ZN3tvm7runtime9threading17SetMaxConcurrencyEi"  # tvm::runtime::threading::SetMaxConcurrency(int)


def _after_fork_in_child() -> None:
    if getattr(_thread_state, "num_threads", None) is None:
        return  # this thread never started a pool: nothing stale to avoid
    _thread_state.forked = True
    _thread_state.num_threads = 1
    try:
        import ctypes

        setter = getattr(_tvm().base._LOADED_LIBS["tvm_runtime"], _SET_MAX_CONCURRENCY)
        setter.argtypes = [ctypes.c_int]
        setter(1)
    except Exception:  # noqa: BLE001 - another TVM build without the symbol: refuse instead
        _thread_state.unusable = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- threads --------------------------------------------------------------------------------
def default_num_threads() -> int:
    """The CPUs this process may run on (affinity mask; VMs and containers respected).

    TVM's own default halves the logical CPUs on x86 (it assumes hyper-threads), which on a
    2-vCPU VM leaves one core idle; convgen sets the count itself.
    """
    return len(_PROCESS_MASK) or available_cpus()


def _clamp_threads(n: int) -> int:
    """``n`` capped at the CPUs this process may use (TVM starts no more workers than that)."""
    return min(int(n), default_num_threads())


def set_num_threads(n: int | None = None) -> int:
    """Size the calling thread's TVM CPU thread pool to ``n`` threads (default:
    :func:`default_num_threads`). Returns the thread count in effect.

    ``n`` is clamped to the CPUs this process may use (:func:`default_num_threads`): TVM
    never starts more workers than the affinity mask holds, so asking for more gets that
    many, and the count returned (as :attr:`Kernel.num_threads` and ``convgen run``
    report it) is the real one.

    Worker ``i`` is pinned to the ``i``-th CPU of the process's affinity mask (threads that
    float share cores now and then: a 2-thread kernel measured 1.5x slower in those
    spells). The calling thread keeps the whole mask, so other libraries in the process
    (torch's OpenMP pool, say) still see every core.

    TVM keeps one pool per calling thread: this configures the caller's. A kernel called
    from another Python thread configures that thread's pool on its first call. In a child
    forked after this thread ran kernels, the thread that forked runs them on one thread
    (TVM's pool does not survive fork); threads the child starts, and children started
    with ``spawn`` or ``forkserver``, get the full count.
    """
    n = default_num_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    if getattr(_thread_state, "forked", False):
        if getattr(_thread_state, "unusable", False):
            raise KernelError("this process was forked after its parent ran convgen kernels on this thread, and "
                              "this TVM cannot run them here; start child processes with the 'spawn' or "
                              "'forkserver' method (multiprocessing.get_context('spawn'))")
        return 1  # the inherited pool is stale (see _after_fork_in_child): this thread runs kernels alone
    n = _clamp_threads(n)
    if getattr(_thread_state, "num_threads", None) == n:
        return n
    # mode -2 = kSpecifyOneCorePerThread over the listed CPUs
    _tvm().get_global_func("runtime.config_threadpool")(-2, n, [str(c) for c in _PROCESS_MASK])
    if _PROCESS_MASK:
        os.sched_setaffinity(0, _PROCESS_MASK)
    _thread_state.num_threads = n
    return n


def current_num_threads() -> int:
    """Threads the calling thread's TVM pool uses now."""
    return int(_tvm().runtime.num_threads())


# ---- metadata trailer -----------------------------------------------------------------------
def write_metadata(path: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Append convgen's metadata trailer to the library at ``path``, with the library's
    SHA-256 added; returns the metadata as written."""
    meta = dict(meta, format=FORMAT, sha256=file_sha256(path))
    blob = json.dumps(meta, sort_keys=True).encode()
    with open(path, "ab") as fh:
        fh.write(blob + len(blob).to_bytes(8, "little") + _MAGIC)
    return meta


def file_sha256(path: str) -> str:
    """SHA-256 of the whole file (what ``sha256sum`` prints): the value to pin in
    ``load(path, sha256=...)``; ``convgen info`` and ``convgen run`` print it."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_kernel_file(path: str) -> tuple[bytes, bytes, dict[str, Any]]:
    """``(file bytes, library bytes, metadata)`` of a kernel file, the metadata checked (see
    :func:`check_metadata`) and the library checked against its SHA-256."""
    if not os.path.exists(path):
        raise KernelNotFoundError(errno.ENOENT, "no such file", path)
    if not os.path.isfile(path):
        raise NotAKernelError(f"{path}: not a file")
    with open(path, "rb") as fh:
        data = fh.read()
    tail = len(_MAGIC) + 8
    if len(data) < tail or data[-len(_MAGIC):] != _MAGIC:
        raise NotAKernelError(f"{path}: not a convgen kernel (no metadata trailer; was it built by convgen?)")
    length = int.from_bytes(data[-tail:-len(_MAGIC)], "little")
    if length > len(data) - tail:
        raise NotAKernelError(f"{path}: corrupt metadata trailer (its length points before the file)")
    library = data[: len(data) - tail - length]
    try:
        meta = json.loads(data[len(data) - tail - length : len(data) - tail])
    except RecursionError:
        raise NotAKernelError(f"{path}: corrupt metadata (nested too deeply)") from None
    except ValueError as e:
        raise NotAKernelError(f"{path}: corrupt metadata trailer ({e})") from None
    check_metadata(meta, path)
    if hashlib.sha256(library).hexdigest() != meta["sha256"]:
        raise NotAKernelError(f"{path}: the library does not match the SHA-256 in its metadata: it was truncated, "
                              "corrupted or modified after it was built; rebuild it")
    return data, library, meta


def _read_pinned(path: str, pin: str | None) -> tuple[bytes, bytes, dict[str, Any]]:
    """:func:`_read_kernel_file`, and the whole file checked against ``pin`` when given."""
    data, library, meta = _read_kernel_file(path)
    if pin is not None:
        whole = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(whole, pin.lower()):
            raise KernelError(f"{path}: SHA-256 {whole} is not the pinned {pin}: refusing to load it")
    return data, library, meta


def read_metadata(path: str, *, sha256: str | None = None) -> dict[str, Any]:
    """The metadata of a convgen ``.so`` (no TVM needed), checked as :func:`load` checks it:
    ``KernelNotFoundError`` for a missing file, ``NotAKernelError`` for anything else wrong,
    ``KernelError`` when the whole file does not hash to ``sha256`` (a pin)."""
    return _read_pinned(path, sha256)[2]


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "spec": dict, "target": str, "template": str, "config": dict, "sha256": str, "tvm": str, "tvm_ffi": str,
}


def check_metadata(meta: Any, path: str = "kernel") -> None:
    """Raise :class:`NotAKernelError` unless ``meta`` is metadata of this format whose fields
    have the types the runtime reads (a spec that validates, a target description, ...)."""
    def bad(why: str) -> NotAKernelError:
        return NotAKernelError(f"{path}: corrupt metadata ({why})")

    if not isinstance(meta, dict):
        raise bad(f"a {type(meta).__name__}, not a JSON object")
    if meta.get("format") == 1:
        raise NotAKernelError(f"{path}: built by an older convgen (metadata format 1, no content hash to check "
                              "it against): rebuild it")
    if meta.get("format") != FORMAT:
        raise NotAKernelError(f"{path}: unsupported convgen metadata format {meta.get('format')!r} "
                              f"(this convgen reads {FORMAT})")
    for key, kind in _FIELDS.items():
        if not isinstance(meta.get(key), kind):
            raise bad(f"{key!r} missing or not a {kind.__name__}")
    if len(meta["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in meta["sha256"]):
        raise bad("'sha256' is not a SHA-256 hex digest")
    try:
        ConvSpec.from_dict(meta["spec"])
    except (ValueError, TypeError) as e:
        raise bad(f"'spec': {e}") from None
    if "target_desc" in meta:
        if not isinstance(meta["target_desc"], dict):
            raise bad("'target_desc' is not a table")
        try:
            Target.from_dict(meta["target_desc"])
        except (ValueError, TypeError) as e:
            raise bad(f"'target_desc': {e}") from None
    elif meta["target"] not in all_targets():
        raise bad(f"no 'target_desc' and the target {meta['target']!r} is unknown")
    packed = meta.get("packed_weight_shape")
    if packed is not None and not (isinstance(packed, list) and packed
                                   and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in packed)):
        raise bad("'packed_weight_shape' is not a list of positive ints")
    align = meta.get("arg_alignment", ALIGN)
    if not isinstance(align, int) or isinstance(align, bool) or align < 1:
        raise bad("'arg_alignment' is not a positive int")


def check_versions(meta: dict[str, Any], path: str = "kernel") -> None:
    """Raise :class:`KernelError` unless the kernel was built by the TVM and tvm-ffi minor
    versions of this runtime (their library ABI and packed-function calling convention)."""
    here = {"tvm": _tvm().__version__, "tvm_ffi": getattr(_tvm_ffi(), "__version__", "unknown")}
    for key, name in (("tvm", "TVM"), ("tvm_ffi", "tvm-ffi")):
        if minor_version(meta[key]) != minor_version(here[key]):
            raise KernelError(f"{path}: built with {name} {meta[key]}, but this runtime is {name} {here[key]}: "
                              f"rebuild the kernel with {name} {'.'.join(here[key].split('.')[:2])}")


def target_from_metadata(meta: dict[str, Any]) -> Target:
    """The target a kernel was built for (from its embedded description)."""
    desc = meta.get("target_desc")
    if desc:
        return Target.from_dict(desc)
    name = meta.get("target", "")
    if name in all_targets():
        return all_targets()[name]
    raise TargetError(f"kernel metadata names an unknown target {name!r}")


def _dlopen_copy(library: bytes, path: str | None) -> Any:
    """Load verified library bytes through a private copy (mode 0700 folder: nobody else can
    swap it between the write and the load); the mapping outlives the deleted file."""
    folder = tempfile.mkdtemp(prefix="convgen-load-")
    copy = os.path.join(folder, os.path.basename(path or "") or "kernel.so")
    try:
        with open(copy, "wb") as fh:
            fh.write(library)
        return _tvm().runtime.load_module(copy)
    except Exception as e:  # a library the loader or TVM refuses: say so, no TVM trace
        raise KernelError(f"{path}: TVM could not load the library: {str(e).splitlines()[-1]}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Kernel:
    """A compiled convolution: call it like ``y = k(x, w)`` or ``k(x, w, b, out=y)``.

    Inputs are checked (type, dtype, shape, contiguity, device) before anything runs.
    numpy in gives numpy out, torch in gives torch out (zero-copy through DLPack when the
    data is 64-byte aligned), ``tvm.runtime.Tensor`` in gives one out.

    Attributes: ``meta`` (the metadata dict), ``spec`` (:class:`~convgen.spec.ConvSpec`),
    ``target`` (:class:`~convgen.target.Target`), ``template`` and ``config`` (the schedule
    it was built with), ``path`` (the library file, if loaded from one) and ``num_threads``
    (the CPU threads it runs with: ``num_threads`` as given, default
    :func:`default_num_threads`, capped at the CPUs this process may use).
    """

    def __init__(self, meta: dict[str, Any], module: Any = None, *, path: str | None = None,
                 num_threads: int | None = None, exporter: Any = None, sha256: str | None = None) -> None:
        self.meta = meta
        self.spec = ConvSpec.from_dict(meta["spec"])
        self.target = target_from_metadata(meta)
        self.template: str = meta.get("template", "")
        self.config: dict[str, Any] = meta.get("config", {})
        self.path = path
        self.num_threads = default_num_threads() if num_threads is None else _clamp_threads(num_threads)
        self._module = module
        # writes the library to a path (set by the builder for a kernel built in this
        # process): the runtime itself never needs the compiler to export one
        self._exporter = exporter
        self._pin = sha256
        self._functions: dict[str, Any] = {}  # looked up once: a module lookup costs ~0.2 ms
        self._runs_here: bool | None = None
        self._device: Any = None
        self._layout = json.dumps([self.spec.key, self.template, meta.get("space_hash"), self.config], sort_keys=True)
        # fixed per kernel, so computed once rather than on every call
        s = self.spec
        self._is_cuda = self.target.family == "cuda"
        self._is_cpu = self.target.is_cpu
        packed = meta.get("packed_weight_shape")
        self._packed_shape: tuple[int, ...] | None = tuple(int(d) for d in packed) if packed else None
        specs = [("data", tuple(s.input_shape), s.dtype), ("weight", tuple(s.weight_shape), s.filter_dtype)]
        specs += [(name, tuple(shape), dtype) for name, shape, dtype in s.extra_inputs()]
        self._arg_specs: tuple[tuple[str, tuple[int, ...], str], ...] = tuple(
            specs + [("out", tuple(s.output_shape), s.out_dtype)])
        # the data alignment the kernel's arguments declare: kernels built by this convgen
        # read any element-aligned array in place; older ones (64) need a staging copy
        self._io = ArgumentIO(s, self.target.name, cuda=self._is_cuda,
                              arg_align=int(meta.get("arg_alignment", ALIGN)), device=lambda: self.device)

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
        if self._device is None:
            tvm = _tvm()
            self._device = tvm.cuda(0) if self._is_cuda else tvm.cpu(0)
        return self._device

    @property
    def module(self) -> Any:
        """The TVM runtime module (loaded on first use, after the checks of :func:`load`)."""
        if self._module is None:
            self._require_runnable()
            self._module = self._load_verified()
        return self._module

    def _load_verified(self, verified: tuple[bytes, dict[str, Any]] | None = None) -> Any:
        """dlopen the file's library once its bytes are verified: from a private copy of
        exactly the verified bytes, so the file cannot change between check and load.
        ``verified``: ``(library, metadata)`` as :func:`_read_pinned` just returned them (by
        :func:`load`), so the file is not read and hashed twice."""
        library, meta = verified or _read_pinned(self.path, self._pin)[1:]
        check_versions(meta, self.path)
        with _LIBRARIES_LOCK:  # the same content is loaded once per process (see _LIBRARIES)
            module = _LIBRARIES.get(meta["sha256"])
            if module is None:
                module = _LIBRARIES[meta["sha256"]] = _dlopen_copy(library, self.path)
        needed = ["main"] + (["main_prepacked", "pack_weights"] if self._packed_shape else [])
        missing = [n for n in needed if not module.implements_function(n, True)]
        if missing:
            raise NotAKernelError(f"{self.path}: the library has no {', '.join(missing)} entry point "
                                  f"({'it does not match its metadata' if 'main' not in missing else 'not a convgen kernel'})")
        return module

    def _require_runnable(self) -> None:
        if not self.runs_here:
            import platform

            where = f"this {platform.machine()} machine"
            hint = f"run it on the device (convgen run {self.path or 'conv.so'} --rpc HOST:PORT)"
            if self._is_cuda:
                from .cuda.device import device_problem

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
        """(name, shape, dtype) of each argument, output last (a fresh list)."""
        return list(self._arg_specs)

    # -- calling --------------------------------------------------------------------------
    def __call__(self, data: Any, weight: Any, *extras: Any, scale: Any = None, bias: Any = None,
                 residual: Any = None, residual_scale: Any = None, out: Any = None) -> Any:
        """Run the convolution; returns ``out`` (allocated if not given) in the input's kind.

        The spec's extra inputs (``spec.extra_inputs()``: ``scale`` of a scaled 8-bit spec,
        ``bias``, ``residual_scale`` of a scaled residual, ``residual``) follow, positionally in
        argument order (``k(x, w, b)``, ``k(x, w, r)``, ``k(x, w, b, r)``, as
        :func:`convgen.reference.random_inputs` returns them) or by keyword (``bias=``, ...). ``out`` must not overlap an input: the kernel
        reads its inputs while it writes, so an aliased output would be read half-written.
        """
        specs = self._arg_specs
        wanted = [name for name, _, _ in specs[2:-1]]  # the extra inputs, in argument order
        given = {"scale": scale, "bias": bias, "residual": residual, "residual_scale": residual_scale}
        if len(extras) > len(wanted):
            missing = [n for n in ("bias", "residual") if n not in wanted]
            hint = f" (rebuild with {missing[0]}=True to pass one)" if missing else ""
            raise ValueError(f"this kernel was built without {' and '.join(missing) or 'more inputs'}: it takes "
                             f"data, weight{''.join(', ' + n for n in wanted)}, got {2 + len(extras)} inputs{hint}")
        for name, value in zip(wanted, extras):
            if given[name] is not None:
                raise TypeError(f"{name} given both by position and by keyword")
            given[name] = value
        shapes = {name: shape for name, shape, _ in specs[2:-1]}
        for name in given:
            if name in wanted and given[name] is None:
                how = {"scale": "is scaled", "residual_scale": "scales its residual"}.get(
                    name, f"was built with {name}=True")
                raise ValueError(f"this kernel {how}: pass {name} of shape {shapes[name]}")
            if given[name] is not None and name not in wanted:
                how = {"scale": "takes no scale (only 8-bit data with a float32 or 8-bit output does)",
                       "residual_scale": "takes no residual_scale (only a spec with residual_dtype does)"}.get(
                    name, f"was built without {name}: rebuild with {name}=True to pass one")
                raise ValueError(f"this kernel {how}")
        if self._runs_here is not True:
            self._require_runnable()
        if self._is_cpu and self.num_threads != getattr(_thread_state, "num_threads", None):
            set_num_threads(self.num_threads)
        func = self._functions.get("main")
        if func is None:
            func = self.function("main")
        io = self._io
        kind = kind_of(data)
        if isinstance(weight, PackedWeights):
            # made by pack_weights of a kernel with this very layout (checked): shape, dtype
            # and device are right by construction, no per-call checks
            func = self._prepacked_func(weight)
            w_t = weight.tensor
        else:
            w_t = io.to_tvm(weight, *specs[1])
        tensors = [io.to_tvm(data, *specs[0], kind=kind), w_t]
        for i, name in enumerate(wanted, start=2):
            tensors.append(io.to_tvm(given[name], *specs[i]))
        name, shape, dtype = specs[-1]
        if out is None:
            out_t, finish = io.allocate(kind, shape, dtype, data)
        else:
            if kind_of(out) != kind:
                raise TypeError(f"out: expected the same kind of array as data ({describe(data)}), got {describe(out)}")
            out_t, finish = io.to_tvm_out(out, name, shape, dtype, kind)
            refuse_overlap(out_t, tensors, specs)
        try:
            if kind == "torch" and self._is_cuda:
                # launch on torch's current stream, ordered with the torch work around it
                with _tvm_ffi().use_torch_stream():
                    func(*tensors, out_t)
            else:
                func(*tensors, out_t)
        except Exception as e:
            raise KernelError(f"kernel {self.template} failed: {str(e).splitlines()[-1]}") from None
        return finish()

    def launcher(self, prepacked: bool = True) -> Any:
        """The kernel's entry point, bare, for a caller that checks its arguments itself.

        ``launch(data, weight, [scale], [bias], [residual], out)`` takes DLPack tensors (torch, numpy)
        or tvm Tensors exactly as the kernel's arguments: the spec's shapes (in its layout) and
        dtypes, on the kernel's device, C-contiguous, ``out`` not overlapping an input, and
        with ``prepacked`` the weights as :meth:`pack_weights` returns them
        (``packed.tensor``). Nothing of that is checked: a wrong argument is undefined
        behaviour. What a framework integration calls per layer, once it has checked a
        layer's arguments (``convgen.torch`` does, per input shape): ~2 us where a checked
        call costs 12-17 (torch tensors, 4 arguments, a Xeon with torch 2.13). It configures the calling thread's pool as every call does, and a
        failure raises :class:`KernelError`.
        """
        self._require_runnable()
        func = self.function("main_prepacked" if prepacked and self._packed_shape else "main")
        threads, cpu, name = self.num_threads, self._is_cpu, self.template

        def launch(*args: Any) -> None:
            if cpu and getattr(_thread_state, "num_threads", None) != threads:
                set_num_threads(threads)
            try:
                func(*args)
            except Exception as e:
                raise KernelError(f"kernel {name} failed: {str(e).splitlines()[-1]}") from None

        launch.func, launch.threads, launch.cpu, launch.template = func, threads, cpu, name  # for Launches
        return launch

    def pack_weights(self, weight: Any) -> "PackedWeights":
        """Weights in the kernel's own layout, for calls ``k(x, packed)`` that skip the copy.

        Inference calls a layer many times with the same weights; packing once moves the
        ``K*C*R*S`` layout change out of every call. Kernels that read weights as given
        (the generic template) just hold them. Packed weights belong to this kernel's
        layout: another kernel refuses them.
        """
        self._require_runnable()
        tvm = _tvm()
        w = self._io.to_tvm(weight, "weight", self.spec.weight_shape, self.spec.filter_dtype)
        if not self._packed_shape:
            held = tvm.runtime.empty(self.spec.weight_shape, self.spec.filter_dtype, self.device)
            held.copyfrom(w)
            return PackedWeights(held, self._layout)
        packed = tvm.runtime.empty(self._packed_shape, self.spec.filter_dtype, self.device)
        self.function("pack_weights")(w, packed)
        return PackedWeights(packed, self._layout)

    def _prepacked_func(self, packed: "PackedWeights") -> Any:
        if packed.layout != self._layout:
            raise ValueError("weight: these packed weights belong to another kernel (another spec, template "
                             "or config); pack them with this kernel's pack_weights()")
        return self.function("main_prepacked") if self._packed_shape else self.func

    # -- measuring, exporting -------------------------------------------------------------
    def benchmark(self, *, number: int = 10, repeat: int = 5, min_repeat_ms: int = 100,
                  cache_flush_bytes: int = 0, flush_args: bool = False, seed: int = 0) -> list[float]:
        """Seconds per call, one entry per repeat, measured by TVM's ``time_evaluator``
        (:func:`convgen.timing.measure_kernel`, as ``convgen run`` and the tuner measure).

        Kernels that keep their own weight layout are timed as deployed: weights packed
        once (the library's ``pack_weights``), then ``main_prepacked``. ``flush_args``
        evicts every argument but the input before each call (the tuner's default on CPUs:
        weights from memory, as inside a network; use ``number=1``, or every call after the
        first in a repeat finds them hot).
        """
        return self.measure(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                            cache_flush_bytes=cache_flush_bytes, flush_args=flush_args, seed=seed,
                            check=False).times

    def measure(self, *, check: bool = True, **timing: Any) -> Any:
        """Time the kernel here and (``check``) compare every entry point with the numpy
        reference: a :class:`convgen.timing.KernelRun` (``times``, ``max_error``, ...);
        ``timing``: the arguments of :func:`convgen.timing.measure_kernel`."""
        from .timing import ALWAYS, NEVER, measure_kernel

        self._require_runnable()
        if self._is_cpu:
            set_num_threads(self.num_threads)
        return measure_kernel(self.module, self.spec, self.device, packed_shape=self._packed_shape,
                              check=ALWAYS if check else NEVER, error_bound=self.meta.get("error_bound"), **timing)

    def export(self, path: str) -> str:
        """Write the shared library with its metadata to ``path``; returns ``path``."""
        if self._exporter is not None:
            self._exporter(path)
            write_metadata(path, self.meta)
        elif self.path and os.path.abspath(self.path) != os.path.abspath(path):
            shutil.copyfile(self.path, path)
        elif not self.path:
            raise KernelError("nothing to export: the kernel has neither a build nor a file")
        return path

    def __repr__(self) -> str:
        return f"<convgen.Kernel {self.spec.describe()} on {self.target.name} via {self.template} {self.config}>"


class PackedWeights:
    """Weights already in a kernel's layout (from :meth:`Kernel.pack_weights`).

    ``tensor`` is the tvm Tensor holding them (on the kernel's device); ``layout`` names
    the kernel layout they belong to (spec, template, config), so another kernel can
    refuse them.
    """

    __slots__ = ("tensor", "layout")

    def __init__(self, tensor: Any, layout: str) -> None:
        self.tensor = tensor
        self.layout = layout

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the packed tensor (the kernel's weight layout, not always ``K, C, R, S``)."""
        return tuple(int(x) for x in self.tensor.shape)

    def __repr__(self) -> str:
        return f"<convgen.PackedWeights {self.shape}>"


class Launches:
    """Kernel launches with fixed arguments, run back to back by one call: what a framework
    integration replays when a whole run of layers reads and writes the same buffers every
    time (``convgen.torch``'s layer chains).

    ``calls`` are ``(launch, args)`` pairs, ``launch`` from :meth:`Kernel.launcher`, ``args``
    as it takes them (checked by the caller once, as for ``launch``; the tensors must stay
    where they are while this object lives). Each argument is wrapped as a tvm Tensor once,
    here, and the pool is configured once per run where every kernel asks for the same
    threads: a launch then costs the kernel's entry call alone. A failure raises
    :class:`KernelError` naming the kernel.
    """

    __slots__ = ("_calls", "_threads", "_names")

    def __init__(self, calls: list[tuple[Any, tuple]]) -> None:
        tvm = _tvm()
        wrap = (lambda a: a if isinstance(a, tvm.runtime.Tensor) else tvm.runtime.from_dlpack(a))  # noqa: E731
        self._calls = [(launch.func, tuple(wrap(a) for a in args)) for launch, args in calls]
        self._names = [launch.template for launch, _ in calls]
        threads = {launch.threads for launch, _ in calls if launch.cpu}
        self._threads = next(iter(threads)) if len(threads) == 1 else None
        if len(threads) > 1:  # kernels built for different pools: each launch sets its own
            self._calls = [(launch, args) for (_, args), (launch, _) in zip(self._calls, calls)]

    def __len__(self) -> int:
        return len(self._calls)

    def __call__(self) -> None:
        if self._threads is not None and getattr(_thread_state, "num_threads", None) != self._threads:
            set_num_threads(self._threads)
        i = 0
        try:
            for i, (func, args) in enumerate(self._calls):
                func(*args)
        except KernelError:
            raise
        except Exception as e:
            raise KernelError(f"kernel {self._names[i]} failed: {str(e).splitlines()[-1]}") from None


def load(path: str, *, num_threads: int | None = None, sha256: str | None = None) -> Kernel:
    """Load a kernel written by :meth:`Kernel.export` (or ``convgen build``).

    Works with the TVM runtime alone. A kernel built for another machine (aarch64, a GPU)
    loads for inspection; calling it says where it can run. Before the library is loaded:
    its metadata is checked, its bytes against the SHA-256 the metadata carries, its TVM and
    tvm-ffi versions against this runtime's, and, given ``sha256`` (the whole file's, as
    ``sha256sum`` or ``convgen info`` print it), the file against that pin. A missing file
    raises :class:`KernelNotFoundError` (a ``FileNotFoundError``), a file that is not an
    intact kernel :class:`NotAKernelError` (a ``ValueError``), both :class:`KernelError`.
    """
    if sha256 is not None and not (isinstance(sha256, str) and len(sha256) == 64):
        raise ValueError(f"sha256: expected a 64-digit hex SHA-256, got {sha256!r}")
    _, library, meta = _read_pinned(path, sha256)  # a wrong pin is refused even for a foreign kernel
    kernel = Kernel(meta, path=path, num_threads=num_threads, sha256=sha256)
    if kernel.runs_here:
        if kernel.target.is_cpu:
            set_num_threads(kernel.num_threads)
        # load now, from the bytes just checked, so a broken file fails here, not at the first call
        kernel._module = kernel._load_verified((library, meta))
    return kernel
