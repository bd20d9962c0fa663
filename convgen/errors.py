"""Every error convgen raises on purpose, in one leaf module (it imports nothing of convgen).

The classes follow Python's conventions, so callers can catch them as what they are: a bad
spec, config or target is a ``ValueError``, a missing kernel file a ``FileNotFoundError``,
a file that is not an intact kernel a ``ValueError``; failures at build or run time are
``RuntimeError``. Each module re-exports the ones it raises (``convgen.spec.SpecError``, ...).
"""

from __future__ import annotations

import enum


class SpecError(ValueError):
    """A ConvSpec field breaks a rule; the message names the field and the rule."""


class ConfigError(ValueError):
    """A config a template cannot apply; the tuner records it as a failed trial."""


class TargetError(ValueError):
    """Unknown target, or a target that cannot do what was asked."""


class BuildError(RuntimeError):
    """TVM failed to schedule or compile a config (recorded as a failed trial by the tuner)."""


class KernelError(RuntimeError):
    """A kernel cannot run here (wrong machine, missing file, broken library)."""


class KernelNotFoundError(FileNotFoundError, KernelError):
    """There is no kernel file at the path (a ``FileNotFoundError``)."""


class NotAKernelError(KernelError, ValueError):
    """The file is not a convgen kernel, or not an intact one: no trailer, metadata that is
    malformed or lies, library bytes that do not match their hash (a ``ValueError``)."""


class RemoteError(RuntimeError):
    """The device could not be reached, or it failed (crashed) while running a kernel."""


class DeviceUnavailable(RemoteError):
    """The device could not be reached, granted by the tracker in time, or sent a library:
    nothing ran there yet, so the kernel is not to blame (the tuner records kind ``device``)."""


class RemoteTimeout(RemoteError):
    """The kernel ran past the session's timeout and the device ended the session."""


class DeviceDown(RuntimeError):
    """The measuring device stayed unreachable for longer than the campaign waits."""


class ErrorKind(enum.StrEnum):
    """Why a tuning trial has no timing: the ``result.error`` of a record, ``Candidate.error``.

    A ``StrEnum``: each kind *is* its string (``ErrorKind.CRASH == "crash"``), so records
    written before this type existed read back unchanged and JSON holds plain strings.
    """

    CONFIG = "config"                # the template refused the config (a ConfigError)
    BUILD = "build"                  # TVM failed to schedule or compile it
    BUILD_TIMEOUT = "build_timeout"  # the build ran past its timeout
    RUN = "run"                      # the kernel raised an error when run
    TIMEOUT = "timeout"              # the run ran past its timeout
    CRASH = "crash"                  # the kernel killed its worker (segfault, SIGILL, abort)
    WRONG_RESULT = "wrong_result"    # it ran, and its output disagrees with the reference
    DEVICE = "device"                # the device could not be reached: nothing ran, no verdict on the config

    @property
    def says_nothing(self) -> bool:
        """True for kinds that are no verdict on the config (:attr:`DEVICE`): such a record
        is neither a timing nor a failure of its candidate."""
        return self is ErrorKind.DEVICE


def last_line(e: BaseException) -> str:
    """The line of an error (TVM's end with the message, after a trace) that says what went
    wrong: the last one naming an error, else the last one; at most 500 characters."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    msg = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else "")
    return msg[:500] or type(e).__name__
