"""Helpers shared by the benchmark scripts (timing from Python, the way users call kernels)."""

from __future__ import annotations

import math
import os
import time
from typing import Callable

# where compare_metaschedule.py leaves MetaSchedule's databases (<MS_DB>/<layer>/) for inspection after a run
MS_DB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "metaschedule")


def seconds_per_call(fn: Callable[[], object], min_time: float = 0.05) -> float:
    """Seconds per call of ``fn``: enough calls to last ``min_time``, after one warm-up."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n
        n = max(n * 2, int(n * min_time / max(elapsed, 1e-6)) + 1)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, min_time: float = 0.05) -> dict[str, list[float]]:
    """Time every function once per round, round after round, so that machine noise (a
    neighbour, a frequency change) hits all candidates alike; returns the samples."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(seconds_per_call(fn, min_time))
    return samples


def geomean(values: list[float]) -> float:
    """Geometric mean of the positive values (nan if none)."""
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def paired_ratio(samples: dict[str, list[float]], peer: list[str], name: str) -> float:
    """Median over rounds of (fastest ``peer`` in the round / ``name`` in the round).

    A shared machine has slow spells that last seconds; a round lasts a fraction of one, so
    the candidates of one round share the machine's state and their ratio is stable even
    when the absolute times are not.
    """
    import statistics

    rounds = len(samples[name])
    return statistics.median(min(samples[p][i] for p in peer) / samples[name][i] for i in range(rounds))


NETWORKS = ("resnet18", "resnet50", "mobilenet_v2")  # whole networks of convgen.torch.models


def model_names() -> list[str]:
    """The model names the torch benchmarks take: the networks, then the patterns (the
    networks alone where torch is missing: the scripts say what to install)."""
    try:
        from convgen.torch.models import PATTERNS
    except ImportError:
        return list(NETWORKS)
    return [*NETWORKS, *PATTERNS]


def model_and_input(name: str, batch: int, size: int | None = None) -> tuple:
    """``(model, x)``: a model of :mod:`convgen.torch.models` by name, in eval mode, and a
    random float32 NCHW input for it. A network (``resnet50``...) takes ``(batch, 3, size,
    size)``, ``size`` 224 by default; a pattern (``PATTERNS``: ``regnet_block``...) its own
    input shape at ``batch``, ``size`` (if given) replacing its height and width. An unknown
    name raises ``ValueError`` listing the known ones."""
    import torch

    from convgen.torch import models

    if name in models.PATTERNS:
        factory, shape = models.PATTERNS[name]
        _, c, h, w = shape
        h, w = (size, size) if size else (h, w)
        return factory().eval(), torch.randn(batch, c, h, w)
    if name in NETWORKS:
        size = size or 224
        return getattr(models, name)().eval(), torch.randn(batch, 3, size, size)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
