"""The peer engines of the benchmarks, set up as their users set them up: OpenVINO and ONNX
Runtime on the CPU, each given the same threads as convgen, float32 unless asked otherwise.

- OpenVINO: ``ov.convert_model(model, example_input=x)``, compiled for ``"CPU"`` with
  ``INFERENCE_NUM_THREADS``, ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_PRECISION_HINT``
  (always set: on a CPU with bf16 OpenVINO otherwise runs bf16 without saying so), called
  through an infer request: ``req.infer({0: x.numpy()})``, the output read from
  ``req.get_output_tensor(0).data``.
- ONNX Runtime: ``torch.onnx.export(..., opset_version=17, dynamo=False)`` into a temporary
  folder, a session with ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``,
  ``ORT_ENABLE_ALL`` on the ``CPUExecutionProvider``; ``sess.run(None, {name: x.numpy()})``.
  ONNX Runtime's CPU provider has no bf16 switch: it always runs float32.

For int8 (:func:`int8_peers`), as the peers' users quantize: the exported float32 ONNX model
through ONNX Runtime's static quantizer (``quantize_static``: QDQ format, per-channel s8
weights, u8 activations, its default MinMax calibration on the given batches), then that one
QDQ file run by both ONNX Runtime and OpenVINO (which executes QDQ networks in int8).

Both are optional: :func:`make_peers` leaves out an engine that is not installed or that
fails on a model, and says so in one line (``notes``), never with a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

PRECISIONS = ("f32", "bf16")  # OpenVINO's INFERENCE_PRECISION_HINT; int8 is a QDQ model (int8_peers)
ENGINES = ("openvino", "onnxruntime")
LABELS = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
LEGACY_EXPORTER = "the TorchScript exporter (dynamo=False)"
# relative error (vs eager torch) above which a peer's output is reported: bf16 keeps 8 bits
# of mantissa, so its results differ from float32 by ~1e-2 by design
TOLERANCE = {"f32": 2e-3, "bf16": 5e-2, "f16": 5e-2, "int8": 1e-1}


@dataclass
class Peer:
    """One engine, ready to run the model on its example input."""

    name: str                        # "openvino" or "onnxruntime": the column's label
    version: str
    run: Callable[[], Any]           # one inference as a user calls it; returns the output (numpy)
    setup_s: float                   # conversion or export + compilation, seconds
    precision: str = "f32"          # what it runs (OpenVINO: the precision its plugin settled on)
    detail: str = ""                 # how it was set up: the exporter used, a precision not honoured
    extra: dict[str, Any] = field(default_factory=dict)  # engine objects (the compiled model, the request)


def installed() -> dict[str, str | None]:
    """``{engine: version or None}`` for the peer engines (None: not installed), without
    importing what is missing."""
    out: dict[str, str | None] = {}
    for name in ENGINES:
        if not _importable(name):
            out[name] = None
            continue
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "?")).split("-")[0]  # "2026.4.1-22982-..." -> "2026.4.1"
        except Exception:  # noqa: BLE001 - a broken install counts as missing
            out[name] = None
    return out


def openvino_config(threads: int, precision: str = "f32", perf_count: bool = False) -> dict[str, Any]:
    """The CPU plugin's configuration: a latency-bound caller on ``threads`` threads."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_PRECISION_HINT": precision}
    if perf_count:
        config["PERF_COUNT"] = True
    return config


def openvino_peer(model: Any, x: Any, threads: int, precision: str = "f32", perf_count: bool = False) -> Peer:
    """OpenVINO's CPU plugin running ``model`` on ``x`` (a torch tensor) through one infer
    request; ``perf_count`` turns on its per-node profile (``req.profiling_info``)."""
    import openvino as ov

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript tracer's warnings say nothing about timing
        converted = ov.convert_model(model, example_input=x)
    compiled = ov.Core().compile_model(converted, "CPU", openvino_config(threads, precision, perf_count))
    req = compiled.create_infer_request()
    setup_s = time.perf_counter() - t0
    # what the plugin settled on (a CPU without bf16 may not honour a bf16 hint)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "f32", "bf16"
    actual = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    def run() -> Any:
        req.infer({0: x.numpy()})
        return req.get_output_tensor(0).data

    return Peer("openvino", installed()["openvino"] or "?", run, setup_s, actual,
                detail="" if actual == precision else f"asked for {precision}, runs {actual}",
                extra={"compiled": compiled, "request": req})


