"""Streaming NIfTI (issue 28): values, bytes and memory of reading and writing a slab at a time.

``LazyVoxels`` must give ``read_nifti``'s voxels bit for bit, and
``NiftiSlabWriter`` ``write_nifti``'s file byte for byte (decompressed), for
every kind of file the in-memory pair handles; and reading then writing every
slab must hold a few slabs, whatever the slice count.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tracemalloc

import numpy as np
import pytest
from conftest import head_like as volume_like

from keras_vaegan.data import nifti
from keras_vaegan.data.nifti_stream import (
    LazyVoxels,
    NiftiSlabWriter,
    open_nifti,
    streamable,
)
from keras_vaegan.errors import VAEGANError

nib = pytest.importorskip("nibabel")

SHAPE = (40, 36, 23)  # file (x, y, z): canonical slices of 36x40, 23 of them (a prime)


def _oblique() -> np.ndarray:
    """Tilted 25 degrees about x, then 30 about z: the file's z is still the nearest to S/I."""
    tilt, turn = np.radians(25.0), np.radians(30.0)
    about_x = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    about_z = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = about_z @ about_x @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = (-20.0, 15.0, 7.5)
    return affine


AFFINES = {
    "ras": np.diag([0.9, 1.1, 2.5, 1.0]),
    "z_down": np.diag([-0.9, -1.1, -2.5, 1.0]),  # slices flipped: file z runs down
    "oblique": _oblique(),
    "sagittal": np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),
}

# name: (file name, stored type, scl slope/inter, byte order, NIfTI-2, layout, trailing 1)
KINDS = {
    "float32_nii": ("v.nii", np.float32, None, "<", False, "ras", False),
    "float32_gz": ("v.nii.gz", np.float32, None, "<", False, "ras", False),
    "float64_gz": ("v.nii.gz", np.float64, None, "<", False, "ras", False),
    "int16_scaled_gz": ("v.nii.gz", np.int16, (0.5, -20.0), "<", False, "ras", False),
    "int16_scaled_z_down_nii": ("v.nii", np.int16, (0.25, 3.0), "<", False, "z_down", False),
    "uint8_nii": ("v.nii", np.uint8, None, "<", False, "ras", False),
    "big_endian_nii": ("v.nii", np.float32, None, ">", False, "ras", False),
    "big_endian_z_down_gz": ("v.nii.gz", np.float64, None, ">", False, "z_down", False),
    "nifti2_gz": ("v.nii.gz", np.float32, None, "<", True, "ras", False),
    "nifti2_z_down_nii": ("v.nii", np.int16, (2.0, -1.0), "<", True, "z_down", False),
    "z_down_gz": ("v.nii.gz", np.float32, None, "<", False, "z_down", False),
    "trailing_one_gz": ("v.nii.gz", np.float32, None, "<", False, "ras", True),
    "trailing_one_z_down_nii": ("v.nii", np.float32, None, "<", False, "z_down", True),
    "oblique_gz": ("v.nii.gz", np.float32, None, "<", False, "oblique", False),
}
NIBABEL_3D = ["anatomical.nii", "reoriented_anat_moved.nii"]  # nibabel's own test images


def assert_same_refusal(path) -> None:
    """open_nifti refuses ``path`` with read_nifti's message, word for word."""
    with pytest.raises(VAEGANError) as whole:
        nifti.read_nifti(path, "mri")
    with pytest.raises(VAEGANError) as lazy:
        open_nifti(path, "mri")
    assert str(lazy.value) == str(whole.value)


def head_like(shape=SHAPE, seed=0) -> np.ndarray:
    return volume_like(shape, seed)


def save(path, data, affine=AFFINES["ras"], dtype=np.float32, scaling=None, endian="<",
         nifti2=False) -> str:
    data = np.asarray(data)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        data = np.clip(np.round(data), info.min, info.max)
    kind = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    stored = np.asarray(data).astype(np.dtype(dtype).newbyteorder(endian))
    image = kind(stored, affine)
    if endian != "<":
        image = kind(stored, affine, header=image.header.as_byteswapped(endian))
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    if scaling:
        image.header.set_slope_inter(*scaling)
    nib.save(image, str(path))
    return str(path)


def make(tmp_path, kind: str, shape=SHAPE, seed=0) -> str:
    name, dtype, scaling, endian, nifti2, layout, trailing = KINDS[kind]
    data = head_like(shape, seed)
    if dtype == np.uint8:
        data = np.clip(data, 0, 255)
    if trailing:
        data = data[..., None]
    return save(tmp_path / name, data, AFFINES[layout], dtype, scaling, endian, nifti2)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and a.tobytes() == b.tobytes()


