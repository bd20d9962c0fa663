"""Runs of convgen convolutions called as one module: :class:`ConvChain`.

Inside an optimized CNN almost every convolution reads only what other convgen layers wrote
into their reused output buffers (:func:`convgen.torch.mark_reused_outputs`), so in steady
state a forward launches the same kernels on the same tensors every time. Each layer's call
still costs Python around its kernel: fx's ``getattr`` chain to reach the module, the
module's call, the checks of its replayed launch (:class:`~convgen.torch._module._Fast`).
Measured inside MobileNet-v2's bf16 forward on the 2-vCPU Zen 5 of this project: 52 such
layers called one by one took 1,429 us, their launches alone 1,195 us: ~4.5 us a layer,
a tenth of the model's time (its kernels are 10-80 us), where OpenVINO's graph pays none.

:func:`chain_layers` replaces each run of consecutive such layers in the graph (a network's
whole body: ResNet-50's and MobileNet-v2's 52 convolutions after the stem) with one
:class:`ConvChain` call. Its first call runs the layers one by one, as the graph did, and
records their launches (each layer's own replay record); later calls check once what holds
for every layer (the thread, no autograd, no global hooks, the same input tensors) and per
layer only what can change under it (its weights and bias, its replay record, hooks on it or
its readers), then launch the kernels back to back. A layer that did not replay its launch
(an int8 layer quantizing a float input into a fresh tensor) is called in its place among
them. Whatever fails a check runs the layers one by one again, exactly as without the
chain: hooks fire, changed weights are repacked, autograd and tracing see the layers
themselves. Measured in one process on the Zen 5 (with the input's layout change on a
kernel, :func:`convgen.torch._pool.replace_layout_changes`): MobileNet-v2 bf16 0.76x the
time, ResNet-50 bf16 0.95x, ResNet-50 int8 (20 of its 52 chained layers called) 0.98x.

A replay writes the values only later layers of the chain read into a few buffers shared by
liveness (:class:`_SharedBuffers`), so each kernel stores into memory the layers just before
it touched rather than a buffer of its own, cold since the last forward. In one process on
the Zen 5 against replays into the layers' own buffers: MobileNet-v2 fp32 0.83x the time,
bf16 0.95x, ResNet-50 int8 0.92x, ResNet-50 fp32 and bf16 0.99x; the outputs bit for bit
the same.

A CNN's head after its body (global average pooling, flatten, Dropouts, the classifier) joins
the chain as its *tail*: launched right after the last layer, with no Python between. Called
one by one after a body whose weights (ResNet-50's 100 MB) push the interpreter's and torch's
own code and data out of the caches, the pooling's call took 95 us for a 15 us kernel (the
kernel alone, launched there: 4 us of call). The classifier's output is the model's, so the
chain returns a copy of its buffer. In one process on the Zen 5 against the head called one
by one: ResNet-50 fp32 0.994x the time, int8 0.978x, MobileNet-v2 fp32 0.985x.
"""

from __future__ import annotations

import collections
import operator
import threading
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.autograd.graph import increment_version
from torch.nn.modules import module as torch_module

from ..runtime import Launches
from ._graph import free_path
from ._module import Conv2d, Linear
from ._pool import Pool2d, PoolCall


