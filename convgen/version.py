"""convgen's version (a leaf module: the builder records it without importing the package)."""

__version__ = "0.1.0"


def minor_version(version: object) -> tuple[int, ...] | None:
    """``(0, 27)`` for ``"0.27.0.post1"``; ``None`` for anything unparsable. The one rule by
    which kernels (their ABI) and records (their timings) are matched to this TVM: same
    major and minor version."""
    parts = str(version or "").split(".")[:2]
    return tuple(int(p) for p in parts) if len(parts) == 2 and all(p.isdigit() for p in parts) else None
