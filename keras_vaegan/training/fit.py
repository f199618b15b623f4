"""Train a VAE-CycleGAN run: data -> model -> ``keras.Model.fit`` with callbacks.

A run directory holds everything needed to predict, resume or inspect:
``model.keras``, ``config.json``, ``history.csv`` and ``history.png``,
``checkpoints/``, ``snapshots/`` and ``logs/`` (TensorBoard: scalars and
the snapshot grids).
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import sys

import keras

from keras_vaegan.backends.distribution import setup_distribution, worker_failures_as_errors
from keras_vaegan.backends.precision import apply_precision
from keras_vaegan.config import CONFIG_FILE, MODEL_FILE, Config
from keras_vaegan.data.pipeline import make_training_dataset, make_validation_batch
from keras_vaegan.data.slice_cache import cache_root
from keras_vaegan.data.training_data import load_training_data
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_path, remove_partial_writes
from keras_vaegan.models.vaecyclegan import VAECycleGAN
from keras_vaegan.training.callbacks import (
    CHECKPOINTS,
    SNAPSHOTS,
    FinishInterruptedEpoch,
    GracefulInterrupt,
    epoch_writers,
    read_checkpoint_state,
    restore_checkpoint,
)
from keras_vaegan.training.faults import FaultPoint


def default_run_dir(root: str = "savedmodels") -> str:
    return os.path.join(root, datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S"))


def fit(config: Config, output: str | None = None, data_root: str | None = None,
        mri_dir: str | None = None, ct_dir: str | None = None, resume: bool = False,
        validation_data: str | None = None, verbose: int | str = "auto",
        callbacks: list | None = None, messages: bool | None = None, on_bad=None) -> str:
    """Train (or resume) a run and return its directory.

    ``callbacks`` are extra Keras callbacks run after the run's own.
    ``on_bad`` (``--skip-bad``): called with the ``VAEGANError`` of each bad
    input file, which is left out; by default a bad file stops ``fit`` before
    anything is written.
    ``verbose`` is Keras's progress bar; ``messages`` (default: ``bool(verbose)``)
    prints what the run is doing (data, policy, resume point) to stderr.

    ``resume`` continues from the last checkpoint in ``output/checkpoints``
    (an epoch's end, or the step a Ctrl-C stopped at: then only the rest of
    that epoch is trained) with the optimizers' state and the learning-rate
    schedule position.
    """
    show = bool(verbose) if messages is None else messages
    say = _print_message if show else (lambda text: None)
    run = output or default_run_dir()
    checkpoints = os.path.join(run, CHECKPOINTS)
    if resume:
        if read_checkpoint_state(checkpoints) is None:
            raise VAEGANError(run, "nothing to resume: no checkpoint in this run folder")
    elif os.path.exists(os.path.join(run, MODEL_FILE)) or read_checkpoint_state(checkpoints):
        raise VAEGANError(run, "a run already exists here: use --resume to continue it "
                               "or --output for a new run")
    previous_policy = keras.mixed_precision.dtype_policy()
    try:
        with worker_failures_as_errors(config.strategy):
            return _fit(config, run, checkpoints, data_root, mri_dir, ct_dir, resume,
                        validation_data, verbose, callbacks, say, on_bad)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _fit(config, run, checkpoints, data_root, mri_dir, ct_dir, resume, validation_data,
         verbose, callbacks, say, on_bad=None) -> str:
    policy = apply_precision(config.mixed_precision)
    if config.jit_compile and policy == "mixed_bfloat16" and keras.backend.backend() == "tensorflow":
        raise VAEGANError(None, "--jit-compile with bfloat16 fails in TensorFlow's XLA "
                                "(bilinear upsampling gradients mix precisions); drop one of them")
    distribution = setup_distribution(config.strategy, config.batch_size)
    keras.utils.set_random_seed(config.seed)
    cache = cache_root(config.data_cache)  # the slice cache: decode once, stream from disk
    data = load_training_data(config, data_root=data_root, mri_dir=mri_dir, ct_dir=ct_dir,
                              on_bad=on_bad, cache_dir=cache)
    config = data.config.replace(precision_policy=policy)
    held_out = None  # read before the run folder is made: a bad file writes nothing
    if validation_data:
        held_out = load_training_data(config, data_root=validation_data, on_bad=on_bad,
                                      cache_dir=cache)
    say(f"data: {data.origin}")
    say(f"backend: {keras.backend.backend()}, precision policy: {policy}, "
                  f"distribution: {distribution.name} ({distribution.replicas} replica(s))")
    if distribution.is_chief:  # the other workers of a multi-worker run write nothing
        try:
            os.makedirs(os.path.join(run, SNAPSHOTS), exist_ok=True)
        except OSError as err:
            raise VAEGANError(run, f"cannot create the run folder ({err.strerror})") from None
        config.save(os.path.join(run, CONFIG_FILE))

    dataset = distribution.distribute_dataset(
        functools.partial(make_training_dataset, data.mri, data.ct, config))
    val_mri, val_ct = make_validation_batch(data.mri, data.ct, config, config.snapshot_count)
    validation = None
    if held_out is not None:
        validation = distribution.distribute_dataset(functools.partial(
            make_training_dataset, held_out.mri, held_out.ct, config, seed=config.seed + 7))

    with distribution.scope:
        model = VAECycleGAN(config)
        model.compile()
        initial_epoch = restore_checkpoint(model, checkpoints) if resume else 0
    if resume:
        state = read_checkpoint_state(checkpoints)
        within = state["iterations"] - initial_epoch * config.steps_per_epoch if state else 0
        say(f"resuming after epoch {initial_epoch} of {config.epochs}"
            + (f" and {within} steps of the next" if 0 < within < config.steps_per_epoch else ""))
        if distribution.is_chief:  # writes a kill cut short
            for folder in (run, os.path.join(run, SNAPSHOTS)):
                remove_partial_writes(folder)
    # Only the chief writes (multi-worker training); the others train in step.
    interrupt = GracefulInterrupt()
    writers = epoch_writers(run, val_mri, val_ct, interrupt=interrupt, resume=resume,
                            initial_epoch=initial_epoch,
                            checkpoint_every=config.checkpoint_every) if distribution.is_chief \
        else [FaultPoint("worker-epoch-end")]
    callbacks = [interrupt, FinishInterruptedEpoch(interrupt),
                 keras.callbacks.TerminateOnNaN(), *writers, *(callbacks or [])]
    if initial_epoch < config.epochs:
        history = model.fit(dataset, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                            initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose,
                            shuffle=False,
                            validation_data=validation,
                            validation_steps=max(1, config.steps_per_epoch // 10) if validation else None)
        _check_finite(history, run)
        if interrupt.requested:
            raise TrainingInterrupted(run, read_checkpoint_state(checkpoints))
    # Keras's fit only finalises a single optimizer: swap the generators'
    # weight averages (ema_momentum > 0) in here; a no-op otherwise.
    model.optimizer.finalize_variable_values(model.trainable_weights)
    if distribution.is_chief:
        with atomic_path(os.path.join(run, MODEL_FILE)) as tmp:
            model.save(tmp)
        say(f"saved {os.path.join(run, MODEL_FILE)}")
    return run


class TrainingInterrupted(Exception):
    """Ctrl-C: training stopped after a step and a checkpoint was saved."""

    def __init__(self, run: str, state: dict | None):
        self.run = run
        done = f"{state['iterations']} steps" if state else "no step"
        super().__init__(f"interrupted: checkpoint saved ({done} done). Resume with: "
                         f"python cli.py fit --resume --output {run}")


def _check_finite(history, run: str) -> None:
    losses = history.history.get("g_loss", []) + history.history.get("d_ct", [])
    if any(not math.isfinite(float(v)) for v in losses):
        raise VAEGANError(run, "training diverged (non-finite loss); the last good checkpoint "
                               "is kept in checkpoints/ (try a lower learning rate)")


def _print_message(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
