"""``convgen targets | layers | space | build | run | info``: targets, workloads, single kernels."""

from __future__ import annotations

import argparse
import json
import time

from .common import (HelpFormatter, add_model_args, add_spec_args, config_arg, model_layers, model_source,
                     positive_int, spec_from_args)

def cmd_targets(args: argparse.Namespace) -> int:
    """``convgen targets``: the targets, and which of them run on this machine."""
    from ..target import all_targets, host_target, TargetError

    try:
        host = host_target().name
    except TargetError:
        host = None
    print(f"{'target':<14} {'family':<6} {'lanes':>5} {'regs':>4} {'runs here':<9} description")
    for t in all_targets().values():
        here = "yes (host)" if t.name == host else ("yes" if t.runs_here() else "no")
        lanes = t.vector_lanes if t.is_cpu else "-"
        regs = t.registers if t.is_cpu else "-"
        print(f"{t.name:<14} {t.family:<6} {lanes:>5} {regs:>4} {here:<9} {t.description}")
    if args.verbose:
        for t in all_targets().values():
            print(f"\n[{t.name}] tvm target: {json.dumps(t.tvm)}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """``convgen layers``: the built-in workloads, by network (or a PyTorch model's)."""
    from ..workloads import PRESETS

    if model_source(args):
        layers = model_layers(args)
        shape = f" at {','.join(map(str, args.input_shape))}" if args.input_shape else ""
        print(f"{model_source(args)[1]}{shape}: {len(layers)} distinct convolutions of {sum(layers.counts.values())}")
        for name, spec in layers.items():
            print(f"  {name:<28} {spec.describe():<56} x{layers.counts[name]:<3} {spec.flops / 1e9:7.3f} GFLOP")
        return 0

    for net, layers in PRESETS.items():
        if args.preset and net != args.preset:
            continue
        print(f"{net}:")
        for name, spec in layers.items():
            print(f"  {net}.{name:<16} {spec.describe():<44} {spec.flops / 1e9:7.3f} GFLOP")
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    """``convgen space``: each template's knobs and default config for one workload."""
    from ..builder import select_template
    from ..schedules import candidates
    from ..target import get_target

    spec = spec_from_args(args)
    target = get_target(args.target)
    templates = [select_template(spec, target, args.template)] if args.template else candidates(spec, target)
    print(f"{spec.describe()} on {target.name}")
    for t in templates:
        space = t.space(spec, target)
        print(f"\n{t.name} v{t.version}: {len(space)} configs (space hash {space.hash})")
        for k in space.knobs:
            print(f"  {k.name:<14} {list(k.values)}  {k.doc}")
        print(f"  default: {json.dumps(t.default(spec, target))}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """``convgen build``: compile one workload to a ``.so`` with its metadata."""
    from ..builder import build

    spec = spec_from_args(args)
    config = config_arg(args.config) if args.config is not None else None
    t0 = time.perf_counter()
    kernel = build(spec, args.target, config, template=args.template, records=args.records,
                   builtin_records=not args.no_builtin_records, num_threads=args.threads)
    kernel.export(args.output)
    print(f"built {spec.describe()} for {kernel.target.name} with {kernel.template} "
          f"({kernel.meta['config_source']} config {json.dumps(kernel.config)}) in {time.perf_counter() - t0:.1f} s")
    print(f"wrote {args.output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``convgen info``: a kernel's metadata (checked), and the file's SHA-256."""
    from ..runtime import file_sha256, read_metadata
    from ..spec import ConvSpec

    meta = read_metadata(args.kernel)  # checked: the trailer, its fields, the library's hash
    if args.json:
        print(json.dumps(dict(meta, file_sha256=file_sha256(args.kernel)), indent=2, sort_keys=True))
        return 0
    spec = ConvSpec.from_dict(meta["spec"])
    print(f"{args.kernel}: {spec.describe()}")
    for key in ("target", "template", "config", "config_source", "space_hash", "convgen", "tvm", "tvm_ffi", "host_cpu", "time"):
        print(f"  {key:<14} {json.dumps(meta.get(key)) if isinstance(meta.get(key), dict) else meta.get(key)}")
    print(f"  {'sha256':<14} {file_sha256(args.kernel)}  (the whole file: pin it with convgen.load(path, sha256=...))")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``convgen run``: check a kernel against the numpy reference and time it (here, or on a
    device through RPC), both through :func:`convgen.timing.measure_kernel`."""
    from ..runtime import file_sha256, load, read_metadata, target_from_metadata

    meta = read_metadata(args.kernel, sha256=args.sha256)  # a wrong pin is refused here, for a remote run too
    digest = file_sha256(args.kernel)
    if args.rpc or args.tracker:
        from ..remote import connect, run_remote

        session = connect(rpc=args.rpc, tracker=args.tracker, key=args.key or target_from_metadata(meta).rpc_key)
        result = run_remote(session, args.kernel, meta, num_threads=args.threads, repeat=args.repeat,
                            check=not args.no_check)
        where = args.rpc or f"{args.tracker} key {args.key or target_from_metadata(meta).rpc_key}"
    else:
        kernel = load(args.kernel, num_threads=args.threads, sha256=args.sha256)
        run = kernel.measure(check=not args.no_check, number=10, repeat=args.repeat, min_repeat_ms=100, seed=1)
        result = {"threads": kernel.num_threads, "times": run.times}
        if not args.no_check:
            result["max_error"], result["tolerance"] = run.max_error, run.tolerance
        where = "this machine"
    _report_run(args.kernel, meta, result, where, digest)
    return 0 if result.get("max_error", 0) <= result.get("tolerance", 0) else 1


def _report_run(path: str, meta: dict, result: dict, where: str, digest: str) -> None:
    import statistics

    from ..peak import reference_peak
    from ..runtime import target_from_metadata
    from ..spec import ConvSpec

    spec = ConvSpec.from_dict(meta["spec"])
    target = target_from_metadata(meta)
    median = statistics.median(result["times"])
    gflops = spec.flops / median / 1e9
    threads = result["threads"]
    print(f"{path}: {spec.describe()} | {target.name} | {meta['template']} {json.dumps(meta['config'])}")
    print(f"  sha256 {digest}")
    if "max_error" in result:
        ok = result["max_error"] <= result["tolerance"]
        measure = "normwise relative error" if meta.get("error_bound") is not None else "max |error|"
        print(f"  check vs numpy reference: {measure} {result['max_error']:.2e} "
              f"(tolerance {result['tolerance']:.1e}) {'OK' if ok else 'FAILED'}")
    peak, kind = reference_peak(target, threads, spec.dtype, here=where == "this machine")
    pct = f", {100 * gflops / peak:.{0 if target.is_cpu else 1}f}% of the {kind} peak ({peak:.0f} GFLOP/s)" if peak else ""
    print(f"  on {where}, {threads} thread{'s' if threads != 1 else ''}: median {median * 1e3:.3f} ms over "
          f"{len(result['times'])} repeats, {gflops:.1f} GFLOP/s{pct}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the ``convgen`` parser."""
    s = sub.add_parser("targets", help="list the targets and which ones run here", formatter_class=HelpFormatter)
    s.add_argument("-v", "--verbose", action="store_true", help="also print each TVM target dict")
    s.set_defaults(fn=cmd_targets)

    s = sub.add_parser("layers", help="list the built-in workloads, or a PyTorch model's convolutions",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  convgen layers --preset resnet50\n"
                              "  convgen layers --torch-model convgen.torch.models:mobilenet_v2 --input-shape 1,3,224,224")
    s.add_argument("--preset", help="only this network")
    add_model_args(s)
    s.set_defaults(fn=cmd_layers)

    s = sub.add_parser("space", help="show the knob space and default config of the templates for a workload",
                       formatter_class=HelpFormatter, epilog="example:\n  convgen space --layer resnet50.r4_3x3 --target x86-avx512")
    add_spec_args(s)
    s.add_argument("--target", default="host", help="target name (convgen targets)")
    s.add_argument("--template", help="only this template")
    s.set_defaults(fn=cmd_space)

    s = sub.add_parser(
        "build", help="compile a kernel to a .so (+ metadata)", formatter_class=HelpFormatter,
        description="Compile one convolution for a target and write a shared library that carries its "
                    "metadata (spec, target, template, config, versions). The config comes from --config, "
                    "else the best record in --records, else the records shipped with convgen, else the "
                    "template's default.",
        epilog="examples:\n  convgen build --layer resnet50.r2_3x3 -o conv.so\n"
               "  convgen build -c 32 -k 32 --size 112 --groups 32 --padding same --relu -o dw.so\n"
               "  convgen build --layer resnet50.r4_3x3 --records tune.jsonl -o tuned.so\n"
               "  convgen build --layer resnet50.r4_3x3 --config '{\"tile_oc\": 8, ...}' --template x86.direct -o x.so",
    )
    add_spec_args(s)
    s.add_argument("--target", default="host", help="target name (convgen targets)")
    s.add_argument("-o", "--output", default="conv.so", help="output shared library")
    s.add_argument("--config", help="a config as JSON (see convgen space)")
    s.add_argument("--template", help="force a template (see convgen space)")
    s.add_argument("--records", nargs="+", help="tuning logs to take the best config from")
    s.add_argument("--no-builtin-records", action="store_true", help="ignore the tuned records shipped with convgen")
    s.add_argument("--threads", type=positive_int, help="CPU threads (default: every CPU this process may use)")
    s.set_defaults(fn=cmd_build)

    s = sub.add_parser(
        "run", help="run a kernel on random data, check it against numpy, time it", formatter_class=HelpFormatter,
        epilog="examples:\n  convgen run conv.so\n  convgen run conv.so --threads 1 --repeat 20\n"
               "  convgen run arm.so --rpc 127.0.0.1:9090\n  convgen run arm.so --tracker 127.0.0.1:9190 --key arm-neon",
    )
    s.add_argument("kernel", help="a .so written by convgen build / tune")
    s.add_argument("--threads", type=positive_int, help="CPU threads (default: every CPU this process may use)")
    s.add_argument("--repeat", type=positive_int, default=10, help="timed repeats (each >= 100 ms)")
    s.add_argument("--no-check", action="store_true", help="skip the comparison with the reference")
    s.add_argument("--sha256", help="refuse the kernel unless the file has this SHA-256 (see convgen info)")
    s.add_argument("--rpc", metavar="HOST:PORT", help="run on a TVM RPC server (a board) instead of here")
    s.add_argument("--tracker", metavar="HOST:PORT", help="run on a device from a TVM RPC tracker")
    s.add_argument("--key", help="device key at the tracker (default: the target's rpc_key)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("info", help="print a kernel's metadata", formatter_class=HelpFormatter)
    s.add_argument("kernel", help="a .so written by convgen build / tune (its metadata is read and checked; the library is never loaded)")
    s.add_argument("--json", action="store_true", help="all of it, as JSON")
    s.set_defaults(fn=cmd_info)
