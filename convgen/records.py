"""Tuning records: JSON lines, one per trial, safe to append from several tuners at once.

One line::

    {"v": 1, "spec": {...}, "spec_key": "...", "target": "x86-avx2",
     "template": "x86.direct", "template_version": 1, "space_hash": "...",
     "config": {...}, "result": {"median_s": ..., "times_s": [...], "gflops": ...,
     "error": null | "build" | "run" | "timeout" | "crash" | "wrong_result" | ...,
     "message": "..."}, "tvm": "0.27.0.post1", "host_cpu": "...", "time": "...Z"}

Appends take an exclusive ``flock`` and write the whole line with one ``write`` on an
``O_APPEND`` descriptor, then ``fsync``: two tuners can share a file and a crash loses at
most the trial being written. :func:`rewrite` (``convgen records prune/merge`` in place)
holds the same lock while it reads and atomically replaces the file, and an appender that
waited on the replaced file reopens the new one. A truncated or corrupt line is skipped
with a warning.
"""

from __future__ import annotations

import datetime
import enum
import fcntl
import json
import math
import os
import stat
import statistics
import tempfile
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import ErrorKind
from .knobs import Config, config_key
from .spec import ConvSpec
from .target import Target, TargetError
from .version import minor_version

FORMAT = 1
#: the timing condition of the tuner's default on CPUs (``MeasureOptions.timing``): records
#: timed so rank before the others of a workload (which were timed hotter: faster, but not
#: as the kernel runs inside a network)
TIMING = "args"

class Outcome(enum.Enum):
    """What one measurement says about its candidate (:func:`outcome`)."""

    TIMED = "timed"            # a good timing
    FAILED = "failed"          # any error, no timing, or a wrong result: the candidate is out for good
    NO_VERDICT = "no_verdict"  # nothing ran (the device was unreachable): counts neither way


def outcome(error: str | None, cost: float | None, verified: bool | None) -> Outcome:
    """The one rule by which records, the campaign and ``records prune`` judge a measurement:
    an error of a kind that says nothing about the config (:attr:`ErrorKind.says_nothing`) is
    no verdict; any other error, a missing timing or a failed check fails the candidate, and a
    candidate that *ever* failed stays out, however fast its other timings."""
    if error == ErrorKind.DEVICE:
        return Outcome.NO_VERDICT
    if error is not None or cost is None or verified is False:
        return Outcome.FAILED
    return Outcome.TIMED


def median(times: Sequence[float]) -> float:
    """The cost of a candidate from its timings: their median (the mean of the two middle
    ones for an even count). The one definition the records, the campaign and the measurer
    share, so they rank candidates alike."""
    return statistics.median(times)


@dataclass
class Record:
    """One trial as read back from a file (``path``: which one, when read from a file)."""

    data: dict[str, Any]
    path: str = ""

    @property
    def spec_key(self) -> str:
        """The workload's :attr:`ConvSpec.key <convgen.spec.ConvSpec.key>`."""
        return self.data["spec_key"]

    @property
    def target(self) -> str:
        """Name of the target the trial was measured for."""
        return self.data["target"]

    @property
    def template(self) -> str:
        """Name of the schedule template."""
        return self.data["template"]

    @property
    def space_hash(self) -> str:
        """Hash of the template's knob space the config belongs to (``""`` if unknown)."""
        return self.data.get("space_hash", "")

    @property
    def config(self) -> Config:
        """The knob values measured."""
        return self.data["config"]

    @property
    def error(self) -> str | None:
        """The error kind (``"build"``, ``"wrong_result"``, ...), ``None`` for a good trial."""
        return self.data.get("result", {}).get("error")

    @property
    def ok(self) -> bool:
        """Measured without error (it may still be marked ``"verified": false``)."""
        return self.error is None and self.median is not None

    @property
    def median(self) -> float | None:
        """Median seconds per call of this trial, ``None`` if it failed."""
        return self.data.get("result", {}).get("median_s")

    @property
    def outcome(self) -> Outcome:
        """What this trial says about its candidate (:func:`outcome`)."""
        return outcome(self.error, self.median, self.data.get("verified"))

    @property
    def spec(self) -> ConvSpec:
        """The workload, parsed."""
        return ConvSpec.from_dict(self.data["spec"])

    @property
    def tvm_minor(self) -> tuple[int, ...] | None:
        """``(major, minor)`` of the TVM the trial was built with (``None`` if unrecorded)."""
        return minor_version(self.data.get("tvm"))

    @property
    def timing(self) -> str | None:
        """How the trial was timed (``MeasureOptions.timing``: ``"args"``, ``"flush:N"``,
        ``"hot"``); ``None`` for records older than the field (a flush of twice the L2 on
        CPUs by default then)."""
        return self.data.get("timing")

    def trial_key(self) -> tuple[str, str, str, str, str, str | None]:
        """What makes two records measurements of the same candidate (under one timing
        condition: a config timed under two is two candidates whose times do not compare)."""
        return (self.spec_key, self.target, self.template, self.space_hash, config_key(self.config), self.timing)


