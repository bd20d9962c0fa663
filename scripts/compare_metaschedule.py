#!/usr/bin/env python3
"""convgen's tuner vs TVM's MetaSchedule on one layer, equal trial budgets, one process.

Both tune the same TE definition (``convgen.compute``) for the same target with the same
thread count, measuring on this machine. MetaSchedule runs once with the largest budget
in rounds of 32 trials, so its best after 32 / 64 / 256 trials is what a run with that
budget would have found (the same seed proposes the same rounds); convgen likewise. Then
the kernels and torch (oneDNN) are timed interleaved, in rounds, in this process.

    python scripts/compare_metaschedule.py resnet50.r2_3x3
    python scripts/compare_metaschedule.py resnet50.r4_3x3 --budgets 32 64 256 --convgen-budgets 32 64

Notes: MetaSchedule's default builder imports ``tvm.s_tir.tensor_intrin`` in every worker
(over a minute on 2 cores), so this script gives it a build function without that import;
its runner workers get convgen's thread setting (TVM's own default is half the CPUs).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import site
import sys
import tempfile
import time

import numpy as np

from benchutil import MS_DB, interleaved, paired_ratio


def ms_build(mod, target, _params):
    """MetaSchedule build without importing tvm.s_tir.tensor_intrin (not needed for fp32 CPU)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)




def tune_metaschedule(spec, target_dict, threads, budget, work_dir, seed):
    """Tune ``spec``'s PrimFunc with ``tune_tir``; returns (module, target, database, wall s)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from convgen.compute import conv2d_primfunc

    # Popen workers unpickle functions by module name: ms_build must come from an importable
    # module (not __main__), and the build workers get this folder on their path first.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import compare_metaschedule as me
    from convgen.runtime import set_num_threads

    target = tvm.target.Target(dict(target_dict, **{"num-cores": threads}))
    mod = tvm.IRModule({"main": conv2d_primfunc(spec)})
    builder = ms.builder.LocalBuilder(max_workers=threads, timeout_sec=120, f_build=me.ms_build,
                                      initializer=functools.partial(site.addsitedir, here))
    runner = ms.runner.LocalRunner(
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=5, min_repeat_ms=40),
        timeout_sec=60, initializer=functools.partial(set_num_threads, threads))
    t0 = time.perf_counter()
    db = ms.tir_integration.tune_tir(mod, target, work_dir, max_trials_global=budget, num_trials_per_iter=32,
                                     builder=builder, runner=runner, num_tuning_cores=threads, seed=seed)
    wall = time.perf_counter() - t0
    return mod, target, db, wall


def ms_best_after(mod, target, db, k):
    """The fastest of MetaSchedule's first ``k`` measured candidates, compiled."""
    import tvm
    from tvm.s_tir import Schedule

    recs = [r for r in db.get_all_tuning_records() if r.run_secs]
    recs = recs[:k]
    if not recs:
        return None, None
    cost = lambda r: float(np.median([float(x) for x in r.run_secs]))  # noqa: E731
    best = min(recs, key=cost)
    sch = Schedule(mod)
    best.trace.apply_to_schedule(sch, remove_postproc=False)
    return tvm.compile(sch.mod, target=target), cost(best)


