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
leaves no half library behind, and two processes building the same kernel both succeed. A
file is trusted for what its metadata says, not for its name: one whose spec, template,
version, config, target or TVM differ from what was asked (a swapped or copied file) is
rebuilt, as is one that does not load. A cache folder that cannot be written degrades to a
temporary folder of the process, with one warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

from .errors import KernelError
from .knobs import Config
from .peak import cache_dir
from .runtime import Kernel, load
from .spec import ConvSpec
from .target import Target, get_target
from .workers import popen_pool


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
    return write_atomically(path, kernel.export)


def write_atomically(path: str, write: Any) -> str:
    """``write(tmp)`` a library to a temporary name beside ``path``, then rename it into place:
    a killed build leaves no half library, and two processes writing one both succeed."""
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=os.path.dirname(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def usable_folder(folder: str) -> str:
    """``folder`` if kernels can be cached there, else a temporary folder of this process.

    A cache that cannot be written (read-only, a file in its place, no permission) must not
    take a model down with it: the kernels are built into a folder of this process instead
    (deleted at exit), and one warning names the path and why.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)  # writable, not just present
        os.close(fd)
        os.unlink(probe)
        return folder
    except OSError as e:
        why = e.strerror or str(e)
    if folder not in _WARNED:
        _WARNED.add(folder)
        warnings.warn(f"convgen: the kernel cache {folder} cannot be used ({why}); building kernels into a "
                      "temporary folder for this process instead (they are built again next time)",
                      CacheWarning, stacklevel=3)
    return _temporary_folder()


class CacheWarning(UserWarning):
    """The kernel cache cannot be used; kernels are built without it."""


_WARNED: set[str] = set()
_TEMPORARY: list[str] = []


def _temporary_folder() -> str:
    if not _TEMPORARY:
        import atexit
        import shutil

        _TEMPORARY.append(tempfile.mkdtemp(prefix="convgen-kernels-"))
        atexit.register(shutil.rmtree, _TEMPORARY[0], True)  # loaded libraries live on as private copies
    return _TEMPORARY[0]


def mismatch(kernel: Kernel, spec: ConvSpec, target: Target, template: Any, config: Config) -> str | None:
    """What a cached kernel's own metadata says differently from what was asked (``None``:
    nothing). A file is named by a digest of what it should hold; this checks what it does
    hold, so a file copied, swapped or written by a buggy build under another's name never
    serves the wrong convolution."""
    import tvm

    meta = kernel.meta
    asked = {"spec_key": spec.key, "template": template.name, "template_version": template.version,
             "config": dict(config), "target_desc": target.to_dict(), "tvm": tvm.__version__}
    wrong = [key for key, value in asked.items() if meta.get(key) != value]
    return ", ".join(f"{key} {meta.get(key)!r} (asked {asked[key]!r})" for key in wrong) or None


def kernels(specs: Sequence[ConvSpec], target: str | Target = "host", *, records: Any = None,
            builtin_records: bool = True, num_threads: int | None = None, folder: str | None = None,
            parallel: int | None = None, timeout: float = 600.0) -> list[Kernel | Exception]:
    """One loaded :class:`~convgen.runtime.Kernel` per spec, built where the cache has none.

    Configs come as :func:`convgen.build` chooses them (``records``, then the shipped
    records, then the template's default, with stand-ins: :meth:`ConvSpec.stand_ins`).
    Missing libraries are built ``parallel`` at a time (default: one per CPU; 1 builds in
    this process). A spec that fails to build gives its exception in its place, so one bad
    layer does not stop a network. A cached file whose metadata disagrees with what was
    asked (:func:`mismatch`), or that does not load, is rebuilt; a cache folder that cannot
    be written is replaced by a temporary one, with a :class:`CacheWarning`.
    """
    from .builder import resolve_config
    from .runtime import default_num_threads

    target = get_target(target)
    folder = usable_folder(folder or default_folder())
    out: list[Kernel | Exception | None] = [None] * len(specs)
    # library path -> (spec indices, build_into's arguments, (template, config))
    todo: dict[str, tuple[list[int], tuple, tuple]] = {}
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
        todo[path] = ([i], (spec.to_dict(), target.to_dict(), tmpl.name, config, path, source), (tmpl, config))
    missing = [(path, job) for path, (_, job, _) in todo.items() if not os.path.exists(path)]
    n_workers = min(parallel or default_num_threads(), len(missing))
    errors: dict[str, Exception] = {}
    if n_workers > 1:
        pool = popen_pool(n_workers, timeout)
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
    for path, (indices, job, (tmpl, config)) in todo.items():
        spec = specs[indices[0]]
        try:
            if path in errors:
                raise errors[path]
            result: Kernel | Exception = _load_checked(path, spec, target, tmpl, config, num_threads)
        except Exception as e:  # noqa: BLE001 - a failed build, or a damaged or foreign cache file
            result = e
            if path not in errors:  # rebuild it here, once
                try:
                    os.unlink(path)
                    result = _load_checked(build_into(*job), spec, target, tmpl, config, num_threads)
                except Exception as e2:  # noqa: BLE001
                    result = e2
        if isinstance(result, Kernel):
            result.meta["config_source"] = job[-1]  # where the config came from this time
        for i in indices:
            out[i] = result
    return out  # type: ignore[return-value]


def _load_checked(path: str, spec: ConvSpec, target: Target, template: Any, config: Config,
                  num_threads: int | None) -> Kernel:
    kernel = load(path, num_threads=num_threads)
    why = mismatch(kernel, spec, target, template, config)
    if why:
        raise KernelError(f"{path}: the cached kernel is not the one asked for ({why})")
    return kernel
