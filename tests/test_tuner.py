"""The tuner for real: builds and runs, faults, resume after SIGKILL, campaigns, RPC fleets."""

import json
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
from convgen.tuner import MeasureOptions, RPCRunner, tune

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
    # the 3 leaders were timed twice more, and checked against the reference again
    assert len(refined) == 6 and all(x["verified"] for x in refined[:3])
    # the default config is measured first, and the first best is checked vs the reference
    assert got[0]["config"] == convgen.schedules.get_template(r.template).default(SMALL, convgen.get_target("host"))
    assert got[0]["verified"] is True
    assert r.config in [x["config"] for x in refined]
    k = convgen.build(SMALL, "host", records=path)
    assert k.config == r.config and k.meta["config_source"] == "records"
    check_kernel(k, SMALL)


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


def _tune_cmd(records, trials, *extra):
    return [sys.executable, "-m", "convgen", "tune", "-c", "8", "-k", "8", "--size", "10", "--kernel", "3",
            "--padding", "1", "--trials", str(trials), "--records", records, "--strategy", "random",
            "--batch-size", "2", "--repeat", "2", "--number", "1", "--min-repeat-ms", "5", "-q", "--refine", "0", *extra]


def test_resume_after_sigkill_loses_no_finished_trial(tmp_path):
    path = str(tmp_path / "k.jsonl")
    proc = subprocess.Popen(_tune_cmd(path, 30), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not os.path.exists(path) or len(open(path).read().splitlines()) < 7):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the tuner, its build and run workers: all at once
    proc.wait()
    before = list(rec.read(path, warn=False))
    assert 7 <= len(before) < 30
    done = subprocess.run(_tune_cmd(path, 30), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = list(rec.read(path, warn=False))
    keys = [r.trial_key() for r in after]
    assert len(after) == 30 and len(set(keys)) == 30  # nothing measured twice
    assert [r.trial_key() for r in after[: len(before)]] == [r.trial_key() for r in before]


def test_campaign_over_a_workload_file_with_summary_plot_and_resume(tmp_path):
    wl = tmp_path / "layers.toml"
    wl.write_text('[[layer]]\nname = "a"\nin_channels = 8\nout_channels = 16\nheight = 8\nwidth = 8\nkernel = 3\npadding = 1\n\n'
                  '[[layer]]\nname = "b"\nin_channels = 16\nout_channels = 8\nheight = 6\nwidth = 6\nkernel = 1\n')
    path = str(tmp_path / "c.jsonl")
    cmd = [sys.executable, "-m", "convgen", "tune", "--workload", str(wl), "--trials", "12", "--records", path,
           "--repeat", "2", "--number", "1", "--min-repeat-ms", "5", "--batch-size", "4", "-o", str(tmp_path / "out"),
           "--refine", "0"]
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
    assert "OK" in out.stdout and f"key cg-test" in out.stdout


def test_tune_api_errors():
    with pytest.raises(ValueError, match="runner must be"):
        tune(SMALL, "host", trials=1, runner="ftp://x", progress=False)
    t = convgen.get_target("x86-avx512")
    if not t.runs_here():
        with pytest.raises(ValueError, match="cannot run on this machine"):
            tune(SMALL, t, trials=1, progress=False)
