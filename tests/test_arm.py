"""ARM: targets, templates, cross-compilation, and kernels run on the emulated board over RPC.

The fast tests need no board: the ARM templates' loop nests are compiled for this x86 host
(the target's TVM dict swapped for the host's) and checked against the numpy reference,
and cross-compiled libraries are checked to be AArch64 ELF files.

The ``board`` tests start emulated boards (scripts/arm_board.sh, qemu-aarch64) themselves:
a Cortex-A72 one reached directly and a Neoverse-N1 one registered at an RPC tracker. They
skip only when the board is not set up (``bash scripts/arm_board.sh setup``; .ci/run does it).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import convgen
from convgen import ConvSpec
from convgen.builder import compile_module, export_library
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.schedules import candidates, get_template
from convgen.timing import ALWAYS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD = os.path.join(REPO, "scripts", "arm_board.sh")
CROSS_CC = "aarch64-linux-gnu-gcc"
needs_cross = pytest.mark.skipif(shutil.which(CROSS_CC) is None,
                                 reason=f"{CROSS_CC} not installed (bash scripts/arm_board.sh setup)")

NEON = convgen.get_target("arm-neon")
DOTPROD = convgen.get_target("arm-dotprod")

# Small workloads (qemu runs them in well under a second): stride 2, asymmetric padding,
# groups, NHWC, depthwise, bias + ReLU, a flipped filter.
FLOAT_SPECS = [
    ConvSpec(in_channels=8, out_channels=16, height=10, width=12, kernel=3, padding=1),
    ConvSpec(in_channels=8, out_channels=8, height=9, width=9, kernel=3, stride=2, padding=(1, 0, 2, 1), bias=True, activation="relu"),
    ConvSpec(in_channels=8, out_channels=16, height=8, width=7, kernel=(3, 2), padding="same", groups=2, layout="NHWC"),
    ConvSpec(in_channels=16, out_channels=16, height=9, width=9, kernel=3, stride=2, padding=1, groups=16, bias=True),
    ConvSpec(in_channels=3, out_channels=8, height=11, width=11, kernel=5, stride=2, padding=2, flip=True, layout="NHWC"),
]
INT8_SPECS = [
    ConvSpec(in_channels=16, out_channels=16, height=8, width=8, kernel=3, padding=1, dtype="int8"),
    ConvSpec(in_channels=8, out_channels=8, height=9, width=9, kernel=3, stride=2, padding=(1, 0, 2, 1), dtype="int8", bias=True, activation="relu"),
    ConvSpec(in_channels=12, out_channels=8, height=7, width=6, kernel=1, layout="NHWC", dtype="int8", flip=True),
]


def _on_host(target):
    """``target`` compiled for this machine: the same template and knobs, x86 code."""
    return dataclasses.replace(target, tvm={"kind": "llvm"})


def _run_host(spec, target, template, config):
    """Compile for this host and check ``main`` (and ``main_prepacked`` with ``pack_weights``)."""
    import tvm

    executable, packed_shape = compile_module(spec, target, template, config, with_packed_shape=True)
    arrays = random_inputs(spec, 0)
    want = conv2d_reference(spec, *arrays)
    args = [tvm.runtime.tensor(a) for a in arrays]
    out = tvm.runtime.empty(spec.output_shape, spec.out_dtype, tvm.cpu())
    executable.mod["main"](*args, out)
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=tolerance(spec))
    if packed_shape:
        packed = tvm.runtime.empty(packed_shape, spec.dtype, tvm.cpu())
        executable.mod["pack_weights"](args[1], packed)
        out = tvm.runtime.empty(spec.output_shape, spec.out_dtype, tvm.cpu())
        executable.mod["main_prepacked"](args[0], packed, *args[2:], out)
        np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=tolerance(spec))
    return packed_shape


def _elf_machine(path):
    with open(path, "rb") as fh:
        head = fh.read(20)
    assert head[:4] == b"\x7fELF" and head[4] == 2, "not a 64-bit ELF file"
    return int.from_bytes(head[18:20], "little")  # e_machine


EM_AARCH64 = 183


# ---- targets and templates (fast) -----------------------------------------------------------
def test_arm_targets_describe_neon_and_dotprod():
    for t in (NEON, DOTPROD):
        assert t.family == "arm" and t.vector_lanes == 4 and t.registers == 32
        assert t.tvm["mtriple"] == "aarch64-linux-gnu" and "+neon" in t.tvm["mattr"]
        assert t.compiler["cross"] and t.compiler["cc"] == CROSS_CC and "apt-get install" in t.compiler["install_hint"]
        assert t.nominal_peak_gflops(1) > 0 and t.raw["qemu_cpu"] and t.rpc_key == t.name
    assert "+dotprod" in DOTPROD.tvm["mattr"] and "asimddp" in DOTPROD.cpu_flags and "int8" in DOTPROD.dtypes
    assert "+dotprod" not in NEON.tvm["mattr"] and NEON.dtypes == ("float32",)


@pytest.mark.parametrize("spec", FLOAT_SPECS + INT8_SPECS, ids=lambda s: s.describe())
def test_arm_template_spaces_and_defaults_are_legal(spec):
    for target in (NEON, DOTPROD):
        if spec.dtype not in target.dtypes:
            continue
        best = candidates(spec, target)[0]
        want = {"float32": "arm.depthwise" if spec.is_depthwise else "arm.spatial_pack", "int8": "arm.dotprod_int8"}
        if spec.dtype == "int8" or spec.out_per_group % 4 == 0:
            assert best.name == want[spec.dtype]
        space = best.space(spec, target)
        default = best.default(spec, target)
        assert default in space and len(space) > 1
        assert all(c in space for c in space.sample(random.Random(0), 5))


def test_spatial_pack_knobs_extend_x86_and_respect_registers():
    spec = ConvSpec(in_channels=64, out_channels=64, height=14, width=14, kernel=3, padding=1)
    tmpl = get_template("arm.spatial_pack")
    space = tmpl.space(spec, NEON)
    base = get_template("x86.direct").space(spec, NEON)
    assert set(base.names) < set(space.names) and {"unroll_kh", "unroll_ic"} <= set(space.names)
    default = tmpl.default(spec, NEON)
    # 2 vectors of output channels x 14 pixels: 28 accumulators + 2 weights + 1 input <= 32
    assert default["tile_oc"] == 8 and default["tile_ow"] * default["tile_oh"] == 14
    too_big = dict(default, tile_oc=16)
    assert "register" in space.why_illegal(too_big)
    assert "tile_ic <= 8" in space.why_illegal(dict(default, tile_ic=16, unroll_ic=True))
    i8 = get_template("arm.dotprod_int8")
    i8spec = dataclasses.replace(spec, dtype="int8")
    assert "accumulators" in i8.space(i8spec, DOTPROD).why_illegal(dict(i8.default(i8spec, DOTPROD), tile_ow=14))
    assert i8.supports(i8spec, NEON) and "dotprod" in i8.supports(i8spec, NEON)


@pytest.mark.parametrize("spec", FLOAT_SPECS, ids=lambda s: s.describe())
def test_arm_float_schedules_compiled_for_host_match_reference(spec):
    # The loop nest is ISA-neutral: compiled for x86 it proves the indexing and layouts.
    host = _on_host(NEON)
    tmpl = candidates(spec, NEON)[0]
    if tmpl.name == "cpu.generic":
        pytest.skip("no specialised ARM template serves this spec")
    space = tmpl.space(spec, NEON)
    for config in [tmpl.default(spec, NEON)] + space.sample(random.Random(spec.key), 3):
        _run_host(spec, host, tmpl, config)


@pytest.mark.parametrize("spec", INT8_SPECS, ids=lambda s: s.describe())
def test_arm_int8_schedule_without_sdot_on_host_matches_reference(spec):
    # The same loop nest and packed layouts with the 4x4 SDOT block left as scalar loops.
    from convgen.schedules.arm import DotprodInt8ARM

    tmpl = DotprodInt8ARM(sdot=False)
    space = tmpl.space(spec, DOTPROD)
    for config in [tmpl.default(spec, DOTPROD)] + space.sample(random.Random(spec.key), 3):
        assert _run_host(spec, _on_host(DOTPROD), tmpl, config), "the packed-weights entry point is missing"


def test_generated_code_uses_fmla_and_sdot():
    spec = FLOAT_SPECS[0]
    tmpl = candidates(spec, NEON)[0]
    asm = compile_module(spec, NEON, tmpl, tmpl.default(spec, NEON)).mod.inspect_source("asm")
    assert "fmla" in asm and "sdot" not in asm
    spec = INT8_SPECS[0]
    tmpl = candidates(spec, DOTPROD)[0]
    asm = compile_module(spec, DOTPROD, tmpl, tmpl.default(spec, DOTPROD)).mod.inspect_source("asm")
    assert "sdot" in asm


# ---- cross-compilation (fast) ---------------------------------------------------------------
@needs_cross
@pytest.mark.parametrize("target,spec", [(NEON, FLOAT_SPECS[0]), (DOTPROD, FLOAT_SPECS[2]), (DOTPROD, INT8_SPECS[0])],
                         ids=lambda x: getattr(x, "name", None) or x.describe())
def test_cross_compiled_library_is_aarch64_with_metadata(tmp_path, target, spec):
    path = str(tmp_path / "k.so")
    kernel = convgen.build(spec, target, builtin_records=False)
    kernel.export(path)
    assert _elf_machine(path) == EM_AARCH64
    k2 = convgen.load(path)  # metadata only: this machine cannot run it
    assert k2.spec == spec and k2.target.name == target.name and k2.template.startswith("arm.")
    with pytest.raises(convgen.KernelError, match="--rpc"):
        k2(*random_inputs(spec))


def test_missing_cross_toolchain_says_how_to_install(tmp_path, monkeypatch):
    spec = FLOAT_SPECS[0]
    tmpl = candidates(spec, NEON)[0]
    executable = compile_module(spec, NEON, tmpl, tmpl.default(spec, NEON))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd == CROSS_CC else real_which(cmd, *a, **k))
    with pytest.raises(convgen.TargetError, match="apt-get install gcc-aarch64-linux-gnu") as err:
        export_library(executable, NEON, str(tmp_path / "k.so"))
    assert CROSS_CC in str(err.value)


def test_cli_missing_cross_toolchain_is_one_line(tmp_path):
    # PATH with only this Python: no cross compiler to be found
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    r = subprocess.run([sys.executable, "-m", "convgen", "build", "--target", "arm-neon", "-c", "8", "-k", "8",
                        "--size", "8", "-o", str(tmp_path / "k.so")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert CROSS_CC in r.stderr and "apt-get install" in r.stderr


def test_explain_failure_names_sigill_and_the_target_isa():
    from convgen.remote import explain_failure

    msg = explain_failure(RuntimeError("RPCError: the board's session process was killed by SIGILL"), DOTPROD)
    assert "illegal instruction" in msg and "arm-dotprod" in msg and "+dotprod" in msg and "asimddp" in msg
    msg = explain_failure(RuntimeError("Socket closed"), NEON)
    assert "died" in msg and "arm-neon" in msg
    assert explain_failure(RuntimeError("shape mismatch")) == "the kernel failed on the device: shape mismatch"


def test_board_script_is_valid_bash():
    subprocess.run(["bash", "-n", BOARD], check=True)
    r = subprocess.run(["bash", BOARD, "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "setup" in r.stderr


# ---- the emulated board (board marker: .ci/run) -----------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _board(*args, check=True):
    return subprocess.run(["bash", BOARD, *args], capture_output=True, text=True, timeout=300, check=check)


def _wait_registered(port, key, timeout=60):
    """Wait until the board behind the tracker has registered (it retries every 5 s while
    the tracker starts); a request racing its first registration was seen to stall once."""
    from tvm import rpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if key in rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"]:
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the board did not register at the tracker as {key} within {timeout} s")


@pytest.fixture(scope="session")
def boards():
    """Two boards: a Cortex-A72 one at ``rpc`` and a Neoverse-N1 one behind ``tracker``."""
    if _board("status", check=False).returncode != 0:
        pytest.skip("the emulated ARM board is not set up: run 'bash scripts/arm_board.sh setup'")
    a72, n1, tport = _free_port(), _free_port(), _free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tport),
                                "--port-end", str(tport + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        with ThreadPoolExecutor(2) as pool:  # qemu imports TVM in ~10 s: start both at once
            started = list(pool.map(lambda a: _board("start", *a, check=False), [
                ("--port", str(a72), "--cpu", "cortex-a72"),
                ("--port", str(n1), "--cpu", "neoverse-n1", "--tracker", f"127.0.0.1:{tport}", "--key", "arm-dotprod"),
            ]))
        for r in started:
            assert r.returncode == 0, r.stdout + r.stderr
        _wait_registered(tport, "arm-dotprod")
        yield {"rpc": f"127.0.0.1:{a72}", "tracker": f"127.0.0.1:{tport}", "key": "arm-dotprod", "a72_port": a72}
    finally:
        for port in (a72, n1):
            _board("stop", "--port", str(port), check=False)
        os.killpg(tracker.pid, signal.SIGTERM)
        tracker.wait(timeout=30)


@pytest.fixture
def board(boards):
    """The boards, for one test; its RPC sessions are closed when it ends.

    A session closes when its last reference goes. A test's frame can outlive the test in
    a reference cycle (a caught exception's traceback), keeping the session open on the
    board, where it blocks the tracker's next request until it times out: collect now.
    """
    yield boards
    gc.collect()


def _connect(**address):
    from convgen import remote

    # a leaked session then blocks the board for 2 minutes at most, not 10
    return remote.connect(**address, timeout=120)


def _export(tmp_path, spec, target, name):
    path = str(tmp_path / f"{name}.so")
    convgen.build(spec, target, builtin_records=False).export(path)
    return path


def _check_on_board(session, path, spec):
    from convgen import remote
    from convgen.runtime import read_metadata

    meta = read_metadata(path)
    module = remote.upload(session, path)
    # main, and main_prepacked on weights packed on the board, where the kernel has them
    err, tol = remote.remote_check(module, spec, remote.device_of(session, meta), target=convgen.get_target(meta["target"]),
                                   packed_shape=meta.get("packed_weight_shape"))
    assert err <= tol, f"{spec.describe()}: max |error| {err} > {tol}"


@pytest.mark.board
def test_neon_kernels_match_reference_on_a72_board(board, tmp_path):
    session = _connect(rpc=board["rpc"])
    for i, spec in enumerate(FLOAT_SPECS):
        _check_on_board(session, _export(tmp_path, spec, NEON, f"neon{i}"), spec)


@pytest.mark.board
def test_dotprod_kernels_match_reference_on_n1_board_via_tracker(board, tmp_path):
    session = _connect(tracker=board["tracker"], key=board["key"])
    for i, spec in enumerate(INT8_SPECS + FLOAT_SPECS[1:3]):
        _check_on_board(session, _export(tmp_path, spec, DOTPROD, f"dot{i}"), spec)


@pytest.mark.board
def test_dotprod_kernel_on_a72_board_is_a_clear_error_and_board_keeps_serving(board, tmp_path):
    from convgen import remote
    from convgen.runtime import read_metadata

    path = _export(tmp_path, INT8_SPECS[0], DOTPROD, "sdot")
    with pytest.raises(remote.RemoteError, match="SIGILL") as err:
        remote.run_remote(_connect(rpc=board["rpc"]), path, read_metadata(path), repeat=1)
    assert "arm-dotprod" in str(err.value) and "+dotprod" in str(err.value) and "cortex-a72" in str(err.value)
    # the same board serves the next session
    spec = FLOAT_SPECS[0]
    _check_on_board(_connect(rpc=board["rpc"]), _export(tmp_path, spec, NEON, "after"), spec)


@pytest.mark.board
def test_cli_build_and_run_over_rpc_and_tracker(board, tmp_path, capsys):
    from convgen.cli import main

    so = str(tmp_path / "arm.so")
    assert main(["build", "--target", "arm-neon", "-c", "8", "-k", "8", "--size", "8", "--kernel", "3",
                 "--padding", "1", "-o", so]) == 0
    assert main(["run", so, "--rpc", board["rpc"], "--repeat", "1", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    # --threads reaches the board's CPU thread pool (a remote CPU is no local kDLCPU device)
    assert "OK" in out and board["rpc"] in out and "ms" in out and "2 threads" in out
    so8 = str(tmp_path / "i8.so")
    assert main(["build", "--target", "arm-dotprod", "-c", "8", "-k", "8", "--size", "8", "--dtype", "int8",
                 "-o", so8]) == 0
    assert main(["run", so8, "--tracker", board["tracker"], "--repeat", "1"]) == 0  # key: the target's rpc_key
    assert "OK" in capsys.readouterr().out


@pytest.mark.board
def test_tuner_rpc_runner_measures_on_the_board(board, tmp_path):
    measure = pytest.importorskip("convgen.tuner.measure")
    spec = FLOAT_SPECS[0]
    tmpl = candidates(spec, NEON)[0]
    configs = [tmpl.default(spec, NEON)] + tmpl.space(spec, NEON).sample(random.Random(1), 1)
    cands = []
    for i, config in enumerate(configs):
        executable, packed_shape = compile_module(spec, NEON, tmpl, config, with_packed_shape=True)
        path = str(tmp_path / f"t{i}.so")
        export_library(executable, NEON, path)
        cands.append(measure.Candidate(spec=spec.to_dict(), target=NEON.to_dict(), template=tmpl.name,
                                       config=config, path=path, packed_shape=packed_shape))
    # timed as deployed (weights packed once on the board, main_prepacked), both entries checked
    assert any(c.packed_shape for c in cands), "arm.spatial_pack keeps its own weight layout"
    opts = measure.MeasureOptions(number=1, repeat=1, min_repeat_ms=0, run_timeout=120, num_threads=2)
    runner = measure.RPCRunner(rpc=board["rpc"], options=opts)
    try:
        runner.run_batch(cands, check=ALWAYS)
    finally:
        runner.close()
    for c in cands:
        assert c.ok and c.verified, (c.error, c.message)


def _board_python(tmp_path, cpu, code):
    """Run ``code`` in the board's aarch64 Python under qemu-user, with convgen installed as
    a device would have it: the package and its targets, the TVM runtime only."""
    cache = os.path.join(REPO, ".cache", "arm-board")
    site = tmp_path / "site"
    if not site.exists():  # one install serves every run of the test
        shutil.copytree(os.path.join(REPO, "convgen"), site / "convgen",
                        ignore=shutil.ignore_patterns("__pycache__", "tuned", "torch"))
        shutil.copytree(os.path.join(REPO, "targets"), site / "convgen" / "targets")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "TVM_USE_RUNTIME_LIB": "1",
           "QEMU_LD_PREFIX": os.path.join(cache, "sysroot"),
           "PYTHONPATH": f"{site}:{os.path.join(cache, 'site-packages')}"}
    return subprocess.run(["qemu-aarch64", "-cpu", cpu, os.path.join(cache, "sysroot", "usr", "bin", "python3.11"),
                           "-c", code], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.board
def test_convgen_load_runs_a_neon_kernel_on_the_board_with_the_runtime_only(tmp_path):
    # under qemu-user /proc/cpuinfo describes the x86 host: the CPU features must come from
    # the auxiliary vector (what the kernel tells the process), or load would refuse to run
    if _board("status", check=False).returncode != 0:
        pytest.skip("the emulated ARM board is not set up: run 'bash scripts/arm_board.sh setup'")
    spec = FLOAT_SPECS[0]
    path = _export(tmp_path, spec, NEON, "neon")
    x, w = random_inputs(spec, seed=3)[:2]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    code = f"""
import json, sys, numpy as np, convgen
from convgen.cpufeatures import auxv_flags, cpuinfo_flags
k = convgen.load({path!r})
y = k(np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'w.npy')!r}))
np.save({str(tmp_path / 'y.npy')!r}, y)
compiler = ("tvm.s_tir", "tvm.topi", "tvm.relax", "convgen.builder", "convgen.compute", "convgen.schedules",
            "convgen.tuner", "convgen.cuda.compile", "convgen.cuda.toolchain", "convgen.cuda.verify", "convgen.records")
print(json.dumps({{"bad": [m for m in sys.modules if m.startswith(compiler)], "auxv": sorted(auxv_flags() or []),
                   "cpuinfo_has_asimd": "asimd" in (cpuinfo_flags() or ())}}))
"""
    out = _board_python(tmp_path, "cortex-a72", code)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bad"] == []
    assert "asimd" in result["auxv"] and not result["cpuinfo_has_asimd"]  # cpuinfo is the x86 host's
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), conv2d_reference(spec, x, w), atol=tolerance(spec))
    # a dotprod kernel on the A72 (no dotprod in its auxiliary vector) is refused, clearly
    dot = _export(tmp_path, FLOAT_SPECS[0], DOTPROD, "dot")
    out = _board_python(tmp_path, "cortex-a72", f"import convgen\ntry:\n    convgen.load({dot!r})(None, None)\n"
                                                f"except convgen.KernelError as e:\n    print('refused:', e)\n")
    assert "refused:" in out.stdout and "asimddp" in out.stdout, out.stderr[-2000:]
