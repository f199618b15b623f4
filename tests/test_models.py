"""Sub-model shapes, the KL term, the multi-head discriminator and the history pool."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_vaegan.models.discriminator import MultiHeadPatchDiscriminator, block_strides
from keras_vaegan.models.generator import VAEGenerator
from keras_vaegan.models.history_pool import HistoryPool
from keras_vaegan.models.losses import (
    MIND_OFFSETS,
    adaptive_head_weights,
    adversarial_loss,
    feature_matching_loss,
    kl_divergence,
    l1_loss,
    mind_descriptors,
    structure_loss,
)

pytestmark = pytest.mark.backend


def to_np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (1, 96, 64, 1)])
@pytest.mark.parametrize("downsample", [2, 4])
def test_generator_shapes_and_range(shape, downsample):
    gen = VAEGenerator(filters=4, latent_downsample=downsample, res_blocks=1, latent_channels=3)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype("float32")
    image, mu, log_var = gen(x)
    assert to_np(image).shape == shape
    assert to_np(mu).shape == (shape[0], shape[1] // downsample, shape[2] // downsample, 3)
    assert to_np(log_var).shape == to_np(mu).shape
    assert keras.backend.standardize_dtype(image.dtype) == "float32"
    assert np.abs(to_np(image)).max() <= 1.0


def test_generator_mean_path_is_deterministic_and_sampling_is_not():
    gen = VAEGenerator(filters=4, res_blocks=1, latent_channels=3, seed=1)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 1)).astype("float32")
    a = to_np(gen(x, sample=False)[0])
    b = to_np(gen(x, sample=False)[0])
    c = to_np(gen(x, sample=True)[0])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6


def test_generator_skip_connections_and_transpose_upsampling_build():
    for kwargs in ({"skip_connections": True}, {"upsampling": "transpose"}):
        gen = VAEGenerator(filters=4, res_blocks=1, latent_channels=3, **kwargs)
        out = gen(np.zeros((1, 32, 32, 1), "float32"))[0]
        assert to_np(out).shape == (1, 32, 32, 1)


def test_kl_is_zero_for_standard_normal_and_positive_otherwise():
    zeros = np.zeros((2, 8, 8, 4), "float32")
    assert float(to_np(kl_divergence(zeros, zeros))) == pytest.approx(0.0, abs=1e-7)
    assert float(to_np(kl_divergence(zeros + 0.5, zeros))) > 0
    assert float(to_np(kl_divergence(zeros, zeros - 1.0))) > 0


def _ring(radius: float, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:32, :32] - 15.5
    ring = (np.abs(np.hypot(yy, xx - shift) - radius) < 2).astype("float32")
    return ring[None, :, :, None] * 2.0 - 1.0


def test_structure_loss_ignores_contrast_flips_and_punishes_moved_edges():
    mri = _ring(10.0)  # bone dark on MRI ...
    ct = -0.5 * mri + 0.2  # ... bright on CT: same edges, flipped and rescaled contrast
    assert float(to_np(structure_loss(mri, ct))) == pytest.approx(0.0, abs=1e-4)
    moved = float(to_np(structure_loss(mri, _ring(10.0, shift=2))))
    wider = float(to_np(structure_loss(mri, _ring(12.0))))
    assert moved > 0.3 and wider > 0.3
    # a flat output has no edges to correlate: the worst but finite value, 1
    flat = float(to_np(structure_loss(mri, np.zeros_like(mri))))
    assert flat == pytest.approx(1.0, abs=1e-3)
    # batch-averaged per image
    pair = structure_loss(np.concatenate([mri, mri]), np.concatenate([ct, _ring(10.0, 2)]))
    assert float(to_np(pair)) == pytest.approx(moved / 2, rel=1e-4)


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_discriminator_returns_k_heads_from_32_pixels_up(image_size):
    disc = MultiHeadPatchDiscriminator(filters=(8, 16, 32, 32, 32), heads=3,
                                       image_size=image_size, min_map_size=4)
    outputs = disc(np.zeros((2, image_size, image_size, 1), "float32"))
    assert len(outputs) == 3
    sides = [to_np(o).shape[1] for o in outputs]
    assert min(sides) >= 4
    assert all(to_np(o).shape[-1] == 1 for o in outputs)


def test_discriminator_features_are_its_block_outputs_and_its_logits_what_it_returns():
    disc = MultiHeadPatchDiscriminator(filters=(8, 16, 16), heads=2, image_size=32)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    returned = disc(x)
    features, logits = disc.features_and_logits(x)
    assert [to_np(f).shape for f in features] == [(2, 16, 16, 8), (2, 8, 8, 16), (2, 8, 8, 16)]
    for got, expected in zip(logits, returned):
        np.testing.assert_array_equal(to_np(got), to_np(expected))
    np.testing.assert_allclose(to_np(disc.blocks[0](x)), to_np(features[0]), atol=1e-6)


def test_feature_matching_compares_per_channel_means_not_pixels():
    """Salimans et al.'s form: unpaired batches compare as distributions of features."""
    rng = np.random.default_rng(6)
    real = [rng.normal(size=(2, 8, 8, 3)).astype("float32"),
            rng.normal(size=(2, 4, 4, 5)).astype("float32")]
    moved = [np.roll(f[::-1], 3, axis=2) for f in real]  # other pixels, other batch order
    assert float(to_np(feature_matching_loss(real, moved))) == pytest.approx(0.0, abs=1e-6)
    fake = [f * 0.5 + 0.1 for f in real]  # a weaker response: what a blurred image draws
    expected = np.mean([np.abs(r.mean(axis=(0, 1, 2)) - f.mean(axis=(0, 1, 2))).mean()
                        for r, f in zip(real, fake)])
    assert float(to_np(feature_matching_loss(real, fake))) == pytest.approx(expected, rel=1e-5)
    assert expected > 0.05
    # the real side is held constant: with fake = 0.5 real + 0.1 of one input, each element's
    # gradient is 0.5 sign(fake mean - real mean) / (channels x elements per channel), which
    # a gradient through the real side as well would turn to -0.5 of that
    shape = real[0].shape
    grad = gradient(lambda x: feature_matching_loss(
        [keras.ops.reshape(x, shape)], [0.5 * keras.ops.reshape(x, shape) + 0.1]),
        real[0].reshape(-1)).reshape(shape)
    means = real[0].mean(axis=(0, 1, 2))
    per_channel = 0.5 * np.sign(0.5 * means + 0.1 - means) / (3 * real[0][..., 0].size)
    np.testing.assert_allclose(grad, np.broadcast_to(per_channel, shape), rtol=1e-4)


