"""Where the slices of a DICOM series lie, from their headers alone (no pixel data).

A series' layout is found before anything is decoded or written, so that
every refusal that geometry can cause happens up front:

- every slice must have an ImageOrientationPatient (top level, or in the
  enhanced functional groups); an image without one (e.g. an Enhanced MR
  without functional groups, pydicom-data's ``emri_small.dcm``) is
  **refused**: its slice axis is unknown, and a derived CT/MR image needs
  Type 1 plane orientation, position and spacing that we would have to
  invent. Nothing is ever invented: a slice without ImagePositionPatient or
  PixelSpacing is ordered by InstanceNumber and written without them, with
  a warning;
- all slices of a series share one orientation and one size;
- no two slices lie at the same position along the normal.

**Which slices the model sees.** A stack is resliced into canonical axial
slices (``Reorientation``, exact index shuffles) when that gives slices of
at least ``MIN_SIDE`` pixels. A non-axial series of fewer than ``MIN_SIDE``
slices (a single sagittal or coronal slice such as pydicom-data's
``MR2_J2KR.dcm``, or a short localiser stack) keeps its own plane and its
own in-plane axes, as it is displayed: reslicing it across the slice axis
would give strips one slice thick, which no 2-D model can translate.
``FoundVolume.slice_shape`` is the shape of the slice the model sees.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from keras_vaegan.data import readers
from keras_vaegan.data.volume import Reorientation
from keras_vaegan.errors import VAEGANError

POSITION_TOLERANCE_MM = 1e-3
ORIENTATION_TOLERANCE = 1e-3


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

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class SeriesLayout:
    """A series' slices in order along the normal and how the model sees them."""

    slices: list[DicomSlice]  # sorted along the normal (or by InstanceNumber)
    file_shape: tuple[int, int, int]  # (slices, rows, cols) as stored
    reorient: Reorientation
    spacing_mm: tuple[float, float, float]  # file order: (between slices, rows, cols)

    @property
    def model_slice_shape(self) -> tuple[int, int]:
        """(rows, cols) of one canonical slice: what the model translates."""
        axes = self.reorient.axes
        return self.file_shape[axes[1]], self.file_shape[axes[2]]

    @property
    def model_slice_count(self) -> int:
        return self.file_shape[self.reorient.axes[0]]


