#!/usr/bin/env python3
"""Per-convolution time inside one model: convgen next to OpenVINO, layer by layer.

End-to-end numbers (``bench_torch.py``) say whether convgen wins; this says where it loses.
For one model of ``convgen.torch.models`` (a network or a pattern) at one batch size:

- convgen: ``convgen.torch.optimize(model, x)``; a forward pre/post hook on every
  convolution of the optimized model (``convgen.torch.Conv2d``, and the ``nn.Conv2d`` left
  to torch) times each call with ``time.perf_counter`` inside the real forward: the kernel
  with its fused epilogue (BatchNorm, residual add, ReLU) and the call's own overhead
  (the custom op's dispatch, the layout conversion of the network's first convolution);
  ``kernel us`` is the kernel call alone, so the difference is that overhead;
- OpenVINO: the same model compiled as ``bench_torch.py`` compiles it, plus
  ``PERF_COUNT``; its per-node profile (``req.profiling_info``), read before and after
  the rounds. OpenVINO nodes are matched to torch convolutions by the module paths in their
  original layer names (see below); a node that names no convolution's module, or several,
  is reported unmatched, not guessed.

Each round times one convgen forward and one OpenVINO inference, interleaved, each after an
untimed call of its own (and a few untimed ones of each before the first round): steady
state, the other engine's still-spinning threads gone. A row's time is its mean per forward
over the rounds (summed when a module runs several times in one forward), its ratio
OpenVINO's mean / convgen's (> 1: convgen is faster). Means, not medians, on both sides:
OpenVINO's CPU plugin keeps only a running mean per node (``real_time`` is the mean over
every inference since compile, in whole microseconds), so its mean over the rounds is what
two readings give (within about a microsecond), and convgen's is taken alike for a like
comparison; on a noisy machine use more rounds. Then totals per class of convolution (1x1,
depthwise, grouped, other kernels by size, dilated apart), all convolutions, the rest of
the model and the whole model (wall time of a forward, of an ``infer`` call).

Hooks turn a :class:`convgen.torch.ConvChain` off (its layers run one by one, each into its
own output buffer), so the hooked times are not what a plain forward pays. ``in chain us``
is: after the hooked rounds come as many plain ones, interleaved with OpenVINO's inferences
alike, in which each launch of a chain's replay is timed alone (``convgen.runtime.Launches``
with a clock around each kernel call, ~0.1 us each): the kernel as the model runs it, in
the buffers the replay shares, after the kernel before it. Its class totals sit beside the
hooked ones, and ``whole model, chains replaying`` is the plain forward's wall time.

How OpenVINO's nodes map to module paths: the PyTorch frontend names each layer after the
module that ran it, ``__module.layer1.0.conv1/aten::_convolution/Convolution``; the runtime
model lists, per executed node, the original layers it computes (fused ones included). A
convolution whose BatchNorm OpenVINO folded is renamed (``Multiply_11944``) and keeps only
its BatchNorm's path (``__module.layer1.0.bn1/aten::batch_norm/BatchNormInference``), so a
convolution is matched by its own path or by the path of the BatchNorm that follows it. A
``Reorder`` OpenVINO inserts in front of a convolution (named ``<from>_<layout>_<layout>_<node>``)
counts as that convolution's (``+reorder`` in the exec column): convgen converts layouts
inside its convolution call, and its time counts the conversion too.

``--precision int8``: convgen's int8 model (8 random calibration batches) next to OpenVINO
running the QDQ network ONNX Runtime's static quantizer makes with the same batches (as
``bench_torch.py --precision int8``). Its nodes carry the ONNX exporter's scope names
(``/layer1/layer1.0/conv1/Conv``), matched by :func:`peers.onnx_scope_paths`. An int8 layer
whose input comes in float32 quantizes it inside its call: its ``convgen us`` counts that
pass, its ``kernel us`` does not (OpenVINO fuses the quantization into the producer).
Layers are timed with hooks, which turn off the reuse of output buffers (see README).

    python scripts/bench_layers.py --model resnet50                  # batch 1, 20 rounds
    python scripts/bench_layers.py --model resnet50 --precision int8 # int8 vs OpenVINO on QDQ
    python scripts/bench_layers.py --model mobilenet_v2 --batch 8 --markdown
    python scripts/bench_layers.py --model regnet_block --rounds 50 --csv regnet.csv
    python scripts/bench_layers.py --model resnet50 --records r50.jsonl --no-builtin-records
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from benchutil import model_and_input, model_names


@dataclass
class Row:
    """One convolution of the model (one module path)."""

    path: str
    spec: str                 # the workload as convgen runs it (module.spec.describe())
    klass: str                # 1x1, depthwise, grouped, 3x3, 3x3 dilated, 1x7, ...
    template: str             # convgen's template (config source), or why torch runs it
    config: str = ""
    paths: set[str] = field(default_factory=set)  # its path and its BatchNorm's: what OpenVINO names
    convgen: list[float] = field(default_factory=list)   # seconds per forward, per round
    kernel: list[float] = field(default_factory=list)    # of which in the kernel call itself
    chained: list[float] = field(default_factory=list)   # its launch inside a chain's replay ([]: not chained)
    openvino: list[float] = field(default_factory=list)  # [mean seconds per inference], [] if no node matched
    ov_nodes: list[str] = field(default_factory=list)
    ov_exec: list[str] = field(default_factory=list)
    ov_ops: list[str] = field(default_factory=list)


def conv_class(kernel: tuple[int, int], groups: int, in_channels: int, dilation: tuple[int, int]) -> str:
    """The class a convolution's time is totalled under."""
    if groups > 1 and groups == in_channels:
        return "depthwise"
    if groups > 1:
        return "grouped"
    if tuple(kernel) == (1, 1):
        return "1x1"
    return f"{kernel[0]}x{kernel[1]}" + (" dilated" if max(dilation) > 1 else "")


