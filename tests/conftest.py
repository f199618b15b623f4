"""Shared fixtures: tiny configs and models so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# fit's slice cache (data_cache=auto) goes to a folder of this test session, not the user's
# ~/.cache; subprocesses the tests start inherit it
os.environ.setdefault("KERAS_VAEGAN_CACHE", tempfile.mkdtemp(prefix="keras-vaegan-test-cache-"))

import numpy as np
import pytest

from keras_vaegan.config import Config

# latent_downsample=4 (the default is 2): the padding and cropping tests need a stride of 4
TINY = dict(image_size=32, batch_size=2, gen_filters=8, latent_channels=8, gen_res_blocks=1,
            latent_downsample=4,
            disc_filters=(16, 32, 32), disc_heads=2, pool_size=4, epochs=2, steps_per_epoch=3,
            phantom_subjects=2, phantom_slices=4, phantom_size=32, snapshot_count=2,
            mixed_precision="off")


def save_tiny_run(folder, config: Config | None = None) -> str:
    """An untrained tiny model saved as a run folder (model.keras + config.json)."""
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    config = config or Config(**TINY)
    model = VAECycleGAN(config)
    model.compile()
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))
    config.save(os.path.join(folder, "config.json"))
    return str(folder)


@pytest.fixture
def tiny_config() -> Config:
    return Config(**TINY)


def ring_batch(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A fixed structured MRI-like and CT-like batch of two (heads as rings and discs)."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    r = np.sqrt(xx ** 2 + yy ** 2)
    mri = np.stack([np.where(r < 0.7, 0.5, -1.0), np.where(r < 0.5, 0.2, -1.0)])
    ct = np.stack([np.where((r < 0.7) & (r > 0.6), 1.0, np.where(r < 0.6, -0.4, -1.0)),
                   np.where(r < 0.5, -0.3, -1.0)])
    return mri[..., None].astype("float32"), ct[..., None].astype("float32")


# The longest tests: whole suites or training runs in subprocesses, one per backend.
LONGEST_FIRST = ("test_other_backends.py", "test_cross_backend.py")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, hand out the subprocess suites first so they overlap.

    With ``--dist loadscope --no-loadscope-reorder`` scopes go to workers in
    collection order; starting the few long ones first keeps the two workers
    of a 2-core machine busy to the end instead of leaving one suite alone.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable sort


def head_like(shape, seed=0) -> np.ndarray:
    """Air around a noisy ellipse, changing along z, file order (x, y, z) (compresses like an
    image, not like zeros): the test volume of the NIfTI memory and streaming tests."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = (x ** 2 + (y / 0.8) ** 2 < 0.7)[..., None]
    z = np.arange(shape[2], dtype=np.float32)
    return np.where(inside, 400.0 + 100.0 * np.sin(z / 9.0) + rng.normal(0, 30, shape),
                    0.0).astype(np.float32)