def main(argv=None) -> int:
    """Tune with both, time the kernels and oneDNN interleaved, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("layer", help="a built-in layer, e.g. resnet50.r2_3x3")
    ap.add_argument("--target", default="host")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--budgets", type=int, nargs="+", default=[32, 64, 256], help="MetaSchedule budgets")
    ap.add_argument("--convgen-budgets", type=int, nargs="+", default=[32, 64], help="convgen budgets")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--ms-db", default=MS_DB, help="keep MetaSchedule's database here (<dir>/<layer>/, cleared when a run starts) for inspection afterwards")
    args = ap.parse_args(argv)

    import torch
    import tvm

    import convgen
    from convgen import workloads
    from convgen.reference import conv2d_reference, random_inputs, tolerance
    from convgen.target import get_target, host_cpu_name
    from convgen.tuner import MeasureOptions, tune

    spec = workloads.layer(args.layer)
    target = get_target(args.target)
    threads = args.threads or convgen.runtime.default_num_threads()
    convgen.set_num_threads(threads)
    torch.set_num_threads(threads)
    work = tempfile.mkdtemp(prefix="cg-vs-ms-")
    print(f"# {args.layer}: {spec.describe()} on {host_cpu_name()}, {threads} threads, target {target.name}", flush=True)

    # -- convgen ------------------------------------------------------------------------------
    records = os.path.join(work, "convgen.jsonl")
    cg = {}
    t0 = time.perf_counter()
    tune({args.layer: spec}, target, trials=max(args.convgen_budgets), records=records, seed=args.seed,
         options=MeasureOptions(num_threads=threads), progress=True)
    cg_wall = time.perf_counter() - t0
    from convgen import records as rec

    rows = [r for r in rec.read(records)]
    for k in args.convgen_budgets:
        firsts = [r for r in rows[:k] if r.ok and r.data.get("verified") is not False]
        if not firsts:
            raise SystemExit(f"convgen found no valid kernel in its first {k} trials: see {records}")
        best = min(firsts, key=lambda r: r.median)
        cg[k] = convgen.build(spec, target, best.config, template=best.template, num_threads=threads)
    print(f"convgen: {max(args.convgen_budgets)} trials in {cg_wall:.0f} s", flush=True)

    # -- MetaSchedule ---------------------------------------------------------------------------
    ms_dir = os.path.join(args.ms_db, args.layer)
    shutil.rmtree(ms_dir, ignore_errors=True)
    mod, ms_target, db, ms_wall = tune_metaschedule(spec, target.tvm, threads, max(args.budgets), ms_dir, args.seed)
    print(f"MetaSchedule: {max(args.budgets)} trials in {ms_wall:.0f} s", flush=True)
    ms = {k: ms_best_after(mod, ms_target, db, k)[0] for k in args.budgets}

    # -- time everything interleaved -----------------------------------------------------------
    arrays = random_inputs(spec)
    aligned = convgen.aligned_empty(arrays[0].shape, arrays[0].dtype)  # as a framework allocates
    aligned[...] = arrays[0]
    arrays[0] = aligned
    want = conv2d_reference(spec, *arrays)
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in arrays] + [tvm.runtime.empty(spec.output_shape, "float32", dev)]
    fns = {}
    for k, kern in cg.items():
        packed = kern.pack_weights(arrays[1])  # weights prepared once, as deployed
        np.testing.assert_allclose(kern(arrays[0], packed), want, atol=tolerance(spec))
        fns[f"convgen-{k}"] = (lambda kern=kern, packed=packed: kern(arrays[0], packed))
    for k, lib in ms.items():
        if lib is None:
            continue
        f = lib["main"]
        f(*targs)
        np.testing.assert_allclose(targs[-1].numpy(), want, atol=tolerance(spec))
        fns[f"metaschedule-{k}"] = (lambda f=f: f(*targs))
    tx, tw = (torch.from_numpy(a) for a in arrays[:2])
    kw = dict(stride=spec.stride, padding=(spec.padding[0], spec.padding[1]), dilation=spec.dilation, groups=spec.groups)
    tw_cl = tw.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fns["onednn-nchw"] = lambda: torch.nn.functional.conv2d(tx, tw, **kw)
        fns["onednn-cl"] = lambda: torch.nn.functional.conv2d(tx.contiguous(memory_format=torch.channels_last), tw_cl, **kw)
        samples = interleaved(fns, args.rounds)
    med = {n: float(np.median(v)) for n, v in samples.items()}
    ms_name = f"metaschedule-{max(args.budgets)}"
    # ratios are medians over rounds of the ratio within a round (see benchutil.paired_ratio)
    print(f"\n{'kernel':<18} {'ms':>8} {'GFLOP/s':>8} {'vs oneDNN':>9} {'vs ' + ms_name:>20}")
    for n, t in med.items():
        vs_ms = f"{paired_ratio(samples, [ms_name], n):.2f}x" if ms_name in samples else "-"
        vs_dnn = paired_ratio(samples, ["onednn-nchw", "onednn-cl"], n)
        print(f"{n:<18} {t * 1e3:8.3f} {spec.flops / t / 1e9:8.1f} {vs_dnn:8.2f}x {vs_ms:>20}")
    print(f"\ntuning wall time: convgen {max(args.convgen_budgets)} trials {cg_wall:.0f} s, "
          f"MetaSchedule {max(args.budgets)} trials {ms_wall:.0f} s ({ms_wall / cg_wall:.1f}x longer)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"layer": args.layer, "median_s": med, "convgen_wall_s": cg_wall, "ms_wall_s": ms_wall}, fh, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