def provenance(spec: ConvSpec, target: Target, template: Any, config: Config) -> dict[str, Any]:
    """Where a kernel or a measurement comes from: the workload, the target, the template and
    the version of its space, the config, the software, the machine and the time. Records
    (:func:`make_record`) and kernel metadata (:func:`convgen.builder.metadata`) both carry it."""
    import tvm

    from .target import host_cpu_name
    from .version import __version__

    try:
        import tvm_ffi

        ffi_version = tvm_ffi.__version__
    except (ImportError, AttributeError):
        ffi_version = "unknown"
    return {
        "spec": spec.to_dict(),
        "spec_key": spec.key,
        "target": target.name,
        "template": template.name,
        "template_version": template.version,
        "space_hash": template.space(spec, target).hash,
        "config": dict(config),
        "tvm": tvm.__version__,
        "tvm_ffi": ffi_version,
        "convgen": __version__,
        "host_cpu": host_cpu_name(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def make_record(spec: ConvSpec, target: Target, template: Any, config: Config, *, times: list[float] | None = None,
                error: str | None = None, message: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record dict for one trial (``times`` in seconds; ``error`` a short kind)."""
    result: dict[str, Any] = {"error": error, "message": message[:2000]}
    if times:
        cost = median(times)
        result.update(median_s=cost, times_s=list(times), gflops=spec.flops / cost / 1e9)
    rec = {"v": FORMAT, **provenance(spec, target, template, config), "result": result}
    if extra:
        rec.update(extra)
    return rec


def append(path: str, records: Iterable[dict[str, Any]]) -> None:
    """Append records atomically (one locked write per record, then fsync)."""
    check_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    flags = os.O_RDWR | os.O_APPEND
    fd = os.open(path, flags | os.O_CREAT, 0o644)
    try:
        for rec in records:
            line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode()
            fd = _lock_current(path, fd, flags)
            try:
                _ensure_newline(fd)
                write_all(fd, line)
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def rewrite(path: str, produce: Callable[[], Iterable[dict[str, Any]]]) -> int:
    """Replace the records in ``path`` with ``produce()``'s, atomically; returns their number.

    ``produce`` runs while this holds the lock appenders take, so it may read ``path``
    without an append slipping in between the read and the replace; the new file is
    written to a temporary, fsynced, then renamed over ``path``.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fd = _lock_current(path, fd, os.O_RDONLY)
        datas = list(produce())
        # a fresh name in the same folder, created exclusively (O_EXCL: a symlink or file
        # planted under a guessable name is never followed or overwritten)
        tmp_fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                       dir=os.path.dirname(os.path.abspath(path)))
        try:
            try:
                os.fchmod(tmp_fd, stat.S_IMODE(os.fstat(fd).st_mode))
                write_all(tmp_fd, b"".join((json.dumps(d, sort_keys=True, default=str) + "\n").encode() for d in datas))
                os.fsync(tmp_fd)
            finally:
                os.close(tmp_fd)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(path)
    finally:
        os.close(fd)  # releases the lock: appenders waiting on the old file move to the new one
    return len(datas)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short: a full disk, a signal)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(f"could not write to the records file ({len(view)} bytes left)")
        view = view[n:]


def _lock_current(path: str, fd: int, flags: int) -> int:
    """Take the exclusive lock on ``fd``, first reopening ``path`` until ``fd`` is the file
    at ``path`` (a :func:`rewrite` may have replaced it while we waited). Returns the
    locked descriptor; ``fd`` is closed if another one is returned."""
    while True:
        fcntl.flock(fd, fcntl.LOCK_EX)
        mine = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            return fd
        new = os.open(path, flags | os.O_CREAT, 0o644)
        os.close(fd)  # also drops the lock on the replaced file
        fd = new


def _fsync_dir(path: str) -> None:
    # The rename itself is durable only once the folder is synced.
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _ensure_newline(fd: int) -> None:
    # A writer killed mid-line leaves a fragment; start on a fresh line so only that
    # fragment is lost, not the next record too.
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


def read(paths: str | Iterable[str], *, warn: bool = True) -> Iterator[Record]:
    """Records from one or more files; corrupt or truncated lines are skipped with a warning.

    Every path must exist: a missing one raises ``FileNotFoundError`` at once (a mistyped
    name must not silently mean "no records").
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    _require(paths)
    return _read(paths, warn)


def _require(paths: Iterable[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"records file not found: {path}")
        check_path(path)


def check_path(path: str) -> None:
    """Raise ``ValueError`` when ``path`` exists and is not a regular file: a folder, a FIFO
    (reading one waits forever for a writer), a device. A missing path is fine (an append
    creates it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        raise ValueError(f"records path {path} is {kind}, not a records file")


def _read(paths: list[str], warn: bool) -> Iterator[Record]:
    for path in paths:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    data = json.loads(raw)
                    _check(data)
                except (ValueError, KeyError, TypeError, RecursionError) as e:
                    if warn:
                        why = "nested too deeply" if isinstance(e, RecursionError) else e
                        warnings.warn(f"{path}:{lineno}: skipping a corrupt record ({why})", RecordWarning, stacklevel=2)
                    continue
                yield Record(data, path)


_FIELDS = {"spec": dict, "spec_key": str, "target": str, "template": str, "config": dict, "result": dict}


def _check(data: Any) -> None:
    """Raise ``ValueError`` unless ``data`` has every field a :class:`Record` reads, of the right type."""
    if not isinstance(data, dict) or data.get("v") != FORMAT:
        raise ValueError("not a convgen record")
    for key, kind in _FIELDS.items():
        if key not in data:
            raise ValueError(f"no {key!r} field")
        if not isinstance(data[key], kind):
            raise ValueError(f"{key!r} is a {type(data[key]).__name__}, not a {kind.__name__}")
    if not isinstance(data.get("space_hash", ""), str):
        raise ValueError("'space_hash' is not a str")
    result = data["result"]
    if not isinstance(result.get("error"), (str, type(None))):
        raise ValueError("'result.error' is not a str or null")
    cost = result.get("median_s")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))
                             or not math.isfinite(cost) or cost <= 0):
        raise ValueError(f"'result.median_s' is not a positive number ({cost!r})")
    if not isinstance(data.get("tvm", ""), str):
        raise ValueError("'tvm' is not a str")
    spec = ConvSpec.from_dict(data["spec"])  # a SpecError (ValueError) for a malformed one
    if spec.key != data["spec_key"]:
        raise ValueError(f"'spec' ({spec.key}) and 'spec_key' ({data['spec_key']}) disagree")




