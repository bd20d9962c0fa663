"""Knob spaces are data: listed, sampled, hashed and checked without building anything."""

import random

import pytest

from convgen import ConvSpec, get_target
from convgen.knobs import ConfigError, Knob, Space, divisors
from convgen.schedules import all_templates, candidates

# no host target involved: the --host-target pass of scripts/test.sh skips this module
pytestmark = pytest.mark.host_neutral


def small_space():
    return Space("t", 1, (Knob("a", (1, 2, 4)), Knob("b", (True, False))), lambda c: "too big" if c["a"] == 4 and c["b"] else None)


def test_listing_respects_the_constraint():
    s = small_space()
    assert s.raw_size == 6 and len(s) == 5 and len(list(s)) == 5
    assert {"a": 4, "b": True} not in s and {"a": 4, "b": False} in s


def test_sample_is_reproducible_distinct_and_legal():
    s = small_space()
    a = s.sample(random.Random(3), 5)
    assert a == s.sample(random.Random(3), 5)
    assert len({tuple(sorted(c.items())) for c in a}) == len(a) == 5
    assert all(c in s for c in a)


def test_check_says_why():
    s = small_space()
    with pytest.raises(ConfigError, match="too big"):
        s.check({"a": 4, "b": True})
    with pytest.raises(ConfigError, match="missing"):
        s.check({"a": 1})
    with pytest.raises(ConfigError, match="unknown"):
        s.check({"a": 1, "b": True, "c": 0})
    with pytest.raises(ConfigError, match="not one of"):
        s.check({"a": 3, "b": True})


def test_hash_changes_with_values_and_version():
    s = small_space()
    assert s.hash == small_space().hash
    assert Space("t", 2, s.knobs).hash != s.hash
    assert Space("t", 1, (Knob("a", (1, 2)), Knob("b", (True, False)))).hash != s.hash


def test_neighbours_differ_in_one_knob():
    s = small_space()
    for n in s.neighbours({"a": 2, "b": True}):
        assert sum(n[k] != v for k, v in {"a": 2, "b": True}.items()) == 1


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(12, upto=5) == [1, 2, 3, 4]


SPECS = [
    ConvSpec(in_channels=64, out_channels=64, height=56, width=56, kernel=3, padding=1),
    ConvSpec(in_channels=3, out_channels=64, height=224, width=224, kernel=7, stride=2, padding=3),
    ConvSpec(in_channels=32, out_channels=32, height=112, width=112, kernel=3, padding=1, groups=32),
    ConvSpec(in_channels=512, out_channels=2048, height=7, width=7, kernel=1, layout="NHWC"),
]


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_every_template_default_lies_in_its_space(spec, target):
    t = get_target(target)
    found = candidates(spec, t)
    assert found and found[-1].name == "cpu.generic"
    for tmpl in found:
        space = tmpl.space(spec, t)
        assert tmpl.default(spec, t) in space
        assert len(space) >= 1 and len(space.hash) == 16


def test_register_budget_in_space():
    t = get_target("x86-avx2")
    tmpl = all_templates()["x86.direct"]
    # AVX2 by hand: 16 ymm; P pixels x V vectors of accumulators + V weight vectors + one
    # broadcast input, with one weight vector read as the FMA's memory operand:
    # P*V + V + 1 <= 17, so 8 channels (V=1): P <= 15, 16 (V=2): P <= 7, 32 (V=4): P <= 3.
    # Pixel tiles are tile_oh (1, 2, 4) x tile_ow (divisors of 56 up to 14): the largest
    # under those bounds are 14, 7 and 2.
    most = {}
    for c in tmpl.space(SPECS[0], t):
        most[c["tile_oc"]] = max(most.get(c["tile_oc"], 0), c["tile_oh"] * c["tile_ow"])
    assert most == {8: 14, 16: 7, 32: 2}