def test_block_strides_stop_at_minimum_map_size():
    assert block_strides(32, 5, 4) == [2, 2, 2, 1, 1]
    assert block_strides(128, 5, 4) == [2, 2, 2, 2, 1]
    assert block_strides(16, 5, 4) == [2, 2, 1, 1, 1]


def test_adversarial_losses_prefer_the_right_target():
    real_like = [np.ones((1, 4, 4, 1), "float32") * 5]
    fake_like = [np.ones((1, 4, 4, 1), "float32") * -5]
    for kind in ("lsgan", "bce"):
        if kind == "lsgan":
            real_like_ls = [np.ones((1, 4, 4, 1), "float32")]
            assert float(to_np(adversarial_loss(real_like_ls, True, kind))) == pytest.approx(0.0)
        assert float(to_np(adversarial_loss(real_like, True, kind))) < float(
            to_np(adversarial_loss(fake_like, True, kind)))
    # head weights: a zero weight ignores that head
    heads = [np.zeros((1, 2, 2, 1), "float32"), np.ones((1, 2, 2, 1), "float32")]
    assert float(to_np(adversarial_loss(heads, True, "lsgan", [0.0, 1.0]))) == pytest.approx(0.0)
    assert float(to_np(l1_loss(heads[0], heads[1]))) == pytest.approx(1.0)


