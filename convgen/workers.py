"""What every worker process convgen starts (build, run and cache pools) does first.

A leaf module: the tuner's pools and the kernel cache's build pool are all made here
(:func:`popen_pool`, :func:`popen_worker`), and a popen worker imports only this to run its
initializer.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """In a worker process: be killed (SIGKILL) when the process that started it dies, so a
    tuner or a model's build killed with ``kill -9`` leaves no worker behind running a hung
    kernel or a long compile. Runs as the popen workers' initializer; exits at once if the
    parent is already gone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed parent
        pass
    if os.getppid() != parent:
        os._exit(1)


def popen_pool(max_workers: int, timeout: float | None) -> Any:
    """A TVM ``PopenPoolExecutor`` of ``max_workers`` processes, each call bounded by
    ``timeout`` seconds, the way every convgen pool is set up: the workers die with this
    process (:func:`die_with_parent`) and their output goes nowhere (TVM prints its own
    stack dumps; each failure comes back as an exception, turned into an error kind)."""
    from tvm.support.popen_pool import PopenPoolExecutor

    return PopenPoolExecutor(max_workers=max_workers, timeout=timeout, initializer=die_with_parent,
                             initargs=(os.getpid(),), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def popen_worker() -> Any:
    """One TVM ``PopenWorker`` set up as :func:`popen_pool`'s workers are (a crashing kernel's
    stack dump goes nowhere: the caller records ``crash`` instead)."""
    from tvm.support.popen_pool import PopenWorker

    return PopenWorker(initializer=die_with_parent, initargs=(os.getpid(),),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
