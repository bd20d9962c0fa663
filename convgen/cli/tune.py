"""``convgen tune``: a campaign over one layer, a network, a workload file or a PyTorch model."""

from __future__ import annotations

import argparse
import os
import sys

from ..workloads import ConvLayers
from .common import (HelpFormatter, add_model_args, add_options, add_spec_args, duration, model_layers, model_source,
                     positive_int, spec_from_args)

TUNE_EPILOG = """\
examples:
  convgen tune --layer resnet50.r2_3x3 --trials 64 -o conv.so
  convgen tune --preset resnet18 --trials 400 --plot curves.png
  convgen tune --preset mobilenet_v2 --time-budget 20m --records mbv2.jsonl
  convgen tune --workload layers.toml --trials 200 --records my.jsonl
  convgen tune --layer resnet50.r4_3x3 --target arm-neon --rpc 127.0.0.1:9090
  convgen tune --preset mobilenet_v2 --target arm-neon --tracker 10.0.0.2:9190 --key rk3399 --parallel 4
  convgen tune --torch-model convgen.torch.models:resnet50 --input-shape 1,3,224,224 --trials 800

Trials and time already in --records count towards --trials and --time-budget: run the same
command again and it resumes where it stopped (a campaign killed at any point loses at most
the trial in flight).
"""

def _workloads(args: argparse.Namespace) -> ConvLayers:
    """The layers the flags name; a spec listed under several names is tuned once, under its
    first name, weighted by how often it is listed (:class:`ConvLayers`)."""
    from ..workloads import load_workload_file, preset

    given = [bool(args.preset), bool(args.workload), bool(args.layer or args.in_channels), bool(model_source(args))]
    if sum(given) != 1:
        raise ValueError("give exactly one of --preset NAME, --workload FILE, --torch-model PKG.MODULE:FACTORY, "
                         "or one layer (--layer / -c -k --size ...)")
    if model_source(args):
        return model_layers(args)
    if args.preset:
        named = {f"{args.preset}.{k}": v for k, v in preset(args.preset).items()}
    elif args.workload:
        named = load_workload_file(args.workload)
    else:
        spec = spec_from_args(args)
        named = {args.layer or spec.describe(): spec}
    return merge_duplicates(named)


def merge_duplicates(named: dict) -> ConvLayers:
    """One entry per distinct spec (first name wins), counted (:class:`ConvLayers`); a note
    on stderr for every name merged into another."""
    layers = ConvLayers(named.items())
    for keep, others in layers.merged().items():
        for name in others:
            print(f"convgen: {name!r} is the same workload as {keep!r}: tuned once, counted "
                  f"{layers.counts[keep]} times", file=sys.stderr)
    return layers


def cmd_tune(args: argparse.Namespace) -> int:
    """The ``convgen tune`` command."""
    from ..peak import reference_peak
    from ..runtime import default_num_threads
    from ..target import get_target
    from ..tuner import MeasureOptions, SearchOptions, tune
    from ..tuner.options import from_namespace
    from ..tuner.progress import summary_table

    named = _workloads(args)
    target = get_target(args.target)
    options = from_namespace(MeasureOptions, args)
    search = from_namespace(SearchOptions, args)
    trials = args.trials if args.trials is not None else (None if args.time_budget else DEFAULT_TRIALS)
    runner = None
    if args.rpc:
        runner = f"rpc://{args.rpc}"
    elif args.tracker:
        from ..tuner import RPCRunner

        runner = RPCRunner(tracker=args.tracker, key=args.key or target.rpc_key, n_parallel=args.parallel, options=options)
    plot = args.plot or (os.path.splitext(args.records)[0] + ".png" if len(named) > 1 else None)
    before = _mtime(plot)
    try:
        results = tune(named, target, trials=trials, time_budget=args.time_budget, records=args.records,
                       runner=runner, template=args.template, options=options, search=search,
                       progress=not args.quiet, plot=plot)
    finally:
        if hasattr(runner, "close"):  # the tracker runner made here (tune closes the ones it makes)
            runner.close()
    threads = options.num_threads or default_num_threads()
    dtypes = {s.dtype for s in named.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    peak, _ = reference_peak(target, threads, dtype, here=runner is None)
    print(summary_table(list(results.values()), peak))
    written = plot is not None and _mtime(plot) not in (None, before)
    print(f"records: {args.records}" + (f"  plot: {plot}" if written else ""))
    if args.plot and not written:
        print(f"convgen: {args.plot} not written (the plot needs matplotlib)", file=sys.stderr)
    if args.output:
        valid = {n: r for n, r in results.items() if r.config is not None}
        if len(named) == 1 and valid:
            r = next(iter(valid.values()))
            r.build(num_threads=options.num_threads).export(args.output)
            print(f"wrote {args.output} ({r.template} {r.config})")
        elif valid:
            os.makedirs(args.output, exist_ok=True)
            for name, r in valid.items():
                path = os.path.join(args.output, f"{name.replace('/', '_').replace(' ', '_')}.so")
                r.build(num_threads=options.num_threads).export(path)
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




DEFAULT_TRIALS = 64  # when neither --trials nor --time-budget is given


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``convgen tune`` to the ``convgen`` parser."""
    from ..tuner.options import MeasureOptions, SearchOptions

    s = sub.add_parser("tune", help="autotune one layer or a whole network", formatter_class=HelpFormatter, epilog=TUNE_EPILOG,
                       description="Search each layer's knob space by building and timing real kernels. The budget "
                                   "is split across layers where it saves the most time; every trial is appended "
                                   "to the records file at once.")
    add_spec_args(s)
    g = s.add_argument_group("campaign")
    g.add_argument("--preset", help="every layer of a built-in network: resnet18, resnet50, mobilenet_v1, mobilenet_v2")
    g.add_argument("--workload", help="a JSON/TOML file listing specs (see convgen.workloads)")
    add_model_args(s)
    g.add_argument("--target", default="host", help="target name (convgen targets)")
    g.add_argument("--trials", type=positive_int, default=None,
                   help=f"total trials of the campaign (resumed ones count; default {DEFAULT_TRIALS}, "
                        "or no limit with --time-budget)")
    g.add_argument("--time-budget", type=duration, default=None, metavar="TIME",
                   help="total time of the campaign: 90s, 10m, 1.5h (time already in --records counts); "
                        "with --trials, whichever comes first")
    g.add_argument("--records", default="convgen-records.jsonl", help="the tuning log (appended; resumed from)")
    g.add_argument("--template", help="tune only this template")
    add_options(g, SearchOptions)
    g.add_argument("-o", "--output", help="write the best kernel(s): a .so for one layer, a folder for several")
    g.add_argument("--plot", help="tuning-curve PNG (default: <records>.png for campaigns of several layers)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    m = s.add_argument_group("measurement")
    add_options(m, MeasureOptions)
    m.add_argument("--rpc", metavar="HOST:PORT", help="measure on a TVM RPC server (a board)")
    m.add_argument("--tracker", metavar="HOST:PORT", help="measure on devices from a TVM RPC tracker")
    m.add_argument("--key", help="device key at the tracker (default: the target's rpc_key)")
    m.add_argument("--parallel", type=positive_int, default=1, help="devices used at once through the tracker")
    s.set_defaults(fn=cmd_tune)
