"""The on-disk slice cache: built once, reused, invalidated, equal to the in-memory slices,
and what the training pipeline reads."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from keras_vaegan.config import Config
from keras_vaegan.data import slice_cache, training_data, volumes
from keras_vaegan.data.phantom import write_phantom
from keras_vaegan.data.pipeline import make_training_dataset, make_validation_batch
from keras_vaegan.data.slice_cache import SliceStore, cache_root
from keras_vaegan.errors import VAEGANError

FLOAT16_STEP = 2.0 ** -12  # half a float16 step just below 1: the cache's worst rounding
SETTING_CHANGES = {"ct_window_hu": (-1000.0, 2000.0), "body_slices_only": False,
                   "mri_percentiles": (1.0, 99.0)}


@pytest.fixture
def data_root(tmp_path):
    write_phantom(tmp_path / "data", subjects=2, slices=3, size=32, fmt="nii", seed=0)
    return str(tmp_path / "data")


@pytest.fixture
def reads(monkeypatch):
    """How many volumes were decoded (``volumes.read_volume`` calls) per modality."""
    counts = {"mri": 0, "ct": 0}
    real = volumes.read_volume

    def counting(volume, modality):
        counts[modality] += 1
        return real(volume, modality)

    monkeypatch.setattr(volumes, "read_volume", counting)
    return counts


def load(config, root, cache, on_bad=None):
    return training_data.load_training_data(config, data_root=root, cache_dir=str(cache),
                                            on_bad=on_bad)


def cache_folders(cache) -> list[str]:
    return sorted(os.listdir(cache))


def test_built_once_then_reused_without_decoding(data_root, tmp_path, reads):
    cache = tmp_path / "cache"
    first = load(Config(), data_root, cache)
    assert reads == {"mri": 2, "ct": 2}
    assert isinstance(first.mri, SliceStore) and isinstance(first.ct, SliceStore)
    assert [name.split("-")[0] for name in cache_folders(cache)] == ["ct", "mri"]
    again = load(Config(), data_root, cache)
    assert reads == {"mri": 2, "ct": 2}  # nothing decoded the second time
    assert again.config == first.config and again.origin == first.origin
    for a, b in zip(list(first.mri) + list(first.ct), list(again.mri) + list(again.ct)):
        np.testing.assert_array_equal(a, b)


def test_contents_equal_the_in_memory_slices_within_float16(data_root, tmp_path):
    in_memory = training_data.load_training_data(Config(), data_root=data_root)
    cached = load(Config(), data_root, tmp_path / "cache")
    assert cached.config == in_memory.config  # units and the MRI reference range too
    assert len(cached.mri) == len(in_memory.mri) == 6
    for store, slices in ((cached.mri, in_memory.mri), (cached.ct, in_memory.ct)):
        assert len(store) == len(slices)
        for got, want in zip(store, slices):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=FLOAT16_STEP, rtol=0)
            np.testing.assert_array_equal(got, want.astype(np.float16))  # float16 rounding only


@pytest.mark.parametrize("change", ["touch", "rewrite", "ct_window_hu", "body_slices_only",
                                    "mri_percentiles", "skip_bad"])
def test_a_changed_file_or_setting_rebuilds(data_root, tmp_path, reads, change):
    cache = tmp_path / "cache"
    load(Config(), data_root, cache)
    assert reads == {"mri": 2, "ct": 2}
    config, on_bad = Config(), None
    ct_file = os.path.join(data_root, "001", "ct.nii.gz")
    if change == "touch":
        stat = os.stat(ct_file)
        os.utime(ct_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    elif change == "rewrite":  # same name, new content
        shutil.copyfile(os.path.join(data_root, "000", "ct.nii.gz"), ct_file)
    elif change == "skip_bad":
        on_bad = lambda err: None  # noqa: E731
    else:
        config = Config(**{change: SETTING_CHANGES[change]})
    again = load(config, data_root, cache, on_bad)
    ct_changed = change in ("touch", "rewrite", "ct_window_hu", "body_slices_only", "skip_bad")
    mri_changed = change in ("mri_percentiles", "body_slices_only", "skip_bad")
    assert reads == {"mri": 2 + 2 * mri_changed, "ct": 2 + 2 * ct_changed}
    if change == "ct_window_hu":  # the new cache holds the new window's values
        expected = training_data.load_training_data(config, data_root=data_root)
        np.testing.assert_allclose(again.ct[0], expected.ct[0], atol=FLOAT16_STEP, rtol=0)


def test_settings_that_do_not_shape_slices_reuse_it(data_root, tmp_path, reads):
    cache = tmp_path / "cache"
    load(Config(), data_root, cache)
    load(Config(image_size=16, batch_size=2, augment=False, seed=9), data_root, cache)
    assert reads == {"mri": 2, "ct": 2}


def test_bad_files_fail_the_build_without_a_half_cache_and_skips_replay(data_root, tmp_path,
                                                                          reads):
    folders = {m: tmp_path / m for m in ("mri", "ct")}
    for modality, folder in folders.items():
        os.makedirs(folder)
        for subject in ("000", "001"):
            shutil.copyfile(os.path.join(data_root, subject, f"{modality}.nii.gz"),
                            folder / f"{subject}.nii.gz")
    bad = str(folders["ct"] / "002.nii.gz")
    with open(bad, "wb") as handle:
        handle.write(b"not a nifti file at all")
    cache = tmp_path / "cache"

    def load_folders(on_bad=None):
        return training_data.load_training_data(Config(), mri_dir=str(folders["mri"]),
                                                ct_dir=str(folders["ct"]),
                                                cache_dir=str(cache), on_bad=on_bad)

    with pytest.raises(VAEGANError, match="002.nii.gz"):
        load_folders()
    assert [n for n in cache_folders(cache) if n.startswith("ct")] == []  # no half cache
    assert not any(n.startswith(".tmp") for n in cache_folders(cache))
    skipped: list[VAEGANError] = []
    first = load_folders(skipped.append)
    assert [e.path for e in skipped] == [bad]
    decoded = dict(reads)
    again = load_folders(skipped.append)
    assert reads == decoded  # reused ...
    assert [e.path for e in skipped] == [bad, bad]  # ... and the skip reported again
    assert skipped[1].reason == skipped[0].reason and len(again.ct) == len(first.ct) == 6


def test_training_batches_are_read_from_the_cache(data_root, tmp_path, monkeypatch):
    data = load(Config(), data_root, tmp_path / "cache")
    rows_read = []
    real_rows = SliceStore.rows

    def rows(self, index, start, stop):
        rows_read.append((index, stop - start))
        return real_rows(self, index, start, stop)

    monkeypatch.setattr(SliceStore, "rows", rows)
    cfg = Config(image_size=16, batch_size=4, seed=2, augment=False)
    from_cache = [(m.numpy(), c.numpy()) for m, c in
                  make_training_dataset(data.mri, data.ct, cfg).take(3)]
    # only the 16 rows a crop needs are read, never a whole 32-row slice (prefetch reads ahead)
    assert len(rows_read) >= 2 * 3 * 4 and {n for _, n in rows_read} == {16}
    # the same batches as from the same slices in memory: one pipeline for both
    slices_mri, slices_ct = list(data.mri), list(data.ct)
    in_memory = [(m.numpy(), c.numpy()) for m, c in
                 make_training_dataset(slices_mri, slices_ct, cfg).take(3)]
    for (m0, c0), (m1, c1) in zip(from_cache, in_memory):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(c0, c1)
    mri_val, _ = make_validation_batch(data.mri, data.ct, cfg, count=2)
    np.testing.assert_array_equal(mri_val[0, ..., 0], slices_mri[0][8:24, 8:24])


def test_augmented_batches_from_the_cache_are_deterministic(data_root, tmp_path):
    data = load(Config(), data_root, tmp_path / "cache")
    cfg = Config(image_size=16, batch_size=4, seed=2, augment=True)
    runs = [[m.numpy() for m, _ in make_training_dataset(data.mri, data.ct, cfg).take(3)]
            for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
        assert a.min() >= -1 and a.max() <= 1


def test_cache_root_setting(monkeypatch, tmp_path):
    assert cache_root("none") is None and cache_root("") is None
    assert cache_root(str(tmp_path / "c")) == str(tmp_path / "c")
    monkeypatch.setenv(slice_cache.CACHE_ENV, str(tmp_path / "env"))
    assert cache_root("auto") == str(tmp_path / "env")
    monkeypatch.delenv(slice_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("auto") == os.path.join(str(tmp_path / "xdg"), "keras-vaegan")


def test_fit_trains_from_the_cache_in_the_configured_folder(data_root, tmp_path, reads):
    from conftest import TINY

    from keras_vaegan.training.fit import fit

    cache = tmp_path / "cache"
    config = Config(**{**TINY, "epochs": 1, "steps_per_epoch": 1,
                       "data_cache": str(cache)})
    fit(config, output=str(tmp_path / "run"), data_root=data_root, verbose=0)
    assert [n.split("-")[0] for n in cache_folders(cache)] == ["ct", "mri"]
    fit(config, output=str(tmp_path / "run2"), data_root=data_root, verbose=0)
    assert reads == {"mri": 2, "ct": 2}  # the second run decoded nothing


def test_a_cache_finished_meanwhile_by_another_process_is_kept(data_root, tmp_path):
    """Two workers building the same cache: the second keeps the first's folder (its readers
    may have its files open) and discards its own build."""
    cache = tmp_path / "cache"
    load(Config(), data_root, cache)
    folder = next(str(cache / n) for n in cache_folders(cache) if n.startswith("ct"))
    first = os.stat(os.path.join(folder, "shard-00000.f16")).st_ino
    store = SliceStore(folder)
    slice_cache._build(folder, store.meta["key"],
                       lambda add, on_bad: training_data.stream_folder(
                           os.path.join(data_root), "ct", Config(), add, on_bad), None)
    assert os.stat(os.path.join(folder, "shard-00000.f16")).st_ino == first
    assert cache_folders(cache) == sorted(n for n in cache_folders(cache)
                                          if not n.startswith(".tmp"))
