"""PyTorch: autograd ``backward`` per update, generators first, then discriminators."""

from __future__ import annotations

import torch

from keras_vaegan.models.vaecyclegan import unpack_batch


def _step(model, loss, nets_and_optimizers):
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for net, optimizer in nets_and_optimizers:
            variables = net.trainable_variables
            grads = [v.value.grad if v.value.grad is not None else torch.zeros_like(v.value)
                     for v in variables]
            optimizer.apply(grads, variables)
    model.zero_grad()


def train_step(model, data):
    mri, ct = unpack_batch(data)
    g_total, terms, (fake_ct, fake_mri) = model.generator_objective(mri, ct, training=True)
    # Only the generators' optimizers step: discriminator grads from L_G are discarded.
    _step(model, g_total, [(model.g_ct, model.g_ct_optimizer), (model.g_mri, model.g_mri_optimizer)])

    shown_ct, shown_mri = model.pooled_fakes(fake_ct.detach(), fake_mri.detach())
    d_terms = model.discriminator_objective(mri, ct, shown_ct, shown_mri)
    _step(model, d_terms["d_ct"] + d_terms["d_mri"],
          [(model.d_ct, model.d_ct_optimizer), (model.d_mri, model.d_mri_optimizer)])
    logs = {**{k: v.detach() for k, v in terms.items()}, **{k: v.detach() for k, v in d_terms.items()}}
    return model.update_trackers(logs)


def test_step(model, data):
    mri, ct = unpack_batch(data)
    with torch.no_grad():
        terms = model.evaluation_terms(mri, ct)
    return model.update_trackers(terms)