class ConvChain(nn.Module):
    """Consecutive convgen layers of one forward, called as one: ``forward(*entries)`` runs
    ``layers[i](values[x_i], values[r_i])`` in order, where ``values`` are the entries followed
    by each layer's output, and returns the outputs read after the chain (``exits``: one
    tensor, or a tuple of them). The layers stay submodules of the model at their own paths
    (its ``state_dict`` unchanged); the chain only calls them."""

    def __init__(self, layers: list[Conv2d], wiring: list[tuple[int, int | None]], exits: list[int],
                 tail: tuple | None = None) -> None:
        super().__init__()
        # a plain tuple, not registered: the layers' parameters belong to their own paths
        self.layers = tuple(layers)
        self.wiring, self.exits = list(wiring), list(exits)
        # (global average pooling, [eval-mode identities: Dropout], classifier) after the one
        # exit: the chain then returns the classifier's output, a fresh copy (see chain_layers)
        self.tail = tail
        self._program: _Program | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_program"] = None  # launches of this process's buffers: recorded again after a copy
        return state

    def extra_repr(self) -> str:
        return f"{len(self.layers)} layers"

    def forward(self, *entries: torch.Tensor) -> Any:
        if torch.compiler.is_compiling():  # traced: the layers themselves, nothing recorded
            return self._one_by_one(entries, record=False)
        program = self._program
        if program is not None and program.holds(self, entries):
            return program.run(self)
        return self._one_by_one(entries)

    def _one_by_one(self, entries: tuple, record: bool = True) -> Any:
        values = list(entries)
        for layer, (x, r) in zip(self.layers, self.wiring):
            values.append(layer(values[x], None if r is None else values[r]))
        tail = self._run_tail(values[self.exits[0]]) if self.tail else None
        if record:
            self._program = _Program.record(self, entries, values, tail)
        return self._result(values, tail)

    def _run_tail(self, y: torch.Tensor) -> torch.Tensor:
        """The pooling, flatten, identities and classifier after the chain, as the graph ran them."""
        pool, between, linear = self.tail
        y = torch.flatten(pool(y), 1)
        for m in between:
            y = m(y)
        return linear(y)

    def _result(self, values: list, tail: torch.Tensor | None) -> Any:
        if self.tail:  # the classifier writes its reused buffer: the caller gets its own copy
            return tail.clone()
        found = [values[i] for i in self.exits]
        return found[0] if len(found) == 1 else tuple(found)


