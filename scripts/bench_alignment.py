#!/usr/bin/env python3
"""What reading unaligned arrays in place costs: the same kernel on 64-byte aligned and on
unaligned (one float past a cache line) data and output, per ISA, interleaved in one process.

convgen's kernels declare their arguments aligned to one element, so they read a numpy or
torch array wherever it starts, with unaligned vector loads and stores. Those cost the same
as aligned ones on data that happens to be aligned; on data that is not, a vector that
crosses a cache line costs a second access. This measures the difference on the layers
where the kernel touches the caller's memory most directly: NHWC 1x1 convolutions (the data
is read in place, no re-layout copy) and NCHW depthwise rows (unaligned row loads), with
weights packed once, for every x86 target this machine runs.

    python scripts/bench_alignment.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchutil import geomean, interleaved, paired_ratio

LAYERS = [("resnet50.r2_1x1_reduce", "NHWC"), ("resnet50.r5_1x1_expand", "NHWC"), ("resnet50.r3_1x1_expand", "NHWC"),
          ("mobilenet_v1.dw32_112", "NCHW"), ("mobilenet_v2.dw144_56", "NHWC")]


def unaligned_copy(a: np.ndarray) -> np.ndarray:
    """``a`` in memory that starts one element past a 64-byte boundary."""
    import convgen

    buf = convgen.aligned_empty((a.size + 1,), a.dtype)
    view = buf[1:].reshape(a.shape)
    view[...] = a
    return view


def main(argv: list[str] | None = None) -> int:
    """Print, per target and layer, aligned / unaligned time and GFLOP/s."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--min-time", type=float, default=0.05)
    args = ap.parse_args(argv)
    import convgen
    from convgen import workloads
    from convgen.target import host_cpu_name

    print(f"# {host_cpu_name()}, {convgen.runtime.default_num_threads()} threads; ratio = unaligned time / aligned time")
    for target in [t for t in convgen.all_targets().values() if t.family == "x86" and t.runs_here()]:
        ratios = []
        for name, layout in LAYERS:
            spec = workloads.layer(name).replace(layout=layout)
            k = convgen.build(spec, target)
            x, w = [np.random.default_rng(0).uniform(-1, 1, s).astype("float32") for s in (spec.input_shape, spec.weight_shape)]
            packed = k.pack_weights(w)
            xa, oa = convgen.aligned_empty(x.shape, x.dtype), convgen.aligned_empty(spec.output_shape, "float32")
            xa[...] = x
            xu, ou = unaligned_copy(x), unaligned_copy(np.zeros(spec.output_shape, np.float32))
            samples = interleaved({"aligned": lambda: k(xa, packed, out=oa), "unaligned": lambda: k(xu, packed, out=ou)},
                                  args.rounds, args.min_time)
            r = 1 / paired_ratio(samples, ["aligned"], "unaligned")  # unaligned / aligned time
            ratios.append(r)
            print(f"{target.name:<11} {name:<24} {layout} {k.template:<20} aligned "
                  f"{spec.flops / np.median(samples['aligned']) / 1e9:6.1f} GF/s, unaligned x{r:.3f} the time", flush=True)
        print(f"{target.name}: geomean unaligned / aligned time {geomean(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
