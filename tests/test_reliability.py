"""What a long-running service and a shared cache need: one test per finding of a probe run.

Each test failed before its fix (README, "Reliability and security", lists them). Outputs
are compared with the numpy reference or with eager torch, never with convgen itself.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import convgen
from convgen import ConvSpec, cache
from convgen.reference import conv2d_reference, random_inputs, tolerance

# plumbing and fault handling: nothing here depends on the host's ISA
pytestmark = pytest.mark.host_neutral

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = ConvSpec(in_channels=8, out_channels=8, height=6, width=6, kernel=3, padding=1)
RELU = PLAIN.replace(activation="relu")


def _check(kernel, spec):
    arrays = random_inputs(spec, seed=3)
    np.testing.assert_allclose(kernel(*arrays), conv2d_reference(spec, *arrays), rtol=0, atol=tolerance(spec))


def _run(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (what a second process of a service would do)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# 1 ------------------------------------------------------------------------------------------
def test_a_cached_kernel_whose_metadata_differs_from_the_request_is_rebuilt(tmp_path, host):
    folder = str(tmp_path / "k")
    first = cache.kernels([PLAIN, RELU], host, folder=folder, builtin_records=False, parallel=1)
    a, b = (k.path for k in first)
    swap = a + ".swap"
    os.replace(a, swap)
    os.replace(b, a)
    os.replace(swap, b)  # each file now holds the other convolution, under the other's name
    again = cache.kernels([PLAIN, RELU], host, folder=folder, builtin_records=False, parallel=1)
    for spec, k in zip([PLAIN, RELU], again):
        assert isinstance(k, convgen.Kernel) and k.spec == spec
        _check(k, spec)


# 2, 3 ---------------------------------------------------------------------------------------
def _unwritable_folder(tmp_path) -> str:
    if os.geteuid() == 0:  # root writes through any mode bits: a folder of /proc takes no files
        return "/proc/self/fdinfo"
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return str(folder)


@pytest.mark.parametrize("where", ["unwritable", "a file"])
def test_a_cache_that_cannot_be_used_degrades_to_a_temporary_folder_with_one_warning(tmp_path, host, where):
    torch = pytest.importorskip("torch")
    import convgen.torch as ct

    if where == "a file":
        folder = tmp_path / "cache"
        folder.write_text("not a folder")
        folder = str(folder)
    else:
        folder = _unwritable_folder(tmp_path)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 1)).eval()
    x = torch.randn(1, 8, 6, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = ct.optimize(model, x, cache=folder, builtin_records=False)
    said = [w for w in caught if issubclass(w.category, cache.CacheWarning)]
    assert len(said) == 1 and folder in str(said[0].message)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    assert ct.explain(fast).splitlines()[-1] == "2 of 2 convolutions run convgen kernels"


def test_explain_gives_the_error_line_of_a_failed_build_and_the_true_count(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import convgen.torch as ct

    def fail(*args, **kwargs):
        raise RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1, in build\n"
                           "ValueError: the build failed here")

    monkeypatch.setattr(cache, "build_into", fail)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 8, 6, 6)
    fast = ct.optimize(model, x, cache=str(tmp_path), builtin_records=False, parallel=1)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)  # torch computed it
    text = ct.explain(fast)
    assert "ValueError: the build failed here" in text and "Traceback" not in text
    assert text.splitlines()[-1] == "0 of 1 convolutions run convgen kernels"


# 4, 5, 6, 7 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1)).eval()


@pytest.fixture(scope="module")
def kernel_folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernels"))


def test_unbatched_inputs_run_as_eager_torch_runs_them(small_model, kernel_folder):
    import torch

    import convgen.torch as ct

    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        fast = ct.optimize(small_model, x, cache=kernel_folder)
        torch.testing.assert_close(fast(x[0]), small_model(x[0]), rtol=1e-4, atol=1e-4)
        from_unbatched = ct.optimize(small_model, x[0], cache=kernel_folder)
        got = from_unbatched(x[0])
        assert got.shape == (8, 10, 10) and got.is_contiguous()
        torch.testing.assert_close(got, small_model(x[0]), rtol=1e-4, atol=1e-4)


def test_writes_through_weight_data_are_noticed(small_model, kernel_folder):
    import copy

    import torch

    import convgen.torch as ct

    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        fast = ct.optimize(small_model, x, cache=kernel_folder)
        fast(x)  # packed
        twin = copy.deepcopy(small_model)
        for m in fast.modules():
            if isinstance(m, ct.Conv2d):
                m.weight.data.mul_(2)  # neither data_ptr nor _version changes
        for m in twin.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data.mul_(2)
        torch.testing.assert_close(fast(x), twin(x), rtol=1e-4, atol=1e-4)
        # an edit of one element can fall between the samples: refresh() is for that
        conv = next(m for m in fast.modules() if isinstance(m, ct.Conv2d))
        conv.weight.data[3, 2, 1, 1] += 1.0
        next(m for m in twin.modules() if isinstance(m, torch.nn.Conv2d)).weight.data[3, 2, 1, 1] += 1.0
        ct.refresh(fast)
        torch.testing.assert_close(fast(x), twin(x), rtol=1e-4, atol=1e-4)


def test_optimize_under_inference_mode(small_model, kernel_folder):
    import torch

    import convgen.torch as ct

    x = torch.randn(2, 8, 10, 10)
    with torch.inference_mode():
        fast = ct.optimize(small_model, x, cache=kernel_folder)
        torch.testing.assert_close(fast(x), small_model(x), rtol=1e-4, atol=1e-4)


def test_an_optimized_model_pickles_and_runs_the_same_when_loaded(small_model, kernel_folder):
    import torch

    import convgen.torch as ct

    x = torch.randn(1, 8, 10, 10)
    fast = ct.optimize(small_model, x, cache=kernel_folder)
    buf = io.BytesIO()
    torch.save(fast, buf)
    path = os.path.join(kernel_folder, "model.pt")
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
    torch.save(x, os.path.join(kernel_folder, "x.pt"))
    with torch.no_grad():
        want = small_model(x)
    torch.save(want, os.path.join(kernel_folder, "want.pt"))
    # loaded in another process, as a service would: its kernels come from the cache
    out = _run(f"""
        import torch, convgen.torch as ct
        model = torch.load({path!r}, weights_only=False)
        x, want = torch.load({os.path.join(kernel_folder, 'x.pt')!r}), torch.load({os.path.join(kernel_folder, 'want.pt')!r})
        with torch.no_grad():
            torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
        print(ct.explain(model).splitlines()[-1])
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("2 of 2 convolutions run convgen kernels")