_WARNED_VERSIONS: set[tuple[str, tuple]] = set()


def same_tvm(records: Iterable[Record]) -> Iterator[Record]:
    """The records made with this TVM's minor version (configs are timings of the code that
    TVM generated: another version's are not evidence for this one); warns once per file
    and version about the others. Records that name no version are kept."""
    import tvm

    here = minor_version(tvm.__version__)
    for r in records:
        theirs = r.tvm_minor
        if theirs is None or theirs == here:
            yield r
            continue
        key = (r.path, theirs)
        if key not in _WARNED_VERSIONS:
            _WARNED_VERSIONS.add(key)
            warnings.warn(f"{r.path or 'records'}: ignoring records made with TVM {'.'.join(map(str, theirs))} "
                          f"(this is TVM {tvm.__version__}); tune again to use them", RecordWarning, stacklevel=2)


class RecordWarning(UserWarning):
    """A record line could not be read."""


def _aggregate(records: Iterable[Record]) -> dict[tuple, tuple[float, Record]]:
    """Per measured candidate (trial key): the median of its timings and one of its records.

    A candidate timed several times (the tuner re-times each layer's leaders) is judged by
    the median over all its timings; one that ever failed or gave a wrong result is out
    (the rule of :func:`outcome`).
    """
    times: dict[tuple, list[float]] = {}
    first: dict[tuple, Record] = {}
    bad: set[tuple] = set()
    for r in records:
        k = r.trial_key()
        first.setdefault(k, r)
        verdict = r.outcome
        if verdict is Outcome.FAILED:
            bad.add(k)
        elif verdict is Outcome.TIMED:
            times.setdefault(k, []).append(r.median)
    return {k: (median(v), first[k]) for k, v in times.items() if k not in bad}