def file_order_bounds(count: int, sizes, step: int) -> list[tuple[int, int]]:
    """Canonical [start, stop) of consecutive slabs of ``sizes`` (cycled) in the file's order."""
    bounds, first, index = [], 0, 0
    while first < count:
        last = min(count, first + sizes[index % len(sizes)])
        bounds.append((first, last) if step > 0 else (count - last, count - first))
        first, index = last, index + 1
    return bounds


def check_lazy_values(path: str) -> None:
    """Whole through slabs of several sizes, and windows, equal read_nifti's voxels bit for bit."""
    expected = nifti.read_nifti(path, "mri").voxels
    volume = open_nifti(path, "mri")
    lazy = volume.voxels
    assert isinstance(lazy, LazyVoxels)
    assert (lazy.shape, lazy.dtype, lazy.ndim, lazy.size, len(lazy)) == \
        (expected.shape, np.float32, 3, expected.size, len(expected))
    count = len(expected)
    for size in (1, 4, 7, count + 5):
        whole = np.full(expected.shape, np.nan, np.float32)
        starts = []
        for start, stop, slab in lazy.slabs(size):
            assert np.isnan(whole[start:stop]).all(), "a slice came twice"
            whole[start:stop] = slab
            starts.append(start)
        assert same_bits(whole, expected), size
        assert starts == sorted(starts, reverse=lazy.file_order_step < 0)
    rng = np.random.default_rng(1)
    for _ in range(12):  # windows in any order: the kept slices must never give stale values
        start = int(rng.integers(0, count))
        stop = int(rng.integers(start + 1, count + 1))
        assert same_bits(lazy[start:stop], expected[start:stop]), (start, stop)
        index = int(rng.integers(-count, count))
        assert same_bits(lazy[index], expected[index]), index
    for start in range(0, count, 3)[::lazy.file_order_step]:  # overlapping, in file order
        window = lazy[max(0, start - 2):start + 5]
        assert same_bits(window, expected[max(0, start - 2):start + 5]), start
        window += 1.0  # the caller's array: the kept copy must not change with it
    assert same_bits(lazy[:], expected) and same_bits(lazy[5:2], expected[5:2])
    assert same_bits(lazy[2:6, 3:9, ::2], expected[2:6, 3:9, ::2])
    assert same_bits(lazy[-2, :, 4], expected[-2, :, 4])
    assert same_bits(np.asarray(lazy), expected)
    lazy.close()
    assert same_bits(lazy[3:9], expected[3:9])  # reopens after close
    with lazy:
        assert same_bits(lazy[-1], expected[-1])
    for field in ("kind", "path", "files", "reorient", "file_shape", "spacing_mm", "modality"):
        assert getattr(volume, field) == getattr(nifti.read_nifti(path, "mri"), field), field


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lazy_voxels_equal_read_nifti_bit_for_bit(tmp_path, kind):
    path = make(tmp_path, kind)
    check_lazy_values(path)
    volume = open_nifti(path, "mri")
    assert streamable(volume)
    assert volume.voxels.file_order_step == (-1 if KINDS[kind][5] == "z_down" else 1)
    assert volume.voxels.file_order_step == (-1 if volume.reorient.flips[0] else 1)


@pytest.mark.parametrize("name", NIBABEL_3D)
def test_lazy_voxels_of_nibabels_own_images(tmp_path, name):
    from nibabel.testing import data_path

    path = shutil.copy(os.path.join(data_path, name), tmp_path / name)
    assert streamable(open_nifti(path, "mri"))
    check_lazy_values(str(path))


def test_sagittal_file_is_not_streamable_but_reads_right(tmp_path):
    """Slices across the file's fastest axes: read whole (the lazy values are still exact)."""
    path = save(tmp_path / "v.nii.gz", head_like(), AFFINES["sagittal"])
    volume = open_nifti(path, "mri")
    assert not streamable(volume)
    assert not streamable(nifti.read_nifti(path, "mri"))
    check_lazy_values(path)
    with pytest.raises(ValueError, match="last axis"):
        NiftiSlabWriter(tmp_path / "out.nii.gz", volume, "ct")


