"""Search strategies, chosen by name. Each is a module with one entry point, registered by name::

    @register("random")
    def search(ctx: SearchContext) -> Iterator[list[Config]]

a generator that yields batches of configs to measure. Between two batches the tuner
appends the measurements to ``ctx.history``, so a strategy sees every result (also those
resumed from a records file) and never proposes a measured config again. It returns
when it has nothing more to propose. Strategies know nothing of building or timing, so
they are tested in simulation against recorded or synthetic costs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ...knobs import Config, Space, config_key


@dataclass
class SearchContext:
    """What a strategy may look at: the space, the results so far, features, prior data."""

    space: Space
    rng: random.Random
    batch_size: int = 8
    # (config, cost in seconds or None for a failed trial), in measurement order
    history: list[tuple[Config, float | None]] = field(default_factory=list)
    # config -> feature vector (cost model input); None disables model-based search
    featurize: Callable[[list[Config]], np.ndarray] | None = None
    # -> (features, relative throughput in [0, 1], sizes of consecutive workload groups)
    # of other workloads' records: transfer learning across the layers of a campaign
    prior: Callable[[], tuple[np.ndarray, np.ndarray, list[int]]] | None = None

    def measured(self) -> set[str]:
        """Keys of every config measured (or failed) so far."""
        return {config_key(c) for c, _ in self.history}

    def unmeasured_sample(self, n: int, exclude: set[str] | None = None) -> list[Config]:
        """Up to ``n`` random legal configs not yet measured (nor in ``exclude``)."""
        seen = self.measured() | (exclude or set())
        out: list[Config] = []
        for c in self.space.sample(self.rng, n * 4 + 16):
            if config_key(c) not in seen:
                seen.add(config_key(c))
                out.append(c)
            if len(out) == n:
                break
        return out


_SEARCH: dict[str, Callable[[SearchContext], Iterator[list[Config]]]] = {}


def register(name: str) -> Callable:
    """Decorator: make a module's ``search`` function the strategy called ``name``."""

    def add(search: Callable[[SearchContext], Iterator[list[Config]]]) -> Callable:
        if name in _SEARCH:
            raise ValueError(f"two strategies are called {name!r}")
        _SEARCH[name] = search
        return search

    return add


def get_strategy(name: str) -> Callable[[SearchContext], Iterator[list[Config]]]:
    """The ``search`` function of a strategy by name (one of :data:`STRATEGIES`)."""
    if name not in _SEARCH:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(_SEARCH)}")
    return _SEARCH[name]


# The strategies, one module each: importing a module registers its strategy (a new strategy
# is a new module and its name on this line). They import SearchContext from here, so they
# come after it.
from . import random_search, grid_search, model_based  # noqa: E402, F401, I001

STRATEGIES = tuple(_SEARCH)
"""The names :func:`get_strategy` knows (the ``--strategy`` choices), in registration order."""
