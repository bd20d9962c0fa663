"""Campaign logic in simulation (no builds): budget split, early stopping, resume, wrong results."""

import math
import random

import pytest

from convgen import ConvSpec, get_target
from convgen import records as rec
from convgen.knobs import config_key
from convgen.tuner import make_tasks
from convgen.tuner.campaign import Campaign
from convgen.tuner.measure import Candidate

# no host target involved: the --host-target pass of scripts/test.sh skips this module
pytestmark = pytest.mark.host_neutral

TARGET = get_target("x86-avx2")
LAYERS = {
    "big": ConvSpec(in_channels=64, out_channels=64, height=56, width=56, kernel=3, padding=1),
    "mid": ConvSpec(in_channels=128, out_channels=128, height=28, width=28, kernel=3, padding=1),
    "small": ConvSpec(in_channels=16, out_channels=16, height=7, width=7, kernel=1),
}


def fake_measure(flat=(), wrong=(), slow_templates=()):
    """Cost from a hash of the config, scaled by the layer's FLOPs; 'flat' layers never
    improve; templates in 'slow_templates' are 3x slower."""

    def measure(task, configs, check):
        out = []
        for c in configs:
            cand = Candidate(task.spec.to_dict(), TARGET.to_dict(), task.template.name, c)
            h = random.Random(config_key(c) + task.name).random()
            scale = task.spec.flops / 30e9 * (3 if task.template.name in slow_templates else 1)
            cost = scale if task.name in flat else scale * (0.5 + h)
            if config_key(c) in wrong:
                cand.error, cand.verified = "wrong_result", False
                cost = scale * 0.01
            cand.times = [cost] * 3
            if cand.verified is None and check.wanted(cand.times):
                cand.verified = True
            out.append(cand)
        return out

    return measure


def test_budget_goes_where_the_time_is_and_every_layer_starts_with_its_default():
    tasks = make_tasks(LAYERS, TARGET, template="x86.direct")
    camp = Campaign(tasks, TARGET, measure=fake_measure(), records=None, strategy="random", batch_size=4, seed=0)
    camp.run(80)
    by = {t.name: t for t in tasks}
    assert sum(t.trials for t in tasks) == 80
    assert all(t.trials >= 4 for t in tasks)
    assert by["big"].trials > by["small"].trials  # the 1x1 7x7 layer costs almost nothing
    for t in tasks:
        assert config_key(t.ctx.history[0][0]) == config_key(t.template.default(t.spec, TARGET))
        assert t.default_cost is not None and t.best_cost <= t.default_cost


def test_early_stopping_stops_a_flat_layer():
    tasks = make_tasks({"big": LAYERS["big"]}, TARGET, template="x86.direct")
    camp = Campaign(tasks, TARGET, measure=fake_measure(flat={"big"}), records=None, strategy="random",
                    batch_size=4, early_stopping=12, seed=0)
    camp.run(200)
    assert tasks[0].done and tasks[0].trials <= 4 + 12 + 4


def test_wrong_results_are_never_best(tmp_path):
    tasks = make_tasks({"mid": LAYERS["mid"]}, TARGET, template="x86.direct")
    space = tasks[0].template.space(LAYERS["mid"], TARGET)
    wrong = {config_key(c) for c in space}  # every config but the default would be "wrong"
    wrong.discard(config_key(tasks[0].template.default(LAYERS["mid"], TARGET)))
    path = str(tmp_path / "w.jsonl")
    camp = Campaign(tasks, TARGET, measure=fake_measure(wrong=wrong), records=path, strategy="random", batch_size=4)
    camp.run(12)
    assert config_key(tasks[0].best_config) == config_key(tasks[0].template.default(LAYERS["mid"], TARGET))
    assert rec.best_config(LAYERS["mid"], TARGET, path)[1] == tasks[0].best_config


def test_resume_counts_old_trials_and_never_repeats_them(tmp_path):
    path = str(tmp_path / "r.jsonl")
    first = make_tasks(LAYERS, TARGET)  # 3x3 layers get a direct and a Winograd task each
    Campaign(first, TARGET, measure=fake_measure(), records=path, strategy="model", batch_size=4, seed=1).run(24)
    # (the key names the template: a prefetching variant has its template's knobs)
    old = {(r.spec_key, r.template, config_key(r.config)) for r in rec.read(path)}
    second = make_tasks(LAYERS, TARGET)
    camp = Campaign(second, TARGET, measure=fake_measure(), records=path, strategy="model", batch_size=4, seed=1)
    assert camp.total_trials() == 24
    camp.run(40)
    rows = list(rec.read(path))
    assert len(rows) == 40 and len({(r.spec_key, r.template, config_key(r.config)) for r in rows}) == 40
    assert old <= {(r.spec_key, r.template, config_key(r.config)) for r in rows}
    assert all(math.isfinite(t.best_cost) for t in second)