def onnx_export(model: Any, x: Any, path: str) -> str:
    """Export ``model`` at ``x`` to ONNX (opset 17) at ``path``; returns the exporter used.

    torch 2.13 still has the TorchScript-based ("legacy") exporter behind ``dynamo=False``
    (it needs the ``onnx`` package, not ``onnxscript``) and it exports every model here;
    it warns that it is deprecated, which is silenced. Should a later torch drop it, the
    torch.export-based exporter (``dynamo=True``, needs ``onnxscript``) is tried instead.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False)
            return LEGACY_EXPORTER
        except Exception as legacy:  # noqa: BLE001
            try:
                torch.onnx.export(model, (x,), path, opset_version=17, dynamo=True)
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"torch.onnx.export failed: dynamo=False: {_first_line(legacy)}; "
                                   f"dynamo=True: {_first_line(e)}") from None
            return "the torch.export exporter (dynamo=True)"


def onnxruntime_peer(model: Any, x: Any, threads: int) -> Peer:
    """ONNX Runtime's CPU provider running ``model`` (exported to ONNX) on ``x``."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory(prefix="convgen-onnx-") as folder:
        path = os.path.join(folder, "model.onnx")
        exporter = onnx_export(model, x, path)
        # the session reads the whole file now: the folder can go when it is made
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    setup_s = time.perf_counter() - t0

    def run() -> Any:
        return session.run(None, {name: x.numpy()})[0]

    return Peer("onnxruntime", installed()["onnxruntime"] or "?", run, setup_s, "f32",
                detail="" if exporter == LEGACY_EXPORTER else f"exported with {exporter}",
                extra={"session": session})


def available(engines: tuple[str, ...] = ENGINES) -> tuple[tuple[str, ...], list[str]]:
    """The ``engines`` that can run here, and a one-line note for each that cannot (not
    installed; ONNX Runtime also needs ``onnx``, which torch.onnx.export writes with)."""
    have = installed()
    usable: list[str] = []
    notes: list[str] = []
    for engine in engines:
        if have.get(engine) is None:
            notes.append(f"{LABELS[engine]} is not installed (pip install {engine}): its column is left out")
        elif engine == "onnxruntime" and not _importable("onnx"):
            notes.append("ONNX Runtime's model is exported with torch.onnx.export, which needs onnx "
                         "(pip install onnx): its column is left out")
        else:
            usable.append(engine)
    return tuple(usable), notes


def make_peers(model: Any, x: Any, threads: int, precision: str = "f32",
               engines: tuple[str, ...] = ENGINES) -> tuple[list[Peer], list[str]]:
    """The peers of ``engines`` set up on ``model`` at ``x``, and one-line notes on those
    left out (see :func:`available`; or failed on this model) or set up otherwise than
    asked (a precision the plugin did not honour, another exporter)."""
    usable, notes = available(engines)
    peers: list[Peer] = []
    for engine in usable:
        try:
            peer = openvino_peer(model, x, threads, precision) if engine == "openvino" \
                else onnxruntime_peer(model, x, threads)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run this model is left out, not fatal
            notes.append(f"{LABELS[engine]} failed on this model, left out: {type(e).__name__}: {_first_line(e)}")
            continue
        peers.append(peer)
        if peer.detail:
            notes.append(f"{LABELS[engine]}: {peer.detail}")
    return peers, notes


