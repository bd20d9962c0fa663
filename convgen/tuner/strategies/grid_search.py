"""Grid search: every legal config in the space's fixed order (useful for small spaces)."""

from __future__ import annotations

from typing import Iterator

from ...knobs import Config, config_key
from . import SearchContext, register


@register("grid")
def search(ctx: SearchContext) -> Iterator[list[Config]]:
    """Yield the grid in batches, skipping configs already measured."""
    seen = ctx.measured()
    batch: list[Config] = []
    for config in ctx.space:
        if config_key(config) in seen:
            continue
        batch.append(config)
        if len(batch) == ctx.batch_size:
            yield batch
            batch = []
            seen = ctx.measured()
    if batch:
        yield batch
