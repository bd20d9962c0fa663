#!/usr/bin/env python3
"""The GPU check of convgen's CUDA kernels: one run on a GPU machine, a few minutes.

CI has no GPU: it builds fatbins, runs the static resource checks and emulates the fp32
schedules on the CPU. This script proves the rest on a real GPU:

1. builds the default and a few sampled configs of every CUDA template (``cuda.direct``,
   ``cuda.generic``, ``cuda.tensorcore``) for a set of ResNet-50 / MobileNet layers, for
   the GPU's arch, in parallel worker processes, and exports each to a ``.so``;
2. loads every ``.so`` with :func:`convgen.load` (the TVM runtime only, no compiler) and
   calls it through :class:`convgen.Kernel` with torch CUDA tensors (DLPack, torch's
   stream); checks the result against torch: cuDNN in fp32 with TF32 off, for fp16 the
   fp32 convolution of the same fp16 inputs (the tensor-core kernels accumulate in fp32);
3. times each kernel and cuDNN alike (CUDA events around back-to-back launches, the
   layout cuDNN is best at: NCHW, or channels_last for NHWC) and prints a table;
4. also runs one kernel built in this process (``convgen.build``), one from numpy arrays
   (host copies) and checked against the numpy reference, the ``time_evaluator`` path,
   and the tuner's local runner on the GPU; kernels built elsewhere (``--prebuilt``, e.g.
   on a CPU-only build machine with ``--build-only``) are checked the same way.

Exit status: 0 all correct; 1 a kernel gave a wrong result; 2 no usable GPU / CUDA
runtime; 3 something failed to build, load or run (or the tuner step failed).

    python scripts/gpu_check.py                          # on the GPU machine (needs nvcc there)
    python scripts/gpu_check.py --build-only kernels/ --target cuda-sm90   # on a build machine
    python scripts/gpu_check.py --prebuilt kernels/      # on the GPU: check those (no nvcc needed)
    python scripts/gpu_check.py --quick                  # defaults only, fewer layers
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# (layer name, workload overrides): fp32 in both layouts, depthwise (generic), fp16 NHWC
LAYERS: list[tuple[str, dict[str, Any]]] = [
    ("resnet50.r2_3x3", {}),
    ("resnet50.r3_3x3_s2", {}),
    ("resnet50.r4_3x3", {}),
    ("resnet50.r4_1x1_reduce", {}),
    ("resnet50.r5_3x3", {}),
    ("resnet50.conv1", {}),
    ("resnet50.r4_3x3", {"layout": "NHWC"}),
    ("resnet50.r2_1x1_expand", {"layout": "NHWC", "bias": True, "activation": "relu"}),
    ("mobilenet_v1.dw128_56", {}),
    ("resnet50.r2_3x3", {"layout": "NHWC", "dtype": "float16"}),
    ("resnet50.r4_3x3", {"layout": "NHWC", "dtype": "float16", "bias": True, "activation": "relu"}),
    ("resnet50.r3_1x1_expand", {"layout": "NHWC", "dtype": "float16"}),
    ("resnet50.r5_3x3", {"layout": "NHWC", "dtype": "float16"}),
]
QUICK = {0, 2, 6, 8, 10}  # indices of LAYERS in --quick


def layer_spec(name: str, overrides: dict[str, Any]) -> Any:
    """A built-in layer's spec with some fields replaced (dtype, layout, ...)."""
    from convgen.workloads import layer

    return layer(name).replace(**overrides)


def label(name: str, spec: Any) -> str:
    """The table's name for a layer in a variant (layout, dtype, epilogue)."""
    tags = [spec.layout] + ([spec.dtype] if spec.dtype != "float32" else [])
    tags += [t for t, on in (("bias", spec.bias), ("relu", spec.activation == "relu")) if on]
    return f"{name.split('.', 1)[1]} {'/'.join(tags)}"


# ---- jobs and building ---------------------------------------------------------------------------
@dataclass
class Job:
    """One kernel to build and check: layer, template, config and where its library went."""
    name: str
    spec: dict[str, Any]
    template: str
    config: dict[str, Any]
    kind: str                       # "default" or "sampled"
    path: str = ""
    error: str = ""
    build_s: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)


