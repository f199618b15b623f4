"""TensorFlow: a GradientTape per update (generators first, then discriminators).

Under a ``tf.distribute`` strategy each replica's loss (a mean over its
share of the batch) is divided by the number of replicas, because the
optimizers sum gradients across replicas: the update is then the one for
the mean over the global batch. Under mixed_float16 the loss is scaled by
the first optimizer's loss scale (see ``backends.loss_scaling.scale_ratios``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import keras
import tensorflow as tf

from keras_vaegan.backends.distribution import Distribution, is_chief_worker
from keras_vaegan.backends.input_sharding import shard_global_batches
from keras_vaegan.backends.layer_calls import replaced_calls
from keras_vaegan.backends.loss_scaling import scale_ratios, unpack_batch
from keras_vaegan.errors import VAEGANError


def accelerator_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def accelerator_name() -> str | None:
    """The first GPU's model name, or None on a CPU (what a benchmark ran on)."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


# Seconds a collective may wait for the other workers before this one gives up.
COLLECTIVE_TIMEOUT_ENV = "KERAS_VAEGAN_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT_S = 600
# What a collective raises when a peer is gone (health check) or too slow (timeout).
WORKER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                   tf.errors.CancelledError, tf.errors.AbortedError)


def distribution(strategy: str) -> Distribution:
    """tf.distribute: all local GPUs (auto with several, or mirrored), or TF_CONFIG workers."""
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "auto" and len(gpus) < 2:
        return Distribution("none")
    if strategy in ("auto", "mirrored"):
        tf_strategy = tf.distribute.MirroredStrategy()
        return Distribution(f"tf.distribute.{type(tf_strategy).__name__}",
                            tf_strategy.num_replicas_in_sync, True, tf_strategy.scope())
    if strategy == "multiworker":
        return _multi_worker()
    raise VAEGANError(None, f"unknown --strategy '{strategy}'")


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose ``reduce`` takes nests and scalars as Keras passes them.

    Keras 3's TensorFlow ``fit`` calls ``reduce`` in two ways the multi-worker
    strategy refuses: on the first ``(mri, ct)`` batch, a tuple (to build the
    model: "Attempt to convert a value (PerReplica...) to a Tensor"), and on
    each step's scalar losses with ``axis=0`` ("Invalid reduction dimension
    0 for input with 0 dimensions"). Each value of a nest is reduced on its
    own, and a scalar across replicas only (the mean of the replicas' means
    over equal shares is the mean over the global batch).
    """

    def reduce(self, reduce_op, value, axis):
        one = super().reduce

        def reduce_one(v):
            rank = getattr(v, "values", (v,))[0].shape.rank
            return one(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)


def _multi_worker() -> Distribution:
    """The TF_CONFIG cluster; each worker trains on its own rows of every global batch."""
    timeout = float(os.environ.get(COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT_S))
    tf_strategy = _MultiWorkerStrategy(communication_options=tf.distribute.experimental
                                       .CommunicationOptions(timeout_seconds=timeout))

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)

    def distribute_dataset(make_dataset):
        def one_pass():
            def per_worker(context):
                local = context.num_replicas_in_sync // context.num_input_pipelines
                return shard_global_batches(make_dataset(), context.input_pipeline_id,
                                            context.num_input_pipelines, local)

            return tf_strategy.distribute_datasets_from_function(per_worker, options)

        return _fresh_pipeline_per_pass(one_pass)

    return Distribution("tf.distribute.MultiWorkerMirroredStrategy",
                        tf_strategy.num_replicas_in_sync, is_chief_worker(),
                        tf_strategy.scope(), distribute_dataset)


def _fresh_pipeline_per_pass(one_pass):
    """A distributed dataset that builds a new input pipeline each time it is iterated.

    Keras's TensorFlow ``fit`` under a strategy iterates its dataset twice:
    once to draw a batch that builds the model, then again to train. This
    was written when the pipeline's shuffle drew a new order for each
    iteration (the run trained on the second order while one process trained
    on its first); the index shuffle is stateless now
    (``tests/test_pipeline.py``), and a fresh pipeline per pass still keeps
    each worker's pass independent of what the build pass read. Keras checks
    the dataset's class, so the first pass's object is kept and only its
    ``__iter__`` is changed.
    """
    first = one_pass()
    base = type(first)
    passes = [first]

    def fresh_iter(self):
        return base.__iter__(passes.pop() if passes else one_pass())

    first.__class__ = type("FreshPipelinePerPass", (base,), {"__iter__": fresh_iter})
    return first


def _update(loss_fn, nets_and_optimizers):
    """Differentiate ``loss_fn() -> (loss, aux)`` and let each optimizer update its net."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    variables = [v for net, _ in nets_and_optimizers for v in net.trainable_variables]
    with tf.GradientTape() as tape:
        loss, aux = loss_fn()
        scaled = nets_and_optimizers[0][1].scale_loss(loss / replicas)
    grads = tape.gradient(scaled, variables)
    start = 0
    for (net, optimizer), ratio in zip(nets_and_optimizers, scale_ratios(nets_and_optimizers)):
        own = net.trainable_variables
        part = grads[start:start + len(own)]
        if ratio is not None:
            part = [g * tf.cast(ratio, g.dtype) for g in part]
        optimizer.apply(part, own)
        start += len(own)
    return aux


def train_step(model, data):
    mri, ct = unpack_batch(data)

    def generator_loss():
        total, terms, fakes = model.generator_objective(mri, ct, training=True)
        return total, (terms, fakes)

    terms, (fake_ct, fake_mri) = _update(generator_loss, model.generator_updates)
    shown_ct, shown_mri = model.pooled_fakes(fake_ct, fake_mri)

    def discriminator_loss():
        d_terms = model.discriminator_objective(mri, ct, shown_ct, shown_mri)
        return d_terms["d_ct"] + d_terms["d_mri"], d_terms

    d_terms = _update(discriminator_loss, model.discriminator_updates)
    return model.update_trackers({**terms, **d_terms})


