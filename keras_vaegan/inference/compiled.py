"""Compiled forward passes for prediction: one per batch shape, traced once, reused.

Eager Keras dispatches every layer from Python on every batch, which made
``predict`` a third slower than the graph the same model exports. Here each
(generator, batch, rows, cols, sampling) gets one compiled function with a
fixed input shape: ``tf.function`` (no XLA, as the SavedModel) on
TensorFlow, ``jax.jit`` over the generator's ``stateless_call`` on JAX, and
eager under ``torch.no_grad()`` on torch. Callers pad a short last batch up
to the batch size, so one trace serves a whole volume and every later
volume of the same slice shape. Functions are cached per model (weakly: a
model that is dropped takes its functions with it).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable

import keras
import numpy as np

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
        self._run = _BUILDERS[keras.backend.backend()](self, net)

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


def _tensorflow(compiled: CompiledTranslation, net) -> Callable:
    import tensorflow as tf

    def traced(images):
        with _one_filter_convs_as_depthwise(net):
            return compiled.forward(net, images)

    spec = tf.TensorSpec(compiled.shape + (1,), tf.float32)
    return tf.function(traced, input_signature=[spec], jit_compile=False, reduce_retracing=True)


@contextlib.contextmanager
def _one_filter_convs_as_depthwise(net):
    """While tracing, run each stride-1 ``Conv2D`` with one filter as depthwise conv + sum.

    TensorFlow's CPU kernels handle a convolution with one output channel
    badly: the generator's last layer (7x7, 32 -> 1, at full resolution) took
    230 ms of a 1.9 s batch of 8 slices of 256x256, against 24 ms for the same
    sums as a depthwise convolution followed by a sum over channels. The
    values are the same sums in another order (float32: ~1e-6 relative).
    """
    import tensorflow as tf

    patched = []
    for layer in net._flatten_layers(include_self=False, recursive=True):
        if not (type(layer) is keras.layers.Conv2D and layer.filters == 1
                and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
                and layer.padding in ("same", "valid") and layer.data_format == "channels_last"
                and layer.groups == 1):
            continue

        def call(inputs, layer=layer):
            kernel = tf.cast(keras.ops.convert_to_tensor(layer.kernel), inputs.dtype)
            out = tf.nn.depthwise_conv2d(inputs, kernel, [1, 1, 1, 1], layer.padding.upper())
            out = tf.reduce_sum(out, axis=-1, keepdims=True)
            if layer.use_bias:
                out = out + tf.cast(keras.ops.convert_to_tensor(layer.bias), out.dtype)
            return layer.activation(out)

        object.__setattr__(layer, "call", call)
        patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")


def _jax(compiled: CompiledTranslation, net) -> Callable:
    import jax

    def pure(trainable, non_trainable, images):
        compiled.traces += 1
        (image, _, _), non_trainable = net.stateless_call(
            trainable, non_trainable, images, training=False, sample=compiled.sample)
        return image, non_trainable

    jitted = jax.jit(pure)

    def run(images):
        image, non_trainable = jitted([v.value for v in net.trainable_variables],
                                      [v.value for v in net.non_trainable_variables], images)
        if compiled.sample:  # the latent's seed state moved on: keep it, as an eager call does
            for variable, value in zip(net.non_trainable_variables, non_trainable):
                variable.assign(value)
        return image

    return run


def _torch(compiled: CompiledTranslation, net) -> Callable:
    import torch

    compiled.traces += 1  # eager: nothing to trace, one "compile" per shape for the counter

    def run(images):
        with torch.no_grad():
            return net(keras.ops.convert_to_tensor(images), training=False,
                       sample=compiled.sample)[0]

    return run


_BUILDERS = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}