def make_jobs(target: Any, samples: int, quick: bool, seed: int) -> list[Job]:
    """Default + ``samples`` sampled configs of every template that serves each layer."""
    from convgen.schedules import candidates

    jobs = []
    for i, (name, over) in enumerate(LAYERS):
        if quick and i not in QUICK:
            continue
        spec = layer_spec(name, over)
        found = candidates(spec, target)
        for tmpl in found:
            # the fallback: on the layers only it serves, and on one layer others serve too
            if tmpl.name == "cuda.generic" and len(found) > 1 and name != "resnet50.r4_3x3":
                continue
            rng = random.Random(f"{seed}:{spec.key}:{tmpl.name}")
            default = tmpl.default(spec, target)
            configs = [("default", default)]
            configs += [("sampled", c) for c in tmpl.space(spec, target).sample(rng, samples + 1) if c != default][:samples]
            for kind, config in configs:
                jobs.append(Job(label(name, spec), spec.to_dict(), tmpl.name, config, kind))
    return jobs


def build_job(spec: dict, target: str, template: str, config: dict, out_dir: str, index: int) -> tuple:
    """Worker: compile and export one kernel; ``(path, error, seconds)``."""
    t0 = time.perf_counter()
    try:
        import convgen

        kernel = convgen.build(convgen.ConvSpec.from_dict(spec), target, config, template=template,
                               builtin_records=False)
        path = os.path.join(out_dir, f"k{index:03d}_{template.replace('.', '_')}.so")
        kernel.export(path)
        return path, "", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported in the table
        return "", f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}"[:300], time.perf_counter() - t0


def build_all(jobs: list[Job], target: str, out_dir: str, workers: int) -> None:
    """Build every job in parallel processes (spawned: no CUDA state is inherited)."""
    os.makedirs(out_dir, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(build_job, j.spec, target, j.template, j.config, out_dir, i): j
                   for i, j in enumerate(jobs)}
        for fut in concurrent.futures.as_completed(futures):
            job = futures[fut]
            try:
                job.path, job.error, job.build_s = fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker
                job.error = f"build worker failed: {e}"


# ---- torch reference and timing ------------------------------------------------------------------
def _extras(spec: Any, extras: tuple) -> tuple[Any, Any]:
    """(bias, residual) from the inputs after data and weight, in the kernel's argument order."""
    names = [n for n, on in (("bias", spec.bias), ("residual", spec.residual)) if on]
    given = dict(zip(names, extras))
    return given.get("bias"), given.get("residual")


def _activate(spec: Any, y: Any) -> Any:
    import torch

    if spec.activation in ("relu", "relu6"):
        y = torch.relu(y)
    return y.clamp(max=6) if spec.activation == "relu6" else y


def torch_conv(spec: Any, x: Any, w: Any, *extras: Any, compute_dtype: Any = None) -> Any:
    """``spec``'s convolution with torch (cuDNN on a GPU), in ``spec.layout``.

    Inputs are in convgen's layouts (NCHW/OIHW or NHWC/HWIO) and argument order (bias, then
    residual, where the spec has them); ``compute_dtype`` casts them first (fp16 inputs are
    checked against their fp32 convolution).
    """
    import torch.nn.functional as F

    b, r = _extras(spec, extras)
    if compute_dtype is not None:
        x, w = x.to(compute_dtype), w.to(compute_dtype)
        b = None if b is None else b.to(compute_dtype)
        r = None if r is None else r.to(compute_dtype)
    if spec.layout == "NHWC":
        x, w = x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1)  # NCHW / OIHW views
        r = None if r is None else r.permute(0, 3, 1, 2)
    if spec.flip:
        w = w.flip(2, 3)
    pt, pl, pb, pr = spec.padding
    x = F.pad(x, (pl, pr, pt, pb)) if any(spec.padding) else x
    y = F.conv2d(x, w, b, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
    y = _activate(spec, y if r is None else y + r)
    return y.permute(0, 2, 3, 1).contiguous() if spec.layout == "NHWC" else y


def cudnn_call(spec: Any, x: Any, w: Any, *extras: Any) -> Any:
    """A no-argument closure running cuDNN on ``spec`` the way it is fastest for the layout.

    NCHW tensors as they are; NHWC as channels_last (the NHWC data viewed as NCHW, the
    weights converted once, outside the timed call); padding inside the convolution when
    symmetric. TF32 stays off (set by the caller), so fp32 is fp32.
    """
    import torch
    import torch.nn.functional as F

    b, r = _extras(spec, extras)
    if spec.layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
        w = w.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        r = None if r is None else r.permute(0, 3, 1, 2)
    if spec.flip:
        w = w.flip(2, 3).contiguous(memory_format=torch.channels_last if spec.layout == "NHWC" else torch.contiguous_format)
    pt, pl, pb, pr = spec.padding
    pad = (pt, pl) if (pt, pl) == (pb, pr) else 0
    if pad == 0 and any(spec.padding):
        x = F.pad(x, (pl, pr, pt, pb))  # asymmetric: padded once, outside the timed call
    def run() -> Any:
        y = F.conv2d(x, w, b, stride=spec.stride, padding=pad, dilation=spec.dilation, groups=spec.groups)
        return _activate(spec, y if r is None else y + r)

    return run


def cuda_time_ms(fn: Any, min_ms: float = 20.0, repeat: int = 5) -> float:
    """Median ms per call of ``fn`` (launches back to back, CUDA events around a batch)."""
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n = 1
    while True:  # grow the batch until it lasts min_ms
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        if start.elapsed_time(end) >= min_ms or n >= 1 << 16:
            break
        n *= 4
    times = []
    for _ in range(repeat):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / n)
    return statistics.median(times)


