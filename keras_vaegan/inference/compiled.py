"""Compiled forward passes for prediction: one per batch shape, traced once, reused.

Eager Keras dispatches every layer from Python on every batch, which made
``predict`` a third slower than the graph the same model exports. Here each
(generator, batch, rows, cols, sampling) gets one compiled function with a
fixed input shape, built by the backend's ``compiled_forward``
(``keras_vaegan.backends``): ``tf.function`` (no XLA, as the SavedModel) on
TensorFlow, ``jax.jit`` over the generator's ``stateless_call`` on JAX, and
eager under ``torch.no_grad()`` on torch. Callers pad a short last batch up
to the batch size, so one trace serves a whole volume and every later
volume of the same slice shape. Functions are cached per model (weakly: a
model that is dropped takes its functions with it).
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from keras_vaegan import backends

MAX_CACHED = 32  # compiled functions kept per model (each holds a traced graph)
_CACHE: "weakref.WeakKeyDictionary[object, dict[tuple, CompiledTranslation]]" = \
    weakref.WeakKeyDictionary()


def generator_of(model, direction: str):
    """The generator a direction runs (``g_ct`` for mri2ct), or None for a duck-typed model."""
    return getattr(model, "g_ct" if direction == "mri2ct" else "g_mri", None)


class CompiledTranslation:
    """``fn(images [batch, rows, cols, 1] float32) -> translated [batch, rows, cols] float32``.

    ``traces`` counts how often the Python function was traced (compiled).
    """

    def __init__(self, net, shape: tuple[int, int, int], sample: bool):
        self.shape, self.sample, self.traces = shape, sample, 0
        self._run = backends.get().compiled_forward(self, net)

    def forward(self, net, images):
        """The traced body: one generator pass, the translated image only."""
        self.traces += 1
        return net(images, training=False, sample=self.sample)[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape != self.shape + (1,):
            raise ValueError(f"compiled for {self.shape + (1,)}, got {images.shape}")
        out = self._run(np.ascontiguousarray(images, dtype=np.float32))
        return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)[..., 0]


def compiled_translation(model, direction: str, shape: tuple[int, int, int],
                         sample: bool) -> CompiledTranslation | None:
    """The cached compiled pass of ``model`` for ``shape`` = (batch, rows, cols); None if none.

    A model without generators (a stand-in exposing ``translate``) gets None
    and is run eagerly by the caller.
    """
    net = generator_of(model, direction)
    if net is None:
        return None
    key = (direction, tuple(int(s) for s in shape), bool(sample))
    functions = _CACHE.setdefault(model, {})
    if key not in functions:
        if len(functions) >= MAX_CACHED:  # a folder of many slice sizes: drop the oldest
            del functions[next(iter(functions))]
        functions[key] = CompiledTranslation(net, key[1], key[2])
    return functions[key]
