"""Callbacks of a run and the order of its end-of-epoch writers.

An epoch's records (snapshot, ``history.csv`` row, ``history.png``,
TensorBoard scalars and image) are written before the checkpoint that
commits the epoch (``training/checkpoints.py``), so a kill at any instant
loses none of them: ``--resume`` trains again from the last committed
epoch and rewrites whatever of the later epochs' records were already
there (``HistoryLogger`` drops their rows, snapshots and TensorBoard
entries are written again). Keras's ``TerminateOnNaN`` does the rest
(see ``training/fit.py``).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_vaegan.training.checkpoints import (
    CHECKPOINT_STATE,
    CHECKPOINTS,
    FinishInterruptedEpoch,
    GracefulInterrupt,
    ResumableCheckpoint,
    read_checkpoint_state,
    restore_checkpoint,
    save_checkpoint,
)
from keras_vaegan.training.faults import FaultPoint
from keras_vaegan.training.history import (
    HISTORY_FILE,
    HISTORY_PLOT,
    HistoryLogger,
    HistoryPlot,
)

__all__ = [
    "CHECKPOINT_STATE", "CHECKPOINTS", "FinishInterruptedEpoch", "GracefulInterrupt",
    "HistoryLogger", "HistoryPlot", "ResumableCheckpoint",
    "RunTensorBoard", "SnapshotCallback", "epoch_writers", "read_checkpoint_state",
    "restore_checkpoint", "save_checkpoint", "snapshot_path",
]

SNAPSHOTS = "snapshots"
LOGS = "logs"


def snapshot_path(directory: str, epoch: int) -> str:
    """The snapshot of epoch ``epoch`` (Keras's count from 0; the file's from 1)."""
    return os.path.join(directory, f"epoch-{epoch + 1:04d}.png")


class SnapshotCallback(keras.callbacks.Callback):
    """A PNG grid per epoch on a fixed validation batch.

    Row per sample: MRI | synthetic CT | reconstructed MRI | CT | synthetic
    MRI | reconstructed CT, deterministic latent (z = mu). With 2.5-D stacks
    ``[n, h, w, K]`` each panel is the centre channel ``K // 2``, the slice the
    stack is about (and what predict keeps).
    """

    TITLES = ["MRI", "synthetic CT", "reconstructed MRI", "CT", "synthetic MRI", "reconstructed CT"]

    def __init__(self, mri: np.ndarray, ct: np.ndarray, directory: str):
        super().__init__()
        self.mri = mri
        self.ct = ct
        self.directory = directory

    def rows(self) -> list[list[np.ndarray]]:
        """The grid's panels, ``[h, w]`` float32 in model units, one list per sample."""
        model = self.model
        to_np = keras.ops.convert_to_numpy
        fake_ct = model.translate(self.mri, "mri2ct")
        rec_mri = model.translate(fake_ct, "ct2mri")
        fake_mri = model.translate(self.ct, "ct2mri")
        rec_ct = model.translate(fake_mri, "mri2ct")
        columns = [self.mri, fake_ct, rec_mri, self.ct, fake_mri, rec_ct]
        columns = [to_np(c) for c in columns]
        columns = [c[..., c.shape[-1] // 2].astype("float32") for c in columns]
        return [[col[i] for col in columns] for i in range(len(self.mri))]

    def render(self, path: str) -> None:
        from keras_vaegan.io.figures import write_overview_png

        write_overview_png(path, self.rows(), self.TITLES)

    def on_epoch_end(self, epoch, logs=None):
        self.render(snapshot_path(self.directory, epoch))


class RunTensorBoard(keras.callbacks.TensorBoard):
    """Keras's ``TensorBoard`` that also shows each epoch's snapshot grid and flushes at epoch end.

    The snapshot PNG goes into the ``train`` writer as image ``snapshot`` at
    the epoch's step, beside the scalars. The flush is why this runs before
    the checkpoint: a summary writer otherwise holds events in memory for up
    to two minutes, and a kill would lose the scalars of committed epochs.
    """

    SNAPSHOT_TAG = "snapshot"

    def __init__(self, log_dir: str, snapshots: str):
        super().__init__(log_dir, write_graph=False, profile_batch=0)
        self.snapshots = snapshots

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        path = snapshot_path(self.snapshots, epoch)
        if os.path.exists(path):
            import tensorflow as tf

            image = tf.io.decode_png(tf.io.read_file(path), channels=3)
            with self._train_writer.as_default():
                self.summary.image(self.SNAPSHOT_TAG, image[None], step=epoch)
        for writer in self._writers.values():
            writer.flush()


def epoch_writers(run: str, val_mri: np.ndarray, val_ct: np.ndarray, *,
                  interrupt: GracefulInterrupt | None = None, resume: bool = False,
                  initial_epoch: int = 0, checkpoint_every: int = 0
                  ) -> list[keras.callbacks.Callback]:
    """The run's end-of-epoch writers in the order that loses nothing on a kill, checkpoint last.

    A fault point (``training/faults.py``) follows each writer, named
    ``<writer>-written``: snapshot, history, history-plot, tensorboard,
    checkpoint (and ``checkpoint-write`` inside the checkpoint, before its
    rename).
    """
    snapshots = os.path.join(run, SNAPSHOTS)
    history = os.path.join(run, HISTORY_FILE)
    writers = [
        ("snapshot", SnapshotCallback(val_mri, val_ct, snapshots)),
        ("history", HistoryLogger(history, append=resume,
                                  first_epoch=initial_epoch if resume else None)),
        ("history-plot", HistoryPlot(history, os.path.join(run, HISTORY_PLOT))),
        ("tensorboard", RunTensorBoard(os.path.join(run, LOGS), snapshots)),
        ("checkpoint", ResumableCheckpoint(os.path.join(run, CHECKPOINTS), interrupt=interrupt,
                                           every=checkpoint_every)),
    ]
    return [callback for name, writer in writers
            for callback in (writer, FaultPoint(f"{name}-written"))]
