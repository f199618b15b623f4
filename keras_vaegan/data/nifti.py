"""NIfTI volumes (``.nii``, ``.nii.gz``) in and out, on the input's exact grid.

Reading applies the header's ``scl_slope``/``scl_inter`` (values in file
units: HU for a CT), finds the array axis closest to the patient's S/I axis
from the affine (``nibabel.orientations.io_orientation``) and slices along
it, in the canonical orientation of ``volumes``. Writing puts a canonical
array back in the file's own axis order and writes it with the input's
header: same shape, affine, qform/sform and their codes, units; float32 data
with no scaling (nibabel stores ``scl_slope`` as NaN, "not scaled").
nibabel is imported here only (the ``[medical]`` extra).
"""

from __future__ import annotations

import os

import numpy as np

from keras_vaegan.data.volume import (
    MEDICAL_EXTRA,
    OUTPUT_DESCRIPTIONS,
    Reorientation,
    Volume,
    check_finite,
    check_slice_size,
    check_volume_size,
)
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_path


def nibabel_module(path=None):
    try:
        import nibabel
    except ImportError:
        raise VAEGANError(path, f"reading NIfTI needs nibabel: {MEDICAL_EXTRA}") from None
    return nibabel


def _load(path: str):
    nib = nibabel_module(path)
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise VAEGANError(path, f"cannot read ({err.strerror or err})") from None
    if size == 0:
        raise VAEGANError(path, "empty file (0 bytes)")
    try:
        image = nib.load(path)
    except Exception as err:  # ImageFileError, HeaderDataError, gzip/zlib errors, EOFError
        if _is_gzip(path):
            problem = _gzip_problem(path)
            if problem:
                raise VAEGANError(path, f"truncated or corrupt NIfTI file ({problem})") from None
        raise VAEGANError(path, f"not a readable NIfTI file ({_short(err, path)})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VAEGANError(path, f"not a NIfTI image ({type(image).__name__})")
    return image


def _volume_shape(path: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3-D shape, with trailing dimensions of 1 dropped; refuses 2-D and 4-D data."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise VAEGANError(path, f"{len(dims)}-D NIfTI (shape {tuple(shape)}): expected one "
                                "3-D volume; split the time series or channels first")
    if len(dims) < 3:
        raise VAEGANError(path, f"{len(dims)}-D NIfTI (shape {tuple(shape)}): expected a 3-D "
                                "volume (2-D images go in .png, .tif or .npy)")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def _reorientation(image) -> Reorientation:
    """From the affine: file axes -> [slice (S/I), row (A->P), col (R->L)]."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(image.affine)
    if np.isnan(ornt).any():  # degenerate affine: keep the array order, slice the last axis
        return Reorientation(axes=(2, 1, 0))
    directions = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(ornt):
        directions[int(world), axis] = sign
    directions[:2] *= -1  # RAS (NIfTI) -> LPS (DICOM, our canonical frame)
    return Reorientation.from_directions(directions)


def check_header(path: str) -> tuple[int, int, int]:
    """Check a NIfTI file without reading its voxels; return its canonical (slices, rows, cols).

    The header: 3-D, numeric, slice size, voxel count (``MAX_VOXELS``); and
    the file's length, so a file cut short fails before anything is written.
    """
    image = _load(path)
    shape, reorient = _checked(path, image)
    _check_complete(path, image)
    return tuple(shape[axis] for axis in reorient.axes)  # type: ignore[return-value]


def _check_complete(path: str, image) -> None:
    """Refuse a file that holds fewer bytes than its header's voxels need.

    ``.nii``: the file size. ``.nii.gz``: the uncompressed size recorded in
    the gzip trailer when it matches (no decompression), else the size found
    by decompressing the stream (a multi-member gzip, or a file cut short).
    """
    # the proxy's offset: a loaded image's header says 0 (nibabel resets it for writing), which
    # made every .nii.gz miss the trailer check below and be decompressed whole
    expected = int(image.dataobj.offset) + \
        int(np.prod(image.shape, dtype=np.int64)) * image.get_data_dtype().itemsize
    if not _is_gzip(path):
        found = os.path.getsize(path)
    elif _gzip_trailer_size(path) == expected % 2 ** 32:
        return
    else:
        found, problem = _gzip_length(path)
        if problem:
            raise VAEGANError(path, f"truncated or corrupt NIfTI file ({problem})")
    if found < expected:
        raise VAEGANError(path, f"truncated NIfTI file: {found:,} of {expected:,} bytes of "
                                "header and voxels")


def _is_gzip(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _gzip_trailer_size(path: str) -> int | None:
    """ISIZE, the last gzip member's uncompressed size modulo 2**32 (its last 4 bytes)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            return int.from_bytes(handle.read(4), "little")
    except OSError:
        return None


def _gzip_length(path: str) -> tuple[int, str | None]:
    """(uncompressed bytes, problem or None), decompressing in chunks (no memory kept)."""
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 22)
                if not chunk:
                    return total, None
                total += len(chunk)
    except EOFError:
        return total, "the gzip data ends early"
    except (OSError, zlib.error) as err:
        return total, f"bad gzip data: {_short(err, path)}"


def _gzip_problem(path: str) -> str | None:
    return _gzip_length(path)[1]