def best_records(records: Iterable[Record]) -> dict[tuple[str, str], tuple[float, Record]]:
    """``(median seconds, record)`` of the fastest valid candidate per (spec key, target),
    among those timed as the tuner times by default (:data:`TIMING`) where there are any."""
    best: dict[tuple[str, str], tuple[tuple[bool, float], float, Record]] = {}
    for cost, r in _aggregate(records).values():
        k, rank = (r.spec_key, r.target), (r.timing != TIMING, cost)
        if k not in best or rank < best[k][0]:
            best[k] = (rank, cost, r)
    return {k: (cost, r) for k, (_, cost, r) in best.items()}


def best_config(spec: ConvSpec, target: Target, paths: str | list[str], *, template: str | None = None):
    """``(template, config)`` of the fastest valid candidate for ``spec`` on ``target``, or ``None``.

    Valid: measured without error, never marked wrong, and made against the template's
    current space (same space hash), so a config from an older template version is never
    applied. A candidate timed several times counts with the median of its timings.
    Records measured on this machine's CPU, where there are any, rank before the others:
    timings from a faster machine would otherwise always win.
    """
    found = find_config(spec, target, read(paths), template=template, tuned_as=[spec])
    return None if found is None else found[:2]


def find_config(spec: ConvSpec, target: Target, records: Iterable[Record], *, template: str | None = None,
                tuned_as: Sequence[ConvSpec] | None = None) -> tuple[Any, Config, ConvSpec] | None:
    """``(template, config, tuned spec)``: the best valid record among ``records`` for the
    first workload of ``tuned_as`` (default: ``spec``, then :meth:`ConvSpec.stand_ins`)
    that has one whose config ``spec``'s space also holds; ``None`` when none has. Ranked
    as :func:`best_config` ranks: records of this machine's CPU first, then those made for
    ``target`` itself before those of the targets it extends (:attr:`Target.lineage`),
    then those timed as the tuner times by default (:data:`TIMING`), then by time."""
    from .target import host_cpu_name

    rule = Staleness()
    candidates = list(tuned_as) if tuned_as is not None else [spec] + spec.stand_ins()
    keys = {s.key for s in candidates}
    lineage = target.lineage  # this target's records, then those of the targets it extends
    by_key: dict[str, list[Record]] = {}
    for r in same_tvm(records):
        if r.spec_key in keys and r.target in lineage and (template is None or r.template == template):
            by_key.setdefault(r.spec_key, []).append(r)
    here = host_cpu_name()
    for tuned in candidates:
        best = None
        for cost, r in _aggregate(by_key.get(tuned.key, [])).values():
            mine = rule.space(r.template, spec, target)  # the config must serve spec too
            if not rule.current(r) or mine is None or r.config not in mine:
                continue
            rank = (r.data.get("host_cpu") != here, lineage.index(r.target), r.timing != TIMING, cost)
            if best is None or rank < best[0]:
                best = (rank, r)
        if best is not None:
            # a record of a parent target yields to a better template the parent lacks (see
            # below), unless the caller names the record's template
            if template is None and best[1].target != target.name and \
                    _unseen_template(rule, spec, target, best[1]):
                return None
            return rule.template(best[1].template), dict(best[1].config), tuned
    return None


def _unseen_template(rule: "Staleness", spec: ConvSpec, target: Target, record: Record) -> bool:
    """Was ``record`` (made for a target ``target`` extends) tuned without a template that
    outranks its own on ``target`` and that its target lacks? An AVX512_VNNI record for a
    uint8 layer never met AMX's tile template: on a CPU with AMX that template's default
    (2-2.6x faster than the tuned ``vpdpbusd`` kernel on ResNet-50's 3x3 layers) serves,
    not the record."""
    from convgen.schedules import candidates

    from .target import all_targets

    parent = all_targets().get(record.target)
    mine = rule.template(record.template)
    if parent is None or mine is None:
        return False
    floor = mine.rank(spec, target)
    return any(t.rank(spec, target) > floor and t.serves(spec, parent) is not None for t in candidates(spec, target))


def builtin_record_files() -> list[str]:
    """Tuning logs shipped inside the package (``convgen/tuned/*.jsonl``), like TVM's TopHub.

    Only files that exist are listed: the one place where "no records" is not an error.
    """
    try:
        folder = resources.files("convgen") / "tuned"
        return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".jsonl"))
    except (FileNotFoundError, NotADirectoryError):
        return []


