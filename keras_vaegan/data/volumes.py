"""Medical volumes (NIfTI files, DICOM series) as stacks of axial slices in file units.

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

``find_inputs`` sorts what lies under a path into 2-D slice files and
volume sources (a NIfTI file, or one DICOM series: files grouped by
SeriesInstanceUID); ``read_volume`` reads one source. pydicom and nibabel are
the ``[medical]`` extra, imported only here (and in ``dicom``/``nifti``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from keras_vaegan.data import readers
from keras_vaegan.data.units import normalise_modality
from keras_vaegan.errors import VAEGANError

# canonical [slice, row, col] axes as directions in DICOM patient coordinates (LPS):
# slices towards S (+z), rows towards P (+y), columns towards L (+x)
CANONICAL_LPS = ((2, 1), (1, 1), (0, 1))  # (world axis, sign) per canonical axis
MEDICAL_EXTRA = "pip install 'keras-vaegan[medical]'"
MAX_VOXELS = 2 ** 28  # 268,435,456 voxels (1 GiB as float32, e.g. 1024 slices of 512x512);
# bigger volumes are refused from their headers, before any voxel is read


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips between a file's array order and [slice, row, col].

    Canonical axis ``i`` is source axis ``axes[i]``, reversed where
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

    def to_source(self, array: np.ndarray) -> np.ndarray:
        out = array
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.axes)))

    @classmethod
    def from_directions(cls, directions: np.ndarray) -> "Reorientation":
        """From a 3x3 matrix whose column ``j`` is the LPS direction of source axis ``j``.

        Each canonical axis takes the source axis best aligned with its world
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
class VolumeSource:
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
    source_shape: tuple[int, ...]  # array shape in the file (NIfTI: as stored, trailing 1s kept)
    spacing_mm: tuple[float, float, float]  # canonical (slice, row, col) voxel size
    modality: str  # "mri" | "ct"
    nifti_image: object | None = None  # nibabel image: header, affine, codes
    dicom_slices: list | None = None  # dicom.DicomSlice per source slice, in source order

    def to_source(self, canonical: np.ndarray) -> np.ndarray:
        """An array shaped like ``voxels`` -> the file's array order and shape."""
        canonical = np.asarray(canonical)
        if canonical.shape != self.voxels.shape:
            raise VAEGANError(self.path, f"volume of shape {canonical.shape} does not match "
                                         f"the input's {self.voxels.shape}")
        return self.reorient.to_source(canonical).reshape(self.source_shape)


# --- finding inputs -------------------------------------------------------------------------


def find_inputs(root: str | os.PathLike, modality: str | None = None,
                on_bad: readers.BadFileHandler | None = None
                ) -> tuple[list[str], list[VolumeSource]]:
    """Everything under ``root``: (2-D slice files, volume sources), each sorted.

    Volume headers are checked here, before anything is written: a NIfTI
    file's dimensions, data type, size and length (a file cut short fails
    now), and DICOM headers (files are grouped into series; a file that is
    not DICOM, a DICOM image without pixel data or with pixel data cut
    short, fails now). In a folder, non-image DICOM objects (RT structure
    sets, reports, ...) and, with ``modality``, series of the other modality
    (the planning CT beside the MR) are skipped. A bad volume file raises,
    or with ``on_bad`` is handed to it and left out (slice files are not
    read here).
    """
    root = os.fspath(root)
    modality = None if modality is None else normalise_modality(modality)
    files = readers.find_images(root)
    slices, niftis, dicoms = [], [], []
    for path in files:
        kind = readers.file_kind(path)
        (slices if kind == "slice" else niftis if kind == "nifti" else dicoms).append(path)
    sources = []
    for path in niftis:
        try:
            sources.append(nifti_source(path))
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
    if dicoms:
        from keras_vaegan.data import dicom

        sources.extend(dicom.group_series(dicoms, single=os.path.isfile(root),
                                          modality=modality, on_bad=on_bad))
    if not slices and not sources:
        if on_bad is not None and (niftis or dicoms):
            raise VAEGANError(root, "no readable images (every image file was bad)")
        wanted = {"mri": "MR", "ct": "CT", None: "CT or MR"}[modality]
        raise VAEGANError(root, f"no images found (only DICOM objects that are not {wanted} "
                                "images)")
    sources.sort(key=lambda s: (s.files[0], s.series_number or 0))
    return slices, sources


def nifti_source(path: str) -> VolumeSource:
    """A NIfTI file after a look at its header (dimensions, data type)."""
    from keras_vaegan.data import nifti

    slices, rows, cols = nifti.check_header(path)
    return VolumeSource(kind="nifti", files=[path], path=path, slice_count=slices,
                        slice_shape=(rows, cols))


