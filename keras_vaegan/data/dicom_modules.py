"""The DICOM modules of a derived CT or MR image, one small function each, so that what is
copied from the input and what is new can be audited against PS3.3.

Copied from the input (``copy_attributes``: an attribute present in the
input is copied as it is, even empty; a Type 2 attribute the input lacks
is created empty; a Type 1 or 3 attribute the input lacks stays absent,
nothing is invented):

- Patient / Patient Study: identity, de-identification flags, age, size;
- General Study: dates, IDs, referring physician (a new Study Instance UID);
- General Series: Laterality, PatientPosition, BodyPartExamined (new
  Series Instance UID and number, Modality of the output);
- Frame of Reference: the input's (the output lies on the input's grid);
- Image Plane: orientation, position, spacing, thickness, spacing between
  slices, exactly as the input slice has them (per frame for enhanced
  multi-frame input);
- General Image: lossy-compression history (a derived image inherits it).

New: General Equipment (this software), ImageType
``DERIVED\\SECONDARY\\<value 3>`` (AXIAL for CT: a tomographic slice in any plane;
OTHER for MR),
derivation and source image references, Image Pixel (int16, MONOCHROME2),
the CT or MR Image module's own Type 1/2 attributes, VOI LUT, SOP Common.
"""

from __future__ import annotations

import copy

import numpy as np

from keras_vaegan.data.dicom_geometry import DicomSlice

PATIENT_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
PATIENT_OTHER = ("IssuerOfPatientID", "PatientIdentityRemoved", "DeidentificationMethod",
                 "DeidentificationMethodCodeSequence", "PatientAge", "PatientSize",
                 "PatientWeight")
STUDY_TYPE2 = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
STUDY_OTHER = ("StudyDescription",)
SERIES_COPIED = ("Laterality", "BodyPartExamined")
SERIES_TYPE2 = ("PatientPosition",)  # Type 2C, required for CT and MR images
IMAGE_COPIED = ("LossyImageCompression", "LossyImageCompressionRatio",
                "LossyImageCompressionMethod")


def copy_attributes(ds, original, type2: tuple[str, ...], other: tuple[str, ...] = ()) -> None:
    """Copy ``type2`` and ``other`` attributes present in ``original`` (even empty); create
    the ``type2`` ones it lacks, empty."""
    for name in type2 + other:
        if name in original:
            ds[name] = copy.deepcopy(original[name])
        elif name in type2:
            setattr(ds, name, None)


def patient_and_study(ds, original, study_uid: str) -> None:
    """Patient, Patient Study and General Study modules (a new study UID)."""
    copy_attributes(ds, original, PATIENT_TYPE2, PATIENT_OTHER)
    copy_attributes(ds, original, STUDY_TYPE2, STUDY_OTHER)
    ds.StudyInstanceUID = study_uid


def general_series(ds, original, modality_tag: str, series_uid: str, number: int,
                   description: str, date: str, time: str) -> None:
    """General Series module: a new series of ``modality_tag`` ('CT'/'MR')."""
    ds.Modality = modality_tag
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    copy_attributes(ds, original, SERIES_TYPE2, SERIES_COPIED)


def frame_of_reference(ds, original) -> None:
    """Frame of Reference module: the input's (no UID if the input has none)."""
    copy_attributes(ds, original, ("PositionReferenceIndicator",), ("FrameOfReferenceUID",))


def general_equipment(ds, version: str) -> None:
    """General Equipment module: the software that made the image."""
    ds.Manufacturer = "keras-vaegan"
    ds.ManufacturerModelName = "VAE-CycleGAN"
    ds.SoftwareVersions = version


def general_image(ds, item: DicomSlice, index: int, value3: str, comments: str,
                  date: str, time: str) -> None:
    """General Image module: derived, with the source slice referenced."""
    original = item.dataset
    ds.ImageType = ["DERIVED", "SECONDARY", value3]
    ds.InstanceNumber = item.instance_number if item.instance_number is not None else index + 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageComments = comments
    ds.DerivationDescription = "synthetic image from a learned image translation (keras-vaegan)"
    ds.BurnedInAnnotation = "NO"
    copy_attributes(ds, original, (), IMAGE_COPIED)
    if original.get("SOPInstanceUID") and original.get("SOPClassUID"):
        from pydicom.dataset import Dataset

        reference = Dataset()
        reference.ReferencedSOPClassUID = original.SOPClassUID
        reference.ReferencedSOPInstanceUID = original.SOPInstanceUID
        if item.frame is not None:
            reference.ReferencedFrameNumber = item.frame + 1
        ds.SourceImageSequence = [reference]


def image_type_value3(modality_tag: str) -> str:
    """AXIAL for CT (PS3.3 C.8.2.1.1.1: a tomographic slice, as opposed to a LOCALIZER,
    whatever its plane), OTHER for MR (a defined term of the MR Image module)."""
    return "AXIAL" if modality_tag == "CT" else "OTHER"


def image_plane(ds, item: DicomSlice) -> None:
    """Image Plane module: the input slice's geometry, nothing invented."""
    original = item.dataset
    ds.ImageOrientationPatient = [ds_number(v) for v in item.orientation]
    if item.position is not None:
        ds.ImagePositionPatient = [ds_number(v) for v in item.position]
        ds.SliceLocation = ds_number(float(np.dot(item.position, item.normal)))
    if item.pixel_spacing is not None:
        ds.PixelSpacing = [ds_number(v) for v in item.pixel_spacing]
    if item.slice_thickness is not None:
        ds.SliceThickness = ds_number(item.slice_thickness)
    else:
        copy_attributes(ds, original, ("SliceThickness",))
    if "SpacingBetweenSlices" in original and original.SpacingBetweenSlices not in (None, ""):
        ds.SpacingBetweenSlices = original.SpacingBetweenSlices


def image_pixel(ds, pixels: np.ndarray) -> None:
    """Image Pixel module: signed 16-bit greyscale."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()


def modality_lut(ds, slope: float, intercept: float, rescale_type: str) -> None:
    """RescaleSlope/Intercept: ``stored * slope + intercept`` is the value (HU for CT)."""
    ds.RescaleIntercept = ds_number(intercept)
    ds.RescaleSlope = ds_number(slope)
    ds.RescaleType = rescale_type


def ct_image(ds) -> None:
    """CT Image module's Type 2 attributes a synthetic image has no value for."""
    ds.KVP = None
    ds.AcquisitionNumber = None


def mr_image(ds) -> None:
    """MR Image module's Type 1/2 attributes a synthetic image has no real value for."""
    ds.ScanningSequence = "RM"  # research mode
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = None
    ds.MRAcquisitionType = None
    ds.EchoTime = None
    ds.RepetitionTime = None
    ds.EchoTrainLength = None
    ds.AcquisitionNumber = None


def voi_lut(ds, window: tuple[float, float]) -> None:
    ds.WindowCenter = ds_number(window[0])
    ds.WindowWidth = ds_number(window[1])


def sop_common(ds, original, sop_class: str, sop_uid: str, date: str, time: str) -> None:
    """SOP Common module (and the input's character set, which copied names are in)."""
    if "SpecificCharacterSet" in original:
        ds.SpecificCharacterSet = original.SpecificCharacterSet
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time


def ds_number(value: float) -> str:
    """A DS (decimal string) value of at most 16 characters."""
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"[:16]
