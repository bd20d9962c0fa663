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
