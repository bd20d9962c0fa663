"""Functions the fault tests run in popen workers (importable there as ``tests.fault_workers``)."""

import re


def spin_holding_the_gil(*args, **kwargs):
    """Backtrack in the regex engine, which holds the GIL throughout: the worker's own timer
    thread never runs again (2**40 steps: hours)."""
    return re.match(r"(a+)+$", "a" * 40 + "b")


def answer():
    return 42
