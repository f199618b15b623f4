"""Mirror averaging: a prediction is the mean of the translation of an image and of its mirror.

Training flips images left-right (``Config.flip``), so the mirror image of
a slice is as much a training image as the slice itself, and a translation
should commute with the flip. A trained generator's does not exactly: the
two translations differ by detail it made up, and on the phantom the two
errors were so little correlated that their mean was closer to the CT than
either: 5-6 HU at the end of two runs, 4-30 HU at earlier checkpoints
(benchmarks/RESULTS.md). Averaging them costs a second
forward pass and makes the prediction exactly mirror-symmetric (``predict``
of a mirrored slice is the mirrored prediction). Prediction, evaluation,
export and the snapshots all translate through ``translated``, so they
agree; training does not (its losses see single passes). With shift
averaging (``models.shifts``) each of the two passes is itself the mean over
the generator's phases.
"""

from __future__ import annotations

from typing import Callable

import keras

from keras_vaegan.models.shifts import shift_averaged

COLUMNS = 2  # [batch, rows, cols, channels]: a left-right mirror reverses the columns


def mirror(images):
    """``[batch, rows, cols, channels]`` with its columns reversed (left-right)."""
    return keras.ops.flip(images, axis=COLUMNS)


def mirror_averaged(forward: Callable, images, enabled: bool = True):
    """``(forward(x) + mirror(forward(mirror(x)))) / 2``; ``forward(x)`` alone if not enabled.

    ``forward`` maps ``[batch, rows, cols, K]`` to an image of the same
    layout (a generator pass that returns the translated image only). Two
    passes, not one of twice the batch: the memory a pass needs stays what
    ``predict --batch-size`` says.
    """
    if not enabled:
        return forward(images)
    direct = forward(images)
    mirrored = mirror(forward(mirror(images)))
    return keras.ops.multiply(keras.ops.add(direct, mirrored), keras.ops.cast(0.5, direct.dtype))


def averaged(forward: Callable, images, mirror: bool, shifts: bool, stride: int):
    """``forward`` mirror-averaged if ``mirror``, each pass shift-averaged over ``stride`` if ``shifts``."""
    return mirror_averaged(lambda x: shift_averaged(forward, x, stride, shifts), images, mirror)


def translated(net, images, sample: bool, enabled: bool, shifts: bool = False):
    """A generator's translated image (``z = mu`` unless ``sample``), mirror-averaged if enabled.

    With ``shifts`` also averaged over the generator's phases
    (``models.shifts``). The one prediction pass ``VAECycleGAN.translate``,
    predict's compiled pass and the export's serving graph all run.
    """
    return averaged(lambda x: net(x, training=False, sample=sample)[0], images, enabled, shifts,
                    getattr(net, "total_stride", 1))
