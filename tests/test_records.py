"""Records: atomic appends from concurrent writers, corrupt lines, best-config selection."""

import json
import multiprocessing
import os
import threading
import time
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
    k = convgen.build(SPEC, TARGET, builtin_records=False)
    assert k.config == TEMPLATE.default(SPEC, TARGET) and k.meta["config_source"] == "default"
    with pytest.raises(FileNotFoundError, match="none.jsonl"):  # a typo is not "no records"
        convgen.build(SPEC, TARGET, records=str(tmp_path / "none.jsonl"), builtin_records=False)


def test_records_cli_show_merge_prune(tmp_path, capsys):
    from convgen.cli import main

    p1, p2 = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    cs = configs(4)
    rec.append(p1, [record(c, 1e-3 * (i + 1)) for i, c in enumerate(cs[:3])])
    dup = record(cs[3], 5e-4)
    rec.append(p2, [dup, dup])
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
    # merging into an existing log adds to it, it never replaces it
    assert main(["records", "merge", merged, p2]) == 0
    assert sorted(json.loads(x)["result"]["median_s"] for x in open(merged).read().splitlines()) == [5e-4, 1e-3]
    assert main(["records", "merge", merged, p1]) == 0
    assert len(open(merged).read().splitlines()) == 4


def test_a_record_lacking_a_field_or_of_the_wrong_type_is_skipped_with_a_warning(tmp_path):
    path = str(tmp_path / "r.jsonl")
    good = record(configs(1)[0], 1e-3)
    no_spec = {k: v for k, v in good.items() if k != "spec"}
    bad_config = dict(good, config=[1, 2])
    bad_median = dict(good, result={"error": None, "median_s": "fast"})
    rec.append(path, [no_spec, bad_config, bad_median, good])
    with pytest.warns(rec.RecordWarning) as caught:
        got = list(rec.read(path))
    assert [r.data for r in got] == [good]
    said = " ".join(str(w.message) for w in caught)
    assert "no 'spec' field" in said and "'config' is a list" in said and "median_s" in said


def test_the_median_is_one_definition():
    r = rec.make_record(SPEC, TARGET, TEMPLATE, configs(1)[0], times=[4e-3, 1e-3, 2e-3, 3e-3])
    assert r["result"]["median_s"] == rec.median([1e-3, 2e-3, 3e-3, 4e-3]) == 2.5e-3


def test_missing_records_files_are_errors_not_empty_logs(tmp_path, capsys):
    from convgen.cli import main

    missing = str(tmp_path / "typo.jsonl")
    with pytest.raises(FileNotFoundError, match="typo.jsonl"):
        rec.read(missing)
    with pytest.raises(FileNotFoundError, match="typo.jsonl"):
        rec.best_config(SPEC, TARGET, [missing])
    assert all(os.path.exists(p) for p in rec.builtin_record_files())  # the one list allowed to be empty
    for argv in (["records", "show", missing], ["records", "prune", missing],
                 ["records", "merge", str(tmp_path / "out.jsonl"), missing],
                 ["build", "-c", "16", "-k", "16", "--size", "8", "--target", "x86-avx2", "--records", missing]):
        assert main(argv) == 2, argv
        assert "typo.jsonl" in capsys.readouterr().err
    assert not os.path.exists(missing) and not os.path.exists(tmp_path / "out.jsonl")


def _timed(config, *times, **kw):
    return [dict(record(config, t), **kw) for t in times]


def test_prune_keeps_every_record_of_the_best_candidates_and_drops_failed_ones(tmp_path):
    from convgen.records import prune

    a, b, c, d, e = configs(5)
    assert len({json.dumps(x, sort_keys=True) for x in (a, b, c, d, e)}) == 5
    rows = (_timed(a, 1e-4) + _timed(a, 5e-3, 5e-3, refine=True)   # a lucky first timing; median 5e-3
            + _timed(b, 2e-3) + _timed(b, 2e-3, refine=True)       # median 2e-3: the best
            + _timed(c, 3e-3)                                       # 3e-3
            + _timed(d, 5e-5) + [record(d, None, error="wrong_result")]  # fastest, but wrong
            + [dict(record(e, 1e-5), space_hash="0" * 16)])         # fastest, but stale
    path = str(tmp_path / "r.jsonl")
    rec.append(path, rows)
    best_before = rec.best_config(SPEC, TARGET, path)[1]
    records = list(rec.read(path))
    assert [r.config for r in prune(records, keep=1)] == [b, b]
    assert [r.config for r in prune(records, keep=2)] == [b, b, c]  # file order
    assert e in [r.config for r in prune(records, keep=5, keep_stale=True)]
    assert d not in [r.config for r in prune(records, keep=5, keep_stale=True)]
    with pytest.raises(ValueError, match="keep"):
        prune(records, keep=0)
    from convgen.cli import main

    assert main(["records", "prune", path]) == 0
    assert rec.best_config(SPEC, TARGET, path)[1] == best_before == b
    assert len(list(rec.read(path))) == 2


def test_prune_keeps_records_of_targets_it_does_not_know(tmp_path):
    from convgen.records import prune

    a, b = configs(2)
    rows = [dict(r, target="my-board") for r in _timed(a, 1e-3) + _timed(b, 2e-3)]
    kept = prune([rec.Record(r) for r in rows], keep=1)
    assert [r.config for r in kept] == [a] and kept[0].target == "my-board"


def test_merge_keeps_distinct_timings_made_in_the_same_second(tmp_path):
    from convgen.cli import main

    a = configs(1)[0]
    first, again = record(a, 1e-3), dict(record(a, 2e-3), refine=True)
    again["time"] = first["time"]
    p1, out = str(tmp_path / "a.jsonl"), str(tmp_path / "m.jsonl")
    rec.append(p1, [first, again, first])
    assert main(["records", "merge", out, p1, p1]) == 0
    assert [r.median for r in rec.read(out)] == [1e-3, 2e-3]


