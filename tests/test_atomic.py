"""Atomic writes are durable: each file flushed before its rename, its folder flushed after."""

from __future__ import annotations

import errno
import os
import stat

import keras
import pytest
from conftest import save_tiny_run

from keras_vaegan.io import atomic
from keras_vaegan.io.atomic import (
    atomic_folder,
    atomic_path,
    atomic_write_text,
    remove_partial_writes,
    sync_folder,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="names open files through /proc (Linux)")


class FsyncRecorder:
    """Stands in for ``os.fsync``: records what each call flushed, and whether ``watch`` existed then."""

    def __init__(self, watch: str):
        self.watch = watch
        self.calls: list[dict] = []
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        info = os.fstat(fd)
        self.calls.append({"path": os.readlink(f"/proc/self/fd/{fd}"), "inode": info.st_ino,
                           "folder": stat.S_ISDIR(info.st_mode),
                           "final_exists": os.path.lexists(self.watch)})
        self._fsync(fd)

    def files(self) -> list[dict]:
        return [call for call in self.calls if not call["folder"]]

    def folders(self) -> list[dict]:
        return [call for call in self.calls if call["folder"]]


@pytest.fixture
def record_fsync(monkeypatch):
    def start(watch) -> FsyncRecorder:
        recorder = FsyncRecorder(os.fspath(watch))
        monkeypatch.setattr(os, "fsync", recorder)
        return recorder
    return start


def inodes_below(folder) -> set[int]:
    return {os.stat(os.path.join(root, name)).st_ino
            for root, _, names in os.walk(folder) for name in names}


def test_atomic_path_flushes_the_file_before_the_rename_and_the_folder_after(
        tmp_path, record_fsync):
    final = tmp_path / "out" / "model.keras"
    calls = record_fsync(final)
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as handle:  # as a library writes: no fsync of its own
            handle.write(b"weights")
    assert final.read_bytes() == b"weights"
    flushed = [call for call in calls.files() if call["inode"] == final.stat().st_ino]
    assert flushed, calls.calls
    assert not flushed[0]["final_exists"]  # under its temporary name, before the rename
    assert os.path.dirname(flushed[0]["path"]) == str(final.parent)
    assert os.path.basename(flushed[0]["path"]).startswith(atomic.TMP_PREFIX)
    after = [call for call in calls.folders() if call["path"] == str(final.parent)]
    assert after and after[-1]["final_exists"]  # the folder, after the rename
    assert calls.calls.index(after[-1]) > calls.calls.index(flushed[0])


def test_atomic_write_text_is_durable_too(tmp_path, record_fsync):
    final = tmp_path / "history.csv"
    calls = record_fsync(final)
    atomic_write_text(final, "epoch\n0\n")
    assert final.stat().st_ino in {call["inode"] for call in calls.files()}
    assert calls.folders()[-1]["path"] == str(tmp_path)
    assert calls.folders()[-1]["final_exists"]


def test_atomic_folder_flushes_every_file_before_the_rename_and_the_parent_after(
        tmp_path, record_fsync):
    final = tmp_path / "series"
    final.mkdir()
    (final / "old.dcm").write_bytes(b"previous series")
    calls = record_fsync(final / "1.dcm")
    with atomic_folder(final) as tmp:
        for name in ("1.dcm", "2.dcm"):
            with open(os.path.join(tmp, name), "wb") as handle:
                handle.write(name.encode())
        os.mkdir(os.path.join(tmp, "sub"))
        with open(os.path.join(tmp, "sub", "3.dcm"), "wb") as handle:
            handle.write(b"3")
    assert sorted(os.listdir(final)) == ["1.dcm", "2.dcm", "sub"]
    written = inodes_below(final)
    before = [call for call in calls.files() if call["inode"] in written]
    assert {call["inode"] for call in before} == written
    assert not any(call["final_exists"] for call in before)
    parent = [call for call in calls.folders() if call["path"] == str(tmp_path)]
    assert parent and parent[-1]["final_exists"]
    assert calls.calls.index(parent[-1]) > max(calls.calls.index(call) for call in before)
    # the folder itself (its entries) is flushed before the rename, under its temporary name
    assert any(call["inode"] == final.stat().st_ino and not call["final_exists"]
               for call in calls.folders())


def test_a_folder_the_file_system_cannot_flush_is_skipped_other_errors_are_not(
        tmp_path, monkeypatch):
    def unsupported(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", unsupported)
    sync_folder(tmp_path)  # some network and FUSE mounts: nothing more to do

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output"):
        sync_folder(tmp_path)


def test_remove_partial_writes_leaves_only_finished_files(tmp_path):
    (tmp_path / "history.csv").write_text("epoch\n")
    (tmp_path / ".tmp-abc.png").write_bytes(b"half a png")
    (tmp_path / ".tmp-old-xyz").mkdir()
    (tmp_path / ".tmp-old-xyz" / "previous").write_text("x")
    remove_partial_writes(tmp_path)
    assert os.listdir(tmp_path) == ["history.csv"]


def test_export_flushes_the_version_folder_before_its_rename(tmp_path, record_fsync):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the export runs in a TensorFlow subprocess on other backends")
    from keras_vaegan.inference.export import export_run

    run = save_tiny_run(tmp_path / "run")
    output = tmp_path / "sct"
    calls = record_fsync(output / "1")
    final = export_run(run, output, samples=2)
    assert final == str(output / "1")
    written = inodes_below(final)
    assert len(written) >= 3  # saved_model.pb, the variables, the export's info
    flushed = {call["inode"] for call in calls.files() if not call["final_exists"]}
    assert written <= flushed
    parent = [call for call in calls.folders() if call["path"] == str(output)]
    assert parent and parent[-1]["final_exists"]
