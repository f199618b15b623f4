"""TensorFlow: a GradientTape per update (generators first, then discriminators)."""

from __future__ import annotations

import tensorflow as tf

from keras_vaegan.models.vaecyclegan import unpack_batch


def _apply(model, grads, nets_and_optimizers):
    start = 0
    for net, optimizer in nets_and_optimizers:
        variables = net.trainable_variables
        optimizer.apply(grads[start:start + len(variables)], variables)
        start += len(variables)


def train_step(model, data):
    mri, ct = unpack_batch(data)
    with tf.GradientTape() as tape:
        g_total, terms, (fake_ct, fake_mri) = model.generator_objective(mri, ct, training=True)
    grads = tape.gradient(g_total, model.generator_variables)
    _apply(model, grads, [(model.g_ct, model.g_ct_optimizer), (model.g_mri, model.g_mri_optimizer)])

    shown_ct, shown_mri = model.pooled_fakes(fake_ct, fake_mri)
    with tf.GradientTape() as tape:
        d_terms = model.discriminator_objective(mri, ct, shown_ct, shown_mri)
        d_total = d_terms["d_ct"] + d_terms["d_mri"]
    grads = tape.gradient(d_total, model.discriminator_variables)
    _apply(model, grads, [(model.d_ct, model.d_ct_optimizer), (model.d_mri, model.d_mri_optimizer)])
    return model.update_trackers({**terms, **d_terms})


def test_step(model, data):
    mri, ct = unpack_batch(data)
    return model.update_trackers(model.evaluation_terms(mri, ct))
