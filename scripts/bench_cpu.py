#!/usr/bin/env python3
"""convgen CPU kernels vs oneDNN (torch.nn.functional.conv2d), interleaved in one process.

For each layer: convgen's default config, convgen tuned (shipped or --records, when some
exist for the layer), and torch in NCHW and channels_last (its best layout is the peer).
Every candidate is called from Python the way a user calls it (output allocated per
call, layout changes inside the timed call), in rounds that alternate between the
candidates so that machine noise hits all of them alike; the median per candidate is
reported. Prints GFLOP/s, % of the measured peak, ratios vs oneDNN and the geomeans.

    python scripts/bench_cpu.py                      # ResNet-50 + MobileNet set
    python scripts/bench_cpu.py --layers resnet50.r2_3x3 resnet50.r4_3x3 --rounds 30
    python scripts/bench_cpu.py --markdown           # a table for the README
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

DEFAULT_LAYERS = [
    "resnet50.conv1", "resnet50.r2_3x3", "resnet50.r2_1x1_reduce", "resnet50.r2_1x1_expand",
    "resnet50.r3_3x3", "resnet50.r3_3x3_s2", "resnet50.r4_3x3", "resnet50.r5_3x3",
    "resnet50.r5_1x1_reduce", "resnet50.r5_1x1_expand", "mobilenet_v1.dw32_112", "mobilenet_v1.dw512_14",
]


def _timer(fn, min_time: float) -> float:
    """Seconds per call of ``fn``: enough calls to last ``min_time``, after one warm-up."""
    fn()
    n, elapsed = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n
        n = max(n * 2, int(n * min_time / max(elapsed, 1e-6)) + 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, help="built-in layers (see `convgen layers`)")
    ap.add_argument("--target", default="host")
    ap.add_argument("--threads", type=int, default=None, help="threads for convgen and torch (default: all CPUs)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per layer (median reported)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    ap.add_argument("--records", nargs="*", default=None, help="tuning logs for the 'tuned' column")
    ap.add_argument("--no-builtin-records", action="store_true", help="ignore records shipped with convgen")
    ap.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW", help="the user's layout for convgen")
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
    print(f"# {host_cpu_name()}, {threads} threads, target {target.name}, measured peak {peak:.0f} GFLOP/s, "
          f"torch {torch.__version__} (oneDNN), TVM {tvm.__version__}")

    rows = []
    for name in args.layers:
        spec = workloads.layer(name)
        if args.layout == "NHWC":
            spec = spec.replace(layout="NHWC")
        x, w = random_inputs(spec)[:2]
        cands = {}
        default = convgen.build(spec, target, num_threads=threads, builtin_records=False)
        cands["default"] = default
        tuned = None
        try:
            tmpl, cfg, source = builder.resolve_config(spec, target, None, None, args.records,
                                                        not args.no_builtin_records)
            if source in ("records", "builtin"):
                tuned = convgen.build(spec, target, cfg, template=tmpl.name, num_threads=threads)
                cands["tuned"] = tuned
        except Exception as e:  # noqa: BLE001 - a broken record must not stop the benchmark
            print(f"  {name}: no tuned kernel ({e})", file=sys.stderr)

        # torch sees the user's NCHW data; channels_last is its fastest layout for many
        # layers, and converting to it is part of that path's cost, as for convgen.
        tx = torch.from_numpy(x if spec.layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tw = torch.from_numpy(w if spec.layout == "NCHW" else np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        kw = dict(stride=spec.stride, padding=(spec.padding[0], spec.padding[1]), dilation=spec.dilation, groups=spec.groups)
        tw_cl = tw.contiguous(memory_format=torch.channels_last)
        ref = torch.nn.functional.conv2d(tx, tw, **kw).numpy()
        if spec.layout == "NHWC":
            ref = ref.transpose(0, 2, 3, 1)
        for cname, k in cands.items():
            err = float(np.abs(k(x, w) - ref).max())
            if err > 1e-2:
                print(f"  WARNING {name} {cname}: max error {err:.2e} vs torch", file=sys.stderr)

        fns = {c: (lambda k=k: k(x, w)) for c, k in cands.items()}
        with torch.no_grad():
            fns["onednn_nchw"] = lambda: torch.nn.functional.conv2d(tx, tw, **kw)
            fns["onednn_cl"] = lambda: torch.nn.functional.conv2d(tx.contiguous(memory_format=torch.channels_last), tw_cl, **kw)
            samples = {c: [] for c in fns}
            for _ in range(args.rounds):
                for c, fn in fns.items():
                    samples[c].append(_timer(fn, args.min_time))
        med = {c: float(np.median(v)) for c, v in samples.items()}
        onednn = min(med["onednn_nchw"], med["onednn_cl"])
        row = {"layer": name, "spec": spec.describe(), "gflop": spec.flops / 1e9, "onednn_s": onednn,
               "onednn_layout": "nchw" if med["onednn_nchw"] <= med["onednn_cl"] else "cl"}
        for c in cands:
            row[f"{c}_s"] = med[c]
            row[f"{c}_ratio"] = onednn / med[c]
        rows.append(row)
        _print_row(row, peak)

    _print_summary(rows, peak, args.markdown, host_cpu_name(), threads, target.name)
    return 0


def _gf(row, key):
    return row["gflop"] / row[key]


def _print_row(row, peak):
    s = f"{row['layer']:<26} oneDNN {_gf(row, 'onednn_s'):6.1f} GF/s ({row['onednn_layout']})"
    for c in ("default", "tuned"):
        if f"{c}_s" in row:
            s += f" | {c} {_gf(row, f'{c}_s'):6.1f} GF/s {100 * _gf(row, f'{c}_s') / peak:4.0f}% x{row[f'{c}_ratio']:.2f}"
    print(s, flush=True)


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _print_summary(rows, peak, markdown, cpu, threads, target):
    cols = [c for c in ("default", "tuned") if any(f"{c}_s" in r for r in rows)]
    if markdown:
        print(f"\n{cpu}, {threads} threads, target {target}, measured peak {peak:.0f} GFLOP/s\n")
        head = "| layer | shape | oneDNN GF/s |" + "".join(f" {c} GF/s | {c} % peak | {c} / oneDNN |" for c in cols)
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for r in rows:
            line = f"| {r['layer']} | {r['spec']} | {_gf(r, 'onednn_s'):.1f} |"
            for c in cols:
                if f"{c}_s" in r:
                    line += f" {_gf(r, f'{c}_s'):.1f} | {100 * _gf(r, f'{c}_s') / peak:.0f}% | {r[f'{c}_ratio']:.2f}x |"
                else:
                    line += " - | - | - |"
            print(line)
    for c in cols:
        have = [r for r in rows if f"{c}_ratio" in r]
        print(f"geomean {c} / oneDNN over {len(have)} layers: {_geomean([r[f'{c}_ratio'] for r in have]):.2f}x")
        resnet = [r for r in have if r["layer"].startswith("resnet")]
        if resnet and len(resnet) != len(have):
            print(f"geomean {c} / oneDNN over {len(resnet)} ResNet layers: {_geomean([r[f'{c}_ratio'] for r in resnet]):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
