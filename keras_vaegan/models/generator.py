"""The VAE encoder-decoder generator (one per translation direction).

The encoder ends in two 1x1 heads, ``mu`` and ``log_var``, over a spatial
latent at ``1/latent_downsample`` of the image side. While training a VAE
(``vae_sampling``) the decoder sees ``z = mu + exp(log_var / 2) * eps``; by
default, and for a deterministic prediction, ``z = mu``; repeated draws give
the uncertainty map. Upsampling is resize + convolution by default
(transposed convolutions leave checkerboard texture).

``padding="reflect"`` pads every convolution's border by reflection instead of
zeros (a transposed convolution keeps "same"): 0 is mid-range in model units
(about +1000 HU for CT), so zero padding shows the stem a bright frame round
every image. The padding has no weights, so both modes share one weight layout.

``channels`` is K, the depth of a 2.5-D stack (``config.context_slices``): the
generator maps K neighbouring slices to K (the cycle needs a whole stack back
to compare with its input); 1, the default, is the plain 2-D weight layout, so
runs saved before stacks existed load unchanged.
"""

from __future__ import annotations

import keras
from keras import layers, ops

LOG_VAR_LIMIT = 10.0  # keeps exp(log_var) finite in float16 and float32


def _instance_norm(name: str) -> layers.Layer:
    # GroupNormalization with one group per channel is instance normalisation.
    return layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)


def reflect_pad(x, pad: int):
    """Reflect NHWC images by ``pad`` pixels on every side (the edge pixel is not repeated).

    Written with slices, ``flip`` and ``concatenate`` only, so it is the same
    on TensorFlow, JAX and PyTorch whatever their own ``pad`` modes support.
    """
    if pad <= 0:
        return x
    top = ops.flip(x[:, 1:pad + 1], axis=1)
    bottom = ops.flip(x[:, -pad - 1:-1], axis=1)
    x = ops.concatenate([top, x, bottom], axis=1)
    left = ops.flip(x[:, :, 1:pad + 1], axis=2)
    right = ops.flip(x[:, :, -pad - 1:-1], axis=2)
    return ops.concatenate([left, x, right], axis=2)


def _conv2d(filters: int, kernel_size: int, padding: str, name: str, **kwargs) -> layers.Conv2D:
    """A Conv2D that pads 'same' with zeros, or none (the caller reflects first: ``_pad``)."""
    return layers.Conv2D(filters, kernel_size, padding="valid" if padding == "reflect" else "same",
                         name=name, **kwargs)


def _pad(x, kernel_size: int, padding: str):
    return reflect_pad(x, kernel_size // 2) if padding == "reflect" else x


def _padded(shape, kernel_size: int, padding: str):
    """The shape a convolution sees after ``_pad``."""
    if padding != "reflect":
        return tuple(shape)
    grow = 2 * (kernel_size // 2)
    return tuple(shape[:-3]) + tuple(None if s is None else s + grow for s in shape[-3:-1]) \
        + (shape[-1],)


@keras.saving.register_keras_serializable(package="keras_vaegan")
class ConvNormReLU(layers.Layer):
    """Conv2D -> instance norm -> ReLU, the generator's basic unit."""

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
                 padding: str = "zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.conv = _conv2d(filters, kernel_size, padding, strides=strides, use_bias=False,
                            name="conv")
        self.norm = _instance_norm("norm")

    def build(self, input_shape):
        self.conv.build(_padded(input_shape, self.kernel_size, self.padding))
        self.norm.build(self.compute_output_shape(input_shape))

    def call(self, x):
        return ops.relu(self.norm(self.conv(_pad(x, self.kernel_size, self.padding))))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(_padded(input_shape, self.kernel_size, self.padding))

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding}


