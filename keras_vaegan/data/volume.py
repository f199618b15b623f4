"""A volume and its geometry: the canonical [slice, row, col] order and the way back to the file.

A ``Volume`` holds its voxels as float32 ``[slices, rows, cols]`` in file
units (HU for CT: DICOM rescale slope/intercept and NIfTI ``scl_slope`` are
applied) in one canonical orientation, whatever the file's own axis order:

- slices run inferior -> superior (the axis closest to the patient's S/I axis),
- rows run anterior -> posterior (anterior at the top of a slice),
- columns run from the patient's right to left (radiological display),

which is how a standard axial DICOM series is stored and how the phantom is
drawn. A model trained on one orientation thus sees every file the same way.
The volume keeps what is needed to write a result back on the exact input
grid: the permutation/flips to the file's array order (``Reorientation``),
and the NIfTI image (header, affine) or the DICOM datasets per slice.
The readers (``nifti``, ``dicom``) build these; ``volumes`` finds and
dispatches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from keras_vaegan.data import readers
from keras_vaegan.errors import VAEGANError

# canonical [slice, row, col] axes as directions in DICOM patient coordinates (LPS):
# slices towards S (+z), rows towards P (+y), columns towards L (+x)
CANONICAL_LPS = ((2, 1), (1, 1), (0, 1))  # (world axis, sign) per canonical axis
OUTPUT_DESCRIPTIONS = {  # what every written result says it is (DICOM LO: at most 64 characters)
    ("ct", "mean"): "synthetic CT from MRI (keras-vaegan), not for diagnosis",
    ("ct", "std"): "std of synthetic CT, HU (keras-vaegan), not for diagnosis",
    ("mri", "mean"): "synthetic MR from CT (keras-vaegan), not for diagnosis",
    ("mri", "std"): "std of synthetic MR (keras-vaegan), not for diagnosis",
}
MEDICAL_EXTRA = "pip install 'keras-vaegan[medical]'"
MAX_VOXELS = 2 ** 28  # 268,435,456 voxels (1 GiB as float32, e.g. 1024 slices of 512x512);
# bigger volumes are refused from their headers, before any voxel is read


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips between a file's array order and [slice, row, col].

    Canonical axis ``i`` is file axis ``axes[i]``, reversed where
    ``flips[i]``. Both directions are exact index shuffles (no resampling).
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.axes)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(out)

    def to_file_order(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.file_order_view(array))

    def file_order_view(self, array: np.ndarray) -> np.ndarray:
        """``to_file_order`` as a view (no copy), for writers that go through it slab by slab."""
        out = array
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.transpose(out, np.argsort(self.axes))

    @classmethod
    def from_directions(cls, directions: np.ndarray) -> "Reorientation":
        """From a 3x3 matrix whose column ``j`` is the LPS direction of file axis ``j``.

        Each canonical axis takes the file axis best aligned with its world
        axis (the permutation with the largest total |cosine|, so oblique
        acquisitions pick the nearest one).
        """
        directions = np.asarray(directions, dtype=np.float64)
        norms = np.linalg.norm(directions, axis=0)
        if not np.all(np.isfinite(directions)) or np.any(norms < 1e-12):
            return cls()
        unit = directions / norms
        best, best_score = None, -1.0
        for perm in permutations(range(3)):
            score = sum(abs(unit[CANONICAL_LPS[c][0], perm[c]]) for c in range(3))
            if score > best_score + 1e-9:
                best, best_score = perm, score
        flips = tuple(bool(unit[CANONICAL_LPS[c][0], best[c]] * CANONICAL_LPS[c][1] < 0)
                      for c in range(3))
        return cls(tuple(int(a) for a in best), flips)  # type: ignore[arg-type]


@dataclass
class FoundVolume:
    """A volume found on disk, not read yet: a NIfTI file or one DICOM series."""

    kind: str  # "nifti" | "dicom"
    files: list[str]  # the NIfTI file, or the series' files
    path: str  # what messages name: the file, or the folder holding the series
    slice_count: int = 0  # slices expected (from the headers), for progress
    slice_shape: tuple[int, int] | None = None  # (rows, cols) of a canonical axial slice
    series_uid: str | None = None
    series_number: int | None = None
    headers: list = field(default_factory=list, repr=False)  # DICOM headers read while grouping


@dataclass
class Volume:
    """A volume in file units, canonical [slices, rows, cols], and how to write it back."""

    voxels: np.ndarray  # float32 [slices, rows, cols]: HU for CT
    kind: str  # "nifti" | "dicom"
    path: str  # the NIfTI file or the DICOM series' folder (for messages)
    files: list[str]
    reorient: Reorientation
    file_shape: tuple[int, ...]  # array shape in the file (NIfTI: as stored, trailing 1s kept)
    spacing_mm: tuple[float, float, float]  # canonical (slice, row, col) voxel size
    modality: str  # "mri" | "ct"
    nifti_image: object | None = None  # nibabel image: header, affine, codes
    dicom_slices: list | None = None  # dicom_geometry.DicomSlice per file slice, in file order

    def to_file_order(self, canonical: np.ndarray) -> np.ndarray:
        """An array shaped like ``voxels`` -> the file's array order and shape."""
        return np.ascontiguousarray(self.file_order_view(canonical))

    def file_order_view(self, canonical: np.ndarray) -> np.ndarray:
        """``to_file_order`` as a view of ``canonical`` (no copy of the volume)."""
        canonical = np.asarray(canonical)
        if canonical.shape != self.voxels.shape:
            raise VAEGANError(self.path, f"volume of shape {canonical.shape} does not match "
                                         f"the input's {self.voxels.shape}")
        return self.reorient.file_order_view(canonical).reshape(self.file_shape)


def check_finite(path: str, voxels) -> None:
    """Refuse NaN or inf voxels; checked a slab at a time (no mask as big as the volume).

    ``voxels`` is an array, or voxels read lazily (``slabs(size)``, as
    ``nifti_stream`` reads them): then this is one pass through the file.
    """
    if not isinstance(voxels, np.ndarray) and hasattr(voxels, "slabs"):
        for _, _, slab in voxels.slabs():
            if not np.isfinite(slab).all():
                raise VAEGANError(path, "volume has non-finite values (NaN or inf)")
        return
    step = max(1, _FINITE_CHUNK // max(1, voxels[:1].size))
    for start in range(0, len(voxels), step):
        if not np.isfinite(voxels[start:start + step]).all():
            raise VAEGANError(path, "volume has non-finite values (NaN or inf)")


_FINITE_CHUNK = 1 << 20  # voxels checked for NaN/inf at a time


def check_volume_size(path: str, shape: tuple[int, ...]) -> None:
    """Refuse a volume of more than ``MAX_VOXELS`` voxels (from its header, before reading)."""
    count = int(np.prod([int(side) for side in shape], dtype=np.int64))
    if count > MAX_VOXELS:
        raise VAEGANError(path, f"volume is {'x'.join(str(int(s)) for s in shape)} = "
                                f"{count:,} voxels, more than the limit of {MAX_VOXELS:,}; "
                                "crop or split it")


def check_slice_size(path: str, rows: int, cols: int) -> None:
    if min(rows, cols) < readers.MIN_SIDE:
        raise VAEGANError(path, f"slices are {cols}x{rows}, smaller than "
                                f"{readers.MIN_SIDE}x{readers.MIN_SIDE}")
    if max(rows, cols) > readers.MAX_SIDE:
        raise VAEGANError(path, f"slices are {cols}x{rows}, bigger than "
                                f"{readers.MAX_SIDE}x{readers.MAX_SIDE}")
