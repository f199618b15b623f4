"""The CycleGAN history pool: discriminators also see older fakes.

Shrivastava et al. / CycleGAN: until the pool is full each new fake is stored
and shown; afterwards, with probability 1/2, a new fake is swapped for a
random stored one, which is shown instead. The pool lives in non-trainable
variables and uses ``keras.random`` with a SeedGenerator, so it is saved with
the model and works inside a jitted JAX step as well as in TensorFlow and
PyTorch.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="keras_vaegan")
class HistoryPool(layers.Layer):
    """Pool of past generator outputs of shape ``[capacity, size, size, channels]``.

    ``channels`` is K, the depth of the stacks the generators return.

    ``capacity`` is rounded down to a multiple of the batch size (so a batch
    either fills free slots or swaps with distinct stored ones); 0 disables it.
    """

    def __init__(self, capacity: int = 50, image_size: int = 64, batch_size: int = 1,
                 seed: int | None = None, channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.requested_capacity = int(capacity)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.seed = seed
        if capacity <= 0:
            self.capacity = 0
        else:
            self.capacity = max(self.batch_size, (capacity // self.batch_size) * self.batch_size)
        self.seed_generator = keras.random.SeedGenerator(seed, name="pool_seed")

    def build(self, input_shape=None):
        if self.capacity:
            self.images = self.add_weight(
                shape=(self.capacity, self.image_size, self.image_size, self.channels),
                initializer="zeros", trainable=False, name="images", dtype="float32")
            self.count = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                         name="count", dtype="int32")
        self.built = True

    def call(self, fakes):
        """Return the batch to show the discriminator and update the pool."""
        if not self.capacity:
            return fakes
        fakes32 = ops.cast(ops.stop_gradient(fakes), "float32")
        batch = ops.shape(fakes32)[0]
        count = ops.convert_to_tensor(self.count)
        filling = count < self.capacity
        # Slots: free ones while filling, otherwise distinct random stored ones.
        free_slots = ops.minimum(count + ops.arange(batch, dtype="int32"), self.capacity - 1)
        random_slots = ops.cast(
            keras.random.shuffle(ops.arange(self.capacity, dtype="int32"),
                                 seed=self.seed_generator)[:batch], "int32")
        slots = ops.where(filling, free_slots, random_slots)
        coin = keras.random.uniform((batch,), seed=self.seed_generator) < 0.5
        swap = ops.logical_and(ops.logical_not(filling), coin)
        write = ops.logical_or(filling, swap)

        stored = ops.take(self.images, slots, axis=0)
        swap4 = ops.reshape(swap, (-1, 1, 1, 1))
        shown = ops.where(swap4, stored, fakes32)

        one_hot = ops.one_hot(slots, self.capacity, dtype="float32")
        one_hot = one_hot * ops.cast(ops.reshape(write, (-1, 1)), "float32")
        written = ops.sum(one_hot, axis=0)  # [capacity], 0 or 1 (slots are distinct)
        incoming = ops.einsum("bp,bhwc->phwc", one_hot, fakes32)
        keep = ops.reshape(1.0 - written, (-1, 1, 1, 1))
        self.images.assign(self.images * keep + incoming)
        self.count.assign(ops.minimum(count + batch, self.capacity))
        return ops.cast(shown, fakes.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "capacity": self.requested_capacity,
                "image_size": self.image_size, "batch_size": self.batch_size, "seed": self.seed,
                "channels": self.channels}
