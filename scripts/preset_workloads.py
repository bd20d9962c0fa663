#!/usr/bin/env python3
"""Every distinct layer of the built-in presets as a workload file, in one layout: what the
shipped records were tuned from (see convgen/tuned/README.md).

    python scripts/preset_workloads.py --layout NHWC -o presets_nhwc.json
    convgen tune --workload presets_nhwc.json --target x86-avx512 --trials 1400 --records avx512_nhwc.jsonl
    python scripts/preset_workloads.py --layout NHWC --dtype bfloat16 --nets resnet50 mobilenet_v2 -o bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    """Write the workload file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "uint8"], default="float32",
                    help="the layers' data dtype (weights and outputs: its defaults, see convgen.spec.DTYPE_RULES)")
    ap.add_argument("--nets", nargs="+", default=None, help="only these presets (default: all)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    from convgen import workloads

    first: dict[str, tuple[str, object]] = {}
    for name, spec in workloads.all_layers().items():
        if args.nets and name.split(".")[0] not in args.nets:
            continue
        first.setdefault(spec.key, (name, spec))  # a layer two presets share is listed once
    suffix = ("" if args.layout == "NCHW" else "." + args.layout.lower()) + (
        "" if args.dtype == "float32" else "." + args.dtype)
    layers = [dict(spec.replace(layout=args.layout, dtype=args.dtype).to_dict(), name=name + suffix)
              for name, spec in first.values()]
    with open(args.output, "w") as fh:
        json.dump(layers, fh, indent=1)
    print(f"wrote {len(layers)} layers to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
