#!/usr/bin/env python3
"""The pool stall: a convgen kernel called right after a torch operator, and what removes it.

torch's OpenMP workers (libgomp) busy-wait after every parallel region before they sleep;
TVM's workers need the same cores. A kernel called while torch's workers still spin shares
its cores with them. This measures, per setting, each in a fresh process (libgomp reads its
settings once, when torch loads it):

- ``alone``: the kernel called back to back (prepacked weights, numpy, ``out=``);
- ``after torch``: the same call right after a small torch operator (a 1x64x56x56 add, 2
  threads), the first and the median of the next calls;

and prints the ratio of each to ``alone``. Settings: torch's defaults, ``OMP_WAIT_POLICY=PASSIVE``
(libgomp's workers sleep at once), ``GOMP_SPINCOUNT=0``, and torch at one thread
(``torch.set_num_threads(1)``, what ``convgen.torch.optimize`` does inside a model's forward).

    python scripts/bench_pool_stall.py                 # ResNet-50's r4_3x3, 200 samples per setting
    python scripts/bench_pool_stall.py --layer mobilenet_v2.pw96_576_14 --samples 400
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# setting -> (environment of the child, torch's thread count in it: 0 = torch's default)
SETTINGS = {
    "torch defaults": ({}, 0),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "GOMP_SPINCOUNT=0": ({"GOMP_SPINCOUNT": "0"}, 0),
    "torch.set_num_threads(1)": ({}, 1),
}

CHILD = r"""
import json, os, statistics, sys, time
import numpy as np
import torch
import convgen
from convgen.reference import random_inputs
from convgen.workloads import layer

spec = layer(sys.argv[1]).replace(layout="NHWC")
samples = int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]) or convgen.runtime.default_num_threads())
k = convgen.build(spec, "host")
x, w = random_inputs(spec)[:2]
packed, out = k.pack_weights(w), np.empty(spec.output_shape, np.float32)
a, b = torch.randn(1, 64, 56, 56), torch.randn(1, 64, 56, 56)
for _ in range(50):
    k(x, packed, out=out)

def timed():
    t0 = time.perf_counter()
    k(x, packed, out=out)
    return time.perf_counter() - t0

alone = [timed() for _ in range(samples)]
first, rest = [], []
for _ in range(samples):
    torch.add(a, b)              # torch's workers run, then spin
    first.append(timed())
    rest.append(timed())         # the second call: are they still spinning?
print(json.dumps({"alone": statistics.median(alone), "first": statistics.median(first),
                  "second": statistics.median(rest)}))
"""


def main(argv: list[str] | None = None) -> int:
    """Measure each setting in its own process; print medians and ratios to ``alone``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="resnet50.r4_3x3", help="a built-in layer (NHWC kernel, shipped config)")
    ap.add_argument("--samples", type=int, default=200, help="calls timed per setting and case")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench_pool_stall needs torch: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from convgen.target import host_cpu_name

    print(f"# {host_cpu_name()}, {os.cpu_count()} CPUs, layer {args.layer} (NHWC), medians of {args.samples} calls")
    print(f"{'setting':<28} {'alone us':>9} {'1st after torch':>16} {'2nd after torch':>16}")
    for name, (env, torch_threads) in SETTINGS.items():
        proc = subprocess.run([sys.executable, "-c", CHILD, args.layer, str(args.samples), str(torch_threads)],
                              capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=600)
        if proc.returncode:
            print(f"{name:<28} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        us = {key: 1e6 * v for key, v in r.items()}
        print(f"{name:<28} {us['alone']:>9.0f} {us['first']:>9.0f} ({r['first'] / r['alone']:4.1f}x) "
              f"{us['second']:>9.0f} ({r['second'] / r['alone']:4.1f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