def conv_rows(model: Any, fast: Any, x: Any) -> list[Row]:
    """A row per convolution module of ``model``, in graph order, with what runs it in
    ``fast`` (its :func:`convgen.torch.optimize`'d copy)."""
    from torch import nn

    import convgen.torch as ct
    from convgen.torch._graph import site_spec, sites, trace

    rows: dict[str, Row] = {}
    torch_convs = getattr(fast, "convgen_torch_convs", {})
    for site in sites(trace(model, (x,))):
        if site.path in rows:
            continue  # a module called at several places: one row, its calls summed
        conv = site.conv
        # the BatchNorm's node follows the convolution's in the chain; its target is its module path
        paths = {site.path} | ({site.chain[1].target} if site.bn is not None else set())
        klass = "linear" if site.linear else conv_class(conv.kernel_size, conv.groups, conv.in_channels, conv.dilation)
        try:
            module = fast.get_submodule(site.path)
        except AttributeError:
            module = None
        if isinstance(module, ct.Conv2d):
            kernel = _kernel_for(module, x.shape[0])
            if isinstance(kernel, Exception):
                template, config = f"torch (the kernel did not build: {str(kernel).splitlines()[0][:80]})", ""
            else:
                template = f"{kernel.template} ({kernel.meta.get('config_source', '?')})"
                config = str(kernel.config)
            spec = module.spec if isinstance(kernel, Exception) else kernel.spec  # its layout: NHWC, say
            rows[site.path] = Row(site.path, spec.describe(), klass, template, config, paths)
        else:
            spec = site_spec(site)
            described = spec if isinstance(spec, str) else spec.describe()
            why = torch_convs.get(site.path, "not optimized by convgen") if isinstance(module, nn.Conv2d) else "?"
            rows[site.path] = Row(site.path, described, klass, f"torch ({why})", "", paths)
    return list(rows.values())


def _kernel_for(module: Any, batch: int) -> Any:
    """The module's kernel at this batch size (the one ``optimize`` built)."""
    kernels = module.kernels
    for key, kernel in kernels.items():
        if key[0] == batch:
            return kernel
    return next(iter(kernels.values())) if kernels else RuntimeError("no kernel built")


