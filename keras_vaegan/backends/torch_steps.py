"""PyTorch: autograd ``backward`` per update, generators first, then discriminators.

Each update zeroes the gradients, back-propagates its own loss and applies
only its own optimizers, so the discriminators never move with L_G and the
generators never move with L_D. Multi-device training is not supported on
this backend.
"""

from __future__ import annotations

from typing import Callable

import keras
import torch

from keras_vaegan.backends.distribution import Distribution
from keras_vaegan.backends.loss_scaling import scale_ratios, unpack_batch
from keras_vaegan.errors import VAEGANError


def accelerator_available() -> bool:
    return torch.cuda.is_available()


def accelerator_name() -> str | None:
    """The first GPU's model name, or None on a CPU (what a benchmark ran on)."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def distribution(strategy: str) -> Distribution:
    if strategy == "auto":
        return Distribution("none")
    raise VAEGANError(None, f"--strategy {strategy}: multi-device training is not supported on "
                            "the PyTorch backend; use --strategy none, or the TensorFlow or JAX backend")


def _update(model, loss, nets_and_optimizers):
    model.zero_grad()
    nets_and_optimizers[0][1].scale_loss(loss).backward()
    with torch.no_grad():
        for (net, optimizer), ratio in zip(nets_and_optimizers, scale_ratios(nets_and_optimizers)):
            variables = net.trainable_variables
            grads = [v.value.grad if v.value.grad is not None else torch.zeros_like(v.value)
                     for v in variables]
            if ratio is not None:
                grads = [g * ratio for g in grads]
            optimizer.apply(grads, variables)
    model.zero_grad()


def train_step(model, data):
    mri, ct = unpack_batch(data)
    g_total, terms, (fake_ct, fake_mri) = model.generator_objective(mri, ct, training=True)
    _update(model, g_total, model.generator_updates)

    shown_ct, shown_mri = model.pooled_fakes(fake_ct.detach(), fake_mri.detach())
    d_terms = model.discriminator_objective(mri, ct, shown_ct, shown_mri)
    _update(model, d_terms["d_ct"] + d_terms["d_mri"], model.discriminator_updates)
    logs = {name: value.detach() for name, value in {**terms, **d_terms}.items()}
    return model.update_trackers(logs)


def test_step(model, data):
    mri, ct = unpack_batch(data)
    with torch.no_grad():
        terms = model.evaluation_terms(mri, ct)
    return model.update_trackers(terms)


# --- prediction: an eager forward pass without gradients ------------------------------


def compiled_forward(compiled, net) -> Callable:
    """Prediction's compiled pass of ``net`` for ``compiled.shape`` (see ``inference.compiled``)."""
    compiled.traces += 1  # eager: nothing to trace, one "compile" per shape for the counter

    def run(images):
        with torch.no_grad():
            return compiled.translated(net, keras.ops.convert_to_tensor(images))

    return run
