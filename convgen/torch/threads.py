"""Threads: convgen's TVM pool and torch's OpenMP pool sharing the cores of one model."""

from __future__ import annotations


def configure_threads(num_threads: int | None = None) -> None:
    """Set both pools for a model that runs convgen kernels between torch operators."""
    from ..runtime import set_num_threads

    set_num_threads(num_threads)
