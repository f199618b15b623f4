"""Find medical volumes under a path and read or write them in their own format.

``find_inputs`` sorts what lies under a path into 2-D slice files and
volumes on disk (``FoundVolume``: a NIfTI file, or one DICOM series: files
grouped by SeriesInstanceUID); ``read_volume`` reads one, ``write_volume``
writes a result on its grid. pydicom and nibabel are the ``[medical]``
extra, imported only in the ``dicom_*`` modules, ``parametric_map`` and ``nifti``.
"""


from __future__ import annotations

import os

import numpy as np

from keras_vaegan.data import dicom_read, dicom_write, nifti, nifti_stream, parametric_map, readers
from keras_vaegan.data.units import normalise_modality
from keras_vaegan.data.volume import FoundVolume, Volume, check_finite
from keras_vaegan.errors import VAEGANError

# --- finding inputs -------------------------------------------------------------------------


def find_inputs(root: str | os.PathLike, modality: str | None = None,
                on_bad: readers.BadFileHandler | None = None
                ) -> tuple[list[str], list[FoundVolume]]:
    """Everything under ``root``: (2-D slice files, volume found), each sorted.

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
    found = []
    for path in niftis:
        try:
            found.append(found_nifti(path))
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
    if dicoms:
        found.extend(dicom_read.group_series(dicoms, single=os.path.isfile(root),
                                             modality=modality, on_bad=on_bad))
    if not slices and not found:
        if on_bad is not None and (niftis or dicoms):
            raise VAEGANError(root, "no readable images (every image file was bad)")
        wanted = {"mri": "MR", "ct": "CT", None: "CT or MR"}[modality]
        raise VAEGANError(root, f"no images found (only DICOM objects that are not {wanted} "
                                "images)")
    found.sort(key=lambda s: (s.files[0], s.series_number or 0))
    return slices, found


def found_nifti(path: str) -> FoundVolume:
    """A NIfTI file after a look at its header (dimensions, data type)."""
    slices, rows, cols = nifti.check_header(path)
    return FoundVolume(kind="nifti", files=[path], path=path, slice_count=slices,
                        slice_shape=(rows, cols))


def read_volume(volume: FoundVolume | str | os.PathLike, modality: str) -> Volume:
    """Read a found volume (or a NIfTI file / DICOM file or series folder) in file units."""
    modality = normalise_modality(modality)
    if not isinstance(volume, FoundVolume):
        slices, found = find_inputs(volume, modality)
        if slices or len(found) != 1:
            raise VAEGANError(volume, f"expected one volume, found {len(found)} volume(s) "
                                      f"and {len(slices)} 2-D slice(s)")
        volume = found[0]
    if volume.kind == "nifti":
        return nifti.read_nifti(volume.files[0], modality)
    return dicom_read.read_series(volume, modality)


def write_volume(path: str, volume: Volume, voxels: np.ndarray, modality: str, role: str = "mean",
                 study_uid: str | None = None, description: str | None = None) -> list[str]:
    """Write ``voxels`` (canonical, output units) on ``volume``'s grid, in its format.

    NIfTI: a file at ``path``; DICOM: a series folder at ``path`` (for
    'std', a folder holding one Parametric Map, not a CT/MR series).
    ``modality`` is what the voxels are ('ct' in HU, or 'mri'); ``role`` is
    'mean' or 'std' (an uncertainty map, in the same units). Returns the
    files written.
    """
    modality = normalise_modality(modality)
    if volume.kind == "nifti":
        nifti.write_nifti(path, volume, voxels, modality, role, description)
        return [path]
    return dicom_write.write_series(path, volume, voxels, modality, role, study_uid, description)


def open_volume(found: FoundVolume, modality: str) -> Volume:
    """A found volume to translate: streamed from its file where it can be, else read whole.

    A NIfTI file whose slices are its last array axis (an axial file; see
    ``nifti_stream.streamable``) is opened lazily and checked for NaN/inf in
    one pass: its voxels are read again a batch at a time while they are
    translated, and ``slab_writer`` writes the result as it comes, so
    nothing volume-sized is held. Other volumes (DICOM series, sagittal or
    coronal NIfTI) are read whole (``read_volume``).
    """
    modality = normalise_modality(modality)
    if found.kind == "nifti":
        volume = nifti_stream.open_nifti(found.files[0], modality)
        if nifti_stream.streamable(volume):
            try:
                check_finite(volume.path, volume.voxels)
            except BaseException:
                volume.voxels.close()
                raise
            return volume
        volume.voxels.close()
    return read_volume(found, modality)


def streams(volume: Volume) -> bool:
    """Whether ``volume`` was opened to stream (``open_volume``): write it with ``slab_writer``."""
    return isinstance(volume.voxels, nifti_stream.LazyVoxels)


def slab_writer(path: str, volume: Volume, modality: str, role: str = "mean",
                description: str | None = None) -> nifti_stream.NiftiSlabWriter:
    """A writer of a streamed volume's result, slab by slab in its file's order (NIfTI only)."""
    return nifti_stream.NiftiSlabWriter(path, volume, normalise_modality(modality), role,
                                        description)


def check_std_writable(found: FoundVolume) -> None:
    """Refuse, before anything is written, an uncertainty map this input cannot get.

    A DICOM input's map is a Parametric Map: it needs highdicom (the
    ``[medical]`` extra) and the input's frame of reference and slice
    positions. A NIfTI input's ``_std`` file can always be written.
    """
    if found.kind == "dicom":
        parametric_map.check_writable(found)


def input_names(root: str, slices: list[str], found: list[FoundVolume]) -> dict:
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
    per_folder: dict[str, list[FoundVolume]] = {}
    for volume in found:
        if volume.kind == "nifti":
            path = volume.files[0]
            names[id(volume)] = (os.path.basename(path) if root_is_file
                                 else os.path.relpath(path, root))
            continue
        if root_is_file:
            names[id(volume)] = _strip_extension(os.path.basename(volume.files[0]))
            continue
        folder = os.path.dirname(volume.files[0]) if len(volume.files) == 1 else volume.path
        per_folder.setdefault(folder, []).append(volume)
    for folder, group in per_folder.items():
        relative = os.path.relpath(folder, root)
        if relative == ".":
            relative = os.path.basename(os.path.abspath(root)) or "series"
        for index, volume in enumerate(group):
            if len(group) == 1:
                names[id(volume)] = relative
            else:
                number = volume.series_number
                numbers = [s.series_number for s in group]
                label = number if number is not None and numbers.count(number) == 1 else index + 1
                names[id(volume)] = os.path.join(relative, f"series{label}")
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
    """The name ``input_names`` gave a slice path or a FoundVolume."""
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


