"""Choose and set the Keras dtype policy for ``--mixed-precision``.

Variables stay float32 under every mixed policy; generator outputs,
discriminator heads and losses are float32 by construction (their layers
are created with ``dtype="float32"``; the losses cast).
"""

from __future__ import annotations

import keras

from keras_vaegan.errors import VAEGANError

POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def resolve_policy(mode: str) -> str:
    """Policy name for a ``--mixed-precision`` value.

    ``auto`` stays float32 until the precision benchmark shows a gain on the
    machine at hand; ``float16`` needs per-optimizer loss scaling, which the
    train step does not do yet, so it is refused rather than run unscaled.
    """
    if mode == "auto":
        return "float32"
    if mode == "float16":
        raise VAEGANError(None, "--mixed-precision float16 is not supported yet "
                                "(it needs loss scaling); use bfloat16 or off")
    if mode not in POLICIES:
        raise VAEGANError(None, f"unknown --mixed-precision '{mode}' (auto, off, float16, bfloat16)")
    return POLICIES[mode]


def apply_precision(mode: str) -> str:
    policy = resolve_policy(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy
