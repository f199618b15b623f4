"""Each worker's share of every global batch, for multi-worker training.

Every worker builds the same ``(mri, ct)`` dataset of *global* batches (the
pipeline draws every random choice from the seed and the element's position,
so the workers' streams are identical) and keeps rows
``[w * B / W, (w + 1) * B / W)`` of each batch, cut into one consecutive
piece per local replica. Over the workers the pieces of a global batch are
disjoint and cover it: no crop is trained twice and none is missed, and the
optimizers' all-reduce sees exactly the batch one process would see, so a
run on W workers follows the same loss curve as one process with the same
``--batch-size`` and seed.

The price: each worker runs the whole input pipeline and trains on 1/W of
it. Cropping a cached slice is cheap next to a training step; a pipeline
with expensive per-element work should shard before that work instead.

``KERAS_VAEGAN_INPUT_LOG=FOLDER`` (debugging and tests): each worker appends
one line per batch it draws, ``worker step row hash`` (a hash of every crop
of its share), to ``FOLDER/input-<worker>.txt``. Batches are drawn ahead of
the step (prefetch), so a log can run a few batches past the last step.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow as tf

INPUT_LOG_ENV = "KERAS_VAEGAN_INPUT_LOG"


def shard_global_batches(dataset: tf.data.Dataset, worker: int, workers: int,
                         local_replicas: int = 1) -> tf.data.Dataset:
    """Worker ``worker``'s rows of each global batch, as ``local_replicas`` per-replica batches.

    ``dataset`` yields tuples of tensors whose first dimension is the global
    batch size, a multiple of ``workers * local_replicas`` (and static).
    """
    global_batch = tf.nest.flatten(dataset.element_spec)[0].shape[0]
    pieces = workers * local_replicas
    if global_batch is None or global_batch % pieces:
        raise ValueError(f"global batch {global_batch} does not split into {pieces} equal pieces")
    per_replica = global_batch // pieces
    rows = local_replicas * per_replica
    first = worker * rows

    def share(*tensors):
        return tuple(t[first:first + rows] for t in tensors)

    shares = dataset.map(share)
    log_folder = os.environ.get(INPUT_LOG_ENV)
    if log_folder:
        shares = _logged(shares, os.path.join(log_folder, f"input-{worker}.txt"), worker, first)
    if local_replicas == 1:
        return shares
    return shares.unbatch().batch(per_replica, drop_remainder=True)


def crop_hashes(batch: np.ndarray) -> list[str]:
    """A short content hash per crop of a ``[n, h, w, c]`` batch (row order kept)."""
    return [hashlib.sha1(np.ascontiguousarray(crop).tobytes()).hexdigest()[:16] for crop in batch]


def _logged(dataset: tf.data.Dataset, path: str, worker: int, first: int) -> tf.data.Dataset:
    """Append ``worker step row mri_hash ct_hash`` for each crop of each share drawn."""
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def record(step, mri, ct):
        with open(path, "a") as handle:
            for row, (m, c) in enumerate(zip(crop_hashes(mri.numpy()), crop_hashes(ct.numpy()))):
                handle.write(f"{worker} {int(step)} {first + row} {m} {c}\n")
        return step

    def logged(step, batch):
        done = tf.py_function(record, [step, batch[0], batch[1]], tf.int64)
        with tf.control_dependencies([done]):
            return tuple(tf.identity(t) for t in batch)

    return dataset.enumerate().map(logged)
