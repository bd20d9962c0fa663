"""A tuning campaign: many layers, one trial budget, records that survive anything.

Each (layer, template) is a :class:`Task` with its own search strategy. The campaign

1. resumes every task from the records file: trials already measured count towards the
   budget and are never measured again (a workload may appear once per template: give a
   repeated layer a ``weight`` instead of a second task);
2. measures each task's default config first (the baseline the tuned kernel must beat);
3. gives each next batch to the task where one more batch is expected to save the most
   time (below), as Ansor's task scheduler does; a task stops early after
   ``early_stopping`` trials without improvement, or when its space is exhausted;
4. appends one record per trial as soon as it is measured (and verified, for a new best).

Expected gain of a batch on task *i* (latency ``t_i`` after ``n_i`` trials): the recent
rate of improvement ``r_i = (t_i[n_i - w] - t_i) / w`` over a window of ``w`` trials,
floored by an optimistic ``t_i / (n_i + 1) * 0.1`` so a flat stretch does not starve a
layer; the batch is projected to reach ``t_i - r_i * batch``, and what counts is how far
that beats the best of the layer's tasks (a direct template far behind its layer's Winograd
task saves nothing), times the number of times the layer occurs in the network
(``weight``). When no task is projected to gain, the highest rate gets the batch.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import records as rec
from ..errors import DeviceDown, ErrorKind
from ..knobs import Config, config_key
from ..spec import ConvSpec
from ..target import Target
from ..timing import ALWAYS, NEVER, Check
from .features import Featurizer
from .measure import Candidate
from .strategies import SearchContext, get_strategy
from .strategies.model_based import relative_throughput

WINDOW = 16
TIME_MARGIN = 1.1  # a batch must fit the time left with 10% to spare: trials' times vary



@dataclass
class Task:
    """Tuning one layer with one template."""

    name: str                # what the progress line and the records say ("layer:template")
    spec: ConvSpec
    template: Any
    weight: float = 1.0
    layer: str = ""          # the workload's name, which several tasks (templates) may share
    ctx: SearchContext | None = None
    search: Any = None
    best_cost: float | None = None
    best_config: Config | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (trial, best GFLOP/s so far)
    trials: int = 0          # measured for this task, resumed ones included
    new_trials: int = 0      # measured in this run
    since_improvement: int = 0
    done: bool = False
    default: Config = field(default_factory=dict)  # the template's default config (the campaign sets it)
    default_cost: float | None = None
    ruled_out: set[str] = field(default_factory=set)  # configs that ever failed (records.outcome): out for good
    costs: dict[str, list[float]] = field(default_factory=dict)    # config key -> every good timing
    config_by_key: dict[str, Config] = field(default_factory=dict)
    pending: list[Config] = field(default_factory=list)  # proposed, not measured yet (next batch)

    def __post_init__(self) -> None:
        self.layer = self.layer or self.name

    @property
    def best_gflops(self) -> float:
        """GFLOP/s of the best valid config so far (0 before there is one)."""
        return self.spec.flops / self.best_cost / 1e9 if self.best_cost else 0.0

    def config_costs(self) -> dict[str, float]:
        """Median timing per config; configs that ever failed or gave a wrong result are out,
        as :func:`convgen.records.best_config` leaves them out."""
        return {k: rec.median(v) for k, v in self.costs.items() if v and k not in self.ruled_out}

    def _note(self, config: Config, cost: float | None, verified: bool | None, error: str | None) -> None:
        key = config_key(config)
        self.config_by_key[key] = dict(config)
        verdict = rec.outcome(error, cost, verified)  # the rule records judge by, too
        if verdict is rec.Outcome.TIMED:
            self.costs.setdefault(key, []).append(cost)
        elif verdict is rec.Outcome.FAILED:
            self.ruled_out.add(key)

    def remeasured(self, config: Config, cost: float | None, verified: bool | None, error: str | None = None) -> None:
        """Account for a repeated timing of a measured config (not a new trial); ``cost`` is
        ``None`` for a failed one, ``error`` its kind."""
        self._note(config, cost, verified, error)
        agg = self.config_costs()
        if agg:
            key = min(agg, key=agg.get)
            self.best_cost, self.best_config = agg[key], dict(self.config_by_key[key])
        else:
            self.best_cost = self.best_config = None

    def record(self, config: Config, cost: float | None, verified: bool | None, error: str | None = None) -> bool:
        """Account for one measurement; returns True if it is a new (verified) best. ``cost``
        is ``None`` for a failed trial, ``error`` its kind."""
        self._note(config, cost, verified, error)
        self.ctx.history.append((config, cost))
        self.trials += 1
        improved = False
        if cost is not None and verified is not False and (self.best_cost is None or cost < self.best_cost):
            self.best_cost, self.best_config, improved = cost, dict(config), True
            self.since_improvement = 0
        else:
            self.since_improvement += 1
        self.curve.append((self.trials, self.best_gflops))
        return improved

    def improvement_rate(self) -> float:
        """Seconds of latency one more trial is expected to save on this task."""
        if self.best_cost is None:
            return math.inf
        w = min(WINDOW, len(self.curve) - 1)
        backward = 0.0
        if w > 0:
            then, now = self.curve[-1 - w][1], self.curve[-1][1]
            if then > 0 and now > 0:
                # GFLOP/s curve -> latency curve
                backward = (self.spec.flops / then / 1e9 - self.spec.flops / now / 1e9) / w
        optimistic = self.best_cost / (self.trials + 1) * 0.1
        return max(backward, optimistic)

    def expected_gain(self, layer_best: float, batch: int) -> float:
        """Seconds per inference one more batch is expected to save *for the layer*: a
        template whose projected best stays behind the layer's best saves nothing."""
        if self.best_cost is None:
            return math.inf
        projected = self.best_cost - self.improvement_rate() * batch
        return self.weight * max(layer_best - projected, 0.0)


