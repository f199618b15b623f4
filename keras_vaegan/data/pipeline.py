"""The ``tf.data`` input pipeline: unpaired MRI and CT crops for training, and a
fixed validation batch for the snapshot callback.

Slices arrive as 2-D float32 arrays already in model units [-1, 1], each at its
native size (slices of one set may differ in size). Training draws random
``image_size`` x ``image_size`` crops at native resolution: resampling is not
done here (see DESIGN.md, "Data and units"); a side smaller than the crop is
padded with -1 (air). The MRI and CT streams are shuffled independently and
zipped, so a batch pairs unrelated MRI and CT crops, as the CycleGAN objective
expects.

The pipeline is pure ``tf.data`` / TensorFlow ops (one of the two places a
backend import is allowed), so ``keras.Model.fit`` takes it under every
``KERAS_BACKEND``; its element spec is fully static for a fixed-batch train step.
Every random choice is a stateless function of the seed and the element's
position in the stream, so a seed gives the same batches in every run even
with parallel maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_vaegan.config import Config
from keras_vaegan.data.augment import Augmenter, build_augmenter
from keras_vaegan.data.units import AIR_UNIT
from keras_vaegan.errors import VAEGANError

AUTOTUNE = tf.data.AUTOTUNE
_RANGE_TOLERANCE = 1e-3  # float round-off from the unit conversion is clipped, more is a bug


def make_training_dataset(mri_slices: Sequence[np.ndarray], ct_slices: Sequence[np.ndarray],
                          config: Config, seed: int | None = None) -> tf.data.Dataset:
    """Endless dataset of ``(mri_batch, ct_batch)``, each float32 ``[batch, size, size, 1]``.

    The two streams are shuffled with different seeds and never aligned, so
    paired input (like the phantom) is not used as pairs. Training runs with
    ``steps_per_epoch``; the dataset repeats forever.

    With ``config.augment``, every crop is augmented on the fly; with
    ``config.augment_copies = N > 0`` instead, each slice is used as itself
    plus N augmented copies made once (cached, the same every epoch) and only
    the crop stays random. ``augment=False`` turns both off.
    """
    seed = config.seed if seed is None else int(seed)
    mri = _stream(_checked(mri_slices, "MRI"), config, "mri", seed, stream_id=0)
    ct = _stream(_checked(ct_slices, "CT"), config, "ct", seed, stream_id=1)
    return tf.data.Dataset.zip((mri, ct)).prefetch(AUTOTUNE)


def make_validation_batch(mri_slices: Sequence[np.ndarray], ct_slices: Sequence[np.ndarray],
                          config: Config, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` centre crops of each modality, the same every call, for snapshot grids.

    Slices are picked evenly across each list (so a multi-subject set shows
    several subjects); padded with -1 where smaller than ``image_size``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return (_centre_batch(_checked(mri_slices, "MRI"), config.image_size, count),
            _centre_batch(_checked(ct_slices, "CT"), config.image_size, count))


# --- one modality's stream ---------------------------------------------------
def _stream(slices: list[np.ndarray], config: Config, modality: str, seed: int,
            stream_id: int) -> tf.data.Dataset:
    """Decoded and cached slices -> shuffled, repeated, cropped (and augmented) batches."""
    size = config.image_size
    shuffle_seed, crop_seed, copy_seed, augment_seed = (
        int(s) for s in np.random.SeedSequence([seed, stream_id]).generate_state(4, np.uint32) >> 1)
    augmenter = build_augmenter(config, modality, seed=augment_seed)
    augmenting = config.augment and not augmenter.is_identity
    copies = config.augment_copies if augmenting else 0
    on_the_fly = augmenting and copies == 0
    # Augment a window with real context around the crop, then cut the crop out
    # of its centre: rotating a bare crop would put air wedges inside the body.
    margin = augmenter.context_margin(size) if on_the_fly else 0

    ds = tf.data.Dataset.from_tensor_slices(_as_ragged(slices))
    ds = ds.map(lambda ragged: ragged.to_tensor()[..., tf.newaxis], num_parallel_calls=AUTOTUNE)
    if copies:
        ds = ds.enumerate().map(_copy_maker(augmenter, copies, copy_seed),
                                num_parallel_calls=AUTOTUNE).unbatch()
    ds = ds.map(lambda image: _pad_centred(image, size, margin), num_parallel_calls=AUTOTUNE)
    ds = ds.cache()  # decoded, padded (and the fixed copies): computed once

    count = len(slices) * (copies + 1)
    ds = ds.shuffle(min(config.shuffle_buffer, count), seed=shuffle_seed,
                    reshuffle_each_iteration=True).repeat()
    crop = _cropper(size, margin, augmenter if on_the_fly else None, crop_seed)
    ds = ds.enumerate().map(crop, num_parallel_calls=AUTOTUNE)
    return ds.batch(config.batch_size, drop_remainder=True)


def _copy_maker(augmenter: Augmenter, copies: int, copy_seed: int):
    """Map fn: one slice -> [1 + copies, H, W, 1], the original then its fixed copies."""

    def make(index: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        seed = tf.stack([tf.constant(copy_seed, tf.int64), index])
        augmented = augmenter(tf.repeat(image[tf.newaxis], copies, axis=0), seed=seed)
        return tf.concat([image[tf.newaxis], augmented], axis=0)

    return make


def _cropper(size: int, margin: int, augmenter: Augmenter | None, crop_seed: int):
    """Map fn: (position in stream, padded slice) -> one random ``size`` crop.

    The slice was padded to at least ``size`` and then by ``margin`` on every
    side; the crop offset is drawn over the unpadded-by-margin area, so the
    crop distribution is the same with or without augmentation.
    """
    window = size + 2 * margin

    def crop(index: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(crop_seed, tf.int64), index]), num=2)
        spare = tf.shape(image)[:2] - window + 1  # number of possible offsets per axis
        draws = tf.random.stateless_uniform([2], seed=seeds[0])
        offset = tf.minimum(tf.cast(draws * tf.cast(spare, tf.float32), tf.int32), spare - 1)
        out = tf.slice(image, tf.concat([offset, [0]], axis=0), [window, window, 1])
        if augmenter is not None:
            out = augmenter(out, seed=seeds[1], shift_reference=size)
            out = out[margin:margin + size, margin:margin + size]
        out.set_shape([size, size, 1])
        return out

    return crop


def _pad_centred(image: tf.Tensor, size: int, margin: int) -> tf.Tensor:
    """Pad with air to at least ``size`` per side (centred), then ``margin`` all round."""
    shape = tf.shape(image)
    short = tf.maximum(size - shape[:2], 0)
    before = short // 2 + margin
    after = short - short // 2 + margin
    paddings = tf.stack([tf.stack([before[0], after[0]]), tf.stack([before[1], after[1]]), [0, 0]])
    return tf.pad(image, paddings, constant_values=AIR_UNIT)


def _as_ragged(slices: list[np.ndarray]) -> tf.RaggedTensor:
    """All slices in one [n, (h), (w)] ragged tensor: no padding to a common size."""
    heights = np.array([s.shape[0] for s in slices], np.int64)
    widths = np.concatenate([np.full(s.shape[0], s.shape[1], np.int64) for s in slices])
    values = np.concatenate([s.ravel() for s in slices])
    return tf.RaggedTensor.from_nested_row_lengths(values, [heights, widths])


# --- validation --------------------------------------------------------------
def _centre_batch(slices: list[np.ndarray], size: int, count: int) -> np.ndarray:
    picks = np.linspace(0, len(slices) - 1, count).round().astype(int)
    return np.stack([_centre_crop(slices[i], size) for i in picks])[..., np.newaxis]


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Same centring as the training padding: extra rows/columns go after."""
    short = np.maximum(size - np.array(image.shape), 0)
    image = np.pad(image, [(s // 2, s - s // 2) for s in short], constant_values=AIR_UNIT)
    top, left = ((np.array(image.shape) - size) // 2)
    return image[top:top + size, left:left + size]


# --- input checks ------------------------------------------------------------
def _checked(slices: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    """2-D float32 slices in [-1, 1]; a trailing channel axis of 1 is dropped."""
    if len(slices) == 0:
        raise VAEGANError(None, f"no {name} slices to train on")
    checked = []
    for i, s in enumerate(slices):
        s = np.asarray(s, dtype=np.float32)
        if s.ndim == 3 and s.shape[-1] == 1:
            s = s[..., 0]
        if s.ndim != 2 or min(s.shape) < 1:
            raise VAEGANError(None, f"{name} slice {i}: expected a 2-D image, got shape {s.shape}")
        if not np.isfinite(s).all():
            raise VAEGANError(None, f"{name} slice {i}: contains NaN or infinite values")
        if s.min() < -1 - _RANGE_TOLERANCE or s.max() > 1 + _RANGE_TOLERANCE:
            raise VAEGANError(None, f"{name} slice {i}: values [{s.min():.3g}, {s.max():.3g}] "
                                    "are not in model units [-1, 1]")
        checked.append(np.clip(s, -1.0, 1.0))
    return checked