def gradient(fn, x: np.ndarray) -> np.ndarray:
    """d fn / d x under the running backend (fn maps a float32 vector to a scalar)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(x))
    if backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        fn(xt).backward()
        return xt.grad.numpy()
    import tensorflow as tf

    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = fn(xt)
    return tape.gradient(y, xt).numpy()


def test_adaptive_head_weights_tilt_towards_the_heads_that_separate_best():
    def weights(fake, real, prior, temperature):
        fake, real = [np.float32(v) for v in fake], [np.float32(v) for v in real]
        return [float(to_np(w)) for w in adaptive_head_weights(fake, real, prior, temperature)]

    expected = np.array([np.exp(-1.0), 1.0]) / (1.0 + np.exp(-1.0))  # exp(s_k / T), s = .5, 1
    np.testing.assert_allclose(weights([0.9, 1.3], [0.4, 0.3], [0.5, 0.5], 0.5), expected,
                               rtol=1e-5)
    # A head that calls everything fake has a high loss on the fakes and separates nothing.
    np.testing.assert_allclose(weights([0.7, 2.0], [0.7, 2.0], [0.5, 0.5], 0.1), [0.5, 0.5],
                               rtol=1e-5)
    np.testing.assert_allclose(weights([0.1, 3.0], [0.0, 0.0], [0.5, 0.5], 1e6), [0.5, 0.5],
                               rtol=1e-5)  # a large temperature: the configured weights
    assert weights([3.0, 0.1, 0.2], [0.0] * 3, [0.0, 0.5, 0.5], 0.1)[0] == 0.0  # off stays off
    tilted = weights([400.0, 0.0], [0.0, 0.0], [0.5, 0.5], 0.01)  # far apart, low T: no overflow
    np.testing.assert_allclose(tilted, [1.0, 0.0], atol=1e-6)

    def total(fake):  # what the generator minimises
        head = [fake[k] for k in range(2)]
        w = adaptive_head_weights(head, [np.float32(0.4), np.float32(0.3)], [0.5, 0.5], 0.5)
        return sum(wk * loss for wk, loss in zip(w, head))

    # The weights are constants to the gradient: d total / d l_k is w_k, so the generator
    # cannot lower its loss by moving weight between heads.
    np.testing.assert_allclose(gradient(total, np.array([0.9, 1.3], "float32")), expected,
                               rtol=1e-5)


def test_history_pool_fills_then_mixes_old_fakes():
    pool = HistoryPool(capacity=4, image_size=8, batch_size=2, seed=3)
    pool.build()
    batches = [np.full((2, 8, 8, 1), float(i), "float32") for i in range(12)]
    shown = [to_np(pool(b)) for b in batches]
    np.testing.assert_array_equal(shown[0], batches[0])  # filling: shown as is
    np.testing.assert_array_equal(shown[1], batches[1])
    assert int(to_np(pool.count)) == 4
    old = [s[i, 0, 0, 0] for s, b in zip(shown[2:], batches[2:]) for i in range(2)
           if s[i, 0, 0, 0] != b[0, 0, 0, 0]]
    assert old, "a full pool swaps in stored fakes about half of the time"
    assert all(v < 11 for v in old)


def test_history_pool_of_size_zero_passes_through():
    pool = HistoryPool(capacity=0, image_size=8, batch_size=2)
    pool.build()
    x = np.ones((2, 8, 8, 1), "float32")
    np.testing.assert_array_equal(to_np(pool(x)), x)


# --- options for sharper bone: reflection padding, multi-scale structure, high-pass D ---------


def _np_conv_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """NHWC 'valid' cross-correlation in numpy, the reference for Conv2D."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,cf->nhwf", x[:, i:i + h, j:j + w], kernel[i, j])
    return out


def test_reflect_pad_matches_numpy_reflect():
    from keras_vaegan.models.generator import reflect_pad

    x = np.random.default_rng(0).normal(size=(2, 9, 7, 3)).astype("float32")
    for pad in (1, 3):
        expected = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode="reflect")
        np.testing.assert_array_equal(to_np(reflect_pad(x, pad)), expected)


def test_reflect_padding_changes_the_border_and_is_a_reflect_pad_then_a_valid_conv():
    from keras_vaegan.models.generator import ConvNormReLU

    keras.utils.set_random_seed(1)  # the kernels: a test that cannot change from run to run
    x = np.random.default_rng(1).uniform(-1, 1, (1, 12, 12, 1)).astype("float32")
    zeros = ConvNormReLU(2, kernel_size=7, padding="zeros")
    reflect = ConvNormReLU(2, kernel_size=7, padding="reflect")
    zeros.build(x.shape)
    reflect.build(x.shape)
    reflect.set_weights(zeros.get_weights())  # one weight layout for both modes
    kernel = to_np(reflect.conv.kernel)
    padded = np.pad(x, [(0, 0), (3, 3), (3, 3), (0, 0)], mode="reflect")
    h = _np_conv_valid(padded, kernel)
    h = (h - h.mean(axis=(1, 2), keepdims=True)) / np.sqrt(h.var(axis=(1, 2), keepdims=True) + 1e-5)
    expected = np.maximum(h, 0)
    got = to_np(reflect(x))
    assert got.shape == (1, 12, 12, 2)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # the border row (one pixel can be zero in both after the ReLU; a whole row cannot)
    assert np.abs(to_np(zeros(x))[0, 0] - got[0, 0]).max() > 1e-3


def test_reflect_padded_generator_keeps_a_constant_image_constant():
    """Zero padding shows the stem a frame at every border; reflection shows it nothing."""
    x = np.full((1, 32, 32, 1), -0.8, "float32")  # air everywhere
    spread = {}
    for padding in ("zeros", "reflect"):
        gen = VAEGenerator(filters=4, res_blocks=1, latent_channels=3, padding=padding)
        image = to_np(gen(x, sample=False)[0])
        assert image.shape == x.shape
        spread[padding] = float(image.max() - image.min())
    assert spread["reflect"] < 1e-5 < spread["zeros"]


