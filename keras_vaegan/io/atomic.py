"""Write files so that a reader never sees half of one, and a power cut never loses one.

Everything is written under a temporary name in the destination folder,
flushed to the disk (``fsync``), renamed onto its final name (atomic on
every local filesystem) and then the folder itself is flushed, so the new
name survives a power cut too. A kill at any instant leaves either the
previous file or the new one, never a mix; a leftover ``.tmp-*`` name is
all a cut-short write can leave behind (``remove_partial_writes``).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from typing import Iterator

from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.paths import extension

TMP_PREFIX = ".tmp-"  # every temporary name starts so: a reader and a cleaner can skip it
_DEFAULT_MODE = 0o666  # what open() would give; mkstemp's 0600 is too private
# fsync of a folder that the file system does not support (some network and FUSE mounts)
_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF}


def sync_file(path: str | os.PathLike) -> None:
    """Flush one file's bytes and metadata to the disk."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (names just created or renamed) to the disk.

    POSIX only: where the OS cannot open a folder (Windows) or the file
    system cannot flush one, there is nothing more to do.
    """
    if os.name == "nt":
        return
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def sync_tree(path: str | os.PathLike) -> None:
    """Flush a file, or every file and folder below a folder, then the folder itself."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        sync_file(path)
        return
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                sync_file(full)
        sync_folder(folder)


def durable_rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename a finished file or folder onto its final name so that it survives a power cut.

    ``src`` (every file in it, for a folder) is flushed before the rename,
    the folder holding ``dst`` after it.
    """
    sync_tree(src)
    os.replace(src, dst)
    sync_folder(os.path.dirname(os.path.abspath(os.fspath(dst))))


def remove_partial_writes(folder: str | os.PathLike) -> None:
    """Remove the temporary files and folders that writes cut short by a kill left in ``folder``."""
    for leftover in glob.glob(os.path.join(os.fspath(folder), TMP_PREFIX + "*")):
        if os.path.isdir(leftover) and not os.path.islink(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(leftover)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; flush it and rename it onto ``path`` on success.

    ``suffix`` keeps the extension libraries look at (``.png``, ``.nii.gz``).
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if suffix is None:
        suffix = extension(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    except OSError as err:
        raise VAEGANError(path, f"cannot write here ({err.strerror or err})") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _DEFAULT_MODE & ~_umask())
        durable_rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` on success.

    For outputs that are a folder of files (a DICOM series). Every file is
    flushed before the rename. An existing ``path`` folder is moved aside,
    replaced by the new one, then removed, so a reader sees the old folder
    or the new one, never a mix. On any exception the temporary folder is
    removed and ``path`` is untouched.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise VAEGANError(path, "output exists and is not a folder")
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent)
    except OSError as err:
        raise VAEGANError(path, f"cannot write here ({err.strerror or err})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(tmp: str, path: str) -> None:
    """Put the finished folder ``tmp`` at ``path``, moving a previous one aside first."""
    parent = os.path.dirname(path)
    old = None
    if os.path.isdir(path):
        old = tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", dir=parent)
        os.replace(path, os.path.join(old, "previous"))
    try:
        durable_rename(tmp, path)
    except OSError as err:
        if old is not None:  # put the previous folder back
            os.replace(os.path.join(old, "previous"), path)
        raise VAEGANError(path, f"cannot write here ({err.strerror or err})") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