class _Program:
    """A chain's launches as its last call made them. A layer that replayed its own launch
    (:class:`~convgen.torch._module._Fast`) on the tensors the chain passed it is launched
    again; a layer that did not (an int8 layer quantizing a float input, say) is called
    again, as the graph would call it, and must return the same tensor as then (its reused
    buffer), or the layers after it run one by one."""

    __slots__ = ("thread", "entries", "ptrs", "shapes", "steps", "watched", "segments", "outs", "values", "result",
                 "tail")

    @classmethod
    def record(cls, chain: ConvChain, entries: tuple, values: list, tail: Any = None) -> "_Program | None":
        """The program of the call that made ``values`` (and ``tail``, the classifier's output
        where the chain has a tail), or ``None`` where no layer ran a replayable launch
        (autograd, tracing, hooks)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or any(type(e) is not torch.Tensor for e in entries):
            return None
        thread = threading.get_ident()
        replayed = {i for i, (layer, (x, r)) in enumerate(zip(chain.layers, chain.wiring))
                    if _replays(layer._fast, thread, values[x], None if r is None else values[r],
                                values[len(entries) + i])}
        if not replayed:
            return None
        share = _SharedBuffers(chain, len(entries), values, replayed)
        steps, segments, group = [], [], []
        for i, (layer, (x, r)) in enumerate(zip(chain.layers, chain.wiring)):
            fast, residual, result = layer._fast, None if r is None else values[r], values[len(entries) + i]
            if i not in replayed:
                if group:
                    segments.append(group)
                    group = []
                segments.append((i, layer, share(values[x]), share(residual), result))
                continue
            # what holds() compares, gathered once: ~1.2 us a layer, most of it the weight samples
            version = None if fast.bias is None or fast.bias.is_inference() else fast.bias_version
            steps.append((layer, layer._parameters, fast, fast.weight, fast.bias, version, fast.watch))
            group.append(fast)
        if not steps:
            return None
        pool_record = _tail_replays(chain, thread, values[chain.exits[0]], tail) if chain.tail else None
        if pool_record is not None:
            # the pooling and classifier launched right after the layers, no Python between
            # them (see the module docstring); the last group becomes (launch, args) pairs
            fast = chain.tail[2]._fast
            version = None if fast.bias is None or fast.bias.is_inference() else fast.bias_version
            steps.append((chain.tail[2], chain.tail[2]._parameters, fast, fast.weight, fast.bias, version, fast.watch))
            group = [(launch, tuple(share(a) for a in args)) for f in group for launch, args in f.launches()]
            group += [(pool_record.launch, pool_record.args)] + fast.launches()
        if group:
            segments.append(group)
        program = cls()
        program.thread, program.entries = thread, entries
        program.ptrs = tuple(e.data_ptr() for e in entries)
        program.shapes = tuple(e.shape for e in entries)
        program.steps = steps
        # whose hooks could see a layer's output: the layer's and its readers' (as _hooked)
        watched = {id(m): m for layer in chain.layers for m in (layer, *layer._readers)}
        if chain.tail:
            watched.update({id(m): m for m in (chain.tail[0], *chain.tail[1], chain.tail[2])})
        program.watched = tuple(watched.values())

        def launches(i: int, seg: list) -> Launches:
            if i == len(segments) - 1 and pool_record is not None:  # (launch, args) pairs, shared already
                return Launches(seg)
            return Launches([(launch, tuple(share(a) for a in args)) for f in seg for launch, args in f.launches()])

        program.segments = [launches(i, seg) if isinstance(seg, list) else seg for i, seg in enumerate(segments)]
        program.outs = [share(step[2].out) for step in steps] + ([pool_record.args[1]] if pool_record else [])
        program.values = [share(v) for v in values]
        found = [values[i] for i in chain.exits]
        program.result = found[0] if len(found) == 1 else tuple(found)
        # the classifier's output the replay rewrites (None: the tail is called after it)
        program.tail = tail if pool_record is not None else None
        return program

    def holds(self, chain: ConvChain, entries: tuple) -> bool:
        """Would replaying give what calling the layers one by one gives? The per-layer
        checks of ``_Fast.holds``, those common to all layers made once."""
        if threading.get_ident() != self.thread or torch.is_grad_enabled():
            return False
        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return False
        if len(entries) != len(self.entries):
            return False
        for e, was, ptr, shape in zip(entries, self.entries, self.ptrs, self.shapes):
            if e is not was or e.data_ptr() != ptr or e.shape != shape:
                return False
        for m in self.watched:
            if m._forward_hooks or m._forward_pre_hooks:
                return False
        if chain.tail and any(m.training for m in chain.tail[1]):  # a Dropout in training mode
            return False
        for layer, params, fast, weight, bias, version, watch in self.steps:
            if layer._fast is not fast or params["weight"] is not weight or params.get("bias") is not bias:
                return False
            if version is not None and bias._version != version:
                return False
            if watch.changed(weight):
                return False
        return True

    def run(self, chain: ConvChain) -> Any:
        for segment in self.segments:
            if type(segment) is Launches:
                segment()
                continue
            i, layer, x, residual, result = segment
            y = layer(x, residual)
            if y is not result:  # not its reused buffer this time: the rest one by one, on y
                return self._finish(chain, i, y)
        increment_version(self.outs)  # new values: caches keyed on (tensor, version) see them
        if chain.tail:
            return chain._result(self.values, self.tail if self.tail is not None else
                                 chain._run_tail(self.values[chain.exits[0]]))
        return self.result

    def _finish(self, chain: ConvChain, i: int, y: torch.Tensor) -> Any:
        """The layers after layer ``i`` called one by one, layer ``i`` having returned ``y``;
        the chain records a new program at its next call."""
        chain._program = None
        increment_version(self.outs)
        values, n = list(self.values), len(self.entries)
        values[n + i] = y
        for j in range(i + 1, len(chain.layers)):
            x, r = chain.wiring[j]
            values[n + j] = chain.layers[j](values[x], None if r is None else values[r])
        return chain._result(values, chain._run_tail(values[chain.exits[0]]) if chain.tail else None)


def _tail_replays(chain: ConvChain, thread: int, y: torch.Tensor, tail: torch.Tensor) -> PoolCall | None:
    """The pooling's launch record, where the tail's last call (pooling ``y``, the classifier
    writing ``tail`` into its buffer from the pooling's) can be launched again as it was;
    else ``None``."""
    pool, between, linear = chain.tail
    last, fast = pool._last, linear._fast
    if last is None or last.thread != thread or last.x is not y or fast is None or fast.thread != thread:
        return None
    if any(m.training for m in between):
        return None
    if fast.result.untyped_storage().data_ptr() != tail.untyped_storage().data_ptr():
        return None
    # the classifier read the pooling's output in place (flatten and its own reshapes are views),
    # or its quantizer did (an int8 classifier)
    read = fast.pre[0][1][0] if fast.pre else fast.x
    return last if read.untyped_storage().data_ptr() == last.result.untyped_storage().data_ptr() else None


def _replays(fast: Any, thread: int, x: torch.Tensor, residual: Any, result: torch.Tensor) -> bool:
    """Did the layer's last call record a launch on exactly these tensors (on this thread)?"""
    return (fast is not None and fast.thread == thread and fast.x is x and fast.residual is residual
            and fast.result is result)


class _SharedBuffers:
    """Where a replay writes the chain's inner values: a few buffers shared by liveness.

    Each layer owns its output buffer (:func:`convgen.torch.mark_reused_outputs`), so a
    forward writes as many distinct buffers as it has layers: 52 for MobileNet-v2 at batch 1,
    26.7 MB, every one of them out of the caches again by the time the next forward writes it,
    so each kernel's stores miss (and read the line first) where OpenVINO's memory plan writes
    into what the layer before just read. A replay writes each value that only later layers of
    the chain read (not an exit, not a called layer's own result) into a buffer of this
    program instead, taken from those whose value was read for the last time: MobileNet-v2's
    52 inner values fit 4 buffers (9.8 MB), and its replay took 0.82x the time (1.80 vs
    2.19 ms, interleaved, on the 2-vCPU Zen 5). A layer's output never shares a buffer with
    its own inputs (they are released after its output is placed). The layers' own buffers
    stay what a call one by one writes; the exits stay theirs, so what the chain returns is
    the tensor it always returned.

    Calling it maps a tensor on a shared value's storage to the same view (offset, size,
    strides) of its buffer, anything else to itself.
    """

    def __init__(self, chain: ConvChain, entries: int, values: list, replayed: set[int]) -> None:
        def storage(t: Any) -> int | None:
            return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None

        owners = collections.Counter(storage(v) for v in values)  # values on each storage
        last: dict[int, int] = {}
        for j, (x, r) in enumerate(chain.wiring):
            for v in (x, r):
                if v is not None:
                    last[v] = j
        exits = set(chain.exits)
        self._plan: dict[int, torch.Tensor] = {}
        free: list[torch.Tensor] = []

        def place(t: torch.Tensor) -> torch.Tensor:
            need = -(-t.untyped_storage().nbytes() // 64) * 64  # any dtype views it whole
            fits = [b for b in free if b.numel() >= need]
            buf = min(fits, key=lambda b: b.numel()) if fits else torch.empty(need, dtype=torch.uint8)
            free[:] = [b for b in free if b is not buf]
            self._plan[storage(t)] = buf
            return buf

        for i, (x, r) in enumerate(chain.wiring):
            v, out = entries + i, values[entries + i]
            key = storage(out)
            # what the layer's own launches pass between them (an int8 layer's quantized input):
            # live from its first launch to its last, so placed before its output, freed after
            temps = []
            if i in replayed:
                temps = [place(args[-1]) for _, args in chain.layers[i]._fast.pre
                         if owners[storage(args[-1])] == 0 and storage(args[-1]) not in self._plan]
            if i in replayed and v not in exits and owners[key] == 1:
                place(out)
            free += temps
            # after its output is placed: the values this layer was the last to read
            for u in {x, r, v} - {None}:
                if last.get(u, -1) <= i and u >= entries and storage(values[u]) in self._plan:
                    buf = self._plan[storage(values[u])]
                    if all(b is not buf for b in free):
                        free.append(buf)
        self._storage = storage
        self._views: dict[tuple, torch.Tensor] = {}

    def __call__(self, t: Any) -> Any:
        buf = self._plan.get(self._storage(t)) if isinstance(t, torch.Tensor) else None
        if buf is None:
            return t
        key = (id(buf), t.dtype, tuple(t.shape), t.stride(), t.storage_offset())
        if key not in self._views:  # one view object per form: replays and caches see one tensor
            self._views[key] = buf.view(t.dtype).as_strided(t.shape, t.stride(), t.storage_offset())
        return self._views[key]


def _layer(gm: torch.fx.GraphModule, node: torch.fx.Node) -> Conv2d | None:
    """``node``'s convgen convolution if it may join a chain: called once by the graph, its
    output in a reused buffer, its inputs (data, residual) graph values."""
    if node.op != "call_module" or node.kwargs or not 1 <= len(node.args) <= 2:
        return None
    if not all(isinstance(a, torch.fx.Node) for a in node.args):
        return None
    m = gm.get_submodule(node.target)
    if not isinstance(m, Conv2d) or isinstance(m, Linear) or not m.reuse_output:
        return None
    return m


def _stable(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Is ``node``'s value the same tensor every forward (a convgen layer's reused buffer)?"""
    if node.op != "call_module":
        return False
    return bool(getattr(gm.get_submodule(node.target), "reuse_output", False))


def _head_after(gm: torch.fx.GraphModule, node: torch.fx.Node, calls: collections.Counter) -> list | None:
    """The nodes ``[pool, flatten, (Dropout ...), classifier]`` when ``node``'s only reader is a
    convgen global average pooling whose output goes only through ``flatten(., 1)`` (or
    ``nn.Flatten()``) and Dropouts into a convgen classifier (:class:`Linear`, no residual),
    each called once and read only by the next; else ``None``."""

    def only_user(n: torch.fx.Node) -> torch.fx.Node | None:
        users = list(n.users)
        return users[0] if len(users) == 1 and users[0].args[:1] == (n,) else None

    def module(n: torch.fx.Node | None, kind: type) -> Any:
        if n is None or n.op != "call_module" or calls[n.target] != 1 or n.kwargs or len(n.args) != 1:
            return None
        m = gm.get_submodule(n.target)
        return m if isinstance(m, kind) else None

    pool = only_user(node)
    if getattr(module(pool, Pool2d), "kind", None) != "avg":
        return None
    flat = only_user(pool)
    flatten = module(flat, nn.Flatten)
    if flatten is not None:
        if (flatten.start_dim, flatten.end_dim) != (1, -1):
            return None
    elif flat is None or flat.kwargs or flat.args[1:] != (1,) or not (
            (flat.op == "call_function" and flat.target is torch.flatten)
            or (flat.op == "call_method" and flat.target == "flatten")):
        return None
    found, n = [pool, flat], only_user(flat)
    while module(n, nn.Dropout) is not None:
        found.append(n)
        n = only_user(n)
    linear = module(n, Linear)
    if linear is None or linear.residual:
        return None
    return found + [n]


def chain_layers(gm: torch.fx.GraphModule, shortest: int = 2) -> list[str]:
    """Replace each run of ``shortest`` or more consecutive chainable convolutions of ``gm``'s
    graph with one :class:`ConvChain` (``convgen_chain_<i>``); returns the chains' paths.

    A convolution joins the run before it when each of its inputs is an output of that run or
    a value that is the same tensor every forward (another convgen layer's reused buffer, as
    is every output in the run): the chain's entries, checked by identity before a replay.
    A run ends at any other node, so nothing changes order.

    A run with one exit read only by a global average pooling, ``flatten(., 1)``, Dropouts and
    a convgen classifier (a CNN's head, :func:`_head_after`) takes those in as its tail: the
    chain then launches them after its layers and returns a copy of the classifier's output.
    """
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    runs: list[list[torch.fx.Node]] = [[]]
    for node in gm.graph.nodes:
        run = runs[-1]
        if _layer(gm, node) is None:
            runs.append([])
        elif all(a in run or _stable(gm, a) for a in node.args):
            run.append(node)  # (a run's own outputs are stable too: any stable input may start one)
        else:  # reads a fresh tensor made inside the forward: no run takes it
            runs.append([])
    paths = []
    for run in runs:
        if len(run) < shortest:
            continue
        inside = set(run)
        entries: list[torch.fx.Node] = []
        for node in run:
            for a in node.args:
                if a not in inside and a not in entries:
                    entries.append(a)
        index = {node: i for i, node in enumerate(entries)}
        index.update({node: len(entries) + i for i, node in enumerate(run)})
        wiring = [(index[n.args[0]], index[n.args[1]] if len(n.args) > 1 else None) for n in run]
        exits = [n for n in run if any(u not in inside for u in n.users)]
        head = _head_after(gm, exits[0], calls) if len(exits) == 1 else None
        tail = None
        if head:
            pool, *between, linear = (gm.get_submodule(n.target) for n in head if n is not head[1])
            # the pooling's and classifier's outputs stay inside the chain, which returns a copy
            pool.reuse_output, pool._readers, linear.reuse_output = True, (linear,), True
            tail = (pool, tuple(between), linear)
        chain = ConvChain([gm.get_submodule(n.target) for n in run], wiring, [index[n] for n in exits], tail)
        path = free_path(gm, "convgen_chain")
        gm.add_submodule(path, chain)
        with gm.graph.inserting_before(run[0]):
            call = gm.graph.call_module(path, tuple(entries))
        call.meta = dict((head or run)[-1].meta)
        if head:
            head[-1].replace_all_uses_with(call)
            for node in reversed(head):
                gm.graph.erase_node(node)
        elif len(exits) == 1:
            exits[0].replace_all_uses_with(call)
        else:
            for i, node in enumerate(exits):
                with gm.graph.inserting_after(call):
                    item = gm.graph.call_function(operator.getitem, (call, i))
                item.meta = dict(node.meta)
                node.replace_all_uses_with(item)
        for node in reversed(run):
            gm.graph.erase_node(node)
        paths.append(path)
    return paths
