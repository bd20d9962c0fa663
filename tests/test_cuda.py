"""CUDA kernels without a GPU: fatbins, static resource checks, CPU emulation of the schedules.

What runs here (CI, 2 cores, no GPU, nvcc installed):

- every CUDA ``.so`` embeds an nvcc fatbin (sm_XX SASS + compute_XX PTX) for its target's
  arch and no CUDA source; the library loads in TVM's real CUDA runtime (a subprocess with
  a stand-in ``libcuda.so.1``, only where no NVIDIA driver is installed);
- impossible configs are rejected before anything runs: by the knob constraints (the
  tuner never samples them) and by TVM's VerifyGPUCode / the ptxas register report;
- the fp32 templates' schedules, thread bindings made serial loops, are built for the CPU
  and compared with the numpy reference: default and sampled configs, both layouts,
  stride, dilation, asymmetric padding, groups, depthwise, bias + ReLU, flip.

Tensor-core kernels cannot be emulated this way: WMMA instructions have no CPU form.
Their loop nest is emulated with the 16x16x16 tiles left as plain loops (index maps,
padding, im2col gather, epilogue), and they are compiled for sm_80 and sm_90; their
numbers are checked only on a GPU (``-m gpu`` here, or ``scripts/gpu_check.py``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import convgen
from convgen import ConfigError, ConvSpec, KernelError
from convgen.cuda import compile as cuda_compile
from convgen.cuda import device, emulate, fatbin, toolchain, verify
from convgen.builder import compile_module, export_library, schedule, tvm_target
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.schedules import candidates, get_template

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler to link kernels")

ARCHES = ("cuda-sm80", "cuda-sm90")

# Workloads for the emulation: both layouts, stride 2, asymmetric padding, dilation, groups,
# depthwise, bias + ReLU, flip, batch 2, 1x1 (the templates that serve each run).
FP32_SPECS = [
    ConvSpec(in_channels=16, out_channels=32, height=12, width=14, kernel=3, padding=1),
    ConvSpec(in_channels=8, out_channels=16, height=9, width=9, kernel=3, stride=2, padding=(1, 0, 2, 1),
             bias=True, activation="relu"),
    ConvSpec(in_channels=24, out_channels=16, height=8, width=8, kernel=1, layout="NHWC", bias=True),
    ConvSpec(in_channels=3, out_channels=16, height=15, width=15, kernel=5, stride=2, padding=2, flip=True),
    ConvSpec(in_channels=8, out_channels=32, height=7, width=10, kernel=(3, 2), dilation=(2, 1), padding="same",
             groups=2, layout="NHWC"),
    ConvSpec(batch=2, in_channels=32, out_channels=32, height=10, width=10, kernel=3, padding=1, groups=32, bias=True),
    ConvSpec(in_channels=16, out_channels=16, height=11, width=12, kernel=3, stride=2, padding="same",
             layout="NHWC", activation="relu"),
    ConvSpec(batch=2, in_channels=12, out_channels=20, height=9, width=7, kernel=(2, 3), dilation=(1, 2),
             padding=(0, 2, 1, 1), layout="NHWC", bias=True, activation="relu", flip=True),
    ConvSpec(in_channels=16, out_channels=16, height=9, width=9, kernel=3, padding=1, bias=True, residual=True,
             activation="relu"),
    ConvSpec(in_channels=8, out_channels=24, height=7, width=7, kernel=1, layout="NHWC", residual=True),
]
FP16_SPECS = [
    ConvSpec(in_channels=64, out_channels=64, height=14, width=14, kernel=3, padding=1, layout="NHWC",
             dtype="float16", bias=True, activation="relu"),
    ConvSpec(in_channels=8, out_channels=24, height=9, width=9, kernel=3, stride=2, padding=(1, 0, 2, 1),
             layout="NHWC", dtype="float16"),
    ConvSpec(batch=2, in_channels=16, out_channels=48, height=7, width=7, kernel=1, layout="NHWC",
             dtype="float16", bias=True),
    ConvSpec(in_channels=6, out_channels=10, height=8, width=10, kernel=(3, 2), dilation=(2, 1), padding="same",
             layout="NHWC", dtype="float16", flip=True),
    ConvSpec(in_channels=32, out_channels=32, height=8, width=8, kernel=3, padding=1, layout="NHWC",
             dtype="float16", bias=True, residual=True, activation="relu"),
]


def _nvcc_or_skip():
    try:
        toolchain.find_nvcc(convgen.get_target("cuda-sm90"))
    except convgen.TargetError as e:
        pytest.skip(str(e))


def _check(run, spec, seed=0):
    arrays = random_inputs(spec, seed)
    got = run(*arrays)
    want = conv2d_reference(spec, *arrays)
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
    assert err <= tolerance(spec), f"max |error| {err:.3g} > {tolerance(spec):.3g}"


# ---- targets and templates -----------------------------------------------------------------------
@pytest.mark.parametrize("name,arch,sms", [("cuda-sm80", "sm_80", 108), ("cuda-sm90", "sm_90", 132)])
def test_cuda_targets_spell_out_their_limits(name, arch, sms):
    t = convgen.get_target(name)
    lim = t.gpu_limits()
    assert (t.family, lim.arch, lim.sm_count) == ("cuda", arch, sms)
    assert lim.max_threads_per_block == 1024 and lim.max_shared_memory_per_block == 49152
    assert lim.registers_per_block == 65536 and lim.warp_size == 32
    assert "float16" in t.dtypes and t.nominal_peak_gflops(1) > 1e4
    assert not t.is_cpu
    assert t.runs_here() == (device.device_problem(t) is None)  # False here: no GPU


def test_every_spec_has_a_cuda_template_and_the_fallback_comes_last():
    t = convgen.get_target("cuda-sm90")
    for spec in FP32_SPECS + FP16_SPECS + [FP16_SPECS[0].replace(layout="NCHW")]:
        found = [tm.name for tm in candidates(spec, t)]
        assert found[-1] == "cuda.generic", found
    assert [tm.name for tm in candidates(FP32_SPECS[0], t)] == ["cuda.direct", "cuda.generic"]
    assert [tm.name for tm in candidates(FP16_SPECS[0], t)] == ["cuda.tensorcore", "cuda.generic"]
    assert [tm.name for tm in candidates(FP32_SPECS[5], t)] == ["cuda.generic"]  # depthwise
    with pytest.raises(convgen.TargetError, match="does not support dtype int8"):
        convgen.build(FP32_SPECS[0].replace(dtype="int8"), "cuda-sm90")


# ---- fatbins -------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_libraries_embed_an_nvcc_fatbin_for_the_arch_and_no_source(arch, tmp_path):
    _nvcc_or_skip()
    target = convgen.get_target(arch)
    cc = arch[-2:]
    for spec in (FP32_SPECS[1], FP16_SPECS[0]):
        kernel = convgen.build(spec, target, builtin_records=False)
        path = str(tmp_path / f"{kernel.template}.so")
        kernel.export(path)
        [embedded] = fatbin.library_device_code(path)
        assert embedded["format"] == "fatbin"
        assert embedded["sass"] == [f"sm_{cc}"] and embedded["ptx"] == [f"compute_{cc}"]
        blob = open(path, "rb").read()
        for text in (b"__global__", b'extern "C"', b"#include", b"(int)threadIdx"):
            assert text not in blob, f"CUDA source text {text!r} in the library"
        assert kernel.meta["cuda"]["arch"] == f"sm_{cc}"
        assert kernel.meta["cuda"]["kernels"]["main_kernel"]["registers"] > 0
        # it loads here for inspection (metadata, no GPU) and says why it cannot run
        loaded = convgen.load(path)
        assert loaded.template == kernel.template and loaded.config == kernel.config
        if device.device_problem(target) is None:  # a GPU machine: it runs (gpu_check covers it)
            continue
        assert not loaded.runs_here
        with pytest.raises(KernelError, match=f"{arch} cannot run on this .*libcuda"):
            loaded(*random_inputs(spec))


STANDIN_C = r"""
/* A stand-in for the NVIDIA driver's libcuda.so.1, for this test only: it lets TVM's CUDA
   runtime library load where no driver is installed, so the runtime's own loader can read
   a convgen library. Every entry point fails. */
