"""What a kernel loader, a tuning fleet and a records file must survive (each item is a
probe that broke convgen before it was fixed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import convgen
from convgen import ConvSpec, KernelError
from convgen import records as rec
from convgen.errors import DeviceDown, KernelNotFoundError, NotAKernelError
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.runtime import _MAGIC, file_sha256, read_metadata, write_metadata

SPEC = ConvSpec(in_channels=8, out_channels=8, height=8, width=8, kernel=3, padding=1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def kernel_file(tmp_path_factory, host):
    path = str(tmp_path_factory.mktemp("k") / "conv.so")
    convgen.build(SPEC, host, builtin_records=False).export(path)
    return path


def _split(path):
    """(library bytes, metadata) of a kernel file, unchecked."""
    data = open(path, "rb").read()
    n = int.from_bytes(data[-len(_MAGIC) - 8:-len(_MAGIC)], "little")
    return data[: len(data) - len(_MAGIC) - 8 - n], json.loads(data[len(data) - len(_MAGIC) - 8 - n: -len(_MAGIC) - 8])


def _with_trailer(path, library, meta):
    """A file of ``library`` bytes followed by ``meta`` as a trailer, as is (no new hash)."""
    blob = json.dumps(meta).encode()
    with open(path, "wb") as fh:
        fh.write(library + blob + len(blob).to_bytes(8, "little") + _MAGIC)
    return path


# ---- loading kernels ---------------------------------------------------------------------------
def test_a_truncated_or_corrupted_library_is_refused_before_it_is_loaded(kernel_file, tmp_path):
    library, meta = _split(kernel_file)
    truncated = _with_trailer(str(tmp_path / "cut.so"), library[:4096], meta)
    flipped = bytearray(library)
    for i in range(len(library) // 3, len(library) // 3 + 200):
        flipped[i] ^= 0xFF
    corrupted = _with_trailer(str(tmp_path / "flip.so"), bytes(flipped), meta)
    for path in (truncated, corrupted):
        with pytest.raises(NotAKernelError, match="SHA-256"):
            convgen.load(path)
        with pytest.raises(ValueError):  # a file that is not an intact kernel is a ValueError
            read_metadata(path)


def test_a_library_with_a_stolen_trailer_never_runs_its_code(kernel_file, tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    marker = tmp_path / "ran"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    evil = tmp_path / "evil.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(evil), str(src)], check=True)
    _, meta = _split(kernel_file)  # a real kernel's metadata, hash included
    path = _with_trailer(str(tmp_path / "trojan.so"), evil.read_bytes(), meta)
    with pytest.raises(NotAKernelError, match="SHA-256"):
        convgen.load(path)
    assert not marker.exists()


def test_a_pinned_hash_is_checked_and_printed(kernel_file, tmp_path):
    digest = file_sha256(kernel_file)
    x, w = random_inputs(SPEC)
    k = convgen.load(kernel_file, sha256=digest)
    np.testing.assert_allclose(k(x, w), conv2d_reference(SPEC, x, w), atol=tolerance(SPEC))
    with pytest.raises(KernelError, match="not the pinned"):
        convgen.load(kernel_file, sha256="0" * 64).module
    info = subprocess.run([sys.executable, "-m", "convgen", "info", kernel_file], capture_output=True, text=True)
    assert digest in info.stdout
    bad = subprocess.run([sys.executable, "-m", "convgen", "run", kernel_file, "--sha256", "1" * 64],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "pinned" in bad.stderr and "Traceback" not in bad.stderr
    # a kernel for another machine is checked against its pin as well, though it never loads here
    foreign = _retrailer(kernel_file, tmp_path, "foreign.so", lambda m: dict(m, target="arm-neon", target_desc=convgen.get_target("arm-neon").to_dict()))
    assert not convgen.load(foreign, sha256=file_sha256(foreign)).runs_here
    with pytest.raises(KernelError, match="not the pinned"):
        convgen.load(foreign, sha256="0" * 64)


def _retrailer(kernel_file, tmp_path, name, change):
    """The kernel's library with metadata ``change(meta)`` (bytes: written as they are); the
    library is unchanged, so its hash still matches: only the metadata is wrong."""
    library, meta = _split(kernel_file)
    path = tmp_path / name
    path.write_bytes(library)
    meta = change(dict(meta))
    blob = json.dumps(meta).encode() if not isinstance(meta, bytes) else meta
    with open(path, "ab") as fh:
        fh.write(blob + len(blob).to_bytes(8, "little") + _MAGIC)
    return str(path)


@pytest.mark.parametrize("case,change,match", [
    ("not an object", lambda m: [1, 2, 3], "not a JSON object"),
    ("string target_desc", lambda m: dict(m, target_desc="x86-avx2"), "target_desc"),
    ("no spec", lambda m: {k: v for k, v in m.items() if k != "spec"}, "'spec'"),
    ("bad spec", lambda m: dict(m, spec=dict(m["spec"], in_channels=-3)), "spec"),
    ("nested", lambda m: ("[" * 100000 + "]" * 100000).encode(), "nested"),
    ("bad packed shape", lambda m: dict(m, packed_weight_shape="64"), "packed_weight_shape"),
    ("format 1", lambda m: dict(m, format=1), "older convgen"),
])
def test_malformed_metadata_is_a_kernel_error(kernel_file, tmp_path, case, change, match):
    path = _retrailer(kernel_file, tmp_path, "m.so", change)
    with pytest.raises(NotAKernelError, match=match):
        convgen.load(path)
    with pytest.raises(NotAKernelError):
        read_metadata(path)
    out = subprocess.run([sys.executable, "-m", "convgen", "info", path], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_a_library_without_main_and_one_from_another_tvm_are_refused(kernel_file, tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "empty.c"
    src.write_text("int convgen_nothing(void) { return 0; }\n")
    lib = tmp_path / "empty.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    _, meta = _split(kernel_file)
    meta.pop("sha256")
    path = str(tmp_path / "nomain.so")
    shutil.copy(lib, path)
    write_metadata(path, meta)  # hashed properly: only the missing entry point is wrong
    with pytest.raises(KernelError, match="main"):
        convgen.load(path)
    old = _retrailer(kernel_file, tmp_path, "old.so", lambda m: dict(m, tvm="0.19.0"))
    with pytest.raises(KernelError, match=r"TVM 0\.19\.0.*rebuild"):
        convgen.load(old)


def test_missing_files_and_non_kernels_follow_python_conventions(tmp_path):
    with pytest.raises(FileNotFoundError):
        convgen.load(str(tmp_path / "missing.so"))
    with pytest.raises(KernelNotFoundError):
        read_metadata(str(tmp_path / "missing.so"))
    junk = tmp_path / "junk.so"
    junk.write_bytes(os.urandom(5000))
    with pytest.raises(ValueError, match="not a convgen kernel"):
        convgen.load(str(junk))
    assert issubclass(NotAKernelError, KernelError) and issubclass(KernelNotFoundError, KernelError)


def test_an_output_aliasing_an_input_is_refused(host):
    spec = ConvSpec(in_channels=8, out_channels=8, height=6, width=6, kernel=3, padding=1)
    x, w = random_inputs(spec)
    try:
        import torch
    except ImportError:  # the numpy half still runs
        torch = None
    for template in ("cpu.generic", None):
        k = convgen.build(spec, host, template=template, builtin_records=False)
        xa = convgen.aligned_empty(x.shape, x.dtype)
        xa[...] = x
        with pytest.raises(ValueError, match="overlaps the data"):
            k(xa, w, out=xa)
        np.testing.assert_array_equal(xa, x)  # nothing ran
        if torch is None:
            continue
        t = torch.from_numpy(xa)
        with pytest.raises(ValueError, match="overlaps"):
            k(t, torch.from_numpy(w), out=t)


def test_cuda_runtime_is_only_looked_for_at_absolute_paths(tmp_path, monkeypatch):
    from convgen.cuda import device

    planted = tmp_path / "nvidia" / "cuda_runtime" / "lib"
    planted.mkdir(parents=True)
    (planted / "libcudart.so.13").write_bytes(b"not a library")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", "."] + sys.path)
    monkeypatch.setenv("CUDA_HOME", "nvidia")  # a relative toolkit root, too
    found = device._cudart_candidates()
    assert all(os.path.isabs(p) for p in found)
    assert not any(os.path.samefile(p, planted / "libcudart.so.13") for p in found)


def test_cpu_features_come_from_cpuid_where_cpuinfo_is_unreadable(monkeypatch):
    import platform

    from convgen import cpufeatures

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 only (aarch64 is tested on the emulated board)")
    from_cpuinfo = cpufeatures.cpuinfo_flags()
    from_cpuid = cpufeatures.cpuid_flags()
    assert from_cpuid is not None and "sse2" in from_cpuid
    names = {f for t in convgen.all_targets().values() if t.family == "x86" for f in t.cpu_flags}
    assert {f for f in names if f in from_cpuinfo} == {f for f in names if f in from_cpuid}
    monkeypatch.setattr(cpufeatures, "cpuinfo_flags", lambda path="/proc/cpuinfo": None)
    cpufeatures.host_cpu_flags.cache_clear()
    try:
        assert {f for f in names if f in cpufeatures.host_cpu_flags()} == {f for f in names if f in from_cpuinfo}
    finally:
        cpufeatures.host_cpu_flags.cache_clear()


# ---- tuning under faults -------------------------------------------------------------------------
@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_a_worker_that_hangs_holding_the_gil_is_killed_by_the_parent():
    from tvm.support.popen_pool import PopenWorker

    from convgen.tuner import measure

    from . import fault_workers

    worker = PopenWorker()
    with pytest.raises(TimeoutError):  # back at all: the spin runs for hours unless killed
        measure.call_with_deadline(worker, fault_workers.spin_holding_the_gil, (), 1.0)
    assert not worker.is_alive()
    assert measure.call_with_deadline(worker, fault_workers.answer, (), 30) == 42  # a fresh worker


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_the_local_runner_records_a_gil_hang_as_a_timeout(monkeypatch):
    from convgen.tuner import measure

    from . import fault_workers

    monkeypatch.setattr(measure, "run_worker", fault_workers.spin_holding_the_gil)
    runner = measure.LocalRunner(measure.MeasureOptions(run_timeout=1.0))
    try:
        c = measure.Candidate(SPEC.to_dict(), {}, "x86.direct", {}, path="unused.so")
        runner.run(c)
        assert c.error == "timeout"
    finally:
        runner.close()


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_killing_the_tuner_kills_its_workers_and_its_build_folder_is_cleaned_later(tmp_path):
    psutil = pytest.importorskip("psutil")
    from convgen.tuner.measure import Builder, stale_build_folders

    records = str(tmp_path / "r.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "convgen", "tune", "-c", "16", "-k", "16", "--size", "12",
                             "--kernel", "3", "--padding", "1", "--trials", "200", "--records", records,
                             "--target", "x86-avx2", "-q", "--repeat", "2", "--min-repeat-ms", "5"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (os.path.exists(records) and open(records).read().count("\n") >= 2):
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the tuner has worker processes"
        mine = [p for p in stale_build_folders() if f"-{proc.pid}-" in p]
        assert not mine  # its folder is not stale while it lives
        proc.send_signal(signal.SIGKILL)  # the tuner alone, not its process group
        proc.wait()
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"workers outlived the tuner: {alive}"
        stale = [p for p in stale_build_folders() if f"-{proc.pid}-" in p]
        assert stale  # left behind ...
        Builder(1, 10).close()
        assert not any(os.path.exists(p) for p in stale)  # ... and removed by the next run
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_tuning_dependencies_are_said_before_the_first_trial(tmp_path, monkeypatch, host):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psutil" else real(name, *a))
    records = str(tmp_path / "r.jsonl")
    with pytest.raises(RuntimeError, match="psutil.*pip install"):
        convgen.tune(SPEC, host, trials=4, records=records, progress=False)
    assert not os.path.exists(records)


def test_a_run_timeout_under_a_second_is_still_a_timeout():
    from convgen.remote import session_seconds

    assert session_seconds(0.3) == 1 and session_seconds(2.1) == 3 and session_seconds(60) == 60


def _campaign(tmp_path, measure, device_wait, host):
    from convgen.tuner import make_tasks
    from convgen.tuner.campaign import Campaign

    tasks = make_tasks({"a": SPEC}, host, template="cpu.generic")
    slept = []
    c = Campaign(tasks, host, measure=measure, records=str(tmp_path / "r.jsonl"), strategy="random",
                 batch_size=2, device_wait=device_wait, sleep=slept.append)
    return c, slept


def _fake_measure(down_calls):
    """A measurer whose device is unreachable for the first ``down_calls`` calls."""
    from convgen.tuner.measure import Candidate

    calls = []

    def measure(task, configs, best):
        calls.append(len(configs))
        out = []
        for cfg in configs:
            c = Candidate(task.spec.to_dict(), {}, task.template.name, cfg)
            if len(calls) <= down_calls:
                c.error, c.message = "device", "connection refused"
            else:
                c.times = [1e-3]
            out.append(c)
        return out

    return measure, calls


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_an_unreachable_device_burns_no_trials_and_is_retried_with_backoff(tmp_path, host):
    measure, calls = _fake_measure(down_calls=3)
    c, slept = _campaign(tmp_path, measure, device_wait=300, host=host)
    c.run(2)
    assert c.total_trials() == 2 and len(calls) == 4  # three refusals, then the two trials
    assert slept == [5.0, 10.0, 20.0]
    assert all(r.error is None for r in rec.read(str(tmp_path / "r.jsonl")))  # no device records


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_a_device_that_stays_down_stops_the_campaign_clearly(tmp_path, host):
    measure, calls = _fake_measure(down_calls=10**6)
    c, slept = _campaign(tmp_path, measure, device_wait=60, host=host)
    with pytest.raises(DeviceDown, match="has not run a kernel for 7[05] s.*0 trials measured.*resume"):
        c.run(10)
    assert c.total_trials() == 0 and sum(slept) >= 60 and not os.path.exists(str(tmp_path / "r.jsonl"))


# ---- records -----------------------------------------------------------------------------------
def _record_lines(host):
    tmpl = convgen.schedules.get_template("cpu.generic")
    good = rec.make_record(SPEC, host, tmpl, tmpl.default(SPEC, host), times=[1e-3])
    return good, json.dumps(good, sort_keys=True)


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_malformed_lines_are_skipped_with_their_line_numbers(tmp_path, host):
    good, line = _record_lines(host)
    nested = "[" * 100000 + "]" * 100000
    bad_spec = json.dumps(dict(good, spec=dict(good["spec"], in_channels="many")))
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([line, nested, bad_spec, line]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(rec.read(str(path)))
    assert len(got) == 2
    said = " ".join(str(w.message) for w in caught)
    assert ":2:" in said and "nested too deeply" in said and ":3:" in said
    for args in (["records", "show", str(path)], ["records", "prune", str(path), "-o", str(tmp_path / "p.jsonl")],
                 ["records", "merge", str(tmp_path / "m.jsonl"), str(path)]):
        out = subprocess.run([sys.executable, "-m", "convgen", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert rec.best_config(SPEC, host, str(path)) is not None


def test_records_of_another_tvm_version_are_ignored_once_said(tmp_path, host):
    good, _ = _record_lines(host)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(dict(good, tvm="0.19.0")) + "\n")
    with pytest.warns(rec.RecordWarning, match="TVM 0.19"):
        assert rec.best_config(SPEC, host, str(path)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: not again
        assert rec.best_config(SPEC, host, str(path)) is None


def test_rewrites_never_follow_a_planted_file_and_survive_short_writes(tmp_path, monkeypatch, host):
    good, line = _record_lines(host)
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old name: path.tmpPID
        os.symlink(victim, f"{path}.tmp{pid}")
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))  # every write short
    n = rec.rewrite(str(path), lambda: [good, good])
    monkeypatch.undo()
    assert n == 2 and victim.read_text() == "precious"
    assert [r.data for r in rec.read(str(path))] == [good, good]
    rec.append(str(path), [good])
    assert len(list(rec.read(str(path)))) == 3


# ---- specs and servers ---------------------------------------------------------------------------
def test_sizes_past_int32_indexing_are_refused_at_construction():
    for fields in (dict(in_channels=10**9, out_channels=8, height=64, width=64),
                   dict(in_channels=8, out_channels=8, height=2**31, width=1, kernel=1),
                   dict(in_channels=1, out_channels=1, height=1, width=1, kernel=10**6, padding=10**6)):
        with pytest.raises(convgen.SpecError, match=r"2\*\*31"):
            ConvSpec(**fields)


def test_divisors_are_found_without_walking_to_n():
    from convgen.knobs import divisors

    n = 10**12 + 39  # a prime: walking every integer to n would never finish
    assert divisors(n) == [1, n] and divisors(2**40)[-3:] == [2**38, 2**39, 2**40]


def test_servers_convgen_starts_listen_on_loopback_only():
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import arm_rpc_server
    finally:
        sys.path.pop(0)
    assert arm_rpc_server.make_parser().parse_args([]).host == "127.0.0.1"
    script = open(os.path.join(REPO, "scripts", "arm_board.sh")).read()
    assert re.search(r"--host 127\.0\.0\.1", script) and "0.0.0.0" not in script


def test_the_peak_microbenchmark_has_timeouts(tmp_path, monkeypatch):
    from convgen import peak

    fake_cc = tmp_path / "cc"
    pids = tmp_path / "pids"
    fake_cc.write_text('#!/bin/sh\nout=""\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done\n'
                       f'printf "#!/bin/sh\\necho \\$\\$ >> {pids}\\nexec sleep 600\\n" > "$out"; chmod +x "$out"\n')
    fake_cc.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake_cc) if name in ("cc", "gcc") else None)
    monkeypatch.setattr(peak, "RUN_TIMEOUT", 1.0)
    avx2 = convgen.get_target("x86-avx2")
    with pytest.raises(subprocess.TimeoutExpired) as info:  # back at all: the copies sleep 600 s
        peak._measure(avx2, 2)
    assert info.value.timeout == peak.RUN_TIMEOUT
    started = [int(p) for p in pids.read_text().split()]
    assert started  # the copies ran, and none outlives the measurement
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
