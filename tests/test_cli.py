"""The command line: build/run/info/space/targets, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from convgen.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "convgen", *args], capture_output=True, text=True, timeout=600)


def test_build_run_info(tmp_path, capsys):
    so = str(tmp_path / "k.so")
    assert main(["build", "-c", "8", "-k", "16", "--size", "12", "--kernel", "3", "--padding", "same", "--stride", "2",
                 "--bias", "--relu", "-o", so]) == 0
    assert main(["run", so, "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "GFLOP/s" in out and ("threads" in out or "1 thread" in out)
    assert main(["info", so, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["spec"]["stride"] == [2, 2] and meta["spec"]["activation"] == "relu"


def test_layer_with_override(tmp_path, capsys):
    so = str(tmp_path / "k.so")
    assert main(["build", "--layer", "resnet18.r5_3x3", "--layout", "NHWC", "-o", so, "--threads", "1"]) == 0
    assert main(["info", so]) == 0
    assert "NHWC" in capsys.readouterr().out


def test_space_and_targets_and_layers(capsys):
    assert main(["space", "--layer", "resnet50.r2_3x3", "--target", "x86-avx512"]) == 0
    out = capsys.readouterr().out
    assert "x86.direct" in out and "tile_ow" in out and "default:" in out
    assert main(["targets"]) == 0 and "x86-avx2" in capsys.readouterr().out
    assert main(["layers", "--preset", "resnet50"]) == 0 and "resnet50.r4_3x3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["build", "-c", "8", "-k", "16", "--size", "0"], "ConvSpec.height: must be >= 1"),
        (["build", "-c", "8", "-k", "12", "--size", "8", "--groups", "5"], "ConvSpec.groups"),
        (["build", "-c", "8", "--size", "8"], "give -k"),
        (["build", "--layer", "resnet50.nope"], "unknown layer"),
        (["build", "--layer", "resnet50.r2_3x3", "--target", "sparc"], "unknown target"),
        (["build", "--layer", "resnet50.r2_3x3", "--config", '{"tile_oc": 3}', "--template", "x86.direct"], "illegal config"),
        (["run", "/nonexistent.so"], "no such file"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message):
    r = run(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_help_teaches():
    r = run("build", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "--layer" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["tune", "--layer", "resnet50.r2_3x3", "--trials", "0"],
        ["tune", "--layer", "resnet50.r2_3x3", "--trials", "-1"],
        ["tune", "--layer", "resnet50.r2_3x3", "--batch-size", "0"],
        ["tune", "--layer", "resnet50.r2_3x3", "--repeat", "0"],
        ["tune", "--layer", "resnet50.r2_3x3", "--number", "0"],
        ["run", "k.so", "--repeat", "0"],
        ["records", "prune", "r.jsonl", "--keep", "0"],
    ],
)
def test_counts_must_be_positive(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["[1]", "{tile_oc: 8", '"x"'])
def test_a_bad_config_names_the_flag(config, capsys):
    assert main(["build", "-c", "8", "-k", "16", "--size", "8", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "--config" in err and "internal error" not in err


def test_metadata_without_a_spec_is_a_clear_error(tmp_path, capsys):
    from convgen.runtime import _MAGIC

    meta = json.dumps({"format": 2, "target": "x86-avx2", "template": "x86.direct", "config": {}}).encode()
    so = tmp_path / "odd.so"
    so.write_bytes(b"\0" * 64 + meta + len(meta).to_bytes(8, "little") + _MAGIC)
    for argv in (["info", str(so)], ["run", str(so)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "'spec'" in err and "internal error" not in err, err


def _fake_tune(monkeypatch, write_plot):
    import convgen.peak
    import convgen.tuner
    from convgen.tuner import TuneResult

    seen = {}

    def tune(named, target, *, plot=None, weights=None, **kw):
        seen.update(named=named, weights=weights)
        if plot and write_plot:
            open(plot, "w").write("png")
        return {n: TuneResult(n, s, target.name, "x86.direct", {"tile_oc": 8}, 1e-3, 2e-3, 8, (weights or {}).get(n, 1.0))
                for n, s in named.items()}

    monkeypatch.setattr(convgen.tuner, "tune", tune)
    monkeypatch.setattr(convgen.peak, "measured_peak_gflops", lambda *a, **k: 100.0)
    return seen


@pytest.mark.parametrize("write_plot", [False, True])
def test_tune_names_the_plot_only_when_it_wrote_one(tmp_path, capsys, monkeypatch, write_plot):
    _fake_tune(monkeypatch, write_plot)
    png = str(tmp_path / "c.png")
    argv = ["tune", "--preset", "resnet18", "--target", "x86-avx2", "--records", str(tmp_path / "r.jsonl"),
            "--plot", png, "-q"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert ("plot: " + png in out) == write_plot
    assert ("not written" in err) != write_plot


def test_a_workload_listed_twice_is_tuned_once_with_weight_two(tmp_path, capsys, monkeypatch):
    seen = _fake_tune(monkeypatch, False)
    layer = {"in_channels": 8, "out_channels": 16, "height": 8, "width": 8, "kernel": 3, "padding": 1}
    wl = tmp_path / "layers.json"
    wl.write_text(json.dumps({"layers": [dict(layer, name="a"), dict(layer, name="b", out_channels=8),
                                         dict(layer, name="c")]}))
    argv = ["tune", "--workload", str(wl), "--target", "x86-avx2", "--records", str(tmp_path / "r.jsonl"), "-q"]
    assert main(argv) == 0
    # tune() weights ConvLayers by their counts
    assert list(seen["named"]) == ["a", "b"] and seen["named"].counts == {"a": 2, "b": 1}
    assert "'c' is the same workload as 'a'" in capsys.readouterr().err
