"""Checkpoints of a run: model and optimizer state after every epoch and after a Ctrl-C.

The checkpoint is the last thing written at an epoch's end: ``state.json``
pointing at an epoch is what commits it, after its history row, snapshot
and TensorBoard scalars are on disk (see ``training/callbacks.py``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import sys
import threading

import keras
import numpy as np

from keras_vaegan.config import CONFIG_FILE, MODEL_FILE, Config
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_path, atomic_write_text, remove_partial_writes
from keras_vaegan.training.faults import fault_point

CHECKPOINTS = "checkpoints"  # the folder of a run that holds them
CHECKPOINT_STATE = "state.json"
EPOCH_FILE = re.compile(r"epoch-(\d{4,})\.weights\.h5")  # an end-of-epoch checkpoint


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


class FinishInterruptedEpoch(keras.callbacks.Callback):
    """A run resumed from a Ctrl-C checkpoint trains only the rest of the interrupted epoch.

    Why: that checkpoint holds the optimizer's step counter from inside an
    epoch, and Keras's ``fit`` runs whole epochs of ``steps_per_epoch``, so
    the interrupted epoch would run in full again: each piece of a long run
    would add up to one epoch's steps, and the run would end that far past
    its step budget (those last steps at learning rate 0).
    This stops the first epoch at its boundary (``stop_training`` at that
    step, which the epoch's end clears again unless a Ctrl-C or a NaN asked
    for it), so that every epoch ends on a multiple of ``steps_per_epoch``.
    A run not resumed mid-epoch is left alone.
    """

    def __init__(self, interrupt: GracefulInterrupt | None = None):
        super().__init__()
        self.interrupt = interrupt
        self.remaining: int | None = None  # steps left in the first epoch, if it was cut
        self._stopped = False

    def on_train_begin(self, logs=None):
        steps = (self.params or {}).get("steps")  # fit's steps_per_epoch
        done = _iterations(self.model) % steps if steps else 0
        self.remaining = steps - done if done else None
        self._stopped = False

    def on_train_batch_end(self, batch, logs=None):
        if self.remaining is not None and batch + 1 >= self.remaining:
            self.remaining = None
            self._stopped = not self.model.stop_training
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not self._stopped:
            return
        self._stopped = False
        finite = all(np.isfinite(float(v)) for v in (logs or {}).values())
        if finite and not (self.interrupt is not None and self.interrupt.requested):
            self.model.stop_training = False


class ResumableCheckpoint(keras.callbacks.Callback):
    """After every epoch: model + optimizer state, then a pointer to it.

    Weights go to ``epoch-NNNN.weights.h5`` (temp name, flushed, then
    renamed); only then does ``state.json`` (also atomic) point at it. A
    kill at any moment leaves the previous complete checkpoint in charge.
    Older files are pruned to ``keep``, except every ``every``-th epoch's
    (``Config.checkpoint_every``), kept to score a long run's trajectory.
    After a Ctrl-C the state at that step is saved and marked as inside its
    epoch (unless it was the epoch's last step: then the epoch is whole);
    ``--resume`` trains the rest of that epoch from it
    (``FinishInterruptedEpoch``; the learning-rate schedule follows the
    optimizer's step counter).
    """

    def __init__(self, directory: str, keep: int = 2, interrupt: GracefulInterrupt | None = None,
                 every: int = 0):
        super().__init__()
        self.directory = directory
        self.keep = keep
        self.every = every
        self.interrupt = interrupt

    def on_epoch_end(self, epoch, logs=None):
        if any(not np.isfinite(float(v)) for v in (logs or {}).values()):
            return  # diverged: keep the last good checkpoint
        interrupted = self.interrupt is not None and self.interrupt.requested
        steps = (self.params or {}).get("steps")
        if interrupted and steps and _iterations(self.model) % steps == 0:
            interrupted = False  # the Ctrl-C stopped at the epoch's last step: it is whole
        save_checkpoint(self.model, self.directory, epoch if interrupted else epoch + 1,
                        keep=self.keep, interrupted=interrupted, every=self.every)


def _iterations(model) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def save_checkpoint(model, directory: str, epoch: int, keep: int = 2,
                    interrupted: bool = False, every: int = 0) -> str:
    os.makedirs(directory, exist_ok=True)
    iterations = _iterations(model)
    name = (f"epoch-{epoch:04d}-step-{iterations:08d}.weights.h5" if interrupted
            else checkpoint_name(epoch))
    with atomic_path(os.path.join(directory, name)) as tmp:
        model.save_weights(tmp)
        fault_point("checkpoint-write", epoch)
    state = {"epoch": epoch, "weights": name, "iterations": iterations,
             "interrupted": interrupted}
    atomic_write_text(os.path.join(directory, CHECKPOINT_STATE), json.dumps(state) + "\n")
    for old in sorted(glob.glob(os.path.join(directory, "epoch-*.weights.h5")))[:-keep]:
        if os.path.basename(old) != name and not kept_for_trajectory(os.path.basename(old), every):
            os.remove(old)
    return name


def checkpoint_name(epoch: int) -> str:
    """The file of the checkpoint written after ``epoch`` complete epochs."""
    return f"epoch-{epoch:04d}.weights.h5"


def kept_for_trajectory(name: str, every: int) -> bool:
    """Whether ``name`` is an end-of-epoch checkpoint that pruning leaves (every ``every``-th)."""
    match = EPOCH_FILE.fullmatch(name)
    return every > 0 and match is not None and int(match.group(1)) % every == 0


def kept_epochs(directory: str) -> list[int]:
    """The epochs whose end-of-epoch checkpoint is in ``directory``, in order."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(match.group(1)) for match in map(EPOCH_FILE.fullmatch, names) if match)


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


def checkpoint_as_run(run: str, epoch: int, output: str) -> str:
    """Write ``output`` as a run folder holding the model of ``run`` after ``epoch`` epochs.

    ``predict``, ``evaluate`` and ``export`` then read it as they read the
    finished run, so a long run's kept checkpoints (``checkpoint_every``) can
    be scored: where it stopped gaining. The model is made as ``fit`` makes
    its last one, in the run's own precision policy and with a weight
    average (``ema_momentum``) swapped in.
    """
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    directory = os.path.join(run, CHECKPOINTS)
    if not os.path.isfile(os.path.join(directory, checkpoint_name(epoch))):
        kept = ", ".join(map(str, kept_epochs(directory))) or "none"
        raise VAEGANError(run, f"no checkpoint after epoch {epoch} (kept: {kept}); "
                               "train with --set checkpoint_every=N to keep more")
    if os.path.exists(os.path.join(output, MODEL_FILE)):
        raise VAEGANError(output, "a run already exists here")
    config = Config.load(os.path.join(run, CONFIG_FILE), saved_run=True)
    before = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy(config.precision_policy or "float32")
    try:
        model = VAECycleGAN(config)
        model.compile()
        model.load_weights(os.path.join(directory, checkpoint_name(epoch)))
        model.optimizer.finalize_variable_values(model.trainable_weights)
        os.makedirs(output, exist_ok=True)
        config.save(os.path.join(output, CONFIG_FILE))
        with atomic_path(os.path.join(output, MODEL_FILE)) as tmp:
            model.save(tmp)
    finally:
        keras.mixed_precision.set_global_policy(before)
    return output
