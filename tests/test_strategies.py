"""Search strategies in simulation, no builds: synthetic costs over real knob spaces, and a
replay of the shipped records (each config's recorded timing served as its cost).

Every test of what any strategy must do runs over every registered strategy
(``STRATEGIES``): a new strategy is tested by registering it, without editing this file.
"""

import math
import random

import numpy as np
import pytest

from convgen import ConvSpec, get_target
from convgen.knobs import config_key
from convgen.schedules import get_template
from convgen.tuner.features import Featurizer
from convgen.knobs import Space
from convgen.tuner.strategies import STRATEGIES, SearchContext, get_strategy

# no host target involved: the --host-target pass of scripts/test.sh skips this module
pytestmark = pytest.mark.host_neutral

TARGET = get_target("x86-avx2")
TEMPLATE = get_template("x86.direct")
SPEC = ConvSpec(in_channels=64, out_channels=64, height=56, width=56, kernel=3, padding=1)
OTHER = ConvSpec(in_channels=128, out_channels=128, height=28, width=28, kernel=3, padding=1)


def synthetic_cost(spec):
    """A made-up but structured cost: best at a register tile of ~12 accumulators, small ic blocks,
    with knob interactions a model can learn and noise it must tolerate."""
    rng = random.Random(spec.key)
    noise = {}

    def cost(c):
        acc = c["tile_oh"] * c["tile_ow"] * c["tile_oc"] / 8
        t = 1.0 + 0.08 * (acc - 12) ** 2 / 12 + 0.15 * abs(math.log2(c["tile_ic"]) - 3)
        t *= 1.0 if c["unroll_kw"] else 1.1
        t *= 1.0 if c["reduce_order"] == "ic_kh_kw" else 1.05
        k = config_key(c)
        noise.setdefault(k, 1 + 0.03 * rng.random())
        return t * noise[k] * spec.flops / 1e11

    return cost


def run(strategy, spec, budget, seed, prior=None):
    space = TEMPLATE.space(spec, TARGET)
    ctx = SearchContext(space, random.Random(seed), batch_size=8, featurize=Featurizer(spec, TARGET, TEMPLATE), prior=prior)
    cost = synthetic_cost(spec)
    for batch in get_strategy(strategy)(ctx):
        for c in batch:
            assert c in space
            ctx.history.append((c, cost(c)))
        if len(ctx.history) >= budget:
            break
    return ctx


def best_possible(spec):
    cost = synthetic_cost(spec)
    return min(cost(c) for c in TEMPLATE.space(spec, TARGET))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_never_repeat_and_stay_in_space(strategy):
    ctx = run(strategy, SPEC, 64, seed=1)
    keys = [config_key(c) for c, _ in ctx.history]
    assert len(keys) == len(set(keys)) >= 64


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_exhausts_a_small_space_then_stops(strategy):
    spec = ConvSpec(in_channels=8, out_channels=8, height=7, width=7, kernel=1)
    space = TEMPLATE.space(spec, TARGET)
    ctx = SearchContext(space, random.Random(0), batch_size=5, featurize=Featurizer(spec, TARGET, TEMPLATE))
    seen = []
    for batch in get_strategy(strategy)(ctx):
        seen += batch
        ctx.history += [(c, 1.0 + len(ctx.history)) for c in batch]
        assert len(seen) <= len(space)
    assert len(seen) == len(space) and len({config_key(c) for c in seen}) == len(space)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seed_makes_runs_reproducible(strategy):
    a = [config_key(c) for c, _ in run(strategy, SPEC, 32, seed=7).history]
    b = [config_key(c) for c, _ in run(strategy, SPEC, 32, seed=7).history]
    assert a == b


# ---- replay: the shipped records as the cost function -----------------------------------------
def _replays(n: int = 3, least: int = 6) -> list:
    """The ``n`` (spec, target, template) groups of the shipped records with the most distinct
    valid configs (at least ``least``): ``(name, space restricted to those configs, costs)``."""
    from convgen import records as rec
    from convgen.schedules import get_template

    groups: dict[tuple, dict[str, tuple]] = {}
    for cost, r in rec._aggregate(rec.read(rec.builtin_record_files(), warn=False)).values():
        if rec.Staleness().current(r):
            groups.setdefault((r.spec_key, r.target, r.template), {})[config_key(r.config)] = (r.config, cost, r)
    out = []
    for (key, target, template), configs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:n]:
        if len(configs) < least:
            continue
        any_record = next(iter(configs.values()))[2]
        tmpl, tgt = get_template(template), get_target(target)
        full = tmpl.space(any_record.spec, tgt)
        recorded = {k: c for k, (_, c, _) in configs.items()}
        # the template's own space, restricted to the configs the records timed
        space = Space(full.template, full.version, full.knobs,
                      lambda c, full=full, recorded=recorded: full.why_illegal(c) or
                      (None if config_key(c) in recorded else "not in the records"))
        out.append((f"{template}:{key[:40]}", space, recorded, Featurizer(any_record.spec, tgt, tmpl)))
    return out


