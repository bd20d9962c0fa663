"""An on-disk cache of compiled kernels, and parallel builds into it.

Compiling one kernel takes seconds; a network has dozens of distinct convolutions, and a
model is optimized again every time its program starts. :func:`kernels` resolves each
spec's config (records, shipped records, default), looks the library up in the cache and
builds only what is missing, in parallel worker processes (TVM's popen pool, one per CPU),
then loads everything with the runtime.

A cached library is named by a digest of everything that decides its machine code: the
spec, the target's description, the template, its version and config, the TVM version and
convgen's own source (compute, templates, builder), so a changed template never serves an
old binary. Files are written to a temporary name and renamed into place: a killed build
leaves no half library behind, and two processes building the same kernel both succeed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .knobs import Config
from .peak import cache_dir
from .runtime import Kernel, load
from .spec import ConvSpec
from .target import Target, get_target
from .workers import die_with_parent


@functools.cache
def source_digest() -> str:
    """Digest of convgen's Python source and target files (the code that generates kernels)."""
    import convgen.schedules

    h = hashlib.sha256()
    roots = [Path(__file__).parent, Path(convgen.schedules.__file__).parent]
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".toml") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def kernel_key(spec: ConvSpec, target: Target, template: Any, config: Config) -> str:
    """The cache name of the library for (spec, target, template, config)."""
    import tvm

    blob = json.dumps([spec.key, target.to_dict(), template.name, template.version, config, tvm.__version__,
                       source_digest()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def default_folder() -> str:
    """Where compiled kernels are kept (``<convgen cache>/kernels``)."""
    return os.path.join(cache_dir(), "kernels")


def build_into(spec: dict, target: dict, template: str, config: Config, path: str, source: str) -> str:
    """Build one kernel and write it to ``path`` (atomically); the worker function of
    :func:`kernels`. Returns ``path``."""
    from .builder import build

    kernel = build(ConvSpec.from_dict(spec), Target.from_dict(target), config, template=template)
    kernel.meta["config_source"] = source
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=os.path.dirname(path))
    os.close(fd)
    try:
        kernel.export(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def kernels(specs: Sequence[ConvSpec], target: str | Target = "host", *, records: Any = None,
            builtin_records: bool = True, num_threads: int | None = None, folder: str | None = None,
            parallel: int | None = None, timeout: float = 600.0) -> list[Kernel | Exception]:
    """One loaded :class:`~convgen.runtime.Kernel` per spec, built where the cache has none.

    Configs come as :func:`convgen.build` chooses them (``records``, then the shipped
    records, then the template's default, with stand-ins: :meth:`ConvSpec.stand_ins`).
    Missing libraries are built ``parallel`` at a time (default: one per CPU; 1 builds in
    this process). A spec that fails to build gives its exception in its place, so one bad
    layer does not stop a network.
    """
    from .builder import resolve_config
    from .runtime import default_num_threads

    target = get_target(target)
    folder = folder or default_folder()
    os.makedirs(folder, exist_ok=True)
    out: list[Kernel | Exception | None] = [None] * len(specs)
    todo: dict[str, tuple[list[int], tuple]] = {}  # library path -> (spec indices, build_into's arguments)
    for i, spec in enumerate(specs):
        try:
            tmpl, config, source = resolve_config(spec, target, None, None, records, builtin_records)
        except Exception as e:  # noqa: BLE001 - no template serves it, a dtype the target lacks
            out[i] = e
            continue
        path = os.path.join(folder, kernel_key(spec, target, tmpl, config) + ".so")
        if path in todo:
            todo[path][0].append(i)
            continue
        todo[path] = ([i], (spec.to_dict(), target.to_dict(), tmpl.name, config, path, source))
    missing = [(path, job) for path, (_, job) in todo.items() if not os.path.exists(path)]
    n_workers = min(parallel or default_num_threads(), len(missing))
    errors: dict[str, Exception] = {}
    if n_workers > 1:
        from tvm.support.popen_pool import PopenPoolExecutor

        pool = PopenPoolExecutor(max_workers=n_workers, timeout=timeout, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, initializer=die_with_parent, initargs=(os.getpid(),))
        try:
            futures = [(path, pool.submit(build_into, *job)) for path, job in missing]
            for path, fut in futures:
                try:
                    fut.result()
                except Exception as e:  # noqa: BLE001 - a failed build: that layer only
                    errors[path] = e
        finally:
            pool.shutdown(wait=False)
    else:
        for path, job in missing:
            try:
                build_into(*job)
            except Exception as e:  # noqa: BLE001
                errors[path] = e
    for path, (indices, job) in todo.items():
        try:
            result: Kernel | Exception = errors[path] if path in errors else load(path, num_threads=num_threads)
        except Exception:  # noqa: BLE001 - a damaged cache file: rebuild it here, once
            try:
                os.unlink(path)
                result = load(build_into(*job), num_threads=num_threads)
            except Exception as e2:  # noqa: BLE001
                result = e2
        for i in indices:
            out[i] = result
    return out  # type: ignore[return-value]
