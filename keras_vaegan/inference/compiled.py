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
from keras_vaegan.models.mirror import averaged, translated

MAX_CACHED = 32  # compiled functions kept per model (each holds a traced graph)
_CACHE: "weakref.WeakKeyDictionary[object, dict[tuple, CompiledTranslation]]" = \
    weakref.WeakKeyDictionary()


def context_of(model) -> int:
    """K, the slices a model sees per stack (``config.context_slices``); 1 for a 2-D model."""
    return int(getattr(getattr(model, "settings", None), "context_slices", 1))


def mirrors(model) -> bool:
    """Whether the model's predictions are mirror-averaged (``config.mirror_average``)."""
    return bool(getattr(getattr(model, "settings", None), "mirror_average", False))


def shifts(model) -> bool:
    """Whether the model's predictions are shift-averaged (``config.shift_average``)."""
    return bool(getattr(getattr(model, "settings", None), "shift_average", False))


def generator_of(model, direction: str):
    """The generator a direction runs (``g_ct`` for mri2ct), or None for a duck-typed model."""
    return getattr(model, "g_ct" if direction == "mri2ct" else "g_mri", None)


class CompiledTranslation:
    """``fn(stacks [batch, rows, cols, K] float32) -> centre slice [batch, rows, cols] float32``.

    K is the run's ``context_slices`` (1: plain slices); the generator maps a
    stack to a stack, and prediction keeps its centre channel ``K // 2``.
    ``traces`` counts how often the Python function was traced (compiled).
    """

    def __init__(self, net, shape: tuple[int, int, int], sample: bool, channels: int = 1,
                 mirror: bool = False, shift: bool = False):
        self.shape, self.sample, self.traces = shape, sample, 0
        self.channels = int(channels)
        self.mirror = bool(mirror)  # mirror-averaged (models.mirror): two passes per batch
        self.shift = bool(shift)  # and shift-averaged (models.shifts): the stride's passes each
        self.stride = int(getattr(net, "total_stride", 1))
        self.input_shape = shape + (self.channels,)
        self._run = backends.get().compiled_forward(self, net)

    def forward(self, net, images):
        """The traced body (counted in ``traces``): the translated image only."""
        self.traces += 1
        return self.translated(net, images)

    def translated(self, net, images):
        """The generator's translation of ``images``, mirror- and shift-averaged as set."""
        return translated(net, images, self.sample, self.mirror, self.shift)

    def averaged(self, forward, images):
        """``forward(images)``, mirror- and shift-averaged as set (for a backend's own pass)."""
        return averaged(forward, images, self.mirror, self.shift, self.stride)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape != self.input_shape:
            raise ValueError(f"compiled for {self.input_shape}, got {images.shape}")
        out = self._run(np.ascontiguousarray(images, dtype=np.float32))
        return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)[..., self.channels // 2]


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
        functions[key] = CompiledTranslation(net, key[1], key[2], channels=context_of(model),
                                             mirror=mirrors(model), shift=shifts(model))
    return functions[key]