def _checked(path: str, image) -> tuple[tuple[int, int, int], Reorientation]:
    """(3-D shape, reorientation) of a loaded image, after checking type, dimensions and size."""
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.names:
        raise VAEGANError(path, f"unsupported NIfTI data type {dtype} (expected real numbers)")
    shape = _volume_shape(path, image.shape)
    reorient = _reorientation(image)
    check_slice_size(path, shape[reorient.axes[1]], shape[reorient.axes[2]])
    check_volume_size(path, shape)
    return shape, reorient


def read_nifti(path: str | os.PathLike, modality: str) -> Volume:
    """A 3-D NIfTI as a canonical ``Volume`` in file units (scaling applied)."""
    path = os.fspath(path)
    image = _load(path)
    shape, reorient = _checked(path, image)
    try:
        voxels = _read_canonical(path, image, shape, reorient)
    except Exception as err:  # truncated .nii.gz: EOFError, zlib.error, OSError, ValueError
        raise VAEGANError(path, f"truncated or corrupt NIfTI data ({_short(err, path)})") \
            from None
    check_finite(path, voxels)
    return nifti_volume(path, image, reorient, voxels, modality)


def nifti_volume(path: str, image, reorient: Reorientation, voxels, modality: str) -> Volume:
    """The ``Volume`` of a loaded, checked image around ``voxels`` (read, or read on demand)."""
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    spacing = tuple(zooms[a] for a in reorient.axes)
    return Volume(voxels=voxels, kind="nifti",
                  path=path, files=[path], reorient=reorient, file_shape=tuple(image.shape),
                  spacing_mm=spacing, modality=modality,  # type: ignore[arg-type]
                  nifti_image=image)


_SLAB_VOXELS = 1 << 20  # voxels read at a time (4 MB as float32: 16 slices of 256x256)


def _read_canonical(path: str, image, shape: tuple[int, int, int],
                    reorient: Reorientation) -> np.ndarray:
    """The scaled voxels as float32, canonical, read slab by slab straight into place.

    The values of ``get_fdata(dtype=np.float32)`` (the same nibabel proxy,
    scaling and cast), but only the float32 volume is ever whole in memory:
    not the file's own array (twice for float64), nor a reordered copy, nor
    the whole decompressed byte string that reading a ``.nii.gz`` at once makes.
    """
    from nibabel.openers import ImageOpener

    voxels = np.empty(tuple(shape[axis] for axis in reorient.axes), np.float32)
    in_file_order = reorient.file_order_view(voxels)  # a view: writes land in ``voxels``
    step = max(1, _SLAB_VOXELS // (shape[0] * shape[1]))
    with ImageOpener(path) as handle:  # one open file: slabs read in turn
        proxy = open_proxy(handle, image)
        for start in range(0, shape[2], step):
            stop = min(start + step, shape[2])
            slab = np.asarray(proxy[:, :, start:stop])
            in_file_order[:, :, start:stop] = slab.reshape(shape[0], shape[1], stop - start)
    return voxels


def open_proxy(handle, image):
    """nib.load's proxy of ``image`` (its offset, type and scaling) reading an open ``handle``.

    One open file read slab by slab: nib.load's own proxy reopens the file
    for every slice taken, and a ``.nii.gz`` is then decompressed from its start each time.
    """
    from nibabel.arrayproxy import ArrayProxy

    stored = image.dataobj
    return ArrayProxy(handle, (stored.shape, stored.dtype, stored.offset, stored.slope,
                               stored.inter), mmap=False, order=stored.order)


def write_nifti(path: str | os.PathLike, volume: Volume, voxels: np.ndarray, modality: str,
                role: str = "mean", description: str | None = None) -> None:
    """Write canonical ``voxels`` as float32 NIfTI with ``volume``'s header and grid."""
    path = os.fspath(path)
    nib = nibabel_module(path)
    # a view in the file's axis order: nibabel writes it a slice at a time (no copy of the volume)
    data = volume.file_order_view(np.asarray(voxels, dtype=np.float32))
    image = output_image(volume, data, modality, role, description)
    with atomic_path(path, suffix=output_suffix(path)) as tmp:
        try:
            nib.save(image, tmp)
        except OSError as err:
            raise VAEGANError(path, f"cannot write ({err.strerror or err})") from None


def output_suffix(path: str) -> str:
    """The extension a temporary name keeps, so nibabel compresses a ``.nii.gz`` output."""
    return ".nii.gz" if path.lower().endswith(".nii.gz") else ".nii"


def output_image(volume: Volume, data: np.ndarray, modality: str, role: str = "mean",
                 description: str | None = None):
    """A nibabel image of file-order float32 ``data`` with the header every output gets.

    The input's header, little-endian, float32 with no scaling, no display
    range, our description; the streaming writer takes its header from here
    too (with a placeholder for ``data``), so both write the same bytes.
    """
    original = volume.nifti_image
    header = original.header.copy()
    if header.endianness != "<":
        header = header.as_byteswapped("<")  # the same header, written little-endian
    header.set_data_dtype(np.float32)
    # affine=None: nibabel keeps the header's qform and sform (and codes) exactly
    image = type(original)(data, None, header=header)
    image.header.set_slope_inter(None, None)  # float32 HU as stored: no scaling
    image.header["cal_min"] = 0.0
    image.header["cal_max"] = 0.0
    text = description or OUTPUT_DESCRIPTIONS.get((modality, role), "keras-vaegan output")
    image.header["descrip"] = text.encode("ascii", "replace")[:79]
    image.header["aux_file"] = b""
    image.header["intent_code"] = 0
    return image


def _short(err: BaseException, path: str) -> str:
    from keras_vaegan.data.readers import _short as short

    return short(err, path)
