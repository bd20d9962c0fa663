"""The runtime wrapper: input checks, array kinds, export/load, runtime-only loading, threads."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import convgen
from convgen import ConvSpec, KernelError
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.runtime import aligned_empty, read_metadata

SPEC = ConvSpec(in_channels=8, out_channels=16, height=10, width=10, kernel=3, padding=1, bias=True, activation="relu")


@pytest.fixture(scope="module")
def kernel():
    return convgen.build(SPEC, "host")


@pytest.fixture(scope="module")
def inputs():
    return random_inputs(SPEC)


def test_numpy_in_numpy_out(kernel, inputs):
    y = kernel(*inputs)
    assert isinstance(y, np.ndarray) and y.flags.c_contiguous
    np.testing.assert_allclose(y, conv2d_reference(SPEC, *inputs), atol=tolerance(SPEC))


def test_unaligned_numpy_inputs_are_copied_not_refused(kernel, inputs):
    x, w, b = inputs
    buf = np.empty(x.size + 1, np.float32)
    xu = buf[1:].reshape(x.shape)
    xu[...] = x
    assert xu.ctypes.data % 64 != 0
    np.testing.assert_allclose(kernel(xu, w, b), conv2d_reference(SPEC, x, w, b), atol=tolerance(SPEC))


def test_out_is_written_in_place(kernel, inputs):
    out = aligned_empty(SPEC.output_shape, np.float32)
    assert kernel(*inputs, out=out) is out
    np.testing.assert_allclose(out, conv2d_reference(SPEC, *inputs), atol=tolerance(SPEC))
    unaligned = np.zeros(SPEC.output_shape, np.float32)  # maybe unaligned: staged then copied
    kernel(*inputs, out=unaligned)
    np.testing.assert_allclose(unaligned, out)


def _unaligned_view(shape, dtype=np.float32):
    """A C-contiguous numpy view whose data sits one element past a 64-byte boundary."""
    buf = aligned_empty((int(np.prod(shape)) + 1,), dtype)
    view = buf[1:].reshape(shape)
    assert view.flags.c_contiguous and view.ctypes.data % 64 != 0
    return view


def test_unaligned_numpy_out_receives_the_result(kernel, inputs):
    want = conv2d_reference(SPEC, *inputs)
    out = _unaligned_view(SPEC.output_shape)
    out[...] = np.nan
    assert kernel(*inputs, out=out) is out
    np.testing.assert_allclose(out, want, atol=tolerance(SPEC))
    # the staging buffer is reused: a second call with other inputs gives its own result
    x2 = inputs[0] * 2
    assert kernel(x2, *inputs[1:], out=out) is out
    np.testing.assert_allclose(out, conv2d_reference(SPEC, x2, *inputs[1:]), atol=2 * tolerance(SPEC))


def test_unaligned_torch_out_receives_the_result(kernel, inputs):
    torch = pytest.importorskip("torch")
    x, w, b = (torch.from_numpy(a) for a in inputs)
    n = int(np.prod(SPEC.output_shape))
    base = torch.full((n + 1,), float("nan"))
    out = base[1:].view(SPEC.output_shape)
    assert out.is_contiguous() and out.data_ptr() % 64 != 0
    assert kernel(x, w, b, out=out) is out
    np.testing.assert_allclose(out.numpy(), conv2d_reference(SPEC, *inputs), atol=tolerance(SPEC))
    assert np.isnan(base[0].item())  # nothing written outside the view


def test_read_only_numpy_inputs(kernel, inputs):
    ro = []
    for a in inputs:
        c = aligned_empty(a.shape, a.dtype)
        c[...] = a
        c.setflags(write=False)
        ro.append(c)
    want = conv2d_reference(SPEC, *inputs)
    np.testing.assert_allclose(kernel(*ro), want, atol=tolerance(SPEC))
    np.testing.assert_allclose(kernel(ro[0], kernel.pack_weights(ro[1]), ro[2]), want, atol=tolerance(SPEC))
    unaligned_ro = _unaligned_view(SPEC.input_shape)
    unaligned_ro[...] = inputs[0]
    unaligned_ro.setflags(write=False)
    np.testing.assert_allclose(kernel(unaligned_ro, *ro[1:]), want, atol=tolerance(SPEC))


def test_torch_in_torch_out_zero_copy(kernel, inputs):
    torch = pytest.importorskip("torch")
    x, w, b = (torch.from_numpy(a) for a in inputs)
    y = kernel(x, w, b)
    assert isinstance(y, torch.Tensor)
    want = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
    torch.testing.assert_close(y, want, atol=1e-4, rtol=0)
    out = torch.empty(SPEC.output_shape)
    assert kernel(x, w, b, out=out) is out
    torch.testing.assert_close(out, want, atol=1e-4, rtol=0)


def test_tvm_tensors(kernel, inputs):
    import tvm

    args = [tvm.runtime.tensor(a) for a in inputs]
    y = kernel(*args)
    assert isinstance(y, tvm.runtime.Tensor)
    np.testing.assert_allclose(y.numpy(), conv2d_reference(SPEC, *inputs), atol=tolerance(SPEC))


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda x, w, b: (x[:, :, :9], w, b), ValueError, r"data: expected shape \(1, 8, 10, 10\)"),
        (lambda x, w, b: (x, w.astype(np.float64), b), TypeError, "weight: expected dtype float32, got float64"),
        (lambda x, w, b: (x.astype(np.int32), w, b), TypeError, "data: expected dtype float32"),
        (lambda x, w, b: (np.asfortranarray(x), w, b), ValueError, "data: must be C-contiguous"),
        (lambda x, w, b: (x[..., ::-1], w, b), ValueError, "contiguous"),
        (lambda x, w, b: (x.tolist(), w, b), TypeError, "expected a numpy array"),
        (lambda x, w, b: (x, w, b[:3]), ValueError, "bias: expected shape"),
        (lambda x, w, b: (x, w.transpose(2, 3, 1, 0).copy(), b), ValueError, r"weight: expected shape .* \(OIHW\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(kernel, inputs, mutate, exc, match):
    with pytest.raises(exc, match=match):
        kernel(*mutate(*inputs))


def test_missing_or_extra_bias(kernel, inputs):
    with pytest.raises(ValueError, match="bias=True"):
        kernel(*inputs[:2])
    plain = convgen.build(SPEC.replace(bias=False), "host")
    with pytest.raises(ValueError, match="without bias"):
        plain(*inputs)


def test_bad_out_and_wrong_device(kernel, inputs):
    with pytest.raises(ValueError, match="out: expected shape"):
        kernel(*inputs, out=np.empty((1, 16, 10, 9), np.float32))
    ro = np.zeros(SPEC.output_shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kernel(*inputs, out=ro)
    torch = pytest.importorskip("torch")
    if hasattr(torch, "device"):
        meta = torch.empty(SPEC.input_shape, device="meta")
        with pytest.raises((ValueError, TypeError)):
            kernel(meta, *[torch.from_numpy(a) for a in inputs[1:]])
    requires_grad = torch.from_numpy(inputs[0]).requires_grad_()
    with pytest.raises(TypeError, match="data"):
        kernel(requires_grad, *[torch.from_numpy(a) for a in inputs[1:]])


def test_export_load_round_trip(kernel, inputs, tmp_path):
    path = str(tmp_path / "conv.so")
    kernel.export(path)
    meta = read_metadata(path)
    assert meta["spec"] == SPEC.to_dict() and meta["template"] == kernel.template and meta["config"] == kernel.config
    assert {"tvm", "tvm_ffi", "convgen", "space_hash", "target"} <= set(meta)
    k2 = convgen.load(path)
    np.testing.assert_array_equal(k2(*inputs), kernel(*inputs))


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.so"
    p.write_bytes(b"\x7fELF not really")
    with pytest.raises(KernelError, match="not a convgen kernel"):
        convgen.load(str(p))
    with pytest.raises(KernelError, match="no such file"):
        convgen.load(str(tmp_path / "missing.so"))


def test_foreign_kernel_loads_for_inspection_but_refuses_to_run(inputs, tmp_path):
    target = convgen.get_target("x86-avx512")
    if target.runs_here():
        pytest.skip("this machine runs AVX-512")
    k = convgen.build(SPEC, target)
    path = str(tmp_path / "avx512.so")
    k.export(path)
    k2 = convgen.load(path)
    assert k2.target.name == "x86-avx512"
    with pytest.raises(KernelError, match="cannot run it"):
        k2(*inputs)


def test_load_needs_only_the_tvm_runtime(kernel, inputs, tmp_path):
    path = str(tmp_path / "conv.so")
    kernel.export(path)
    np.save(tmp_path / "x.npy", inputs[0])
    code = f"""