def _np_structure(a: np.ndarray, b: np.ndarray) -> float:
    """Today's one-scale term in numpy: 1 - ncc of forward-difference gradient magnitudes."""
    def grad(x):
        dy = x[:, 1:, :-1] - x[:, :-1, :-1]
        dx = x[:, :-1, 1:] - x[:, :-1, :-1]
        g = np.sqrt(dx ** 2 + dy ** 2 + 1e-8)
        return g - g.mean(axis=(1, 2, 3), keepdims=True)

    ga, gb = grad(a.astype(np.float64)), grad(b.astype(np.float64))
    ncc = (ga * gb).mean(axis=(1, 2, 3)) / np.sqrt(
        (ga ** 2).mean(axis=(1, 2, 3)) * (gb ** 2).mean(axis=(1, 2, 3)) + 1e-8)
    return float(np.mean(1 - ncc))


def test_multi_scale_structure_term_averages_the_term_over_pooled_scales():
    a = np.concatenate([_ring(10.0), _ring(6.0)])
    b = np.concatenate([_ring(10.0, shift=2), _ring(7.0)])
    one = float(to_np(structure_loss(a, b, scales=1)))
    assert one == pytest.approx(float(to_np(structure_loss(a, b))), abs=1e-7)  # today's term
    assert one == pytest.approx(_np_structure(a, b), abs=1e-5)

    def pool(x):
        n, h, w, c = x.shape
        return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))

    three = float(to_np(structure_loss(a, b, scales=3)))
    expected = np.mean([_np_structure(a, b), _np_structure(pool(a), pool(b)),
                        _np_structure(pool(pool(a)), pool(pool(b)))])
    assert three == pytest.approx(expected, abs=1e-5)
    assert abs(three - one) > 1e-3
    # a contrast flip is still free at every scale
    assert float(to_np(structure_loss(a, -0.5 * a + 0.2, scales=3))) == pytest.approx(0, abs=1e-4)


def _np_mind(x: np.ndarray) -> np.ndarray:
    """MIND in numpy, pixel by pixel: 3x3 patch distances to the 8 neighbours' patches."""
    x = x[..., 0].astype(np.float64)
    n, h, w = x.shape
    out = np.zeros((n, h - 4, w - 4, len(MIND_OFFSETS)))
    for k, (dy, dx) in enumerate(MIND_OFFSETS):
        for i in range(h - 4):
            for j in range(w - 4):
                patch = x[:, i + 1:i + 4, j + 1:j + 4]  # around pixel (i + 2, j + 2)
                moved = x[:, i + 1 + dy:i + 4 + dy, j + 1 + dx:j + 4 + dx]
                out[:, i, j, k] = ((patch - moved) ** 2).mean(axis=(1, 2))
    variance = out.mean(axis=-1, keepdims=True)
    typical = variance.mean(axis=(1, 2, 3), keepdims=True)
    variance = np.clip(variance, 1e-3 * typical + 1e-12, 1e3 * typical + 1e-12)
    descriptors = np.exp(-out / variance)
    return descriptors / descriptors.max(axis=-1, keepdims=True)


def test_mind_descriptors_match_a_pixelwise_reference_and_ignore_contrast():
    a = np.concatenate([_ring(10.0), _ring(6.0, shift=3)])
    a = a + 0.05 * np.random.default_rng(0).standard_normal(a.shape).astype("float32")
    got = to_np(mind_descriptors(a))
    assert got.shape == (2, 28, 28, 8)
    np.testing.assert_allclose(got, _np_mind(a), atol=1e-5)
    # a contrast flip and rescale (bone dark on MRI, bright on CT) leaves MIND unchanged ...
    assert float(to_np(structure_loss(a, -0.5 * a + 0.2, kind="mind"))) == pytest.approx(
        0.0, abs=1e-5)
    # ... a moved or widened ring does not, and a flat output is finite
    moved = float(to_np(structure_loss(_ring(10.0), _ring(10.0, shift=2), kind="mind")))
    wider = float(to_np(structure_loss(_ring(10.0), _ring(12.0), kind="mind")))
    flat = float(to_np(structure_loss(_ring(10.0), np.zeros_like(_ring(10.0)), kind="mind")))
    assert moved > 0.05 and wider > 0.05 and np.isfinite(flat) and flat > moved