# 8 ------------------------------------------------------------------------------------------
def test_a_records_path_that_is_a_fifo_is_refused_at_once(tmp_path):
    fifo = str(tmp_path / "records.jsonl")
    os.mkfifo(fifo)
    out = _run(f"""
        import convgen
        spec = convgen.ConvSpec(in_channels=8, out_channels=8, height=6, width=6)
        for call in (lambda: convgen.build(spec, "host", records={fifo!r}),
                     lambda: convgen.tune(spec, "host", trials=1, records={fifo!r}, progress=False)):
            try:
                call()
            except ValueError as e:
                print(e)
    """, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("is a FIFO, not a records file") == 2


# 9 ------------------------------------------------------------------------------------------
def _mapped_copies() -> int:
    """Distinct private copies of convgen libraries mapped into this process."""
    with open("/proc/self/maps") as fh:
        return len({line.split()[4] for line in fh if "convgen-load-" in line})


def test_loading_one_kernel_file_many_times_maps_it_once(tmp_path, host):
    path = str(tmp_path / "k.so")
    convgen.build(PLAIN, host, builtin_records=False).export(path)
    first = convgen.load(path)
    before = _mapped_copies()
    for _ in range(40):
        k = convgen.load(path)
        del k
    assert _mapped_copies() == before
    _check(first, PLAIN)


# 10 -----------------------------------------------------------------------------------------
def test_a_kernel_runs_in_a_child_forked_after_the_parent_used_it(tmp_path, host):
    path = str(tmp_path / "k.so")
    convgen.build(PLAIN, host, builtin_records=False).export(path)
    out = _run(f"""
        import os, time, numpy as np, convgen
        from convgen.reference import conv2d_reference, random_inputs
        k = convgen.load({path!r})
        arrays = random_inputs(k.spec, 1)
        want = conv2d_reference(k.spec, *arrays)
        assert np.abs(k(*arrays) - want).max() < 1e-3   # the parent's pool is running
        pid = os.fork()
        if pid == 0:
            ok = np.abs(k(*arrays) - want).max() < 1e-3 and np.abs(k(*arrays) - want).max() < 1e-3
            os._exit(0 if ok else 3)
        for _ in range(600):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            print("child hung")
        print("parent", np.abs(k(*arrays) - want).max() < 1e-3)
    """, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["child", "0", "parent", "True"], out.stdout


# 11 -----------------------------------------------------------------------------------------
def test_a_residual_of_the_wrong_shape_is_a_value_error(host):
    spec = PLAIN.replace(residual=True)
    k = convgen.build(spec, host, builtin_records=False)
    x, w, r = random_inputs(spec)
    with pytest.raises(ValueError, match=r"residual: expected shape \(1, 8, 6, 6\)"):
        k(x, w, r[:, :4])
