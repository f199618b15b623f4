"""Write files so that a reader never sees half of one: temp name, then rename.

The temporary file lives in the destination folder, so the final
``os.replace`` is atomic on every local filesystem.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.paths import extension


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    ``suffix`` keeps the extension libraries look at (``.png``, ``.nii.gz``).
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if suffix is None:
        suffix = extension(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    except OSError as err:
        raise VAEGANError(path, f"cannot write here ({err.strerror or err})") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _DEFAULT_MODE & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


_DEFAULT_MODE = 0o666  # what open() would give; mkstemp's 0600 is too private


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` on success.

    For outputs that are a folder of files (a DICOM series). An existing
    ``path`` folder is moved aside, replaced by the new one, then removed, so
    a reader sees the old folder or the new one, never a mix. On any
    exception the temporary folder is removed and ``path`` is untouched.
    """
    import shutil

    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise VAEGANError(path, "output exists and is not a folder")
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    except OSError as err:
        raise VAEGANError(path, f"cannot write here ({err.strerror or err})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=".tmp-old-", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
        try:
            os.replace(tmp, path)
        except OSError as err:
            if old is not None:  # put the previous folder back
                os.replace(os.path.join(old, "previous"), path)
            raise VAEGANError(path, f"cannot write here ({err.strerror or err})") from None
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
