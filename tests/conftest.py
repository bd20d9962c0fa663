"""Shared fixtures: the host target, and a small-workload strategy for property tests."""

from __future__ import annotations

import numpy as np
import pytest

import convgen
from convgen.reference import conv2d_reference, random_inputs, relative_tolerance, tolerance


def pytest_addoption(parser):
    parser.addoption("--host-target", default=None, metavar="NAME",
                     help="run the suite as if 'host' were this target (x86-avx2 on an AVX-512 machine, say): "
                          "scripts/test.sh runs it once natively and once with x86-avx2 where that differs")


@pytest.fixture(scope="session", autouse=True)
def forced_host(request):
    """``--host-target``: every in-process ``"host"`` resolves to that target; tests that start
    convgen in a subprocess pass it explicitly (:func:`host` gives its name)."""
    name = request.config.getoption("--host-target")
    if not name:
        yield None
        return
    import convgen.target as target_module

    forced = convgen.get_target(name)
    if not forced.runs_here():
        pytest.exit(f"--host-target {name}: this machine cannot run {name} kernels", returncode=2)
    original = target_module.host_target
    target_module.host_target = lambda: forced
    yield forced
    target_module.host_target = original


@pytest.fixture(scope="session")
def host(forced_host):
    return convgen.get_target("host")


def check_kernel(kernel, spec, seed=0):
    """Run ``kernel`` on random inputs and compare with the numpy reference."""
    arrays = random_inputs(spec, seed)
    got = kernel(*arrays)
    want = conv2d_reference(spec, *arrays)
    assert got.shape == want.shape and got.dtype == want.dtype
    # a bf16 output may round to the bf16 neighbour of the reference's (sums in other orders)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=relative_tolerance(spec),
                               atol=tolerance(spec))
    return got
