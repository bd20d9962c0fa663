"""Shared fixtures: the host target, and a small-workload strategy for property tests."""

from __future__ import annotations

import numpy as np
import pytest

import convgen
from convgen.reference import conv2d_reference, random_inputs, tolerance


@pytest.fixture(scope="session")
def host():
    return convgen.get_target("host")


def check_kernel(kernel, spec, seed=0):
    """Run ``kernel`` on random inputs and compare with the numpy reference."""
    arrays = random_inputs(spec, seed)
    got = kernel(*arrays)
    want = conv2d_reference(spec, *arrays)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance(spec))
    return got