def test_a_layer_served_by_two_templates_gets_a_task_for_each():
    tasks = make_tasks({"big": LAYERS["big"], "small": LAYERS["small"]}, TARGET)
    assert sorted(t.name for t in tasks) == ["big:x86.direct", "big:x86.winograd", "small"]


def test_a_template_far_behind_its_layers_best_gets_few_trials():
    tasks = make_tasks({"big": LAYERS["big"]}, TARGET)
    camp = Campaign(tasks, TARGET, measure=fake_measure(slow_templates={"x86.direct"}), records=None,
                    strategy="random", batch_size=4, seed=0)
    camp.run(30)
    by = {t.template.name: t for t in tasks}
    assert by["x86.winograd"].trials > by["x86.direct"].trials + 4


def test_refine_retimes_the_leaders_and_ranks_by_median(tmp_path):
    path = str(tmp_path / "f.jsonl")
    tasks = make_tasks({"mid": LAYERS["mid"]}, TARGET, template="x86.direct")
    camp = Campaign(tasks, TARGET, measure=fake_measure(), records=path, strategy="random", batch_size=4)
    camp.run(12)
    before = tasks[0].best_cost
    camp.refine(top=3, rounds=2)
    rows = list(rec.read(path))
    assert len(rows) == 12 + 6 and sum(bool(r.data.get("refine")) for r in rows) == 6
    assert tasks[0].trials == 12 and tasks[0].best_cost == before  # the fake timings repeat exactly
    again = make_tasks({"mid": LAYERS["mid"]}, TARGET, template="x86.direct")
    assert Campaign(again, TARGET, measure=fake_measure(), records=path, strategy="random").total_trials() == 12


def _refine_rows(path):
    return [r for r in rec.read(path) if r.data.get("refine")]


def test_a_rerun_finishes_a_refine_the_last_run_did_not(tmp_path):
    path = str(tmp_path / "f.jsonl")

    def campaign(measure):
        tasks = make_tasks({"mid": LAYERS["mid"]}, TARGET, template="x86.direct")
        return Campaign(tasks, TARGET, measure=measure, records=path, strategy="random", batch_size=4)

    campaign(fake_measure()).run(12)  # killed after its trials, before refine
    calls = []

    def dies_on_the_third_call(task, configs, best):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(configs)
        return fake_measure()(task, configs, best)

    second = campaign(dies_on_the_third_call)
    second.run(12)
    assert not calls and second.total_trials() == 12  # the trials are all there
    with pytest.raises(KeyboardInterrupt):
        second.refine(top=3, rounds=2)  # ... but refine is not: it runs, and is killed again
    assert len(_refine_rows(path)) == 2
    third = campaign(fake_measure())
    third.run(12)
    third.refine(top=3, rounds=2)
    rows = _refine_rows(path)
    assert len(rows) == 6
    per_config = {}
    for r in rec.read(path):
        per_config[config_key(r.config)] = per_config.get(config_key(r.config), 0) + 1
    assert sorted(per_config.values())[-3:] == [3, 3, 3] and sum(per_config.values()) == 18
    fourth = campaign(fake_measure())  # a finished refine re-times nothing
    fourth.run(12)
    fourth.refine(top=3, rounds=2)
    assert len(_refine_rows(path)) == 6


def test_a_config_that_ever_failed_is_out_for_the_campaign_as_for_the_records(tmp_path):
    path = str(tmp_path / "c.jsonl")
    tasks = make_tasks({"mid": LAYERS["mid"]}, TARGET, template="x86.direct")
    camp = Campaign(tasks, TARGET, measure=fake_measure(), records=path, strategy="random", batch_size=4)
    camp.run(12)
    leader = config_key(tasks[0].best_config)
    ok = fake_measure()

    def leader_crashes(task, configs, best):
        out = ok(task, configs, best)
        for c in out:
            if config_key(c.config) == leader:
                c.error, c.times, c.verified = "crash", [], None
        return out

    camp.measure = leader_crashes
    camp.refine(top=3, rounds=2)
    assert config_key(tasks[0].best_config) != leader
    assert rec.best_config(LAYERS["mid"], TARGET, path)[1] == tasks[0].best_config
    again = make_tasks({"mid": LAYERS["mid"]}, TARGET, template="x86.direct")
    Campaign(again, TARGET, measure=fake_measure(), records=path, strategy="random")
    assert again[0].best_config == tasks[0].best_config and again[0].best_cost == tasks[0].best_cost


