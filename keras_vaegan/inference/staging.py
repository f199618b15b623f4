"""All or nothing for a command that writes many outputs: stage them, then move them in.

``StagedOutputs`` gives every output a place in a hidden folder inside the
output folder (``.tmp-predict-*``: same file system, so moving it in is a
rename, and readers skip hidden names). ``commit`` moves each output onto its
final path (an existing file or series folder is replaced only then); on any
error before it, the staging folder is removed and the output folder is
exactly as it was, also the folders this command made for it are removed.
Each output is flushed to the disk when written (``io.atomic``); the folders
it is renamed into are flushed after the move. A kill leaves at most the
hidden staging folder, which every reader skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import TMP_PREFIX, sync_folder

STAGING_PREFIX = TMP_PREFIX + "predict-"


class StagedOutputs:
    """A context manager: ``path(final)`` to write to, ``commit(finals)`` to publish them."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = os.fspath(output_dir)
        self.folder = ""
        self._made: list[str] = []  # folders this command created, deepest first

    def __enter__(self) -> "StagedOutputs":
        missing, folder = [], os.path.abspath(self.output_dir)
        while not os.path.exists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        try:
            os.makedirs(self.output_dir, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.output_dir)
        except OSError as err:
            self._remove_made(missing)
            raise VAEGANError(self.output_dir,
                              f"cannot write here ({err.strerror or err})") from None
        self._made = missing
        return self

    def path(self, final: str) -> str:
        """Where to write the output that will end up at ``final`` (inside the output folder)."""
        return os.path.join(self.folder, os.path.relpath(final, self.output_dir))

    def final(self, staged: str) -> str:
        """The final path of a file written under ``path(...)``."""
        return os.path.join(self.output_dir, os.path.relpath(staged, self.folder))

    def commit(self, finals: list[str]) -> None:
        """Move every staged output onto its final path (replacing what ``overwrite`` allowed)."""
        aside = os.path.join(self.folder, ".replaced")
        touched = set()
        for index, final in enumerate(finals):
            staged = self.path(final)
            if not os.path.lexists(staged):
                continue
            os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
            if os.path.isdir(staged) and os.path.isdir(final):
                os.makedirs(aside, exist_ok=True)
                os.replace(final, os.path.join(aside, str(index)))
            os.replace(staged, final)
            touched.add(os.path.dirname(os.path.abspath(final)))
        touched.update(os.path.dirname(folder) for folder in self._made)  # new folders' names
        for folder in sorted(touched):  # the files were flushed when written; now their names
            sync_folder(folder)

    def __exit__(self, exc_type, exc, traceback) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if exc_type is not None:
            self._remove_made(self._made)

    @staticmethod
    def _remove_made(folders: list[str]) -> None:
        for folder in folders:  # deepest first; only while still empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)

