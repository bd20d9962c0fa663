#!/usr/bin/env python3
"""End-to-end latency of whole PyTorch models: eager torch, torch.compile, convgen.

Per model and batch size, interleaved round by round in one process (so machine noise hits
every candidate alike), each candidate called as a user calls it:

- ``eager``: the model in torch (oneDNN convolutions), NCHW input;
- ``compile``: ``torch.compile(model)`` (inductor, its default mode), NCHW input;
- ``convgen default``: ``convgen.torch.optimize(model, x, builtin_records=False)``: the
  templates' default configs;
- ``convgen tuned``: ``convgen.torch.optimize(model, x)``: the records shipped with
  convgen (or ``--records``), stand-ins included (batch-1 records serve batch 8).

All take the same NCHW float32 tensor under ``torch.no_grad()``; outputs are checked
against eager (relative error). Ratios are the median over rounds of eager's time / the
candidate's time within the round. The models are this project's torchvision-equivalent
ResNet-50 and MobileNet-v2 (``convgen.torch.models``; torchvision does not import beside the
CPU build of torch 2.13), random weights, BatchNorm statistics randomized.

    python scripts/bench_torch.py                        # ResNet-50 and MobileNet-v2 at batch 1 and 8
    python scripts/bench_torch.py --models resnet50 --batches 1 --rounds 20 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchutil import geomean, interleaved, paired_ratio


def main(argv: list[str] | None = None) -> int:
    """Time each model's candidates interleaved; print a row per (model, batch)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"], help="from convgen.torch.models")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=224, help="input height = width")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (median reported)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per timed sample")
    ap.add_argument("--records", nargs="*", default=None, help="tuning logs for 'convgen tuned' (default: shipped)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on 2 cores)")
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and convgen (default: all CPUs)")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench_torch needs torch: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    import convgen
    import convgen.torch as ct
    from convgen.target import get_target, host_cpu_name
    from convgen.torch import models

    threads = args.threads or convgen.runtime.default_num_threads()
    torch.set_num_threads(threads)
    target = get_target("host")
    header = (f"{host_cpu_name()}, {threads} threads, target {target.name}; torch {torch.__version__} "
              f"(oneDNN; inductor for compile), convgen {convgen.__version__}")
    print("# " + header, flush=True)
    rows = []
    for name in args.models:
        model = getattr(models, name)()
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            fns, build_s = {}, {}
            with torch.no_grad():
                want = model(x)
                fns["eager"] = lambda m=model: m(x)
                if not args.no_compile:
                    t0 = time.perf_counter()
                    compiled = torch.compile(model)
                    compiled(x)
                    build_s["compile"] = time.perf_counter() - t0
                    fns["compile"] = lambda m=compiled: m(x)
                for label, kw in (("convgen default", {"builtin_records": False}),
                                  ("convgen tuned", {"records": args.records})):
                    t0 = time.perf_counter()
                    fast = ct.optimize(model, x, num_threads=threads, **kw)
                    fast(x)
                    build_s[label] = time.perf_counter() - t0
                    err = float((fast(x) - want).norm() / want.norm())
                    if err > 2e-3:
                        print(f"  WARNING {name} n{batch} {label}: relative error {err:.1e} vs eager", file=sys.stderr)
                    fns[label] = lambda m=fast: m(x)
                samples = interleaved(fns, args.rounds, args.min_time)
            row = {"model": name, "batch": batch, "ms": {c: 1e3 * statistics.median(v) for c, v in samples.items()},
                   "ratio": {c: paired_ratio(samples, ["eager"], c) for c in samples if c != "eager"}}
            rows.append(row)
            print(f"{name} batch {batch}: eager {row['ms']['eager']:.1f} ms | " + " | ".join(
                f"{c} {row['ms'][c]:.1f} ms x{row['ratio'][c]:.2f}" for c in row["ratio"]) +
                "  (first-use seconds: " + ", ".join(f"{c} {s:.0f}" for c, s in build_s.items()) + ")", flush=True)
    if args.markdown:
        cols = [c for c in rows[0]["ratio"]]
        print(f"\n{header}\n")
        print("| model | batch | eager ms | " + " | ".join(f"{c} ms (vs eager)" for c in cols) + " |")
        print("|---|---|---|" + "---|" * len(cols))
        for r in rows:
            print(f"| {r['model']} | {r['batch']} | {r['ms']['eager']:.1f} | " +
                  " | ".join(f"{r['ms'][c]:.1f} ({r['ratio'][c]:.2f}x)" for c in cols) + " |")
    for c in rows[0]["ratio"]:
        print(f"geomean {c} / eager: {geomean([r['ratio'][c] for r in rows]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
