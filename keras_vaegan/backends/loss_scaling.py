"""Loss scaling when one backward pass serves several optimizers (mixed_float16)."""

from __future__ import annotations

import keras


def loss_scale(optimizer):
    """The optimizer's current loss scale (1 when it does not scale)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
    return 1.0


def scale_ratios(nets_and_optimizers) -> list:
    """Per optimizer: its loss scale over the first one's.

    One backward pass serves several optimizers (both generators share L_G),
    so the loss is scaled by the first optimizer's scale and each other
    optimizer's gradients are multiplied by this ratio before it unscales
    them with its own scale.
    """
    first = nets_and_optimizers[0][1]
    ratios = []
    for _, optimizer in nets_and_optimizers:
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or isinstance(
            first, keras.optimizers.LossScaleOptimizer)
        ratios.append(keras.ops.divide(loss_scale(optimizer), loss_scale(first))
                      if scaled and optimizer is not first else None)
    return ratios


def unpack_batch(data):
    """(mri, ct) from what fit() passes: a tuple, or a tuple wrapped as x."""
    if isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    mri, ct = data[0], data[1]
    return mri, ct
