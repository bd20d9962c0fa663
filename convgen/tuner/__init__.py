"""Autotuning (see convgen.tuner.tune)."""