def test_overlapping_windows_in_file_order_read_each_byte_once(tmp_path, monkeypatch):
    """A backward seek in a .nii.gz decompresses from the start again: windows must not seek back."""
    from nibabel import openers

    moves = []

    class Recording(openers.ImageOpener):
        """Records the seeks and reads of the file it opened (not of openers wrapping it)."""

        def seek(self, offset, whence=0):
            if self.me_opened:
                moves.append((self.tell(), offset))
            return super().seek(offset, whence)

        def read(self, *args):
            data = super().read(*args)
            if self.me_opened:
                moves.append(("read", len(data)))
            return data

    monkeypatch.setattr(openers, "ImageOpener", Recording)
    for kind in ("z_down_gz", "float32_gz"):
        moves.clear()
        lazy = open_nifti(make(tmp_path, kind), "mri").voxels
        count = len(lazy)
        starts = range(0, count, 4)[::lazy.file_order_step]
        for start in starts:
            lazy[max(0, start - 3):start + 7]
        lazy.close()
        assert all(offset >= here for here, offset in moves if here != "read"), moves
        assert sum(n for what, n in moves if what == "read") == 4 * np.prod(SHAPE)


REFUSED = {  # name: (data, stored type) that read_nifti refuses from the header
    "2d": (np.ones((40, 36), np.float32), np.float32),
    "4d": (np.ones((40, 36, 5, 2), np.float32), np.float32),
    "complex": (np.ones((40, 36, 5), np.complex64), np.complex64),
    "small_slices": (np.ones((4, 36, 5), np.float32), np.float32),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_same_refusals_as_read_nifti(tmp_path, name):
    data, dtype = REFUSED[name]
    path = save(tmp_path / "v.nii.gz", data, dtype=dtype)
    assert_same_refusal(path)


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz"])
def test_same_refusals_of_nibabels_own_images(name):
    from nibabel.testing import data_path

    path = os.path.join(data_path, name)
    assert_same_refusal(path)


def test_empty_and_missing_files_refused_like_read_nifti(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    for path in (str(empty), str(tmp_path / "missing.nii")):
        assert_same_refusal(path)


@pytest.mark.parametrize("kind", ["float32_gz", "z_down_gz", "float32_nii"])
def test_truncated_file_fails_while_reading_slabs_with_a_vaegan_error(tmp_path, kind):
    path = make(tmp_path, kind)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:len(data) * 2 // 3])
    with pytest.raises(VAEGANError, match="truncated or corrupt NIfTI data") as whole:
        nifti.read_nifti(path, "mri")
    lazy = open_nifti(path, "mri").voxels  # the header is whole: nothing is read yet
    with pytest.raises(VAEGANError, match="truncated or corrupt NIfTI data") as streamed:
        for _ in lazy.slabs(4):
            pass
    assert streamed.value.__cause__ is None and streamed.value.__suppress_context__
    assert str(whole.value).split(" (")[0] == str(streamed.value).split(" (")[0]


def gunzipped(path: str) -> bytes:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as handle:
        return handle.read()


def write_in_slabs(path, volume, result, sizes, role="mean", **kwargs) -> list[tuple[int, int]]:
    step = -1 if volume.reorient.flips[0] else 1
    bounds = file_order_bounds(len(result), sizes, step)
    with NiftiSlabWriter(path, volume, "ct", role, **kwargs) as writer:
        for start, stop in bounds:
            writer.write(start, stop, result[start:stop])
    return bounds


WRITTEN = ["float32_nii", "float32_gz", "int16_scaled_gz", "big_endian_nii",
           "big_endian_z_down_gz", "nifti2_gz", "nifti2_z_down_nii", "z_down_gz",
           "trailing_one_gz", "trailing_one_z_down_nii", "oblique_gz"]


@pytest.mark.parametrize("role", ["mean", "std"])
@pytest.mark.parametrize("kind", WRITTEN)
def test_slab_writer_writes_write_niftis_bytes(tmp_path, kind, role):
    path = make(tmp_path, kind)
    whole = nifti.read_nifti(path, "mri")
    result = np.ascontiguousarray(whole.voxels[::-1] * 1.5 - 7.25, dtype=np.float32)
    suffix = ".nii.gz" if path.endswith(".gz") else ".nii"
    nifti.write_nifti(str(tmp_path / f"whole{suffix}"), whole, result, "ct", role)
    expected = gunzipped(str(tmp_path / f"whole{suffix}"))
    for number, sizes in enumerate([(1,), (5, 2, 7, 1), (len(result),)]):
        out = str(tmp_path / f"slabs{number}{suffix}")
        bounds = write_in_slabs(out, open_nifti(path, "mri"), result, sizes, role)
        if whole.reorient.flips[0]:
            assert bounds[0][1] == len(result) and bounds[-1][0] == 0  # descending canonical
        assert gunzipped(out) == expected, sizes
        with open(out, "rb") as handle:
            assert (handle.read(2) == b"\x1f\x8b") == path.endswith(".gz")
    written, given = nib.load(out), nib.load(path)
    assert type(written) is type(given) and written.shape == given.shape
    np.testing.assert_array_equal(written.affine, given.affine)
    for get in ("get_qform", "get_sform"):
        form, code = getattr(written.header, get)(coded=True)
        form0, code0 = getattr(given.header, get)(coded=True)
        np.testing.assert_array_equal(form, form0)
        assert code == code0
    assert written.header["descrip"].item().decode().startswith(
        "std of synthetic CT" if role == "std" else "synthetic CT")
    assert same_bits(whole.reorient.to_canonical(
        np.asarray(written.dataobj, np.float32).reshape(whole.file_shape[:3])), result)


def test_slab_writer_takes_a_read_volume_and_a_description(tmp_path):
    path = make(tmp_path, "z_down_gz")
    whole = nifti.read_nifti(path, "mri")
    nifti.write_nifti(str(tmp_path / "whole.nii.gz"), whole, whole.voxels, "mri",
                      description="mine")
    write_in_slabs(tmp_path / "slabs.nii.gz", whole, whole.voxels, (6,), description="mine")
    assert gunzipped(str(tmp_path / "slabs.nii.gz")) == gunzipped(str(tmp_path / "whole.nii.gz"))


@pytest.mark.parametrize("offset,extension", [(1024, False), (0, True)])
def test_slab_writer_keeps_extensions_and_offsets_as_nib_save(tmp_path, offset, extension):
    """An input with a NIfTI extension, or voxels further into the file than the header needs."""
    image = nib.Nifti1Image(head_like(), AFFINES["z_down"])
    if offset:
        image.header["vox_offset"] = offset
    if extension:
        image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment"))
    nib.save(image, str(tmp_path / "in.nii.gz"))
    whole = nifti.read_nifti(str(tmp_path / "in.nii.gz"), "mri")
    nifti.write_nifti(str(tmp_path / "whole.nii"), whole, whole.voxels, "ct")
    write_in_slabs(tmp_path / "slabs.nii", open_nifti(str(tmp_path / "in.nii.gz"), "mri"),
                   whole.voxels, (4, 9))
    assert gunzipped(str(tmp_path / "slabs.nii")) == gunzipped(str(tmp_path / "whole.nii"))
    assert len(nib.load(str(tmp_path / "slabs.nii")).header.extensions) == int(extension)


def test_copy_of_nibabels_own_image_through_slabs(tmp_path):
    from nibabel.testing import data_path

    path = os.path.join(data_path, "anatomical.nii")
    whole = nifti.read_nifti(path, "mri")
    nifti.write_nifti(str(tmp_path / "whole.nii.gz"), whole, whole.voxels, "ct")
    volume = open_nifti(path, "mri")
    with NiftiSlabWriter(tmp_path / "slabs.nii.gz", volume, "ct") as writer:
        for start, stop, slab in volume.voxels.slabs(4):
            writer.write(start, stop, slab)
    assert gunzipped(str(tmp_path / "slabs.nii.gz")) == gunzipped(str(tmp_path / "whole.nii.gz"))


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".tmp-"))