def test_structure_kind_is_checked_and_mind_keeps_8_pixels_at_its_coarsest_scale():
    from keras_vaegan.config import Config
    from keras_vaegan.errors import VAEGANError

    with pytest.raises(VAEGANError, match="config key 'structure_kind': one of gradient, mind"):
        Config(structure_kind="sobel")
    Config(structure_kind="mind", image_size=32, structure_scales=3)  # 8 pixels at 1/4
    with pytest.raises(VAEGANError, match="'structure_scales': with structure_kind=mind"):
        Config(structure_kind="mind", image_size=32, structure_scales=4)
    Config(image_size=32, structure_scales=4)  # the gradient term needs only 4


def test_high_pass_channel_is_a_laplacian_zero_on_a_constant_image():
    from keras_vaegan.models.discriminator import laplacian

    assert np.abs(to_np(laplacian(np.full((2, 16, 16, 1), 0.7, "float32")))).max() < 1e-6
    dot = np.zeros((1, 8, 8, 1), "float32")
    dot[0, 4, 4, 0] = 1.0
    lap = to_np(laplacian(dot))[0, :, :, 0]
    assert lap[4, 4] == pytest.approx(-4.0) and lap[3, 4] == lap[5, 4] == lap[4, 3] == 1.0
    assert np.abs(lap).sum() == pytest.approx(8.0)


def test_high_pass_discriminator_sees_the_image_and_its_laplacian():
    from keras_vaegan.models.discriminator import laplacian

    x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    sharp = MultiHeadPatchDiscriminator(filters=(4, 8, 8), heads=2, image_size=32, high_pass=True)
    plain = MultiHeadPatchDiscriminator(filters=(4, 8, 8), heads=2, image_size=32)
    sharp.build(x.shape)
    plain.build((2, 32, 32, 2))  # the same network fed the two channels by hand
    assert tuple(sharp.blocks[0].conv.kernel.shape) == (4, 4, 2, 4)
    plain.set_weights(sharp.get_weights())
    both = np.concatenate([x, to_np(laplacian(x))], axis=-1)
    for got, expected in zip(sharp(x), plain(both)):
        np.testing.assert_allclose(to_np(got), to_np(expected), atol=1e-5)


def test_spectral_conv_divides_its_kernel_by_the_largest_singular_value():
    from keras_vaegan.models.discriminator import SpectralConv2D

    keras.utils.set_random_seed(3)
    conv = SpectralConv2D(6, 4, strides=2, padding="same")
    x = np.random.default_rng(3).normal(size=(2, 12, 12, 5)).astype("float32")
    conv.build(x.shape)
    kernel = to_np(conv.kernel)
    sigma = np.linalg.svd(kernel.reshape(-1, 6), compute_uv=False)[0]
    u0 = to_np(conv.u).copy()
    conv(x)  # not training: u stays
    np.testing.assert_array_equal(to_np(conv.u), u0)
    for _ in range(40):  # power iterations, one per training call
        out = conv(x, training=True)
    assert not np.allclose(to_np(conv.u), u0)
    np.testing.assert_allclose(to_np(conv.normalized_kernel()), kernel / sigma, rtol=1e-4,
                               atol=1e-6)
    plain = keras.layers.Conv2D(6, 4, strides=2, padding="same")
    plain.build(x.shape)
    plain.set_weights([kernel / sigma, to_np(conv.bias)])
    np.testing.assert_allclose(to_np(out), to_np(plain(x)), rtol=1e-4, atol=1e-5)


def test_spectral_normalized_gradient_goes_through_sigma():
    """sigma = u'Wv scales with W, so a loss of W / sigma is flat along W itself: <grad, W> = 0.

    Without the gradient through sigma that product is the loss's own slope, far from 0.
    """
    from keras_vaegan.models.discriminator import spectral_normalized

    rng = np.random.default_rng(4)
    w = rng.normal(size=(2 * 2 * 2 * 3,)).astype("float32")
    u = rng.normal(size=(1, 3)).astype("float32")
    target = rng.normal(size=w.shape).astype("float32")

    def loss(flat):
        normalized, _ = spectral_normalized(keras.ops.reshape(flat, (2, 2, 2, 3)), u)
        return keras.ops.sum(keras.ops.multiply(keras.ops.reshape(normalized, (-1,)), target))

    grad = gradient(loss, w)
    assert np.abs(grad).max() > 1e-2
    assert abs(float(np.dot(grad, w))) < 1e-4 * float(np.abs(grad) @ np.abs(w))