REPLAYS = _replays()


@pytest.mark.skipif(not REPLAYS, reason="no shipped records with enough configs of one layer")
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("replay", REPLAYS, ids=[r[0] for r in REPLAYS])
def test_every_strategy_replayed_on_shipped_records_finds_the_recorded_best(strategy, replay):
    _, space, recorded, featurize = replay
    ctx = SearchContext(space, random.Random(1), batch_size=4, featurize=featurize)
    for batch in get_strategy(strategy)(ctx):
        for c in batch:
            assert config_key(c) in recorded  # proposes only what the space allows
            ctx.history.append((c, recorded[config_key(c)]))
        if len(ctx.history) >= len(recorded):
            break
    keys = [config_key(c) for c, _ in ctx.history]
    assert len(keys) == len(set(keys)) == len(recorded)  # the whole table, each config once
    assert min(cost for _, cost in ctx.history) == min(recorded.values())


def test_model_beats_random_with_the_same_budget():
    # The same 48-trial budget over 6 seeds: the model-guided search gets closer to the
    # optimum than random sampling on average (deterministic seeds, no timing).
    opt = best_possible(SPEC)
    gap = {s: [] for s in ("model", "random")}
    for seed in range(6):
        for s in gap:
            ctx = run(s, SPEC, 48, seed)
            gap[s].append(min(c for _, c in ctx.history) / opt - 1)
    assert np.mean(gap["model"]) < np.mean(gap["random"])
    assert np.mean(gap["model"]) < 0.10


def test_transfer_from_another_layer_guides_the_first_batch():
    # 64 results of another layer as prior: the first model batch of a fresh layer is
    # already better than a random first batch.
    donor = run("random", OTHER, 64, seed=3)
    feat = Featurizer(OTHER, TARGET, TEMPLATE)
    from convgen.tuner.strategies.model_based import relative_throughput

    X = feat([c for c, _ in donor.history])
    y = relative_throughput([c for _, c in donor.history])
    prior = lambda: (X, y, [len(y)])  # noqa: E731
    firsts = {"transfer": [], "random": []}
    for seed in range(4):
        firsts["transfer"].append(min(c for _, c in run("model", SPEC, 8, seed, prior=prior).history))
        firsts["random"].append(min(c for _, c in run("random", SPEC, 8, seed).history))
    assert np.mean(firsts["transfer"]) < np.mean(firsts["random"])


def test_failed_trials_do_not_break_the_model():
    space = TEMPLATE.space(SPEC, TARGET)
    ctx = SearchContext(space, random.Random(0), batch_size=8, featurize=Featurizer(SPEC, TARGET, TEMPLATE))
    gen = get_strategy("model")(ctx)
    for _ in range(4):
        batch = next(gen)
        ctx.history += [(c, None if i % 2 else 1.0 + i) for i, c in enumerate(batch)]
    assert len(next(gen)) == 8


def test_annealing_path_for_spaces_too_big_to_list(monkeypatch):
    from convgen.tuner.strategies import model_based

    monkeypatch.setattr(model_based, "LIST_LIMIT", 10)
    ctx = run("model", SPEC, 40, seed=2)
    keys = [config_key(c) for c, _ in ctx.history]
    assert len(keys) == len(set(keys)) >= 40


def test_unknown_strategy():
    with pytest.raises(ValueError, match="known: " + ", ".join(STRATEGIES)):
        get_strategy("bayes")


def test_the_cli_choices_are_the_strategies():
    from convgen.cli import make_parser

    tune = make_parser()._subparsers._group_actions[0].choices["tune"]
    strategy = next(a for a in tune._actions if a.dest == "strategy")
    assert tuple(strategy.choices) == STRATEGIES and {"random", "grid", "model"} <= set(STRATEGIES)
    assert all(callable(get_strategy(name)) for name in STRATEGIES)