@pytest.mark.parametrize("kind", ["float32_gz", "z_down_gz"])
def test_slabs_out_of_file_order_are_refused(tmp_path, kind):
    path = make(tmp_path, kind)
    volume = open_nifti(path, "mri")
    count = len(volume.voxels)
    result = np.zeros(volume.voxels.shape, np.float32)
    first, second, gap = file_order_bounds(count, (4,), volume.voxels.file_order_step)[:3]
    out = tmp_path / "out" / "o.nii.gz"
    for wrong in ([second], [first, first], [first, gap], [(count - 1, count + 1)], [(3, 3)]):
        with pytest.raises(ValueError):
            with NiftiSlabWriter(out, volume, "ct") as writer:
                for start, stop in wrong:
                    writer.write(start, stop, result[start:stop])
        assert not out.exists() and leftovers(out.parent) == []
    with pytest.raises(ValueError, match="shape"):
        with NiftiSlabWriter(out, volume, "ct") as writer:
            writer.write(first[0], first[1], result[first[0]:first[1], 1:])
    with pytest.raises(ValueError, match="with"):
        NiftiSlabWriter(out, volume, "ct").write(first[0], first[1], result[first[0]:first[1]])
    assert not out.exists() and leftovers(out.parent) == []


@pytest.mark.parametrize("kind", ["float32_gz", "z_down_gz", "float32_nii"])
def test_missing_slices_or_an_error_leave_no_file(tmp_path, kind):
    path = make(tmp_path, kind)
    volume = open_nifti(path, "mri")
    result = np.zeros(volume.voxels.shape, np.float32)
    bounds = file_order_bounds(len(result), (4,), volume.voxels.file_order_step)
    out = tmp_path / "out" / f"o{'.nii.gz' if kind.endswith('gz') else '.nii'}"
    with pytest.raises(VAEGANError, match="only slices"):
        with NiftiSlabWriter(out, volume, "ct") as writer:
            for start, stop in bounds[:-1]:
                writer.write(start, stop, result[start:stop])
    assert not out.exists() and leftovers(out.parent) == []
    with pytest.raises(RuntimeError, match="model failed"):
        with NiftiSlabWriter(out, volume, "ct") as writer:
            writer.write(*bounds[0], result[bounds[0][0]:bounds[0][1]])
            raise RuntimeError("model failed")
    assert not out.exists() and leftovers(out.parent) == []
    out.write_bytes(b"the previous result")
    with pytest.raises(RuntimeError):
        with NiftiSlabWriter(out, volume, "ct"):
            raise RuntimeError("model failed")
    assert out.read_bytes() == b"the previous result" and leftovers(out.parent) == []


