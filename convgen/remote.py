"""Running kernels on remote devices through TVM RPC (a board, a GPU server, a fleet).

``connect`` reaches a device directly (``HOST:PORT`` of a ``tvm.exec.rpc_server``) or
through a TVM RPC tracker with a device key, so one campaign can use a pool of boards.
Everything here is TVM's own RPC (``tvm.rpc``): upload, load, ``time_evaluator`` remotely.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import numpy as np

from .reference import conv2d_reference, random_inputs, tolerance
from .runtime import KernelError, target_from_metadata
from .spec import ConvSpec


class RemoteError(RuntimeError):
    """The device could not be reached, or it failed (crashed) while running a kernel."""


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
    last = _last_line(e)
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
            *, timeout: float = 600, priority: int = 1) -> Any:
    """An RPC session: directly to ``rpc`` (HOST:PORT) or from ``tracker`` for device ``key``."""
    from tvm import rpc as tvm_rpc

    try:
        if rpc:
            host, port = parse_address(rpc, "--rpc")
            return tvm_rpc.connect(host, port, session_timeout=int(timeout))
        if tracker:
            if not key:
                raise ValueError("a tracker needs a device key (--key)")
            host, port = parse_address(tracker, "--tracker")
            return tvm_rpc.connect_tracker(host, port).request(key, priority=priority, session_timeout=int(timeout))
    except ValueError:
        raise
    except Exception as e:  # socket errors, tracker refusals: one clear line
        where = rpc or f"tracker {tracker} (key {key})"
        raise RemoteError(f"cannot reach the RPC device at {where}: {_last_line(e)}") from None
    raise ValueError("give --rpc HOST:PORT or --tracker HOST:PORT")


def upload(session: Any, path: str) -> Any:
    """Upload a kernel library and load it on the device; returns the remote module."""
    name = os.path.basename(path)
    try:
        session.upload(path, target=name)
        return session.load_module(name)
    except Exception as e:
        raise RemoteError(f"the device could not load {name}: {_last_line(e)}") from None


def device_of(session: Any, meta: dict[str, Any]) -> Any:
    """The remote device a kernel runs on (CPU, or CUDA for GPU targets)."""
    return session.cuda(0) if target_from_metadata(meta).family == "cuda" else session.cpu(0)


def set_remote_threads(session: Any, num_threads: int | None) -> int:
    """Size the remote CPU thread pool (``None``: leave the server's default); returns the count."""
    if num_threads:
        # -3: threads share all cores (the remote process's affinity is unknown here)
        session.get_function("runtime.config_threadpool")(-3, int(num_threads))
    return int(session.get_function("runtime.NumThreads")())


def remote_time(session: Any, module: Any, spec: ConvSpec, dev: Any, *, number: int = 3, repeat: int = 5,
                min_repeat_ms: int = 50, seed: int = 0, target: Any = None) -> list[float]:
    """Seconds per call (one per repeat) of ``module``'s ``main`` on the device.

    ``target`` (the kernel's :class:`~convgen.target.Target`) only makes a crash's error say
    which ISA the kernel needs.
    """
    import tvm

    args = [tvm.runtime.tensor(a, dev) for a in random_inputs(spec, seed)]
    args.append(tvm.runtime.empty(spec.output_shape, spec.out_dtype, dev))
    try:
        ev = module.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        return [float(t) for t in ev(*args).results]
    except Exception as e:
        raise RemoteError(explain_failure(e, target)) from None


def remote_check(module: Any, spec: ConvSpec, dev: Any, *, seed: int = 1, target: Any = None) -> tuple[float, float]:
    """(max |error| vs the reference, tolerance) of one remote run on random data."""
    import tvm

    arrays = random_inputs(spec, seed)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    out = tvm.runtime.empty(spec.output_shape, spec.out_dtype, dev)
    try:
        module["main"](*args, out)
        got = out.numpy()
    except Exception as e:
        raise RemoteError(explain_failure(e, target)) from None
    want = conv2d_reference(spec, *arrays)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    return err, tolerance(spec)


def run_remote(session: Any, path: str, meta: dict[str, Any], *, num_threads: int | None = None,
               repeat: int = 10, check: bool = True) -> dict[str, Any]:
    """Upload, (check,) time a kernel file on the device; the dict ``convgen run`` reports."""
    spec = ConvSpec.from_dict(meta["spec"])
    if not os.path.isfile(path):
        raise KernelError(f"{path}: no such file")
    target = target_from_metadata(meta)
    module = upload(session, path)
    dev = device_of(session, meta)
    result: dict[str, Any] = {"threads": set_remote_threads(session, num_threads) if dev.dlpack_device_type() == 1 else 1}
    if check:
        result["max_error"], result["tolerance"] = remote_check(module, spec, dev, target=target)
    result["times"] = remote_time(session, module, spec, dev, repeat=repeat, target=target)
    result["median"] = statistics.median(result["times"])
    return result


def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1][:400] if lines else type(e).__name__
