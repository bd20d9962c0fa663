"""``convgen tune``: a campaign over one layer, a network, a workload file or a PyTorch model."""

from __future__ import annotations

import argparse
import os
import sys

from .common import (HelpFormatter, add_spec_args, add_torch_model_args, nonnegative_int, positive_float, positive_int,
                     spec_from_args, torch_model_layers)

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

def _workloads(args: argparse.Namespace) -> tuple[dict, dict]:
    """``({name: spec}, {name: weight})`` from the flags; a spec listed under several names
    is tuned once, under its first name, weighted by how often it is listed."""
    from ..workloads import load_workload_file, preset

    given = [bool(args.preset), bool(args.workload), bool(args.layer or args.in_channels), bool(args.torch_model)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --preset NAME, --workload FILE, --torch-model PKG.MODULE:FACTORY, "
                         "or one layer (--layer / -c -k --size ...)")
    if args.torch_model:
        return torch_model_layers(args), {}  # tune() weights them by their .counts
    if args.preset:
        named = {f"{args.preset}.{k}": v for k, v in preset(args.preset).items()}
    elif args.workload:
        named = load_workload_file(args.workload)
    else:
        spec = spec_from_args(args)
        named = {args.layer or spec.describe(): spec}
    return merge_duplicates(named)


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


def cmd_tune(args: argparse.Namespace) -> int:
    """The ``convgen tune`` command."""
    from ..peak import reference_peak
    from ..runtime import default_num_threads
    from ..target import get_target
    from ..tuner import MeasureOptions, tune
    from ..tuner.progress import summary_table

    named, weights = _workloads(args)
    target = get_target(args.target)
    options = MeasureOptions(number=args.number, repeat=args.repeat, min_repeat_ms=args.min_repeat_ms,
                             cache_flush_bytes=args.cache_flush, build_timeout=args.build_timeout,
                             run_timeout=args.run_timeout, num_threads=args.threads, queue_timeout=args.queue_timeout)
    runner = None
    if args.rpc:
        runner = f"rpc://{args.rpc}"
    elif args.tracker:
        from ..tuner import RPCRunner

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
            r.build(num_threads=args.threads).export(args.output)
            print(f"wrote {args.output} ({r.template} {r.config})")
        elif valid:
            os.makedirs(args.output, exist_ok=True)
            for name, r in valid.items():
                path = os.path.join(args.output, f"{name.replace('/', '_').replace(' ', '_')}.so")
                r.build(num_threads=args.threads).export(path)
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




def register(sub: argparse._SubParsersAction) -> None:
    """Add ``convgen tune`` to the ``convgen`` parser."""
    from ..tuner.strategies import STRATEGIES

    s = sub.add_parser("tune", help="autotune one layer or a whole network", formatter_class=HelpFormatter, epilog=TUNE_EPILOG,
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
