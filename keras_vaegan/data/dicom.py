"""DICOM series in (HU, sorted by position, multi-frame) and out (a derived series).

Reading: files are grouped by SeriesInstanceUID; slices are sorted by
ImagePositionPatient projected on the slice normal (InstanceNumber when a
position is missing); the modality LUT (RescaleSlope/Intercept, or a
Modality LUT Sequence) is applied, so CT voxels are in HU. Multi-frame files
are one volume each, with per-frame geometry and rescale from the enhanced
functional groups where present.

Writing: one file per input slice, on the input's grid, with new Study,
Series and SOP Instance UIDs, Modality CT (or MR), the input's patient,
study and geometry tags, int16 pixels with RescaleSlope/Intercept so that
``stored * slope + intercept`` is the value in HU, ImageType
``DERIVED\\SECONDARY`` and a SeriesDescription/ImageComments saying it is
synthetic and not for diagnosis. The series folder is written atomically.
pydicom is imported here only (the ``[medical]`` extra).
"""

from __future__ import annotations

import datetime
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from keras_vaegan.data import readers
from keras_vaegan.data.volume import (
    MEDICAL_EXTRA,
    OUTPUT_DESCRIPTIONS,
    FoundVolume,
    Reorientation,
    Volume,
    check_finite,
    check_slice_size,
    check_volume_size,
)
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_folder

IMAGE_MODALITIES = ("CT", "MR")
_MODALITY_TAG = {"ct": "CT", "mri": "MR"}
_POSITION_TOLERANCE_MM = 1e-3
_ORIENTATION_TOLERANCE = 1e-3
_DEFER_SIZE = 4096  # header reads leave values bigger than this (pixel data) on disk

COPIED_TAGS = (  # patient, study, equipment context and geometry taken from the input
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientWeight", "PatientSize", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "BodyPartExamined",
    "PatientPosition", "FrameOfReferenceUID", "PositionReferenceIndicator",
)
TYPE2_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
              "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
              "PositionReferenceIndicator")


@dataclass
class DicomSlice:
    """One input slice: its header and where it lies (pixel data not kept)."""

    dataset: object  # pydicom Dataset (shared by the frames of a multi-frame file)
    path: str
    frame: int | None  # 0-based frame of a multi-frame file, None for a single-frame file
    position: np.ndarray | None  # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray  # ImageOrientationPatient: row cosines, then column cosines
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    slice_thickness: float | None
    instance_number: int | None


def pydicom_module(path=None):
    try:
        import pydicom
    except ImportError:
        raise VAEGANError(path, f"reading DICOM needs pydicom: {MEDICAL_EXTRA}") from None
    return pydicom


# --- reading ------------------------------------------------------------------------------


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


def _skip_reason(dataset, modality: str | None = None) -> str | None:
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
    if modality is not None and found and found != _MODALITY_TAG[modality]:
        return f"Modality is {found}, expected {_MODALITY_TAG[modality]} here"
    return None


def _has_pixels(dataset) -> bool:
    return any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _broken_image(dataset) -> bool:
    """No image size, but no sign of a non-image object either: a file cut short or damaged."""
    sop = dataset.get("SOPClassUID")
    if sop is None:
        return True
    return "Image Storage" in (getattr(sop, "name", "") or "")


def check_image_header(path: str, dataset) -> None:
    """Refuse a DICOM image from its header alone: no pixel data, pixel data cut short,
    colour, or a slice size out of bounds. The pixel data is not read."""
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
    check_slice_size(path, rows, cols)
    for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
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


