"""DICOM out: a translated volume as a derived CT or MR series on the input's grid.

One file per input slice (per frame of a multi-frame input), with new
Study, Series and SOP Instance UIDs, the SOP class of the output modality
(CT Image Storage for a synthetic CT, MR Image Storage for a synthetic MR),
int16 pixels with RescaleSlope/Intercept so that ``stored * slope +
intercept`` is the value (HU for CT), ImageType ``DERIVED\\SECONDARY\\...``
and a SeriesDescription/ImageComments saying it is synthetic and not for
diagnosis. What is copied from the input and what is new is listed module
by module in ``dicom_modules``; the output passes dciodvfy with no error
its input does not already have. Geometry is the input's and is never
invented: a slice without ImagePositionPatient is written without it and
a warning names the series (images without any orientation are refused
when they are found, see ``dicom_geometry``).

An uncertainty map (``role="std"``) is not written as an image of the
patient: it is a DICOM Parametric Map (``parametric_map``). The series
folder is written atomically.
"""

from __future__ import annotations

import datetime
import math
import os
import warnings

import numpy as np

from keras_vaegan.data import dicom_modules as modules
from keras_vaegan.data import parametric_map
from keras_vaegan.data.dicom_geometry import DicomSlice
from keras_vaegan.data.dicom_read import MODALITY_TAG, pydicom_module
from keras_vaegan.data.volume import OUTPUT_DESCRIPTIONS, Volume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_folder


def int16_rescale(values: np.ndarray, whole_units: bool) -> tuple[float, float]:
    """(slope, intercept) that fit ``values`` into int16 stored pixels.

    ``whole_units`` (HU): slope 1, intercept 0 when the values fit, which
    is how CT is usually stored; otherwise (and for MR maps) the smallest
    power-of-two slope that fits, so small values keep precision.
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

    ``role`` 'mean': one CT/MR image file per input slice, on the input's
    grid; 'std': one Parametric Map. ``study_uid``: the new study this
    series belongs to (share it between a mean and its std series); a new
    one when None. Returns the files written.
    """
    folder = os.fspath(folder)
    pydicom_module(folder)
    from pydicom.uid import generate_uid

    data = volume.to_file_order(np.asarray(voxels, dtype=np.float64))
    if not np.isfinite(data).all():
        raise VAEGANError(folder, "output has non-finite values (NaN or inf)")
    study_uid = study_uid or generate_uid()
    text = description or OUTPUT_DESCRIPTIONS[(modality, role)]
    number = series_number(volume.dicom_slices[0].dataset, role)
    if role == "std":
        return parametric_map.write_std_map(folder, volume, data, modality, study_uid, number,
                                            text)
    _warn_missing_geometry(volume)
    slope, intercept = int16_rescale(data, whole_units=(modality == "ct"))
    stored = np.clip(np.rint((data - intercept) / slope), -32768, 32767).astype("<i2")
    series = _SeriesFacts(modality, text, study_uid, generate_uid(), number, slope, intercept,
                          _window(data, modality), datetime.datetime.now())
    written = []
    with atomic_folder(folder) as tmp:
        for index, (item, pixels) in enumerate(zip(volume.dicom_slices, stored)):
            dataset = derived_image(item, pixels, series, index)
            name = f"{index + 1:05d}.dcm"
            _save(dataset, os.path.join(tmp, name), folder)
            written.append(os.path.join(folder, name))
    return written


class _SeriesFacts:
    """What every file of one derived series shares."""

    def __init__(self, modality: str, text: str, study_uid: str, series_uid: str, number: int,
                 slope: float, intercept: float, window: tuple[float, float], now):
        self.modality, self.tag, self.text = modality, MODALITY_TAG[modality], text
        self.study_uid, self.series_uid, self.number = study_uid, series_uid, number
        self.slope, self.intercept, self.window = slope, intercept, window
        self.date, self.time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def derived_image(item: DicomSlice, pixels: np.ndarray, series: _SeriesFacts, index: int):
    """One derived CT/MR image file: the modules of ``dicom_modules`` in PS3.3 order."""
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
    sop_class = CTImageStorage if series.modality == "ct" else MRImageStorage
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    modules.sop_common(ds, original, sop_class, sop_uid, series.date, series.time)
    modules.patient_and_study(ds, original, series.study_uid)
    modules.general_series(ds, original, series.tag, series.series_uid, series.number,
                           series.text, series.date, series.time)
    modules.frame_of_reference(ds, original)
    modules.general_equipment(ds, str(keras_vaegan.__version__))
    modules.general_image(ds, item, index, modules.image_type_value3(series.tag),
                          _comments(series, original), series.date, series.time)
    modules.image_plane(ds, item)
    modules.image_pixel(ds, pixels)
    modules.modality_lut(ds, series.slope, series.intercept,
                         "HU" if series.modality == "ct" else "US")
    (modules.ct_image if series.modality == "ct" else modules.mr_image)(ds)
    modules.voi_lut(ds, series.window)
    return ds


def _comments(series: _SeriesFacts, original) -> str:
    input_tag = "MR" if series.modality == "ct" else "CT"
    return (f"{series.text}. Translated by a VAE-CycleGAN from the {input_tag} series "
            f"{original.get('SeriesInstanceUID', 'unknown')}.")


def series_number(dataset, role: str) -> int:
    try:
        number = int(dataset.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return (number % 1000) + (1000 if role == "mean" else 2000)


def _window(data: np.ndarray, modality: str) -> tuple[float, float]:
    """(center, width): a soft-tissue/bone window for CT, the data's robust range otherwise."""
    if modality == "ct":
        return 40.0, 400.0
    low, high = np.percentile(data, [1, 99]) if data.size else (0.0, 1.0)
    width = max(float(high - low), 1.0)
    return float(low + high) / 2.0, width


def _warn_missing_geometry(volume: Volume) -> None:
    missing = [name for name, absent in (
        ("ImagePositionPatient", any(s.position is None for s in volume.dicom_slices)),
        ("PixelSpacing", any(s.pixel_spacing is None for s in volume.dicom_slices))) if absent]
    if missing:
        warnings.warn(f"{volume.path}: the input has no {' or '.join(missing)}; the derived "
                      "series is written without it (nothing is invented)", stacklevel=3)


def _save(dataset, path: str, folder: str) -> None:
    try:
        dataset.save_as(path, enforce_file_format=True)
    except OSError as err:
        raise VAEGANError(folder, f"cannot write ({err.strerror or err})") from None