def test_write_error_is_a_vaegan_error_and_leaves_no_file(tmp_path, monkeypatch):
    path = make(tmp_path, "float32_gz")
    volume = open_nifti(path, "mri")
    out = tmp_path / "out.nii.gz"

    def full(data):
        raise OSError(28, "No space left on device")

    with pytest.raises(VAEGANError, match="cannot write .No space left on device"):
        with NiftiSlabWriter(out, volume, "ct") as writer:
            monkeypatch.setattr(writer._file, "write", full)
            writer.write(0, 2, np.zeros((2,) + volume.voxels.shape[1:], np.float32))
    assert not out.exists() and leftovers(tmp_path) == []


MEMORY_SHAPE = (128, 96, 80)  # file order (x, y, z): 3.75 MiB as float32
SLAB = 3  # slices per slab: 0.04 of the volume


def peak_of(call, *args):
    """Peak bytes traced above what was held before ``call`` (numpy buffers and bytes included)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        call(*args)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def translate_in_slabs(path: str, out: str) -> None:
    """What predict will do: read a slab, change it, write it; never the whole volume."""
    volume = open_nifti(path, "mri")
    with volume.voxels, NiftiSlabWriter(out, volume, "ct") as writer:
        for start, stop, slab in volume.voxels.slabs(SLAB):
            writer.write(start, stop, slab * 2.0 - 1.0)


@pytest.mark.parametrize("dtype,scaling", [(np.float32, None), (np.int16, (0.5, -20.0))])
def test_streaming_memory_is_a_few_slabs_whatever_the_slice_count(tmp_path, dtype, scaling):
    """Read whole, a .nii.gz took the volume, its bytes and nibabel's scaling (1 to 3 volumes)."""
    warm = save(tmp_path / "warm.nii.gz", head_like((32, 32, 4)), dtype=dtype, scaling=scaling)
    translate_in_slabs(warm, str(tmp_path / "warm_out.nii.gz"))  # lazy imports, caches
    volume_bytes = 4 * int(np.prod(MEMORY_SHAPE))
    slab_bytes = volume_bytes * SLAB // MEMORY_SHAPE[2]
    peaks = []
    for slices in (MEMORY_SHAPE[2], 2 * MEMORY_SHAPE[2]):
        shape = MEMORY_SHAPE[:2] + (slices,)
        path = save(tmp_path / f"in{slices}.nii.gz", head_like(shape), dtype=dtype,
                    scaling=scaling)
        out = str(tmp_path / f"out{slices}.nii.gz")
        peaks.append(peak_of(translate_in_slabs, path, out))
        expected = nifti.read_nifti(path, "mri").voxels * 2.0 - 1.0
        assert same_bits(nifti.read_nifti(out, "ct").voxels, expected)
    assert peaks[0] < 0.5 * volume_bytes, f"held {peaks[0] / volume_bytes:.2f} volumes"
    assert peaks[1] - peaks[0] < slab_bytes, \
        f"twice the slices took {(peaks[1] - peaks[0]) / slab_bytes:.2f} slabs more"
