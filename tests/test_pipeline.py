"""The tf.data pipeline and the keras-cv augmentation: shapes, units, crops,
unpaired streams, fixed augmented copies, determinism, and other backends."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_vaegan.config import Config
from keras_vaegan.data.augment import build_augmenter
from keras_vaegan.data.pipeline import make_training_dataset, make_validation_batch
from keras_vaegan.errors import VAEGANError

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def config(**changes) -> Config:
    values = dict(image_size=SIZE, batch_size=4, shuffle_buffer=64, seed=3)
    values.update(changes)
    return Config(**values)


def mixed_slices(count: int, seed: int = 0) -> list[np.ndarray]:
    """Head-like ellipses with texture, of several native sizes (some below SIZE)."""
    rng = np.random.default_rng(seed)
    shapes = [(48, 40), (32, 32), (20, 28), (64, 64)]
    slices = []
    for i in range(count):
        h, w = shapes[i % len(shapes)]
        yy, xx = np.mgrid[0:h, 0:w]
        inside = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
        tissue = 0.2 + 0.3 * np.sin(xx / 2.0 + i) + 0.1 * rng.standard_normal((h, w))
        slices.append(np.clip(np.where(inside, tissue, -1.0), -1, 1).astype(np.float32))
    return slices


def coded_slices(count: int, ramp: float = 0.0) -> list[np.ndarray]:
    """Slices whose level encodes their index (decode with `index_of`).

    ``ramp`` adds a small asymmetric gradient so that any flip, shift or zoom
    changes the pixels (a constant slice hides a zoom-in).
    """
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    pattern = ramp * (xx - 0.5 + 0.5 * yy)
    return [(code(i, count) + pattern).astype(np.float32) for i in range(count)]


def code(i: int, count: int) -> float:
    return -0.9 + 1.8 * i / (count - 1)


def index_of(image: np.ndarray, count: int) -> int:
    level = np.median(image[image > -0.95])  # robust to air filled in at the border
    return int(round((level + 0.9) / 1.8 * (count - 1)))


def take(ds: tf.data.Dataset, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.numpy(), c.numpy()) for m, c in ds.take(batches)]


# --- shapes and units ----------------------------------------------------------
@pytest.mark.parametrize("augment", [True, False])
def test_batches_have_static_shape_dtype_and_model_range(augment):
    cfg = config(augment=augment)
    ds = make_training_dataset(mixed_slices(10), mixed_slices(7, seed=1), cfg)
    for spec in ds.element_spec:
        assert spec.shape.as_list() == [4, SIZE, SIZE, 1] and spec.dtype == tf.float32
    for mri, ct in take(ds, 6):
        for batch in (mri, ct):
            assert batch.shape == (4, SIZE, SIZE, 1) and batch.dtype == np.float32
            assert batch.min() >= -1.0 and batch.max() <= 1.0
            assert batch.max() > -1.0  # not all background


def test_slices_smaller_than_the_crop_are_padded_with_air():
    ds = make_training_dataset([np.full((20, 24), 0.5, np.float32)],
                               [np.full((20, 24), 0.5, np.float32)], config(augment=False))
    expected = np.full((SIZE, SIZE), -1.0, np.float32)
    expected[6:26, 4:28] = 0.5  # centred, the odd pixel after
    for mri, ct in take(ds, 2):
        for image in np.concatenate([mri, ct])[..., 0]:
            np.testing.assert_array_equal(image, expected)


def test_larger_non_square_slices_are_cropped_at_native_resolution():
    h, w = 96, 64
    position = np.arange(h * w, dtype=np.float32).reshape(h, w)
    slice_ = -1 + 2 * position / (h * w - 1)  # every pixel value says where it came from
    ds = make_training_dataset([slice_], [slice_], config(augment=False))
    offsets = set()
    for mri, ct in take(ds, 6):
        for image in np.concatenate([mri, ct])[..., 0]:
            r, c = divmod(int(round((image[0, 0] + 1) / 2 * (h * w - 1))), w)
            assert r + SIZE <= h and c + SIZE <= w
            np.testing.assert_array_equal(image, slice_[r:r + SIZE, c:c + SIZE])
            offsets.add((r, c))
    assert len(offsets) > 10  # random positions, not one fixed crop


# --- unpaired streams ------------------------------------------------------------
def test_mri_and_ct_streams_are_shuffled_independently():
    count = 16
    slices = coded_slices(count)
    ds = make_training_dataset(slices, slices, config(augment=False))
    mri_order, ct_order = [], []
    for mri, ct in take(ds, 8):
        mri_order += [index_of(image, count) for image in mri]
        ct_order += [index_of(image, count) for image in ct]
    # every epoch is a permutation of all slices in each stream ...
    for order in (mri_order, ct_order):
        assert sorted(order[:count]) == list(range(count))
        assert sorted(order[count:2 * count]) == list(range(count))
    # ... but the streams are not aligned, and epochs are reshuffled
    assert mri_order != ct_order
    assert mri_order[:count] != mri_order[count:2 * count]


# --- augmentation --------------------------------------------------------------
def test_augmenter_changes_images_keeps_shape_range_and_fills_with_air():
    cfg = config(rotation_deg=20.0, zoom=0.2, translation=0.1)
    augment = build_augmenter(cfg, "ct", seed=1)
    images = np.full((16, SIZE, SIZE, 1), 0.8, np.float32)
    out = augment(images).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert not np.array_equal(out, images)
    # uncovered corners are air (-1); keras-cv's default fill would give 0 or mirror 0.8
    assert out.min() == -1.0
    single = augment(images[0]).numpy()
    assert single.shape == (SIZE, SIZE, 1)


def test_context_margin_keeps_fill_out_of_the_centre_crop():
    cfg = config(rotation_deg=10.0, zoom=0.2, translation=0.1)
    augment = build_augmenter(cfg, "ct", seed=2)
    margin = augment.context_margin(SIZE)
    window = np.full((64, SIZE + 2 * margin, SIZE + 2 * margin, 1), 0.5, np.float32)
    out = augment(window, seed=tf.constant([4, 2]), shift_reference=SIZE).numpy()
    assert out.min() == -1.0  # the window's own border did get air ...
    centre = out[:, margin:margin + SIZE, margin:margin + SIZE]
    np.testing.assert_allclose(centre, 0.5, atol=1e-5)  # ... the crop in its centre never


def _gradient_energy(images: np.ndarray) -> float:
    dy = np.diff(images, axis=1)[:, :, :-1]
    dx = np.diff(images, axis=2)[:, :-1]
    return float((dx ** 2 + dy ** 2).mean())


def _phantom_ct_units(count: int = 8) -> np.ndarray:
    from keras_vaegan.data.phantom import make_slices
    from keras_vaegan.data.units import ct_map

    _, ct, _ = make_slices(count, size=SIZE, seed=0)
    return ct_map().to_unit(ct)[..., None]


@pytest.mark.parametrize("geometry", [dict(rotation_deg=10.0), dict(translation=0.1)])
def test_lanczos_resampling_keeps_the_thin_skull_sharp(geometry):
    # A bilinear resampling at a random sub-pixel offset blurs a 1-2 px skull
    # table; the discriminators would learn that blur as "real" CT.
    ct = _phantom_ct_units()
    kept = {}
    for mode in ("bilinear", "lanczos"):
        cfg = config(**{"flip": False, "rotation_deg": 0.0, "zoom": 0.0, "translation": 0.0,
                        "augment_resampling": mode, **geometry})
        out = build_augmenter(cfg, "ct", seed=1)(ct, seed=tf.constant([1, 2])).numpy()
        kept[mode] = _gradient_energy(out) / _gradient_energy(ct)
    assert kept["bilinear"] < 0.85
    assert kept["lanczos"] > 0.9


def test_lanczos_and_bilinear_resampling_apply_the_same_geometry():
    ct = _phantom_ct_units()
    outs = {}
    for mode in ("bilinear", "lanczos"):
        cfg = config(rotation_deg=10.0, zoom=0.1, translation=0.1, augment_resampling=mode)
        outs[mode] = build_augmenter(cfg, "ct", seed=1)(ct, seed=tf.constant([5, 6])).numpy()
    moved = np.abs(outs["bilinear"] - ct).mean()
    assert np.abs(outs["lanczos"] - outs["bilinear"]).mean() < 0.25 * moved
    # a near-zero transform returns the input: the fine grid is read back at pixel centres
    cfg = config(flip=False, rotation_deg=1e-6, zoom=0.0, translation=0.0,
                 augment_resampling="lanczos")
    same = build_augmenter(cfg, "ct", seed=1)(ct, seed=tf.constant([5, 6])).numpy()
    np.testing.assert_allclose(same, ct, atol=1e-4)


def test_intensity_jitter_is_for_mri_only():
    cfg = config(flip=False, rotation_deg=0.0, zoom=0.0, translation=0.0,
                 mri_intensity_jitter=0.2)
    ramp = np.linspace(-0.8, 0.8, SIZE * SIZE, dtype=np.float32).reshape(1, SIZE, SIZE, 1)
    images = np.repeat(ramp, 8, axis=0)
    mri = build_augmenter(cfg, "mri", seed=1)(images).numpy()
    ct = build_augmenter(cfg, "ct", seed=1)(images).numpy()
    np.testing.assert_array_equal(ct, images)
    assert mri.min() >= -1.0 and mri.max() <= 1.0
    assert np.abs(mri.mean(axis=(1, 2, 3)) - images.mean()).max() > 0.01  # brightness moved
    assert np.ptp(mri.std(axis=(1, 2, 3))) > 0.01  # contrast differs per image


def test_pipeline_augmentation_changes_crops_within_range():
    slices = [np.asarray(s) for s in mixed_slices(4)]
    plain = take(make_training_dataset(slices, slices, config(augment=False)), 3)
    augmented = take(make_training_dataset(slices, slices, config(augment=True)), 3)
    for (m1, c1) in augmented:
        assert m1.min() >= -1 and m1.max() <= 1 and c1.min() >= -1 and c1.max() <= 1
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(plain, augmented))


@pytest.mark.parametrize("copies", [1, 0])
def test_augment_copies_are_fixed_not_redrawn(copies):
    count = 8
    slices = coded_slices(count, ramp=0.02)  # exactly SIZE: the crop is the whole slice
    cfg = config(augment=True, augment_copies=copies, batch_size=4)
    versions: dict[int, set[bytes]] = {i: set() for i in range(count)}
    for _, ct in take(make_training_dataset(slices, slices, cfg), 24):  # 96 draws
        for image in ct:
            versions[index_of(image, count)].add(np.round(image, 5).tobytes())
    if copies:
        # the original and its one copy, each seen (every epoch shows all 16)
        assert all(len(v) == 2 for v in versions.values())
        for i in range(count):  # one of the two is the untouched original
            assert np.round(slices[i][..., None], 5).tobytes() in versions[i]
    else:  # on-the-fly augmentation: a new version almost every draw
        assert all(len(v) > 3 for v in versions.values())


# --- determinism -----------------------------------------------------------------
def test_same_seed_same_batches_other_seed_other_batches():
    mri, ct = mixed_slices(9), mixed_slices(6, seed=1)
    cfg = config(augment=True)
    first = take(make_training_dataset(mri, ct, cfg, seed=11), 4)
    again = take(make_training_dataset(mri, ct, cfg, seed=11), 4)
    other = take(make_training_dataset(mri, ct, cfg, seed=12), 4)
    default = take(make_training_dataset(mri, ct, cfg), 2)
    config_seed = take(make_training_dataset(mri, ct, cfg, seed=cfg.seed), 2)
    for (m0, c0), (m1, c1) in zip(first, again):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(c0, c1)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    for (m0, c0), (m1, c1) in zip(default, config_seed):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(c0, c1)


def test_validation_batch_is_deterministic_centre_crops():
    position = np.arange(40 * 40, dtype=np.float32).reshape(40, 40) / (40 * 40) * 2 - 1
    small = np.full((20, 24), 0.5, np.float32)
    slices = [position, small, position * 0.5, small, position * 0.25]
    mri, ct = make_validation_batch(slices, slices[::-1], config(), count=3)
    mri2, ct2 = make_validation_batch(slices, slices[::-1], config(), count=3)
    np.testing.assert_array_equal(mri, mri2)
    np.testing.assert_array_equal(ct, ct2)
    assert mri.shape == ct.shape == (3, SIZE, SIZE, 1) and mri.dtype == np.float32
    # evenly spread picks: slices 0, 2, 4
    np.testing.assert_array_equal(mri[0, ..., 0], position[4:36, 4:36])
    np.testing.assert_array_equal(mri[1, ..., 0], (position * 0.5)[4:36, 4:36])
    # a small slice sits where training puts it
    padded = take(make_training_dataset([small], [small], config(augment=False)), 1)[0][0][0]
    _, ct_small = make_validation_batch([small], [small], config(), count=1)
    np.testing.assert_array_equal(ct_small[0], padded)


def test_bad_slices_are_refused_with_a_clear_error():
    with pytest.raises(VAEGANError, match="no MRI slices"):
        make_training_dataset([], mixed_slices(2), config())
    with pytest.raises(VAEGANError, match="CT slice 1: .*model units"):
        make_training_dataset(mixed_slices(2), [np.zeros((8, 8)), np.full((8, 8), 300.0)], config())
    with pytest.raises(VAEGANError, match="2-D image"):
        make_validation_batch([np.zeros((2, 8, 8))], mixed_slices(1), config(), count=1)


# --- other Keras backends ------------------------------------------------------------
_BACKEND_SCRIPT = textwrap.dedent("""
    import json, numpy as np, keras
    from keras_vaegan.config import Config
    from keras_vaegan.data.pipeline import make_training_dataset
    slices = [np.full((h, w), 0.4, np.float32) * np.linspace(-1, 1, w, dtype=np.float32)
              for h, w in [(48, 40), (20, 28), (32, 32)]]
    sums = []
    for copies in (0, 1):
        cfg = Config(image_size=32, batch_size=4, seed=5, augment_copies=copies)
        mri, ct = next(iter(make_training_dataset(slices, slices, cfg)))
        assert tuple(mri.shape) == (4, 32, 32, 1), mri.shape
        sums.append([float(mri.numpy().sum()), float(ct.numpy().sum())])
    print(json.dumps({"backend": keras.backend.backend(), "sums": sums}))
""")


@functools.lru_cache(maxsize=None)
def _run_backend_script(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _BACKEND_SCRIPT], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_pipeline_and_augmentation_run_under_other_keras_backends(backend):
    if find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    result = _run_backend_script(backend)
    assert result["backend"] == backend
    # the same numbers as with the TensorFlow backend: the pipeline is backend-free
    reference = _run_backend_script("tensorflow")
    np.testing.assert_allclose(result["sums"], reference["sums"], rtol=1e-5)


def test_a_second_iteration_starts_with_the_same_batches(tiny_config):
    """Keras under a tf.distribute strategy draws one batch to build the model, then iterates
    the dataset again to train: that pass must start where a one-process run starts."""
    from keras_vaegan.data.training_data import load_training_data

    data = load_training_data(tiny_config)
    dataset = make_training_dataset(data.mri, data.ct, data.config)
    first = [(m.numpy(), c.numpy()) for (m, c), _ in zip(dataset, range(3))]
    again = [(m.numpy(), c.numpy()) for (m, c), _ in zip(dataset, range(3))]
    for (m1, c1), (m2, c2) in zip(first, again):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(first[0][0], first[1][0])  # and the batches do differ
