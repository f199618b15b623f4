"""The one exception type the package raises for problems a user can fix.

The CLI turns it into ``error: <path>: <reason>`` and exit code 2; library
callers catch it like any other exception.
"""

from __future__ import annotations

import os


class VAEGANError(Exception):
    """A problem with a file, folder, setting or model that the user can fix."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class WorkerLostError(VAEGANError):
    """Multi-worker training lost a peer: TensorFlow's collective runtime is aborted.

    The process cannot go on, and its interpreter teardown is not safe
    either (the aborted runtime's pools write to closed pipes), so the CLI
    ends it with ``os._exit`` after its one error line; the checkpoints are
    already on disk, written atomically.
    """
