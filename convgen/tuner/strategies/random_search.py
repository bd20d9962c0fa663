"""Random search: uniform samples of the legal space, never repeating a config."""

from __future__ import annotations

from typing import Iterator

from ...knobs import Config, config_key
from . import SearchContext, register


@register("random")
def search(ctx: SearchContext) -> Iterator[list[Config]]:
    """Yield batches of distinct random configs until the space is exhausted."""
    while True:
        batch = ctx.unmeasured_sample(ctx.batch_size)
        if not batch:
            # rejection sampling found nothing new: enumerate what is left, if anything
            seen = ctx.measured()
            batch = [c for c in ctx.space if config_key(c) not in seen][: ctx.batch_size]
            if not batch:
                return
        yield batch
