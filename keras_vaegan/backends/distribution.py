"""``--strategy``: train on several devices with the backend's own engine.

TensorFlow uses ``tf.distribute`` (MirroredStrategy on one machine,
MultiWorkerMirroredStrategy across machines from ``TF_CONFIG``); JAX uses
``keras.distribution.DataParallel``; PyTorch trains on one device. The
backend-specific part lives in each step module's ``distribution``; this module
only decides and describes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from keras_vaegan.errors import VAEGANError, WorkerLostError


@dataclass
class Distribution:
    """How a run is spread: the scope to build the model in, replicas, chief or not."""

    name: str
    replicas: int = 1
    is_chief: bool = True
    scope: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    # make_dataset -> what fit trains on: the dataset, or (multi-worker) each worker's rows of
    # every global batch, from a pipeline built afresh for each pass.
    distribute_dataset: Callable = field(default=lambda make_dataset: make_dataset())


def is_chief_worker(tf_config: str | None = None) -> bool:
    """Chief per TF_CONFIG: the 'chief' task, or worker 0 when there is no chief."""
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not raw:
        return True
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError:
        raise VAEGANError(None, "TF_CONFIG is not valid JSON") from None
    task = spec.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in spec.get("cluster", {})


def setup_distribution(strategy: str, batch_size: int) -> Distribution:
    """Create the distribution for ``strategy`` (auto | none | mirrored | multiworker)."""
    if strategy == "none":
        return Distribution("none")
    from keras_vaegan.backends import get

    dist = get().distribution(strategy)
    if batch_size % dist.replicas:
        raise VAEGANError(None, f"--batch-size {batch_size} must be a multiple of the "
                                f"{dist.replicas} replicas of --strategy {strategy}")
    return dist


@contextlib.contextmanager
def worker_failures_as_errors(strategy: str):
    """Multi-worker: a lost or timed-out peer becomes one ``VAEGANError``, not a traceback.

    Collectives fail when another worker dies (the strategy's health check
    aborts them) or when one waits past the collective timeout; either way
    this worker cannot go on, and every worker must be restarted with
    ``--resume`` (the chief's last checkpoint is the common point).
    """
    if strategy != "multiworker":
        yield
        return
    from keras_vaegan.backends import get

    failures = getattr(get(), "WORKER_FAILURES", ())
    try:
        yield
    except failures as err:
        raise WorkerLostError(None, "multi-worker training stopped: another worker died or "
                                    f"cannot be reached ({type(err).__name__}); restart every "
                                    "worker with --resume") from None
