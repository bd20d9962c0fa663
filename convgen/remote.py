"""Running kernels on remote devices through TVM RPC (a board, a GPU server, a fleet).

``connect`` reaches a device directly (``HOST:PORT`` of a ``tvm.exec.rpc_server``) or
through a TVM RPC tracker with a device key, so one campaign can use a pool of boards.
Everything here is TVM's own RPC (``tvm.rpc``): upload, load, ``time_evaluator`` remotely.

:func:`convgen.timing.measure_kernel` (inputs, packed weights, timing, check vs the
reference) works on any device, local or remote: ``convgen run``, :meth:`Kernel.benchmark
<convgen.runtime.Kernel.benchmark>` and the tuner's local and RPC workers all measure
through it.
"""

from __future__ import annotations

import math
import os
from typing import Any


from .errors import DeviceUnavailable, RemoteError, RemoteTimeout, last_line  # noqa: F401 (re-exported)
from .runtime import KernelError, target_from_metadata
from .spec import ConvSpec
from .timing import ALWAYS, NEVER, measure_kernel



def session_seconds(timeout: float) -> int:
    """The RPC session timeout for a run timeout: whole seconds (TVM's unit), at least 1 (0
    would mean no timeout at all)."""
    return max(1, math.ceil(timeout))


# What a client sees when the device's session process died under it: the emulated board
# (scripts/arm_rpc_server.py) names the signal; a stock TVM server just drops the connection.
_SIGILL_WORDS = ("SIGILL", "illegal instruction")
_LOST_WORDS = ("socket closed", "connection reset", "connection closed", "broken pipe", "end of file",
               "rpcsessiontimeouterror", "was killed by", "session process")


