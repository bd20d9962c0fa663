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
    cache_flush_bytes: int = option(0, "flush this many bytes of cache before each repeat (cold-cache timing)",
                                    kind="nonnegative_int", flag="--cache-flush", metavar="BYTES")
    build_timeout: float = option(120.0, "seconds per build", kind="positive_float")
    run_timeout: float = option(60.0, "seconds per run (load, warm-up, timing, check); waiting for a device excluded",
                                kind="positive_float")
    num_threads: int | None = option(None, "CPU threads of the kernels (default: every CPU of the process)",
                                     kind="positive_int", flag="--threads")
    queue_timeout: float = option(600.0, "seconds a trial may wait at an RPC tracker for a free device "
                                         "(not counted as run time)", kind="positive_float")


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
