"""Callbacks of a run: resumable checkpoints and per-epoch image snapshots.

Keras's own ``CSVLogger``, ``TensorBoard`` and ``TerminateOnNaN`` do the rest
(see ``training/fit.py``).
"""

from __future__ import annotations

import glob
import json
import os

import keras
import numpy as np

from keras_vaegan.data.atomic import atomic_path, atomic_write_text

CHECKPOINT_STATE = "state.json"


class ResumableCheckpoint(keras.callbacks.Callback):
    """After every epoch: model + optimizer state, then a pointer to it.

    Weights go to ``epoch-NNNN.weights.h5`` (temp name, then rename); only
    then does ``state.json`` (also atomic) point at it. A kill at any moment
    leaves the previous complete checkpoint in charge. Older files are
    pruned to ``keep``.
    """

    def __init__(self, directory: str, keep: int = 2):
        super().__init__()
        self.directory = directory
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        if any(not np.isfinite(float(v)) for v in (logs or {}).values()):
            return  # diverged: keep the last good checkpoint
        save_checkpoint(self.model, self.directory, epoch + 1, keep=self.keep)


def save_checkpoint(model, directory: str, epoch: int, keep: int = 2) -> str:
    os.makedirs(directory, exist_ok=True)
    name = f"epoch-{epoch:04d}.weights.h5"
    with atomic_path(os.path.join(directory, name)) as tmp:
        model.save_weights(tmp)
    state = {"epoch": epoch, "weights": name,
             "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations))}
    atomic_write_text(os.path.join(directory, CHECKPOINT_STATE), json.dumps(state) + "\n")
    for old in sorted(glob.glob(os.path.join(directory, "epoch-*.weights.h5")))[:-keep]:
        if os.path.basename(old) != name:
            os.remove(old)
    return name


def read_checkpoint_state(directory: str) -> dict | None:
    path = os.path.join(directory, CHECKPOINT_STATE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def restore_checkpoint(model, directory: str) -> int:
    """Load the last complete checkpoint; return the number of finished epochs."""
    state = read_checkpoint_state(directory)
    if state is None:
        return 0
    model.load_weights(os.path.join(directory, state["weights"]))
    return int(state["epoch"])


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
        from keras_vaegan.data.writers import write_overview_png

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
