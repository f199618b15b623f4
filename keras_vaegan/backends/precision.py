"""Choose and set the Keras dtype policy for ``--mixed-precision`` (training and inference).

Variables stay float32 under every mixed policy; generator outputs,
discriminator heads and losses are float32 by construction (their layers
are created with ``dtype="float32"``; the losses cast). Under
``mixed_float16`` every optimizer is wrapped in a ``LossScaleOptimizer``
(``VAECycleGAN.compile``), which skips non-finite steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from keras_vaegan import backends
from keras_vaegan.errors import VAEGANError

POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return False
    flags = set(text.split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def accelerator_available() -> bool:
    return backends.get().accelerator_available()


def resolve_policy(mode: str) -> str:
    """Policy name for a ``--mixed-precision`` value.

    ``auto``: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native
    bf16, float32 otherwise.
    """
    if mode == "auto":
        if accelerator_available():
            return "mixed_float16"
        return "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"
    if mode not in POLICIES:
        raise VAEGANError(None, f"unknown --mixed-precision '{mode}' (auto, off, float16, bfloat16)")
    return POLICIES[mode]


def apply_precision(mode: str) -> str:
    policy = resolve_policy(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def policy_scope(mode: str) -> Iterator[str]:
    """The policy for ``mode`` while the block runs (e.g. while a model is loaded), then the old one.

    A loaded model's layers take the global policy in force when they are
    created, so loading under this scope sets the precision the model computes
    in without leaving the caller's process changed.
    """
    policy = resolve_policy(mode)
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(before)
