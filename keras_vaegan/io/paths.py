"""Output path checks made before any work starts (a bad path fails in a second, not after an hour)."""

from __future__ import annotations

import os

from keras_vaegan.errors import VAEGANError

DOUBLE_EXTENSIONS = (".nii.gz", ".weights.h5", ".tar.gz")  # extensions that count as one


def extension(path: str | os.PathLike) -> str:
    """The lower-case extension of a file name, ``.nii.gz`` (and the like) counted as one."""
    name = os.path.basename(os.fspath(path)).lower()
    for double in DOUBLE_EXTENSIONS:
        if name.endswith(double):
            return double
    return os.path.splitext(name)[1]


def real_path(path: str | os.PathLike) -> str:
    """One spelling per file: links resolved, case folded where the file system folds it."""
    return os.path.normcase(os.path.realpath(os.fspath(path)))


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return real_path(a) == real_path(b)


def check_writable(path: str | os.PathLike) -> None:
    """Refuse an output file path that cannot be written, before any work is done.

    The path must not be a folder, and its nearest existing parent must be a
    writable folder (the missing ones are made when the file is written).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise VAEGANError(path, "output is a folder; give a file name")
    _check_parent(path, os.path.dirname(os.path.abspath(path)))


def check_output_folder(path: str | os.PathLike) -> None:
    """Refuse an output folder that is a file, or that cannot be made or written."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise VAEGANError(path, "output exists and is not a folder")
    _check_parent(path, os.path.abspath(path))


def _check_parent(path: str, folder: str) -> None:
    """``folder``, or its nearest existing parent, must be a writable folder."""
    existing = folder
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise VAEGANError(path, f"cannot write here: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VAEGANError(path, f"cannot write here: {existing} is not writable")
