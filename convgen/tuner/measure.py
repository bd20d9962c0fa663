"""Measurement: build candidates in parallel worker processes, run each in an isolated one.

Mirrors how AutoTVM and MetaSchedule measure, on TVM's own pieces:

- :class:`Builder` compiles a batch of configs in a ``tvm.support.popen_pool`` pool (one
  process per CPU, each with a timeout); a config the template or TVM rejects comes back
  as an error, never an exception in the tuner.
- :class:`LocalRunner` runs each built library in a separate worker process (a popen
  worker restarted after a crash) with ``time_evaluator``; a segfault, SIGILL or hang is
  recorded as ``crash`` / ``timeout`` and the campaign goes on. Builds and runs never
  overlap, so compiling does not disturb timing.
- :class:`RPCRunner` does the same on remote devices through ``tvm.rpc``, directly or via
  a tracker, with one session per device in parallel: a fleet serves one campaign. A device
  that cannot be reached is recorded as ``device`` (not the config's fault), not ``crash``.

Both measure through :func:`convgen.timing.measure_kernel`, as ``convgen run`` does: kernels
with their own weight layout are timed as deployed (weights packed once by the library's
``pack_weights``, then ``main_prepacked``) with the :class:`MeasureOptions`.

A run can also check the output against the numpy reference; the tuner asks for that
when a candidate beats the best so far (a :class:`convgen.timing.Check`), so a wrong kernel
is recorded as ``wrong_result`` and never chosen.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorKind, last_line
from ..knobs import Config
from ..records import median
from ..timing import NEVER, Check
from .options import MeasureOptions
from ..workers import popen_pool, popen_worker


@dataclass
class Candidate:
    """One config of one task on its way through build and run."""

    spec: dict[str, Any]
    target: dict[str, Any]  # the target's TOML dict (workers rebuild the Target from it)
    template: str
    config: Config
    template_module: str = ""  # imported by build workers first, so user templates register there too
    error_bound: float | None = None  # the template's (Template.error_bound): what its check holds it to
    packed_shape: list[int] | None = None  # set when the library has main_prepacked
    path: str | None = None
    error: ErrorKind | None = None  # why it has no timing (None: it has one)
    message: str = ""
    build_s: float = 0.0
    times: list[float] = field(default_factory=list)
    verified: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.times)

    @property
    def cost(self) -> float | None:
        """Median seconds per call, ``None`` if it failed."""
        return median(self.times) if self.ok else None


# ---- worker processes ------------------------------------------------------------------------
# The grace a worker gets past its own timeout before the parent kills it: the worker's timer
# is a thread of the worker, so a candidate that hangs holding the GIL (a kernel stuck in C,
# a compile loop) stops it; the parent's deadline does not depend on the worker at all.
GRACE = 5.0


def call_with_deadline(worker: Any, fn: Any, args: tuple, timeout: float) -> Any:
    """``fn(*args)`` in a TVM ``PopenWorker``: the worker's own timeout, and the parent's
    deadline ``timeout + GRACE`` after which the worker is killed (its result is then a
    ``TimeoutError``). Raises what the worker raises (``ChildProcessError`` if it died)."""
    import select

    worker.send(fn, args, timeout=timeout)
    reader = worker._reader  # TVM's PopenWorker reads results from this pipe
    ready, _, _ = select.select([reader], [], [], timeout + GRACE)
    if not ready:
        worker.kill()  # the hung worker and its children; the next send starts a fresh one
        raise TimeoutError(f"no answer from the worker within {timeout + GRACE:.0f} s")
    return worker.recv()


def missing_dependencies(strategy: str = "model") -> list[str]:
    """The Python packages tuning needs that are not installed: psutil (killing a hung
    worker's children), cloudpickle (sending work to the workers), xgboost (the cost model
    of the default strategy). Checked before the first trial, not discovered by it."""
    import importlib.util

    needed = ["psutil", "cloudpickle"] + (["xgboost"] if strategy == "model" else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def stale_build_folders(root: str | None = None) -> list[str]:
    """``convgen-build-<pid>-*`` folders (of this user) whose tuner is dead: what a killed
    campaign left behind."""
    import glob
    import re

    out = []
    for path in glob.glob(os.path.join(root or tempfile.gettempdir(), "convgen-build-*")):
        m = re.match(r"convgen-build-(\d+)-", os.path.basename(path))
        try:
            if not m or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            out.append(path)  # no such process: the tuner that made it is gone
        except (OSError, ValueError):
            continue
    return out


# ---- worker functions (run in popen workers; module-level so they pickle by reference) ----------
def build_worker(spec: dict, target: dict, template: str, config: Config, out_dir: str, module: str = "") -> tuple:
    """Compile one candidate and export it.

    Returns ``(path | None, error kind, message, seconds, packed weight shape | None)``.
    """
    t0 = time.perf_counter()
    if module:
        importlib.import_module(module)  # registers the template in this worker
    from convgen.builder import BuildError, compile_module, export_library
    from convgen.knobs import ConfigError
    from convgen.schedules import get_template
    from convgen.spec import ConvSpec
    from convgen.target import Target

    tgt = Target.from_dict(target)
    path = None
    try:
        spec_ = ConvSpec.from_dict(spec)
        tmpl = get_template(template)
        executable, packed = compile_module(spec_, tgt, tmpl, config, with_packed_shape=True)
        fd, path = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        export_library(executable, tgt, path)
    except Exception as e:  # noqa: BLE001 - anything else in a build is a failed build
        if path is not None:
            os.unlink(path)  # a half-written library
        if isinstance(e, ConfigError):
            return None, ErrorKind.CONFIG, str(e), time.perf_counter() - t0, None
        if isinstance(e, BuildError):
            return None, ErrorKind.BUILD, str(e), time.perf_counter() - t0, None
        return None, ErrorKind.BUILD, f"{type(e).__name__}: {e}"[-2000:], time.perf_counter() - t0, None
    return path, None, "", time.perf_counter() - t0, packed


def _timing(opts: MeasureOptions) -> dict[str, Any]:
    """The ``time_evaluator`` arguments of ``opts`` (for :func:`convgen.timing.measure_kernel`).

    With a cache flush, each timed call gets its own flush (``number`` = 1, as many repeats
    as ``number * repeat`` would have timed calls, at least 10, none stretched to a minimum
    length): a flush before a batch of calls would leave all but the first hot."""
    flush = opts.cache_flush_bytes or 0
    if flush or opts.flush_args:  # (None: options not resolved by for_target: off)
        return {"number": 1, "repeat": max(opts.number * opts.repeat, 10), "min_repeat_ms": 0,
                "cache_flush_bytes": flush, "flush_args": bool(opts.flush_args)}
    return {"number": opts.number, "repeat": opts.repeat, "min_repeat_ms": opts.min_repeat_ms,
            "cache_flush_bytes": 0, "flush_args": False}


def run_worker(path: str, spec: dict, opts: MeasureOptions, check: Check,
               packed_shape: list[int] | None = None, target: dict | None = None,
               error_bound: float | None = None) -> tuple:
    """Time a library here; check it against the reference where ``check`` wants it.

    Kernels with pre-packed weights are timed as deployed (``main_prepacked``, weights packed
    once); the check runs both entry points, each on an output filled with NaN first
    (:func:`convgen.timing.measure_kernel`). Returns ``(times, verified, message)``;
    ``verified`` is ``None`` when no check ran.
    """
    import tvm

    from convgen.timing import measure_kernel
    from convgen.runtime import set_num_threads
    from convgen.spec import ConvSpec

    spec_ = ConvSpec.from_dict(spec)
    if target and target.get("family") == "cuda":
        from convgen.cuda.device import device_problem
        from convgen.target import Target

        why = device_problem(Target.from_dict(target))
        if why:
            raise RuntimeError(why)
        dev = tvm.cuda(0)
    else:
        set_num_threads(opts.num_threads)
        dev = tvm.cpu(0)
    module = tvm.runtime.load_module(path)
    run = measure_kernel(module, spec_, dev, packed_shape=packed_shape, check=check, error_bound=error_bound,
                         **_timing(opts))
    return run.times, run.verified, run.mismatch


# ---- builder --------------------------------------------------------------------------------
class Builder:
    """Builds candidates in parallel popen workers, each build with a timeout."""

    def __init__(self, n_parallel: int | None = None, timeout: float = 120.0) -> None:
        import shutil

        self.n_parallel = n_parallel or max(1, len(os.sched_getaffinity(0)))
        self.timeout = timeout
        for stale in stale_build_folders():
            shutil.rmtree(stale, ignore_errors=True)
        # the pid in the name tells a later run whether the tuner that made it is alive
        self.out_dir = tempfile.mkdtemp(prefix=f"convgen-build-{os.getpid()}-")
        self._make_pool = lambda: popen_pool(self.n_parallel, timeout)
        self._pool = self._make_pool()

    def build(self, candidates: list[Candidate]) -> None:
        """Fill ``path`` (or ``error``/``message``) of each candidate, in place."""
        todo = list(candidates)
        while todo:
            futures = [self._pool.submit(build_worker, c.spec, c.target, c.template, c.config, self.out_dir,
                                         c.template_module) for c in todo]
            deadline = time.monotonic() + self.timeout * -(-len(futures) // self.n_parallel) + GRACE
            stuck = None
            for i, (c, fut) in enumerate(zip(todo, futures)):
                try:
                    # the workers time their own builds; this bounds one too stuck to (GIL held)
                    c.path, c.error, c.message, c.build_s, c.packed_shape = fut.result(
                        timeout=max(deadline - time.monotonic(), GRACE))
                except TimeoutError:
                    c.error, c.message = ErrorKind.BUILD_TIMEOUT, f"build took longer than {self.timeout:.0f} s"
                    if not fut.done():  # the worker did not answer at all: kill the pool
                        stuck = i
                        break
                except ChildProcessError:
                    c.error, c.message = ErrorKind.BUILD, "the build worker died (out of memory, or a crash in TVM)"
                except Exception as e:  # noqa: BLE001
                    c.error, c.message = ErrorKind.BUILD, f"{type(e).__name__}: {e}"[-2000:]
            if stuck is None:
                return
            for fut in futures[stuck + 1:]:  # shutdown kills the workers, not the queue: the
                fut.cancel()                 # old pool would build these a second time
            self._pool.shutdown(wait=False)  # kills every worker, the stuck one included
            self._pool = self._make_pool()
            todo = todo[stuck + 1:]  # built again by fresh workers: they were not to blame

    def discard(self, candidates: list[Candidate]) -> None:
        """Delete the libraries of candidates that have been run (their ``path`` stays, naming
        a file that is gone): a campaign re-builds a config it measures again."""
        for c in candidates:
            if c.path and os.path.dirname(os.path.abspath(c.path)) == os.path.abspath(self.out_dir):
                try:
                    os.unlink(c.path)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        """Stop the workers and delete the built libraries."""
        self._pool.shutdown(wait=False)
        import shutil

        shutil.rmtree(self.out_dir, ignore_errors=True)


# ---- runners --------------------------------------------------------------------------------
class LocalRunner:
    """Times candidates on this machine, one at a time, each in an isolated worker process."""

    def __init__(self, options: MeasureOptions | None = None) -> None:
        self.options = options or MeasureOptions()
        self._worker = popen_worker()

    def run(self, c: Candidate, check: Check = NEVER) -> None:
        """Fill ``times`` (or ``error``) and ``verified`` of a built candidate, in place."""
        if c.path is None:
            return
        try:
            # the worker's own timer answers a hang; the parent's deadline one that stops it
            c.times, c.verified, c.message = call_with_deadline(
                self._worker, run_worker, (c.path, c.spec, self.options, check, c.packed_shape, c.target,
                                           c.error_bound),
                self.options.run_timeout)
        except TimeoutError:
            c.error, c.message = ErrorKind.TIMEOUT, f"run took longer than {self.options.run_timeout:.0f} s"
        except ChildProcessError:
            c.error, c.message = ErrorKind.CRASH, "the kernel crashed the run worker (segfault, SIGILL or abort)"
        except Exception as e:  # noqa: BLE001 - anything else fails this trial, never the campaign
            c.error, c.message = ErrorKind.RUN, last_line(e)
            self._worker.kill()  # a fresh worker for the next trial, whatever state this left
        if c.verified is False:
            c.error = ErrorKind.WRONG_RESULT

    def run_batch(self, candidates: list[Candidate], check: Check) -> None:
        """Run a batch sequentially; each candidate that ``check`` wants (one beating the
        running best, once a checked one is the best) is checked against the reference."""
        for c in candidates:
            self.run(c, check)
            if c.ok and c.verified:
                check = check.beaten_by(c.cost)

    def close(self) -> None:
        self._worker.kill()


def rpc_run_worker(address: dict, path: str, spec: dict, target: dict, opts: MeasureOptions,
                   check: Check, packed_shape: list[int] | None = None, error_bound: float | None = None) -> tuple:
    """Time (and maybe check) a library on a remote device; same result as :func:`run_worker`.

    Measures as the local worker does (:func:`convgen.timing.measure_kernel`: weights packed
    once on the device, ``main_prepacked`` timed, both entry points checked). Waiting for a
    device at a tracker is bounded by ``opts.queue_timeout`` and does not count against the
    run: the session's own timeout (``opts.run_timeout``, at least 1 s) starts once a device
    is granted, and the server ends the session when it runs out. Raises
    :class:`convgen.remote.DeviceUnavailable` when no device could be reached, granted or
    sent the library, :class:`convgen.remote.RemoteTimeout` when the session ran out of
    time, :class:`convgen.remote.RemoteError` when the kernel fails there.
    """
    from convgen import remote
    from convgen.spec import ConvSpec
    from convgen.target import Target
    from convgen.timing import measure_kernel

    spec_ = ConvSpec.from_dict(spec)
    tgt = Target.from_dict(target)
    session = remote.connect(rpc=address.get("rpc"), tracker=address.get("tracker"), key=address.get("key"),
                             timeout=opts.run_timeout, queue_timeout=opts.queue_timeout)
    started = time.monotonic()
    module = remote.upload(session, path)
    dev = remote.device_of(session, {"target_desc": target})
    try:
        if tgt.family != "cuda":  # a remote CPU's device type is 1 + 128 * (session index + 1): ask the target
            remote.set_remote_threads(session, opts.num_threads)
        run = measure_kernel(module, spec_, dev, packed_shape=packed_shape, check=check, error_bound=error_bound,
                             **_timing(opts))
    except Exception as e:
        if time.monotonic() - started >= 0.95 * remote.session_seconds(opts.run_timeout):
            raise remote.RemoteTimeout(f"the run took longer than {opts.run_timeout:g} s and the device ended "
                                       f"the session ({last_line(e)})") from None
        raise remote.RemoteError(remote.explain_failure(e, tgt)) from None
    return run.times, run.verified, run.mismatch


class RPCRunner:
    """Times candidates on remote devices through TVM RPC.

    ``rpc="host:port"`` uses one server; ``tracker="host:port", key=...`` asks the tracker
    for a free device per candidate, and ``n_parallel`` candidates run at once (one per
    device of the fleet). Each measurement runs in its own popen worker, so a device that
    dies mid-run fails that trial only; a device that cannot be reached (or sent the library)
    gives error kind ``device``, not ``crash``: the config is not to blame.
    """

    def __init__(self, rpc: str | None = None, tracker: str | None = None, key: str | None = None,
                 n_parallel: int = 1, options: MeasureOptions | None = None) -> None:
        from ..remote import parse_address

        if rpc:
            parse_address(rpc, "rpc")
        elif tracker:
            parse_address(tracker, "tracker")
            if not key:
                raise ValueError("an RPC tracker needs a device key")
        else:
            raise ValueError("RPCRunner needs rpc='host:port' or tracker='host:port' with key=")
        self.address = {"rpc": rpc, "tracker": tracker, "key": key}
        self.options = options or MeasureOptions()
        self.n_parallel = n_parallel
        # the worker's budget: waiting for a device, uploading, running (each bounded on its own)
        self._budget = self.options.queue_timeout + self.options.run_timeout + 60
        self._make_pool = lambda: popen_pool(n_parallel, self._budget)
        self._pool = self._make_pool()

    def _finish(self, c: Candidate, fut: concurrent.futures.Future, deadline: float) -> None:
        from ..remote import DeviceUnavailable, RemoteTimeout

        try:
            c.times, c.verified, c.message = fut.result(timeout=max(deadline - time.monotonic(), GRACE))
        except TimeoutError:
            if not fut.done():  # the worker itself is stuck: start the pool afresh
                self._pool.shutdown(wait=False)
                self._pool = self._make_pool()
            # the run is bounded by the session timeout, so this is a device that stopped answering
            c.error, c.message = ErrorKind.DEVICE, f"no answer from the device within {self._budget:.0f} s"
        except RemoteTimeout as e:
            c.error, c.message = ErrorKind.TIMEOUT, last_line(e)
        except ChildProcessError:
            c.error, c.message = ErrorKind.CRASH, "the RPC worker died"
        except DeviceUnavailable as e:  # before the kernel ran: a board down, a refused connection
            c.error, c.message = ErrorKind.DEVICE, last_line(e)
        except Exception as e:  # noqa: BLE001 - a dead server, a lost connection: this trial only
            msg = last_line(e)
            died = ("connection", "closed", "sigill", "sigsegv", "died", "killed by")
            c.error = ErrorKind.CRASH if any(word in msg.lower() for word in died) else ErrorKind.RUN
            c.message = msg
        if c.verified is False:
            c.error = ErrorKind.WRONG_RESULT

    def run_batch(self, candidates: list[Candidate], check: Check) -> None:
        """Run a batch across the fleet; what ``check`` wants (new bests vs the best before the
        batch: the devices run at once) is checked against the reference."""
        todo = [c for c in candidates if c.path is not None]
        futures = [self._pool.submit(rpc_run_worker, self.address, c.path, c.spec, c.target, self.options, check,
                                     c.packed_shape, c.error_bound) for c in todo]
        deadline = time.monotonic() + self._budget * -(-len(futures) // self.n_parallel) + GRACE
        for c, fut in zip(todo, futures):
            self._finish(c, fut, deadline)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