# Settings away from their defaults that a user can still choose: the VAE latent (sampled
# while training, with its KL term), the tries of issue 27 (sharper bone, judging the mean,
# the head warmup) and the least-squares loss of older runs.
VAE = {"vae_sampling": True, "beta_kl": 1e-3}
NON_DEFAULT_OPTIONS = {"vae": VAE, "padding": {"padding": "reflect"},
                       "structure_scales": {"structure_scales": 3},
                       "structure_kind": {"structure_kind": "mind"},
                       "disc_high_pass": {"disc_high_pass": True},
                       "judge_mean": {**VAE, "judge_mean": True},  # only acts on a sampled latent
                       "disc_head_warmup": {"disc_head_warmup": 0.5},
                       "adversarial_loss": {"adversarial_loss": "lsgan"},
                       "disc_head_temperature": {"disc_head_temperature": 0.25},
                       "disc_norm": {"disc_norm": "spectral"},
                       "lambda_feature_match": {"lambda_feature_match": 10.0}}
ALL_NON_DEFAULT = {key: value for settings in NON_DEFAULT_OPTIONS.values()
                   for key, value in settings.items()}


def test_head_warmup_moves_from_the_deepest_head_to_the_configured_weights(tiny_config):
    """Read through a StatelessScope, as the JAX step reads the optimizer's counter."""
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    config = tiny_config.replace(disc_heads=2, disc_head_weights=(0.4, 0.6),
                                 disc_head_warmup=0.5, epochs=2, steps_per_epoch=10)
    model = VAECycleGAN(config)
    model.compile()
    counter = model.g_ct_optimizer.iterations
    expected = {0: [0.0, 1.0], 5: [0.2, 0.8], 10: [0.4, 0.6], 20: [0.4, 0.6]}
    for step, weights in expected.items():  # warmup: 0.5 of 20 steps
        value = keras.ops.convert_to_tensor(step, dtype=counter.dtype)
        with keras.StatelessScope(state_mapping=[(counter, value)]):
            got = [float(to_np(w)) for w in model.current_head_weights(training=True)]
        np.testing.assert_allclose(got, weights, atol=1e-6, err_msg=f"step {step}")
    assert model.current_head_weights(training=False) == [0.4, 0.6]  # evaluation: the final weights
    counter.assign(5)  # the variable itself, as the TensorFlow and PyTorch steps read it
    np.testing.assert_allclose([float(to_np(w)) for w in model.current_head_weights()], [0.2, 0.8],
                               atol=1e-6)
    plain = VAECycleGAN(tiny_config.replace(disc_heads=2))
    plain.compile()
    assert plain.current_head_weights() == [0.5, 0.5]  # no warmup: constant from the first step


def test_adaptive_head_weights_make_the_generator_term_a_tilted_mean_of_its_heads(tiny_config):
    from conftest import ring_batch

    from keras_vaegan.models.losses import adversarial_terms
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    keras.utils.set_random_seed(0)
    model = VAECycleGAN(tiny_config.replace(disc_head_weights=(0.3, 0.7)))
    model.compile()
    mri, ct = ring_batch(32)
    fake = to_np(model.g_ct(mri)[0])

    def per_head(images):
        return np.array([float(to_np(t)) for t in adversarial_terms(model.d_ct(images), True,
                                                                    "bce")])

    heads, reals = per_head(fake), per_head(ct)
    separation = heads - reals
    assert abs(separation[0] - separation[1]) > 1e-3  # the heads differ, so the tilt shows
    fixed = float(to_np(model.generator_terms(model.d_ct, fake, ct, "bce")[0]))
    np.testing.assert_allclose(fixed, 0.3 * heads[0] + 0.7 * heads[1], rtol=1e-5)
    model.settings = model.settings.replace(disc_head_temperature=0.05)
    tilted = float(to_np(model.generator_terms(model.d_ct, fake, ct, "bce")[0]))
    prior = np.array([0.3, 0.7]) * np.exp((separation - separation.max()) / 0.05)
    weights = prior / prior.sum()
    np.testing.assert_allclose(tilted, weights @ heads, rtol=1e-5)
    best = int(np.argmax(separation))
    assert weights[best] > (0.3, 0.7)[best]  # the better-separating head gained weight


@pytest.mark.parametrize("judge_mean", [False, True])
def test_judge_mean_shows_the_discriminators_what_predict_returns(tiny_config, judge_mean):
    from conftest import ring_batch

    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    keras.utils.set_random_seed(0)
    # one pass per slice: the mirror and shift averages are prediction's, never training's
    model = VAECycleGAN(tiny_config.replace(**VAE, judge_mean=judge_mean, mirror_average=False,
                                            shift_average=False))
    model.compile()
    mri, ct = ring_batch(32)
    _, terms, (fake_ct, fake_mri) = model.generator_objective(mri, ct, training=True)
    mean_ct, mean_mri = to_np(model.translate(mri)), to_np(model.translate(ct, "ct2mri"))
    if judge_mean:  # the fakes are the z = mu translations; the other decoding draws z
        np.testing.assert_allclose(to_np(fake_ct), mean_ct, atol=1e-5)
        np.testing.assert_allclose(to_np(fake_mri), mean_mri, atol=1e-5)
        drawn = to_np(model.g_ct.mean_and_sample(mri)[1])
        assert np.abs(drawn - mean_ct).max() > 1e-4
    else:  # the fakes are the sampled translations
        assert np.abs(to_np(fake_ct) - mean_ct).max() > 1e-4
    assert float(terms["kl"]) > 0 and np.isfinite(float(terms["g_loss"]))


