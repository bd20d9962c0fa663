"""A test-only template whose configs can crash, hang, compute a wrong result or fail to build.

It serves only FAULTY_SPEC, so registering it (importing this module) does not change
which templates serve any other workload.
"""

from __future__ import annotations

import tvm
from tvm import te

from convgen import ConvSpec
from convgen.compute import conv2d_primfunc
from convgen.knobs import ConfigError, Knob, Space
from convgen.schedules import Template, get_template, register

FAULTY_SPEC = ConvSpec(in_channels=8, out_channels=8, height=6, width=6, kernel=3, padding=1)


class Faulty(Template):
    name = "test.faulty"
    families = ("x86", "arm")
    priority = -1000

    def supports(self, spec, target):
        return None if spec == FAULTY_SPEC else "test template"

    def space(self, spec, target):
        # three good configs, one of each fault
        return Space(self.name, 1, (Knob("mode", ("ok", "crash", "hang", "wrong", "fail_build")), Knob("variant", (0, 1, 2))),
                     lambda c: None if c["mode"] == "ok" or c["variant"] == 0 else "one config per fault")

    def default(self, spec, target):
        return {"mode": "ok", "variant": 0}

    def primfunc(self, spec, target, config):
        mode = config["mode"]
        if mode in ("crash", "hang"):
            data = te.placeholder(spec.input_shape, "float32", name="data")
            weight = te.placeholder(spec.weight_shape, "float32", name="weight")
            call = ("raise", 11) if mode == "crash" else ("sleep", 3600)
            out = te.extern(spec.output_shape, [data, weight], lambda ins, outs: tvm.tirx.call_extern("int32", *call),
                            name="out", dtype="float32")
            return te.create_prim_func([data, weight, out])
        if mode == "wrong":  # a plain copy: faster than any convolution, and wrong
            data = te.placeholder(spec.input_shape, "float32", name="data")
            weight = te.placeholder(spec.weight_shape, "float32", name="weight")
            out = te.compute(spec.output_shape, lambda *i: data(*i), name="out")
            return te.create_prim_func([data, weight, out])
        return conv2d_primfunc(spec)

    def apply(self, sch, spec, target, config):
        if config["mode"] == "fail_build":
            raise ConfigError("this config cannot be scheduled (test)")
        if config["mode"] == "ok":
            generic = get_template("cpu.generic")
            generic.apply(sch, spec, target, generic.default(spec, target))


register(Faulty())
