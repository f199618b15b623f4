"""The deep multi-output PatchGAN discriminator.

Strided conv blocks (LeakyReLU 0.2, instance norm) with a real/fake head
``Conv2D(1, 5)`` after each of the last K blocks. Every head judges the
features of its own depth, so its gradient reaches the layers below it
directly, not only through the last layer (the seed's "feature adjustment /
derivative independence"); the deepest head sees the most context. Strides
stop once the feature map would fall below ``min_map_size``, so the same
design works from 32x32 crops up.

``high_pass=True`` gives the first block a second channel, a fixed Laplacian
of the image (edges reflected): thin bone and sharp edges are small in the
image's own intensities but large there, so a blurred skull is easy to call
fake.

``norm="spectral"`` drops the instance norms and divides every convolution,
heads included, by its largest singular value (``SpectralConv2D``): a
discriminator with a bounded slope, whose gradients to the generator cannot
grow without limit as it learns to separate.

The input channels are whatever the first call or ``build`` sees: K for a
2.5-D run's K-slice stacks (``config.context_slices``), each judged as one
image, and with ``high_pass`` the Laplacian of each of them after them (2K).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_vaegan.models.generator import reflect_pad


def block_strides(image_size: int, blocks: int, min_map_size: int) -> list[int]:
    """Stride 2 for each block while the map stays >= min_map_size, else 1.

    The last block always keeps stride 1 (PatchGAN's final stage).
    """
    strides, side = [], image_size
    for i in range(blocks):
        if i < blocks - 1 and side // 2 >= min_map_size:
            strides.append(2)
            side //= 2
        else:
            strides.append(1)
    return strides


def laplacian(images):
    """The 4-neighbour Laplacian of NHWC images, borders reflected (a constant image gives 0)."""
    p = reflect_pad(images, 1)
    return (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
            - 4.0 * p[:, 1:-1, 1:-1])


def spectral_normalized(kernel, u):
    """(kernel / sigma, the next u): one power-iteration step for sigma, the largest singular value.

    ``kernel`` is read as a matrix (inputs, filters) and ``u`` (1, filters) is
    the last estimate of its left singular vector. sigma = u'Wv with u and v
    held constant (stop_gradient), so the gradient flows through sigma as in
    Miyato et al. 2018. Computed in float32, returned in the kernel's dtype.
    """
    def unit(x):
        return x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-12)

    filters = kernel.shape[-1]
    w = ops.reshape(ops.cast(kernel, "float32"), (-1, filters))
    v = ops.stop_gradient(unit(ops.matmul(u, ops.transpose(w))))
    u = ops.stop_gradient(unit(ops.matmul(v, w)))
    sigma = ops.sum(ops.matmul(v, w) * u)
    return kernel / ops.cast(sigma, kernel.dtype), u


@keras.saving.register_keras_serializable(package="keras_vaegan")
class SpectralConv2D(layers.Conv2D):
    """A Conv2D whose kernel is divided by its largest singular value (``spectral_normalized``).

    The singular-vector estimate ``u`` is kept between calls and moves one
    power-iteration step per training call: non-trainable, saved with the
    weights, and threaded as state through JAX's stateless step. Written here
    rather than wrapping in ``keras.layers.SpectralNormalization``, which
    writes the normalised kernel back into the trainable variable, a write
    JAX's stateless step does not keep.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.u = self.add_weight(shape=(1, self.filters), name="u", trainable=False,
                                 initializer=keras.initializers.RandomNormal(), dtype="float32",
                                 autocast=False)

    def save_own_variables(self, store):
        """Conv2D saves only its kernel and bias; the estimate goes with them."""
        super().save_own_variables(store)
        if self.built:
            store["u"] = self.u

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built:
            self.u.assign(store["u"])

    def normalized_kernel(self, training: bool = False):
        """The kernel over sigma; while training, ``u`` keeps its new estimate."""
        kernel, u = spectral_normalized(ops.convert_to_tensor(self.kernel), self.u)
        if training:
            self.u.assign(u)
        return kernel

    def call(self, inputs, training=False):
        outputs = self.convolution_op(inputs, self.normalized_kernel(training))
        if self.use_bias:
            outputs = outputs + ops.reshape(self.bias, (1, 1, 1, self.filters))
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package="keras_vaegan")
class DiscriminatorBlock(layers.Layer):
    """4x4 conv -> (instance norm) -> LeakyReLU(0.2); the conv spectrally normalised or not."""

    def __init__(self, filters: int, strides: int, normalize: bool = True,
                 spectral: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.normalize = normalize
        self.spectral = bool(spectral)
        conv = SpectralConv2D if self.spectral else layers.Conv2D
        self.conv = conv(filters, 4, strides=strides, padding="same", use_bias=not normalize,
                         name="conv")
        self.norm = layers.GroupNormalization(groups=-1, epsilon=1e-5, name="norm") if normalize else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.norm is not None:
            self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=False):
        x = self.conv(x, training=training) if self.spectral else self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.spectral:
            # The same function: TensorFlow's remapper fails to fuse a bfloat16 conv + bias +
            # LeakyReLU whose input the gradient needs (logged as an error, the pass dropped)
            return ops.maximum(x, 0.2 * x)
        return ops.leaky_relu(x, negative_slope=0.2)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "normalize": self.normalize, "spectral": self.spectral}


