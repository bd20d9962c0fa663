#!/usr/bin/env python3
"""Do new records make the *model* faster? Shipped records against tuning logs, inside the model.

A campaign ranks configs by timing each kernel alone (``convgen.tuner.MeasureOptions``: by
default each call after evicting every argument but the input, as inside a network). This
checks the result where it counts: one model optimized several times in one process, once
per set of records, then

- the whole model, interleaved round by round (the order alternating), steady state (two
  untimed calls of a variant before each timed one): each variant's median and the median
  over rounds of the per-round ratio to the first variant;
- with ``--layers``, each convolution inside the model (forward hooks, all variants
  interleaved; the hooks turn the reused-output fast path off, alike for all), the layers
  whose kernel or config differs between variants, with their templates and configs.

Variants: ``shipped`` (the records shipped with convgen; ``--no-shipped`` leaves it out)
and one per ``--records`` file, whose records rank before the shipped ones
(``optimize(..., records=FILE)``). Each variant builds into its own kernel folder.

    python scripts/bench_records.py --model resnet50 --records r50_fp32.jsonl
    python scripts/bench_records.py --model resnet50 --precision bfloat16 --records r50_bf16.jsonl --layers
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
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
    args = p.parse_args(argv)
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
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                variants[name](x)
                variants[name](x)
                t0 = time.perf_counter()
                variants[name](x)
                times[name].append(time.perf_counter() - t0)
    first = names[0]
    print(f"\n{args.model} batch {args.batch} {args.precision}, {args.rounds} rounds (median; ratio: per round, to {first})")
    for name in names:
        ratio = statistics.median(b / a for a, b in zip(times[first], times[name]))
        print(f"  {name:30s} {statistics.median(times[name]) * 1e3:8.2f} ms  x{ratio:.3f}")
    if args.layers:
        _layers(variants, x, args.rounds)
    return 0


def _layers(variants: dict[str, Any], x: Any, rounds: int) -> None:
    """Per convolution inside the model: the median over rounds of each variant's call."""
    import torch

    import convgen.torch as ct

    seconds: dict[str, dict[str, list[float]]] = {n: {} for n in variants}
    start: dict[tuple[str, str], float] = {}
    handles = []
    for name, fast in variants.items():
        for path, module in fast.named_modules():
            if isinstance(module, ct.Conv2d):
                def pre(mod, a, key=(name, path)):
                    start[key] = time.perf_counter()

                def post(mod, a, out, key=(name, path)):
                    seconds[key[0]].setdefault(key[1], []).append(time.perf_counter() - start[key])

                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    names = list(variants)
    with torch.no_grad():
        for fast in variants.values():
            fast(x)
        for s in seconds.values():
            s.clear()
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                variants[name](x)
    for h in handles:
        h.remove()

    def kernel(name: str, path: str) -> str:
        module = variants[name].get_submodule(path)
        k = next(iter(module.kernels.values()), None)
        return "-" if k is None or isinstance(k, Exception) else f"{k.template} {k.meta.get('config')}"

    print(f"\nper convolution inside the model, us (median of {rounds}); layers whose kernels differ:")
    print(f"  {'layer':24s} {'spec':46s}" + "".join(f"{n[:14]:>15s}" for n in names))
    totals = dict.fromkeys(names, 0.0)
    for path in seconds[names[0]]:
        med = {n: statistics.median(seconds[n][path]) * 1e6 for n in names}
        for n in names:
            totals[n] += med[n]
        kinds = {kernel(n, path) for n in names}
        if len(kinds) > 1:
            spec = variants[names[0]].get_submodule(path).spec.describe()[:46]
            print(f"  {path:24s} {spec:46s}" + "".join(f"{med[n]:15.0f}" for n in names))
            for n in names:
                print(f"      {n[:14]:14s} {kernel(n, path)}")
    print(f"  {'all convolutions':71s}" + "".join(f"{totals[n]:15.0f}" for n in names))


if __name__ == "__main__":
    sys.exit(main())
