"""Records: atomic appends from concurrent writers, corrupt lines, best-config selection."""

import json
import multiprocessing
import warnings

import pytest

import convgen
from convgen import ConvSpec, get_target
from convgen import records as rec
from convgen.schedules import get_template

SPEC = ConvSpec(in_channels=16, out_channels=16, height=8, width=8, kernel=3, padding=1)
TARGET = get_target("x86-avx2")
TEMPLATE = get_template("x86.direct")


def record(config, median, **kw):
    return rec.make_record(SPEC, TARGET, TEMPLATE, config, times=[median] * 3 if median else None, **kw)


def configs(n):
    return TEMPLATE.space(SPEC, TARGET).sample(__import__("random").Random(0), n)


def _writer(path, n, tag):
    for i in range(n):
        rec.append(path, [dict(record(configs(1)[0], 1e-3), writer=tag, i=i, pad="x" * 3000)])


def test_two_writers_never_interleave(tmp_path):
    path = str(tmp_path / "r.jsonl")
    procs = [multiprocessing.Process(target=_writer, args=(path, 150, t)) for t in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = open(path).read().splitlines()
    assert len(lines) == 300
    parsed = [json.loads(line) for line in lines]
    assert sorted(p["i"] for p in parsed if p["writer"] == "a") == list(range(150))


def test_corrupt_and_truncated_lines_are_skipped_with_a_warning(tmp_path):
    path = str(tmp_path / "r.jsonl")
    good = [record(c, 1e-3 * (i + 1)) for i, c in enumerate(configs(3))]
    rec.append(path, good[:2])
    with open(path, "a") as fh:
        fh.write('{"v": 1, "spec_key": "trunc')  # a writer killed mid-line
    rec.append(path, good[2:])  # starts on a fresh line despite the fragment
    with open(path, "a") as fh:
        fh.write("not json at all\n[1, 2]\n{}\n")
    with pytest.warns(rec.RecordWarning):
        got = list(rec.read(path))
    assert [r.config for r in got] == [g["config"] for g in good]


def test_best_config_picks_the_fastest_valid_current_record(tmp_path):
    path = str(tmp_path / "r.jsonl")
    a, b, c, d = configs(4)
    stale = record(d, 1e-6)
    stale["space_hash"] = "0" * 16  # made against another version of the template
    wrong = record(c, 2e-6, error="wrong_result", message="max |error| 3")
    unverified_wrong = dict(record(a, 3e-6), verified=False)
    other_target = dict(record(a, 1e-7), target="x86-avx512")
    rec.append(path, [record(a, 5e-3), record(b, 4e-3), stale, wrong, unverified_wrong, other_target])
    tmpl, config = rec.best_config(SPEC, TARGET, path)
    assert tmpl.name == "x86.direct" and config == b


def test_build_prefers_given_config_then_records_then_default(tmp_path):
    path = str(tmp_path / "r.jsonl")
    a, b = configs(2)
    rec.append(path, [record(a, 1e-3)])
    assert convgen.build(SPEC, TARGET, records=path).config == a
    assert convgen.build(SPEC, TARGET, b, records=path).config == b
    k = convgen.build(SPEC, TARGET, records=str(tmp_path / "none.jsonl"), builtin_records=False)
    assert k.config == TEMPLATE.default(SPEC, TARGET) and k.meta["config_source"] == "default"


def test_records_cli_show_merge_prune(tmp_path, capsys):
    from convgen.cli import main

    p1, p2 = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    cs = configs(4)
    rec.append(p1, [record(c, 1e-3 * (i + 1)) for i, c in enumerate(cs[:3])])
    rec.append(p2, [record(cs[3], 5e-4), record(cs[3], 5e-4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["records", "show", p1, p2]) == 0
    out = capsys.readouterr().out
    assert "16->16 8x8" in out and "x86.direct" in out
    merged = str(tmp_path / "m.jsonl")
    assert main(["records", "merge", merged, p1, p2]) == 0
    assert len(open(merged).read().splitlines()) == 4  # the exact duplicate dropped
    assert main(["records", "prune", merged, "--keep", "2"]) == 0
    kept = [json.loads(x) for x in open(merged).read().splitlines()]
    assert sorted(k["result"]["median_s"] for k in kept) == [5e-4, 1e-3]
