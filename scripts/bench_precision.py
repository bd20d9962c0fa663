#!/usr/bin/env python3
"""convgen's bf16 and int8 kernels against its own fp32 and torch's (oneDNN) low precision.

Per layer (NHWC, batch 1, weights packed once, as a model runs them), interleaved round by
round so that machine noise hits every candidate alike:

- ``fp32``: convgen's fp32 kernel (shipped records, or the template's default);
- ``bf16``: convgen on bf16 data and weights, fp32 sums (``x86.direct_bf16``'s ``vdpbf16ps``
  where the CPU has AVX512_BF16), bf16 output; its relative error is against the fp32
  reference on the same (unrounded) inputs;
- ``int8``: convgen u8 x s8, s32 sums, requantized to u8 in the epilogue (per-channel scale
  and a bias: ``x86.direct_vnni``'s ``vpdpbusd`` where the CPU has AVX512_VNNI);
- ``torch bf16``: ``F.conv2d`` on channels_last bf16 tensors (oneDNN, which reorders the
  weights in every call);
- ``torch.ao int8``: ``torch.ao.nn.quantized.Conv2d`` (quantized engine ``x86``: oneDNN/FBGEMM,
  weights prepacked, a bias), quint8 in, quint8 out: the same work as convgen's.

Printed: each candidate's median ms; speed-ups over convgen fp32 (``bf16 x``, ``int8 x``) and
against torch's (``vs torch``: torch's time / convgen's, > 1 = convgen faster), the median
of the per-round ratios.

    python scripts/bench_precision.py
    python scripts/bench_precision.py --layers resnet50.r4_3x3 --rounds 20
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchutil import geomean, interleaved, paired_ratio

LAYERS = ["resnet50.r2_3x3", "resnet50.r3_3x3", "resnet50.r4_3x3", "resnet50.r5_3x3",
          "resnet50.r2_1x1_reduce", "resnet50.r2_1x1_expand", "resnet50.r4_1x1_reduce", "resnet50.r5_1x1_expand"]


def main(argv: list[str] | None = None) -> int:
    """Time every layer's candidates interleaved and print one row per layer."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", nargs="+", default=LAYERS, help="built-in layers (see `convgen layers`)")
    ap.add_argument("--target", default="host")
    ap.add_argument("--threads", type=int, default=None, help="threads for convgen and torch (default: all CPUs)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per layer (median reported)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_precision needs torch: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    import convgen
    from convgen import workloads
    from convgen.target import get_target, host_cpu_name

    target = get_target(args.target)
    threads = args.threads or convgen.runtime.default_num_threads()
    convgen.set_num_threads(threads)
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    print(f"# {host_cpu_name()}, {threads} threads, target {target.name}, torch {torch.__version__} "
          f"(quantized engine {torch.backends.quantized.engine})", flush=True)
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    head = (f"{'layer':24} {'fp32 ms':>8} {'bf16 ms':>8} {'int8 ms':>8} {'torch bf16':>10} {'torch.ao':>9} "
            f"{'bf16 x':>7} {'int8 x':>7} {'bf16 vs torch':>13} {'int8 vs torch.ao':>16} {'bf16 err':>9}  templates")
    print(head)
    gains: dict[str, list[float]] = {"bf16": [], "int8": [], "bf16_torch": [], "int8_torch": []}
    for name in args.layers:
        fp32 = workloads.layer(name).replace(layout="NHWC")
        bf16 = fp32.replace(dtype="bfloat16")
        u8 = fp32.replace(dtype="uint8", output_dtype="uint8", bias=True)  # requantized, as torch.ao
        x = rng.uniform(0, 1, fp32.input_shape).astype(np.float32)  # post-ReLU activations
        w = rng.uniform(-1, 1, fp32.weight_shape).astype(np.float32)  # HWIO
        k = {s.dtype: convgen.build(s, target, num_threads=threads) for s in (fp32, bf16, u8)}
        xq, wq = (x * 255).round().astype(np.uint8), (w * 127).round().astype(np.int8)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        k_out = fp32.out_channels
        scale = torch.full((k_out,), 1 / (255 * 127 * 0.05), dtype=torch.float32)  # s_x s_w / s_y, as torch.ao
        arrays = {"float32": (tx, tw), "bfloat16": (tx.bfloat16(), tw.bfloat16()),
                  "uint8": (torch.from_numpy(xq), torch.from_numpy(wq), scale, torch.zeros(k_out))}
        packed = {d: k[d].pack_weights(arrays[d][1]) for d in k}
        want = k["float32"](tx, packed["float32"]).numpy().astype(np.float64)
        got = k["bfloat16"](arrays["bfloat16"][0], packed["bfloat16"]).float().numpy()
        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        # torch: NCHW-shaped channels_last tensors, OIHW weights
        kw = dict(stride=fp32.stride, padding=(fp32.padding[0], fp32.padding[1]), dilation=fp32.dilation)
        cx = tx.permute(0, 3, 1, 2).bfloat16()  # a channels_last view of the NHWC data
        cw = tw.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last).bfloat16()
        qconv = torch.ao.nn.quantized.Conv2d(fp32.in_channels, fp32.out_channels, fp32.kernel, **kw)
        qconv.set_weight_bias(torch.quantize_per_channel(tw.permute(3, 2, 0, 1).contiguous(), torch.full(
            (fp32.out_channels,), 1 / 127), torch.zeros(fp32.out_channels, dtype=torch.long), 0, torch.qint8),
            torch.zeros(fp32.out_channels))
        qconv.scale, qconv.zero_point = 0.05, 0
        qx = torch.quantize_per_tensor(tx.permute(0, 3, 1, 2), 1 / 255, 0, torch.quint8)
        fns = {d: (lambda d=d: k[d](arrays[d][0], packed[d], *arrays[d][2:])) for d in k}
        with torch.no_grad():
            fns["torch_bf16"] = lambda: F.conv2d(cx, cw, **kw)
            fns["torch_ao"] = lambda: qconv(qx)
            samples = interleaved(fns, args.rounds, args.min_time)
        med = {c: float(np.median(v)) * 1e3 for c, v in samples.items()}
        r = {"bf16": paired_ratio(samples, ["float32"], "bfloat16"), "int8": paired_ratio(samples, ["float32"], "uint8"),
             "bf16_torch": paired_ratio(samples, ["torch_bf16"], "bfloat16"),
             "int8_torch": paired_ratio(samples, ["torch_ao"], "uint8")}
        for key, v in r.items():
            gains[key].append(v)
        templates = "/".join(k[d].template.split(".")[-1] for d in k)
        print(f"{name:24} {med['float32']:8.3f} {med['bfloat16']:8.3f} {med['uint8']:8.3f} {med['torch_bf16']:10.3f} "
              f"{med['torch_ao']:9.3f} {r['bf16']:6.2f}x {r['int8']:6.2f}x {r['bf16_torch']:12.2f}x "
              f"{r['int8_torch']:15.2f}x {err:9.1e}  {templates}", flush=True)
    print(f"{'geomean':24} {'':8} {'':8} {'':8} {'':10} {'':9} {geomean(gains['bf16']):6.2f}x "
          f"{geomean(gains['int8']):6.2f}x {geomean(gains['bf16_torch']):12.2f}x {geomean(gains['int8_torch']):15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
