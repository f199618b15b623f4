"""The four Adam optimizers of a VAE-CycleGAN and the group that holds them.

Keras trainers expect one ``model.optimizer``. ``OptimizerGroup`` presents
the four optimizers as one (its ``variables`` are theirs, concatenated in a
fixed order), so Keras's JAX trainer threads all their state through the
jitted step and callbacks find ``iterations``; each optimizer still updates
only its own sub-model.
"""

from __future__ import annotations

import keras

from keras_vaegan.config import Config
from keras_vaegan.models.schedule import ConstantThenLinearDecay

OPTIMIZER_NAMES = ("g_ct_optimizer", "g_mri_optimizer", "d_ct_optimizer", "d_mri_optimizer")


def make_optimizers(config: Config) -> dict:
    """Adam (beta_1 0.5) with the constant-then-linear-decay schedule, one per sub-model.

    With ``ema_momentum`` > 0 the generators' optimizers also keep a moving
    average of the weights (Keras's ``use_ema``); ``fit`` swaps it in before
    saving ``model.keras``, which smooths the step-to-step swings of GAN
    training. The discriminators keep their last weights.
    """

    def adam(rate: float, name: str, ema: bool = False):
        schedule = ConstantThenLinearDecay(
            rate, total_steps=config.total_steps,
            decay_start_step=int(round(config.decay_start * config.total_steps)))
        use_ema = ema and config.ema_momentum > 0
        return keras.optimizers.Adam(learning_rate=schedule, beta_1=config.beta_1,
                                     beta_2=config.beta_2, name=name, use_ema=use_ema,
                                     ema_momentum=config.ema_momentum if use_ema else 0.99)

    return {
        "g_ct_optimizer": adam(config.learning_rate_g, "g_ct_optimizer", ema=True),
        "g_mri_optimizer": adam(config.learning_rate_g, "g_mri_optimizer", ema=True),
        "d_ct_optimizer": adam(config.learning_rate_d, "d_ct_optimizer"),
        "d_mri_optimizer": adam(config.learning_rate_d, "d_mri_optimizer"),
    }


class OptimizerGroup:
    """Several optimizers, each paired with the variables it updates, seen as one."""

    def __init__(self, optimizers, variable_groups):
        self.optimizers = list(optimizers)
        self.variable_groups = [list(v) for v in variable_groups]

    @property
    def built(self) -> bool:
        return all(opt.built for opt in self.optimizers)

    def build(self, _variables=None) -> None:
        for opt, group in zip(self.optimizers, self.variable_groups):
            if not opt.built:
                opt.build(group)

    @property
    def variables(self) -> list:
        return [v for opt in self.optimizers for v in opt.variables]

    @property
    def iterations(self):
        return self.optimizers[0].iterations

    @property
    def learning_rate(self):
        return self.optimizers[0].learning_rate

    def split(self, values) -> list[list]:
        """Cut a flat list laid out like ``variables`` into one list per optimizer."""
        out, start = [], 0
        for opt in self.optimizers:
            size = len(opt.variables)
            out.append(list(values[start:start + size]))
            start += size
        return out

    def scale_loss(self, loss):
        return loss

    def finalize_variable_values(self, _variables) -> None:
        for opt, group in zip(self.optimizers, self.variable_groups):
            opt.finalize_variable_values(group)


def with_loss_scaling(optimizer):
    """Wrap for mixed_float16: dynamic loss scaling, non-finite steps skipped."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer, name=optimizer.name)