def _frames(dataset) -> int:
    try:
        return max(1, int(dataset.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def group_series(files: list[str], single: bool = False, modality: str | None = None,
                 on_bad: readers.BadFileHandler | None = None) -> list[FoundVolume]:
    """DICOM files -> one FoundVolume per series (a multi-frame file is a series of its own).

    With ``single`` (one file given), a file that is no CT/MR image, or not
    of ``modality`` ('mri'/'ct'), is an error; in a folder such files (RT
    structure sets, dose, the other modality's series) are skipped. A bad
    file (not DICOM, no or truncated pixel data, colour, a size out of
    bounds) and a series of more than ``MAX_VOXELS`` voxels raise, or with
    ``on_bad`` are handed to it and left out.
    """
    groups: dict[tuple, list[tuple[str, object]]] = {}
    skipped = []
    for path in files:
        try:
            dataset = read_header(path)
            reason = _skip_reason(dataset, modality)
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
        key = (uid or f"no-uid:{os.path.dirname(path)}", path if _frames(dataset) > 1 else None)
        groups.setdefault(key, []).append((path, dataset))
    if skipped:
        wanted = f"{_MODALITY_TAG[modality]} images" if modality else "CT/MR images"
        warnings.warn(f"skipped {len(skipped)} DICOM file(s) that are not {wanted}, "
                      f"e.g. {skipped[0]}", stacklevel=3)
    found = []
    for (uid, _), members in groups.items():
        paths = [p for p, _ in members]
        headers = [d for _, d in members]
        folder = os.path.commonpath([os.path.dirname(p) for p in paths])
        number = headers[0].get("SeriesNumber")
        try:
            number = None if number in (None, "") else int(number)
        except (TypeError, ValueError):
            number = None
        count = sum(_frames(d) for d in headers)
        shape = (count, int(headers[0].Rows), int(headers[0].Columns))
        axes = _reorientation(headers[0]).axes
        series = FoundVolume(kind="dicom", files=paths,
                              path=paths[0] if len(paths) == 1 else folder,
                              slice_count=shape[axes[0]],
                              slice_shape=(shape[axes[1]], shape[axes[2]]),
                              series_uid=None if uid.startswith("no-uid:") else uid,
                              series_number=number, headers=headers)
        try:
            check_volume_size(series.path, shape)
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
            continue
        found.append(series)
    return found


def _reorientation(dataset) -> Reorientation:
    """The series' reorientation from one header (as ``read_series`` finds it from all)."""
    orientation = _floats(dataset.get("ImageOrientationPatient"), 6)
    if orientation is None:
        first = _first(_shared(dataset), "PlaneOrientationSequence") or \
            _first(_per_frame(dataset, 0), "PlaneOrientationSequence")
        orientation = None if first is None else _floats(first.get("ImageOrientationPatient"), 6)
    if orientation is None:
        orientation = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    normal = np.cross(orientation[:3], orientation[3:])
    return Reorientation.from_directions(np.column_stack([normal, orientation[3:],
                                                          orientation[:3]]))


def read_series(series: FoundVolume, modality: str) -> Volume:
    """One DICOM series as a canonical ``Volume`` in file units (HU for CT)."""
    headers = series.headers or [read_header(p) for p in series.files]
    slices: list[DicomSlice] = []
    pixels: list[np.ndarray] = []
    for path, dataset in zip(series.files, headers):
        _check_modality(path, dataset, modality)
        if not _has_pixels(dataset):
            raise VAEGANError(path, "DICOM image has no pixel data")
        frames = _decode(path, dataset)
        slices.extend(_geometry(path, dataset, len(frames)))
        pixels.extend(frames)
        for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if name in dataset:
                del dataset[name]  # keep the header only: the voxels live in the Volume
    shapes = {p.shape for p in pixels}
    if len(shapes) > 1:
        raise VAEGANError(series.path, f"series mixes image sizes {sorted(shapes)}; "
                                       "give one series of equal slices")
    orientation = slices[0].orientation
    for item in slices:
        if np.abs(item.orientation - orientation).max() > _ORIENTATION_TOLERANCE:
            raise VAEGANError(item.path, "series mixes slice orientations; give one stack")
    normal = np.cross(orientation[:3], orientation[3:])
    order, spacing_between = _slice_order(series.path, slices, normal)
    slices = [slices[i] for i in order]
    voxels = np.stack([pixels[i] for i in order]).astype(np.float32)
    check_finite(series.path, voxels)
    check_slice_size(series.path, voxels.shape[1], voxels.shape[2])

    reorient = Reorientation.from_directions(
        np.column_stack([normal, orientation[3:], orientation[:3]]))
    row_mm, col_mm = slices[0].pixel_spacing or (1.0, 1.0)
    between = spacing_between or slices[0].slice_thickness or 1.0
    file_spacing = (float(between), float(row_mm), float(col_mm))
    return Volume(voxels=reorient.to_canonical(voxels), kind="dicom", path=series.path,
                  files=list(series.files), reorient=reorient, file_shape=voxels.shape,
                  spacing_mm=tuple(file_spacing[a] for a in reorient.axes),  # type: ignore
                  modality=modality, dicom_slices=slices)


def _check_modality(path: str, dataset, modality: str) -> None:
    reason = _skip_reason(dataset, modality)
    if reason is not None:
        raise VAEGANError(path, f"DICOM {reason}")


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
    frames = _frames(dataset)
    array = np.asarray(array)
    array = array.reshape((frames,) + array.shape[-2:]) if frames > 1 else array[None]
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
    for group in (_per_frame(dataset, index), _shared(dataset)):
        item = _first(group, "PixelValueTransformationSequence")
        if item is not None and "RescaleSlope" in item:
            return float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0) or 0.0)
    return None, 0.0


