"""TensorFlow: a GradientTape per update (generators first, then discriminators).

Under a ``tf.distribute`` strategy each replica's loss (a mean over its
share of the batch) is divided by the number of replicas, because the
optimizers sum gradients across replicas: the update is then the one for
the mean over the global batch. Under mixed_float16 the loss is scaled by
the first optimizer's loss scale (see ``backends.loss_scaling.scale_ratios``).
"""

from __future__ import annotations

import tensorflow as tf

from keras_vaegan.backends.distribution import Distribution, is_chief_worker
from keras_vaegan.backends.loss_scaling import scale_ratios, unpack_batch
from keras_vaegan.errors import VAEGANError


def accelerator_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def distribution(strategy: str) -> Distribution:
    """tf.distribute: all local GPUs (auto with several, or mirrored), or TF_CONFIG workers."""
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "auto" and len(gpus) < 2:
        return Distribution("none")
    if strategy in ("auto", "mirrored"):
        tf_strategy = tf.distribute.MirroredStrategy()
        chief = True
    elif strategy == "multiworker":
        tf_strategy = tf.distribute.MultiWorkerMirroredStrategy()
        chief = is_chief_worker()
    else:
        raise VAEGANError(None, f"unknown --strategy '{strategy}'")
    return Distribution(f"tf.distribute.{type(tf_strategy).__name__}",
                        tf_strategy.num_replicas_in_sync, chief, tf_strategy.scope())


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
