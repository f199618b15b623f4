"""Callbacks of a run: resumable checkpoints, the history table and per-epoch snapshots.

Keras's own ``TensorBoard`` and ``TerminateOnNaN`` do the rest (see
``training/fit.py``); ``HistoryLogger`` is Keras's ``CSVLogger`` with one fix
for resumed runs.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import signal
import sys
import threading

import keras
import numpy as np

from keras_vaegan.io.atomic import atomic_path, atomic_write_text

CHECKPOINT_STATE = "state.json"


class GracefulInterrupt(keras.callbacks.Callback):
    """First Ctrl-C: finish the current step, then stop (a checkpoint follows).

    A second Ctrl-C interrupts at once, as usual.
    """

    def __init__(self):
        super().__init__()
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        self.requested = True
        print("\ninterrupt: stopping after this step and saving a checkpoint "
              "(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_begin(self, logs=None):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_train_batch_end(self, batch, logs=None):
        if self.requested:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class ResumableCheckpoint(keras.callbacks.Callback):
    """After every epoch: model + optimizer state, then a pointer to it.

    Weights go to ``epoch-NNNN.weights.h5`` (temp name, then rename); only
    then does ``state.json`` (also atomic) point at it. A kill at any moment
    leaves the previous complete checkpoint in charge. Older files are
    pruned to ``keep``. After a Ctrl-C the state at that step is saved and
    marked as inside its epoch, which ``--resume`` then runs again from that
    state (the learning-rate schedule follows the optimizer's step counter).
    """

    def __init__(self, directory: str, keep: int = 2, interrupt: GracefulInterrupt | None = None):
        super().__init__()
        self.directory = directory
        self.keep = keep
        self.interrupt = interrupt

    def on_epoch_end(self, epoch, logs=None):
        if any(not np.isfinite(float(v)) for v in (logs or {}).values()):
            return  # diverged: keep the last good checkpoint
        interrupted = self.interrupt is not None and self.interrupt.requested
        save_checkpoint(self.model, self.directory, epoch if interrupted else epoch + 1,
                        keep=self.keep, interrupted=interrupted)


def save_checkpoint(model, directory: str, epoch: int, keep: int = 2,
                    interrupted: bool = False) -> str:
    os.makedirs(directory, exist_ok=True)
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    name = (f"epoch-{epoch:04d}-step-{iterations:08d}.weights.h5" if interrupted
            else f"epoch-{epoch:04d}.weights.h5")
    with atomic_path(os.path.join(directory, name)) as tmp:
        model.save_weights(tmp)
        _fault_point("checkpoint-write", epoch)
    state = {"epoch": epoch, "weights": name, "iterations": iterations,
             "interrupted": interrupted}
    atomic_write_text(os.path.join(directory, CHECKPOINT_STATE), json.dumps(state) + "\n")
    for old in sorted(glob.glob(os.path.join(directory, "epoch-*.weights.h5")))[:-keep]:
        if os.path.basename(old) != name:
            os.remove(old)
    return name


def _fault_point(name: str, epoch: int) -> None:
    """Test hook: KERAS_VAEGAN_FAULT=name:epoch kills the process here (SIGKILL).

    Lets the test suite prove that a kill in the middle of a checkpoint write
    leaves the previous checkpoint in charge. Unset in normal use.
    """
    if os.environ.get("KERAS_VAEGAN_FAULT") == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def read_checkpoint_state(directory: str) -> dict | None:
    path = os.path.join(directory, CHECKPOINT_STATE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def restore_checkpoint(model, directory: str) -> int:
    """Load the last complete checkpoint; return the number of finished epochs."""
    for leftover in glob.glob(os.path.join(directory, ".tmp-*")):
        os.remove(leftover)  # a write cut short by a kill
    state = read_checkpoint_state(directory)
    if state is None:
        return 0
    model.load_weights(os.path.join(directory, state["weights"]))
    return int(state["epoch"])


class HistoryLogger(keras.callbacks.CSVLogger):
    """Keras's ``CSVLogger`` that keeps ``history.csv`` one table when a resumed run's columns change.

    Why: appending, ``CSVLogger`` writes no header and orders each new row by
    this session's columns. When those differ from the file's header (a loss
    term added since the run was saved, ``--validation-data`` given only on
    resume) every column after the first difference would be shifted under
    the old header. Here the file is rewritten once, before the first new
    row, with the union of both sets of columns; cells an epoch did not log
    read ``NA``, as Keras writes them.
    """

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and self.append and not self.append_header:
            self._widen_header(logs or {})
        super().on_epoch_end(epoch, logs)

    def _widen_header(self, logs: dict) -> None:
        with open(self.filename, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=self.sep)
            old = [name for name in reader.fieldnames or [] if name != "epoch"]
            rows = list(reader)
        new = sorted(logs)
        if not any(name.startswith("val_") for name in new):
            new += [f"val_{name}" for name in new]  # as CSVLogger does without validation
        if set(new) <= set(old):
            self.keys = old  # same table: write in the file's own column order
            return
        names = set(old) | set(new)
        keys = (sorted(n for n in names if not n.startswith("val_"))
                + sorted(n for n in names if n.startswith("val_")))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["epoch", *keys], restval="NA",
                                delimiter=self.sep, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        self.csv_file.close()
        atomic_write_text(self.filename, text.getvalue())
        self.csv_file = open(self.filename, "a", newline="", encoding="utf-8")
        self.keys = keys


class SnapshotCallback(keras.callbacks.Callback):
    """A PNG grid per epoch on a fixed validation batch.

    Row per sample: MRI | synthetic CT | reconstructed MRI | CT | synthetic
    MRI | reconstructed CT, deterministic latent (z = mu).
    """

    TITLES = ["MRI", "synthetic CT", "reconstructed MRI", "CT", "synthetic MRI", "reconstructed CT"]

    def __init__(self, mri: np.ndarray, ct: np.ndarray, directory: str):
        super().__init__()
        self.mri = mri
        self.ct = ct
        self.directory = directory

    def render(self, path: str) -> None:
        from keras_vaegan.io.figures import write_overview_png

        model = self.model
        to_np = keras.ops.convert_to_numpy
        fake_ct = model.translate(self.mri, "mri2ct")
        rec_mri = model.translate(fake_ct, "ct2mri")
        fake_mri = model.translate(self.ct, "ct2mri")
        rec_ct = model.translate(fake_mri, "mri2ct")
        columns = [self.mri, fake_ct, rec_mri, self.ct, fake_mri, rec_ct]
        columns = [to_np(c)[..., 0].astype("float32") for c in columns]
        rows = [[col[i] for col in columns] for i in range(len(self.mri))]
        write_overview_png(path, rows, self.TITLES)

    def on_epoch_end(self, epoch, logs=None):
        self.render(os.path.join(self.directory, f"epoch-{epoch + 1:04d}.png"))
