"""Tuning records: JSON lines, one per trial, safe to append from several tuners at once.

One line::

    {"v": 1, "spec": {...}, "spec_key": "...", "target": "x86-avx2",
     "template": "x86.direct", "template_version": 1, "space_hash": "...",
     "config": {...}, "result": {"median_s": ..., "times_s": [...], "gflops": ...,
     "error": null | "build" | "run" | "timeout" | "crash" | "wrong_result" | ...,
     "message": "..."}, "tvm": "0.27.0.post1", "host_cpu": "...", "time": "...Z"}

Appends take an exclusive ``flock`` and write the whole line with one ``write`` on an
``O_APPEND`` descriptor, then ``fsync``: two tuners can share a file and a crash loses at
most the trial being written. A truncated or corrupt line is skipped with a warning.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Iterator

from .knobs import Config, config_key
from .spec import ConvSpec
from .target import Target

FORMAT = 1


@dataclass
class Record:
    """One trial as read back from a file."""

    data: dict[str, Any]

    @property
    def spec_key(self) -> str:
        return self.data["spec_key"]

    @property
    def target(self) -> str:
        return self.data["target"]

    @property
    def template(self) -> str:
        return self.data["template"]

    @property
    def space_hash(self) -> str:
        return self.data.get("space_hash", "")

    @property
    def config(self) -> Config:
        return self.data["config"]

    @property
    def error(self) -> str | None:
        return self.data.get("result", {}).get("error")

    @property
    def ok(self) -> bool:
        return self.error is None and self.median is not None

    @property
    def median(self) -> float | None:
        return self.data.get("result", {}).get("median_s")

    @property
    def gflops(self) -> float | None:
        return self.data.get("result", {}).get("gflops")

    @property
    def spec(self) -> ConvSpec:
        return ConvSpec.from_dict(self.data["spec"])

    def trial_key(self) -> tuple[str, str, str, str, str]:
        """What makes two records measurements of the same candidate."""
        return (self.spec_key, self.target, self.template, self.space_hash, config_key(self.config))


def make_record(spec: ConvSpec, target: Target, template: Any, config: Config, *, times: list[float] | None = None,
                error: str | None = None, message: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record dict for one trial (``times`` in seconds; ``error`` a short kind)."""
    import tvm

    from .target import host_cpu_name

    result: dict[str, Any] = {"error": error, "message": message[:2000]}
    if times:
        median = sorted(times)[len(times) // 2]
        result.update(median_s=median, times_s=list(times), gflops=spec.flops / median / 1e9)
    rec = {
        "v": FORMAT,
        "spec": spec.to_dict(),
        "spec_key": spec.key,
        "target": target.name,
        "template": template.name,
        "template_version": template.version,
        "space_hash": template.space(spec, target).hash,
        "config": config,
        "result": result,
        "tvm": tvm.__version__,
        "host_cpu": host_cpu_name(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        rec.update(extra)
    return rec


def append(path: str, records: Iterable[dict[str, Any]]) -> None:
    """Append records atomically (one locked write per record, then fsync)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for rec in records:
            line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                _ensure_newline(fd)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _ensure_newline(fd: int) -> None:
    # A writer killed mid-line leaves a fragment; start on a fresh line so only that
    # fragment is lost, not the next record too.
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


def read(paths: str | Iterable[str], *, warn: bool = True) -> Iterator[Record]:
    """Records from one or more files; corrupt or truncated lines are skipped with a warning."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    data = json.loads(raw)
                    if not isinstance(data, dict) or data.get("v") != FORMAT:
                        raise ValueError("not a convgen record")
                    for key in ("spec_key", "target", "template", "config", "result"):
                        data[key]  # noqa: B018 - presence check
                except (ValueError, KeyError, TypeError) as e:
                    if warn:
                        warnings.warn(f"{path}:{lineno}: skipping a corrupt record ({e})", RecordWarning, stacklevel=2)
                    continue
                yield Record(data)


class RecordWarning(UserWarning):
    """A record line could not be read."""


def _aggregate(records: Iterable[Record]) -> dict[tuple, tuple[float, Record]]:
    """Per measured candidate (trial key): the median of its timings and one of its records.

    A candidate timed several times (the tuner re-times each layer's leaders) is judged by
    the median over all its timings; one that ever failed or gave a wrong result is out.
    """
    import statistics

    times: dict[tuple, list[float]] = {}
    first: dict[tuple, Record] = {}
    bad: set[tuple] = set()
    for r in records:
        k = r.trial_key()
        first.setdefault(k, r)
        if not r.ok or r.data.get("verified") is False:
            bad.add(k)
        else:
            times.setdefault(k, []).append(r.median)
    return {k: (statistics.median(v), first[k]) for k, v in times.items() if k not in bad}


def best_records(records: Iterable[Record]) -> dict[tuple[str, str], tuple[float, Record]]:
    """``(median seconds, record)`` of the fastest valid candidate per (spec key, target)."""
    best: dict[tuple[str, str], tuple[float, Record]] = {}
    for cost, r in _aggregate(records).values():
        k = (r.spec_key, r.target)
        if k not in best or cost < best[k][0]:
            best[k] = (cost, r)
    return best


def best_config(spec: ConvSpec, target: Target, paths: str | list[str], *, template: str | None = None):
    """``(template, config)`` of the fastest valid candidate for ``spec`` on ``target``, or ``None``.

    Valid: measured without error, never marked wrong, and made against the template's
    current space (same space hash), so a config from an older template version is never
    applied. A candidate timed several times counts with the median of its timings.
    """
    from convgen.schedules import all_templates

    templates = all_templates()
    mine = [r for r in read(paths) if r.spec_key == spec.key and r.target == target.name
            and (template is None or r.template == template)]
    best = None
    for cost, r in _aggregate(mine).values():
        tmpl = templates.get(r.template)
        if tmpl is None or tmpl.supports(spec, target) is not None:
            continue
        space = tmpl.space(spec, target)
        if space.hash != r.space_hash or r.config not in space:
            continue
        if best is None or cost < best[0]:
            best = (cost, r, tmpl)
    return None if best is None else (best[2], dict(best[1].config))


def builtin_record_files() -> list[str]:
    """Tuning logs shipped inside the package (``convgen/tuned/*.jsonl``), like TVM's TopHub."""
    try:
        folder = resources.files("convgen") / "tuned"
        return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".jsonl"))
    except (FileNotFoundError, NotADirectoryError):
        return []
