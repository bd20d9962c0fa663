"""The tuner for real: builds and runs, faults, resume after SIGKILL, campaigns, RPC fleets."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import convgen
from convgen import ConvSpec
from convgen import records as rec
from convgen.reference import conv2d_reference, random_inputs, tolerance
from convgen.tuner import MeasureOptions, RPCRunner, tune
from convgen.timing import ALWAYS
from convgen.tuner.measure import Builder, Candidate, run_worker

from .conftest import check_kernel
from .faulty_template import FAULTY_SPEC

FAST = MeasureOptions(number=1, repeat=3, min_repeat_ms=5, run_timeout=20)
SMALL = ConvSpec(in_channels=16, out_channels=16, height=8, width=8, kernel=3, padding=1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(path):
    return [json.loads(x) for x in open(path).read().splitlines() if x.strip()]


def test_tune_a_layer_and_build_from_its_records(tmp_path):
    path = str(tmp_path / "t.jsonl")
    res = tune(SMALL, "host", trials=12, records=path, options=FAST, progress=False, seed=1)
    (r,) = res.values()
    got = lines(path)
    refined = [x for x in got if x.get("refine")]
    got = [x for x in got if not x.get("refine")]
    assert len(got) == 12 and r.trials == 12 and r.config is not None
    # the 3 leaders were timed twice more, and checked against the reference again (more
    # when the re-timings move another config into the lead: how often depends on the noise)
    assert len(refined) >= 6 and all(x["verified"] for x in refined[:3])
    timings = sum(1 for x in got + refined if x["config"] == r.config)
    assert timings >= 3  # the winner stands on 1 + 2 timings
    # the default config (of the first task's template, not necessarily the winner's) is
    # measured first, and the first best is checked vs the reference
    assert got[0]["config"] == convgen.schedules.get_template(got[0]["template"]).default(SMALL, convgen.get_target("host"))
    assert got[0]["verified"] is True
    assert r.config in [x["config"] for x in refined]
    k = convgen.build(SMALL, "host", records=path)
    assert k.config == r.config and k.meta["config_source"] == "records"
    check_kernel(k, SMALL)


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_faulty_candidates_are_recorded_and_the_campaign_finishes(tmp_path):
    path = str(tmp_path / "f.jsonl")
    opts = MeasureOptions(number=1, repeat=2, min_repeat_ms=1, run_timeout=4)
    res = tune(FAULTY_SPEC, "host", trials=40, records=path, strategy="grid", template="test.faulty",
               options=opts, progress=False, batch_size=4, refine=0)
    got = lines(path)
    errors = {}
    for x in got:
        errors.setdefault(x["config"]["mode"], set()).add(x["result"]["error"])
    assert errors["ok"] == {None}
    assert errors["crash"] == {"crash"}
    assert errors["hang"] == {"timeout"}
    assert errors["fail_build"] == {"config"}
    assert errors["wrong"] == {"wrong_result"}  # the fast wrong kernel beat the best and failed its check
    (r,) = res.values()
    assert r.config["mode"] == "ok" and len(got) == 7  # the whole space, then the campaign stops
    check_kernel(convgen.build(FAULTY_SPEC, "host", records=path), FAULTY_SPEC)


def _tune_cmd(records, trials, *extra, target="x86-avx2"):
    # 16 channels, pinned to x86-avx2 (also on AVX-512 hosts): a space of hundreds of configs
    # on either, so a 20-trial campaign never runs out of it
    return [sys.executable, "-m", "convgen", "tune", "-c", "16", "-k", "16", "--size", "10", "--kernel", "3",
            "--target", target,
            "--padding", "1", "--trials", str(trials), "--records", records, "--strategy", "random",
            "--batch-size", "2", "--repeat", "2", "--number", "1", "--min-repeat-ms", "5", "-q", "--refine", "0", *extra]


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_resume_after_sigkill_loses_no_finished_trial(tmp_path):
    path = str(tmp_path / "k.jsonl")
    proc = subprocess.Popen(_tune_cmd(path, 20), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not os.path.exists(path) or len(open(path).read().splitlines()) < 6):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the tuner, its build and run workers: all at once
    proc.wait()
    before = list(rec.read(path, warn=False))
    assert len(before) >= 6  # killed mid-campaign (or, on a very fast machine, just after it)
    done = subprocess.run(_tune_cmd(path, 20), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = list(rec.read(path, warn=False))
    keys = [r.trial_key() for r in after]
    assert len(after) == 20 and len(set(keys)) == 20  # nothing measured twice
    assert [r.trial_key() for r in after[: len(before)]] == [r.trial_key() for r in before]


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_campaign_over_a_workload_file_with_summary_plot_and_resume(tmp_path, host):
    wl = tmp_path / "layers.toml"
    wl.write_text('[[layer]]\nname = "a"\nin_channels = 8\nout_channels = 16\nheight = 8\nwidth = 8\nkernel = 3\npadding = 1\n\n'
                  '[[layer]]\nname = "b"\nin_channels = 16\nout_channels = 8\nheight = 6\nwidth = 6\nkernel = 1\n')
    path = str(tmp_path / "c.jsonl")
    cmd = [sys.executable, "-m", "convgen", "tune", "--workload", str(wl), "--trials", "12", "--records", path,
           "--repeat", "2", "--number", "1", "--min-repeat-ms", "5", "--batch-size", "4", "-o", str(tmp_path / "out"),
           "--refine", "0", "--target", host.name]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "whole network" in first.stdout and "vs default" in first.stdout
    assert "trials" in first.stderr  # the progress line
    png = tmp_path / "c.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path / "out")) == ["a.so", "b.so"]
    n = len(lines(path))
    assert n == 12
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resumed 12 trials" in again.stderr
    assert len(lines(path)) == n


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_fleet():
    """A TVM RPC tracker and two servers registered under one key, all on loopback."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                               "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    time.sleep(3)
    for _ in range(2):
        server_port = _free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                       "--port", str(server_port), "--port-end", str(server_port + 1),
                                       "--tracker", f"127.0.0.1:{port}", "--key", "cg-test"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    from tvm import rpc

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            if len(summary.get("server_info", [])) >= 2:
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    else:
        pytest.fail("the RPC fleet did not come up")
    yield f"127.0.0.1:{port}"
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_tune_through_an_rpc_tracker_with_two_servers(rpc_fleet, tmp_path):
    path = str(tmp_path / "rpc.jsonl")
    runner = RPCRunner(tracker=rpc_fleet, key="cg-test", n_parallel=2, options=FAST)
    res = tune(SMALL, "host", trials=8, records=path, runner=runner, options=FAST, progress=False, batch_size=4, refine=0)
    runner.close()
    (r,) = res.values()
    got = lines(path)
    assert len(got) == 8 and all(x["result"]["error"] is None for x in got)
    assert r.config is not None and got[0]["verified"] is True
    so = str(tmp_path / "k.so")
    r.build().export(so)
    out = subprocess.run([sys.executable, "-m", "convgen", "run", so, "--tracker", rpc_fleet, "--key", "cg-test",
                          "--repeat", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "key cg-test" in out.stdout


def test_tune_api_errors():
    with pytest.raises(ValueError, match="runner must be"):
        tune(SMALL, "host", trials=1, runner="ftp://x", progress=False)
    t = convgen.get_target("x86-avx512")
    if not t.runs_here():
        with pytest.raises(ValueError, match="cannot run on this machine"):
            tune(SMALL, t, trials=1, progress=False)


# ---- measuring as deployed, checking every entry point, over RPC too --------------------------
def _library(tmp_path, spec, lazy):
    """A library with ``pack_weights`` (a copy), ``main_prepacked`` and ``main``, both entry
    points right except ``lazy``, which writes nothing to its output."""
    import tvm
    from tvm import te

    from convgen.compute import conv2d_primfunc

    def nothing():
        data = te.placeholder(spec.input_shape, spec.dtype, name="data")
        weight = te.placeholder(spec.weight_shape, spec.dtype, name="weight")
        out = te.extern(spec.output_shape, [data, weight], lambda ins, outs: tvm.tirx.const(0, "int32"),
                        name="out", dtype=spec.out_dtype)
        return te.create_prim_func([data, weight, out])

    weight = te.placeholder(spec.weight_shape, spec.dtype, name="weight")
    pack = te.create_prim_func([weight, te.compute(spec.weight_shape, lambda *i: weight(*i), name="packed")])
    funcs = {"pack_weights": pack, "main": conv2d_primfunc(spec), "main_prepacked": conv2d_primfunc(spec)}
    if lazy:
        funcs[lazy] = nothing()
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    path = str(tmp_path / f"lazy_{lazy or 'none'}.so")
    tvm.compile(mod, target="llvm").export_library(path)
    return path


class _Spy:
    """A loaded module that notes which entry points are called and timed."""

    def __init__(self, module):
        self.module, self.calls, self.timed = module, [], []

    def __getitem__(self, name):
        f = self.module[name]

        def call(*args):
            self.calls.append(name)
            return f(*args)

        return call

    def time_evaluator(self, name, *args, **kwargs):
        self.timed.append(name)
        return self.module.time_evaluator(name, *args, **kwargs)


def test_measure_times_prepacked_and_a_check_catches_a_skipped_output(tmp_path):
    import tvm

    from convgen.timing import measure_kernel

    spec = SMALL
    path = _library(tmp_path, spec, lazy="main")
    module = tvm.runtime.load_module(path)
    # the deployed entry point (main_prepacked, weights packed once) is right: it is what
    # gets timed, and it leaves a right result in the output the check of main reuses
    spy = _Spy(module)
    run = measure_kernel(spy, spec, tvm.cpu(0), packed_shape=spec.weight_shape, number=1, repeat=2, min_repeat_ms=1)
    assert spy.timed == ["main_prepacked"] and spy.calls.count("pack_weights") == 1
    assert run.entry == "main_prepacked" and len(run.times) == 2
    assert run.errors["main_prepacked"] <= run.tolerance and run.errors["main"] == math.inf
    assert run.verified is False and run.mismatch.startswith("main:")
    # the tuner's worker: the lazy main is a wrong result, although the timed entry is right
    times, verified, message = run_worker(path, spec.to_dict(), FAST, ALWAYS, list(spec.weight_shape))
    assert len(times) == 3 and verified is False and "main:" in message and "main_prepacked" not in message
    # a right kernel passes, and the output really is the reference's
    good = _library(tmp_path, spec, lazy=None)
    assert run_worker(good, spec.to_dict(), FAST, ALWAYS, list(spec.weight_shape))[1] is True
    arrays = random_inputs(spec, 0)
    args = [tvm.runtime.tensor(a) for a in arrays]
    out = tvm.runtime.empty(spec.output_shape, spec.out_dtype, tvm.cpu(0))
    tvm.runtime.load_module(good)["main"](*args, out)
    np.testing.assert_allclose(out.numpy(), conv2d_reference(spec, *arrays), rtol=0, atol=tolerance(spec))


@pytest.fixture
def rpc_server():
    """One TVM RPC server on loopback (reached directly, no tracker)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    from tvm import rpc

    deadline = time.time() + 120
    while time.time() < deadline:
        try:  # a whole session (a bare socket probe would upset the server's handshake)
            rpc.connect("127.0.0.1", port, session_timeout=10)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the RPC server did not come up")
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_rpc_measures_as_deployed_checks_every_entry_and_sets_threads(rpc_server, tmp_path):
    from convgen import remote
    from convgen.runtime import read_metadata

    opts = MeasureOptions(number=1, repeat=2, min_repeat_ms=1, run_timeout=60, num_threads=2)
    runner = RPCRunner(rpc=rpc_server, options=opts)
    builder = Builder(n_parallel=1)
    try:
        host = convgen.get_target("host")
        # over RPC as locally: weights packed on the device, main_prepacked run, every entry
        # checked on an output filled with NaN first
        lazy = [Candidate(SMALL.to_dict(), host.to_dict(), "-", {}, path=_library(tmp_path, SMALL, entry),
                          packed_shape=list(SMALL.weight_shape)) for entry in ("main_prepacked", "main")]
        runner.run_batch(lazy, ALWAYS)
        for c, entry in zip(lazy, ("main_prepacked", "main")):
            assert c.error == "wrong_result" and c.message.startswith(f"{entry}:"), (c.error, c.message)
        # a real candidate, built by the tuner's builder, runs right; its library goes once run
        tmpl = convgen.schedules.candidates(SMALL, host)[0]
        (c,) = cands = [Candidate(SMALL.to_dict(), host.to_dict(), tmpl.name, tmpl.default(SMALL, host))]
        builder.build(cands)
        assert c.path and os.path.exists(c.path), c.message
        runner.run_batch(cands, ALWAYS)
        assert c.ok and c.verified, (c.error, c.message)
        builder.discard(cands)
        assert not os.path.exists(c.path)
    finally:
        runner.close()
        builder.close()
    # convgen run --rpc: the thread count reaches the remote CPU, the packed entry is checked
    so = str(tmp_path / "k.so")
    convgen.build(SMALL, "host", builtin_records=False).export(so)
    meta = read_metadata(so)
    result = remote.run_remote(remote.connect(rpc=rpc_server, timeout=60), so, meta, num_threads=2, repeat=2)
    assert result["threads"] == 2 and result["max_error"] <= result["tolerance"] and len(result["times"]) == 2


@pytest.mark.host_neutral  # what it checks (plumbing, faults) is the same on every host ISA
def test_unreachable_rpc_device_is_a_device_error_not_a_crash(tmp_path):
    lib = tmp_path / "k.so"
    lib.write_bytes(b"never sent")
    runner = RPCRunner(rpc=f"127.0.0.1:{_free_port()}", options=FAST)  # nobody listens there
    c = Candidate(SMALL.to_dict(), convgen.get_target("host").to_dict(), "-", {}, path=str(lib))
    try:
        runner.run_batch([c], ALWAYS)
    finally:
        runner.close()
    assert c.error == "device" and "cannot reach" in c.message and not c.times


def test_tune_closes_its_runner_when_the_campaign_cannot_start(monkeypatch):
    import convgen.peak
    import convgen.tuner
    import convgen.tuner.campaign

    closed = []

    class Runner:
        def __init__(self, options):
            pass

        def run_batch(self, candidates, check):
            raise AssertionError("nothing is measured")

        def close(self):
            closed.append(True)

    def no_campaign(*args, **kwargs):
        raise RuntimeError("no campaign")

    monkeypatch.setattr(convgen.tuner, "LocalRunner", Runner)
    monkeypatch.setattr(convgen.tuner.campaign, "Campaign", no_campaign)
    monkeypatch.setattr(convgen.peak, "measured_peak_gflops", lambda target, threads, **kw: 1.0)
    with pytest.raises(RuntimeError, match="no campaign"):
        tune(SMALL, "host", trials=1, progress=False)
    assert closed == [True]
