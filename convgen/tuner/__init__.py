"""Autotuning: find a fast config for each workload in few trials, never losing work.

>>> results = convgen.tune(spec, "host", trials=64, records="tune.jsonl")
>>> k = convgen.build(spec, "host", records="tune.jsonl")     # the best valid record

Pieces: :mod:`.strategies` (random, grid, model-guided with transfer), :mod:`.measure`
(parallel builds and isolated runs, local or over RPC), :mod:`.campaign` (the budget split
across layers, resume from records), :mod:`.progress` (progress line, summary, plot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..knobs import Config
from ..spec import ConvSpec
from ..target import Target, get_target
from ..timing import Check
from .campaign import DeviceDown
from ..workloads import ConvLayers
from .measure import Builder, Candidate, LocalRunner, RPCRunner, missing_dependencies
from .options import MeasureOptions, SearchOptions

__all__ = ["tune", "TuneResult", "MeasureOptions", "SearchOptions", "LocalRunner", "RPCRunner", "make_tasks",
           "DeviceDown"]




@dataclass
class TuneResult:
    """The outcome for one workload: its best valid config and how it got there."""

    name: str
    spec: ConvSpec
    target: Target
    template: str | None
    config: Config | None
    cost: float | None          # median seconds per call of the best config
    default_cost: float | None  # same for the template's default config
    trials: int
    weight: float = 1.0

    @property
    def gflops(self) -> float:
        return self.spec.flops / self.cost / 1e9 if self.cost else 0.0

    def build(self, **kwargs: Any):
        """Compile the best config (a :class:`convgen.Kernel`)."""
        from ..builder import build

        if self.config is None:
            raise RuntimeError(f"{self.name}: tuning found no valid config")
        return build(self.spec, self.target, self.config, template=self.template, **kwargs)


def _search_options(search: SearchOptions | None, fields: dict[str, Any]) -> SearchOptions:
    """``search`` (default :class:`SearchOptions`) with the keyword ``fields`` of tune() set."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(SearchOptions)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"tune() got unexpected keyword argument(s) {unknown}; search options are {sorted(known)}")
    return dataclasses.replace(search or SearchOptions(), **fields)


def _named(specs: ConvSpec | Iterable[ConvSpec] | Mapping[str, ConvSpec]) -> dict[str, ConvSpec]:
    if isinstance(specs, ConvSpec):
        return {specs.describe(): specs}
    if isinstance(specs, Mapping):
        return dict(specs)
    out = {}
    for s in specs:
        if not isinstance(s, ConvSpec):
            raise TypeError(f"expected ConvSpec objects, got {type(s).__name__}")
        out[s.describe()] = s
    return out


def make_tasks(named: dict[str, ConvSpec], target: Target, template: str | None = None,
               weights: Mapping[str, float] | None = None) -> list:
    """One task per (layer, template): every specialised template that serves the layer
    (the generic fallback only when nothing else does)."""
    from ..builder import check_supported, select_template
    from ..schedules import candidates
    from .campaign import Task

    tasks = []
    for name, spec in named.items():
        check_supported(spec, target)
        if template:
            templates = [select_template(spec, target, template)]
        else:
            found = candidates(spec, target)
            templates = [t for t in found if not t.fallback] or found
        for t in templates:
            label = name if len(templates) == 1 else f"{name}:{t.name}"  # display only
            tasks.append(Task(label, spec, t, weight=(weights or {}).get(name, 1.0), layer=name))
    return tasks