class Staleness:
    """The one rule for whether a record's config is still valid, with the templates' spaces
    cached: the template exists and serves the workload on the target, the record was made
    against its current space (same space hash) and the config lies in it, and it was
    measured with this TVM's minor version. A target this convgen does not know cannot be
    checked (:meth:`current` says ``None``)."""

    def __init__(self) -> None:
        from convgen.schedules import all_templates

        self._templates = all_templates()
        self._spaces: dict[tuple, Any] = {}
        import tvm

        self._tvm = minor_version(tvm.__version__)

    def template(self, name: str) -> Any:
        """The registered template called ``name`` (``None`` if there is none)."""
        return self._templates.get(name)

    def space(self, template: str, spec: ConvSpec, target: Target) -> Any:
        """The template's space for ``spec`` on ``target``; ``None`` when it does not serve it."""
        k = (template, spec.key, target.name)
        if k not in self._spaces:
            tmpl = self._templates.get(template)
            ok = tmpl is not None and tmpl.serves(spec, target) is None
            self._spaces[k] = tmpl.space(spec, target) if ok else None
        return self._spaces[k]

    def current(self, r: Record) -> bool | None:
        """Is ``r`` valid for its template as it is now? ``None``: its target is unknown."""
        from .target import get_target

        try:
            target = get_target(r.target)
        except TargetError:
            return None
        space = self.space(r.template, r.spec, target)
        mine = r.tvm_minor
        return (space is not None and space.hash == r.space_hash and r.config in space
                and (mine is None or mine == self._tvm))


def prune(records: Iterable[Record], *, keep: int = 1, keep_stale: bool = False) -> list[Record]:
    """Every record of the ``keep`` best candidates per (workload, target, template), in file order.

    Candidates are ranked as :func:`best_config` ranks them: those timed as the tuner times
    by default (:data:`TIMING`) first, then by the median of all their timings, those that
    ever failed or gave a wrong result left out. Unless ``keep_stale``,
    stale candidates (:class:`Staleness`) are dropped too; for a target this convgen does
    not know that check is impossible and its candidates are ranked without it.
    """
    if keep < 1:
        raise ValueError(f"prune: keep must be >= 1 (got {keep})")
    records = list(records)
    rule = Staleness()
    groups: dict[tuple, list] = {}
    for key, (cost, r) in _aggregate(records).items():
        if not keep_stale and rule.current(r) is False:
            continue
        groups.setdefault((r.spec_key, r.target, r.template), []).append((r.timing != TIMING, cost, key))
    kept = set()
    for cands in groups.values():
        kept.update(key for *_, key in sorted(cands, key=lambda c: (c[0], c[1], str(c[2])))[:keep])
    return [r for r in records if r.trial_key() in kept]


def prune_file(path: str, *, keep: int = 1, keep_stale: bool = False, output: str | None = None) -> int:
    """:func:`prune` the records in ``path`` into ``output`` (default: ``path`` itself, rewritten
    under the appenders' lock); returns how many were kept."""
    read(path)  # the file must exist (checked before anything is written)
    return rewrite(output or path, lambda: [r.data for r in prune(read(path), keep=keep, keep_stale=keep_stale)])


def merge(output: str, paths: Sequence[str]) -> int:
    """Merge ``paths`` into ``output``: every record of both (exact duplicates once, corrupt
    lines dropped) ends in ``output``; returns how many it holds. An existing ``output``
    keeps its own records whether or not it is listed among ``paths``: merging into a
    shipped log must never replace it."""
    listed = [os.path.abspath(p) for p in paths]
    if os.path.exists(output) and os.path.abspath(output) not in listed:
        paths = [output, *paths]
    read(paths)  # every input must exist (checked before the output is touched)

    def merged() -> list[dict[str, Any]]:
        seen, out = set(), []
        for r in read(paths):
            k = json.dumps(r.data, sort_keys=True, default=str)  # only exact duplicates go
            if k not in seen:
                seen.add(k)
                out.append(r.data)
        return out

    return rewrite(output, merged)


@dataclass
class Summary:
    """What ``convgen records show`` prints for one (workload, target)."""

    spec_key: str
    target: str
    trials: int
    errors: int
    best: Record | None = None
    cost: float | None = None  # median seconds of the best valid candidate


def summarize(paths: Sequence[str]) -> list[Summary]:
    """Per (workload, target) in ``paths``: trials, errors and the best valid candidate."""
    all_records = list(read(paths))
    best = best_records(all_records)
    rows: dict[tuple[str, str], Summary] = {}
    for r in all_records:
        row = rows.setdefault((r.spec_key, r.target), Summary(r.spec_key, r.target, 0, 0))
        row.trials += 1
        row.errors += r.error is not None
    for k, (cost, r) in best.items():
        rows[k].best, rows[k].cost = r, cost
    return [rows[k] for k in sorted(rows)]