@keras.saving.register_keras_serializable(package="keras_vaegan")
class ResidualBlock(layers.Layer):
    """Two 3x3 conv + instance norm with an identity shortcut (ResNet generator block)."""

    def __init__(self, filters: int, padding: str = "zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.padding = padding
        self.conv1 = ConvNormReLU(filters, padding=padding, name="conv1")
        self.conv2 = _conv2d(filters, 3, padding, use_bias=False, name="conv2")
        self.norm2 = _instance_norm("norm2")

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.conv2.build(_padded(input_shape, 3, self.padding))
        self.norm2.build(input_shape)

    def call(self, x):
        return x + self.norm2(self.conv2(_pad(self.conv1(x), 3, self.padding)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "padding": self.padding}


@keras.saving.register_keras_serializable(package="keras_vaegan")
class Upsample(layers.Layer):
    """x2 upsampling: resize then 3x3 conv (default), or a transposed conv."""

    def __init__(self, filters: int, mode: str = "bilinear", padding: str = "zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.mode = mode
        self.padding = padding if mode != "transpose" else "zeros"
        if mode == "transpose":
            self.resize = None
            self.conv = layers.Conv2DTranspose(filters, 3, strides=2, padding="same",
                                               use_bias=False, name="conv")
            self.norm = _instance_norm("norm")
        else:
            self.resize = layers.UpSampling2D(2, interpolation=mode, name="resize")
            self.conv = _conv2d(filters, 3, self.padding, use_bias=False, name="conv")
            self.norm = _instance_norm("norm")

    def build(self, input_shape):
        shape = input_shape
        if self.resize is not None:
            shape = self.resize.compute_output_shape(shape)
        shape = _padded(shape, 3, self.padding)
        self.conv.build(shape)
        self.norm.build(self.conv.compute_output_shape(shape))

    def call(self, x):
        if self.resize is not None:
            x = self.resize(x)
        return ops.relu(self.norm(self.conv(_pad(x, 3, self.padding))))

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "mode": self.mode,
                "padding": self.padding}


@keras.saving.register_keras_serializable(package="keras_vaegan")
class VAEGenerator(keras.Model):
    """Encoder -> (mu, log_var) -> reparameterised z -> decoder -> tanh image.

    ``call(x, training, sample)`` returns ``(image, mu, log_var)``; ``x`` and
    ``image`` have ``channels`` channels (K slices of a stack). ``sample``
    (default: ``training``) decides between a random draw of ``z`` and the
    deterministic ``z = mu``.
    """

    def __init__(self, filters: int = 32, latent_downsample: int = 2, res_blocks: int = 4,
                 latent_channels: int = 64, skip_connections: bool = False,
                 upsampling: str = "bilinear", seed: int | None = None, padding: str = "zeros",
                 channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.filters = filters
        self.latent_downsample = latent_downsample
        self.res_blocks = res_blocks
        self.latent_channels = latent_channels
        self.skip_connections = skip_connections
        self.upsampling = upsampling
        self.seed = seed
        self.padding = padding
        levels = latent_downsample.bit_length() - 1  # number of x2 stages
        self.levels = levels
        widths = [filters * 2 ** i for i in range(levels + 1)]
        self.stem = ConvNormReLU(filters, kernel_size=7, padding=padding, name="stem")
        self.down = [ConvNormReLU(widths[i + 1], strides=2, padding=padding, name=f"down{i}")
                     for i in range(levels)]
        self.encoder_blocks = [ResidualBlock(widths[-1], padding=padding, name=f"enc_res{i}")
                               for i in range(res_blocks)]
        self.mu_head = layers.Conv2D(latent_channels, 1, name="mu", dtype="float32")
        self.log_var_head = layers.Conv2D(latent_channels, 1, name="log_var", dtype="float32",
                                          kernel_initializer="zeros", bias_initializer="zeros")
        self.from_latent = ConvNormReLU(widths[-1], padding=padding, name="from_latent")
        self.decoder_blocks = [ResidualBlock(widths[-1], padding=padding, name=f"dec_res{i}")
                               for i in range(res_blocks)]
        self.up = [Upsample(widths[levels - 1 - i], mode=upsampling, padding=padding, name=f"up{i}")
                   for i in range(levels)]
        self.merge = ([layers.Conv2D(widths[levels - 1 - i], 1, name=f"skip{i}") for i in range(levels)]
                      if skip_connections else [])
        self.to_image = _conv2d(self.channels, 7, padding, name="to_image", dtype="float32")
        self.seed_generator = keras.random.SeedGenerator(seed, name="eps_seed")

    @property
    def total_stride(self) -> int:
        """Input sides must be a multiple of this (predict pads to it)."""
        return self.latent_downsample

    def build(self, input_shape):
        shape = tuple(input_shape)
        if shape[-1] is not None and shape[-1] != self.channels:
            raise ValueError(f"{self.name} maps {self.channels}-channel stacks to "
                             f"{self.channels} channels; got input shape {shape}")
        self.stem.build(shape)
        shape = shape[:-1] + (self.filters,)
        skip_shapes = [shape]
        for block in self.down:
            block.build(shape)
            shape = block.compute_output_shape(shape)
            skip_shapes.append(shape)
        for block in self.encoder_blocks:
            block.build(shape)
        self.mu_head.build(shape)
        self.log_var_head.build(shape)
        latent_shape = shape[:-1] + (self.latent_channels,)
        self.from_latent.build(latent_shape)
        for block in self.decoder_blocks:
            block.build(shape)
        for i, block in enumerate(self.up):
            block.build(shape)
            shape = _double(shape, block.filters)
            if self.skip_connections:
                skip = skip_shapes[self.levels - 1 - i]
                self.merge[i].build(shape[:-1] + (shape[-1] + skip[-1],))
        self.to_image.build(_padded(shape, 7, self.padding))
        self.built = True

    def encode(self, x, training=False):
        """Image -> (mu, log_var, skip features)."""
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        for block in self.encoder_blocks:
            h = block(h)
        mu = self.mu_head(h)
        log_var = ops.clip(self.log_var_head(h), -LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        return mu, log_var, skips

    def reparameterize(self, mu, log_var, sample: bool):
        if not sample:
            return mu
        eps = keras.random.normal(ops.shape(mu), seed=self.seed_generator, dtype=mu.dtype)
        return mu + ops.exp(0.5 * log_var) * eps

    def decode(self, z, skips=None, training=False):
        h = self.from_latent(ops.cast(z, self.compute_dtype))
        for block in self.decoder_blocks:
            h = block(h)
        for i, block in enumerate(self.up):
            h = block(h)
            if self.skip_connections:
                h = self.merge[i](ops.concatenate([h, skips[self.levels - 1 - i]], axis=-1))
        return ops.tanh(self.to_image(_pad(h, 7, self.padding)))

    def mean_and_sample(self, x, training=False):
        """One encoding, decoded twice: ``(image at z = mu, image at a drawn z, mu, log_var)``.

        Lets training judge the deterministic output that ``predict`` returns
        while the cycle still has to survive a sampled latent.
        """
        mu, log_var, skips = self.encode(x, training=training)
        mean = self.decode(mu, skips, training=training)
        drawn = self.decode(self.reparameterize(mu, log_var, True), skips, training=training)
        return mean, drawn, mu, log_var

    def call(self, x, training=False, sample=None):
        sample = bool(training) if sample is None else sample
        mu, log_var, skips = self.encode(x, training=training)
        z = self.reparameterize(mu, log_var, sample)
        image = self.decode(z, skips, training=training)
        return image, mu, log_var

    def compute_output_shape(self, input_shape):
        latent = tuple(input_shape[:-3]) + tuple(
            None if s is None else s // self.latent_downsample for s in input_shape[-3:-1]
        ) + (self.latent_channels,)
        return tuple(input_shape[:-1]) + (self.channels,), latent, latent

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters,
                "latent_downsample": self.latent_downsample, "res_blocks": self.res_blocks,
                "latent_channels": self.latent_channels,
                "skip_connections": self.skip_connections, "upsampling": self.upsampling,
                "seed": self.seed, "padding": self.padding, "channels": self.channels}


def _double(shape, channels):
    def twice(s):
        return None if s is None else 2 * s

    return tuple(shape[:-3]) + (twice(shape[-3]), twice(shape[-2]), channels)
