"""Sub-model shapes, the KL term, the multi-head discriminator and the history pool."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_vaegan.models.discriminator import MultiHeadPatchDiscriminator, block_strides
from keras_vaegan.models.generator import VAEGenerator
from keras_vaegan.models.history_pool import HistoryPool
from keras_vaegan.models.losses import adversarial_loss, kl_divergence, l1_loss, structure_loss

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
