"""The machine's real fp32 FMA peak, for honest "% of peak" figures.

A target's nominal peak (TOML) describes a CPU class; the machine at hand may run another
clock, split wide vectors (AMD Zen 1 executes a 256-bit FMA as two 128-bit halves: half
of Haswell's FLOPs per cycle) or share its cores with neighbours. So convgen measures:
a tiny C program keeps ``CHAINS`` independent vector FMA chains in registers (two FMA ports
x 4-5 cycles of latency need 10 or more in flight) and times a long loop; one copy runs per
thread, all at once, and their rates add up. The result is cached per CPU, target and
thread count in the user's cache folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from .target import Target, host_cpu_name

CHAINS = 12
# The C program compiles in well under a second and runs ~50 ms; these bound a broken
# compiler or a machine so overloaded that the figure would mean nothing anyway.
COMPILE_TIMEOUT = 60.0
RUN_TIMEOUT = 30.0
_SOURCE = r"""
#include <stdio.h>
#include <time.h>
typedef float vec __attribute__((vector_size(%(bytes)d)));
int main(void) {
  vec acc[%(chains)d], x, y;
  for (int i = 0; i < %(chains)d; i++) acc[i] = (vec){} + (float)i;
  volatile float xs = 1.0000001f, ys = 1e-7f;  /* opaque to the optimiser */
  x = (vec){} + xs; y = (vec){} + ys;
  struct timespec t0, t1;
  long n = %(steps)ld;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < n; k++) {
#pragma GCC unroll %(chains)d
    for (int i = 0; i < %(chains)d; i++) acc[i] = acc[i] * x + y;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  float s = 0;
  for (int i = 0; i < %(chains)d; i++) s += acc[i][0];
  double secs = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%%f %%f\n", 2.0 * %(chains)d * %(lanes)d * n / secs / 1e9, s);
  return 0;
}
"""


def cache_dir() -> str:
    """convgen's cache folder (``$XDG_CACHE_HOME/convgen`` or ``~/.cache/convgen``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "convgen")


def _measure(target: Target, threads: int) -> float:
    cc = shutil.which("cc") or shutil.which("gcc")
    flags = list(target.peak.get("cflags", []))
    if cc is None or not flags:
        return target.nominal_peak_gflops(threads)
    lanes = target.vector_lanes
    src = _SOURCE % {"bytes": 4 * lanes, "chains": CHAINS, "lanes": lanes, "steps": 50_000_000 // lanes}
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "peak")
        with open(exe + ".c", "w") as fh:
            fh.write(src)
        subprocess.run([cc, "-O2", *flags, exe + ".c", "-o", exe], check=True, capture_output=True,
                       timeout=COMPILE_TIMEOUT)
        best = 0.0
        for _ in range(3):  # the best of three: neighbours on a shared machine only slow it down
            procs = [subprocess.Popen([exe], stdout=subprocess.PIPE, text=True) for _ in range(threads)]
            try:
                total = sum(float(p.communicate(timeout=RUN_TIMEOUT)[0].split()[0]) for p in procs)
            finally:
                for p in procs:  # a hung (or timed out) copy must not outlive the measurement
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            best = max(best, total)
    return best


def measured_peak_gflops(target: Target, threads: int, *, refresh: bool = False) -> float:
    """fp32 peak in GFLOP/s of ``threads`` threads, measured here (the nominal peak when the
    target cannot run here; :func:`reference_peak` chooses it for other dtypes)."""
    if not target.runs_here():
        return target.nominal_peak_gflops(threads, "float32")
    key = f"{host_cpu_name()}|{target.name}|{threads}"
    path = os.path.join(cache_dir(), "peak.json")
    cache: dict[str, float] = {}
    try:
        with open(path) as fh:
            cache = json.load(fh)
    except (OSError, ValueError):
        pass
    if key in cache and not refresh:
        return float(cache[key])
    try:
        value = _measure(target, threads)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, IndexError):
        return target.nominal_peak_gflops(threads)
    cache[key] = value
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(cache, fh, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    return value


def reference_peak(target: Target, threads: int, dtype: str = "float32", *, here: bool = True) -> tuple[float, str]:
    """``(GFLOP/s, "measured" | "nominal")``: the peak "% of peak" is against, chosen the same
    way everywhere (``convgen run``, the tuner's progress line and summary). Measured on
    this machine for float32 kernels that run here (``here``: not on a remote device), else
    the target's nominal figure: per core x ``threads`` on CPUs, the whole chip on GPUs. A
    CPU's bf16 and 8-bit peaks are the measured fp32 one times the target's nominal ratio
    (2 for ``vdpbf16ps``, 4 for ``vpdpbusd``: they issue at the FMA's rate; 1 where the
    target has no such instruction): the clock the nominal figure assumes cancels out."""
    if target.is_cpu and here and target.runs_here():
        ratio = target.nominal_peak_gflops(1, dtype) / (target.nominal_peak_gflops(1, "float32") or 1)
        return measured_peak_gflops(target, threads) * (ratio or 1), "measured"
    return target.nominal_peak_gflops(threads if target.is_cpu else 1, dtype), "nominal"