def test_an_appender_waiting_on_a_rewrite_appends_to_the_new_file(tmp_path):
    path = str(tmp_path / "r.jsonl")
    a, b, c = configs(3)
    rec.append(path, [record(a, 1e-3), record(b, 2e-3)])
    late = threading.Thread(target=rec.append, args=(path, [record(c, 3e-3)]))

    def produce():
        late.start()      # blocks on the lock this rewrite holds (or, if slow to start, finds the new file)
        time.sleep(0.2)
        return [record(a, 1e-3)]

    assert rec.rewrite(path, produce) == 1
    late.join()
    assert [r.config for r in rec.read(path)] == [a, c]


def test_a_device_error_counts_neither_for_nor_against_a_config(tmp_path):
    path = str(tmp_path / "r.jsonl")
    a, b = configs(2)
    rec.append(path, [record(a, 1e-3), record(a, None, error="device", message="cannot reach"), record(b, 2e-3)])
    assert rec.best_config(SPEC, TARGET, path)[1] == a


def test_every_shipped_record_is_current():
    # a template change that alters its space must re-tune or prune the shipped files
    # (convgen/tuned/README.md says how): a stale line there is dead weight that hides a gap
    rule = rec.Staleness()
    for path in rec.builtin_record_files():
        stale = [r for r in rec.read(path) if rule.current(r) is False]
        assert not stale, f"{path}: {len(stale)} stale records, e.g. {stale[0].template} {stale[0].spec_key}"


def test_records_timed_as_the_tuner_times_by_default_rank_first(tmp_path):
    path = str(tmp_path / "r.jsonl")
    a, b = configs(2)
    # a faster record of an older, hotter condition (no "timing": weights left in the caches)
    # and a slower one timed as inside a network: the times do not compare, the latter wins
    hot, args = record(a, 1e-3), dict(record(b, 2e-3), timing=rec.TIMING)
    rec.append(path, [hot, args])
    assert rec.best_config(SPEC, TARGET, path)[1] == b
    assert [r.config for r in rec.prune(rec.read(path))] == [b]
    assert rec.best_records(rec.read(path))[(SPEC.key, TARGET.name)][1].config == b
    # one config timed under both: two candidates, whose medians never mix
    both = [rec.Record(record(a, 1e-3)), rec.Record(dict(record(a, 3e-3), timing=rec.TIMING))]
    assert both[0].trial_key() != both[1].trial_key()
    assert sorted(cost for cost, _ in rec._aggregate(both).values()) == [1e-3, 3e-3]


def test_the_default_timing_flushes_the_arguments_on_cpus_only():
    from convgen.tuner.measure import _timing
    from convgen.tuner.options import MeasureOptions, default_cache_flush

    cpu, gpu = get_target("x86-avx2"), get_target("cuda-sm80")
    opts = MeasureOptions().for_target(cpu)
    assert opts.flush_args and opts.cache_flush_bytes == 0 and opts.timing() == rec.TIMING == "args"
    t = _timing(opts)
    assert t["flush_args"] and t["number"] == 1 and t["repeat"] >= 10  # one flush before each timed call
    off = MeasureOptions(flush_args=False).for_target(cpu)
    assert not off.flush_args and off.cache_flush_bytes == default_cache_flush(cpu) > 0
    assert off.timing() == f"flush:{default_cache_flush(cpu)}"
    g = MeasureOptions().for_target(gpu)
    assert not g.flush_args and g.cache_flush_bytes == 0 and g.timing() == "hot"
    assert not _timing(MeasureOptions(flush_args=False, cache_flush_bytes=0))["flush_args"]


def test_bench_records_winners_keeps_the_records_of_specs_that_won_inside_the_model(tmp_path):
    """scripts/bench_records.py --winners: a campaign's records are kept for the specs whose
    layers together ran >= the margin faster in the model, dropped for the others (one spec
    that won on one layer and lost more on another is a loss)."""
    import os
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    try:
        from bench_records import _winners
    finally:
        sys.path.pop(0)
    fast_spec, slow_spec, mixed_spec = SPEC, SPEC.replace(out_channels=32), SPEC.replace(out_channels=48)
    layers = {"a": fast_spec, "b": slow_spec, "c1": mixed_spec, "c2": mixed_spec}

    class Model:
        def get_submodule(self, path):
            spec = layers[path]
            return SimpleNamespace(spec=spec, kernels={(1, 8, 8, "NCHW"): SimpleNamespace(spec=spec)})

    path = str(tmp_path / "campaign.jsonl")
    a, b = configs(2)
    rec.append(path, [dict(record(a, 1e-3), spec=fast_spec.to_dict(), spec_key=fast_spec.key),
                      dict(record(b, 1e-3), spec=fast_spec.to_dict(), spec_key=fast_spec.key),
                      dict(record(a, 1e-3), spec=slow_spec.to_dict(), spec_key=slow_spec.key),
                      dict(record(a, 1e-3), spec=mixed_spec.to_dict(), spec_key=mixed_spec.key)])
    name = "campaign.jsonl"
    medians = {"a": {"shipped": 100.0, name: 80.0}, "b": {"shipped": 100.0, name: 97.0},
               "c1": {"shipped": 100.0, name: 50.0}, "c2": {"shipped": 100.0, name: 160.0}}
    out = str(tmp_path / "win.jsonl")
    assert _winners(Model(), medians, path, out, 0.05) == (2, 1, 3)
    assert {r.spec_key for r in rec.read(out)} == {fast_spec.key}