def test_grid_search_in_a_campaign_measures_every_config_once():
    spec = ConvSpec(in_channels=8, out_channels=8, height=7, width=7, kernel=1)
    tasks = make_tasks({"s": spec}, TARGET, template="x86.direct")
    space = tasks[0].template.space(spec, TARGET)
    grid = [config_key(c) for c in space]
    default = config_key(tasks[0].template.default(spec, TARGET))
    assert default not in grid[:5]  # so the default displaces one of the grid's first batch
    camp = Campaign(tasks, TARGET, measure=fake_measure(), records=None, strategy="grid", batch_size=5)
    camp.run(10 * len(grid))
    measured = [config_key(c) for c, _ in tasks[0].ctx.history]
    assert tasks[0].done and sorted(measured) == sorted(grid)


def test_the_same_workload_twice_is_refused():
    spec = LAYERS["small"]
    tasks = make_tasks({"a": spec, "b": ConvSpec.from_dict(spec.to_dict())}, TARGET)
    with pytest.raises(ValueError, match="'a' and 'b' are the same workload"):
        Campaign(tasks, TARGET, measure=fake_measure(), records=None, strategy="random")


class FakeClock:
    """Simulated time: each measured config advances it by its task's cost (a trial of the
    'big' layer takes 3 s, others 1 s, +-20% noise), so budgets are checked without waiting."""

    def __init__(self):
        self.now = 0.0
        self.rng = random.Random(5)

    def __call__(self):
        return self.now

    def measure(self, inner):
        def measure(task, configs, check):
            self.now += sum((3.0 if task.layer == "big" else 1.0) * self.rng.uniform(0.8, 1.2) for _ in configs)
            return inner(task, configs, check)

        return measure


def _timed_campaign(path, clock):
    tasks = make_tasks(LAYERS, TARGET, template="x86.direct")
    return Campaign(tasks, TARGET, measure=clock.measure(fake_measure()), records=path, strategy="random",
                    batch_size=8, clock=clock)


def test_a_time_budget_ends_the_campaign_within_five_percent_and_a_rerun_resumes(tmp_path):
    path = str(tmp_path / "t.jsonl")
    clock = FakeClock()
    camp = _timed_campaign(path, clock)
    camp.run(None, time_limit=100.0, refine_top=3)  # leaves the time refine is expected to take
    camp.refine(top=3, rounds=2, time_limit=100.0)
    assert 95.0 <= clock.now <= 105.0 and camp.spent() == pytest.approx(clock.now)
    assert all(t.trials for t in camp.tasks)  # the budget was spread, every layer measured
    n = len(list(rec.read(path)))
    # the same budget again: the time in the records counts, nothing more is measured
    again = _timed_campaign(path, FakeClock())
    assert again.spent_before == pytest.approx(clock.now, abs=0.01 * n)
    again.run(None, time_limit=100.0, refine_top=3)
    again.refine(top=3, rounds=2, time_limit=100.0)
    assert len(list(rec.read(path))) == n
    # a larger budget resumes where the first stopped and spends only the difference
    more_clock = FakeClock()
    more = _timed_campaign(path, more_clock)
    more.run(None, time_limit=150.0)
    assert 150.0 - 105.0 <= more_clock.now <= 150.0 * 1.05 - again.spent_before + 5.0
    assert more.spent() <= 150.0 * 1.05 and more.total_trials() > again.total_trials()


def test_a_campaign_stores_its_timing_and_resumes_only_from_records_timed_alike(tmp_path):
    path = str(tmp_path / "r.jsonl")
    layers = {"small": LAYERS["small"]}
    # an older campaign's records, timed under another condition (no "timing": a hot loop or
    # a byte flush): their times do not compare, so they are not this campaign's trials
    Campaign(make_tasks(layers, TARGET), TARGET, measure=fake_measure(), records=path, strategy="random",
             batch_size=4, seed=0).run(8)
    assert all(r.timing is None for r in rec.read(path))
    camp = Campaign(make_tasks(layers, TARGET), TARGET, measure=fake_measure(), records=path, strategy="random",
                    batch_size=4, seed=0, timing="args")
    assert camp.total_trials() == 0
    camp.run(8)
    mine = [r for r in rec.read(path) if r.timing == "args"]
    assert len(mine) == 8
    again = Campaign(make_tasks(layers, TARGET), TARGET, measure=fake_measure(), records=path, strategy="random",
                     batch_size=4, seed=0, timing="args")
    assert again.total_trials() == 8
