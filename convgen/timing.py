"""The one way convgen times a kernel: on any device, local or remote through RPC.

:func:`measure_kernel` sets up random inputs on the device, packs the weights once where
the kernel keeps its own layout (the library's ``pack_weights``, then ``main_prepacked``, as
a deployed model runs), times with TVM's ``time_evaluator``, and checks every entry point
against the numpy reference on an output filled with NaN first. :meth:`Kernel.benchmark
<convgen.runtime.Kernel.benchmark>`, ``convgen run`` (here and ``--rpc``) and the tuner's
local and RPC workers all measure through it. Runtime side: numpy and the TVM runtime.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .reference import conv2d_reference, numpy_dtype, random_inputs, relative_tolerance, tolerance
from .spec import ConvSpec


@dataclass(frozen=True)
class Check:
    """When a timed kernel is compared with the numpy reference: when its median time is below
    ``below`` seconds. The tuner checks only what would become its new best (a slower kernel
    is never chosen, so checking it costs time for nothing): :data:`ALWAYS`, :data:`NEVER`,
    or ``Check(best)`` below the best so far."""

    below: float

    def wanted(self, times: list[float]) -> bool:
        """Should a run with these timings (``[]``: not timed) be checked?"""
        if self.below == -math.inf:
            return False
        return not times or statistics.median(times) < self.below

    def beaten_by(self, cost: float) -> "Check":
        """The check for the next candidate once a checked one ran in ``cost`` seconds."""
        return self if self.below <= cost else Check(cost)


ALWAYS = Check(math.inf)
"""Check every run against the reference."""
NEVER = Check(-math.inf)
"""Time only; check nothing."""


@dataclass
class KernelRun:
    """What :func:`measure_kernel` found."""

    entry: str                    # the entry point timed: main_prepacked (weights packed once) or main
    times: list[float] = field(default_factory=list)   # seconds per call, one per repeat ([]: not timed)
    errors: dict[str, float] = field(default_factory=dict)  # entry point -> error ({}: not checked)
    tolerance: float = 0.0
    #: what ``errors`` and ``tolerance`` measure: the max absolute error beyond the relative
    #: tolerance, or (a kernel with an ``error_bound``) the normwise relative error
    measure: str = "max |error|"

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def verified(self) -> bool | None:
        """``None`` when nothing was checked, else whether every entry point was right."""
        return None if not self.errors else self.max_error <= self.tolerance

    @property
    def mismatch(self) -> str:
        """One line naming the wrong entry points ("" when all are right)."""
        return "; ".join(f"{name}: {self.measure} {err:.3g} > tolerance {self.tolerance:.3g}"
                         for name, err in self.errors.items() if not err <= self.tolerance)


def _max_abs_error(got: np.ndarray, want: np.ndarray, rtol: float = 0.0) -> float:
    """max |got - want| beyond ``rtol * |want|``; ``inf`` where ``got`` holds NaN or inf (an
    output left unwritten)."""
    if not got.size:
        return 0.0
    want64 = want.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want64) - rtol * np.abs(want64)
    return float(max(np.max(diff), 0.0)) if np.isfinite(diff).all() else math.inf


def _normwise_error(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| (2-norms over the whole output); ``inf`` where ``got``
    holds NaN or inf."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    if not np.isfinite(got64).all():
        return math.inf
    return float(np.linalg.norm(got64 - want64) / max(np.linalg.norm(want64), np.finfo(np.float64).tiny))


def _poison(out: Any, spec: ConvSpec) -> None:
    """Fill an output tensor with NaN (the most negative integer for int outputs), so an
    element the kernel does not write shows up in the check instead of an older result."""
    dtype = numpy_dtype(spec.out_dtype)
    fill = np.iinfo(dtype).min if dtype.kind in "iu" else np.nan
    out.copyfrom(np.full(spec.output_shape, fill, dtype=dtype))


def measure_kernel(module: Any, spec: ConvSpec, dev: Any, *, packed_shape: list[int] | tuple[int, ...] | None = None,
                   timed: bool = True, number: int = 3, repeat: int = 5, min_repeat_ms: int = 50,
                   cache_flush_bytes: int = 0, flush_args: bool = False, check: Check = ALWAYS,
                   seed: int = 0, error_bound: float | None = None) -> KernelRun:
    """Set up random inputs on ``dev``, time the kernel as deployed, check it vs the reference.

    ``module`` is a loaded library, local or remote (:func:`upload`). Kernels with their own
    weight layout (``packed_shape``, from the library's ``packed_weight_shape`` metadata) get
    their weights packed once by the library's ``pack_weights`` and are timed through
    ``main_prepacked``; others through ``main``. ``timed=False`` only checks. The check runs
    when ``check`` wants it (:class:`Check`: :data:`ALWAYS`, :data:`NEVER`, or below a time);
    it runs every entry point (``main_prepacked`` and ``main``) on an output filled with NaN
    first, so a kernel that skips part of the output fails. ``error_bound`` (from the kernel's
    metadata, where its template declares one): the check holds the normwise relative error
    to it instead of the elementwise tolerance. Device errors propagate as they
    are (callers on RPC turn them into :class:`RemoteError` with :func:`explain_failure`).
    """
    import tvm

    arrays = random_inputs(spec, seed)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    out = tvm.runtime.empty(spec.output_shape, spec.out_dtype, dev)
    entries = [("main", args)]
    if packed_shape:
        packed = tvm.runtime.empty(tuple(int(x) for x in packed_shape), spec.filter_dtype, dev)
        module["pack_weights"](args[1], packed)
        entries.insert(0, ("main_prepacked", [args[0], packed] + args[2:]))
    name, timed_args = entries[0]
    if error_bound is None:
        run = KernelRun(entry=name, tolerance=tolerance(spec))
    else:
        run = KernelRun(entry=name, tolerance=float(error_bound), measure="normwise relative error")
    if timed:
        # flush_args: every argument but the input evicted before each call (clflush; x86 and
        # AArch64), as inside a network: weights from memory, the input where it was left
        ev = module.time_evaluator(name, dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                   cache_flush_bytes=cache_flush_bytes,
                                   f_preproc="cache_flush_cpu_non_first_arg" if flush_args else "")
        run.times = [float(t) for t in ev(*timed_args, out).results]
    if check.wanted(run.times):
        want = conv2d_reference(spec, *arrays)
        for name, entry_args in entries:
            _poison(out, spec)
            module[name](*entry_args, out)
            got = out.numpy()
            run.errors[name] = (_max_abs_error(got, want, relative_tolerance(spec)) if error_bound is None
                                else _normwise_error(got, want))
    return run