def inputs_for(spec: Any, device: str, seed: int = 0) -> list[Any]:
    """Random torch inputs for ``spec`` on ``device`` (data, weight, bias if any)."""
    import torch

    from convgen.reference import random_inputs

    return [torch.from_numpy(a).to(device) for a in random_inputs(spec, seed)]


def check_kernel(kernel: Any, spec: Any) -> dict[str, Any]:
    """Run ``kernel`` on torch CUDA tensors; error vs torch; ms of it and of cuDNN."""
    import torch
    import tvm
    import tvm_ffi

    from convgen.reference import tolerance

    args = inputs_for(spec, "cuda")
    got = kernel(*args)  # the Kernel call path: checks, DLPack, torch's stream, torch out
    if not (isinstance(got, torch.Tensor) and got.is_cuda):
        raise RuntimeError(f"torch CUDA tensors in, {type(got).__name__} out (should be a torch CUDA tensor)")
    want = torch_conv(spec, *args, compute_dtype=torch.float32 if spec.dtype == "float16" else None)
    err = float((got.float() - want.float()).abs().max()) if got.numel() else 0.0
    # timing: the packed function on pre-converted tensors, on torch's current stream
    out = torch.empty_like(got)
    tvm_args = [tvm.runtime.from_dlpack(t) for t in [*args, out]]
    func = kernel.func

    def ours() -> None:
        func(*tvm_args)

    with tvm_ffi.use_torch_stream():
        ms = cuda_time_ms(ours)
    cudnn_ms = cuda_time_ms(cudnn_call(spec, *args))
    return {"err": err, "tol": tolerance(spec), "ms": ms, "cudnn_ms": cudnn_ms}


# ---- the run ------------------------------------------------------------------------------------
def gpu_target_name(cc: tuple[int, int]) -> str:
    """The convgen CUDA target for a GPU of compute capability ``cc``: the newest arch of the
    same major version it runs natively, else the newest older one (its PTX JITs)."""
    from convgen.target import all_targets

    by_cc = sorted(((t.gpu_limits().compute_capability, t.name) for t in all_targets().values()
                    if t.family == "cuda"), reverse=True)
    for want_major in (True, False):
        for have, name in by_cc:
            if have <= cc and (have[0] == cc[0] or not want_major):
                return name
    raise SystemExit(f"no convgen CUDA target for compute capability {cc[0]}.{cc[1]}")