class _TimedLaunch:
    """A convgen kernel's bare entry point (``Kernel.launcher``, what a ``convgen.torch.Conv2d``
    calls per input shape) that adds the seconds of each call to ``seconds[path]``."""

    def __init__(self, launch: Any, seconds: dict[str, float], path: str) -> None:
        self._launch, self._seconds, self._path = launch, seconds, path

    def __call__(self, *args: Any) -> None:
        t0 = time.perf_counter()
        try:
            self._launch(*args)
        finally:
            self._seconds[self._path] += time.perf_counter() - t0


class ChainTimer:
    """Each launch of every :class:`convgen.torch.ConvChain` replay of ``model``, timed alone
    inside plain forwards: :meth:`Launches.__call__ <convgen.runtime.Launches>` is swapped
    for a loop with a clock around each kernel call while :meth:`timing` is entered. Make it
    after two plain forwards at the shapes to time (the chains have recorded their programs)."""

    def __init__(self, model: Any) -> None:
        import convgen.torch as ct
        from convgen.runtime import Launches

        self._launches_type = Launches
        names = {id(m): name for name, m in model.named_modules()}
        self.paths: dict[int, list[str]] = {}  # id(Launches) -> module path of each of its calls
        for chain in (m for m in model.modules() if isinstance(m, ct.ConvChain)):
            program = chain._program
            if program is None:
                continue
            # the replayed layers' launches in order (an int8 layer's quantization counts as its own)
            calls = [names[id(step[0])] for step in program.steps for _ in step[2].launches()]
            if program.tail is not None:  # the head, replayed last: the pooling's launch, then the classifier's
                at = len(calls) - len(program.steps[-1][2].launches())
                calls[at:at] = [names[id(chain.tail[0])]]
            calls = iter(calls)
            for segment in program.segments:
                if type(segment) is Launches:
                    self.paths[id(segment)] = [next(calls) for _ in range(len(segment))]
        self.seconds: dict[str, float] = {p: 0.0 for ps in self.paths.values() for p in ps}
        self.rounds: dict[str, list[float]] = {p: [] for p in self.seconds}

    def timing(self) -> Any:
        """A context in which the replays' launches are timed one by one."""
        Launches, paths, seconds = self._launches_type, self.paths, self.seconds
        clock = time.perf_counter

        def timed(launches: Any) -> None:
            names = paths.get(id(launches))
            if names is None:
                return plain(launches)
            for (func, args), path in zip(launches._calls, names):
                t0 = clock()
                func(*args)
                seconds[path] += clock() - t0

        @contextlib.contextmanager
        def swapped() -> Any:
            Launches.__call__ = timed
            try:
                yield
            finally:
                Launches.__call__ = plain

        plain = Launches.__call__
        return swapped()

    def end_round(self) -> None:
        for path, s in self.seconds.items():
            self.rounds[path].append(s)
            self.seconds[path] = 0.0

    def discard(self) -> None:
        for path in self.seconds:
            self.seconds[path] = 0.0


