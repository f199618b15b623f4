"""DICOM series in: find and group files, check headers and geometry, decode to HU.

Files are grouped by SeriesInstanceUID (a multi-frame file is a series of
its own). Everything that can be known from headers is checked in
``group_series``, before any pixel is decoded or any output written: the
file is DICOM, a greyscale CT/MR image with complete pixel data, and each
series has one slice size and one orientation, an orientation at all, no
two slices at one position, and slices the model can translate (at least
8x8 after reorientation: see ``dicom_geometry`` for which plane that is;
a single sagittal slice keeps its own plane). ``read_series`` then decodes
the pixels in slice order and applies the modality LUT
(RescaleSlope/Intercept, or a Modality LUT Sequence; per frame for enhanced
multi-frame images), so CT voxels are in HU. pydicom is imported only in
the ``dicom_*`` modules (the ``[medical]`` extra).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from keras_vaegan.data import readers
from keras_vaegan.data.dicom_geometry import (
    SeriesLayout,
    first_item,
    frames,
    per_frame_group,
    series_layout,
    shared_group,
)
from keras_vaegan.data.volume import (
    MEDICAL_EXTRA,
    FoundVolume,
    Volume,
    check_finite,
    check_slice_size,
    check_volume_size,
)
from keras_vaegan.errors import VAEGANError

IMAGE_MODALITIES = ("CT", "MR")
MODALITY_TAG = {"ct": "CT", "mri": "MR"}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFER_SIZE = 4096  # header reads leave values bigger than this (pixel data) on disk


def pydicom_module(path=None):
    try:
        import pydicom
    except ImportError:
        raise VAEGANError(path, f"reading DICOM needs pydicom: {MEDICAL_EXTRA}") from None
    return pydicom


def read_header(path: str):
    """The dataset of a DICOM file with its pixel data left on disk (read on demand)."""
    pydicom = pydicom_module(path)
    from pydicom.errors import InvalidDicomError

    try:
        if os.path.getsize(path) == 0:
            raise VAEGANError(path, "empty file (0 bytes)")
    except OSError as err:
        raise VAEGANError(path, f"cannot read ({err.strerror or err})") from None
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except InvalidDicomError:
        pass  # no preamble: maybe a raw dataset, try once more below
    except Exception as err:
        raise VAEGANError(path, f"not a readable DICOM file ({_short(err, path)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=True)
            ok = "SOPClassUID" in dataset or ("Rows" in dataset and "Columns" in dataset)
    except Exception:
        ok = False
    if not ok:
        raise VAEGANError(path, "not a DICOM file (no DICM marker and no DICOM header)")
    return dataset


def skip_reason(dataset, modality: str | None = None) -> str | None:
    """Why a DICOM object is no image to read here (as ``modality``), or None."""
    if "Rows" not in dataset or "Columns" not in dataset:
        if _broken_image(dataset):
            return None  # check_image_header says what is wrong with it
        sop = dataset.get("SOPClassUID")
        name = getattr(sop, "name", None) or str(dataset.get("Modality", "")) or "no image"
        return f"object is not an image ({name}); expected a CT or MR image"
    found = str(dataset.get("Modality", "") or "").upper()
    if found and found not in IMAGE_MODALITIES:
        return f"Modality is {found}; expected a CT or MR image"
    if modality is not None and found and found != MODALITY_TAG[modality]:
        return f"Modality is {found}, expected {MODALITY_TAG[modality]} here"
    return None


def _has_pixels(dataset) -> bool:
    return any(tag in dataset for tag in PIXEL_KEYWORDS)


def _broken_image(dataset) -> bool:
    """No image size, but no sign of a non-image object either: a file cut short or damaged."""
    sop = dataset.get("SOPClassUID")
    if sop is None:
        return True
    return "Image Storage" in (getattr(sop, "name", "") or "")


def check_image_header(path: str, dataset) -> None:
    """Refuse a DICOM image from its header alone: no pixel data, pixel data cut short,
    colour, or a stored size too big to decode. The pixel data is not read (the
    smallest slice size is checked per series, on the slice the model sees)."""
    if "Rows" not in dataset or "Columns" not in dataset:
        raise VAEGANError(path, "not a complete DICOM image (no Rows/Columns; the file may be "
                                "cut short)")
    if not _has_pixels(dataset):
        raise VAEGANError(path, "DICOM image has no pixel data")
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise VAEGANError(path, f"colour DICOM image ({dataset.get('PhotometricInterpretation')}); "
                                "expected greyscale")
    try:
        rows, cols = int(dataset.Rows), int(dataset.Columns)
    except (TypeError, ValueError):
        raise VAEGANError(path, "DICOM image has no valid Rows/Columns") from None
    if max(rows, cols) > readers.MAX_SIDE:
        check_slice_size(path, rows, cols)
    _check_pixel_length(path, dataset)


def _check_pixel_length(path: str, dataset) -> None:
    for name in PIXEL_KEYWORDS:
        if name not in dataset:
            continue
        try:
            element = dataset.get_item(name, keep_deferred=True)
        except TypeError:  # an older pydicom without keep_deferred
            element = dataset.get_item(name)
        length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
        if length is None or start is None or length == 0xFFFFFFFF:
            continue  # already read, or encapsulated (compressed) data of undefined length
        size = os.path.getsize(path)
        if start + length > size:
            raise VAEGANError(path, f"DICOM pixel data is cut short ({max(size - start, 0):,} "
                                    f"of {length:,} bytes): the file is truncated")


def group_series(files: list[str], single: bool = False, modality: str | None = None,
                 on_bad: readers.BadFileHandler | None = None) -> list[FoundVolume]:
    """DICOM files -> one FoundVolume per series (a multi-frame file is a series of its own).

    With ``single`` (one file given), a file that is no CT/MR image, or not
    of ``modality`` ('mri'/'ct'), is an error; in a folder such files (RT
    structure sets, dose, the other modality's series) are skipped. A bad
    file (not DICOM, no or truncated pixel data, colour, too big) and a
    series that cannot be translated (mixed sizes or orientations, no
    orientation, two slices at one position, slices the model sees smaller
    than 8x8, more than ``MAX_VOXELS`` voxels) raise, or with ``on_bad``
    are handed to it and left out.
    """
    groups: dict[tuple, list[tuple[str, object]]] = {}
    skipped = []
    for path in files:
        try:
            dataset = read_header(path)
            reason = skip_reason(dataset, modality)
            if reason is not None:
                if single:
                    raise VAEGANError(path, f"DICOM {reason}")
                skipped.append(path)
                continue
            check_image_header(path, dataset)
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
            continue
        uid = str(dataset.get("SeriesInstanceUID", "") or "")
        key = (uid or f"no-uid:{os.path.dirname(path)}", path if frames(dataset) > 1 else None)
        groups.setdefault(key, []).append((path, dataset))
    if skipped:
        wanted = f"{MODALITY_TAG[modality]} images" if modality else "CT/MR images"
        warnings.warn(f"skipped {len(skipped)} DICOM file(s) that are not {wanted}, "
                      f"e.g. {skipped[0]}", stacklevel=3)
    found = []
    for (uid, _), members in groups.items():
        try:
            found.append(_found_series(uid, members))
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
    return found


def _found_series(uid: str, members: list[tuple[str, object]]) -> FoundVolume:
    """One series after its header checks (see ``group_series``)."""
    paths = [p for p, _ in members]
    headers = [d for _, d in members]
    folder = os.path.commonpath([os.path.dirname(p) for p in paths])
    where = paths[0] if len(paths) == 1 else folder
    number = headers[0].get("SeriesNumber")
    try:
        number = None if number in (None, "") else int(number)
    except (TypeError, ValueError):
        number = None
    check_volume_size(where, (sum(frames(d) for d in headers), int(headers[0].Rows),
                              int(headers[0].Columns)))
    layout = series_layout(where, paths, headers)
    check_slice_size(where, *layout.model_slice_shape)
    return FoundVolume(kind="dicom", files=paths, path=where,
                       slice_count=layout.model_slice_count,
                       slice_shape=layout.model_slice_shape,
                       series_uid=None if uid.startswith("no-uid:") else uid,
                       series_number=number, headers=headers)


def read_series(series: FoundVolume, modality: str) -> Volume:
    """One DICOM series as a canonical ``Volume`` in file units (HU for CT)."""
    headers = series.headers or [read_header(p) for p in series.files]
    for path, dataset in zip(series.files, headers):
        reason = skip_reason(dataset, modality)
        if reason is not None:
            raise VAEGANError(path, f"DICOM {reason}")
        if not _has_pixels(dataset):
            raise VAEGANError(path, "DICOM image has no pixel data")
    layout: SeriesLayout = series_layout(series.path, list(series.files), headers)
    check_slice_size(series.path, *layout.model_slice_shape)
    decoded: dict[str, list[np.ndarray]] = {}
    for path, dataset in zip(series.files, headers):
        decoded[path] = _decode(path, dataset)
        for name in PIXEL_KEYWORDS:
            if name in dataset:
                del dataset[name]  # keep the header only: the voxels live in the Volume
    pixels = [decoded[s.path][s.frame or 0] for s in layout.slices]
    if {p.shape for p in pixels} != {layout.file_shape[1:]}:
        raise VAEGANError(series.path, f"decoded pixel data is not {layout.file_shape[2]}x"
                                       f"{layout.file_shape[1]} as the headers say")
    voxels = np.stack(pixels).astype(np.float32)
    check_finite(series.path, voxels)
    reorient = layout.reorient
    return Volume(voxels=reorient.to_canonical(voxels), kind="dicom", path=series.path,
                  files=list(series.files), reorient=reorient, file_shape=voxels.shape,
                  spacing_mm=tuple(layout.spacing_mm[a] for a in reorient.axes),  # type: ignore
                  modality=modality, dicom_slices=layout.slices)


def _decode(path: str, dataset) -> list[np.ndarray]:
    """Pixel data -> one float32 2-D array per frame, modality LUT applied."""
    from pydicom.pixels import apply_modality_lut

    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise VAEGANError(path, f"colour DICOM image ({dataset.get('PhotometricInterpretation')}); "
                                "expected greyscale")
    try:
        array = dataset.pixel_array
    except Exception as err:  # missing decoder plugin, truncated data, bad attributes
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise VAEGANError(path, f"cannot decode the pixel data ({name}: {_short(err, path)})") \
            from None
    count = frames(dataset)
    array = np.asarray(array)
    array = array.reshape((count,) + array.shape[-2:]) if count > 1 else array[None]
    out = []
    for index, frame in enumerate(array):
        slope, intercept = _frame_rescale(dataset, index)
        if slope is not None:
            out.append((frame.astype(np.float64) * slope + intercept).astype(np.float32))
        else:
            out.append(np.asarray(apply_modality_lut(frame, dataset), dtype=np.float32))
    return out


def _frame_rescale(dataset, index: int) -> tuple[float | None, float]:
    """Per-frame rescale of an enhanced multi-frame image (None: use the top-level attributes)."""
    for group in (per_frame_group(dataset, index), shared_group(dataset)):
        item = first_item(group, "PixelValueTransformationSequence")
        if item is not None and "RescaleSlope" in item:
            return float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0) or 0.0)
    return None, 0.0


def _short(err: BaseException, path: str) -> str:
    return readers._short(err, path)
