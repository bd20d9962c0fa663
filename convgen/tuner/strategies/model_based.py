"""Model-guided search: an xgboost ranking model trained on every measurement so far.

Each round:

1. Train ``rank:pairwise`` boosted trees on (features, relative throughput) of the
   measured configs of this workload, plus the records of other workloads of the same
   template (``ctx.prior``, one ranking group per workload): transfer learning, so the
   first batch of a new layer is already guided by the layers tuned before it.
2. Score candidates: every unmeasured config when the space is small enough to list
   (exact, and cheap: a few thousand predictions), else the best points found by
   simulated annealing over the model, walking one knob step at a time.
3. Take the top ``(1 - explore)`` of the batch by score and fill the rest at random, so a
   wrong model cannot lock the search out of a region.

Before the model has ``MIN_TRAIN`` samples (counting the prior) batches are random.
"""

from __future__ import annotations

import heapq
import math
from typing import Iterator

import numpy as np

from ...knobs import Config, config_key
from . import SearchContext, register

MIN_TRAIN = 8
EXPLORE = 0.25
LIST_LIMIT = 20_000  # spaces up to this size are scored exhaustively


def relative_throughput(costs: list[float | None]) -> np.ndarray:
    """best cost / cost for each trial (1 = the best), 0 for failed trials."""
    ok = [c for c in costs if c]
    best = min(ok) if ok else 1.0
    return np.array([best / c if c else 0.0 for c in costs])


def train(X: np.ndarray, y: np.ndarray, groups: list[int], seed: int):
    """A pairwise-ranking xgboost model; ``groups`` are the sizes of consecutive workloads."""
    import xgboost as xgb

    dtrain = xgb.DMatrix(X, label=y)
    dtrain.set_group(groups)
    params = {"objective": "rank:pairwise", "max_depth": 6, "eta": 0.2, "subsample": 0.9,
              "min_child_weight": 1, "nthread": 1, "seed": seed, "verbosity": 0}
    booster = xgb.train(params, dtrain, num_boost_round=60)
    return lambda feats: booster.predict(xgb.DMatrix(feats))


@register("model")
def search(ctx: SearchContext) -> Iterator[list[Config]]:
    """Yield model-ranked batches (random ones until there is data to learn from)."""
    listed = list(ctx.space) if ctx.space.raw_size <= LIST_LIMIT else None
    while True:
        seen = ctx.measured()
        predict = _fit(ctx)
        if predict is None:
            batch = ctx.unmeasured_sample(ctx.batch_size)
        else:
            if listed is not None:
                pool = [c for c in listed if config_key(c) not in seen]
                scores = predict(ctx.featurize(pool)) if pool else np.array([])
            else:
                pool, scores = _anneal(ctx, predict, seen, keep=4 * ctx.batch_size)
            order = np.argsort(-scores, kind="stable")
            n_top = max(1, math.ceil((1 - EXPLORE) * ctx.batch_size))
            batch = [pool[i] for i in order[:n_top]]
            chosen = {config_key(c) for c in batch}
            batch += ctx.unmeasured_sample(ctx.batch_size - len(batch), exclude=chosen)
        if not batch:
            return
        yield batch


def _fit(ctx: SearchContext):
    if ctx.featurize is None:
        return None
    X_parts, y_parts, groups = [], [], []
    if ctx.prior is not None:
        Xp, yp, gp = ctx.prior()
        if len(yp):
            X_parts.append(Xp), y_parts.append(yp), groups.extend(gp)
    if ctx.history:
        X_parts.append(ctx.featurize([c for c, _ in ctx.history]))
        y_parts.append(relative_throughput([cost for _, cost in ctx.history]))
        groups.append(len(ctx.history))
    n = sum(len(y) for y in y_parts)
    if n < MIN_TRAIN or not any(np.any(y > 0) for y in y_parts):
        return None
    return train(np.vstack(X_parts), np.concatenate(y_parts), groups, seed=ctx.rng.randrange(2**31))


def _anneal(ctx: SearchContext, predict, seen: set[str], keep: int, chains: int = 64, steps: int = 60):
    """Simulated annealing over the model; returns the ``keep`` best unmeasured points found."""
    rng = ctx.rng
    measured_ok = sorted((cost, i) for i, (_, cost) in enumerate(ctx.history) if cost)
    starts = [ctx.history[i][0] for _, i in measured_ok[: chains // 2]]
    starts += ctx.space.sample(rng, chains - len(starts))
    points = starts
    scores = predict(ctx.featurize(points))
    best: list[tuple[float, str, Config]] = []
    in_heap: set[str] = set()

    def offer(score: float, config: Config) -> None:
        key = config_key(config)
        if key in seen or key in in_heap:
            return
        item = (float(score), key, config)
        if len(best) < keep:
            heapq.heappush(best, item)
            in_heap.add(key)
        elif item[0] > best[0][0]:
            in_heap.discard(heapq.heapreplace(best, item)[1])
            in_heap.add(key)

    for p, s in zip(points, scores):
        offer(s, p)
    spread = float(np.std(scores)) or 1.0
    for step in range(steps):
        temp = spread * (1 - step / steps) + 1e-9
        proposals = []
        for p in points:
            nbrs = ctx.space.neighbours(p)
            proposals.append(rng.choice(nbrs) if nbrs else p)
        new_scores = predict(ctx.featurize(proposals))
        for i, (q, s_new) in enumerate(zip(proposals, new_scores)):
            offer(s_new, q)
            if s_new >= scores[i] or rng.random() < math.exp((s_new - scores[i]) / temp):
                points[i], scores[i] = q, s_new
    best.sort(reverse=True)
    return [c for _, _, c in best], np.array([s for s, _, _ in best])
