"""2.5-D input (config.context_slices = K): which slices form a stack (the clamp rule),
that the pipeline's K channels are one volume's consecutive slices cut and augmented
alike, that the slice cache keeps groups and positions, and the phantom's stacks."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from keras_vaegan.config import Config
from keras_vaegan.data import phantom, slice_cache, training_data
from keras_vaegan.data.augment import Augmenter
from keras_vaegan.data.pipeline import make_training_dataset, make_validation_batch
from keras_vaegan.data.slice_cache import InMemorySlices, SliceStore

SIZE = 16

# (group, position) of 8 stored slices: volume 0 lost position 3 (a dropped slice),
# group 1 is one slice at position 6 (right after volume 0's last one), group 2 two slices
KEYS = [(0, 0), (0, 1), (0, 2), (0, 4), (0, 5), (1, 6), (2, 0), (2, 1)]


def expected_stack(keys: list[tuple[int, int]], index: int, k: int) -> list[int]:
    """The clamp rule written out: walk to (group, position +- 1) while it exists."""
    where = {key: i for i, key in enumerate(keys)}
    group, position = keys[index]
    out = [index]
    for step in (-1, 1):
        current, p = index, position
        for _ in range(k // 2):
            current = where.get((group, p + step), current)
            p = keys[current][1]
            out.insert(0, current) if step < 0 else out.append(current)
    return out


def keyed_set(keys, size=SIZE, value=None) -> InMemorySlices:
    images = [np.full((size, size), key_code(g, p) if value is None else value, np.float32)
              for g, p in keys]
    return InMemorySlices(images, [g for g, _ in keys], [p for _, p in keys])


def key_code(group: int, position: int) -> float:
    return -0.9 + 0.02 * (10 * group + position)


def key_of(image: np.ndarray) -> tuple[int, int]:
    level = np.median(image[image > -0.95])  # robust to air filled in at a border
    code = int(round((level + 0.9) / 0.02))
    return code // 10, code % 10


def config(**changes) -> Config:
    values = dict(image_size=SIZE, batch_size=4, seed=5, context_slices=3)
    values.update(changes)
    return Config(**values)


# --- the clamp rule --------------------------------------------------------------
def test_stacks_clamp_at_edges_and_gaps_and_never_cross_groups():
    slices = keyed_set(KEYS)
    assert slices.stack(0, 5).tolist() == [0, 0, 0, 1, 2]  # volume start
    assert slices.stack(2, 5).tolist() == [0, 1, 2, 2, 2]  # position 3 was dropped
    assert slices.stack(3, 5).tolist() == [3, 3, 3, 4, 4]
    assert slices.stack(4, 3).tolist() == [3, 4, 4]  # not group 1's position 6
    assert slices.stack(5, 3).tolist() == [5, 5, 5]  # nor back into group 0
    assert slices.stack(6, 3).tolist() == [6, 6, 7]
    for k in (1, 3, 5, 7):
        got = slices.stacks(np.arange(len(KEYS)), k)
        assert got.shape == (len(KEYS), k) and got.dtype == np.int64
        assert got.tolist() == [expected_stack(KEYS, i, k) for i in range(len(KEYS))]
        assert (got[:, k // 2] == np.arange(len(KEYS))).all()


def test_stacks_do_not_depend_on_storage_order():
    order = np.random.default_rng(0).permutation(len(KEYS))
    shuffled = keyed_set([KEYS[i] for i in order])
    plain = keyed_set(KEYS)
    for new, old in enumerate(order):
        assert order[shuffled.stack(new, 5)].tolist() == plain.stack(old, 5).tolist()


def test_lone_2d_slices_are_their_own_stack():
    slices = InMemorySlices([np.zeros((4, 4), np.float32)] * 3)  # no groups: 2-D files
    assert slices.stacks([0, 1, 2], 3).tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]


def test_bad_groups_are_refused():
    slices = keyed_set(KEYS)
    with pytest.raises(ValueError, match="odd"):
        slices.stack(0, 2)
    with pytest.raises(ValueError, match="share a group and position"):
        keyed_set([(0, 1), (0, 1)]).stack(0, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        InMemorySlices([np.zeros((4, 4)), np.zeros((4, 5))], [0, 0], [0, 1])


def test_concatenated_sets_keep_their_volumes_apart():
    both = keyed_set(KEYS[:3]) + keyed_set(KEYS[:3])
    assert both.stacks([2, 3], 3).tolist() == [[1, 2, 2], [3, 3, 4]]


# --- the pipeline ----------------------------------------------------------------
def check_batch(batch: np.ndarray, keys, k: int) -> None:
    """Every element's channels are the clamp stack of one slice of one volume."""
    assert batch.shape[1:] == (SIZE, SIZE, k) and batch.dtype == np.float32
    where = {key: i for i, key in enumerate(keys)}
    for element in batch:
        got = [key_of(element[..., c]) for c in range(k)]
        centre = where[got[k // 2]]
        assert got == [keys[i] for i in expected_stack(keys, centre, k)]


@pytest.mark.parametrize("changes", [dict(augment=False),
                                     dict(augment=True, rotation_deg=10.0, zoom=0.1),
                                     dict(augment=True, augment_copies=1)])
def test_training_batches_stack_consecutive_slices_of_one_volume(changes):
    slices = keyed_set(KEYS)
    cfg = config(**changes)
    ds = make_training_dataset(slices, slices, cfg)
    for spec in ds.element_spec:
        assert spec.shape.as_list() == [4, SIZE, SIZE, 3]
    for _, ct in ds.take(4):  # CT: no intensity jitter, so the codes survive
        check_batch(ct.numpy(), KEYS, 3)


def test_validation_batch_is_stacks():
    mri, ct = make_validation_batch(keyed_set(KEYS), keyed_set(KEYS), config(context_slices=5), 3)
    assert mri.shape == ct.shape == (3, SIZE, SIZE, 5)
    check_batch(mri, KEYS, 5)


def test_k1_ignores_groups():
    slices = [np.full((SIZE, SIZE), key_code(g, p), np.float32) for g, p in KEYS]
    cfg = config(context_slices=1)
    grouped = [m.numpy() for m, _ in make_training_dataset(keyed_set(KEYS), slices, cfg).take(2)]
    plain = [m.numpy() for m, _ in make_training_dataset(slices, slices, cfg).take(2)]
    np.testing.assert_array_equal(grouped, plain)
    assert grouped[0].shape == (4, SIZE, SIZE, 1)


# --- augmentation ----------------------------------------------------------------
def textured(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.uniform(-0.6, 0.6, (SIZE + 8, SIZE + 8)), -1, 1).astype(np.float32)


@pytest.mark.parametrize("resampling", ["bilinear", "lanczos"])
def test_augmentation_transforms_every_channel_alike(resampling):
    geometry = dict(flip=True, rotation_deg=15.0, zoom=0.2, translation=0.1, seed=1,
                    resampling=resampling)
    ct = Augmenter(intensity_jitter=0.0, **geometry)
    images = np.stack([np.stack([textured(3 * b + c) for c in range(3)], -1) for b in range(4)])
    seed = np.array([7, 8], np.int64)
    stacked = ct(images, seed=seed).numpy()
    for c in range(3):  # each channel as its own one-channel batch: the same transform
        alone = ct(images[..., c:c + 1], seed=seed).numpy()[..., 0]
        np.testing.assert_allclose(stacked[..., c], alone, atol=1e-6)
    mri = Augmenter(intensity_jitter=0.2, **geometry)
    same = np.repeat(images[..., :1], 3, axis=-1)
    out = mri(same, seed=seed).numpy()
    assert not np.allclose(out[..., 0], same[..., 0])
    np.testing.assert_allclose(out[..., 1:], np.repeat(out[..., :1], 2, axis=-1), atol=1e-6)


def test_intensity_jitter_is_one_mapping_for_the_whole_stack():
    """Contrast about the stack's mean: a slice 0.2 brighter than its neighbour stays
    0.2 * factor brighter (about each channel's own mean it would stay exactly 0.2)."""
    mri = Augmenter(flip=False, rotation_deg=0.0, zoom=0.0, translation=0.0,
                    intensity_jitter=0.2, seed=1)
    base = np.stack([textured(b) * 0.4 for b in range(4)])
    images = np.stack([base, base + 0.2, base - 0.1], axis=-1)
    out = mri(images, seed=np.array([3, 4], np.int64)).numpy()
    gap = out[..., 1] - out[..., 0]
    for b in range(4):
        factor = gap[b].mean() / 0.2
        assert abs(factor - 1.0) > 1e-3
        np.testing.assert_allclose(gap[b], 0.2 * factor, atol=1e-5)
        np.testing.assert_allclose(out[b, ..., 2] - out[b, ..., 0], -0.1 * factor, atol=1e-5)


@pytest.mark.parametrize("copies", [0, 1])
def test_pipeline_keeps_a_stack_of_identical_slices_identical(copies):
    image = textured(0)
    slices = InMemorySlices([image] * 3, [0, 0, 0], [0, 1, 2])
    cfg = config(augment=True, rotation_deg=12.0, zoom=0.1, translation=0.1,
                 mri_intensity_jitter=0.2, augment_resampling="lanczos", augment_copies=copies)
    for mri, _ in make_training_dataset(slices, slices, cfg).take(2):
        mri = mri.numpy()
        np.testing.assert_allclose(mri[..., 1:], np.repeat(mri[..., :1], 2, axis=-1), atol=1e-6)


# --- the slice cache ---------------------------------------------------------------
def volume_builder(calls: list):
    """A Builder writing volume 0 with a dropped slice, a 2-D slice, and volume 2."""

    def build(add, on_bad):
        calls.append(1)
        add(np.stack([np.full((6, 5), key_code(0, p), np.float32) for p in (0, 1, 2, 4, 5)]),
            positions=[0, 1, 2, 4, 5])
        add(np.full((7, 7), key_code(1, 0), np.float32))
        add(np.stack([np.full((6, 6), key_code(2, p), np.float32) for p in (0, 1)]))
        return "hu", []

    return build


def test_cache_keeps_groups_and_positions_and_rebuilds_an_old_format(tmp_path):
    calls: list = []
    keys = [(0, 0), (0, 1), (0, 2), (0, 4), (0, 5), (1, 0), (2, 0), (2, 1)]
    store, _, _ = slice_cache.open_or_build(str(tmp_path), [], "ct", Config(),
                                            volume_builder(calls))
    assert list(zip(store.groups.tolist(), store.positions.tolist())) == keys
    assert [key_of(s) for s in store] == keys
    expected = keyed_set(keys).stacks(np.arange(8), 5)
    np.testing.assert_array_equal(store.stacks(np.arange(8), 5), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(store)).stacks(np.arange(8), 5),
                                  expected)
    assert [key_of(store.read_stack(2, 3)[..., c]) for c in range(3)] == [(0, 1), (0, 2), (0, 2)]
    # a cache of format 1 (4 index columns, no groups) under the same key: rebuilt, not misread
    folder = store.folder
    index = np.load(os.path.join(folder, slice_cache.INDEX_FILE))
    np.save(os.path.join(folder, slice_cache.INDEX_FILE), index[:, :4])
    meta_path = os.path.join(folder, slice_cache.META_FILE)
    with open(meta_path, encoding="utf-8") as handle:
        meta = json.load(handle)
    with open(meta_path, "w", encoding="utf-8") as handle:
        json.dump(dict(meta, format=1), handle)
    with pytest.raises(Exception, match="format 1"):
        SliceStore(folder)
    again, _, _ = slice_cache.open_or_build(str(tmp_path), [], "ct", Config(),
                                            volume_builder(calls))
    assert len(calls) == 2 and again.folder == folder
    np.testing.assert_array_equal(again.positions, store.positions)


def test_format_version_is_part_of_the_cache_key(monkeypatch):
    key = slice_cache.cache_key([], "ct", Config(), False)
    monkeypatch.setattr(slice_cache, "FORMAT_VERSION", 1)
    assert slice_cache.cache_key([], "ct", Config(), False) != key


def test_folder_volumes_record_kept_positions_in_memory_and_in_the_cache(tmp_path):
    nib = pytest.importorskip("nibabel")
    from keras_vaegan.data import writers

    phantom.write_phantom(tmp_path / "ph", subjects=2, slices=4, size=32, fmt="nii", seed=0)
    folder = tmp_path / "ct"
    os.makedirs(folder)
    for n in ("000", "001"):
        os.replace(tmp_path / "ph" / n / "ct.nii.gz", folder / f"{n}.nii.gz")
    image = nib.load(folder / "001.nii.gz")  # an air slice in the middle: dropped, a gap
    voxels = np.concatenate([image.get_fdata()[..., :2], np.full((32, 32, 1), -1000.0),
                             image.get_fdata()[..., 2:]], axis=2)
    nib.save(nib.Nifti1Image(voxels.astype(np.float32), image.affine), folder / "001.nii.gz")
    writers.write_slice(folder / "s.png", np.full((32, 32), 40.0), "hu", "ct")
    slices, _, _ = training_data.read_folder(str(folder), "ct", Config())
    groups, positions = slices.groups.tolist(), slices.positions.tolist()
    assert sorted(groups) == [0, 1, 1, 1, 1, 2, 2, 2, 2]  # the 2-D slice first, on its own
    gap = sorted(p for g, p in zip(groups, positions) if g == 2)
    assert len(gap) == 4 and gap[-1] - gap[0] == 4  # 5 positions, one dropped
    broken = [i for i, g in enumerate(groups) if g == 2 and positions[i] + 1 not in gap
              and positions[i] != gap[-1]][0]
    assert slices.stack(broken, 3)[2] == broken  # clamped at the gap
    cached, _, _ = training_data._cached(str(tmp_path / "cache"), [str(folder)], "ct",
                                         Config(), None)
    np.testing.assert_array_equal(cached.groups, slices.groups)
    np.testing.assert_array_equal(cached.positions, slices.positions)


# --- the phantom ---------------------------------------------------------------------
def test_phantom_stacks_come_from_one_subject():
    cfg = Config(phantom_subjects=2, phantom_slices=3, phantom_size=32, context_slices=3)
    data = training_data.phantom_training_data(cfg)
    assert data.mri.groups.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.ct.positions.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.mri.stacks([2, 3], 3).tolist() == [[1, 2, 2], [3, 3, 4]]
    # slice i is slice positions[i] of subject groups[i], as make_slices draws them
    mri, _, _ = phantom.make_slices(6, 32, seed=cfg.seed, slices_per_subject=3)
    for i, (g, p) in enumerate(zip(data.mri.groups, data.mri.positions)):
        subject = phantom.make_subject(phantom.subject_seed(cfg.seed, int(g)), 32, 3)
        np.testing.assert_array_equal(mri[i], subject.mri[p])
    batch, _ = make_validation_batch(data.mri, data.ct, cfg.replace(image_size=32), 2)
    assert batch.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(batch[1, ..., 0], data.mri[4], atol=0)  # pick 5 -> [4, 5, 5]
