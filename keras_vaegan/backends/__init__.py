"""What differs per Keras backend: taking gradients, spreading over devices, loss scaling.

Each backend has one small module of steps (``tensorflow_steps``,
``jax_steps``, ``torch_steps``) with the same functions: ``train_step`` and
``test_step`` in the signature its Keras trainer calls, ``distribution`` for
``--strategy``, ``accelerator_available`` and ``accelerator_name``, and
``compiled_forward``, the compiled generator pass ``predict`` runs
(``inference.compiled``). ``get()`` returns the module of the running
backend; nothing else in the package imports a backend library (the
``tf.data`` pipeline and export aside).

As in Keras itself (``keras/src/backend/<name>/trainer.py`` sits below
``keras.Model``), this layer sits below ``models``: the model calls its
backend's step, and the steps call the model's objective through its public
methods without importing it.
"""

from __future__ import annotations

from types import ModuleType

import keras

from keras_vaegan.errors import VAEGANError


def get(backend: str | None = None) -> ModuleType:
    """The step module of ``backend`` (default: the one Keras runs on)."""
    name = backend or keras.backend.backend()
    if name == "tensorflow":
        from keras_vaegan.backends import tensorflow_steps as steps
    elif name == "jax":
        from keras_vaegan.backends import jax_steps as steps
    elif name == "torch":
        from keras_vaegan.backends import torch_steps as steps
    else:
        raise VAEGANError(None, f"Keras backend '{name}' is not supported "
                                "(tensorflow, jax or torch)")
    return steps
