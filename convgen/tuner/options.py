"""The tuner's options as data: each a dataclass field with its default and its help text.

:class:`MeasureOptions` (how a candidate is timed) and :class:`SearchOptions` (how the
campaign searches) are the one place their defaults live: :func:`convgen.tune` takes them,
and ``convgen tune`` makes its flags from the same fields (:func:`cli_flags`), so the
command line, its ``--help`` and the Python API cannot drift apart (Kernel Tuner's lesson:
options as data that write their own docs). A leaf module: no TVM, nothing of the tuner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator


def option(default: Any, help: str, *, kind: str = "", flag: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field carrying its help text and how the command line takes it.

    ``kind``: the value's rule (``positive_int``, ``nonnegative_int``, ``positive_float``,
    ``duration``, ``strategy``; ``off_switch`` for a bool whose flag turns it off); ``flag``:
    the option's flag (default ``--field-name``; ``""``: not on the command line).
    """
    return field(default=default, metadata={"help": help, "kind": kind, "flag": flag, "metavar": metavar})


@dataclass(frozen=True)
class MeasureOptions:
    """How candidates are timed (``time_evaluator`` arguments and timeouts)."""

    number: int = option(3, "calls averaged per repeat", kind="positive_int")
    repeat: int = option(5, "repeats per trial (their median is the cost)", kind="positive_int")
    min_repeat_ms: int = option(40, "a repeat lasts at least this long (number grows)", kind="nonnegative_int")
    flush_args: bool | None = option(
        None, "leave the weights in the caches between timed calls; by default each timed call on a CPU "
              "first evicts every argument but the input (TVM's cache_flush_cpu_non_first_arg), so that a "
              "kernel is timed as it runs inside a network, its weights coming from memory "
              "(see convgen.tuner.options.default_cache_flush)",
        kind="off_switch", flag="--no-flush-args")
    cache_flush_bytes: int | None = option(
        None, "copy this many bytes between two buffers before each timed call, evicting what the last "
              "call left in the caches (default: 0, or twice the target's L2 with --no-flush-args on a "
              "CPU; 0 on GPUs; 0 with --number > 1 and --no-flush-args times a hot loop)",
        kind="nonnegative_int", flag="--cache-flush", metavar="BYTES")
    build_timeout: float = option(120.0, "seconds per build", kind="positive_float")
    run_timeout: float = option(60.0, "seconds per run (load, warm-up, timing, check); waiting for a device excluded",
                                kind="positive_float")
    num_threads: int | None = option(None, "CPU threads of the kernels (default: every CPU of the process)",
                                     kind="positive_int", flag="--threads")
    queue_timeout: float = option(600.0, "seconds a trial may wait at an RPC tracker for a free device "
                                         "(not counted as run time)", kind="positive_float")


    def for_target(self, target: Any) -> "MeasureOptions":
        """These options with the target's defaults resolved: the argument flush on CPUs only,
        and the byte flush of :func:`default_cache_flush` where none was given."""
        flush_args = self.flush_args is not False and target.is_cpu  # None: the default, on
        flush = self.cache_flush_bytes
        if flush is None:
            flush = 0 if flush_args else default_cache_flush(target)
        return dataclasses.replace(self, flush_args=flush_args, cache_flush_bytes=flush)

    def timing(self) -> str:
        """The timing condition as records store it (``records.TIMING``): ``"args"`` (every
        argument but the input evicted), ``"flush:N"`` (N bytes copied), both joined by
        ``+``, or ``"hot"``. Timings of different conditions do not compare."""
        # (of options resolved by for_target)
        parts = (["args"] if self.flush_args else []) + ([f"flush:{self.cache_flush_bytes}"] if self.cache_flush_bytes else [])
        return "+".join(parts) or "hot"


def default_cache_flush(target: Any) -> int:
    """Bytes the tuner flushes before each timed call with ``flush_args`` off: twice the
    target's L2 (``isa.l2_kib``) on CPUs, nothing on GPUs.

    Inside a network a kernel finds its input in the caches (the layer before just wrote it)
    and its weights out of them (the other layers ran since: ResNet-50's 100 MB of fp32
    weights pass through a 32 MB L3 every forward), where a hot loop finds both. Measured on
    a 2-vCPU Zen 5 (ResNet-50 and MobileNet-v2, 11 layers, 7-13 configs each from every
    template serving them, each config's kernel swapped into the optimized model): the config
    a hot loop picks ran up to 19% slower in the model than the model's best (geomean 3.9% on
    MobileNet-v2); timed after a flush of twice the L2 (TVM's ``cache_flush_bytes``, one copy
    through one core's caches), the pick was within 2% of the best on those 11 layers. It was
    not on ResNet-50's Winograd layers, whose transformed weights (4-38 MB) a 2 MB flush
    leaves in L3: there it ranked F(4x4) over F(2x2) on the 256-channel 14x14 layer (233 vs
    239 us), which inside the model ran 1.17x slower than F(2x2) (interleaved, in-process,
    three configs of each of the 3x3 layers swapped into one model). A flush of every
    argument but the input (``cache_flush_cpu_non_first_arg``: the weights come from memory,
    the input stays where the last call left it) ranked those configs as the model did on all
    four layer shapes (301 vs 374 us there; 248 vs 292 us on 128 channels at 28x28, where the
    model gave 1.2x), and is the default (``flush_args``); evicting everything and then
    rewriting the input from one thread did worse (geomean 13% on MobileNet-v2, up to 51%)."""
    if not target.is_cpu:
        return 0
    return 2 * 1024 * int(target.isa.get("l2_kib", 1024))


@dataclass(frozen=True)
class SearchOptions:
    """How a campaign searches: the strategy, its batches, when a layer stops, the end."""

    strategy: str = option("model", "search strategy: model (xgboost ranking, transfer between layers), "
                                    "random or grid", kind="strategy")
    batch_size: int = option(8, "configs built in parallel, then timed one by one", kind="positive_int")
    early_stopping: int | None = option(None, "stop a layer after this many trials without improvement",
                                        kind="positive_int")
    seed: int = option(0, "seed of the search (same seed, same proposals)", kind="int")
    transfer: bool = option(True, "do not learn from the other layers' results", kind="off_switch",
                            flag="--no-transfer")
    refine: int = option(3, "at the end, time each layer's K fastest configs twice more, interleaved (0: off)",
                         kind="nonnegative_int", metavar="K")
    device_wait: float = option(300.0, "seconds an unreachable device is retried (with backoff, no trials "
                                       "spent) before the campaign stops; run the same command again to resume",
                                kind="positive_float")
    n_parallel_builds: int | None = option(None, "build processes (default: one per CPU)", kind="positive_int",
                                           flag="--build-workers")


def cli_flags(cls: type) -> Iterator[tuple[str, dataclasses.Field]]:
    """``(flag, field)`` of every field of an options class that the command line takes."""
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag")
        if flag == "":
            continue
        yield flag or "--" + f.name.replace("_", "-"), f


def from_namespace(cls: type, args: Any) -> Any:
    """An options object from parsed flags (:func:`cli_flags` used each field's name as ``dest``)."""
    return cls(**{f.name: getattr(args, f.name) for _, f in cli_flags(cls)})