def short(config: dict[str, Any], width: int = 46) -> str:
    """A config squeezed into one table cell."""
    text = ",".join(f"{k}={v}" for k, v in config.items()).replace(" ", "")
    for a, b in (("tile_", ""), ("auto_unroll_max_step", "unroll"), ("unroll_explicit", "expl"),
                 ("True", "1"), ("False", "0")):
        text = text.replace(a, b)
    return text if len(text) <= width else text[: width - 1] + "~"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print one row per kernel: time, cuDNN's time, ratio, error, verdict."""
    head = f"{'layer':<30} {'template':<16} {'config':<8} {'ms':>8} {'cuDNN ms':>9} {'ratio':>6} {'max err':>9}  ok"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['layer']:<30} {r['template']:<16} {r['kind']:<8} {'-':>8} {'-':>9} {'-':>6} {'-':>9}  "
                  f"FAILED: {r['error']}")
            continue
        ok = "ok" if r["err"] <= r["tol"] else f"WRONG (tol {r['tol']:.1e})"
        print(f"{r['layer']:<30} {r['template']:<16} {r['kind']:<8} {r['ms']:8.4f} {r['cudnn_ms']:9.4f} "
              f"{r['ms'] / r['cudnn_ms']:6.2f} {r['err']:9.2e}  {ok}   {short(r['config'])}")