def _per_frame(dataset, index: int):
    groups = dataset.get("PerFrameFunctionalGroupsSequence")
    return groups[index] if groups is not None and index < len(groups) else None


def _shared(dataset):
    groups = dataset.get("SharedFunctionalGroupsSequence")
    return groups[0] if groups else None


def _first(item, name: str):
    if item is None:
        return None
    sequence = item.get(name)
    return sequence[0] if sequence else None


def _floats(value, count: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.size == count and np.isfinite(values).all() else None


def _geometry(path: str, dataset, frames: int) -> list[DicomSlice]:
    """Where each frame of a file lies: top-level attributes, or enhanced functional groups."""
    instance = dataset.get("InstanceNumber")
    try:
        instance = None if instance in (None, "") else int(instance)
    except (TypeError, ValueError):
        instance = None
    base_iop = _floats(dataset.get("ImageOrientationPatient"), 6)
    base_ipp = _floats(dataset.get("ImagePositionPatient"), 3)
    base_spacing = _floats(dataset.get("PixelSpacing"), 2)
    base_thickness = dataset.get("SliceThickness")
    slices = []
    for index in range(frames):
        iop, spacing, thickness = base_iop, base_spacing, base_thickness
        ipp = base_ipp if index == 0 else None
        for group in (_shared(dataset), _per_frame(dataset, index)):  # per-frame values win
            iop = _functional(group, "PlaneOrientationSequence", "ImageOrientationPatient", 6, iop)
            ipp = _functional(group, "PlanePositionSequence", "ImagePositionPatient", 3, ipp)
            spacing = _functional(group, "PixelMeasuresSequence", "PixelSpacing", 2, spacing)
            measures = _first(group, "PixelMeasuresSequence")
            if measures is not None and measures.get("SliceThickness") not in (None, ""):
                thickness = measures.SliceThickness
        if frames > 1 and ipp is None and base_ipp is not None and base_iop is not None:
            step = _float(dataset.get("SpacingBetweenSlices")) or _float(base_thickness)
            if step:  # old-style multi-frame: frames stacked along the normal
                ipp = base_ipp + index * step * np.cross(base_iop[:3], base_iop[3:])
        if iop is None:
            iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        slices.append(DicomSlice(
            dataset=dataset, path=path, frame=index if frames > 1 else None, position=ipp,
            orientation=iop, pixel_spacing=None if spacing is None else (float(spacing[0]),
                                                                         float(spacing[1])),
            slice_thickness=_float(thickness),
            instance_number=(index + 1) if frames > 1 else instance))
    return slices


def _functional(group, sequence: str, name: str, count: int, default):
    """A numeric attribute from a functional group's sequence item, else ``default``."""
    item = _first(group, sequence)
    values = None if item is None else _floats(item.get(name), count)
    return default if values is None else values


def _float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _slice_order(folder: str, slices: list[DicomSlice], normal: np.ndarray
                 ) -> tuple[list[int], float | None]:
    """Order along the slice normal (InstanceNumber if a position is missing), and the spacing."""
    if len(slices) == 1:
        return [0], None
    if all(s.position is not None for s in slices):
        along = np.array([float(np.dot(s.position, normal)) for s in slices])
        order = sorted(range(len(slices)), key=lambda i: along[i])
        steps = np.diff(along[order])
        if (steps < _POSITION_TOLERANCE_MM).any():
            first = int(np.argmax(steps < _POSITION_TOLERANCE_MM))
            raise VAEGANError(folder, f"two slices at the same position ({along[order][first]:.3f} "
                                      f"mm along the normal: {slices[order[first]].path} and "
                                      f"{slices[order[first + 1]].path}); the folder may hold "
                                      "two acquisitions of one series")
        return order, float(np.median(steps))
    key = [(s.instance_number if s.instance_number is not None else 10 ** 9, s.path, s.frame or 0)
           for s in slices]
    return sorted(range(len(slices)), key=lambda i: key[i]), None


# --- writing ------------------------------------------------------------------------------


def int16_rescale(values: np.ndarray, whole_units: bool) -> tuple[float, float]:
    """(slope, intercept) that fit ``values`` into int16 stored pixels.

    ``whole_units`` (HU): slope 1, intercept 0 when the values fit, which
    is how CT is usually stored; otherwise (and for uncertainty and MR maps)
    the smallest power-of-two slope that fits, so small values keep precision.
    """
    values = np.asarray(values, dtype=np.float64)
    top = float(np.abs(values).max()) if values.size else 0.0
    if whole_units and top <= 32767:
        return 1.0, 0.0
    if top == 0:
        return 1.0, 0.0
    exponent = math.ceil(math.log2(top / 32767.0))
    return float(2.0 ** max(exponent, -12)), 0.0


def write_series(folder: str | os.PathLike, volume: Volume, voxels: np.ndarray, modality: str,
                 role: str = "mean", study_uid: str | None = None,
                 description: str | None = None) -> list[str]:
    """Write canonical ``voxels`` (output units) as a new derived DICOM series in ``folder``.

    One file per input slice, on the input's grid. ``study_uid``: the new
    study this series belongs to (share it between a mean and its std
    series); a new one when None. Returns the files written.
    """
    folder = os.fspath(folder)
    pydicom_module(folder)
    from pydicom.uid import generate_uid

    data = volume.to_file_order(np.asarray(voxels, dtype=np.float64))
    if not np.isfinite(data).all():
        raise VAEGANError(folder, "output has non-finite values (NaN or inf)")
    slope, intercept = int16_rescale(data, whole_units=(modality == "ct" and role == "mean"))
    stored = np.clip(np.rint((data - intercept) / slope), -32768, 32767).astype("<i2")
    window = _window(data, modality, role)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    now = datetime.datetime.now()
    text = description or OUTPUT_DESCRIPTIONS[(modality, role)]
    first = volume.dicom_slices[0].dataset
    series_number = _series_number(first, role)
    written = []
    with atomic_folder(folder) as tmp:
        for index, (item, pixels) in enumerate(zip(volume.dicom_slices, stored)):
            dataset = _derived_dataset(item, pixels, modality, role, text, study_uid, series_uid,
                                       series_number, slope, intercept, window, now, index)
            name = f"{index + 1:05d}.dcm"
            _save(dataset, os.path.join(tmp, name), folder)
            written.append(os.path.join(folder, name))
    return written


def _series_number(dataset, role: str) -> int:
    try:
        number = int(dataset.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return (number % 1000) + (1000 if role == "mean" else 2000)


def _window(data: np.ndarray, modality: str, role: str) -> tuple[float, float]:
    """(center, width): a soft-tissue/bone window for CT, the data's robust range otherwise."""
    if modality == "ct" and role == "mean":
        return 40.0, 400.0
    low, high = np.percentile(data, [1, 99]) if data.size else (0.0, 1.0)
    width = max(float(high - low), 1.0)
    return float(low + high) / 2.0, width


def _derived_dataset(item: DicomSlice, pixels: np.ndarray, modality: str, role: str, text: str,
                     study_uid: str, series_uid: str, series_number: int, slope: float,
                     intercept: float, window: tuple[float, float], now, index: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    import keras_vaegan

    original = item.dataset
    sop_class = CTImageStorage if modality == "ct" else MRImageStorage
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    for name in COPIED_TAGS:
        if name in original and original[name].value not in (None, ""):
            ds[name] = original[name]
    for name in TYPE2_TAGS:
        if name not in ds:
            setattr(ds, name, "")
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = _MODALITY_TAG[modality]
    ds.SeriesNumber = series_number
    ds.SeriesDescription = text[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Manufacturer = "keras-vaegan"
    ds.SoftwareVersions = str(keras_vaegan.__version__)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ImageComments = (f"{text}. Translated by a VAE-CycleGAN from the "
                        f"{'MR' if modality == 'ct' else 'CT'} series "
                        f"{original.get('SeriesInstanceUID', 'unknown')}"
                        + ("; per-voxel standard deviation over latent draws (the model's own "
                           "spread, not a calibrated error bar)" if role == "std" else "") + ".")
    ds.DerivationDescription = "synthetic image from a learned image translation (keras-vaegan)"
    ds.BurnedInAnnotation = "NO"
    if original.get("SOPInstanceUID") and original.get("SOPClassUID"):
        reference = Dataset()
        reference.ReferencedSOPClassUID = original.SOPClassUID
        reference.ReferencedSOPInstanceUID = original.SOPInstanceUID
        if item.frame is not None:
            reference.ReferencedFrameNumber = item.frame + 1
        ds.SourceImageSequence = [reference]
    ds.InstanceNumber = item.instance_number if item.instance_number is not None else index + 1
    ds.AcquisitionNumber = ""
    if modality == "ct":
        ds.KVP = ""
    else:  # MR Image module: type 1/2 attributes that a synthetic image has no real value for
        ds.ScanningSequence = "RM"  # research mode
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = ""
        ds.RepetitionTime = ""
        ds.EchoTrainLength = ""
    # geometry
    ds.ImageOrientationPatient = [_ds_number(v) for v in item.orientation]
    if item.position is not None:
        ds.ImagePositionPatient = [_ds_number(v) for v in item.position]
        normal = np.cross(item.orientation[:3], item.orientation[3:])
        ds.SliceLocation = _ds_number(float(np.dot(item.position, normal)))
    if item.pixel_spacing is not None:
        ds.PixelSpacing = [_ds_number(v) for v in item.pixel_spacing]
    if item.slice_thickness is not None:
        ds.SliceThickness = _ds_number(item.slice_thickness)
    # pixels
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds_number(intercept)
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleType = "HU" if modality == "ct" else "US"
    ds.WindowCenter = _ds_number(window[0])
    ds.WindowWidth = _ds_number(window[1])
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def _ds_number(value: float) -> str:
    """A DS (decimal string) value of at most 16 characters."""
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"[:16]


def _save(dataset, path: str, folder: str) -> None:
    try:
        dataset.save_as(path, enforce_file_format=True)
    except OSError as err:
        raise VAEGANError(folder, f"cannot write ({err.strerror or err})") from None


def _short(err: BaseException, path: str) -> str:
    from keras_vaegan.data.readers import _short as short

    return short(err, path)