import sys, numpy as np, convgen
k = convgen.load({path!r}, num_threads=1)
x = np.load({str(tmp_path / 'x.npy')!r})
w = np.ones({SPEC.weight_shape}, np.float32); b = np.zeros(16, np.float32)
y = k(x, w, b)
bad = [m for m in sys.modules if m.startswith(("tvm.s_tir", "tvm.topi", "tvm.relax", "convgen.schedules", "convgen.tuner",
                                              "convgen.builder", "convgen.compute", "convgen.records", "convgen.cache",
                                              "convgen.cuda.compile", "convgen.cuda.toolchain", "convgen.cuda.verify",
                                              "convgen.cuda.emulate"))]
import tvm
print(json.dumps({{"bad": bad, "sum": float(y.sum()), "threads": tvm.runtime.num_threads(), "runtime_only": tvm.base._RUNTIME_ONLY}}))
""".replace("import sys,", "import json, sys,")
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bad"] == [] and result["runtime_only"] is True
    assert result["threads"] == 1


def test_threads_default_to_every_cpu_of_the_process(kernel, inputs):
    from convgen.runtime import current_num_threads, default_num_threads

    kernel(*inputs)
    assert current_num_threads() == default_num_threads() == len(os.sched_getaffinity(0))
    one = convgen.build(SPEC, "host", num_threads=1)
    one(*inputs)
    assert current_num_threads() == 1
    kernel(*inputs)
    assert current_num_threads() == default_num_threads()


def test_kernel_called_from_another_thread(kernel, inputs):
    import threading

    from convgen.runtime import current_num_threads

    kernel(*inputs)  # the main thread's pool is configured
    result = {}

    def work():
        try:
            result["y"] = kernel(*inputs)
            # TVM's pool is per calling thread: this one must have been configured too
            result["threads"] = current_num_threads()
        except BaseException as e:  # reported below, in the test's thread
            result["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=300)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    np.testing.assert_allclose(result["y"], conv2d_reference(SPEC, *inputs), atol=tolerance(SPEC))
    assert result["threads"] == kernel.num_threads
    np.testing.assert_allclose(kernel(*inputs), result["y"])  # the main thread is unaffected


def test_thread_counts_are_clamped_to_the_cpus_of_the_process(kernel, inputs):
    from convgen.runtime import current_num_threads, default_num_threads, set_num_threads

    cpus = len(os.sched_getaffinity(0))
    try:
        got = set_num_threads(10**3)
        assert 1 <= got <= cpus and got == current_num_threads()
        big = convgen.Kernel(kernel.meta, kernel.module, num_threads=10**3)
        assert 1 <= big.num_threads <= cpus
        np.testing.assert_allclose(big(*inputs), conv2d_reference(SPEC, *inputs), atol=tolerance(SPEC))
    finally:
        set_num_threads(default_num_threads())