class Campaign:
    """Runs tasks to a total trial budget with a measurer, writing records as it goes."""

    def __init__(self, tasks: list[Task], target: Target, *, measure: Callable[[Task, list[Config], Check], list[Candidate]],
                 records: str | None, strategy: str = "model", batch_size: int = 8, early_stopping: int | None = None,
                 seed: int = 0, progress: Any = None, transfer: bool = True, device_wait: float = 300.0,
                 timing: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.tasks, self.target = tasks, target
        # the timing condition (MeasureOptions.timing): stored in each record; a resumed run
        # takes only the records of its own condition (another's times do not compare)
        self.timing = timing
        self.device_wait = device_wait  # how long a device may stay unreachable before the campaign stops
        self._sleep = sleep
        self._clock = clock
        self.spent_before = 0.0  # seconds earlier runs spent on these tasks (their records' wall_s)
        self._resumed_walls = 0  # how many records gave it
        self._started: float | None = None  # clock() when this run's first measurement began
        self._mark = 0.0                    # clock() when the last batch ended
        self._walls: dict[str, list[float]] = {}  # task name -> seconds per trial in this run (estimates)
        self.measure = measure
        if records:
            rec.check_path(records)  # a folder or a FIFO is refused before the first trial
        self.records = records
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.progress = progress
        self.transfer = transfer
        _refuse_duplicates(tasks)
        rng = random.Random(seed)
        search = get_strategy(strategy)
        for task in tasks:
            feat = Featurizer(task.spec, target, task.template)
            task.ctx = SearchContext(task.template.space(task.spec, target), random.Random(rng.randrange(2**31)),
                                     batch_size, featurize=feat, prior=self._prior_for(task) if transfer else None)
            task.search = search(task.ctx)
            task.default = task.template.default(task.spec, target)
        self._resume()

    # -- resume ---------------------------------------------------------------------------
    def _resume(self) -> None:
        if not self.records or not os.path.exists(self.records):
            return  # a new records file: created by the first append
        by_key = {(t.spec.key, t.template.name, t.ctx.space.hash): t for t in self.tasks}
        seen: set[tuple] = set()
        for r in rec.same_tvm(rec.read(self.records)):
            if r.target != self.target.name or (self.timing is not None and r.timing != self.timing):
                continue
            task = by_key.get((r.spec_key, r.template, r.space_hash))
            if task is None or r.config not in task.ctx.space:
                continue
            k = r.trial_key()
            verified = r.data.get("verified")
            wall = r.data.get("wall_s")
            if isinstance(wall, (int, float)) and not isinstance(wall, bool) and math.isfinite(wall) and wall > 0:
                self.spent_before += wall
                self._resumed_walls += 1
            if k in seen:  # a repeated timing (refine): not a trial of its own
                task.remeasured(r.config, r.median if r.ok else None, verified, r.error)
                continue
            seen.add(k)
            task.record(r.config, r.median if r.ok else None, verified, r.error)
        for task in self.tasks:
            self._note_default(task)

    def _note_default(self, task: Task) -> None:
        """The default config's cost: the median of its timings, like every other config's."""
        key = config_key(task.default)  # (one config: not the whole config_costs() per trial)
        timings = task.costs.get(key)
        if timings and key not in task.ruled_out:
            task.default_cost = rec.median(timings)

    # -- transfer ---------------------------------------------------------------------------
    def _prior_for(self, task: Task):
        """Other tasks' measurements with the same template, as ranking groups."""

        def prior():
            X, y, groups = [], [], []
            for other in self.tasks:
                if other is task or other.template.name != task.template.name or not other.ctx.history:
                    continue
                X.append(other.ctx.featurize([c for c, _ in other.ctx.history]))
                y.append(relative_throughput([cost for _, cost in other.ctx.history]))
                groups.append(len(other.ctx.history))
            if not X:
                return np.zeros((0, len(task.ctx.featurize.keys))), np.zeros(0), []
            return np.vstack(X), np.concatenate(y), groups

        return prior

    # -- the loop ---------------------------------------------------------------------------
    def total_trials(self) -> int:
        """Trials measured so far over every task, resumed ones included."""
        return sum(t.trials for t in self.tasks)

    def _next_batch(self, task: Task, n: int | None = None) -> list[Config]:
        """Up to ``n`` unmeasured configs (the default first for a fresh task).

        The strategy is asked for at most one batch per call (it expects the measurements
        in between); proposals that do not fit are kept in ``task.pending`` for the next
        call, never dropped (grid search would not propose them again).
        """
        n = n or self.batch_size
        queue = list(task.pending)
        if task.default_cost is None and task.trials == 0:
            queue.insert(0, task.default)
        queue = _unmeasured(task, queue)
        if len(queue) < n:
            try:
                queue = _unmeasured(task, queue + list(next(task.search)))
            except StopIteration:
                pass
        task.pending = queue[n:]
        return queue[:n]

    def _pick(self) -> Task | None:
        live = [t for t in self.tasks if not t.done]
        if not live:
            return None
        fresh = [t for t in live if t.trials == 0]
        if fresh:
            return fresh[0]
        layer_best: dict[str, float] = {}
        for t in self.tasks:
            if t.best_cost is not None:
                layer_best[t.spec.key] = min(layer_best.get(t.spec.key, math.inf), t.best_cost)
        gains = [(t.expected_gain(layer_best.get(t.spec.key, math.inf), self.batch_size), t) for t in live]
        best_gain, task = max(gains, key=lambda g: g[0])
        if best_gain > 0:
            return task
        # nothing is projected to beat its layer's best: keep exploring where the rate is highest
        return max(live, key=lambda t: t.weight * t.improvement_rate())

    # -- time ------------------------------------------------------------------------------
    def spent(self) -> float:
        """Seconds spent on these tasks: earlier runs' (from the records) and this run's so far."""
        now = 0.0 if self._started is None else self._clock() - self._started
        return self.spent_before + now

    def _seconds_per_trial(self, task: Task | None = None) -> float | None:
        """What one more trial of ``task`` is expected to cost: its recent trials in this run,
        else the slowest task's (templates differ: Winograd builds take longer); ``None``
        before any trial."""
        walls = self._walls.get(task.name) if task is not None else None
        if walls:
            return sum(walls[-16:]) / len(walls[-16:])
        means = [sum(w[-16:]) / len(w[-16:]) for w in self._walls.values() if w]
        if means:
            return max(means)
        return self.spent_before / self._resumed_walls if self._resumed_walls else None

    def _fit(self, n: int, time_limit: float | None, task: Task | None = None) -> int:
        """How many of ``n`` more trials of ``task`` fit before ``time_limit`` (seconds of
        :meth:`spent`), with a margin for timing noise."""
        if time_limit is None:
            return n
        left = time_limit - self.spent()
        per_trial = self._seconds_per_trial(task)
        if left <= 0:
            return 0
        return n if per_trial is None else min(n, int(left / (per_trial * TIME_MARGIN)))

    def _start_clock(self) -> None:
        if self._started is None:
            self._started = self._mark = self._clock()

    def _account(self, task: Task, c: Candidate, refine: bool = False, wall: float = 0.0) -> None:
        cost = c.cost if c.error is None else None
        if refine:
            task.remeasured(c.config, cost, c.verified, c.error)
        else:
            task.record(c.config, cost, c.verified, c.error)
            task.new_trials += 1
        self._note_default(task)
        if self.records:
            # wall_s: this trial's share of the run's wall time (search, build, run), which a
            # resumed campaign counts against its time budget
            extra = {"verified": c.verified, "task": task.name, "build_s": round(c.build_s, 3), "wall_s": round(wall, 3)}
            if self.timing is not None:
                extra["timing"] = self.timing
            if refine:
                extra["refine"] = True
            rec.append(self.records, [rec.make_record(task.spec, self.target, task.template, c.config,
                                                      times=c.times or None, error=c.error,
                                                      message=c.message, extra=extra)])

    def refine_estimate(self, top: int = 3, rounds: int = 2) -> float:
        """Seconds :meth:`refine` is expected to take now: each layer's leaders (at most
        ``top``) timed ``rounds`` more times, at this run's seconds per trial."""
        layers: dict[str, tuple[int, float]] = {}  # layer -> (configs timed, slowest seconds per trial)
        for t in self.tasks:
            n, per = layers.get(t.spec.key, (0, 0.0))
            layers[t.spec.key] = (n + len(t.config_costs()), max(per, self._seconds_per_trial(t) or 0.0))
        return rounds * sum(min(top, n) * per for n, per in layers.values())

    def refine(self, top: int = 3, rounds: int = 2, time_limit: float | None = None) -> None:
        """Time each layer's fastest configs again, round after round.

        A shared machine has slow spells (a neighbour, two vCPUs landing on one physical
        core); a config timed in one looks worse than it is, one timed in a lucky moment
        better. Re-timing the leaders in alternating order and ranking them by the median
        over all their measurements makes the final choice robust. Each candidate is
        checked against the reference once more on its first re-timing.

        A layer whose winner already has ``1 + rounds`` timings is left alone, and a leader
        timed that often (in this run or one resumed from the records) is not timed again:
        a campaign killed during refine finishes it when run again, a finished one re-times
        nothing. ``time_limit``: stop once :meth:`spent` would pass it (the layers not reached
        keep the ranking of the search).
        """
        self._start_clock()
        layers: dict[str, list[Task]] = {}
        for t in self.tasks:
            layers.setdefault(t.spec.key, []).append(t)
        t0 = time.perf_counter()
        for i, tasks in enumerate(layers.values()):
            if self.progress:
                self.progress.refining(i, len(layers), tasks[0].layer or tasks[0].name, time.perf_counter() - t0)
            for _ in range(3):  # re-timings move the medians: a config outside the leaders may win
                leaders = sorted(((cost, t, cfg) for t in tasks for cfg, cost in t.config_costs().items()),
                                 key=lambda x: x[0])[:top]
                if not leaders or len(leaders[0][1].costs.get(leaders[0][2], [])) > rounds:
                    break  # the layer's winner stands on 1 + rounds timings
                if self._fit(len(leaders) * rounds, time_limit, leaders[0][1]) < len(leaders) * rounds:
                    break  # no time left to re-time this layer's leaders
                self._retime(leaders, rounds)
        if self.progress and layers:
            self.progress.refining(len(layers), len(layers), "done", time.perf_counter() - t0)
            self.progress.finish(self)

    def _retime(self, leaders: list, rounds: int) -> None:
        """Time ``leaders`` (cost, task, config key) until each has ``1 + rounds`` timings."""
        for r in range(rounds):
            due: dict[int, list[str]] = {}  # per task (by position): configs to time this round
            check = False
            for _, task, cfg in (leaders if r % 2 == 0 else leaders[::-1]):
                if cfg in task.ruled_out:
                    continue  # failed in an earlier round: out of the running
                timed = len(task.costs.get(cfg, []))
                if timed > r + 1:
                    continue  # this round's timing is in the records already
                due.setdefault(self.tasks.index(task), []).append(cfg)
                check |= timed <= 1  # a leader's first re-timing checks it against the reference
            for k, cfgs in due.items():
                task = self.tasks[k]
                configs = [task.config_by_key[cfg] for cfg in cfgs]
                # checking: one call per config (a batch checks only what beats its running
                # best); timing only: one batch, its builds in parallel
                batches = [[c] for c in configs] if check else [configs]
                for batch in batches:
                    self._measure(task, batch, ALWAYS if check else NEVER, refine=True)

    def _measure(self, task: Task, configs: list[Config], check: Check, refine: bool = False) -> int:
        """Measure ``configs`` and account for each result; returns how many were measured.

        A config the device could not run (error kind ``device``: the board is down, the
        tracker grants none) is no trial: it is neither counted nor recorded, and measured
        again after a pause that doubles from 5 s up to a minute. When the device has stayed
        unreachable for ``device_wait`` seconds the campaign stops with :class:`DeviceDown`;
        everything measured before is in the records, and the same command resumes.
        """
        waited, pause, done = 0.0, 5.0, 0
        self._start_clock()
        while configs:
            down = []
            results = self.measure(task, configs, check)
            now = self._clock()
            wall = (now - self._mark) / max(len(results), 1)  # since the last batch: search, build, run
            self._mark = now
            for c in results:
                if c.error == ErrorKind.DEVICE:
                    down.append(c)
                else:
                    self._account(task, c, refine, wall)
                    self._walls.setdefault(task.name, []).append(wall)
                    done += 1
            if not down:
                break
            if waited >= self.device_wait:
                raise DeviceDown(f"the device has not run a kernel for {waited:.0f} s ({down[0].message}); "
                                 f"stopping with {self.total_trials()} trials measured"
                                 f"{f' (in {self.records}: run the same command again to resume)' if self.records else ''}")
            print(f"convgen: the device is unreachable ({down[0].message}); trying again in {pause:.0f} s",
                  file=sys.stderr)
            self._sleep(pause)
            self._mark = self._clock()  # waiting for a device is no trial's time
            waited += pause
            pause = min(2 * pause, 60.0)
            configs = [c.config for c in down]
        return done

    def run(self, trials: int | None, time_limit: float | None = None, *, refine_top: int = 0,
            refine_rounds: int = 2) -> None:
        """Measure until ``trials`` trials exist in total (resumed ones count; ``None``: no
        limit), :meth:`spent` reaches ``time_limit`` seconds (resumed runs' time counts), or
        every task is done. Near the time limit batches shrink to what is expected to fit, so
        the campaign ends within about one trial's time of it. ``refine_top`` > 0 leaves
        time for :meth:`refine` with that ``top`` before the limit: its re-timings, estimated
        from this run's seconds per trial as it goes (:meth:`refine_estimate`)."""
        if trials is None and time_limit is None:
            raise ValueError("give a trial budget, a time limit or both")
        trials = sys.maxsize if trials is None else trials
        for t in self.tasks:
            if self.early_stopping and t.since_improvement >= self.early_stopping and t.best_cost is not None:
                t.done = True
        if self.progress:
            self.progress.start(self, trials, time_limit)
        while self.total_trials() < trials:
            task = self._pick()
            if task is None:
                break
            limit = time_limit
            if limit is not None and refine_top:
                limit -= self.refine_estimate(refine_top, refine_rounds)
            budget = self._fit(min(self.batch_size, trials - self.total_trials()), limit, task)
            if budget < 1:
                break  # the time budget is spent (or the next trial would overrun it)
            batch = self._next_batch(task, budget)
            if not batch:
                task.done = True
                continue
            t0 = time.perf_counter()
            # a new best is checked against the reference before it can win
            measured = self._measure(task, batch, ALWAYS if task.best_cost is None else Check(task.best_cost))
            if self.early_stopping and task.since_improvement >= self.early_stopping:
                task.done = True
            if self.progress:
                self.progress.update(self, task, time.perf_counter() - t0, measured)
        if self.progress:
            self.progress.finish(self)


def _unmeasured(task: Task, configs: list[Config]) -> list[Config]:
    """``configs`` without the ones ``task`` measured already, and without repeats."""
    seen = task.ctx.measured()
    out = []
    for c in configs:
        k = config_key(c)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def _refuse_duplicates(tasks: list[Task]) -> None:
    """Two tasks of one workload and template would measure everything twice, and resume
    could credit both tasks' records to one of them: refuse them."""
    seen: dict[tuple[str, str], Task] = {}
    for t in tasks:
        k = (t.spec.key, t.template.name)
        if k in seen:
            raise ValueError(f"{seen[k].name!r} and {t.name!r} are the same workload ({t.spec.describe()}) with "
                             f"the same template: list it once (give it a weight to count it several times)")
        seen[k] = t
