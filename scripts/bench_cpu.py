#!/usr/bin/env python3
"""convgen CPU kernels vs oneDNN (torch.nn.functional.conv2d) and MetaSchedule, in one process.

Per layer, timed from Python the way a user calls them, interleaved round by round so that
machine noise hits every candidate alike (the median per candidate is reported):

- convgen ``default``: the template's untuned default config;
- convgen ``tuned``: the shipped records (or ``--records``), when they cover the layer;
- oneDNN: torch 2.13's CPU convolution on the user's NCHW tensors, and on channels_last
  (the layout change inside the timed call, as for convgen); the faster of the two in each
  round is the peer;
- MetaSchedule: the best of a ``scripts/compare_metaschedule.py`` database, where one exists.

convgen kernels run with prepared weights (``k.pack_weights(w)`` once, as in inference;
``--per-call-weights`` times the path that prepares them on every call). Prints GFLOP/s
(median time), % of the measured FMA peak, ratios vs oneDNN (median over rounds of the
ratio within a round: robust to the slow spells of a shared machine) and the geomeans.

    python scripts/bench_cpu.py                      # the ResNet-50 + MobileNet set
    python scripts/bench_cpu.py --layers resnet50.r2_3x3 resnet50.r4_3x3 --rounds 30
    python scripts/bench_cpu.py --markdown           # the README table
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from benchutil import MS_DB, geomean, interleaved, paired_ratio

RESNET = ["resnet50.conv1", "resnet50.r2_3x3", "resnet50.r2_1x1_reduce", "resnet50.r3_3x3", "resnet50.r3_3x3_s2",
          "resnet50.r4_3x3", "resnet50.r5_3x3", "resnet50.r5_1x1_expand"]
MOBILENET = ["mobilenet_v1.dw32_112", "mobilenet_v1.dw512_14"]
DEFAULT_LAYERS = RESNET + ["resnet50.r2_1x1_expand", "resnet50.r5_1x1_reduce"] + MOBILENET


def metaschedule_kernel(layer: str, spec, target, db_root: str):
    """The best kernel of a MetaSchedule database for ``layer``, or None."""
    path = os.path.join(db_root, layer)
    if not os.path.exists(os.path.join(path, "database_tuning_record.json")):
        return None
    import tvm
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from convgen.compute import conv2d_primfunc

    db = ms.database.JSONDatabase(os.path.join(path, "database_workload.json"),
                                  os.path.join(path, "database_tuning_record.json"))
    recs = [r for r in db.get_all_tuning_records() if r.run_secs and float(r.run_secs[0]) < 1e9]
    if not recs:
        return None
    best = min(recs, key=lambda r: float(np.median([float(x) for x in r.run_secs])))
    mod = tvm.IRModule({"main": conv2d_primfunc(spec)})
    sch = Schedule(mod)
    best.trace.apply_to_schedule(sch, remove_postproc=False)
    return tvm.compile(sch.mod, target=tvm.target.Target(dict(target.tvm)))["main"]


def main(argv: list[str] | None = None) -> int:
    """Time every layer's candidates interleaved and print the per-layer rows and geomeans."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, help="built-in layers (see `convgen layers`)")
    ap.add_argument("--target", default="host")
    ap.add_argument("--threads", type=int, default=None, help="threads for convgen and torch (default: all CPUs)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per layer (median reported)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    ap.add_argument("--records", nargs="*", default=None, help="tuning logs for the 'tuned' column (default: shipped)")
    ap.add_argument("--no-builtin-records", action="store_true", help="ignore the records shipped with convgen")
    ap.add_argument("--ms-db", default=MS_DB, help="folder of MetaSchedule databases (compare_metaschedule.py)")
    ap.add_argument("--per-call-weights", action="store_true", help="prepare convgen's weights on every call")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench_cpu needs torch: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    import tvm

    import convgen
    from convgen import builder, workloads
    from convgen.peak import measured_peak_gflops
    from convgen.reference import random_inputs
    from convgen.target import get_target, host_cpu_name

    target = get_target(args.target)
    threads = args.threads or convgen.runtime.default_num_threads()
    convgen.set_num_threads(threads)
    torch.set_num_threads(threads)
    peak = measured_peak_gflops(target, threads)
    header = (f"{host_cpu_name()}, {threads} threads, target {target.name}, measured FMA peak {peak:.0f} GFLOP/s; "
              f"torch {torch.__version__} (oneDNN), TVM {tvm.__version__}; convgen weights "
              f"{'prepared per call' if args.per_call_weights else 'prepared once'}")
    print("# " + header, flush=True)

    rows = []
    for name in args.layers:
        spec = workloads.layer(name)
        # 64-byte aligned data, as a framework allocates it (unaligned numpy would cost
        # convgen a copy per call: TVM takes DLPack data only 64-byte aligned)
        x0, w = random_inputs(spec)[:2]
        x = convgen.aligned_empty(x0.shape, x0.dtype)
        x[...] = x0
        kernels = {"default": convgen.build(spec, target, num_threads=threads, builtin_records=False)}
        tmpl, cfg, source = builder.resolve_config(spec, target, None, None, args.records, not args.no_builtin_records)
        if source in ("records", "builtin"):
            kernels["tuned"] = convgen.build(spec, target, cfg, template=tmpl.name, num_threads=threads)

        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        kw = dict(stride=spec.stride, padding=(spec.padding[0], spec.padding[1]), dilation=spec.dilation, groups=spec.groups)
        tw_cl = tw.contiguous(memory_format=torch.channels_last)
        want = torch.nn.functional.conv2d(tx, tw, **kw).numpy()
        fns = {}
        for kname, k in kernels.items():
            weights = w if args.per_call_weights else k.pack_weights(w)
            err = float(np.abs(k(x, weights) - want).max())
            if err > 1e-2:
                print(f"  WARNING {name} {kname}: max error {err:.2e} vs torch", file=sys.stderr)
            fns[kname] = lambda k=k, weights=weights: k(x, weights)
        ms_fn = metaschedule_kernel(name, spec, target, args.ms_db)
        if ms_fn is not None:
            targs = [tvm.runtime.tensor(x), tvm.runtime.tensor(w), tvm.runtime.empty(spec.output_shape, "float32")]
            fns["metaschedule"] = lambda: ms_fn(*targs)
        with torch.no_grad():
            fns["onednn_nchw"] = lambda: torch.nn.functional.conv2d(tx, tw, **kw)
            fns["onednn_cl"] = lambda: torch.nn.functional.conv2d(tx.contiguous(memory_format=torch.channels_last), tw_cl, **kw)
            samples = interleaved(fns, args.rounds, args.min_time)
        med = {c: float(np.median(v)) for c, v in samples.items()}
        onednn = min(med["onednn_nchw"], med["onednn_cl"])
        row = {"layer": name, "spec": spec.describe(), "gflop": spec.flops / 1e9, "onednn_s": onednn,
               "onednn_layout": "nchw" if med["onednn_nchw"] <= med["onednn_cl"] else "cl"}
        for c in ("default", "tuned", "metaschedule"):
            if c in med:
                row[f"{c}_s"] = med[c]
                row[f"{c}_ratio"] = paired_ratio(samples, ["onednn_nchw", "onednn_cl"], c)
        if "tuned" in kernels:
            row["tuned_template"] = kernels["tuned"].template
        rows.append(row)
        _print_row(row, peak)

    _print_summary(rows, peak, args.markdown, header)
    return 0


COLUMNS = ("default", "tuned", "metaschedule")


def _gf(row, key):
    return row["gflop"] / row[key]


def _print_row(row, peak):
    s = f"{row['layer']:<24} oneDNN {_gf(row, 'onednn_s'):6.1f} GF/s ({row['onednn_layout']:<4})"
    for c in COLUMNS:
        if f"{c}_s" in row:
            s += f" | {c} {_gf(row, f'{c}_s'):6.1f} GF/s {100 * _gf(row, f'{c}_s') / peak:4.0f}% x{row[f'{c}_ratio']:.2f}"
    print(s, flush=True)


def _print_summary(rows, peak, markdown, header):
    cols = [c for c in COLUMNS if any(f"{c}_s" in r for r in rows)]
    if markdown:
        print(f"\n{header}\n")
        head = "| layer | shape | oneDNN GF/s |" + "".join(f" {c} GF/s (% peak) | {c} / oneDNN |" for c in cols)
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for r in rows:
            line = f"| {r['layer']} | {r['spec']} | {_gf(r, 'onednn_s'):.1f} |"
            for c in cols:
                if f"{c}_s" in r:
                    extra = f" {r['tuned_template'].split('.')[-1]}" if c == "tuned" else ""
                    line += f" {_gf(r, f'{c}_s'):.1f} ({100 * _gf(r, f'{c}_s') / peak:.0f}%){extra} | {r[f'{c}_ratio']:.2f}x |"
                else:
                    line += " - | - |"
            print(line)
        print()
    for c in cols:
        for label, group in (("ResNet-50 set", RESNET), ("MobileNet depthwise", MOBILENET), ("all", None)):
            have = [r for r in rows if f"{c}_ratio" in r and (group is None or r["layer"] in group)]
            if have:
                print(f"geomean {c} / oneDNN, {label} ({len(have)} layers): {geomean([r[f'{c}_ratio'] for r in have]):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