@keras.saving.register_keras_serializable(package="keras_vaegan")
class MultiHeadPatchDiscriminator(keras.Model):
    """Returns a list of K patch maps (logits), shallowest first, deepest last."""

    def __init__(self, filters=(64, 128, 256, 512, 512), heads: int = 3, image_size: int = 64,
                 min_map_size: int = 4, high_pass: bool = False, norm: str = "instance",
                 **kwargs):
        super().__init__(**kwargs)
        if norm not in ("instance", "spectral"):
            raise ValueError(f"norm must be 'instance' or 'spectral', not {norm!r}")
        self.high_pass = bool(high_pass)
        self.norm = norm
        self.filters = tuple(int(f) for f in filters)
        self.heads = int(heads)
        self.image_size = int(image_size)
        self.min_map_size = int(min_map_size)
        if not 1 <= self.heads <= len(self.filters):
            raise ValueError(f"heads must be between 1 and {len(self.filters)}")
        strides = block_strides(self.image_size, len(self.filters), self.min_map_size)
        spectral = norm == "spectral"
        self.blocks = [
            DiscriminatorBlock(f, s, normalize=i > 0 and not spectral, spectral=spectral,
                               name=f"block{i}")
            for i, (f, s) in enumerate(zip(self.filters, strides))
        ]
        self.first_head = len(self.filters) - self.heads
        head = SpectralConv2D if spectral else layers.Conv2D
        self.head_layers = [head(1, 5, padding="same", name=f"head{i}", dtype="float32")
                            for i in range(self.heads)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.high_pass:
            shape = shape[:-1] + (2 * shape[-1],)
        for i, block in enumerate(self.blocks):
            block.build(shape)
            shape = block.compute_output_shape(shape)
            if i >= self.first_head:
                self.head_layers[i - self.first_head].build(shape)
        self.built = True

    def call(self, x, training=False):
        return self.features_and_logits(x, training=training)[1]

    def features_and_logits(self, x, training=False) -> tuple[list, list]:
        """(every block's output, shallowest first; the heads' patch maps): one pass.

        The block outputs are what feature matching compares
        (``losses.feature_matching_loss``); ``call`` returns the patch maps.
        """
        if self.high_pass:
            x = ops.concatenate([x, laplacian(x)], axis=-1)
        spectral = self.norm == "spectral"
        features, logits = [], []
        for i, block in enumerate(self.blocks):
            x = block(x, training=training)
            features.append(x)
            if i >= self.first_head:
                head = self.head_layers[i - self.first_head]
                logits.append(head(x, training=training) if spectral else head(x))
        return features, logits

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": list(self.filters), "heads": self.heads,
                "image_size": self.image_size, "min_map_size": self.min_map_size,
                "high_pass": self.high_pass, "norm": self.norm}
