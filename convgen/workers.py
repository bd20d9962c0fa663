"""What every worker process convgen starts (build, run and cache pools) does first.

A leaf module: the tuner's pools and the kernel cache's build pool both use it, and a popen
worker imports only this to run its initializer.
"""

from __future__ import annotations

import os

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