def explain_failure(e: BaseException, target: Any = None) -> str:
    """One line saying why a kernel failed on the device, with the likely ISA cause.

    A SIGILL means the kernel uses an instruction the device's CPU lacks: the kernel was
    built for a target whose ISA extensions (``mattr``) the board does not have.
    """
    last = last_line(e)
    text = str(e)
    built = ""
    if target is not None:
        mattr = ",".join(target.tvm.get("mattr", [])) or "-"
        built = (f" It was built for {target.name} (mcpu {target.tvm.get('mcpu', '-')}, mattr {mattr}), which needs "
                 f"the CPU features {', '.join(target.cpu_flags) or '-'} (/proc/cpuinfo on the board);")
    if any(w.lower() in text.lower() for w in _SIGILL_WORDS):
        return (f"the kernel crashed on the device with an illegal instruction (SIGILL): it uses an "
                f"instruction set extension the device's CPU lacks.{built} build it for a target the "
                f"device supports (convgen targets). Device said: {last}")
    if any(w in text.lower() for w in _LOST_WORDS):
        return (f"the device's RPC session died while running the kernel (a crash: SIGILL from a missing "
                f"ISA extension, or SIGSEGV).{built} check the server's log. Device said: {last}")
    return f"the kernel failed on the device: {last}"


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` -> ``("host", port)`` with a clear error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def connect(rpc: str | None = None, tracker: str | None = None, key: str | None = None,
            *, timeout: float = 600, queue_timeout: float | None = None) -> Any:
    """An RPC session: directly to ``rpc`` (HOST:PORT) or from ``tracker`` for device ``key``.

    ``timeout``: the session's (the server ends it after that many seconds, rounded up, at
    least 1); ``queue_timeout``: how long to wait at the tracker for a free device (``None``:
    as long as it takes). Raises :class:`DeviceUnavailable` when the device (or tracker)
    cannot be reached, or no device is granted in time.
    """
    from tvm import rpc as tvm_rpc

    try:
        if rpc:
            host, port = parse_address(rpc, "--rpc")
            return tvm_rpc.connect(host, port, session_timeout=session_seconds(timeout))
        if tracker:
            if not key:
                raise ValueError("a tracker needs a device key (--key)")
            host, port = parse_address(tracker, "--tracker")
            client = tvm_rpc.connect_tracker(host, port)
            if queue_timeout is not None:
                # the tracker answers a request when a device is free: bound that wait on the
                # request socket (TVM's TrackerSession keeps it as _sock), and do not retry it
                client._sock.settimeout(queue_timeout)
            try:
                return client.request(key, session_timeout=session_seconds(timeout), max_retry=1)
            except (TimeoutError, RuntimeError) as e:  # TVM reports a socket timeout as a RuntimeError
                if "timed out" in str(e) or isinstance(e, TimeoutError):
                    within = "in time" if queue_timeout is None else f"within {queue_timeout:g} s"
                    raise DeviceUnavailable(f"no {key} device was free at tracker {tracker} {within}") from None
                raise
    except ValueError:
        raise
    except Exception as e:  # socket errors, tracker refusals: one clear line
        where = rpc or f"tracker {tracker} (key {key})"
        raise DeviceUnavailable(f"cannot reach the RPC device at {where}: {last_line(e)}") from None
    raise ValueError("give --rpc HOST:PORT or --tracker HOST:PORT")


def upload(session: Any, path: str) -> Any:
    """Upload a kernel library and load it on the device; returns the remote module.

    A failed transfer is :class:`DeviceUnavailable`; a library the device cannot load
    (a broken or foreign file) is :class:`RemoteError`.
    """
    name = os.path.basename(path)
    try:
        session.upload(path, target=name)
    except Exception as e:
        raise DeviceUnavailable(f"could not send {name} to the device: {last_line(e)}") from None
    try:
        return session.load_module(name)
    except Exception as e:
        raise RemoteError(f"the device could not load {name}: {last_line(e)}") from None


def device_of(session: Any, meta: dict[str, Any]) -> Any:
    """The remote device a kernel runs on (CPU, or CUDA for GPU targets)."""
    return session.cuda(0) if target_from_metadata(meta).family == "cuda" else session.cpu(0)


def set_remote_threads(session: Any, num_threads: int | None) -> int:
    """Size the remote CPU thread pool (``None``: leave the server's default); returns the count.

    Call it first in a session: TVM sizes a thread pool once, when it is first used, to
    the length of the CPU list configured then (else to its default, half the logical
    CPUs on x86), and never grows it after. So the list names ``num_threads`` CPUs,
    ``0 .. num_threads - 1``, which the threads share (mode -3; the remote process's
    affinity mask is unknown here). RPC cannot send a list: it is built on the device.
    """
    if num_threads:
        n = int(num_threads)
        config = session.get_function("runtime.config_threadpool")
        try:
            cpus = session.get_function("ffi.Array")(*[str(i) for i in range(n)])
        except Exception:  # noqa: BLE001 - a server without it: its default pool size caps n
            config(-3, n)
        else:
            config(-3, n, cpus)
    return int(session.get_function("runtime.NumThreads")())


def remote_check(module: Any, spec: ConvSpec, dev: Any, *, seed: int = 1, target: Any = None,
                 packed_shape: list[int] | None = None, error_bound: float | None = None) -> tuple[float, float]:
    """(error vs the reference, tolerance) of one remote run on random data: of every
    entry point (``main``, and ``main_prepacked`` when ``packed_shape`` is given); the
    normwise relative error for a kernel with an ``error_bound`` (its metadata's)."""
    try:
        run = measure_kernel(module, spec, dev, packed_shape=packed_shape, timed=False, seed=seed,
                             error_bound=error_bound)
    except Exception as e:
        raise RemoteError(explain_failure(e, target)) from None
    return run.max_error, run.tolerance


def run_remote(session: Any, path: str, meta: dict[str, Any], *, num_threads: int | None = None,
               repeat: int = 10, check: bool = True) -> dict[str, Any]:
    """Upload, (check,) time a kernel file on the device; the dict ``convgen run`` reports."""
    spec = ConvSpec.from_dict(meta["spec"])
    if not os.path.isfile(path):
        raise KernelError(f"{path}: no such file")
    target = target_from_metadata(meta)
    module = upload(session, path)
    dev = device_of(session, meta)
    result: dict[str, Any] = {"threads": 1}
    try:
        # a remote device's type carries the session (1 + 128 * (index + 1) for a CPU): ask the target
        if target.family != "cuda":
            result["threads"] = set_remote_threads(session, num_threads)
        run = measure_kernel(module, spec, dev, packed_shape=meta.get("packed_weight_shape"), repeat=repeat,
                             check=ALWAYS if check else NEVER, seed=1, error_bound=meta.get("error_bound"))
    except Exception as e:
        raise RemoteError(explain_failure(e, target)) from None
    if check:
        result["max_error"], result["tolerance"] = run.max_error, run.tolerance
    result["times"] = run.times
    return result
