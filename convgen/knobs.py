"""Knob spaces as data: listable, sampleable and hashable without building anything.

A template declares a :class:`Space` for one (spec, target): named knobs, each a short
tuple of allowed values, plus an optional ``constraint`` that rejects combinations (a
register budget, say). A config is a plain ``dict`` knob -> value.

The space hash covers the template's name and version and every knob's values, so
records made against another version of a template are recognised as stale.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError

Config = dict[str, Any]



@dataclass(frozen=True)
class Knob:
    """One tunable decision: a name, its allowed values and what it means."""

    name: str
    values: tuple
    doc: str = ""

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"knob {self.name!r} has no values")
        object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True)
class Space:
    """The product of some knobs, minus what ``constraint`` rejects.

    ``constraint(config) -> str | None`` returns why a config is illegal, or ``None``. It
    belongs to the template's code, so it is covered by the template version in the hash.
    """

    template: str
    version: int
    knobs: tuple[Knob, ...]
    constraint: Callable[[Config], str | None] | None = None

    @property
    def names(self) -> list[str]:
        """Knob names in declaration order."""
        return [k.name for k in self.knobs]

    def __getitem__(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise KeyError(name)

    @property
    def raw_size(self) -> int:
        """Size of the product before the constraint."""
        return math.prod(len(k.values) for k in self.knobs)

    def why_illegal(self, config: Mapping[str, Any]) -> str | None:
        """Why ``config`` is not in this space, or ``None`` if it is."""
        missing = [n for n in self.names if n not in config]
        if missing:
            return f"missing knob(s) {missing}"
        extra = sorted(set(config) - set(self.names))
        if extra:
            return f"unknown knob(s) {extra} for template {self.template}"
        for k in self.knobs:
            if config[k.name] not in k.values:
                return f"{k.name}={config[k.name]!r} is not one of {list(k.values)}"
        return self.constraint(dict(config)) if self.constraint else None

    def check(self, config: Mapping[str, Any]) -> Config:
        """Return ``config`` as a dict, or raise :class:`ConfigError` saying why it is illegal."""
        why = self.why_illegal(config)
        if why:
            raise ConfigError(f"illegal config for {self.template}: {why}")
        return dict(config)

    def __contains__(self, config: object) -> bool:
        return isinstance(config, Mapping) and self.why_illegal(config) is None

    def __iter__(self) -> Iterator[Config]:
        """Every legal config, in a fixed (grid) order."""
        for values in itertools.product(*(k.values for k in self.knobs)):
            config = dict(zip(self.names, values))
            if self.constraint is None or self.constraint(config) is None:
                yield config

    def __len__(self) -> int:
        if self.constraint is None:
            return self.raw_size
        return sum(1 for _ in self)

    def sample(self, rng: random.Random, n: int = 1, *, max_tries: int = 10_000) -> list[Config]:
        """Up to ``n`` distinct legal configs drawn uniformly (rejection sampling)."""
        seen: set[str] = set()
        out: list[Config] = []
        for _ in range(max_tries):
            if len(out) >= n:
                break
            config = {k.name: rng.choice(k.values) for k in self.knobs}
            key = config_key(config)
            if key in seen:
                continue
            seen.add(key)
            if self.constraint is None or self.constraint(config) is None:
                out.append(config)
        return out

    def neighbours(self, config: Config) -> list[Config]:
        """Legal configs differing from ``config`` in one knob by one step of its value list."""
        out = []
        for k in self.knobs:
            i = k.values.index(config[k.name])
            for j in (i - 1, i + 1):
                if 0 <= j < len(k.values):
                    c = dict(config, **{k.name: k.values[j]})
                    if self.constraint is None or self.constraint(c) is None:
                        out.append(c)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able description: template, version, knobs and their values."""
        return {
            "template": self.template,
            "version": self.version,
            "knobs": {k.name: list(k.values) for k in self.knobs},
        }

    @property
    def hash(self) -> str:
        """Stable digest of :meth:`describe` (records carry it to detect stale configs)."""
        blob = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def config_key(config: Mapping[str, Any]) -> str:
    """Canonical string of a config (dedup in tuners and records)."""
    return json.dumps(dict(config), sort_keys=True, default=str)


def divisors(n: int, *, upto: int | None = None) -> list[int]:
    """Divisors of ``n`` in increasing order, optionally only those <= ``upto`` (O(sqrt n))."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    out = small + [n // d for d in reversed(small) if d * d != n]
    return [d for d in out if upto is None or d <= upto]