def test_step(model, data):
    mri, ct = unpack_batch(data)
    return model.update_trackers(model.evaluation_terms(mri, ct))


# --- prediction: a compiled forward pass ----------------------------------------------


FEW_FILTERS = 5  # measured faster as depthwise passes for 1, 3 and 5 filters (K of 2.5-D runs)


def compiled_forward(compiled, net) -> Callable:
    """Prediction's compiled pass of ``net`` for ``compiled.shape`` (see ``inference.compiled``)."""
    def traced(images):
        with _few_filter_convs_as_depthwise(net), instance_norms_fused(net):
            return compiled.forward(net, images)

    spec = tf.TensorSpec(compiled.input_shape, tf.float32)
    return tf.function(traced, input_signature=[spec], jit_compile=False, reduce_retracing=True)


@contextlib.contextmanager
def _few_filter_convs_as_depthwise(net):
    """While tracing, run each stride-1 ``Conv2D`` with few filters as depthwise conv + sum.

    TensorFlow's CPU kernels handle a convolution with one output channel
    badly: the generator's last layer (7x7, 32 -> 1, at full resolution) took
    230 ms of a 1.9 s batch of 8 slices of 256x256, against 24 ms for the same
    sums as a depthwise convolution followed by a sum over channels. A 2.5-D
    run's last layer has K filters (32 -> 3): one such depthwise pass per
    filter took 96-108 ms against 259-338 ms for the convolution (one filter
    with a channel multiplier of K did not help: 431-471 ms); for 5 filters
    162-315 ms against 316-638 ms. The values are
    the same sums in another order (float32: ~3e-6 relative).
    """
    def replacement(layer):
        if not (type(layer) is keras.layers.Conv2D and layer.filters <= FEW_FILTERS
                and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
                and layer.padding in ("same", "valid") and layer.data_format == "channels_last"
                and layer.groups == 1):
            return None

        def call(inputs):
            kernel = tf.cast(keras.ops.convert_to_tensor(layer.kernel), inputs.dtype)
            outs = [tf.reduce_sum(tf.nn.depthwise_conv2d(inputs, kernel[..., f:f + 1],
                                                         [1, 1, 1, 1], layer.padding.upper()),
                                  axis=-1, keepdims=True) for f in range(layer.filters)]
            out = outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)
            if layer.use_bias:
                out = out + tf.cast(keras.ops.convert_to_tensor(layer.bias), out.dtype)
            return layer.activation(out)

        return call

    with replaced_calls([net], replacement) as patched:
        yield patched


@contextlib.contextmanager
def instance_norms_fused(*models):
    """While tracing, run each instance norm as TensorFlow's fused batch norm of each image.

    An instance norm is Keras's ``GroupNormalization`` with one group per
    channel. Keras computes it in float32 from a 5-D reshape, in separate
    passes for the cast, the mean, the mean square and the scaling: with
    mixed bfloat16 at 8x256x256 that was about 40 % of the generator's
    forward time (the same pass with the norms removed took 1.5 s against
    2.55). ``FusedBatchNormV3`` in training mode over one image normalises
    each channel over that image's pixels, which is the instance norm, in one
    oneDNN pass (bf16 in, float32 statistics, biased variance as Keras's).
    Measured in one process: 1.59 -> 1.15 s per batch of 8 slices of 256x256
    in bf16, 2.22 -> 1.95 s in float32; float32 values within 3e-5 of Keras's;
    in bf16 the same error against a float32 pass as Keras's own (mean 0.021,
    max 0.18 in model units, untrained weights).
    """
    def replacement(layer):
        if type(layer) is not keras.layers.GroupNormalization or layer.axis not in (-1, 3):
            return None

        def call(inputs):
            channels = inputs.shape[-1]
            if inputs.shape.rank != 4 or channels is None or layer.groups != channels:
                return type(layer).call(layer, inputs)
            scale = (tf.cast(layer.gamma, tf.float32) if layer.scale
                     else tf.ones([channels], tf.float32))
            offset = (tf.cast(layer.beta, tf.float32) if layer.center
                      else tf.zeros([channels], tf.float32))
            return tf.cast(_instance_norm(inputs, scale, offset, layer.epsilon),
                           layer.compute_dtype)

        return call

    with replaced_calls(models, replacement) as patched:
        yield patched


def _instance_norm(images, scale, offset, epsilon: float):
    """Per-image, per-channel normalisation of NHWC ``images`` by fused batch norms.

    A static batch is split into single images (one fused call each); an
    unknown batch is moved next to the channels ([1, H, W, B*C]) for one call.
    """
    def fused(x, scale, offset):
        return tf.compat.v1.nn.fused_batch_norm(x, scale, offset, epsilon=epsilon,
                                                is_training=True)[0]

    count = images.shape[0]
    if count is not None:
        if count == 1:
            return fused(images, scale, offset)
        return tf.concat([fused(image, scale, offset)
                          for image in tf.split(images, count, axis=0)], axis=0)
    shape = tf.shape(images)
    stacked = tf.reshape(tf.transpose(images, [1, 2, 0, 3]),
                         [1, shape[1], shape[2], shape[0] * shape[3]])
    out = fused(stacked, tf.tile(scale, [shape[0]]), tf.tile(offset, [shape[0]]))
    return tf.transpose(tf.reshape(out, [shape[1], shape[2], shape[0], shape[3]]), [2, 0, 1, 3])
