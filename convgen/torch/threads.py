"""Threads: convgen's TVM pool and torch's OpenMP pool sharing the cores of one model.

Both pools busy-wait after their work. torch's OpenMP workers (libgomp, wait policy unset)
spin for about 300,000 pause instructions after every parallel region, several
milliseconds on a Zen 4 core, and TVM's workers yield-spin after theirs. In a model that
alternates the two, each pool's spinning steals the cores the other needs. Measured on
this project's 2-vCPU AMD EPYC (Zen 4), 2 threads each, interleaved in one process:

- a 1.2 ms convgen kernel right after a 20 us torch add: 1.5-5.6x slower (torch's
  workers still spinning); with ``OMP_WAIT_POLICY=PASSIVE``: no slower;
- that torch add right after the kernel: 3.5-7x slower (TVM's workers spinning);
- ResNet-50, batch 1, NHWC kernels with default configs, vs eager torch: 1.18x with both
  pools at 2 threads, 1.35x with torch at 1 thread inside the model's forward.

The torch operators left in a CNN once its convolutions (with their BatchNorm, adds and
activations) run on convgen kernels are small: pooling, the classifier. So an optimized
model runs them on one thread, on the calling thread, and leaves the cores to TVM's pool;
torch's thread count is restored when the forward returns (or raises). TVM's own spin is
left as it is: turning it off (``TVM_THREAD_POOL_SPIN_COUNT=0``) made back-to-back kernels
wait for their workers to wake and was slower overall in the same measurement.
``optimize(..., threads=False)`` leaves both pools alone.
"""

from __future__ import annotations

import threading
from typing import Any

import torch


def configure_threads(num_threads: int | None = None) -> int:
    """Size TVM's pool for the kernels (default: every CPU of the process); returns it."""
    from ..runtime import set_num_threads

    return set_num_threads(num_threads)


# The thread counts to restore, a stack per calling thread (a forward may run inside another
# optimized model's, or on several threads at once). Module-level, as the hooks are, so an
# optimized model pickles (torch.save) with its hooks: they are found again by name.
_saved = threading.local()


@torch.compiler.disable  # torch.compile runs the hooks as they are, outside the graph (set_num_threads is not traceable)
def one_thread(module: torch.nn.Module, args: Any) -> None:
    """Forward pre-hook: torch's own operators on one thread until the forward returns."""
    stack = _saved.__dict__.setdefault("stack", [])
    stack.append(torch.get_num_threads())
    torch.set_num_threads(1)


@torch.compiler.disable
def restore_threads(module: torch.nn.Module, args: Any, output: Any) -> None:
    """Forward hook (``always_call``: also when the forward raises): torch's thread count back."""
    stack = getattr(_saved, "stack", None)
    if stack:
        torch.set_num_threads(stack.pop())


def torch_single_threaded_forward(module: torch.nn.Module) -> None:
    """Make ``module``'s forward run torch's own operators on one thread (see above)."""
    module.register_forward_pre_hook(one_thread)
    module.register_forward_hook(restore_threads, always_call=True)
