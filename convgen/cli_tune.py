"""``convgen tune`` and ``convgen records``: campaigns and the logs they leave."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterable

TUNE_EPILOG = """\
examples:
  convgen tune --layer resnet50.r2_3x3 --trials 64 -o conv.so
  convgen tune --preset resnet18 --trials 400 --plot curves.png
  convgen tune --workload layers.toml --trials 200 --records my.jsonl
  convgen tune --layer resnet50.r4_3x3 --target arm-neon --rpc 127.0.0.1:9090
  convgen tune --preset mobilenet_v2 --target arm-neon --tracker 10.0.0.2:9190 --key rk3399 --parallel 4
  convgen tune --torch-model convgen.torch.models:resnet50 --input-shape 1,3,224,224 --trials 800

Trials already in --records count towards --trials: run the same command again and it
resumes where it stopped (a campaign killed at any point loses at most the trial in flight).
"""

RECORDS_EPILOG = """\
examples:
  convgen records show convgen-records.jsonl         # best per workload and target
  convgen records merge all.jsonl a.jsonl b.jsonl    # one file, duplicates dropped
  convgen records prune convgen-records.jsonl --keep 5 -o small.jsonl

merge and prune may rewrite a file a tuner is appending to: they hold the appenders' lock
while they read and replace it.
"""

PRUNE_DESCRIPTION = """\
Keep every record of the --keep best candidates per (workload, target, template), and
nothing else. A candidate is one config of one template version, ranked by the median of
all its timings, as `convgen build --records` ranks it; a candidate that ever failed or
gave a wrong result is dropped with all its records, and so (unless --keep-stale) is one
made against another version of its template. Records for a target this convgen does not
know are ranked and kept the same way, without the version check (it needs the target).
"""


def add_tune_parsers(sub: Any, fmt: Any, add_spec_args: Any, cmd_tune: Any, cmd_records: Any) -> None:
    """Register the ``tune`` and ``records`` subcommands."""
    from .cli import nonnegative_int, positive_float, positive_int
    from .tuner.strategies import STRATEGIES

    s = sub.add_parser("tune", help="autotune one layer or a whole network", formatter_class=fmt, epilog=TUNE_EPILOG,
                       description="Search each layer's knob space by building and timing real kernels. The budget "
                                   "is split across layers where it saves the most time; every trial is appended "
                                   "to the records file at once.")
    add_spec_args(s)
    g = s.add_argument_group("campaign")
    g.add_argument("--preset", help="every layer of a built-in network: resnet18, resnet50, mobilenet_v1, mobilenet_v2")
    g.add_argument("--workload", help="a JSON/TOML file listing specs (see convgen.workloads)")
    add_torch_model_args(s)
    g.add_argument("--target", default="host", help="target name (convgen targets)")
    g.add_argument("--trials", type=positive_int, default=64, help="total trials of the campaign (resumed ones count)")
    g.add_argument("--records", default="convgen-records.jsonl", help="the tuning log (appended; resumed from)")
    g.add_argument("--strategy", choices=STRATEGIES, default="model", help="search strategy")
    g.add_argument("--template", help="tune only this template")
    g.add_argument("--batch-size", type=positive_int, default=8, help="configs built in parallel, then timed one by one")
    g.add_argument("--early-stopping", type=positive_int, default=None,
                   help="stop a layer after this many trials without improvement")
    g.add_argument("--seed", type=int, default=0, help="seed of the search (same seed, same proposals)")
    g.add_argument("--no-transfer", action="store_true", help="do not learn from the other layers' results")
    g.add_argument("--refine", type=nonnegative_int, default=3, metavar="K",
                   help="at the end, time each layer's K fastest configs twice more, interleaved (0: off)")
    g.add_argument("-o", "--output", help="write the best kernel(s): a .so for one layer, a folder for several")
    g.add_argument("--plot", help="tuning-curve PNG (default: <records>.png for campaigns of several layers)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    m = s.add_argument_group("measurement")
    m.add_argument("--threads", type=positive_int, help="CPU threads of the kernels (default: all CPUs of the process)")
    m.add_argument("--number", type=positive_int, default=3, help="calls averaged per repeat")
    m.add_argument("--repeat", type=positive_int, default=5, help="repeats per trial (median is the cost)")
    m.add_argument("--min-repeat-ms", type=nonnegative_int, default=40, help="minimum length of one repeat")
    m.add_argument("--cache-flush", type=nonnegative_int, default=0, metavar="BYTES",
                   help="flush this much cache before each repeat")
    m.add_argument("--build-timeout", type=positive_float, default=120.0, help="seconds per build")
    m.add_argument("--run-timeout", type=positive_float, default=60.0, help="seconds per run")
    m.add_argument("--rpc", metavar="HOST:PORT", help="measure on a TVM RPC server (a board)")
    m.add_argument("--tracker", metavar="HOST:PORT", help="measure on devices from a TVM RPC tracker")
    m.add_argument("--key", help="device key at the tracker (default: the target's rpc_key)")
    m.add_argument("--parallel", type=positive_int, default=1, help="devices used at once through the tracker")
    m.add_argument("--queue-timeout", type=positive_float, default=600.0,
                   help="seconds a trial may wait at the tracker for a free device (not counted as run time)")
    m.add_argument("--device-wait", type=positive_float, default=300.0,
                   help="seconds an unreachable device is retried (with backoff, no trials spent) before the "
                        "campaign stops; run the same command again to resume")
    s.set_defaults(fn=cmd_tune)

    r = sub.add_parser("records", help="show, merge and prune tuning logs", formatter_class=fmt, epilog=RECORDS_EPILOG)
    rsub = r.add_subparsers(dest="action", metavar="ACTION", required=True)
    x = rsub.add_parser("show", help="best record per workload and target", formatter_class=fmt)
    x.add_argument("files", nargs="+")
    x.set_defaults(fn=cmd_records)
    x = rsub.add_parser("merge", help="merge logs into one, dropping duplicates and corrupt lines", formatter_class=fmt)
    x.add_argument("output")
    x.add_argument("files", nargs="+")
    x.set_defaults(fn=cmd_records)
    x = rsub.add_parser("prune", help="keep the records of the best N candidates per workload/template",
                        formatter_class=fmt, description=PRUNE_DESCRIPTION)
    x.add_argument("file")
    x.add_argument("--keep", type=positive_int, default=1, help="candidates kept per (workload, target, template)")
    x.add_argument("--keep-stale", action="store_true", help="keep records of older template versions")
    x.add_argument("-o", "--output", help="write here (default: rewrite the file in place, atomically)")
    x.set_defaults(fn=cmd_records)


def _workloads(args: argparse.Namespace) -> tuple[dict, dict]:
    """``({name: spec}, {name: weight})`` from the flags; a spec listed under several names
    is tuned once, under its first name, weighted by how often it is listed."""
    from .cli import spec_from_args
    from .workloads import load_workload_file, preset

    given = [bool(args.preset), bool(args.workload), bool(args.layer or args.in_channels), bool(args.torch_model)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --preset NAME, --workload FILE, --torch-model PKG.MODULE:FACTORY, "
                         "or one layer (--layer / -c -k --size ...)")
    if args.torch_model:
        layers = torch_model_layers(args)
        weights = {name: float(n) for name, n in layers.counts.items()}
        return dict(layers), weights
    if args.preset:
        named = {f"{args.preset}.{k}": v for k, v in preset(args.preset).items()}
    elif args.workload:
        named = load_workload_file(args.workload)
    else:
        spec = spec_from_args(args)
        named = {args.layer or spec.describe(): spec}
    return merge_duplicates(named)


def torch_model_layers(args: argparse.Namespace) -> Any:
    """The distinct convolutions of ``--torch-model`` at ``--input-shape``, as
    :func:`convgen.torch.conv_layers` gives them (counted)."""
    if not args.input_shape:
        raise ValueError("--torch-model needs --input-shape N,C,H,W (e.g. 1,3,224,224)")
    try:
        import torch

        import convgen.torch as ct
    except ImportError:
        raise ValueError("--torch-model needs PyTorch: pip install 'convgen[torch]'") from None
    model = ct.model_from_factory(args.torch_model)
    shape = args.input_shape if isinstance(args.input_shape, tuple) else (args.input_shape,)
    return ct.conv_layers(model, torch.randn(*shape), channels_last=not args.nchw)


def add_torch_model_args(p: Any) -> None:
    """``--torch-model``, ``--input-shape`` and ``--nchw`` (for ``tune`` and ``layers``)."""
    g = p.add_argument_group("PyTorch model")
    g.add_argument("--torch-model", metavar="PKG.MODULE:FACTORY",
                   help="the convolutions of the model FACTORY() builds (random weights are fine; put in eval "
                        "mode), e.g. convgen.torch.models:resnet50")
    g.add_argument("--input-shape", type=_shape, metavar="N,C,H,W", help="the model's input shape, e.g. 1,3,224,224")
    g.add_argument("--nchw", action="store_true",
                   help="NCHW kernels, as convgen.torch.optimize(..., channels_last=False) runs (default: NHWC)")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 1,3,224,224, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape


def merge_duplicates(named: dict) -> tuple[dict, dict]:
    """One entry per distinct spec (first name wins) and each entry's weight (its count);
    a note on stderr for every name merged into another."""
    first: dict[str, str] = {}
    out: dict = {}
    weights: dict[str, float] = {}
    for name, spec in named.items():
        if spec.key in first:
            keep = first[spec.key]
            weights[keep] += 1.0
            print(f"convgen: {name!r} is the same workload as {keep!r}: tuned once, counted "
                  f"{weights[keep]:g} times", file=sys.stderr)
            continue
        first[spec.key] = name
        out[name] = spec
        weights[name] = 1.0
    return out, weights


def run_tune(args: argparse.Namespace) -> int:
    """The ``convgen tune`` command."""
    from .builder import build
    from .peak import measured_peak_gflops
    from .runtime import default_num_threads
    from .target import get_target
    from .tuner import MeasureOptions, tune
    from .tuner.progress import summary_table

    named, weights = _workloads(args)
    target = get_target(args.target)
    options = MeasureOptions(number=args.number, repeat=args.repeat, min_repeat_ms=args.min_repeat_ms,
                             cache_flush_bytes=args.cache_flush, build_timeout=args.build_timeout,
                             run_timeout=args.run_timeout, num_threads=args.threads, queue_timeout=args.queue_timeout)
    runner = None
    if args.rpc:
        runner = f"rpc://{args.rpc}"
    elif args.tracker:
        from .tuner import RPCRunner

        runner = RPCRunner(tracker=args.tracker, key=args.key or target.rpc_key, n_parallel=args.parallel, options=options)
    plot = args.plot or (os.path.splitext(args.records)[0] + ".png" if len(named) > 1 else None)
    before = _mtime(plot)
    try:
        results = tune(named, target, trials=args.trials, records=args.records, strategy=args.strategy, runner=runner,
                       template=args.template, batch_size=args.batch_size, early_stopping=args.early_stopping,
                       seed=args.seed, options=options, transfer=not args.no_transfer, progress=not args.quiet,
                       plot=plot, refine=args.refine, weights=weights if any(w != 1 for w in weights.values()) else None,
                       device_wait=args.device_wait)
    finally:
        if hasattr(runner, "close"):  # the tracker runner made here (tune closes the ones it makes)
            runner.close()
    threads = args.threads or default_num_threads()
    dtypes = {s.dtype for s in named.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    peak = (measured_peak_gflops(target, threads, dtype=dtype) if runner is None
            else target.nominal_peak_gflops(threads, dtype))
    print(summary_table(list(results.values()), peak))
    written = plot is not None and _mtime(plot) not in (None, before)
    print(f"records: {args.records}" + (f"  plot: {plot}" if written else ""))
    if args.plot and not written:
        print(f"convgen: {args.plot} not written (the plot needs matplotlib)", file=sys.stderr)
    if args.output:
        valid = {n: r for n, r in results.items() if r.config is not None}
        if len(named) == 1 and valid:
            r = next(iter(valid.values()))
            build(r.spec, target, r.config, template=r.template, num_threads=args.threads).export(args.output)
            print(f"wrote {args.output} ({r.template} {r.config})")
        elif valid:
            os.makedirs(args.output, exist_ok=True)
            for name, r in valid.items():
                path = os.path.join(args.output, f"{name.replace('/', '_').replace(' ', '_')}.so")
                build(r.spec, target, r.config, template=r.template, num_threads=args.threads).export(path)
            print(f"wrote {len(valid)} kernels to {args.output}/")
    if not any(r.config for r in results.values()):
        print("convgen: no valid kernel was found (see the errors in the records)", file=sys.stderr)
        return 1
    return 0


def _mtime(path: str | None) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def run_records(args: argparse.Namespace) -> int:
    """The ``convgen records`` command."""
    from . import records as rec

    if args.action == "show":
        all_records = list(rec.read(args.files))
        best = rec.best_records(all_records)
        counts: dict = {}
        for r in all_records:
            c = counts.setdefault((r.spec_key, r.target), [0, 0])
            c[0] += 1
            c[1] += r.error is not None
        print(f"{'workload':<46} {'target':<11} {'template':<14} {'trials':>6} {'errors':>6} {'GFLOP/s':>8} {'ms':>8}")
        for (key, target), (cost, r) in sorted(best.items(), key=lambda kv: kv[0]):
            n, err = counts[(key, target)]
            gflops = r.spec.flops / cost / 1e9
            print(f"{r.spec.describe()[:46]:<46} {target:<11} {r.template:<14} {n:>6} {err:>6} {gflops:8.1f} {cost * 1e3:8.3f}")
        failed = {k for k in counts if k not in best}
        for key, target in sorted(failed):
            print(f"{key[:46]:<46} {target:<11} {'(no valid kernel)':<14} {counts[(key, target)][0]:>6}")
        return 0
    if args.action == "merge":
        rec.read(args.files)  # every input must exist (checked before the output is touched)

        def merged() -> list[dict]:
            seen, out = set(), []
            for r in rec.read(args.files):
                k = json.dumps(r.data, sort_keys=True, default=str)  # only exact duplicates go
                if k not in seen:
                    seen.add(k)
                    out.append(r.data)
            return out

        n = rec.rewrite(args.output, merged)
        print(f"wrote {n} records to {args.output}")
        return 0
    if args.action == "prune":
        rec.read(args.file)  # the file must exist (checked before anything is written)
        n = rec.rewrite(args.output or args.file,
                        lambda: [r.data for r in prune(rec.read(args.file), keep=args.keep, keep_stale=args.keep_stale)])
        print(f"kept {n} records in {args.output or args.file}")
        return 0
    return 2


def prune(records: Iterable, *, keep: int = 1, keep_stale: bool = False) -> list:
    """Every record of the ``keep`` best candidates per (workload, target, template), in file order.

    Candidates are ranked as :func:`convgen.records.best_config` ranks them: by the median
    of all their timings, those that ever failed or gave a wrong result left out. Unless
    ``keep_stale``, candidates made against another version of their template (or of a
    template that no longer serves the workload) are dropped too; for a target this convgen
    does not know that check is impossible and its candidates are ranked without it.
    """
    from . import records as rec
    from .schedules import all_templates
    from .target import TargetError, get_target

    if keep < 1:
        raise ValueError(f"prune: keep must be >= 1 (got {keep})")
    records = list(records)
    templates = all_templates()
    spaces: dict[tuple, Any] = {}
    unknown = object()

    def space_of(r: Any) -> Any:
        # the template's current space for r's workload; None: the template no longer serves
        # it; `unknown`: a target this convgen does not know, so nothing to check against
        k = (r.template, r.spec_key, r.target)
        if k not in spaces:
            try:
                target = get_target(r.target)
            except TargetError:
                spaces[k] = unknown
                return unknown
            tmpl = templates.get(r.template)
            try:
                spec = r.spec
                ok = tmpl is not None and tmpl.supports(spec, target) is None
                spaces[k] = tmpl.space(spec, target) if ok else None
            except (ValueError, TypeError, KeyError):  # a spec this version cannot read
                spaces[k] = None
        return spaces[k]

    def is_current(r: Any) -> bool:
        space = space_of(r)
        return space is unknown or (space is not None and space.hash == r.space_hash and r.config in space)

    groups: dict[tuple, list] = {}
    for key, (cost, r) in rec._aggregate(records).items():
        if not keep_stale and not is_current(r):
            continue
        groups.setdefault((r.spec_key, r.target, r.template), []).append((cost, key))
    kept = set()
    for cands in groups.values():
        kept.update(key for _, key in sorted(cands, key=lambda c: (c[0], str(c[1])))[:keep])
    return [r for r in records if r.trial_key() in kept]


