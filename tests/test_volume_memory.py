"""Memory of volumes: how many copies of a volume reading, mapping and writing keep at once.

Peaks are tracemalloc's (numpy's buffers and Python's bytes are traced), in
units of the volume's float32 size, so a float64 copy or a second array of
the volume is seen whatever the machine; nothing here is timed. The values
must not change for it: slab reading gives ``get_fdata``'s numbers and the
MRI percentiles are numpy's float64 ones, bit for bit.
"""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
from conftest import TINY
from conftest import head_like as volume_like

from keras_vaegan.config import Config
from keras_vaegan.data import nifti, units, volumes
from keras_vaegan.inference.predict import predict
from keras_vaegan.inference.runs import LoadedRun

nib = pytest.importorskip("nibabel")

SHAPE = (128, 96, 80)  # file order (x, y, z): 3.75 MiB as float32, many slabs at the size below
VOLUME_BYTES = 4 * int(np.prod(SHAPE))


@pytest.fixture(autouse=True)
def small_slabs(monkeypatch):
    """Slabs of 3 slices (16 of 256x256 by default): 27 of them, the last one short.

    What a slab costs while it is read (its bytes, nibabel's scaling in
    float64) is then under 0.3 of the volume, so a whole second copy shows.
    """
    monkeypatch.setattr(nifti, "_SLAB_VOXELS", 3 * SHAPE[0] * SHAPE[1])


def peak_of(call, *args, **kwargs):
    """(result, peak bytes allocated above what was held before ``call``)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def head_like(shape=SHAPE, seed=0) -> np.ndarray:
    return volume_like(shape, seed)


AFFINES = {
    "ras": np.diag([0.9, 1.1, 2.5, 1.0]),  # rows and columns flipped into the canonical order
    "z_down": np.diag([-0.9, -1.1, -2.5, 1.0]),  # slices flipped
    "sagittal": np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),
}


def save(path, data, affine=AFFINES["ras"], dtype=np.float32, scaling=None, endian="<"):
    image = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    if scaling:
        image.header.set_slope_inter(*scaling)
    if endian != "<":
        image = nib.Nifti1Image(np.asarray(data).astype(np.dtype(dtype).newbyteorder(endian)),
                                affine, header=image.header.as_byteswapped(endian))
    nib.save(image, str(path))
    return str(path)


STORED = {  # name: (file name, stored type, scaling, byte order)
    "float32_gz": ("v.nii.gz", np.float32, None, "<"),
    "float64_gz": ("v.nii.gz", np.float64, None, "<"),
    "int16_scaled_gz": ("v.nii.gz", np.int16, (0.5, -20.0), "<"),
    "float32_big_endian": ("v.nii", np.float32, None, ">"),
}


@pytest.mark.parametrize("stored", sorted(STORED))
@pytest.mark.parametrize("layout", sorted(AFFINES))
def test_slab_reading_gives_get_fdata_values_in_one_float32_volume(tmp_path, stored, layout):
    """The canonical voxels equal nibabel's get_fdata(float32), reoriented; one volume in memory.

    Reading whole made the file's array (twice the volume for float64), the
    decompressed byte string beside it and a reordered copy: 2 to 4 volumes.
    """
    name, dtype, scaling, endian = STORED[stored]
    data = head_like()
    if dtype == np.int16:
        data = np.round(data)
    path = save(tmp_path / name, data, AFFINES[layout], dtype, scaling, endian)
    volume, peak = peak_of(volumes.read_volume, path, "mri")

    image = nib.load(path)
    expected = volume.reorient.to_canonical(image.get_fdata(dtype=np.float32))
    assert volume.voxels.dtype == np.float32 and volume.voxels.flags.c_contiguous
    np.testing.assert_array_equal(volume.voxels, expected)
    assert peak < 1.5 * VOLUME_BYTES, f"read held {peak / VOLUME_BYTES:.2f} volumes"


def test_header_check_of_a_whole_nii_gz_reads_only_the_gzip_trailer(tmp_path, monkeypatch):
    """The trailer's size is the header's offset + voxels; was compared with offset 0 (nibabel's
    reset header), so every .nii.gz was decompressed whole to be checked."""
    path = save(tmp_path / "v.nii.gz", head_like())

    def decompress(path):
        raise AssertionError("decompressed a whole file to check its length")

    monkeypatch.setattr(nifti, "_gzip_length", decompress)
    assert nifti.check_header(path) == (SHAPE[2], SHAPE[1], SHAPE[0])


def test_trailing_singleton_file_reads_in_slabs(tmp_path):
    path = save(tmp_path / "v.nii.gz", head_like()[..., None])
    volume = volumes.read_volume(path, "mri")
    expected = volume.reorient.to_canonical(nib.load(path).get_fdata(dtype=np.float32)[..., 0])
    np.testing.assert_array_equal(volume.voxels, expected)


@pytest.mark.parametrize("layout", sorted(AFFINES))
def test_writing_streams_a_view_without_copying_the_volume(tmp_path, layout):
    """The writer hands nibabel a file-order view; the bytes are those of the contiguous copy."""
    path = save(tmp_path / "in.nii.gz", head_like(), AFFINES[layout])
    volume = volumes.read_volume(path, "mri")
    result = np.ascontiguousarray(volume.voxels[::-1] * 2.0 - 5.0, dtype=np.float32)
    view = volume.file_order_view(result)
    assert np.shares_memory(view, result)
    _, peak = peak_of(volumes.write_volume, str(tmp_path / "out.nii.gz"), volume, result, "ct")

    written = nib.load(str(tmp_path / "out.nii.gz"))
    assert written.get_data_dtype() == np.dtype("<f4")
    np.testing.assert_array_equal(np.asarray(written.dataobj), volume.to_file_order(result))
    np.testing.assert_array_equal(written.affine, nib.load(path).affine)
    assert peak < 0.3 * VOLUME_BYTES, f"write held {peak / VOLUME_BYTES:.2f} volumes"


def test_mri_percentiles_take_one_float32_copy():
    """Was: a float64 copy, a float64 copy of the finite values and np.percentile's own copy."""
    voxels = np.ascontiguousarray(np.transpose(head_like(), (2, 1, 0)))
    mapping, peak = peak_of(units.mri_map, voxels, (0.5, 99.5))
    low, high = np.percentile(voxels.astype(np.float64), [0.5, 99.5])
    assert (mapping.low, mapping.high) == (float(low), float(high))
    assert peak < 1.4 * VOLUME_BYTES, f"mri_map held {peak / VOLUME_BYTES:.2f} volumes"


