"""The on-disk kernel cache: built once, found again, rebuilt when damaged, keyed by what decides the code."""

import os

import numpy as np

import convgen
from convgen import ConvSpec, cache
from convgen.reference import conv2d_reference, random_inputs, tolerance

SPECS = [ConvSpec(in_channels=8, out_channels=8, height=6, width=6, kernel=3, padding=1),
         ConvSpec(in_channels=8, out_channels=16, height=6, width=6, kernel=1, bias=True)]


def test_kernels_are_built_once_then_loaded_and_a_damaged_file_is_rebuilt(tmp_path, host):
    folder = str(tmp_path / "k")
    first = cache.kernels(SPECS + SPECS[:1], host, folder=folder, builtin_records=False, parallel=2)
    files = sorted(os.listdir(folder))
    assert len(files) == 2 and first[0].path == first[2].path  # a repeated spec is built once
    stamps = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in files}
    again = cache.kernels(SPECS, host, folder=folder, builtin_records=False)
    assert {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in files} == stamps  # nothing built
    for spec, k in zip(SPECS, again):
        arrays = random_inputs(spec)
        np.testing.assert_allclose(k(*arrays), conv2d_reference(spec, *arrays), atol=tolerance(spec))
    damaged = os.path.join(folder, files[0])
    with open(damaged, "r+b") as fh:
        fh.truncate(4096)
    rebuilt = cache.kernels(SPECS, host, folder=folder, builtin_records=False)
    assert all(isinstance(k, convgen.Kernel) for k in rebuilt) and os.path.getsize(damaged) > 4096


def test_the_key_follows_config_target_and_source(monkeypatch):
    from convgen.schedules import get_template

    tmpl = get_template("cpu.generic")
    spec = SPECS[0]
    avx2, config = convgen.get_target("x86-avx2"), {"vectorize": False, "unroll_kw": True}
    a = cache.kernel_key(spec, avx2, tmpl, config)
    assert a == cache.kernel_key(spec, avx2, tmpl, {"unroll_kw": True, "vectorize": False})
    assert a != cache.kernel_key(spec, avx2, tmpl, {"vectorize": False, "unroll_kw": False})
    assert a != cache.kernel_key(spec.replace(bias=True), avx2, tmpl, config)
    assert a != cache.kernel_key(spec, convgen.get_target("x86-avx512"), tmpl, config)
    assert len(cache.source_digest()) == 16
    monkeypatch.setattr(cache, "source_digest", lambda: "0" * 16)  # convgen's code changed
    assert a != cache.kernel_key(spec, avx2, tmpl, config)


def test_a_spec_that_cannot_build_gives_its_error_in_its_place(tmp_path, host):
    bad = ConvSpec(in_channels=8, out_channels=8, height=6, width=6, dtype="float16")  # no fp16 on x86
    got = cache.kernels([bad, SPECS[0]], host, folder=str(tmp_path), builtin_records=False, parallel=1)
    assert isinstance(got[0], Exception) and "float16" in str(got[0]) and isinstance(got[1], convgen.Kernel)