def describe(precision: str, engines: tuple[str, ...] = ENGINES) -> str:
    """The header's words for the peers that can run of ``engines``: names, versions,
    precision."""
    have = installed()
    usable, _ = available(engines)
    parts = []
    if "openvino" in usable:
        parts.append(f"OpenVINO {have['openvino']} ({precision})")
    if "onnxruntime" in usable:
        runs = precision if precision.startswith("int8") else "f32"  # no bf16 switch on its CPU provider
        parts.append(f"ONNX Runtime {have['onnxruntime']} ({runs}, ONNX opset 17)")
    return "peers: " + (", ".join(parts) if parts else "none available")


def relative_error(got: Any, want: Any) -> float:
    """``|got - want| / |want|`` (Frobenius norms), ``got`` a numpy array or torch tensor."""
    import numpy as np

    got = np.asarray(got.detach() if hasattr(got, "detach") else got, dtype=np.float64)
    want = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# -- OpenVINO's per-node profile ------------------------------------------------------------
# The CPU plugin's runtime model names each executed node; its rt_info lists the original
# layers it computes (``originalLayersNames``: the fused ones too). The PyTorch frontend names
# a layer after the module that ran it: ``__module.layer1.0.conv1/aten::_convolution/Convolution``.
# A convolution whose BatchNorm OpenVINO folded is renamed (``Multiply_11944``) and keeps its
# module path only through the BatchNorm's name (``__module.layer1.0.bn1/aten::batch_norm/...``).
_MODULE = re.compile(r"__module\.([^/]+)/")


@dataclass
class OVNode:
    """One node of OpenVINO's compiled (runtime) model."""

    name: str
    layer_type: str
    exec_order: int
    originals: list[str]             # the original layers it computes (fused ones included)

    @property
    def module_paths(self) -> set[str]:
        """The torch module paths named in its original layers (for an ONNX model, every
        module path its scopes could name: :func:`onnx_scope_paths`)."""
        # the innermost module where a name nests scopes (__module.layer1/__module.layer1.0/...)
        paths = {found[-1] for name in self.originals if (found := _MODULE.findall(name))}
        for name in self.originals:
            if name.startswith("/"):
                paths |= onnx_scope_paths(name)
        return paths

    @property
    def op_kinds(self) -> list[str]:
        """The kinds of its original layers (``Convolution``, ``BatchNormInference``, ``Clamp``...)."""
        kinds = []
        for name in self.originals:
            kind = name.rsplit("/", 1)[-1] if "/" in name else ""
            if kind and kind not in kinds:
                kinds.append(kind)
        return kinds


def onnx_scope_paths(name: str) -> set[str]:
    """The module paths a node name of torch's ONNX exporter could name, one per prefix of
    its scopes: ``/layer4/layer4.0/downsample/downsample.0/Conv`` gives ``layer4``,
    ``layer4.0``, ``layer4.0.downsample``, ``layer4.0.downsample.0`` (and the same with
    ``Conv``: the caller keeps the ones that are convolution modules). A scope is the module's
    attribute name, its parent's scope prefixed where the name is a number (``layer4.0``,
    ``features.0.0``)."""
    parts: list[str] = []
    previous = ""
    out = set()
    for scope in name.strip("/").split("/"):
        head, _, tail = scope.rpartition(".")
        parts.append(tail if head and head == previous and tail.isdigit() else scope)
        previous = scope
        out.add(".".join(parts))
    return out


