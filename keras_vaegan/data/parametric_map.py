"""The ``_std`` uncertainty map of a DICOM input, as a DICOM Parametric Map.

A map of per-voxel spreads (the standard deviation over latent draws) must
not be importable as a CT or MR image of the patient: a planning system
that imports a folder would take a CT series of it for a CT. It is written
as one multi-frame Parametric Map object (Modality RWV, its own SOP class)
with float32 values, a Real World Value Mapping that says what they are
(quantity: standard deviation; unit: HU for a synthetic CT, arbitrary
units for a synthetic MR), the input's geometry per frame (plane position,
orientation, pixel measures: the map lies on the input's grid, each frame
at the position of the input slice it belongs to) and references to the source images. It belongs to
the new study of the synthetic series (the source images' study is
referenced as another study). highdicom writes it (the ``[medical]``
extra); without it, writing a map is refused before anything is written
(``check_writable``).
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np

from keras_vaegan.data.dicom_geometry import DicomSlice
from keras_vaegan.data.dicom_modules import copy_attributes
from keras_vaegan.data.volume import MEDICAL_EXTRA, FoundVolume, Volume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_folder

FILE_NAME = "00001.dcm"  # the one object in the map's folder


def highdicom_module(path=None):
    try:
        import highdicom
    except ImportError:
        raise VAEGANError(path, "an uncertainty map (--samples > 1) of a DICOM input is a DICOM "
                                f"Parametric Map, which needs highdicom: {MEDICAL_EXTRA}") \
            from None
    return highdicom


def check_writable(found: FoundVolume | Volume) -> None:
    """Refuse, before anything is written, a map that cannot be written for this input:
    highdicom missing, or an input without ImagePositionPatient (a map's frames must lie
    in the patient) or without a Frame of Reference."""
    highdicom_module(found.path)
    headers = getattr(found, "headers", None)
    if headers is None:  # a Volume: its slices know their headers
        headers = [s.dataset for s in found.dicom_slices]
    for dataset in headers:
        if "FrameOfReferenceUID" not in dataset or not dataset.FrameOfReferenceUID:
            raise VAEGANError(found.path, "the input has no FrameOfReferenceUID, so an "
                                          "uncertainty map cannot be placed on its grid; "
                                          "predict with --samples 1")
        if "ImagePositionPatient" not in dataset and \
                "PerFrameFunctionalGroupsSequence" not in dataset:
            raise VAEGANError(found.path, "the input has no ImagePositionPatient, so an "
                                          "uncertainty map cannot be placed on its grid; "
                                          "predict with --samples 1")


def write_std_map(folder: str, volume: Volume, data: np.ndarray, modality: str, study_uid: str,
                  number: int, description: str) -> list[str]:
    """Write ``data`` (file order, output units) as a Parametric Map in ``folder``."""
    check_writable(volume)
    if any(s.position is None for s in volume.dicom_slices):
        raise VAEGANError(volume.path, "a slice of the input has no position, so an "
                                       "uncertainty map cannot be placed on its grid; "
                                       "predict with --samples 1")
    hd = highdicom_module(folder)
    from pydicom.uid import generate_uid

    import keras_vaegan

    slices: list[DicomSlice] = volume.dicom_slices
    sources = list({id(s.dataset): s.dataset for s in slices}.values())
    with warnings.catch_warnings(), _quiet_logger("highdicom"):
        warnings.simplefilter("ignore")
        pmap = hd.pm.ParametricMap(
            source_images=sources, pixel_array=np.asarray(data, dtype=np.float32),
            series_instance_uid=generate_uid(), series_number=number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="keras-vaegan",
            manufacturer_model_name="VAE-CycleGAN",
            software_versions=str(keras_vaegan.__version__), device_serial_number="none",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[_value_mapping(hd, data, modality)],
            content_label="STD", content_description=description[:64],
            voi_lut_transformations=[hd.VOILUTTransformation(
                window_center=float(np.percentile(data, 50)), window_width=_width(data))],
            **_geometry(hd, slices))
    _move_to_study(pmap, study_uid)
    pmap.SeriesDescription = description[:64]
    copy_attributes(pmap, sources[0], (), ("Laterality", "BodyPartExamined"))  # General Series
    path = os.path.join(folder, FILE_NAME)
    with atomic_folder(folder) as tmp:
        try:
            pmap.save_as(os.path.join(tmp, FILE_NAME), enforce_file_format=True)
        except OSError as err:
            raise VAEGANError(folder, f"cannot write ({err.strerror or err})") from None
    return [path]


def _value_mapping(hd, data: np.ndarray, modality: str):
    from pydicom.sr.codedict import codes

    unit = codes.UCUM.HounsfieldUnit if modality == "ct" else codes.UCUM.ArbitraryUnit
    what = "synthetic CT" if modality == "ct" else "synthetic MR"
    low, high = float(data.min()), float(data.max())
    return hd.pm.RealWorldValueMapping(
        lut_label="STD", lut_explanation=f"std of {what} over latent draws"[:64], unit=unit,
        value_range=(low, max(high, low)), slope=1.0, intercept=0.0,
        quantity_definition=codes.SCT.StandardDeviation)


def _geometry(hd, slices: list[DicomSlice]) -> dict:
    """Per-frame plane positions, the shared orientation and pixel measures of the input."""
    patient = hd.CoordinateSystemNames.PATIENT
    first = slices[0]
    between = first.dataset.get("SpacingBetweenSlices")
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=[float(v) for v in (first.pixel_spacing or (1.0, 1.0))],
        slice_thickness=first.slice_thickness,
        spacing_between_slices=float(between) if between not in (None, "") else None)
    return {"plane_positions": [hd.PlanePositionSequence(patient, [float(v) for v in s.position])
                                for s in slices],
            "plane_orientation": hd.PlaneOrientationSequence(
                patient, [float(v) for v in first.orientation]),
            "pixel_measures": measures}


def _move_to_study(pmap, study_uid: str) -> None:
    """Put the map in the synthetic series' new study; its sources stay referenced in theirs."""
    from pydicom.dataset import Dataset

    source_study = pmap.StudyInstanceUID
    if source_study == study_uid:
        return
    pmap.StudyInstanceUID = study_uid
    if "ReferencedSeriesSequence" in pmap:
        other = Dataset()
        other.StudyInstanceUID = source_study
        other.ReferencedSeriesSequence = pmap.ReferencedSeriesSequence
        del pmap.ReferencedSeriesSequence
        pmap.StudiesContainingOtherReferencedInstancesSequence = [other]


def _width(data: np.ndarray) -> float:
    low, high = np.percentile(data, [1, 99]) if data.size else (0.0, 1.0)
    return max(float(high - low), 1e-3)


class _quiet_logger:
    """Hold a library's log records below ERROR back while it works (it would print raw)."""

    def __init__(self, name: str):
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False