def tune(
    specs: ConvSpec | Iterable[ConvSpec] | Mapping[str, ConvSpec],
    target: str | Target = "host",
    *,
    trials: int | None = 64,
    time_budget: float | None = None,
    records: str | None = None,
    runner: Any = None,
    template: str | None = None,
    options: MeasureOptions | None = None,
    search: SearchOptions | None = None,
    progress: bool = True,
    plot: str | None = None,
    weights: Mapping[str, float] | None = None,
    **search_fields: Any,
) -> dict[str, TuneResult]:
    """Tune one spec, a list, or a ``{name: spec}`` dict for ``target``.

    ``trials`` is the total budget of the campaign and ``time_budget`` its total time in
    seconds (``None``: no limit; give one or both): trials and time already in ``records``
    count, so re-running resumes instead of re-measuring. The time budget is spread over the
    layers by the same expected-gain rule as trials; with ``refine`` on, the search stops
    early by what re-timing the leaders is expected to take. ``runner``: ``None`` (this machine), an
    :class:`RPCRunner`, or a string ``"rpc://host:port"`` / ``"tracker://host:port/key"``.
    ``options``: how candidates are timed (:class:`MeasureOptions`); ``search``: how the
    campaign searches (:class:`SearchOptions`: strategy, batch size, early stopping, seed,
    transfer, refine, device wait), or its fields as keywords (``strategy="random"``).
    Layers given as :func:`convgen.torch.conv_layers` returns them
    (:class:`convgen.workloads.ConvLayers`) are weighted by their counts. Returns the best
    result per workload name.
    """
    from ..peak import reference_peak
    from ..runtime import default_num_threads
    from .campaign import Campaign
    from .progress import Progress, plot_curves

    target = get_target(target)
    options = (options or MeasureOptions()).for_target(target)  # the target's cache flushes, unless given
    search = _search_options(search, search_fields)
    if trials is None and time_budget is None:
        raise ValueError("tune needs a budget: trials=, time_budget= (seconds) or both")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    missing = missing_dependencies(search.strategy)
    if missing:  # before the first trial: a campaign must not find out halfway
        raise RuntimeError(f"tuning needs {', '.join(missing)}, not installed: pip install 'convgen[tune]'")
    if weights is None and isinstance(specs, ConvLayers):
        weights = {name: float(n) for name, n in specs.counts.items()}
    named = _named(specs)
    tasks = make_tasks(named, target, template, weights)
    own_runner = runner is None or isinstance(runner, str)
    given, runner, builder = runner, None, None

    def measure(task, configs: list[Config], check: Check) -> list[Candidate]:
        nonlocal builder
        if builder is None:
            builder = Builder(search.n_parallel_builds, options.build_timeout)
        module = type(task.template).__module__
        cands = [Candidate(task.spec.to_dict(), target.to_dict(), task.template.name, c, module,
                           error_bound=task.template.error_bound) for c in configs]
        builder.build(cands)
        try:
            runner.run_batch(cands, check)
        finally:
            builder.discard(cands)  # measured (and checked): a config timed again is built again
        return cands

    try:
        runner = _make_runner(given, target, options)
        threads = options.num_threads or default_num_threads()
        dtypes = {t.spec.dtype for t in tasks}
        dtype = dtypes.pop() if len(dtypes) == 1 else "float32"  # one peak for the progress line
        peak, _ = reference_peak(target, threads, dtype, here=isinstance(runner, LocalRunner))
        campaign = Campaign(tasks, target, measure=measure, records=records, strategy=search.strategy,
                            batch_size=search.batch_size, early_stopping=search.early_stopping, seed=search.seed,
                            progress=Progress(peak) if progress else None, transfer=search.transfer,
                            device_wait=search.device_wait, timing=options.timing())
        # the search leaves the time the final re-timing is expected to take (estimated as it goes)
        campaign.run(trials, time_budget, refine_top=search.refine)
        if search.refine:
            campaign.refine(top=search.refine, time_limit=time_budget)
    finally:
        if builder is not None:
            builder.close()
        if own_runner and runner is not None:
            runner.close()
    if plot:
        plot_curves(tasks, plot, f"convgen on {target.name}: best GFLOP/s vs trials")
    return _results(named, tasks, target, weights)


def _results(named: dict[str, ConvSpec], tasks: list, target: Target, weights) -> dict[str, TuneResult]:
    out = {}
    for name, spec in named.items():
        mine = [t for t in tasks if t.layer == name]
        best = min((t for t in mine if t.best_cost), key=lambda t: t.best_cost, default=None)
        defaults = [t.default_cost for t in mine if t.default_cost]
        out[name] = TuneResult(
            name=name, spec=spec, target=target,
            template=best.template.name if best else None,
            config=best.best_config if best else None,
            cost=best.best_cost if best else None,
            default_cost=min(defaults) if defaults else None,
            trials=sum(t.trials for t in mine),
            weight=(weights or {}).get(name, 1.0),
        )
    return out


def _make_runner(runner: Any, target: Target, options: MeasureOptions) -> Any:
    if runner is None or runner == "local":
        if not target.runs_here():
            raise ValueError(f"{target.name} kernels cannot run on this machine: tune through a device "
                             f"(runner='rpc://host:port' or 'tracker://host:port/{target.rpc_key}')")
        return LocalRunner(options)
    if isinstance(runner, str):
        if runner.startswith("rpc://"):
            return RPCRunner(rpc=runner[len("rpc://"):], options=options)
        if runner.startswith("tracker://"):
            addr, _, key = runner[len("tracker://"):].partition("/")
            return RPCRunner(tracker=addr, key=key or target.rpc_key, n_parallel=1, options=options)
        raise ValueError(f"runner must be 'local', 'rpc://host:port' or 'tracker://host:port/key', got {runner!r}")
    if not hasattr(runner, "run_batch"):
        raise TypeError("runner must be a LocalRunner/RPCRunner (anything with run_batch) or a string")
    return runner