def read_volume(source: VolumeSource | str | os.PathLike, modality: str) -> Volume:
    """Read a volume source (or a NIfTI file / DICOM file or series folder) in file units."""
    modality = normalise_modality(modality)
    if not isinstance(source, VolumeSource):
        slices, sources = find_inputs(source, modality)
        if slices or len(sources) != 1:
            raise VAEGANError(source, f"expected one volume, found {len(sources)} volume(s) "
                                      f"and {len(slices)} 2-D slice(s)")
        source = sources[0]
    if source.kind == "nifti":
        from keras_vaegan.data import nifti

        return nifti.read_nifti(source.files[0], modality)
    from keras_vaegan.data import dicom

    return dicom.read_series(source, modality)


def write_volume(path: str, volume: Volume, voxels: np.ndarray, modality: str, role: str = "mean",
                 study_uid: str | None = None, description: str | None = None) -> list[str]:
    """Write ``voxels`` (canonical, output units) on ``volume``'s grid, in its format.

    NIfTI: a file at ``path``; DICOM: a series folder at ``path``.
    ``modality`` is what the voxels are ('ct' in HU, or 'mri'); ``role`` is
    'mean' or 'std' (an uncertainty map, in the same units). Returns the
    files written.
    """
    modality = normalise_modality(modality)
    if volume.kind == "nifti":
        from keras_vaegan.data import nifti

        nifti.write_nifti(path, volume, voxels, modality, role, description)
        return [path]
    from keras_vaegan.data import dicom

    return dicom.write_series(path, volume, voxels, modality, role, study_uid, description)


def input_names(root: str, slices: list[str], sources: list[VolumeSource]) -> dict:
    """A relative name for every input under ``root`` (output names, pairing keys).

    Slices and NIfTI files: their path relative to ``root`` (the file name
    when ``root`` is the file). A DICOM series: the folder holding it
    relative to ``root`` (``root``'s own name when the series is ``root``;
    the file's stem for a single file), with ``_series<N>`` appended when a
    folder holds several series.
    """
    root_is_file = os.path.isfile(root)
    names: dict = {}
    for path in slices:
        names[path] = os.path.basename(path) if root_is_file else os.path.relpath(path, root)
    per_folder: dict[str, list[VolumeSource]] = {}
    for source in sources:
        if source.kind == "nifti":
            path = source.files[0]
            names[id(source)] = (os.path.basename(path) if root_is_file
                                 else os.path.relpath(path, root))
            continue
        if root_is_file:
            names[id(source)] = _strip_extension(os.path.basename(source.files[0]))
            continue
        folder = os.path.dirname(source.files[0]) if len(source.files) == 1 else source.path
        per_folder.setdefault(folder, []).append(source)
    for folder, group in per_folder.items():
        relative = os.path.relpath(folder, root)
        if relative == ".":
            relative = os.path.basename(os.path.abspath(root)) or "series"
        for index, source in enumerate(group):
            if len(group) == 1:
                names[id(source)] = relative
            else:
                number = source.series_number
                numbers = [s.series_number for s in group]
                label = number if number is not None and numbers.count(number) == 1 else index + 1
                names[id(source)] = os.path.join(relative, f"series{label}")
    return names


SUBJECT_ROLES = {"mr": "mri", "mri": "mri", "ct": "ct", "sct": "sct", "mask": "mask"}


def subject_role(name: str) -> str | None:
    """'mri', 'ct', 'sct' or 'mask' for an image named like a SynthRAD subject's files.

    ``SUBJECT/mr.nii.gz`` -> 'mri', ``ct.nii.gz`` -> 'ct', ``mask.nii.gz``
    -> 'mask', ``sct.nii.gz`` (a synthetic CT) -> 'sct'; a DICOM folder of
    such a name counts too. Other names -> None.
    """
    return SUBJECT_ROLES.get(_strip_extension(os.path.basename(os.path.normpath(name))).lower())


def name_of(names: dict, item) -> str:
    """The name ``input_names`` gave a slice path or a VolumeSource."""
    return names[item] if isinstance(item, str) else names[id(item)]


def _strip_extension(name: str) -> str:
    lower = name.lower()
    for ext in (".nii.gz",) + readers.NIFTI_EXTENSIONS + readers.DICOM_EXTENSIONS + \
            readers.SLICE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def strip_extension(name: str) -> str:
    """``a/b.nii.gz`` -> ``a/b`` (any supported image extension)."""
    return os.path.join(os.path.dirname(name), _strip_extension(os.path.basename(name)))


def check_finite(path: str, voxels: np.ndarray) -> None:
    if not np.isfinite(voxels).all():
        raise VAEGANError(path, "volume has non-finite values (NaN or inf)")


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