@pytest.mark.parametrize("seed,dtype", enumerate(["float32", "float64", "int16", "uint8", "int32",
                                                   "float16"]))
def test_mri_percentiles_equal_numpys_float64_percentiles_bit_for_bit(seed, dtype):
    """Ties, NaN/inf left out, 1 and 2 values, any percentiles: numpy's 'linear' numbers exactly."""
    rng = np.random.default_rng(seed)
    for trial in range(300):
        count = int(rng.integers(1, 400)) if trial % 10 else int(rng.integers(1, 3))
        values = rng.normal(0, 500, count) if trial % 2 else rng.integers(0, 6, count)
        image = np.asarray(values).astype(dtype)
        if image.dtype.kind == "f" and trial % 5 == 0 and count > 2:
            image[:2] = [np.nan, np.inf]
        percentiles = (0.5, 99.5) if trial % 3 == 0 else tuple(sorted(rng.uniform(0, 100, 2)))
        finite = image.astype(np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            continue
        low, high = (float(v) for v in np.percentile(finite, list(percentiles)))
        high = high if high > low else low + 1.0
        given = image.copy()
        mapping = units.mri_map(image.reshape(-1, 1) if trial % 2 else image, percentiles)
        assert (mapping.low, mapping.high) == (low, high), (trial, image, percentiles)
        np.testing.assert_array_equal(image, given)  # partitioned a copy, not the input


class _Identity:
    """A stand-in model (no compiled pass): its translation is its input."""

    total_stride = 4

    def translate(self, inputs, direction, sample=False):
        return inputs


def test_predict_holds_input_and_output_of_one_volume_at_a_time(tmp_path):
    """Two volumes in a folder: the peak is one volume in and one out, about 2, not 4 or 5.

    Before: MRI percentiles (float64 copies), a reordered and a cast copy for
    writing, and the last volume's arrays alive while the next was read.
    """
    run = LoadedRun(model=_Identity(), config=Config(**TINY), run_dir=str(tmp_path))
    warm = tmp_path / "warm"
    os.makedirs(warm)
    save(warm / "w.nii.gz", head_like((32, 32, 4)))
    predict(str(warm), str(tmp_path / "warm_out"), run=run)  # lazy imports, not the volumes
    inputs = tmp_path / "in"
    os.makedirs(inputs)
    for seed in (1, 2):
        save(inputs / f"v{seed}.nii.gz", head_like(seed=seed))
    written, peak = peak_of(predict, str(inputs), str(tmp_path / "out"), run=run)
    assert sorted(os.path.basename(p) for p in written) == ["overview.png", "v1.nii.gz",
                                                            "v2.nii.gz"]
    assert peak < 2.5 * VOLUME_BYTES, f"predict held {peak / VOLUME_BYTES:.2f} volumes"
