"""Plan a prediction before anything is translated or written: inputs -> outputs, all checks.

``plan_prediction`` needs no model, only the run's settings (``Config``) and
the generator's total stride (a number), so every rule below is tested
without one. It finds every input (``find_prediction_inputs``: 2-D slices are
read and checked, volume headers are checked), checks what can be checked
before a voxel is read, names every output, and refuses what would go
wrong later:

- geometry: every slice the model will see (a volume's slice after
  reorientation, ``FoundVolume.slice_shape``) at least ``MIN_SIDE`` pixels a
  side and small enough for one forward pass at this stride;
- units and modalities: 8-bit CT for a run trained on HU (and back), CT
  volumes for a run that never saw HU, ``--format`` png/npy for volumes;
- outputs: the output folder writable, no two inputs sharing an output, no
  output on an input (nor a series folder holding one, nor an output inside
  a series folder), an existing output only with ``overwrite``.

Without ``on_bad`` the first bad input raises ``VAEGANError``; with it, a bad
input is handed to ``on_bad`` and left out of the plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from keras_vaegan.data import readers, units, volumes
from keras_vaegan.data.volume import FoundVolume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.translate import (
    check_translatable,
    direction_modalities,
    input_map,
    output_map,
    volume_input_check,
    volume_output_map,
)
from keras_vaegan.io.figures import OVERVIEW_NAME
from keras_vaegan.io.paths import check_output_folder, real_path

__all__ = ["FORMATS", "PredictionInputs", "PredictionPlan", "SliceJob", "VolumeJob",
           "check_options", "find_prediction_inputs", "plan_prediction"]

FORMATS = ("same", "png", "npy")


@dataclass
class PredictionInputs:
    """What lies under the input path: 2-D slices read and checked, volumes found (headers)."""

    root: str
    modality: str  # the modality read: 'mri' or 'ct'
    slices: list[readers.Slice]
    volumes: list[FoundVolume]
    every_input: set[str]  # real path of every image file under root, bad ones too


@dataclass
class SliceJob:
    """One 2-D input slice, how it maps to model units, and where its output goes."""

    piece: readers.Slice
    input_map: units.IntensityMap
    output: str
    std_output: str | None


@dataclass
class VolumeJob:
    """One input volume and where its output (a NIfTI file or a DICOM series folder) goes."""

    found: FoundVolume
    output: str
    std_output: str | None


@dataclass
class PredictionPlan:
    """Everything ``predict`` will do, decided before the model runs."""

    input_path: str
    output_dir: str
    direction: str
    samples: int
    out_units: str  # units of the written target modality ('hu', 'percentile', 'uint8')
    output_map: units.IntensityMap
    slices: list[SliceJob]
    volumes: list[VolumeJob]
    overview: str

    @property
    def in_modality(self) -> str:
        return direction_modalities(self.direction)[0]

    @property
    def out_modality(self) -> str:
        return direction_modalities(self.direction)[1]

    @property
    def outputs(self) -> list[str]:
        """Every output path (files, series folders), in writing order, the overview last."""
        jobs = [*self.slices, *self.volumes]
        return [p for job in jobs for p in (job.output, job.std_output) if p] + [self.overview]

    @property
    def total_slices(self) -> int:
        """Slices to translate (volume slices counted from the headers), for progress."""
        return len(self.slices) + sum(job.found.slice_count for job in self.volumes)


def check_options(direction: str, fmt: str, samples, batch_size=1) -> tuple[int, int]:
    """Refuse an unknown direction or format and a samples / batch size that is no count."""
    direction_modalities(direction)
    if fmt not in FORMATS:
        raise VAEGANError(None, f"unknown output format '{fmt}' (for 2-D slices: "
                                f"{', '.join(FORMATS)})")
    for name, value in (("samples", samples), ("batch size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise VAEGANError(None, f"{name} must be a whole number >= 1, got {value}")
    return int(samples), int(batch_size)


def find_prediction_inputs(input_path: str | os.PathLike, direction: str = "mri2ct",
                           fmt: str = "same", on_bad: readers.BadFileHandler | None = None
                           ) -> PredictionInputs:
    """Every input under ``input_path``: slices read and checked, volume headers checked.

    In SynthRAD-style subject folders only the images named for the input
    role are inputs (``mr`` for mri2ct, ``ct`` for ct2mri).
    """
    in_modality = direction_modalities(direction)[0]
    root = os.fspath(input_path)
    files, found = volumes.find_inputs(root, in_modality, on_bad=on_bad)
    if os.path.isdir(root):
        files, found = _input_role_only(root, files, found, in_modality)
    if found and fmt != "same":
        raise VAEGANError(found[0].path, f"--format {fmt} is for 2-D slices; volumes are "
                                         "written like their input (NIfTI or DICOM): use "
                                         "--format same")
    pieces = []
    for path in files:
        try:
            pieces.append(readers.read_slice(path, in_modality))
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
    if not pieces and not found:
        raise VAEGANError(root, "no readable images (every image file was bad)")
    every_input = {real_path(path) for path in readers.find_images(root)}
    return PredictionInputs(root, in_modality, pieces, found, every_input)


def plan_prediction(inputs: PredictionInputs | str | os.PathLike, output_dir: str | os.PathLike,
                    *, config, stride: int, direction: str = "mri2ct", fmt: str = "same",
                    samples: int = 1, overwrite: bool = False,
                    on_bad: readers.BadFileHandler | None = None) -> PredictionPlan:
    """Inputs (a path, or ``find_prediction_inputs``'s result) -> the plan; writes nothing.

    ``config`` is the run's settings (units it was trained on), ``stride``
    the generator's total stride (slices are padded to a multiple of it).
    """
    samples = check_options(direction, fmt, samples)[0]
    output_dir = os.fspath(output_dir)
    check_output_folder(output_dir)
    if not isinstance(inputs, PredictionInputs):
        inputs = find_prediction_inputs(inputs, direction, fmt, on_bad)
    in_modality, out_modality = direction_modalities(direction)
    slice_maps = _translatable_slices(inputs.slices, in_modality, config, stride, on_bad)
    found = _translatable_volumes(inputs.volumes, stride, samples, on_bad)
    if not slice_maps and not found:
        raise VAEGANError(inputs.root, "no images this run can translate")
    out_units, map_out = output_map(out_modality, config)
    if found:
        volume_input_check(in_modality, config, found[0].path)
        volume_output_map(out_modality, config, found[0].path)
    names = volumes.input_names(inputs.root, [piece.path for piece, _ in slice_maps], found)
    overview = os.path.join(output_dir, OVERVIEW_NAME)
    taken: dict[str, str] = {os.path.normcase(overview).lower(): "the overview image"}
    slice_jobs = _plan_slice_outputs(output_dir, slice_maps, names, out_units, fmt, samples,
                                     taken, inputs.every_input)
    volume_jobs = _plan_volume_outputs(output_dir, found, names, samples, taken,
                                       inputs.every_input)
    plan = PredictionPlan(inputs.root, output_dir, direction, samples, out_units, map_out,
                          slice_jobs, volume_jobs, overview)
    series_folders = {p for job in volume_jobs if job.found.kind == "dicom"
                      for p in (job.output, job.std_output) if p}
    _check_existing(plan.outputs, series_folders, overview, inputs.every_input, overwrite)
    return plan


def _translatable_slices(pieces: list[readers.Slice], modality: str, config, stride: int,
                         on_bad: readers.BadFileHandler | None
                         ) -> list[tuple[readers.Slice, units.IntensityMap]]:
    """Slices this run can translate, each with its map to model units (8-bit CT and the like)."""
    usable = []
    for piece in pieces:
        try:
            check_translatable(piece.path, piece.pixels.shape, stride)
            usable.append((piece, input_map(piece, modality, config)))
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
    return usable


def _translatable_volumes(found: list[FoundVolume], stride: int, samples: int,
                          on_bad: readers.BadFileHandler | None) -> list[FoundVolume]:
    """Volumes whose slices, as the model will see them (after reorientation), it can translate.

    With ``samples`` > 1 the volume must also be able to carry its
    uncertainty map (a DICOM input's is a Parametric Map, which needs the
    input's frame of reference and slice positions).
    """
    usable = []
    for volume in found:
        try:
            if volume.slice_shape is not None:
                check_translatable(volume.path, volume.slice_shape, stride)
            if samples > 1:
                volumes.check_std_writable(volume)
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
            continue
        usable.append(volume)
    return usable


def _input_role_only(root: str, files: list[str], found: list[FoundVolume], modality: str):
    """In SynthRAD-style subjects, skip the images named for another role (ct, mask, sct).

    ``SUBJECT/{mr,ct,mask}.nii.gz``: mri2ct translates ``mr`` only, ct2mri
    ``ct`` only; images with other names are all translated.
    """
    def keep(path: str) -> bool:
        relative = os.path.relpath(path, root)
        role = volumes.subject_role(relative) if relative != "." else None
        return role is None or role == modality

    kept_files = [f for f in files if keep(f)]
    kept = [s for s in found if keep(s.files[0] if s.kind == "nifti" else s.path)]
    if not kept_files and not kept:
        raise VAEGANError(root, f"no {modality.upper()} images: files named for another role "
                                "(ct, mask, sct / mr) are skipped in subject folders")
    return kept_files, kept


def _claim(path: str, owner: str, taken: dict[str, str], inputs: set[str]) -> None:
    """Refuse an output name that another input also gets, or that is an input file."""
    key = os.path.normcase(path).lower()
    if key in taken:
        raise VAEGANError(owner, f"its output {path} would also be written for "
                                 f"{taken[key]}; rename one or use another --format")
    taken[key] = owner
    if real_path(path) in inputs:
        raise VAEGANError(path, "is an input and its output would overwrite it; write to an "
                                "output folder outside the input folder")


def _check_existing(outputs: list[str], series_folders: set[str], overview: str,
                    inputs: set[str], overwrite: bool) -> None:
    """Refuse outputs that exist (unless ``overwrite``), and the overview image on an input."""
    if real_path(overview) in inputs:
        raise VAEGANError(overview, "is an input and the overview image would overwrite it; "
                                    "write to an output folder outside the input folder")
    for path in outputs:
        if not os.path.lexists(path):
            continue
        if not overwrite:
            raise VAEGANError(path, "output exists; use --overwrite to replace it")
        if os.path.isdir(path) and path not in series_folders:
            raise VAEGANError(path, "output exists and is a folder; remove it or choose "
                                    "another output folder")
        if path in series_folders and not os.path.isdir(path):
            raise VAEGANError(path, "output series folder exists and is a file; remove it or "
                                    "choose another output folder")


def _plan_slice_outputs(output_dir: str, slice_maps: list, names: dict, out_units: str,
                        fmt: str, samples: int, taken: dict[str, str], inputs: set[str]
                        ) -> list[SliceJob]:
    """Output (and std) path of every input slice; refuses names that collide or hit an input."""
    jobs = []
    for piece, mapping in slice_maps:
        stem, ext = os.path.splitext(volumes.name_of(names, piece.path))
        ext = _output_extension(ext, fmt, out_units)
        output = os.path.join(output_dir, stem + ext)
        std_output = os.path.join(output_dir, f"{stem}_std{ext}") if samples > 1 else None
        for path in filter(None, (output, std_output)):
            _claim(path, piece.path, taken, inputs)
        jobs.append(SliceJob(piece, mapping, output, std_output))
    return jobs


def _plan_volume_outputs(output_dir: str, found: list[FoundVolume], names: dict,
                         samples: int, taken: dict[str, str], inputs: set[str]
                         ) -> list[VolumeJob]:
    """Output file (NIfTI) or series folder (DICOM) of every volume, and its ``_std`` twin."""
    jobs = []
    folders = []
    for volume in found:
        name = volumes.name_of(names, volume)
        if volume.kind == "nifti":
            ext = ".nii.gz" if name.lower().endswith(".nii.gz") else ".nii"
            stem = name[: -len(ext)]
            output = os.path.join(output_dir, name)
            std_output = os.path.join(output_dir, f"{stem}_std{ext}") if samples > 1 else None
        else:
            output = os.path.join(output_dir, name)
            std_output = os.path.join(output_dir, f"{name}_std") if samples > 1 else None
            folders.extend(filter(None, (output, std_output)))
        for path in filter(None, (output, std_output)):
            _claim(path, volume.path, taken, inputs)
        jobs.append(VolumeJob(volume, output, std_output))
    for folder in folders:
        _check_series_folder(folder, taken, inputs)
    return jobs


def _check_series_folder(folder: str, taken: dict[str, str], inputs: set[str]) -> None:
    """A series folder replaces an earlier one of its name: no input, no other output, only DICOM."""
    inside = real_path(folder) + os.sep
    for path in inputs:
        if path.startswith(inside):
            raise VAEGANError(folder, f"output series folder holds an input ({path}); "
                                      "choose another output folder")
    for key, owner in taken.items():
        if key.startswith(os.path.normcase(folder).lower() + os.sep):
            raise VAEGANError(owner, f"its output {key} would lie inside the DICOM series "
                                     f"folder {folder}; rename one")
    if os.path.isdir(folder):
        for _, _, files in os.walk(folder):
            if any(not f.lower().endswith(".dcm") for f in files):
                raise VAEGANError(folder, "output series folder exists and holds files that "
                                          "are not DICOM; choose another output folder")


def _output_extension(ext: str, fmt: str, out_units: str) -> str:
    if fmt != "same":
        return "." + fmt
    if ext.lower() in (".jpg", ".jpeg") and out_units != "uint8":
        return ".png"  # JPEG holds 8-bit only; HU / MRI intensities need 16-bit
    return ext
