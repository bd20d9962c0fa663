#!/usr/bin/env python3
"""End-to-end latency of whole PyTorch models: eager torch, torch.compile, convgen, and the
peer engines OpenVINO and ONNX Runtime.

Per model and batch size, interleaved round by round in one process (so machine noise hits
every candidate alike), each candidate called as a user calls it, in steady state (a few
untimed calls first):

- ``eager``: the model in torch (oneDNN convolutions), NCHW input;
- ``compile``: ``torch.compile(model)`` (inductor, its default mode), NCHW input;
- ``convgen default``: ``convgen.torch.optimize(model, x, builtin_records=False)``: the
  templates' default configs;
- ``convgen tuned``: ``convgen.torch.optimize(model, x)``: the records shipped with
  convgen (or ``--records``), stand-ins included (batch-1 records serve batch 8);
- ``openvino``: ``ov.convert_model(model, example_input=x)`` compiled for the CPU with
  ``INFERENCE_NUM_THREADS``, ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_PRECISION_HINT``
  (``--peer-precision``, f32 by default: on a CPU with bf16 OpenVINO would otherwise run
  bf16 silently), called through an infer request (``req.infer({0: x.numpy()})``);
- ``onnxruntime``: the model exported to ONNX (opset 17, torch's TorchScript exporter), a
  session on the CPU provider with ``ORT_ENABLE_ALL``, the same intra-op threads, one
  inter-op thread; ``sess.run(None, {name: x.numpy()})`` (always float32).

The peers are optional (``pip install -e '.[bench]'`` installs them): one that is not
installed, or fails on a model, is left out with a one-line note; ``--no-peers`` skips
them. See ``scripts/peers.py`` for their set-up.

All take the same NCHW float32 tensor under ``torch.no_grad()``; outputs are checked
against eager (relative error). Ratios are medians over rounds of a ratio within the round:
``vs eager`` is eager's time / the candidate's; ``vs best peer`` (convgen's columns) is the
faster peer's time in the round / convgen's (> 1: convgen is faster). The models are this
project's torchvision-equivalent networks and patterns (``convgen.torch.models``: ResNet-50,
MobileNet-v2, and ``PATTERNS``, blocks of ConvNeXt, RegNetY, EfficientNet, DeepLabV3,
Inception-v3 and AlexNet at their real input shapes; torchvision does not import beside the
CPU build of torch 2.13), random weights, BatchNorm statistics randomized.

    python scripts/bench_torch.py                        # ResNet-50 and MobileNet-v2 at batch 1 and 8
    python scripts/bench_torch.py --models resnet50 --batches 1 --rounds 20 --markdown
    python scripts/bench_torch.py --models regnet_block convnext_block deeplab_head --batches 1 --no-compile
    python scripts/bench_torch.py --models mobilenet_v2 --batches 1 --peer-precision bf16   # OpenVINO in bf16
    python scripts/bench_torch.py --models resnet50 --batches 1 --precision bfloat16        # both in bf16
    python scripts/bench_torch.py --models resnet50 --batches 1 --precision int8            # int8, peers on QDQ

With ``--precision bfloat16`` convgen runs ``optimize(..., precision="bfloat16")`` and the peers
their bf16 (OpenVINO's ``INFERENCE_PRECISION_HINT=bf16``; ONNX Runtime has no bf16 switch on
the CPU and stays f32); every candidate's relative error against eager fp32 is printed.
    python scripts/bench_torch.py --no-peers             # torch and convgen only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchutil import geomean, interleaved, model_and_input, model_names, paired_ratio

CONVGEN = ("convgen default", "convgen tuned")
WARMUP_CALLS = 3  # untimed calls of each candidate before the rounds: steady state, not first use


def main(argv: list[str] | None = None) -> int:
    """Time each model's candidates interleaved; print a row per (model, batch)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"],
                    help="from convgen.torch.models: " + ", ".join(model_names()))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=None,
                    help="input height = width (default: 224 for networks, the pattern's own for patterns)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (median reported)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per timed sample")
    ap.add_argument("--records", nargs="*", default=None, help="tuning logs for 'convgen tuned' (default: shipped)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on 2 cores)")
    ap.add_argument("--no-peers", action="store_true", help="skip OpenVINO and ONNX Runtime")
    ap.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default="float32",
                    help="what convgen's convolutions compute in (optimize(..., precision=)); int8: 8 random "
                         "calibration batches for convgen and for the peers' QDQ network (ONNX Runtime's "
                         "static quantizer, run by both peers)")
    ap.add_argument("--peer-precision", choices=("f32", "bf16"), default=None,
                    help="OpenVINO's INFERENCE_PRECISION_HINT (default: as --precision; ONNX Runtime always runs f32)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch, convgen and the peers (default: all CPUs)")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = ap.parse_args(argv)
    args.peer_precision = args.peer_precision or ("bf16" if args.precision == "bfloat16" else "f32")

    try:
        import torch
    except ImportError:
        print("bench_torch needs torch: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    unknown = [m for m in args.models if m not in model_names()]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(model_names())}")
    import convgen
    import convgen.torch as ct
    import peers
    from convgen.target import get_target, host_cpu_name

    threads = args.threads or convgen.runtime.default_num_threads()
    torch.set_num_threads(threads)
    target = get_target("host")
    engines: tuple[str, ...] = ()
    if not args.no_peers:
        engines, notes = peers.available()
        for note in notes:
            print(f"note: {note}", flush=True)
    header = (f"{host_cpu_name()}, {threads} threads, target {target.name}; torch {torch.__version__} "
              f"(oneDNN; inductor for compile), convgen {convgen.__version__} ({args.precision}); "
              + ("peers off (--no-peers)" if args.no_peers
                 else peers.describe("int8 QDQ" if args.precision == "int8" else args.peer_precision)))
    print("# " + header, flush=True)
    rows = []
    for name in args.models:
        for batch in args.batches:
            model, x = model_and_input(name, batch, args.size)
            fns, build_s, errs = {}, {}, {}
            with torch.no_grad():
                want = model(x)
                fns["eager"] = lambda m=model: m(x)
                if not args.no_compile:
                    t0 = time.perf_counter()
                    compiled = torch.compile(model)
                    compiled(x)
                    build_s["compile"] = time.perf_counter() - t0
                    fns["compile"] = lambda m=compiled: m(x)
                # int8: the same 8 random calibration batches for convgen and the peers' quantizer
                calibration = [torch.randn_like(x) for _ in range(8)] if args.precision == "int8" else None
                for label, kw in zip(CONVGEN, ({"builtin_records": False}, {"records": args.records})):
                    t0 = time.perf_counter()
                    fast = ct.optimize(model, x, num_threads=threads, precision=args.precision,
                                       calibration=calibration, **kw)
                    fast(x)
                    build_s[label] = time.perf_counter() - t0
                    err = errs[label] = peers.relative_error(fast(x), want)
                    if err > {"float32": 2e-3, "bfloat16": 5e-2}.get(args.precision, 1e-1):
                        print(f"  WARNING {name} n{batch} {label}: relative error {err:.1e} vs eager", file=sys.stderr)
                    fns[label] = lambda m=fast: m(x)
                if not engines:
                    found, notes = [], []
                elif args.precision == "int8":
                    found, notes = peers.int8_peers(model, x, threads, calibration)
                else:
                    found, notes = peers.make_peers(model, x, threads, args.peer_precision, engines)
                for note in notes:
                    print(f"  note: {name} n{batch}: {note}", flush=True)
                for peer in found:
                    err = errs[peer.name] = peers.relative_error(peer.run(), want)
                    if err > peers.TOLERANCE.get(peer.precision, 5e-2):
                        print(f"  WARNING {name} n{batch} {peer.name}: relative error {err:.1e} vs eager",
                              file=sys.stderr)
                    build_s[peer.name] = peer.setup_s
                    fns[peer.name] = peer.run
                for fn in fns.values():  # steady state: the timed rounds measure no first-call costs
                    for _ in range(WARMUP_CALLS):
                        fn()
                samples = interleaved(fns, args.rounds, args.min_time)
            peer_names = [p.name for p in found]
            row = {"model": name, "batch": batch, "ms": {c: 1e3 * statistics.median(v) for c, v in samples.items()},
                   "ratio": {c: paired_ratio(samples, ["eager"], c) for c in samples if c != "eager"},
                   "vs_peer": {c: paired_ratio(samples, peer_names, c) for c in CONVGEN if peer_names}}
            rows.append(row)
            vs_peer = " | ".join(f"{c} vs best peer x{r:.2f}" for c, r in row["vs_peer"].items())
            print(f"{name} batch {batch}: eager {row['ms']['eager']:.1f} ms | " + " | ".join(
                f"{c} {row['ms'][c]:.1f} ms x{row['ratio'][c]:.2f}" for c in row["ratio"]) +
                (f" || {vs_peer}" if vs_peer else "") +
                "  (first-use seconds: " + ", ".join(f"{c} {s:.0f}" for c, s in build_s.items()) + ")", flush=True)
            print("  relative error vs eager fp32: " + ", ".join(f"{c} {e:.1e}" for c, e in errs.items()), flush=True)
    cols = list(dict.fromkeys(c for r in rows for c in r["ratio"]))  # every column any row has, in order
    peer_cols = list(dict.fromkeys(c for r in rows for c in r["vs_peer"]))
    if args.markdown:
        print(f"\n{header}\n")
        print("| model | batch | eager ms | " + " | ".join(f"{c} ms (vs eager)" for c in cols) +
              "".join(f" | {c} vs best peer" for c in peer_cols) + " |")
        print("|---|---|---|" + "---|" * (len(cols) + len(peer_cols)))
        for r in rows:
            print(f"| {r['model']} | {r['batch']} | {r['ms']['eager']:.1f} | " +
                  " | ".join(f"{r['ms'][c]:.1f} ({r['ratio'][c]:.2f}x)" if c in r["ratio"] else "-" for c in cols) +
                  "".join(f" | {r['vs_peer'][c]:.2f}x" if c in r["vs_peer"] else " | -" for c in peer_cols) + " |")
    for c in cols:
        print(f"geomean {c} / eager: {geomean([r['ratio'][c] for r in rows if c in r['ratio']]):.2f}x")
    for c in peer_cols:
        print(f"geomean {c} vs best peer (> 1: convgen faster): "
              f"{geomean([r['vs_peer'][c] for r in rows if c in r['vs_peer']]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