typedef int CUresult;
CUresult cuGetErrorName(CUresult e, const char** s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(CUresult e, const char** s) { *s = "no CUDA device (test stand-in)"; return 0; }
#define FAIL(name) CUresult name(void) { return 100; }
FAIL(cuDeviceGetName) FAIL(cuFuncSetAttribute) FAIL(cuLaunchKernel) FAIL(cuLaunchKernelEx)
FAIL(cuLaunchCooperativeKernel) FAIL(cuModuleGetFunction) FAIL(cuModuleLoadData) FAIL(cuModuleUnload)
FAIL(cuTensorMapEncodeTiled) FAIL(cuInit) FAIL(cuDriverGetVersion) FAIL(cuGetProcAddress) FAIL(cuGetProcAddress_v2)
"""

LOADER = r"""
import ctypes, json, sys
try:  # never load the stand-in where a real driver exists
    ctypes.CDLL("libcuda.so.1")
    print(json.dumps({"skip": "a real NVIDIA driver is installed: the GPU tests cover this"})); sys.exit(0)
except OSError:
    pass
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import tvm
if not tvm.runtime.enabled("cuda"):
    print(json.dumps({"skip": "TVM's CUDA runtime did not load (libcudart.so.13 not found)"})); sys.exit(0)
m = tvm.runtime.load_module(sys.argv[2])
dev = [x for x in m.imports if x.kind == "cuda"]
out = {"cuda_modules": len(dev), "kernel_found": dev[0].get_function("main_kernel") is not None}
import convgen
k = convgen.load(sys.argv[2])
out["runs_here"] = k.runs_here
try:
    k(*[__import__("numpy").zeros(s, d) for _, s, d in k.arg_specs()[:-1]])
except convgen.KernelError as e:
    out["call_error"] = str(e)
print(json.dumps(out))
"""


def test_library_loads_in_tvm_cuda_runtime_and_fails_cleanly_without_a_gpu(tmp_path):
    _nvcc_or_skip()
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc for the driver stand-in")
    kernel = convgen.build(FP32_SPECS[0], "cuda-sm90", builtin_records=False)
    so = str(tmp_path / "k.so")
    kernel.export(so)
    standin_dir = tmp_path / "standin"
    standin_dir.mkdir()
    (standin_dir / "libcuda.c").write_text(STANDIN_C)
    standin = str(standin_dir / "libcuda.so.1")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", standin,
                    str(standin_dir / "libcuda.c")], check=True)
    proc = subprocess.run([sys.executable, "-c", LOADER, standin, so], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    # TVM's CUDA loader read the fatbin module and its kernel table; nothing ran
    assert result["cuda_modules"] == 1 and result["kernel_found"]
    assert result["runs_here"] is False
    assert "no CUDA GPU" in result["call_error"]


def test_the_fatbin_replaces_the_source_in_the_library_blob():
    _nvcc_or_skip()
    import tvm

    target = convgen.get_target("cuda-sm80")
    tmpl = get_template("cuda.generic")
    executable = compile_module(FP32_SPECS[2], target, tmpl, tmpl.default(FP32_SPECS[2], target))
    blob = bytes(tvm.get_global_func("runtime.ModulePackImportsToTensor")(executable.mod).numpy().tobytes())
    source = cuda_compile.device_module(executable).inspect_source("cuda")
    before = dict(fatbin.iter_library_bin(blob))
    assert fatbin.split_cuda_payload(before[b"cuda"], source.encode())[0] == b"cuda"  # TVM keeps source
    patched = fatbin.patch_library_bin(blob, executable.convgen_device_code.fatbin, source)
    fmt, fmap, code = fatbin.split_cuda_payload(dict(fatbin.iter_library_bin(patched))[b"cuda"])
    assert fmt == b"fatbin" and code == executable.convgen_device_code.fatbin
    assert fmap == fatbin.split_cuda_payload(before[b"cuda"], source.encode())[1]  # kernel table kept
    assert fatbin.fatbin_contents(code) == {"sass": ["sm_80"], "ptx": ["compute_80"]}


# ---- static checks -------------------------------------------------------------------------------
def test_knob_constraints_reject_what_a_block_cannot_hold():
    target = convgen.get_target("cuda-sm90")
    tmpl = get_template("cuda.direct")
    spec = ConvSpec(in_channels=64, out_channels=64, height=32, width=32, kernel=3, padding=1)
    space = tmpl.space(spec, target)
    base = tmpl.default(spec, target)
    too_many_threads = dict(base, tile_f=[1, 16, 1], tile_y=[1, 16, 1], tile_x=[1, 32, 1])
    assert "8192 threads per block" in space.why_illegal(too_many_threads)
    too_much_shared = dict(base, tile_f=[1, 16, 4], tile_y=[1, 4, 4], tile_x=[1, 16, 2], tile_rc=16,
                           tile_ry=3, tile_rx=3)
    assert "shared memory" in space.why_illegal(too_much_shared)
    too_many_registers = dict(base, tile_f=[4, 4, 4], tile_y=[1, 2, 4], tile_x=[2, 4, 2])
    assert "accumulators" in space.why_illegal(too_many_registers)
    with pytest.raises(ConfigError, match="threads per block"):
        convgen.build(spec, target, too_many_threads, template="cuda.direct")
    rng = random.Random(0)
    for config in space.sample(rng, 200):  # what the tuner samples fits, by construction
        assert tmpl._threads(config) <= 1024
        assert 4 * sum(tmpl._shared_words(spec, config)) <= 49152
    tc = get_template("cuda.tensorcore")
    tc_space = tc.space(FP16_SPECS[0], target)
    big = {"warp_m": 4, "warp_n": 4, "frag_m": 4, "frag_n": 4, "chunk_k": 4, "vec": 8}
    assert "shared memory" in tc_space.why_illegal(big)


@pytest.mark.parametrize("template,spec", [("cuda.direct", FP32_SPECS[1]), ("cuda.direct", FP32_SPECS[7]),
                                           ("cuda.tensorcore", FP16_SPECS[0]), ("cuda.tensorcore", FP16_SPECS[1])])
def test_shared_memory_arithmetic_is_what_tvm_allocates(template, spec):
    # The knob constraint is only useful if its arithmetic matches the kernel TVM makes.
    from tvm import s_tir

    target = convgen.get_target("cuda-sm90")
    tmpl = get_template(template)
    rng = random.Random(spec.key)
    for config in [tmpl.default(spec, target)] + tmpl.space(spec, target).sample(rng, 4):
        with __import__("tvm").transform.PassContext(config=dict(tmpl.pass_config)):
            lowered = verify.lower_for_verify(schedule(spec, target, tmpl, config), tvm_target(target))
        used = s_tir.analysis.calculate_allocated_bytes(lowered["main"])["main"]
        shared = used.get("shared", 0) + used.get("shared.dyn", 0)
        want = 4 * sum(tmpl._shared_words(spec, config)) if template == "cuda.direct" else tmpl.shared_bytes(config)
        assert shared == want, config


def test_verify_gpu_code_rejects_what_the_target_cannot_launch():
    # A config legal on one GPU, checked against a smaller one: TVM's VerifyGPUCode names
    # each limit the kernel breaks, as a ConfigError (the tuner records a failed trial).
    import dataclasses

    big = convgen.get_target("cuda-sm90")
    small = dataclasses.replace(big, name="tiny-gpu", tvm=dict(big.tvm, max_threads_per_block=64,
                                                                max_shared_memory_per_block=4096))
    tmpl = get_template("cuda.direct")
    spec = FP32_SPECS[0]
    config = dict(tmpl.default(spec, big), tile_f=[1, 4, 2], tile_y=[1, 3, 2], tile_x=[1, 14, 1], tile_rc=16)
    mod = schedule(spec, big, tmpl, config)
    verify.verify(mod, big, tvm_target(big))  # fits the real GPU
    with pytest.raises(ConfigError) as info:
        verify.verify(mod, small, tvm_target(small))
    message = str(info.value)
    assert "tiny-gpu" in message and "VerifyGPUCode" in message
    assert re.search(r"threads per block \(168\) is greater than the allowed maximum \(64\)", message)
    assert re.search(r"shared memory per block \(\d+\) is greater than the allowed maximum \(4096\)", message)


def test_ptxas_register_report_is_checked_against_the_register_file():
    target = convgen.get_target("cuda-sm80")
    log = ("ptxas info    : Compiling entry function 'main_kernel' for 'sm_80'\n"
           "    0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
           "ptxas info    : Used 128 registers, 4096 bytes smem, 400 bytes cmem[0]\n")
    code = toolchain.DeviceCode(b"", "sm_80", toolchain.parse_ptxas(log))
    assert vars(code.kernels["main_kernel"]) == {"registers": 128, "spill_bytes": 16, "stack_bytes": 0,
                                                 "shared_bytes": 4096}
    verify.check_registers(code, {"main_kernel": 512}, target)  # 128 x 512 = 65536: fits exactly
    with pytest.raises(ConfigError, match="128 registers x 1024 threads"):
        verify.check_registers(code, {"main_kernel": 1024}, target)
    assert verify.launch_threads('extern "C" __global__ void __launch_bounds__(256) main_kernel(float* a)') == {
        "main_kernel": 256}


# ---- CPU emulation -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", FP32_SPECS, ids=lambda s: s.describe())
def test_emulated_fp32_schedules_match_the_reference(spec):
    # default + sampled configs of every fp32 template that serves the spec
    target = convgen.get_target("cuda-sm80")
    rng = random.Random(spec.key)
    for tmpl in candidates(spec, target):
        samples = 2 if tmpl.name == "cuda.direct" else 1
        for config in [tmpl.default(spec, target)] + tmpl.space(spec, target).sample(rng, samples):
            _check(emulate.emulate(spec, target, config, template=tmpl.name), spec)


def test_emulation_catches_a_copy_with_wrong_bounds():
    import tvm

    target = convgen.get_target("cuda-sm80")
    spec = FP32_SPECS[0]
    tmpl = get_template("cuda.direct")
    config = dict(tmpl.default(spec, target), tile_f=[1, 4, 2], tile_y=[1, 3, 2], tile_x=[1, 14, 1], tile_rc=16)
    text = schedule(spec, target, tmpl, config).script(show_meta=True)
    _check(emulate.emulate_module(tvm.script.from_source(text), spec), spec)  # as scheduled: right
    # the cooperative copy of the data tile stops one row of channels short
    copy = text.index('T.sblock("data_pad_shared")')
    where = re.compile(r"T\.where\((.*) < (\d+)\)")
    m = where.search(text, copy)
    bad = text[: m.start()] + f"T.where({m.group(1)} < {int(m.group(2)) - 128})" + text[m.end():]
    with pytest.raises(AssertionError, match="max .error"):
        _check(emulate.emulate_module(tvm.script.from_source(bad), spec), spec)


@pytest.mark.parametrize("spec", FP16_SPECS, ids=lambda s: s.describe())
def test_tensor_core_loop_nest_without_the_wmma_instructions_matches_the_reference(spec):
    target = convgen.get_target("cuda-sm90")
    tmpl = get_template("cuda.tensorcore")
    rng = random.Random(spec.key)
    for config in [tmpl.default(spec, target)] + tmpl.space(spec, target).sample(rng, 1):
        _check(emulate.emulate(spec, target, config, template=tmpl.name, intrinsics=False), spec)


def test_emulated_fallback_serves_fp16_nchw_and_groups_accumulating_in_fp32():
    spec = ConvSpec(in_channels=32, out_channels=16, height=9, width=9, kernel=3, groups=4, padding=(0, 1, 1, 0),
                    dtype="float16", bias=True, activation="relu")
    target = convgen.get_target("cuda-sm80")
    assert [t.name for t in candidates(spec, target)] == ["cuda.generic"]
    _check(emulate.emulate(spec, target), spec)


def test_tensor_core_kernels_themselves_cannot_be_emulated():
    with pytest.raises(ConfigError, match="no CPU emulation"):
        emulate.emulate(FP16_SPECS[0], "cuda-sm90")


@pytest.mark.parametrize("arch", ARCHES)
def test_tensor_core_configs_compile_for_each_arch(arch, tmp_path):
    _nvcc_or_skip()
    target = convgen.get_target(arch)
    tmpl = get_template("cuda.tensorcore")
    spec = FP16_SPECS[2]
    rng = random.Random(arch)
    for config in [tmpl.default(spec, target)] + tmpl.space(spec, target).sample(rng, 2):
        executable = compile_module(spec, target, tmpl, config)
        assert "wmma::mma_sync" in cuda_compile.device_module(executable).inspect_source("cuda")
        path = str(tmp_path / "tc.so")
        export_library(executable, target, path)
        assert fatbin.library_device_code(path)[0]["sass"] == [f"sm_{arch[-2:]}"]


# ---- the GPU check's own reference (torch on the CPU) --------------------------------------------
def test_gpu_check_torch_reference_matches_numpy():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    import gpu_check

    for spec in FP32_SPECS:
        arrays = random_inputs(spec)
        tensors = [torch.from_numpy(a) for a in arrays]
        got = gpu_check.torch_conv(spec, *tensors).numpy()
        np.testing.assert_allclose(got, conv2d_reference(spec, *arrays), atol=tolerance(spec), rtol=0)
        timed = gpu_check.cudnn_call(spec, *tensors)()  # the timed call: same numbers, torch layout
        if spec.layout == "NHWC":
            timed = timed.permute(0, 2, 3, 1)
        np.testing.assert_allclose(timed.numpy(), got, atol=tolerance(spec), rtol=0)
    target = convgen.get_target("cuda-sm90")
    jobs = gpu_check.make_jobs(target, samples=1, quick=False, seed=0)
    assert {j.template for j in jobs} == {"cuda.direct", "cuda.generic", "cuda.tensorcore"}
    assert gpu_check.gpu_target_name((9, 0)) == "cuda-sm90" and gpu_check.gpu_target_name((8, 6)) == "cuda-sm80"


# ---- on a GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("spec", [FP32_SPECS[0], FP32_SPECS[1], FP32_SPECS[5], FP32_SPECS[7], FP16_SPECS[0],
                                  FP16_SPECS[2]], ids=lambda s: s.describe())
def test_on_gpu_every_template_matches_the_reference(spec, tmp_path):
    torch = pytest.importorskip("torch")
    target = convgen.get_target("cuda-sm90" if torch.cuda.get_device_capability(0)[0] >= 9 else "cuda-sm80")
    for tmpl in candidates(spec, target):
        kernel = convgen.build(spec, target, template=tmpl.name, builtin_records=False)
        assert kernel.runs_here
        _check(kernel, spec)  # numpy in, numpy out through the GPU
        path = str(tmp_path / "k.so")
        kernel.export(path)
        loaded = convgen.load(path)
        arrays = random_inputs(spec)
        got = loaded(*[torch.from_numpy(a).cuda() for a in arrays])
        assert got.is_cuda
        err = float(np.abs(got.cpu().numpy().astype(np.float64) - conv2d_reference(spec, *arrays)).max())
        assert err <= tolerance(spec)


@pytest.mark.slow
def test_wmma_intrinsics_are_tvms():
    # slow: importing tvm.s_tir.tensor_intrin.cuda takes 50-110 s on 2 cores (the reason
    # convgen defines its five WMMA intrinsics itself)
    import tvm
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import cuda as tvm_intrin

    from convgen.schedules.cuda_tc import wmma_intrinsics

    ours = wmma_intrinsics()
    theirs = {"load_a": tvm_intrin.WMMA_LOAD_16x16x16_F16_A_DYN_INTRIN,
              "load_b": tvm_intrin.WMMA_LOAD_16x16x16_F16_B_DYN_INTRIN,
              "compute": tvm_intrin.WMMA_SYNC_16x16x16_f16f16f32_INTRIN,
              "init": tvm_intrin.WMMA_FILL_16x16x16_F32_INTRIN,
              "store": tvm_intrin.WMMA_STORE_16x16x16_F32_SHARED_DYN_INTRIN}
    for role, name in theirs.items():
        a, b = TensorIntrin.get(ours[role]), TensorIntrin.get(name)
        for mine, tvms in ((a.desc, b.desc), (a.impl, b.impl)):  # the function names differ
            tvm.ir.assert_structural_equal(mine.with_attr("global_symbol", "f"), tvms.with_attr("global_symbol", "f"))