def frames(dataset) -> int:
    try:
        return max(1, int(dataset.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def series_layout(path: str, files: list[str], headers: list) -> SeriesLayout:
    """The layout of one series from its headers; refuses what cannot be translated.

    ``path`` names the series in messages. Raises ``VAEGANError`` for mixed
    sizes or orientations, missing orientation, two slices at one position.
    """
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise VAEGANError(path, f"series mixes image sizes {sorted(sizes)}; give one series "
                                "of equal slices")
    slices: list[DicomSlice] = []
    for file, dataset in zip(files, headers):
        slices.extend(file_slices(file, dataset))
    orientation = slices[0].orientation
    for item in slices:
        if np.abs(item.orientation - orientation).max() > ORIENTATION_TOLERANCE:
            raise VAEGANError(path, f"series mixes slice orientations "
                                    f"({os.path.basename(slices[0].path)} is "
                                    f"{_plane(orientation)}, {os.path.basename(item.path)} is "
                                    f"{_plane(item.orientation)}); give one stack")
    order, between = slice_order(path, slices, slices[0].normal)
    slices = [slices[i] for i in order]
    rows, cols = sizes.pop()
    shape = (len(slices), rows, cols)
    row_mm, col_mm = slices[0].pixel_spacing or (1.0, 1.0)
    spacing = (float(between or _spacing_between(slices[0]) or 1.0), float(row_mm), float(col_mm))
    return SeriesLayout(slices, shape, model_reorientation(orientation, len(slices)), spacing)


def model_reorientation(orientation: np.ndarray, count: int) -> Reorientation:
    """Canonical axial reslicing, unless it would cut a short non-axial stack into strips."""
    normal = np.cross(orientation[:3], orientation[3:])
    full = Reorientation.from_directions(np.column_stack([normal, orientation[3:],
                                                          orientation[:3]]))
    if full.axes[0] != 0 and count < readers.MIN_SIDE:
        return Reorientation()  # the series' own plane, as stored and displayed
    return full


def _plane(orientation: np.ndarray) -> str:
    normal = np.abs(np.cross(orientation[:3], orientation[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def _spacing_between(item: DicomSlice) -> float | None:
    return positive_float(item.dataset.get("SpacingBetweenSlices")) or item.slice_thickness


def file_slices(path: str, dataset) -> list[DicomSlice]:
    """Where each frame of a file lies: top-level attributes, or enhanced functional groups."""
    count = frames(dataset)
    instance = _int(dataset.get("InstanceNumber"))
    base_iop = floats(dataset.get("ImageOrientationPatient"), 6)
    base_ipp = floats(dataset.get("ImagePositionPatient"), 3)
    base_spacing = floats(dataset.get("PixelSpacing"), 2)
    base_thickness = dataset.get("SliceThickness")
    slices = []
    for index in range(count):
        iop, spacing, thickness = base_iop, base_spacing, base_thickness
        ipp = base_ipp if index == 0 else None
        for group in (shared_group(dataset), per_frame_group(dataset, index)):  # per-frame wins
            iop = _functional(group, "PlaneOrientationSequence", "ImageOrientationPatient", 6, iop)
            ipp = _functional(group, "PlanePositionSequence", "ImagePositionPatient", 3, ipp)
            spacing = _functional(group, "PixelMeasuresSequence", "PixelSpacing", 2, spacing)
            measures = first_item(group, "PixelMeasuresSequence")
            if measures is not None and measures.get("SliceThickness") not in (None, ""):
                thickness = measures.SliceThickness
        if iop is None:
            raise VAEGANError(path, "DICOM image has no ImageOrientationPatient (nor plane "
                                    "orientation in functional groups): its slice axis is "
                                    "unknown and a derived image could not be placed in the "
                                    "patient; convert it to NIfTI with a known orientation")
        if count > 1 and ipp is None and base_ipp is not None:
            step = positive_float(dataset.get("SpacingBetweenSlices")) or \
                positive_float(base_thickness)
            if step:  # old-style multi-frame: frames stacked along the normal
                ipp = base_ipp + index * step * np.cross(iop[:3], iop[3:])
        slices.append(DicomSlice(
            dataset=dataset, path=path, frame=index if count > 1 else None, position=ipp,
            orientation=iop, pixel_spacing=None if spacing is None else (float(spacing[0]),
                                                                         float(spacing[1])),
            slice_thickness=positive_float(thickness),
            instance_number=(index + 1) if count > 1 else instance))
    return slices


def slice_order(folder: str, slices: list[DicomSlice], normal: np.ndarray
                ) -> tuple[list[int], float | None]:
    """Order along the slice normal (InstanceNumber if a position is missing), and the spacing."""
    if len(slices) == 1:
        return [0], None
    if all(s.position is not None for s in slices):
        along = np.array([float(np.dot(s.position, normal)) for s in slices])
        order = sorted(range(len(slices)), key=lambda i: along[i])
        steps = np.diff(along[order])
        if (steps < POSITION_TOLERANCE_MM).any():
            first = int(np.argmax(steps < POSITION_TOLERANCE_MM))
            raise VAEGANError(folder, f"two slices at the same position ({along[order][first]:.3f} "
                                      f"mm along the normal: {slices[order[first]].path} and "
                                      f"{slices[order[first + 1]].path}); the folder may hold "
                                      "two acquisitions of one series")
        return order, float(np.median(steps))
    key = [(s.instance_number if s.instance_number is not None else 10 ** 9, s.path, s.frame or 0)
           for s in slices]
    return sorted(range(len(slices)), key=lambda i: key[i]), None


def per_frame_group(dataset, index: int):
    groups = dataset.get("PerFrameFunctionalGroupsSequence")
    return groups[index] if groups is not None and index < len(groups) else None


def shared_group(dataset):
    groups = dataset.get("SharedFunctionalGroupsSequence")
    return groups[0] if groups else None


def first_item(item, name: str):
    if item is None:
        return None
    sequence = item.get(name)
    return sequence[0] if sequence else None


def floats(value, count: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.size == count and np.isfinite(values).all() else None


def _functional(group, sequence: str, name: str, count: int, default):
    """A numeric attribute from a functional group's sequence item, else ``default``."""
    item = first_item(group, sequence)
    values = None if item is None else floats(item.get(name), count)
    return default if values is None else values


def positive_float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _int(value) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None