def extra_paths(target: str, device: str) -> list[str]:
    """Checks of the other entry points; returns failure messages."""
    import numpy as np
    import torch

    import convgen
    from convgen.reference import conv2d_reference, random_inputs, tolerance

    failures = []
    spec = layer_spec("resnet50.r4_3x3", {"bias": True, "activation": "relu"})
    try:  # built in this process: convgen.build's in-process module
        k = convgen.build(spec, target, builtin_records=False)
        r = check_kernel(k, spec)
        print(f"in-process convgen.build ({k.template}): max err {r['err']:.2e}, {r['ms']:.4f} ms")
        if r["err"] > r["tol"]:
            failures.append("in-process build: wrong result")
        arrays = random_inputs(spec, seed=3)  # numpy in -> copies to the GPU and back
        got = k(*arrays)
        err = float(np.abs(got.astype(np.float64) - conv2d_reference(spec, *arrays)).max())
        print(f"numpy arrays through the GPU kernel vs the numpy reference: max err {err:.2e}")
        if not isinstance(got, np.ndarray) or err > tolerance(spec):
            failures.append("numpy path: wrong result")
        times = k.benchmark(repeat=3)
        print(f"Kernel.benchmark (TVM time_evaluator on {device}): {1e3 * min(times):.4f} ms")
        with torch.cuda.device(0):
            host = torch.from_numpy(arrays[0])
            try:
                k(host, *[torch.from_numpy(a).cuda() for a in arrays[1:]])
                failures.append("a CPU torch tensor was accepted by a CUDA kernel")
            except ValueError:
                print("a CPU torch tensor is refused with a ValueError (as it should be)")
    except Exception as e:  # noqa: BLE001
        failures.append(f"in-process build/run: {type(e).__name__}: {e}")
        traceback.print_exc()
    try:  # the tuner's local runner on the GPU
        small = layer_spec("resnet50.r5_3x3", {})
        t0 = time.perf_counter()
        res = convgen.tune(small, target, trials=8, strategy="random", progress=False)
        best = next(iter(res.values()))
        if best.cost is None:
            raise RuntimeError("no trial succeeded")
        print(f"tuner local runner: 8 trials in {time.perf_counter() - t0:.0f} s, best {best.cost * 1e3:.4f} ms "
              f"({best.template} {best.config})")
    except Exception as e:  # noqa: BLE001
        failures.append(f"tuner local runner on CUDA: {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Build (or take prebuilt) kernels, check each against torch, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="convgen CUDA target (default: from the GPU's compute capability)")
    p.add_argument("--samples", type=int, default=2, help="sampled configs per template and layer")
    p.add_argument("--quick", action="store_true", help="defaults only, five layers")
    p.add_argument("--build-only", metavar="DIR", help="build the kernels into DIR and stop (no GPU needed)")
    p.add_argument("--prebuilt", metavar="DIR", help="check the .so files in DIR (built elsewhere) too")
    p.add_argument("--no-build", action="store_true", help="build nothing here (check --prebuilt only)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="parallel builds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-extra", action="store_true", help="skip the in-process/numpy/tuner checks")
    args = p.parse_args(argv)
    if args.quick:
        args.samples = 0
    t_start = time.perf_counter()

    import convgen  # noqa: F401  (before torch: convgen sizes TVM's thread pool first)

    if args.build_only:
        if not args.target:
            p.error("--build-only needs --target (no GPU to ask)")
        target = convgen.get_target(args.target)
        jobs = make_jobs(target, args.samples, args.quick, args.seed)
        print(f"building {len(jobs)} kernels for {target.name} into {args.build_only} ({args.workers} workers)")
        build_all(jobs, target.name, args.build_only, args.workers)
        for j in jobs:
            print(f"  {j.name:<30} {j.template:<16} {j.kind:<8} {j.build_s:5.1f} s  {j.error or os.path.basename(j.path)}")
        failed = [j for j in jobs if j.error]
        print(f"{len(jobs) - len(failed)} built, {len(failed)} failed, {time.perf_counter() - t_start:.0f} s")
        return 3 if failed else 0

    try:
        import torch
    except ImportError:
        print("gpu_check: torch is needed for the cuDNN comparison (pip install torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU", file=sys.stderr)
        return 2
    from convgen.cuda.device import runtime_problem

    why = runtime_problem()
    if why:
        print(f"gpu_check: TVM's CUDA runtime is not usable: {why}", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False       # fp32 is fp32, for the check and the timing
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True         # cuDNN times its algorithms per shape: its best
    cc = torch.cuda.get_device_capability(0)
    target = convgen.get_target(args.target or gpu_target_name(cc))
    print(f"GPU 0: {torch.cuda.get_device_name(0)}, compute capability {cc[0]}.{cc[1]}, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}); "
          f"target {target.name}")

    jobs: list[Job] = []
    if not args.no_build:
        from convgen.cuda.toolchain import find_nvcc

        try:
            find_nvcc(target)
        except Exception as e:  # noqa: BLE001
            print(f"no builds here: {e}" + ("" if args.prebuilt else " (pass --prebuilt DIR built elsewhere)"))
        else:
            jobs = make_jobs(target, args.samples, args.quick, args.seed)
            out_dir = tempfile.mkdtemp(prefix="convgen-gpu-check-")
            t0 = time.perf_counter()
            build_all(jobs, target.name, out_dir, args.workers)
            print(f"built {sum(1 for j in jobs if j.path)}/{len(jobs)} kernels in {time.perf_counter() - t0:.0f} s "
                  f"({args.workers} workers)")
    if args.prebuilt:
        for path in sorted(glob.glob(os.path.join(args.prebuilt, "*.so"))):
            meta = convgen.runtime.read_metadata(path)
            jobs.append(Job(f"prebuilt {os.path.basename(path)}", meta["spec"], meta["template"], meta["config"],
                            meta.get("config_source", "?"), path=path))

    rows, failures, wrong = [], [], 0
    for job in jobs:
        row: dict[str, Any] = {"layer": job.name, "template": job.template, "kind": job.kind, "config": job.config}
        if job.error:
            row["error"] = job.error
            failures.append(f"{job.name} {job.template}: {job.error}")
        else:
            try:
                kernel = convgen.load(job.path)  # runtime only: the fatbin inside, no compiler
                if not kernel.runs_here:
                    raise RuntimeError("the loaded kernel says it cannot run on this GPU")
                row.update(check_kernel(kernel, convgen.ConvSpec.from_dict(job.spec)))
                wrong += row["err"] > row["tol"]
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}"[:200]
                failures.append(f"{job.name} {job.template}: {row['error']}")
        rows.append(row)
    print()
    print_table(rows)
    timed = [r for r in rows if "ms" in r]
    if timed:
        geo = statistics.geometric_mean(r["ms"] / r["cudnn_ms"] for r in timed)
        best = {}
        for r in timed:
            best[r["layer"]] = min(best.get(r["layer"], float("inf")), r["ms"] / r["cudnn_ms"])
        print(f"\nratio = convgen ms / cuDNN ms (lower is better). Geomean over all rows {geo:.2f}, "
              f"over the best config per layer {statistics.geometric_mean(best.values()):.2f}")
    if not args.no_extra:
        print()
        failures += extra_paths(target.name, torch.cuda.get_device_name(0))
    print(f"\n{len(rows)} kernels checked, {wrong} wrong, {len(failures)} other failures, "
          f"{time.perf_counter() - t_start:.0f} s in all")
    for f in failures:
        print(f"  FAILED: {f}")
    if wrong:
        return 1
    return 3 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
