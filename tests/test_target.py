"""Targets: their TOML description is their serialization across processes (workers, kernels)."""

import pytest

import convgen
from convgen import Target, TargetError

# no host target involved: the --host-target pass of scripts/test.sh skips this module
pytestmark = pytest.mark.host_neutral


def test_every_target_round_trips_through_its_dict():
    for t in convgen.all_targets().values():
        again = Target.from_dict(t.to_dict())
        assert again == t and again.to_dict() == t.to_dict()
        assert (again.vector_lanes, again.registers, again.fma_memory_operand) == \
            (t.vector_lanes, t.registers, t.fma_memory_operand)


def test_a_custom_target_survives_a_process_boundary_and_a_tuning_result():
    base = convgen.get_target("x86-avx2").to_dict()
    custom = Target.from_dict(dict(base, name="my-avx2", isa=dict(base["isa"], registers=12)))
    assert Target.from_dict(custom.to_dict()).registers == 12
    from convgen.tuner import TuneResult

    r = TuneResult("a", convgen.ConvSpec(in_channels=8, out_channels=8, height=4, width=4), custom,
                   None, None, None, None, 0)
    assert r.target is custom  # kept as given, not looked up again by name


@pytest.mark.parametrize("bad,match", [("x86-avx2", "table"), ({"name": "x"}, "lacks the field"),
                                       ({"name": "x", "family": "x86"}, "lacks the field")])
def test_a_malformed_description_is_a_target_error(bad, match):
    with pytest.raises(TargetError, match=match):
        Target.from_dict(bad)


def test_x86_fmas_take_a_memory_operand_and_arm_fmlas_do_not():
    assert convgen.get_target("x86-avx2").fma_memory_operand and convgen.get_target("x86-avx512").fma_memory_operand
    assert not convgen.get_target("arm-neon").fma_memory_operand
