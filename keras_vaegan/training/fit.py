"""Train a VAE-CycleGAN run: data -> model -> ``keras.Model.fit`` with callbacks.

A run directory holds everything needed to predict, resume or inspect:
``model.keras``, ``config.json``, ``history.csv``, ``checkpoints/``,
``snapshots/`` and ``logs/`` (TensorBoard).
"""

from __future__ import annotations

import datetime
import math
import os
import sys

import keras

from keras_vaegan.config import Config
from keras_vaegan.data.atomic import atomic_path
from keras_vaegan.data.pipeline import make_training_dataset, make_validation_batch
from keras_vaegan.data.sources import load_training_data
from keras_vaegan.errors import VAEGANError
from keras_vaegan.models.vaecyclegan import VAECycleGAN
from keras_vaegan.training.callbacks import (
    ResumableCheckpoint,
    SnapshotCallback,
    read_checkpoint_state,
    restore_checkpoint,
)
from keras_vaegan.training.precision import apply_precision

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"


def default_run_dir(root: str = "savedmodels") -> str:
    return os.path.join(root, datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S"))


def fit(config: Config, output: str | None = None, data_root: str | None = None,
        mri_dir: str | None = None, ct_dir: str | None = None, resume: bool = False,
        validation_data: str | None = None, verbose: int | str = "auto",
        callbacks: list | None = None) -> str:
    """Train (or resume) a run and return its directory.

    ``callbacks`` are extra Keras callbacks run after the run's own.

    ``resume`` continues from the last complete epoch in ``output/checkpoints``
    with the optimizers' state and the learning-rate schedule position.
    """
    run = output or default_run_dir()
    checkpoints = os.path.join(run, "checkpoints")
    if resume:
        if read_checkpoint_state(checkpoints) is None:
            raise VAEGANError(run, "nothing to resume: no checkpoint in this run folder")
    elif os.path.exists(os.path.join(run, MODEL_FILE)) or read_checkpoint_state(checkpoints):
        raise VAEGANError(run, "a run already exists here: use --resume to continue it "
                               "or --output for a new run")
    policy = apply_precision(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    data = load_training_data(config, data_root=data_root, mri_dir=mri_dir, ct_dir=ct_dir)
    config = data.config
    _say(verbose, f"data: {data.source}")
    _say(verbose, f"backend: {keras.backend.backend()}, precision policy: {policy}")
    try:
        os.makedirs(os.path.join(run, "snapshots"), exist_ok=True)
    except OSError as err:
        raise VAEGANError(run, f"cannot create the run folder ({err.strerror})") from None
    config.save(os.path.join(run, CONFIG_FILE))

    dataset = make_training_dataset(data.mri, data.ct, config)
    val_mri, val_ct = make_validation_batch(data.mri, data.ct, config, config.snapshot_count)
    validation = None
    if validation_data:
        held_out = load_training_data(config, data_root=validation_data)
        validation = make_training_dataset(held_out.mri, held_out.ct, config, seed=config.seed + 7)

    model = VAECycleGAN(config)
    model.compile()
    initial_epoch = restore_checkpoint(model, checkpoints) if resume else 0
    if resume:
        _say(verbose, f"resuming after epoch {initial_epoch} of {config.epochs}")
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        ResumableCheckpoint(checkpoints),
        SnapshotCallback(val_mri, val_ct, os.path.join(run, "snapshots")),
        keras.callbacks.CSVLogger(os.path.join(run, "history.csv"), append=resume),
        keras.callbacks.TensorBoard(os.path.join(run, "logs"), write_graph=False,
                                    profile_batch=0),
        *(callbacks or []),
    ]
    if initial_epoch < config.epochs:
        history = model.fit(dataset, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                            initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose,
                            shuffle=False,
                            validation_data=validation,
                            validation_steps=max(1, config.steps_per_epoch // 10) if validation else None)
        _check_finite(history, run)
    with atomic_path(os.path.join(run, MODEL_FILE)) as tmp:
        model.save(tmp)
    _say(verbose, f"saved {os.path.join(run, MODEL_FILE)}")
    return run


def _check_finite(history, run: str) -> None:
    losses = history.history.get("g_loss", []) + history.history.get("d_ct", [])
    if any(not math.isfinite(float(v)) for v in losses):
        raise VAEGANError(run, "training diverged (non-finite loss); the last good checkpoint "
                               "is kept in checkpoints/ (try a lower learning rate)")


def _say(verbose, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)
