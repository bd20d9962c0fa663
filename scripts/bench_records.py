#!/usr/bin/env python3
"""Do new records make the *model* faster? Shipped records against tuning logs, inside the model.

A campaign ranks configs by timing each kernel alone (``convgen.tuner.MeasureOptions``: by
default each call after evicting every argument but the input, as inside a network). This
checks the result where it counts: one model optimized several times in one process, once
per set of records, then

- the whole model, interleaved round by round (``benchutil.interleaved``: calls of one
  variant after a warm-up one, for at least 50 ms): each variant's median and the median
  over rounds of the per-round ratio to the first variant;
- with ``--layers``, each convolution inside the model (forward hooks, all variants
  interleaved; the hooks turn the reused-output fast path off, alike for all), the layers
  whose kernel or config differs between variants, with their templates and configs.

Variants: ``shipped`` (the records shipped with convgen; ``--no-shipped`` leaves it out)
and one per ``--records`` file, whose records rank before the shipped ones
(``optimize(..., records=FILE)``). Each variant builds into its own kernel folder.

    python scripts/bench_records.py --model resnet50 --records r50_fp32.jsonl
    python scripts/bench_records.py --model resnet50 --precision bfloat16 --records r50_bf16.jsonl --layers

Where a campaign's file wins on some layers and loses on others (the tuner's isolated timing
does not rank every template as the model does), ``--winners OUT`` keeps what won: with
``--layers``, one ``--records`` file and the shipped variant, it writes to ``OUT`` the
records of that file for the specs whose layers together ran at least ``--margin`` (5%)
faster inside the model than with the shipped records; merge ``OUT`` into the shipped file
(``convgen records merge``) and check the result with another run of this script.

    python scripts/bench_records.py --model mobilenet_v2 --records mb.jsonl --layers --winners mb.win.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    import benchutil

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="resnet50", choices=benchutil.model_names(), help="a model of convgen.torch.models")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "int8"))
    p.add_argument("--records", nargs="+", default=[], metavar="FILE", help="tuning logs, one variant each")
    p.add_argument("--no-shipped", action="store_true", help="leave out the variant of the shipped records")
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    p.add_argument("--layers", action="store_true", help="also time each convolution inside the model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--winners", metavar="OUT", help="with --layers and one --records file: write its records of "
                   "the specs that ran faster inside the model than with the shipped records (see below)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="--winners: how much faster a spec's layers must run (default 0.05: 5%%)")
    args = p.parse_args(argv)
    if args.winners and (not args.layers or len(args.records) != 1 or args.no_shipped):
        p.error("--winners needs --layers, one --records file and the shipped variant")
    if not 0 <= args.margin < 1:
        p.error(f"--margin must be in [0, 1), got {args.margin}")
    for path in args.records:
        if not os.path.isfile(path):
            p.error(f"--records: no such file: {path}")
    variants_wanted: list[tuple[str, list[str] | None]] = [] if args.no_shipped else [("shipped", None)]
    variants_wanted += [(os.path.basename(path), [path]) for path in args.records]
    if len(variants_wanted) < 2:
        p.error("nothing to compare: give --records FILE (and keep the shipped variant, or two files)")

    import torch

    import convgen.torch as ct
    from convgen.torch import models

    torch.manual_seed(0)
    model, x = benchutil.model_and_input(args.model, args.batch)
    model = models.randomize_batchnorm(model)
    calibration = [torch.randn_like(x) for _ in range(8)] if args.precision == "int8" else None
    variants: dict[str, Any] = {}
    for name, records in variants_wanted:
        print(f"optimizing: {name}", flush=True)
        variants[name] = ct.optimize(model, x, precision=args.precision, calibration=calibration,
                                     records=records, cache=tempfile.mkdtemp(prefix="convgen-variant-"))
    names = list(variants)
    with torch.no_grad():
        want = model(x)
        for name, fast in variants.items():
            err = float((fast(x).float() - want).norm() / want.norm())
            print(f"{name}: relative error vs eager {err:.1e}")
        samples = benchutil.interleaved({n: (lambda f=variants[n]: f(x)) for n in names}, args.rounds)
    first = names[0]
    print(f"\n{args.model} batch {args.batch} {args.precision}, {args.rounds} rounds (median; ratio: per round, to {first})")
    for name in names:
        ratio = 1 / benchutil.paired_ratio(samples, [first], name)  # this variant's time / the first's
        print(f"  {name:30s} {statistics.median(samples[name]) * 1e3:8.2f} ms  x{ratio:.3f}")
    if args.layers:
        medians = _layers(variants, x, args.rounds)
        if args.winners:
            kept, won, specs = _winners(variants["shipped"], medians, args.records[0], args.winners, args.margin)
            print(f"\n--winners: {won} of {specs} specs ran >= {args.margin:.0%} faster inside the model; "
                  f"{kept} of their records written to {args.winners}")
    return 0


def _winners(fast: Any, medians: dict[str, dict[str, float]], path: str, out: str, margin: float) -> tuple[int, int, int]:
    """Write to ``out`` the records of ``path`` whose spec (or a stand-in of it) is that of
    layers that together ran at least ``margin`` faster with ``path`` than with the shipped
    records; returns (records written, specs won, specs compared)."""
    from convgen import records

    name = os.path.basename(path)
    sums: dict[str, list[float]] = {}  # spec key -> [shipped us, variant us] over its layers
    keys: dict[str, set[str]] = {}  # spec key -> its key and its stand-ins' (the records that serve it)
    for layer, med in medians.items():
        module = fast.get_submodule(layer)
        kernel = next(iter(module.kernels.values()), None)
        spec = getattr(kernel, "spec", None) or module.spec
        totals = sums.setdefault(spec.key, [0.0, 0.0])
        totals[0] += med["shipped"]
        totals[1] += med[name]
        keys[spec.key] = {spec.key} | {s.key for s in spec.stand_ins()}
    won = {k for k, (old, new) in sums.items() if new <= (1 - margin) * old}
    lost = set().union(*(keys[k] for k in sums if k not in won))
    serve = set().union(*(keys[k] for k in won)) - lost
    kept = records.rewrite(out, lambda: [r.data for r in records.read(path) if r.spec_key in serve])
    return kept, len(won), len(sums)


def _layers(variants: dict[str, Any], x: Any, rounds: int) -> dict[str, dict[str, float]]:
    """Per convolution inside the model: the median over rounds of each variant's call
    (``bench_layers.ConvTimer``'s hooks), variants interleaved; printed where the kernels
    differ, returned for every layer (``{path: {variant: us}}``)."""
    import torch
    from bench_layers import ConvTimer

    import convgen.torch as ct

    names = list(variants)
    timers = {n: ConvTimer(f, [p for p, m in f.named_modules() if isinstance(m, ct.Conv2d)])
              for n, f in variants.items()}
    with torch.no_grad():
        for name in names:
            variants[name](x)
            timers[name].discard()
        for _ in range(rounds):
            for name in names:
                variants[name](x)
                timers[name].end_round()
    for t in timers.values():
        t.remove()
    seconds = {n: t.rounds for n, t in timers.items()}

    def kernel(name: str, path: str) -> str:
        module = variants[name].get_submodule(path)
        k = next(iter(module.kernels.values()), None)
        return "-" if k is None or isinstance(k, Exception) else f"{k.template} {k.meta.get('config')}"

    print(f"\nper convolution inside the model, us (median of {rounds}); layers whose kernels differ:")
    print(f"  {'layer':24s} {'spec':46s}" + "".join(f"{n[:14]:>15s}" for n in names))
    totals = dict.fromkeys(names, 0.0)
    medians: dict[str, dict[str, float]] = {}
    for path in seconds[names[0]]:
        med = medians[path] = {n: statistics.median(seconds[n][path]) * 1e6 for n in names}
        for n in names:
            totals[n] += med[n]
        kinds = {kernel(n, path) for n in names}
        if len(kinds) > 1:
            spec = variants[names[0]].get_submodule(path).spec.describe()[:46]
            print(f"  {path:24s} {spec:46s}" + "".join(f"{med[n]:15.0f}" for n in names))
            for n in names:
                print(f"      {n[:14]:14s} {kernel(n, path)}")
    print(f"  {'all convolutions':71s}" + "".join(f"{totals[n]:15.0f}" for n in names))
    return medians


if __name__ == "__main__":
    sys.exit(main())
