"""Checkpoints of a run: model and optimizer state after every epoch and after a Ctrl-C.

The checkpoint is the last thing written at an epoch's end: ``state.json``
pointing at an epoch is what commits it, after its history row, snapshot
and TensorBoard scalars are on disk (see ``training/callbacks.py``).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import threading

import keras
import numpy as np

from keras_vaegan.io.atomic import atomic_path, atomic_write_text, remove_partial_writes
from keras_vaegan.training.faults import fault_point

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

    Weights go to ``epoch-NNNN.weights.h5`` (temp name, flushed, then
    renamed); only then does ``state.json`` (also atomic) point at it. A
    kill at any moment leaves the previous complete checkpoint in charge.
    Older files are pruned to ``keep``. After a Ctrl-C the state at that
    step is saved and marked as inside its epoch, which ``--resume`` then
    runs again from that state (the learning-rate schedule follows the
    optimizer's step counter).
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
        fault_point("checkpoint-write", epoch)
    state = {"epoch": epoch, "weights": name, "iterations": iterations,
             "interrupted": interrupted}
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
    remove_partial_writes(directory)  # a write cut short by a kill
    state = read_checkpoint_state(directory)
    if state is None:
        return 0
    model.load_weights(os.path.join(directory, state["weights"]))
    return int(state["epoch"])