@pytest.mark.parametrize("option", sorted(NON_DEFAULT_OPTIONS))
def test_losses_fall_on_a_fixed_batch_with_each_non_default_option(tiny_config, option):
    import tensorflow as tf
    from conftest import ring_batch

    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    keras.utils.set_random_seed(0)
    config = tiny_config.replace(learning_rate_g=1e-3, learning_rate_d=1e-3, decay_start=1.0,
                                 epochs=3, steps_per_epoch=8, **NON_DEFAULT_OPTIONS[option])
    model = VAECycleGAN(config)
    model.compile()
    mri, ct = ring_batch(32)
    dataset = tf.data.Dataset.from_tensors((mri, ct)).repeat()
    history = model.fit(dataset, epochs=3, steps_per_epoch=8, verbose=0).history
    assert history["cycle"][-1] < 0.7 * history["cycle"][0], history["cycle"]
    assert history["structure"][-1] < history["structure"][0], history["structure"]
    assert all(np.isfinite(v) for values in history.values() for v in values)


def test_the_training_step_moves_the_spectral_norm_estimates_and_evaluation_does_not(
        tiny_config):
    """On every backend the power-iteration state leaves the step (JAX: the threaded values)."""
    import tensorflow as tf
    from conftest import ring_batch

    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    keras.utils.set_random_seed(0)
    model = VAECycleGAN(tiny_config.replace(disc_norm="spectral"))
    model.compile()
    mri, ct = ring_batch(32)
    dataset = tf.data.Dataset.from_tensors((mri, ct)).repeat()
    model.evaluate(dataset, steps=1, verbose=0)
    convs = [model.d_ct.blocks[0].conv, model.d_mri.blocks[-1].conv]
    before = [to_np(conv.u).copy() for conv in convs]
    model.evaluate(dataset, steps=1, verbose=0)
    for conv, u in zip(convs, before):
        np.testing.assert_array_equal(to_np(conv.u), u)
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    for conv, u in zip(convs, before):
        moved = to_np(conv.u)
        assert not np.allclose(moved, u)
        assert np.linalg.norm(moved) == pytest.approx(1.0, rel=1e-4)


def test_a_model_with_the_non_default_options_saves_and_loads(tiny_config, tmp_path):
    from conftest import ring_batch

    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    model = VAECycleGAN(tiny_config.replace(**ALL_NON_DEFAULT))
    model.compile()
    mri, ct = ring_batch(32)
    estimate = model.d_ct.blocks[1].conv.u  # the spectral norm's state, as a trained run has it
    estimate.assign(np.linspace(-1, 1, estimate.shape[1]).reshape(estimate.shape))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.settings == model.settings
    assert loaded.g_ct.padding == "reflect" and loaded.d_ct.high_pass
    assert loaded.d_ct.norm == "spectral"
    np.testing.assert_array_equal(to_np(loaded.d_ct.blocks[1].conv.u), to_np(estimate))
    for direction, images in (("mri2ct", mri), ("ct2mri", ct)):
        np.testing.assert_array_equal(to_np(loaded.translate(images, direction)),
                                      to_np(model.translate(images, direction)))
    for got, expected in zip(loaded.d_ct(ct), model.d_ct(ct)):
        np.testing.assert_array_equal(to_np(got), to_np(expected))


def test_mirror_averaged_is_the_mean_of_a_pass_and_its_mirrored_pass():
    from keras_vaegan.models.mirror import mirror_averaged

    columns = np.arange(5, dtype="float32")[None, None, :, None]

    def forward(x):  # not mirror-symmetric: adds the column index
        return x + columns

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 5, 1)).astype("float32")
    averaged = to_np(mirror_averaged(forward, x))
    np.testing.assert_allclose(averaged, x + 2.0, atol=1e-6)  # (c + (4 - c)) / 2 = 2
    np.testing.assert_array_equal(to_np(mirror_averaged(forward, x, enabled=False)), x + columns)