class ConvTimer:
    """Forward pre/post hooks on every convolution module of a model: seconds per module,
    summed over one forward (:meth:`end_round` closes it); and, for a convgen module, the
    seconds of its kernel call alone (the rest is the call's overhead in Python and torch:
    the custom op's dispatch, the output's allocation, a layout conversion). Make it after
    one forward at the shapes to time: it wraps the kernels' entry points of the call plans
    that forward made."""

    def __init__(self, model: Any, paths: list[str]) -> None:
        import convgen.torch as ct

        self.seconds: dict[str, float] = dict.fromkeys(paths, 0.0)
        self.kernel_seconds: dict[str, float] = dict.fromkeys(paths, 0.0)
        self.rounds: dict[str, list[float]] = {p: [] for p in paths}
        self.kernel_rounds: dict[str, list[float]] = {p: [] for p in paths}
        self._start: dict[str, float] = {}
        self._handles = []
        self._wrapped: list[tuple[Any, Any]] = []  # (call plan, its own entry point)
        for path in paths:
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_pre_hook(self._before(path)))
            self._handles.append(module.register_forward_hook(self._after(path), always_call=True))
            if isinstance(module, ct.Conv2d):
                for plan in module._plans.values():
                    if plan is not None:
                        self._wrapped.append((plan, plan.launch))
                        plan.launch = _TimedLaunch(plan.launch, self.kernel_seconds, path)

    def _before(self, path: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            self._start[path] = time.perf_counter()
        return hook

    def _after(self, path: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            self.seconds[path] += time.perf_counter() - self._start.pop(path)
        return hook

    def end_round(self) -> None:
        """Record this forward's time per module and start the next forward from zero."""
        for path, s in self.seconds.items():
            self.rounds[path].append(s)
            self.kernel_rounds[path].append(self.kernel_seconds[path])
            self.seconds[path] = self.kernel_seconds[path] = 0.0

    def discard(self) -> None:
        """Forget the time of the forward(s) since the last round (untimed warm-up)."""
        for path in self.seconds:
            self.seconds[path] = self.kernel_seconds[path] = 0.0

    def remove(self) -> None:
        """Take the hooks off and give the modules their kernels back."""
        for h in self._handles:
            h.remove()
        for plan, launch in self._wrapped:
            plan.launch = launch


def match_nodes(rows: list[Row], nodes: dict[str, Any]) -> tuple[dict[str, int], dict[str, str]]:
    """OpenVINO node name -> row index, and node name -> why it is unmatched (for nodes that
    name a module path but no single convolution's, or are convolutions themselves)."""
    owner = {p: i for i, row in enumerate(rows) for p in row.paths}
    node_row: dict[str, int] = {}
    unmatched: dict[str, str] = {}
    for name, node in nodes.items():
        hits = {owner[p] for p in node.module_paths if p in owner}
        if len(hits) == 1:
            node_row[name] = hits.pop()
        elif len(hits) > 1:
            unmatched[name] = "names several convolutions: " + ", ".join(sorted(rows[i].path for i in hits))
        elif node.layer_type in ("Convolution", "GroupConvolution", "Deconvolution"):
            unmatched[name] = "a convolution naming no convolution module: " + (", ".join(node.originals) or "-")
    # a Reorder in front of a matched convolution node: <from>_<layout>_<layout>_<node name>
    conv_nodes = sorted((n for n in node_row if nodes[n].layer_type in ("Convolution", "GroupConvolution")),
                        key=len, reverse=True)
    for name, node in nodes.items():
        if node.layer_type == "Reorder" and name not in node_row:
            target = next((c for c in conv_nodes if name.endswith("_" + c)), None)
            if target is not None:
                node_row[name] = node_row[target]
    return node_row, unmatched


def interleaved_rounds(rounds: int, convgen_round: Any, ov: Any, convgen_s: list[float],
                       ov_s: list[float]) -> int:
    """``rounds`` rounds of ``convgen_round()`` (an untimed forward, then a timed one: returns
    its seconds) and OpenVINO's untimed, then timed inference (if ``ov``); the seconds go to
    the lists. Each engine's timed call follows an untimed one of its own: the other engine's
    thread pool, still spinning after its call, slows the first call after it. Returns the
    OpenVINO inferences made."""
    inferences = 0
    for _ in range(rounds):
        convgen_s.append(convgen_round())
        if ov is None:
            continue
        ov.run()
        t0 = time.perf_counter()
        ov.run()
        ov_s.append(time.perf_counter() - t0)
        inferences += 2
    return inferences


def mean(values: list[float]) -> float:
    """Arithmetic mean (nan for none)."""
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Time every convolution of one model on convgen and OpenVINO; print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="from convgen.torch.models: " + ", ".join(model_names()))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=None,
                    help="input height = width (default: 224 for networks, the pattern's own for patterns)")
    ap.add_argument("--rounds", type=int, default=20, help="timed forwards / inferences of each (mean reported)")
    ap.add_argument("--threads", type=int, default=None, help="threads for convgen and OpenVINO (default: all CPUs)")
    ap.add_argument("--records", nargs="*", default=None,
                    help="tuning logs passed to optimize (before the shipped ones)")
    ap.add_argument("--no-builtin-records", action="store_true", help="ignore the records shipped with convgen")
    ap.add_argument("--peer-precision", choices=("f32", "bf16"), default="f32",
                    help="OpenVINO's INFERENCE_PRECISION_HINT (default f32; bf16 runs on a CPU with bf16)")
    ap.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default="float32",
                    help="convgen's precision (optimize(precision=...)); pair bfloat16 with --peer-precision bf16; "
                         "int8: 8 random calibration batches for convgen and for OpenVINO's QDQ network (ONNX "
                         "Runtime's static quantizer, as bench_torch.py --precision int8)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table instead of the text one")
    ap.add_argument("--csv", metavar="PATH", default=None, help="also write the rows to a CSV file")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    try:
        import torch
    except ImportError:
        print("bench_layers needs torch: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    import convgen
    import convgen.torch as ct
    import peers
    from convgen.target import get_target, host_cpu_name

    try:
        model, x = model_and_input(args.model, args.batch, args.size)
    except ValueError as e:
        print(f"bench_layers: {e}", file=sys.stderr)
        return 2
    threads = args.threads or convgen.runtime.default_num_threads()
    torch.set_num_threads(threads)
    usable, notes = peers.available(("openvino",))
    header = (f"{args.model} batch {args.batch} input {tuple(x.shape)}: {host_cpu_name()}, {threads} threads, "
              f"target {get_target('host').name}; convgen {convgen.__version__} ({args.precision}); "
              + (f"OpenVINO {peers.installed()['openvino']} "
                 f"({'int8 QDQ' if args.precision == 'int8' else args.peer_precision})" if usable else "no OpenVINO")
              + f"; mean of {args.rounds} rounds")
    print("# " + header, flush=True)
    for note in notes:
        print(f"note: {note}", flush=True)

    calibration = [torch.randn_like(x) for _ in range(8)] if args.precision == "int8" else None
    with torch.no_grad():
        want = model(x)
        fast = ct.optimize(model, x, records=args.records, builtin_records=not args.no_builtin_records,
                           num_threads=threads, precision=args.precision, calibration=calibration)
        err = peers.relative_error(fast(x), want)
        if err > {"float32": 2e-3, "bfloat16": 2e-2}.get(args.precision, 8e-2):
            print(f"WARNING convgen: relative error {err:.1e} vs eager", file=sys.stderr)
    rows = conv_rows(model, fast, x)
    timer = ConvTimer(fast, [r.path for r in rows])

    ov = None
    node_row: dict[str, int] = {}
    unmatched: dict[str, str] = {}
    nodes: dict[str, Any] = {}
    if usable:
        try:
            if args.precision == "int8":
                found, more = peers.int8_peers(model, x, threads, calibration, perf_count=True)
                notes += more
                ov = next((p for p in found if p.name == "openvino"), None)
                for note in more:
                    print(f"note: {note}", flush=True)
            else:
                ov = peers.openvino_peer(model, x, threads, args.peer_precision, perf_count=True)
        except Exception as e:  # noqa: BLE001 - the convgen column is still worth printing
            print(f"note: OpenVINO failed on {args.model}: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                  flush=True)
    inferences = 0  # since compile: the profile's running means are over all of them
    if ov is not None:
        if ov.detail:
            print(f"note: OpenVINO: {ov.detail}", flush=True)
        err = peers.relative_error(ov.run(), want)
        inferences += 1
        if err > peers.TOLERANCE.get(ov.precision, 5e-2):
            print(f"WARNING OpenVINO: relative error {err:.1e} vs eager", file=sys.stderr)
        nodes = peers.openvino_nodes(ov.extra["compiled"])
        node_row, unmatched = match_nodes(rows, nodes)

    # steady state first: a few untimed calls of each (pages touched, pools awake, caches warm)
    with torch.no_grad():
        for _ in range(3):
            fast(x)
            if ov is not None:
                ov.run()
                inferences += 1
    timer.discard()
    before = peers.profile(ov.extra["request"]) if ov is not None else {}
    n_before = inferences
    model_s: dict[str, list[float]] = {"convgen": [], "openvino": []}

    def timed_round(timer: Any, timing: Any = contextlib.nullcontext) -> Any:
        """A round of ``interleaved_rounds``: an untimed forward (its times dropped), then a
        timed one whose times ``timer`` keeps; returns the timed forward's seconds."""
        def one() -> float:
            with timing():
                fast(x)
                timer.discard()
                t0 = time.perf_counter()
                fast(x)
                seconds = time.perf_counter() - t0
            timer.end_round()
            return seconds
        return one

    with torch.no_grad():
        inferences += interleaved_rounds(args.rounds, timed_round(timer), ov, model_s["convgen"], model_s["openvino"])
    timer.remove()
    for row in rows:
        row.convgen = timer.rounds[row.path]
        row.kernel = timer.kernel_rounds[row.path] if any(timer.kernel_rounds[row.path]) else []

    # the same again without hooks: the chains replay, each launch timed alone (ChainTimer)
    with torch.no_grad():
        for _ in range(2):
            fast(x)  # the chains record their programs again, now that no hook is on
        chains = ChainTimer(fast)
        model_s["chains"], model_s["openvino, chains rounds"] = [], []
        inferences += interleaved_rounds(args.rounds if chains.paths else 0, timed_round(chains, chains.timing),
                                         ov, model_s["chains"], model_s["openvino, chains rounds"])
    for row in rows:
        row.chained = chains.rounds.get(row.path, [])

    # OpenVINO's per-node means over the rounds (its untimed calls included: steady state too)
    other: dict[str, float] = {}  # OpenVINO's nodes outside the convolutions: type -> seconds
    if ov is not None:
        per_node = peers.profile_mean(before, n_before, peers.profile(ov.extra["request"]), inferences)
        unmatched = {name: why for name, why in unmatched.items() if name in per_node}  # those that ran
        for name in sorted(per_node, key=lambda n: nodes[n].exec_order if n in nodes else -1):
            seconds, node_type, exec_type = per_node[name]
            i = node_row.get(name)
            if i is None:
                other[node_type] = other.get(node_type, 0.0) + seconds
                continue
            row = rows[i]
            row.openvino = [(row.openvino[0] if row.openvino else 0.0) + seconds]
            row.ov_nodes.append(name)
            kind = "reorder" if nodes[name].layer_type == "Reorder" else exec_type
            if kind not in row.ov_exec:
                row.ov_exec.append(kind)
            row.ov_ops += [k for k in nodes[name].op_kinds if k not in row.ov_ops]

    report(args, header, rows, model_s, other, unmatched, ov is not None)
    return 0


def report(args: Any, header: str, rows: list[Row], model_s: dict[str, list[float]],
           other: dict[str, float], unmatched: dict[str, str], have_ov: bool) -> None:
    """Print the per-convolution table, the totals and the unmatched OpenVINO nodes; write
    the CSV if asked. Times are means over the rounds, in microseconds."""
    def us(seconds: float) -> str:
        return f"{1e6 * seconds:.0f}" if seconds == seconds else "-"

    def ratio(peer: float, mine: float) -> str:
        return f"{peer / mine:.2f}x" if peer == peer and mine == mine and peer > 0 and mine > 0 else "-"

    def exec_of(row: Row) -> str:
        return "+".join(row.ov_exec) if row.ov_exec else "-"

    def ov_of(row: Row) -> float:
        return row.openvino[0] if row.openvino else float("nan")

    table = [[r.path, r.spec, r.template, us(mean(r.convgen)), us(mean(r.kernel)), us(mean(r.chained)),
              us(ov_of(r)), exec_of(r), ratio(ov_of(r), mean(r.convgen))] for r in rows]
    head = ["convolution", "spec (as convgen runs it)", "convgen template", "convgen us", "kernel us", "in chain us",
            "OpenVINO us", "OpenVINO exec", "OpenVINO/convgen"]

    def totals(label: str, chosen: list[Row]) -> list[str]:
        cg = sum(mean(r.convgen) for r in chosen)
        kernel = sum(mean(r.kernel) for r in chosen if r.kernel)
        chained = sum(mean(r.chained) for r in chosen if r.chained)
        ov = sum(ov_of(r) for r in chosen if r.openvino) if have_ov else float("nan")
        mark = " (some unmatched)" if have_ov and not all(r.openvino for r in chosen) else ""
        part = " (some not chained)" if chained and not all(r.chained for r in chosen) else ""
        return [label, f"{len(chosen)} convolution{'s' * (len(chosen) != 1)}", "", us(cg),
                us(kernel) if kernel else "-", (us(chained) + part) if chained else "-", us(ov) + mark, "",
                ratio(ov, cg)]

    classes = sorted({r.klass for r in rows}, key=lambda k: (k not in ("1x1", "depthwise", "grouped"), k))
    summary = [totals(f"class {k}", [r for r in rows if r.klass == k]) for k in classes]
    summary.append(totals("all convolutions", rows))
    conv_cg = sum(mean(r.convgen) for r in rows)
    conv_ov = sum(ov_of(r) for r in rows if r.openvino)
    model_cg, model_ov = mean(model_s["convgen"]), mean(model_s["openvino"])
    summary.append(["rest of the model", "model time - convolutions", "", us(model_cg - conv_cg), "", "",
                    us(model_ov - conv_ov), "", ratio(model_ov - conv_ov, model_cg - conv_cg)])
    summary.append(["whole model", "a forward / an infer call, wall time", "", us(model_cg), "", "",
                    us(model_ov), "", ratio(model_ov, model_cg)])
    if model_s.get("chains"):
        chain_cg, chain_ov = mean(model_s["chains"]), mean(model_s["openvino, chains rounds"])
        summary.append(["whole model, chains replaying", "a plain forward / an infer call, wall time", "", "", "",
                        us(chain_cg), us(chain_ov), "", ratio(chain_ov, chain_cg)])

    if args.markdown:
        print(f"\n{header}\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for line in table:
            print("| " + " | ".join(c.replace("|", "/") for c in line) + " |")
        for line in summary:
            print("| " + " | ".join(f"**{c}**" if i == 0 else c for i, c in enumerate(line)) + " |")
    else:
        widths = [max(len(str(line[i])) for line in [head, *table, *summary]) for i in range(len(head))]

        def show(line: list[str]) -> str:
            return "  ".join(str(c).rjust(w) if i in (3, 4, 5, 6, 8) else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip()

        print(show(head))
        for line in table:
            print(show(line))
        print("-" * (sum(widths) + 2 * (len(widths) - 1)))
        for line in summary:
            print(show(line))
    if other:
        print("OpenVINO outside the convolutions (us per node type): "
              + ", ".join(f"{t} {1e6 * s:.0f}" for t, s in sorted(other.items(), key=lambda kv: -kv[1]) if s > 0))
    for name, why in unmatched.items():
        print(f"OpenVINO node unmatched: {name}: {why}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "class", "spec", "convgen_template", "convgen_config", "convgen_us", "kernel_us",
                        "in_chain_us", "openvino_us", "openvino_exec", "openvino_ops", "openvino_nodes",
                        "openvino_over_convgen"])
            for r in rows:
                w.writerow([r.path, r.klass, r.spec, r.template, r.config, us(mean(r.convgen)), us(mean(r.kernel)),
                            us(mean(r.chained)), us(ov_of(r)), exec_of(r), "+".join(r.ov_ops), " ".join(r.ov_nodes),
                            ratio(ov_of(r), mean(r.convgen)).rstrip("x")])
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    sys.exit(main())
