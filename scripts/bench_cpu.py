#!/usr/bin/env python3
"""convgen CPU kernels vs oneDNN (torch.nn.functional.conv2d), both call paths, both layouts.

Per layer, every candidate is timed from Python the way a user calls it, interleaved round
by round so that machine noise hits every candidate alike:

- ``plain``: ``k(x, w)`` on the NCHW numpy arrays a newcomer has (fresh from numpy, so not
  64-byte aligned; raw OIHW weights, packed inside the call), against ``F.conv2d`` on the
  same NCHW tensors (``torch.from_numpy``: the same memory);
- ``NCHW``: the NCHW kernel with weights packed once (``k.pack_weights``, as in inference)
  against ``F.conv2d`` on NCHW tensors;
- ``NHWC``: the NHWC kernel, weights packed once, against ``F.conv2d`` on channels_last
  tensors (the data already channels_last: each side in its own layout, no conversion);
- ``best``: each side's faster layout (convgen's and oneDNN's best in the round);
- ``default``: the same ``best`` with the templates' default configs instead of the shipped
  records (or ``--records``).

oneDNN keeps no weights between calls: it reorders them in every call, as convgen's plain
path does. Ratios are the median over rounds of (oneDNN's time / convgen's) within a round:
robust to the slow spells of a shared machine. GFLOP/s and % of the measured FMA peak are
of the median times. Geomeans over the ResNet-50 set (8 layers) and the depthwise pair.

    python scripts/bench_cpu.py                      # the ResNet-50 + MobileNet set
    python scripts/bench_cpu.py --layers resnet50.r2_3x3 resnet50.r4_3x3 --rounds 30
    python scripts/bench_cpu.py --markdown           # the README table
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchutil import geomean, interleaved, paired_ratio

RESNET = ["resnet50.conv1", "resnet50.r2_3x3", "resnet50.r2_1x1_reduce", "resnet50.r3_3x3", "resnet50.r3_3x3_s2",
          "resnet50.r4_3x3", "resnet50.r5_3x3", "resnet50.r5_1x1_expand"]
MOBILENET = ["mobilenet_v1.dw32_112", "mobilenet_v1.dw512_14"]
DEFAULT_LAYERS = RESNET + ["resnet50.r2_1x1_expand", "resnet50.r5_1x1_reduce"] + MOBILENET
COLUMNS = ("plain", "NCHW", "NHWC", "best", "default")


def ratio_of(samples: dict, peer: list[str], mine: list[str]) -> float:
    """Median over rounds of (fastest of ``peer`` / fastest of ``mine``) within the round."""
    import statistics

    rounds = len(samples[peer[0]])
    return statistics.median(min(samples[p][i] for p in peer) / min(samples[m][i] for m in mine)
                             for i in range(rounds))


def main(argv: list[str] | None = None) -> int:
    """Time every layer's candidates interleaved and print the per-layer rows and geomeans."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, help="built-in layers (see `convgen layers`)")
    ap.add_argument("--target", default="host")
    ap.add_argument("--threads", type=int, default=None, help="threads for convgen and torch (default: all CPUs)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per layer (median reported)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    ap.add_argument("--records", nargs="*", default=None, help="tuning logs for the tuned kernels (default: shipped)")
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
    from convgen.target import get_target, host_cpu_name

    target = get_target(args.target)
    threads = args.threads or convgen.runtime.default_num_threads()
    convgen.set_num_threads(threads)
    torch.set_num_threads(threads)
    peak = measured_peak_gflops(target, threads)
    header = (f"{host_cpu_name()}, {threads} threads, target {target.name}, measured FMA peak {peak:.0f} GFLOP/s; "
              f"torch {torch.__version__} (oneDNN), TVM {tvm.__version__}")
    print("# " + header, flush=True)
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    rows = []
    for name in args.layers:
        nchw = workloads.layer(name)
        nhwc = nchw.replace(layout="NHWC")
        # what a newcomer has: float32 arrays fresh from numpy (not 64-byte aligned)
        x = rng.uniform(-1, 1, nchw.input_shape).astype("float32")
        w = rng.uniform(-1, 1, nchw.weight_shape).astype("float32")
        x_hwc, w_hwio = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        tx_cl, tw_cl = tx.contiguous(memory_format=torch.channels_last), tw.contiguous(memory_format=torch.channels_last)
        kw = dict(stride=nchw.stride, padding=(nchw.padding[0], nchw.padding[1]), dilation=nchw.dilation,
                  groups=nchw.groups)
        want = F.conv2d(tx, tw, **kw).numpy()

        def kernel(spec, tuned):
            if not tuned:
                return convgen.build(spec, target, num_threads=threads, builtin_records=False)
            tmpl, cfg, _ = builder.resolve_config(spec, target, None, None, args.records, True)
            return convgen.build(spec, target, cfg, template=tmpl.name, num_threads=threads)

        k = {"nchw": kernel(nchw, True), "nhwc": kernel(nhwc, True),
             "nchw_default": kernel(nchw, False), "nhwc_default": kernel(nhwc, False)}
        packed = {n: kk.pack_weights(w if kk.spec.layout == "NCHW" else w_hwio) for n, kk in k.items()}
        for n, kk in k.items():
            got = kk(x if kk.spec.layout == "NCHW" else x_hwc, packed[n])
            got = got if kk.spec.layout == "NCHW" else got.transpose(0, 3, 1, 2)
            err = float(np.abs(got - want).max())
            if err > 1e-2:
                print(f"  WARNING {name} {n}: max error {err:.2e} vs torch", file=sys.stderr)
        fns = {
            "plain": lambda: k["nchw"](x, w),
            "nchw": lambda: k["nchw"](x, packed["nchw"]),
            "nhwc": lambda: k["nhwc"](x_hwc, packed["nhwc"]),
            "nchw_default": lambda: k["nchw_default"](x, packed["nchw_default"]),
            "nhwc_default": lambda: k["nhwc_default"](x_hwc, packed["nhwc_default"]),
        }
        with torch.no_grad():
            fns["onednn_nchw"] = lambda: F.conv2d(tx, tw, **kw)
            fns["onednn_cl"] = lambda: F.conv2d(tx_cl, tw_cl, **kw)
            samples = interleaved(fns, args.rounds, args.min_time)
        med = {c: float(np.median(v)) for c, v in samples.items()}
        row = {
            "layer": name, "spec": nchw.describe(), "gflop": nchw.flops / 1e9, "med": med,
            "ratio": {
                "plain": paired_ratio(samples, ["onednn_nchw"], "plain"),
                "NCHW": paired_ratio(samples, ["onednn_nchw"], "nchw"),
                "NHWC": paired_ratio(samples, ["onednn_cl"], "nhwc"),
                "best": ratio_of(samples, ["onednn_nchw", "onednn_cl"], ["nchw", "nhwc"]),
                "default": ratio_of(samples, ["onednn_nchw", "onednn_cl"], ["nchw_default", "nhwc_default"]),
            },
            "templates": f"{k['nchw'].template.split('.')[-1]}/{k['nhwc'].template.split('.')[-1]}",
        }
        rows.append(row)
        _print_row(row, peak)
    _print_summary(rows, peak, args.markdown, header)
    return 0


def _gf(row, key):
    return row["gflop"] / row["med"][key]


def _print_row(row, peak):
    r = row["ratio"]
    best = min(row["med"]["nchw"], row["med"]["nhwc"])
    print(f"{row['layer']:<24} oneDNN {_gf(row, 'onednn_nchw'):6.1f}/{_gf(row, 'onednn_cl'):6.1f} GF/s (NCHW/CL) | "
          f"convgen best {row['gflop'] / best:6.1f} GF/s ({100 * row['gflop'] / best / peak:.0f}% peak, {row['templates']}) | "
          + " ".join(f"{c} x{r[c]:.2f}" for c in COLUMNS), flush=True)


def _print_summary(rows, peak, markdown, header):
    if markdown:
        print(f"\n{header}\n")
        print("| layer | oneDNN GF/s NCHW / CL | convgen GF/s (% peak) NCHW / NHWC | plain k(x, w) | prepacked NCHW | "
              "prepacked NHWC | best / best | defaults best / best |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            r = row["ratio"]
            cg = " / ".join(f"{_gf(row, n):.0f} ({100 * _gf(row, n) / peak:.0f}%)" for n in ("nchw", "nhwc"))
            print(f"| {row['layer']} | {_gf(row, 'onednn_nchw'):.0f} / {_gf(row, 'onednn_cl'):.0f} | {cg} | "
                  + " | ".join(f"{r[c]:.2f}x" for c in COLUMNS) + " |")
        print()
    for label, group in (("ResNet-50 set", RESNET), ("MobileNet depthwise", MOBILENET), ("all", None)):
        have = [r for r in rows if group is None or r["layer"] in group]
        if have:
            print(f"geomean vs oneDNN, {label} ({len(have)} layers): " + ", ".join(
                f"{c} {geomean([r['ratio'][c] for r in have]):.2f}x" for c in COLUMNS)
                + (f"; lowest plain {min(r['ratio']['plain'] for r in have):.2f}x" if have else ""))


if __name__ == "__main__":
    sys.exit(main())
