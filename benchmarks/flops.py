"""Analytic FLOPs of the VAE-CycleGAN (multiply-adds counted as 2), from the config.

Counts convolutions only (normalisation and activations are a few percent).
A training step runs 6 generator passes (4 without the identity term), each
forward + backward (weights and inputs: 3x the forward cost), and 6
discriminator passes that need only half of the backward: input gradients
for the 2 fakes of the generator update, weight gradients for the real and
pooled fake images of the discriminator update (2x the forward cost).
"""

from __future__ import annotations

from keras_vaegan.config import Config
from keras_vaegan.models.discriminator import block_strides


def conv_flops(side_out: int, kernel: int, c_in: int, c_out: int) -> int:
    return 2 * side_out * side_out * kernel * kernel * c_in * c_out


def generator_forward_flops(config: Config, side: int) -> int:
    levels = config.latent_downsample.bit_length() - 1
    widths = [config.gen_filters * 2 ** i for i in range(levels + 1)]
    flops = conv_flops(side, 7, 1, widths[0])
    s = side
    for i in range(levels):
        s //= 2
        flops += conv_flops(s, 3, widths[i], widths[i + 1])
    blocks = 2 * config.gen_res_blocks  # encoder and decoder
    flops += blocks * 2 * conv_flops(s, 3, widths[-1], widths[-1])
    flops += 2 * conv_flops(s, 1, widths[-1], config.latent_channels)  # mu, log_var
    flops += conv_flops(s, 3, config.latent_channels, widths[-1])  # from_latent
    for i in range(levels):
        s *= 2
        c_in, c_out = widths[levels - i], widths[levels - 1 - i]
        flops += conv_flops(s, 3, c_in, c_out)
        if config.skip_connections:
            flops += conv_flops(s, 1, 2 * c_out, c_out)
    flops += conv_flops(side, 7, widths[0], 1)
    return flops


def discriminator_forward_flops(config: Config, side: int) -> int:
    strides = block_strides(config.image_size, len(config.disc_filters), config.disc_min_map_size)
    flops, s, c_in = 0, side, 1
    first_head = len(config.disc_filters) - config.disc_heads
    for i, (c_out, stride) in enumerate(zip(config.disc_filters, strides)):
        s //= stride
        flops += conv_flops(s, 4, c_in, c_out)
        if i >= first_head:
            flops += conv_flops(s, 5, c_out, 1)
        c_in = c_out
    return flops


def generator_passes(config: Config) -> int:
    """Generator passes per training step (both generators): translation, cycle, identity."""
    return 6 if config.lambda_identity > 0 else 4


DISCRIMINATOR_PASSES = 6  # both discriminators: 2 fakes for the generators, real + pooled each


def training_flops_per_image(config: Config) -> int:
    side = config.image_size
    return (3 * generator_passes(config) * generator_forward_flops(config, side)
            + 2 * DISCRIMINATOR_PASSES * discriminator_forward_flops(config, side))


def inference_passes(config: Config) -> int:
    """Generator passes a predicted slice takes: two with mirror averaging (models/mirror.py),
    times the stride with shift averaging (models/shifts.py; its padded passes are counted at
    the slice's own side)."""
    shifts = config.latent_downsample if config.shift_average else 1
    return (2 if config.mirror_average else 1) * shifts


def inference_flops_per_image(config: Config, side: int) -> int:
    """A predicted slice: ``inference_passes`` generator passes."""
    return inference_passes(config) * generator_forward_flops(config, side)
