"""Exceptions that reach the user as one line (see cli.main for the mapping to exit codes)."""

from __future__ import annotations

from collections.abc import Iterator


def raised_from(exc: BaseException) -> Iterator[BaseException]:
    """exc, then the exception it was raised from (its __cause__, else its __context__), and so on:
    what a wrapper hides (Python wraps an exception raised in __set_name__, c10d wraps socket errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class PpsvdError(Exception):
    """An error whose message is complete enough to show the user as one line."""

    exit_code = 1


class ConfigError(PpsvdError, ValueError):
    """Bad user input: the message names the bad value and the fix. Exit code 2."""

    exit_code = 2


class ModelNotFoundError(ConfigError):
    """The model is not in the cache / not at the path, and cannot be downloaded."""


class InputImageError(ConfigError):
    """An --image path that does not exist or is not a readable image."""


class RunDirBusy(ConfigError):
    """Another ppsvd process holds the run directory's lock (a run, or a --resume of it, is going)."""


class StageFailedError(PpsvdError):
    """A pipeline stage failed; the message names the stage and why."""


class TransportError(PpsvdError):
    """A link between two stages broke or received something it must not accept."""


class ProtocolError(TransportError):
    """A received message is malformed, oversized or not what the receiver expects."""


class PartnerLinkError(TransportError):
    """The link to a guidance partner broke: the partner, not this rank, is the one to name."""

    def __init__(self, message: str, partner: int) -> None:
        super().__init__(message)
        self.partner = partner


class TransportTimeout(TransportError, TimeoutError):
    """A wait (send, receive, hand-off, barrier) did not complete within its deadline (backends.deadline)."""


class Cancelled(PpsvdError):
    """A wait was abandoned because the run is stopping (another stage failed)."""


class OutputWriteError(PpsvdError):
    """An output could not be written correctly (e.g. the video encoder failed): the sample fails."""


class OutputsLost(PpsvdError):
    """The run directory, or a file the manifest lists, vanished or was replaced during the run."""


class Interrupted(PpsvdError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP): exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int, run_dir=None) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.run_dir = run_dir
        """The run directory the interrupted run was writing (None: stopped before it had one)."""


class VerificationFailed(PpsvdError):
    """`ppsvd verify`: a layout's results broke its promise (or it did not run); the message names it. Exit code 1."""