def openvino_nodes(compiled: Any) -> dict[str, OVNode]:
    """``{node name: OVNode}`` of a compiled model's runtime graph (the names that
    ``req.profiling_info`` reports)."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def get(key: str, default: str = "") -> str:
            return info[key].astype(str) if key in info else default

        order = get("execOrder", "-1")
        out[op.get_friendly_name()] = OVNode(
            name=op.get_friendly_name(), layer_type=get("layerType"),
            exec_order=int(order) if order.lstrip("-").isdigit() else -1,
            originals=[n for n in get("originalLayersNames").split(",") if n])
    return out


def profile(req: Any) -> dict[str, tuple[float, str, str]]:
    """The per-node profile, ``{node name: (seconds, node type, exec type)}`` of the nodes
    that ran (``PERF_COUNT`` must be on).

    The CPU plugin keeps one running mean per node: the seconds are the mean over every
    inference since the model was compiled, in whole microseconds (its ``real_time`` is
    ``total // count``), not the last inference's. :func:`profile_mean` gets the mean of an
    interval from two of these.
    """
    out = {}
    for p in req.profiling_info:
        if str(p.status).rsplit(".", 1)[-1] == "EXECUTED":
            out[p.node_name] = (p.real_time.total_seconds(), p.node_type, p.exec_type)
    return out


def profile_mean(before: dict[str, tuple[float, str, str]], n_before: int,
                 after: dict[str, tuple[float, str, str]], n_after: int) -> dict[str, tuple[float, str, str]]:
    """Per node, the mean seconds of the inferences between two :func:`profile` readings
    taken after ``n_before`` and ``n_after`` inferences since compile: (mean_after * n_after
    - mean_before * n_before) / (n_after - n_before). The plugin truncates each mean to a
    microsecond, so the result is within (n_before + n_after) / (n_after - n_before) us."""
    span = n_after - n_before
    if span <= 0:
        raise ValueError("profile_mean needs inferences between the two readings")
    out = {}
    for name, (seconds, node_type, exec_type) in after.items():
        earlier = before.get(name, (0.0, "", ""))[0]
        out[name] = (max(0.0, (seconds * n_after - earlier * n_before) / span), node_type, exec_type)
    return out


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules (None)
        return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def int8_peers(model: Any, x: Any, threads: int, calibration: list[Any],
               perf_count: bool = False) -> tuple[list[Peer], list[str]]:
    """ONNX Runtime and OpenVINO on the QDQ network ONNX Runtime's static quantizer makes of
    ``model`` (per-channel s8 weights, u8 activations, MinMax over ``calibration``), and
    one-line notes on what could not run. ``perf_count``: OpenVINO's per-node profile on."""
    usable, notes = available()
    if "onnxruntime" not in usable:
        return [], notes + ["int8 peers need ONNX Runtime's quantizer: left out"]
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    peers: list[Peer] = []
    with tempfile.TemporaryDirectory(prefix="convgen-qdq-") as folder:
        fp32, qdq = os.path.join(folder, "model.onnx"), os.path.join(folder, "model.qdq.onnx")
        t0 = time.perf_counter()
        try:
            onnx_export(model, x, fp32)
            name = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.batches = iter([{name: b.numpy()} for b in calibration])

                def get_next(self) -> dict | None:
                    return next(self.batches, None)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(fp32, qdq, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as e:  # noqa: BLE001
            return [], notes + [f"the int8 (QDQ) model could not be made: {type(e).__name__}: {_first_line(e)}"]
        made_s = time.perf_counter() - t0
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(qdq, options, providers=["CPUExecutionProvider"])
        feed = {name: x.numpy()}
        peers.append(Peer("onnxruntime", installed()["onnxruntime"] or "?", lambda: session.run(None, feed)[0],
                          made_s, "int8", extra={"session": session}))
        if "openvino" in usable:
            try:
                import openvino as ov

                compiled = ov.Core().compile_model(qdq, "CPU", openvino_config(threads, "f32", perf_count))
                req = compiled.create_infer_request()
                data = x.numpy()

                def run_ov() -> Any:
                    req.infer({0: data})
                    return req.get_output_tensor(0).data

                peers.append(Peer("openvino", installed()["openvino"] or "?", run_ov, made_s, "int8",
                                  extra={"compiled": compiled, "request": req}))
            except Exception as e:  # noqa: BLE001
                notes.append(f"OpenVINO failed on the QDQ model, left out: {type(e).__name__}: {_first_line(e)}")
    return peers, notes
