"""The CycleGAN learning-rate schedule: constant, then linear decay to zero.

It is a function of the optimizer's iteration counter, which checkpoints
save, so a resumed run continues at the same point of the schedule (the
reference implementation's resume did not).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_vaegan")
class ConstantThenLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``initial`` until ``decay_start_step``, then linearly to 0 at ``total_steps``."""

    def __init__(self, initial_learning_rate: float, total_steps: int, decay_start_step: int):
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.decay_start_step = int(min(decay_start_step, total_steps))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decay_steps = max(self.total_steps - self.decay_start_step, 1)
        fraction = (step - self.decay_start_step) / float(decay_steps)
        factor = 1.0 - ops.clip(fraction, 0.0, 1.0)
        return self.initial_learning_rate * factor

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "decay_start_step": self.decay_start_step,
        }
