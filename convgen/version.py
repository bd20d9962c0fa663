"""convgen's version (a leaf module: the builder records it without importing the package)."""

__version__ = "0.1.0"