def test_shift_averaged_moves_each_pass_back_to_where_it_was():
    """Each phase's pass is cropped back into place: a pass that marks the pixels at even
    positions of its own grid marks, averaged over the stride's diagonal phases, the pixels
    whose row and column have the same parity, each by half; a pass that ignores the grid
    (the identity) comes back unchanged."""
    from keras_vaegan.models.shifts import shift_averaged

    x = np.random.default_rng(0).uniform(-1, 1, (2, 6, 8, 3)).astype("float32")
    even = np.zeros((1, 6, 8, 1), "float32")
    even[:, ::2, ::2] = 1.0  # the sides stay multiples of the stride, so this fits every pass

    def on_grid(images):
        rows, cols = images.shape[1], images.shape[2]
        grid = np.zeros((1, rows, cols, 1), "float32")
        grid[:, ::2, ::2] = 1.0
        return images * grid

    rows, cols = np.indices((6, 8))
    same_parity = ((rows % 2) == (cols % 2)).astype("float32")[None, :, :, None]
    np.testing.assert_allclose(to_np(shift_averaged(on_grid, x, 2)), x * same_parity / 2,
                               atol=1e-6)
    np.testing.assert_allclose(to_np(shift_averaged(lambda images: images, x, 2)), x, atol=1e-6)
    np.testing.assert_array_equal(to_np(shift_averaged(on_grid, x, 2, enabled=False)), x * even)
    np.testing.assert_array_equal(to_np(shift_averaged(on_grid, x, 1)), x * even)


def test_shift_average_is_what_every_prediction_path_returns(tiny_config):
    """model.translate and predict's compiled pass average, for each of the mirror's two
    passes, the generator's passes at every diagonal phase p below its stride (the slice padded
    by p reflected pixels before and stride - p after, cropped back); off, they are the mirror
    average alone."""
    from conftest import ring_batch

    from keras_vaegan.inference.compiled import compiled_translation
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    keras.utils.set_random_seed(0)
    model = VAECycleGAN(tiny_config.replace(mirror_average=True, shift_average=True))
    model.compile()
    stride = model.total_stride
    assert stride > 1
    mri, _ = ring_batch(32)
    mri = np.roll(mri, 5, axis=2)

    def one_pass(x):
        return to_np(model.g_ct(np.ascontiguousarray(x), training=False, sample=False)[0])

    def shifted(x):
        total = one_pass(x)
        for p in range(1, stride):
            padded = np.pad(x, [(0, 0), (p, stride - p), (p, stride - p), (0, 0)],
                            mode="reflect")
            total = total + one_pass(padded)[:, p:p - stride, p:p - stride]
        return total / stride

    expected = (shifted(mri) + shifted(mri[:, :, ::-1])[:, :, ::-1]) / 2
    compiled = compiled_translation(model, "mri2ct", mri.shape[:3], sample=False)
    np.testing.assert_allclose(compiled(mri), expected[..., 0], atol=5e-5)
    np.testing.assert_allclose(to_np(model.translate(mri)), expected, atol=5e-5)
    mirror_only = (one_pass(mri) + one_pass(mri[:, :, ::-1])[:, :, ::-1]) / 2
    assert np.abs(expected - mirror_only).max() > 1e-3  # the phases differ on this generator
    model.settings = model.settings.replace(shift_average=False)
    np.testing.assert_allclose(to_np(model.translate(mri)), mirror_only, atol=5e-5)


@pytest.mark.parametrize("enabled", [True, False])
def test_mirror_average_makes_every_prediction_path_mirror_symmetric(tiny_config, enabled):
    """model.translate and predict's compiled pass: the prediction of a mirrored slice is the
    mirrored prediction when ``mirror_average`` is on (an untrained generator is far from it)."""
    from conftest import ring_batch

    from keras_vaegan.inference.compiled import compiled_translation
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    keras.utils.set_random_seed(0)
    model = VAECycleGAN(tiny_config.replace(mirror_average=enabled, shift_average=False))
    model.compile()
    mri, _ = ring_batch(32)
    mri = np.roll(mri, 5, axis=2)  # off-centre, so the image is not its own mirror
    mirrored = np.ascontiguousarray(mri[:, :, ::-1])
    compiled = compiled_translation(model, "mri2ct", mri.shape[:3], sample=False)
    for translate in (lambda x: to_np(model.translate(x))[..., 0], compiled):
        direct, of_mirror = translate(mri), translate(mirrored)
        gap = np.abs(direct[:, :, ::-1] - of_mirror).max()
        assert gap < 5e-5 if enabled else gap > 1e-3, gap  # 5e-5: fused ops round apart
    single = to_np(model.g_ct(mri, training=False, sample=False)[0])
    flipped = to_np(model.g_ct(mirrored, training=False, sample=False)[0])[:, :, ::-1]
    expected = (single + flipped) / 2 if enabled else single
    np.testing.assert_allclose(compiled(mri), expected[..., 0], atol=5e-5)
