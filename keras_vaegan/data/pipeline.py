"""The ``tf.data`` input pipeline: unpaired MRI and CT crops for training, and a
fixed validation batch for the snapshot callback.

Slices arrive already in model units [-1, 1], each at its native size (slices
of one set may differ in size): as 2-D numpy arrays, or as a ``SliceSet``
such as the on-disk slice cache (``slice_cache.SliceStore``); both are read
through the same path, a crop window per slice, a batch per call. Training draws random
``image_size`` x ``image_size`` crops at native resolution: resampling is not
done here (see DESIGN.md, "Data and units"); a side smaller than the crop is
padded with -1 (air). The MRI and CT streams are shuffled independently and
zipped, so a batch pairs unrelated MRI and CT crops, as the CycleGAN objective
expects.

2.5-D input: with ``config.context_slices = K > 1`` every element is the
stack of its slice, K channels: slices z - K//2 .. z + K//2 of the same volume
(``SliceSet.stacks``: a missing neighbour repeats the nearest one, a 2-D
slice is itself K times), cut at one crop position and augmented with one
geometric transform and one intensity jitter for all K channels. Batches are
``[batch, size, size, K]``; K = 1 is the plain 2-D pipeline, unchanged.

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
from keras_vaegan.data.slice_cache import InMemorySlices, SliceSet
from keras_vaegan.data.units import AIR_UNIT
from keras_vaegan.errors import VAEGANError

AUTOTUNE = tf.data.AUTOTUNE
_RANGE_TOLERANCE = 1e-3  # float round-off from the unit conversion is clipped, more is a bug


def make_training_dataset(mri_slices: Sequence[np.ndarray] | SliceSet,
                          ct_slices: Sequence[np.ndarray] | SliceSet,
                          config: Config, seed: int | None = None) -> tf.data.Dataset:
    """Endless dataset of ``(mri_batch, ct_batch)``, each float32 ``[batch, size, size, K]``.

    K is ``config.context_slices``: each crop with its slice's K // 2
    neighbours on either side as channels (see the module docstring).

    Slices are numpy arrays or a ``SliceSet`` (the on-disk slice cache);
    either way only the window a crop needs is read, per batch, so memory
    does not grow with the dataset. The two streams are shuffled with
    different seeds and never aligned, so paired input (like the phantom) is
    not used as pairs. Training runs with ``steps_per_epoch``; the dataset
    repeats forever.

    With ``config.augment``, every crop is augmented on the fly (a batch at a
    time); with ``config.augment_copies = N > 0`` instead, each slice is used
    as itself plus N augmented copies, each a fixed function of the seed and
    the slice (the same every epoch, recomputed rather than kept) and only
    the crop stays random. ``augment=False`` turns both off.
    """
    seed = config.seed if seed is None else int(seed)
    mri = _stream(_as_slice_set(mri_slices, "MRI"), config, "mri", seed, stream_id=0)
    ct = _stream(_as_slice_set(ct_slices, "CT"), config, "ct", seed, stream_id=1)
    return tf.data.Dataset.zip((mri, ct)).prefetch(AUTOTUNE)


def make_validation_batch(mri_slices: Sequence[np.ndarray] | SliceSet,
                          ct_slices: Sequence[np.ndarray] | SliceSet,
                          config: Config, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` centre crops of each modality, the same every call, for snapshot grids.

    Slices are picked evenly across each list (so a multi-subject set shows
    several subjects); padded with -1 where smaller than ``image_size``.
    Each is float32 ``[count, size, size, K]``, the picked slice's stack.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    k = config.context_slices
    return (_centre_batch(_as_slice_set(mri_slices, "MRI"), config.image_size, count, k),
            _centre_batch(_as_slice_set(ct_slices, "CT"), config.image_size, count, k))


# --- one modality's stream ---------------------------------------------------
def _stream(slice_set: SliceSet, config: Config, modality: str, seed: int,
            stream_id: int) -> tf.data.Dataset:
    """Shuffled slice indices -> crop windows read per batch -> (augmented) batches.

    Indices, not pixels, are shuffled (a full permutation per epoch, no
    buffer; ``config.shuffle_buffer`` is no longer needed); the crop position is drawn before reading, so only
    the window is read; augmentation runs on the window, vectorised over the
    batch. An element is a slice's K-slice stack (K = ``config.context_slices``).
    """
    size, k = config.image_size, config.context_slices
    shuffle_seed, crop_seed, copy_seed, augment_seed = (
        int(s) for s in np.random.SeedSequence([seed, stream_id]).generate_state(4, np.uint32) >> 1)
    augmenter = build_augmenter(config, modality, seed=augment_seed)
    augmenting = config.augment and not augmenter.is_identity
    copies = config.augment_copies if augmenting else 0
    count = len(slice_set) * (copies + 1)
    ds = tf.data.Dataset.counter().map(_shuffled(count, shuffle_seed))
    if copies:
        ds = ds.map(_copy_cropper(slice_set, size, k, copies, augmenter, copy_seed,
                                  crop_seed), num_parallel_calls=AUTOTUNE)
        return ds.batch(config.batch_size, drop_remainder=True)
    # Augment a window with real context around the crop, then cut the crop out
    # of its centre: rotating a bare crop would put air wedges inside the body.
    margin = augmenter.context_margin(size) if augmenting else 0
    window = size + 2 * margin
    ds = ds.map(_placer(slice_set, size, margin, crop_seed),
                            num_parallel_calls=AUTOTUNE)
    ds = ds.batch(config.batch_size, drop_remainder=True)
    ds = ds.map(_reader(slice_set, window, config.batch_size, k), num_parallel_calls=AUTOTUNE)
    if augmenting:
        ds = ds.enumerate().map(_batch_augmenter(augmenter, size, margin, augment_seed),
                                num_parallel_calls=AUTOTUNE)
    return ds


def _shuffled(count: int, shuffle_seed: int):
    """Map fn: position in the endless stream -> (position, element of that epoch's permutation).

    Every epoch (``count`` positions) is its own seeded permutation of all
    elements, computed per position: no shuffle buffer to fill or hold.
    """
    def pick(position: tf.Tensor):
        seed = tf.stack([tf.constant(shuffle_seed, tf.int64), position // count])
        return position, tf.random.experimental.index_shuffle(
            position % count, seed, tf.constant(count - 1, tf.int64))

    return pick


def _placer(slice_set: SliceSet, size: int, margin: int, crop_seed: int):
    """Map fn: (position in stream, slice index) -> (index, top, left) of its crop window.

    The slice is thought of as padded with air to at least ``size`` (centred)
    and then by ``margin`` all round; the offset is drawn over that padded
    slice (so the crop distribution is the same with or without
    augmentation) and returned in the slice's own coordinates (negative or
    past the edge where the window covers padding).
    """
    shapes = tf.constant(np.asarray(slice_set.shapes, np.int32).reshape(-1, 2))
    window = size + 2 * margin

    def place(position: tf.Tensor, index: tf.Tensor):
        shape = tf.gather(shapes, index)
        short = tf.maximum(size - shape, 0)
        spare = shape + short + 2 * margin - window + 1  # possible offsets per axis
        draws = tf.random.stateless_uniform(
            [2], seed=tf.stack([tf.constant(crop_seed, tf.int64), position]))
        offset = tf.minimum(tf.cast(draws * tf.cast(spare, tf.float32), tf.int32), spare - 1)
        start = offset - short // 2 - margin
        return index, start[0], start[1]

    return place


def _reader(slice_set: SliceSet, window: int, batch: int, k: int):
    """Map fn: a batch of (index, top, left) -> float32 [batch, window, window, k] windows.

    Channel j of an element is slice ``stacks(index, k)[j]``, all at the same (top, left).
    """

    def read(indices, tops, lefts):
        out = tf.numpy_function(lambda i, t, c: slice_set.windows(i, t, c, window, k),
                                [indices, tops, lefts], tf.float32, stateful=False)
        out.set_shape([batch, window, window, k])
        return out

    return read


def _batch_augmenter(augmenter: Augmenter, size: int, margin: int, augment_seed: int):
    """Map fn: (batch number, windows) -> augmented ``size`` crops from the windows' centres."""

    def augment(number: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
        seed = tf.stack([tf.constant(augment_seed, tf.int64), number])
        out = augmenter(windows, seed=seed, shift_reference=size)
        return out[:, margin:margin + size, margin:margin + size]

    return augment


def _copy_cropper(slice_set: SliceSet, size: int, k: int, copies: int, augmenter: Augmenter,
                  copy_seed: int, crop_seed: int):
    """Map fn: (position, element) -> a random crop of slice ``element // (copies + 1)``'s stack.

    Element ``n = element % (copies + 1)`` is the slice itself (0) or its
    n-th fixed augmented copy: augmented whole (all ``k`` channels alike),
    seeded by the element alone, so it is the same image every epoch.
    """
    crop = _cropper(size, crop_seed, k)
    shapes = tf.constant(np.asarray(slice_set.shapes, np.int32).reshape(-1, 2))

    def read(index) -> np.ndarray:
        index = int(index)
        return slice_set[index][..., np.newaxis] if k == 1 else slice_set.read_stack(index, k)

    def make(position: tf.Tensor, element: tf.Tensor) -> tf.Tensor:
        index = element // (copies + 1)
        image = tf.numpy_function(read, [index], tf.float32, stateful=False)
        image = tf.reshape(image, tf.concat([tf.gather(shapes, index), [k]], axis=0))
        seed = tf.stack([tf.constant(copy_seed, tf.int64), element])
        image = tf.cond(element % (copies + 1) > 0,
                        lambda: augmenter(image, seed=seed), lambda: image)
        return crop(position, _pad_centred(image, size))

    return make


def _cropper(size: int, crop_seed: int, channels: int = 1):
    """(position in stream, slice padded to >= ``size``) -> one random ``size`` crop, all channels."""

    def crop(index: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        spare = tf.shape(image)[:2] - size + 1  # number of possible offsets per axis
        draws = tf.random.stateless_uniform(
            [2], seed=tf.stack([tf.constant(crop_seed, tf.int64), index]))
        offset = tf.minimum(tf.cast(draws * tf.cast(spare, tf.float32), tf.int32), spare - 1)
        out = tf.slice(image, tf.concat([offset, [0]], axis=0), [size, size, channels])
        out.set_shape([size, size, channels])
        return out

    return crop


def _pad_centred(image: tf.Tensor, size: int) -> tf.Tensor:
    """Pad with air to at least ``size`` per side, centred (the odd pixel after)."""
    shape = tf.shape(image)
    short = tf.maximum(size - shape[:2], 0)
    before = short // 2
    after = short - short // 2
    paddings = tf.stack([tf.stack([before[0], after[0]]), tf.stack([before[1], after[1]]), [0, 0]])
    return tf.pad(image, paddings, constant_values=AIR_UNIT)


# --- validation --------------------------------------------------------------
def _centre_batch(slices: SliceSet, size: int, count: int, k: int = 1) -> np.ndarray:
    """[count, size, size, k]: the centre crop of each picked slice's stack."""
    picks = np.linspace(0, len(slices) - 1, count).round().astype(int)
    if k == 1:
        return np.stack([_centre_crop(slices[i], size) for i in picks])[..., np.newaxis]
    return np.stack([np.stack([_centre_crop(slices[int(j)], size) for j in stack], axis=-1)
                     for stack in slices.stacks(picks, k)])


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Same centring as the training padding: extra rows/columns go after."""
    short = np.maximum(size - np.array(image.shape), 0)
    image = np.pad(image, [(s // 2, s - s // 2) for s in short], constant_values=AIR_UNIT)
    top, left = ((np.array(image.shape) - size) // 2)
    return image[top:top + size, left:left + size]


# --- input checks ------------------------------------------------------------
def _as_slice_set(slices: Sequence[np.ndarray] | SliceSet, name: str) -> SliceSet:
    """A slice cache as it is (checked when written); numpy slices checked and wrapped.

    In-memory slices keep their groups and positions; a plain list is 2-D
    slices, each its own group (its stack is itself repeated).
    """
    if isinstance(slices, InMemorySlices):
        return InMemorySlices(_checked(slices.slices, name), slices.groups, slices.positions)
    if isinstance(slices, SliceSet):
        if len(slices) == 0:
            raise VAEGANError(None, f"no {name} slices to train on")
        return slices
    return InMemorySlices(_checked(slices, name))


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
