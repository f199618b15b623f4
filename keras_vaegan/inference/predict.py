"""Translate whole slices and volumes (MRI -> CT in HU, or CT -> MRI) with a trained run.

Every slice is translated at its native resolution: padded with -1 (air) up
to a multiple of the generator's total stride, translated, and cropped back,
so the output has the input's height and width. ``samples > 1`` draws the
latent ``K`` times and returns the mean and the per-pixel standard deviation
(the model's own uncertainty).

``predict`` reads and checks every 2-D input and every volume header before it
writes anything, converts them to model units with the units the run was
trained on, and writes the outputs in the target modality's units (HU for
CT) through the atomic writers, one output per input with the same name,
plus an ``overview.png``. It never writes over an input, and over an earlier
output only with ``overwrite``.
A volume (NIfTI file, DICOM series) is translated axial slice by axial slice
(``translate_volume``) and written back on its own grid: NIfTI in, NIfTI
out; DICOM series in, a derived DICOM series out.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np

from keras_vaegan.data import readers, units, volumes, writers
from keras_vaegan.data.volume import FoundVolume, Volume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.runs import LoadedRun, find_newest_run, load_run
from keras_vaegan.io.figures import OVERVIEW_NAME, write_overview_png
from keras_vaegan.io.paths import check_output_folder, real_path

__all__ = ["DIRECTIONS", "FORMATS", "LoadedRun", "TranslatedVolume", "find_newest_run",
           "load_run", "predict", "translate_slice", "translate_slices", "translate_volume"]

DIRECTIONS = ("mri2ct", "ct2mri")
FORMATS = ("same", "png", "npy")
OVERVIEW_ROWS = 8
_CHUNK_BATCHES = 16  # batches translated (and held in memory) before their outputs are written
MAX_PASS_PIXELS = 2 ** 22  # pixels in one forward pass (padded): one 2048x2048 slice, or 16 of
# 512x512. On CPU the default generator needs about 1 GB per million pixels, so a bigger slice
# is refused and big slices go fewer to a batch than --batch-size.


def direction_modalities(direction: str) -> tuple[str, str]:
    if direction not in DIRECTIONS:
        raise VAEGANError(None, f"unknown direction '{direction}' (one of {', '.join(DIRECTIONS)})")
    return ("mri", "ct") if direction == "mri2ct" else ("ct", "mri")


# --- translation in model units ---------------------------------------------------------


def translate_slice(model, unit_image_2d: np.ndarray, direction: str = "mri2ct",
                    samples: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """One 2-D slice in [-1, 1] -> (translated mean, per-pixel std or None), same size."""
    return translate_slices(model, [unit_image_2d], direction, samples, batch_size=1)[0]


def translate_slices(model, images: Sequence[np.ndarray], direction: str = "mri2ct",
                     samples: int = 1, batch_size: int = 4,
                     on_done: Callable[[int], None] | None = None,
                     ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Translate 2-D slices in [-1, 1], batching slices of the same padded shape.

    Returns ``(mean, std)`` per slice in the input order, each cropped back to
    its slice's size; ``std`` is None for ``samples == 1`` (deterministic,
    ``z = mu``). ``on_done(n)`` is called after each batch with its size.
    """
    direction_modalities(direction)
    samples, batch_size = int(samples), int(batch_size)
    if samples < 1:
        raise VAEGANError(None, f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise VAEGANError(None, f"batch size must be >= 1, got {batch_size}")
    stride = int(model.total_stride)
    prepared = [_as_2d(image) for image in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(prepared):
        groups.setdefault(_padded_shape(image.shape, stride), []).append(index)

    results: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(prepared)
    for shape, indices in groups.items():
        check_slice_pixels(None, shape, stride)
        per_pass = max(1, min(batch_size, MAX_PASS_PIXELS // (shape[0] * shape[1])))
        for start in range(0, len(indices), per_pass):
            batch_indices = indices[start:start + per_pass]
            batch = np.stack([_pad(prepared[i], shape) for i in batch_indices])[..., None]
            mean, std = _translate_batch(model, batch, direction, samples)
            for row, i in enumerate(batch_indices):
                results[i] = (_crop(mean[row], prepared[i].shape),
                              None if std is None else _crop(std[row], prepared[i].shape))
            if on_done is not None:
                on_done(len(batch_indices))
    return results  # type: ignore[return-value]


def _translate_batch(model, batch: np.ndarray, direction: str, samples: int):
    inputs = keras.ops.convert_to_tensor(batch, dtype="float32")
    if samples == 1:
        out = model.translate(inputs, direction, sample=False)
        return keras.ops.convert_to_numpy(out)[..., 0].astype(np.float32), None
    draws = np.stack([keras.ops.convert_to_numpy(model.translate(inputs, direction, sample=True))
                      [..., 0].astype(np.float32) for _ in range(samples)])
    return draws.mean(axis=0), draws.std(axis=0)


def check_slice_pixels(path: str | None, shape: tuple[int, int], stride: int) -> None:
    """Refuse a slice bigger than one forward pass may be (``MAX_PASS_PIXELS``, padded)."""
    rows, cols = _padded_shape(tuple(shape), stride)
    if rows * cols > MAX_PASS_PIXELS:
        raise VAEGANError(path, f"slices of {shape[1]}x{shape[0]} pixels are too big to "
                                f"translate (at most {MAX_PASS_PIXELS:,} pixels after padding, "
                                "e.g. 2048x2048); crop or downsample them")


def _as_2d(image) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise VAEGANError(None, f"expected a 2-D slice, got shape {image.shape}")
    return image


def _padded_shape(shape: tuple[int, int], stride: int) -> tuple[int, int]:
    return tuple(-(-side // stride) * stride for side in shape)  # type: ignore[return-value]


def _pad(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pad evenly on both sides of each axis with air (-1)."""
    extra = [target - side for target, side in zip(shape, image.shape)]
    widths = [(e // 2, e - e // 2) for e in extra]
    return np.pad(image, widths, mode="constant", constant_values=units.AIR_UNIT)


def _crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    top = (image.shape[0] - shape[0]) // 2
    left = (image.shape[1] - shape[1]) // 2
    return np.ascontiguousarray(image[top:top + shape[0], left:left + shape[1]])


# --- units --------------------------------------------------------------------------------


def input_map(piece: readers.Slice, modality: str, config) -> units.IntensityMap:
    """File units -> model units for one input slice, as the run's training data was mapped.

    MRI has no absolute unit, so an MRI slice that is not 8-bit is scaled by
    its robust percentiles even for a run trained on 8-bit MRI. CT must match:
    an 8-bit CT holds no HU, and a run trained on 8-bit CT never saw HU.
    """
    trained = config.ct_units if modality == "ct" else config.mri_units
    if modality == "ct":
        if trained == "hu" and piece.bit_depth == "uint8":
            raise VAEGANError(piece.path, "8-bit CT holds no Hounsfield units, but this run was "
                                          "trained on CT in HU; give 16-bit PNG/TIFF or .npy in HU")
        if trained == "uint8" and piece.bit_depth != "uint8":
            raise VAEGANError(piece.path, "CT in HU, but this run was trained on 8-bit CT; "
                                          "give 8-bit images or a run trained on HU")
        return units.map_for(trained, piece.pixels, config)
    if trained == "uint8" and piece.bit_depth != "uint8":
        trained = "percentile"
    return units.map_for(trained, piece.pixels, config)


def output_map(modality: str, config) -> tuple[str, units.IntensityMap]:
    """(units name, map) in which the target modality is written."""
    name = config.ct_units if modality == "ct" else config.mri_units
    if name == "uint8":
        return name, units.UINT8_MAP
    if modality == "ct":
        return name, units.ct_map(tuple(config.ct_window_hu))
    return name, units.IntensityMap(*(float(v) for v in config.mri_reference_range))


def volume_input_map(volume: Volume, modality: str, config) -> units.IntensityMap:
    """File units -> model units for a whole volume: the CT window, or the volume's MRI percentiles."""
    return input_map(readers.Slice(path=volume.path, pixels=volume.voxels, bit_depth="float"),
                     modality, config)


def volume_input_check(modality: str, config, path: str | None = None) -> None:
    """Refuse CT volumes (HU) for a run that was trained on 8-bit CT, before reading them."""
    if modality == "ct" and config.ct_units == "uint8":
        raise VAEGANError(path, "CT volumes hold HU, but this run was trained on 8-bit CT; "
                                "give 8-bit images or a run trained on HU")


def volume_output_map(modality: str, config, path: str | None = None) -> units.IntensityMap:
    """The output map for a volume; refuses CT output from a run that never saw HU."""
    name, mapping = output_map(modality, config)
    if modality == "ct" and name != "hu":
        raise VAEGANError(path, "this run was trained on 8-bit CT, which holds no Hounsfield "
                                "units; a CT volume needs a run trained on CT in HU")
    return mapping


@dataclass
class TranslatedVolume:
    """A volume translated slice by slice: canonical [slices, rows, cols] arrays."""

    unit_input: np.ndarray  # the input in model units
    unit_mean: np.ndarray  # the translation in model units
    mean: np.ndarray  # the translation in output units (HU for CT)
    std: np.ndarray | None  # per-voxel std over latent draws in output units (samples > 1)


def translate_volume(run: LoadedRun, volume: Volume, direction: str = "mri2ct",
                     samples: int = 1, batch_size: int = 4,
                     on_done: Callable[[int], None] | None = None) -> TranslatedVolume:
    """Translate every axial slice of a volume (in batches) and map back to output units."""
    in_modality, out_modality = direction_modalities(direction)
    if volume.modality != in_modality:
        raise VAEGANError(volume.path, f"was read as {volume.modality.upper()}, but {direction} "
                                       f"translates {in_modality.upper()}")
    map_in = volume_input_map(volume, in_modality, run.config)
    map_out = volume_output_map(out_modality, run.config, volume.path)
    unit_input = map_in.to_unit(volume.voxels)
    results = translate_slices(run.model, list(unit_input), direction, samples, batch_size,
                               on_done=on_done)
    unit_mean = np.stack([mean for mean, _ in results])
    std = None
    if samples > 1:
        std = np.stack([s for _, s in results]) * np.float32((map_out.high - map_out.low) / 2.0)
    return TranslatedVolume(unit_input=unit_input, unit_mean=unit_mean,
                            mean=map_out.from_unit(unit_mean), std=std)


# --- predict ------------------------------------------------------------------------------


@dataclass
class _Job:
    """One input slice and where its output goes."""

    piece: readers.Slice
    output: str
    std_output: str | None


@dataclass
class _VolumeJob:
    """One input volume and where its output (a NIfTI file or a DICOM series folder) goes."""

    found: FoundVolume
    output: str
    std_output: str | None


def predict(input_path: str | os.PathLike, output_dir: str | os.PathLike,
            run: LoadedRun | str | os.PathLike | None = None, direction: str = "mri2ct",
            samples: int = 1, fmt: str = "same", batch_size: int = 4,
            progress: bool = True, overwrite: bool = False,
            on_bad: readers.BadFileHandler | None = None) -> list[str]:
    """Translate every slice and volume under ``input_path`` into ``output_dir``; return the paths.

    One output per input, same name: a 2-D slice gives a slice, a NIfTI
    file a NIfTI file on the same grid, a DICOM series a DICOM series folder
    (``_std`` beside each for ``samples > 1``).

    Before anything is written: every 2-D slice is read and checked, every
    volume's header is checked (``volumes.find_inputs``: size, dimensions,
    data cut short), the run is loaded, and every output name is checked. An
    output may not be an input file (nor a series folder holding one), two
    inputs may not share an output, and an output that exists is refused
    unless ``overwrite``, which replaces it. ``output_dir`` may be the input
    folder, or inside it, only when no output name hits an input.

    A volume's voxels are read when it is translated; a problem found then
    (NaN or inf voxels, DICOM pixel data that does not decode) stops
    ``predict`` with the outputs already written complete and nothing of
    that volume written. Every output appears whole or not at all.

    ``on_bad`` (``--skip-bad``): a bad input file, found up front or when a
    volume is read, is handed to it as a ``VAEGANError`` and left out, and
    the others are translated. Any other problem raises ``VAEGANError``.
    """
    in_modality, out_modality = direction_modalities(direction)
    if fmt not in FORMATS:
        raise VAEGANError(None, f"unknown output format '{fmt}' (for 2-D slices: "
                                f"{', '.join(FORMATS)})")
    if isinstance(samples, bool) or int(samples) != samples or samples < 1:
        raise VAEGANError(None, f"samples must be a whole number >= 1, got {samples}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise VAEGANError(None, f"batch size must be a whole number >= 1, got {batch_size}")
    samples, batch_size = int(samples), int(batch_size)
    input_path, output_dir = os.fspath(input_path), os.fspath(output_dir)
    check_output_folder(output_dir)

    files, found = volumes.find_inputs(input_path, in_modality, on_bad=on_bad)
    if os.path.isdir(input_path):
        files, found = _input_role_only(input_path, files, found, in_modality)
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
        raise VAEGANError(input_path, "no readable images (every image file was bad)")
    if not isinstance(run, LoadedRun):
        run = load_run(run)
    config, model = run.config, run.model
    stride = int(model.total_stride)
    usable, maps_in = [], []
    for piece in pieces:  # 8-bit CT for a run trained on HU, slices too big, and the like
        try:
            check_slice_pixels(piece.path, piece.pixels.shape, stride)
            maps_in.append(input_map(piece, in_modality, config))
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
            continue
        usable.append(piece)
    pieces = usable
    usable = []
    for found_volume in found:
        try:
            if found_volume.slice_shape is not None:
                check_slice_pixels(found_volume.path, found_volume.slice_shape, stride)
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
            continue
        usable.append(found_volume)
    found = usable
    if not pieces and not found:
        raise VAEGANError(input_path, "no images this run can translate")
    out_units, map_out = output_map(out_modality, config)
    if found:
        volume_input_check(in_modality, config, found[0].path)
        volume_output_map(out_modality, config, found[0].path)
    names = volumes.input_names(input_path, [piece.path for piece in pieces], found)
    overview = os.path.join(output_dir, OVERVIEW_NAME)
    taken: dict[str, str] = {os.path.normcase(overview).lower(): "the overview image"}
    # every image file found counts as an input, also one left out as bad
    inputs = {real_path(path) for path in readers.find_images(input_path)}
    jobs = _plan_outputs(output_dir, pieces, names, out_units, fmt, samples, taken, inputs)
    volume_jobs = _plan_volume_outputs(output_dir, found, names, samples, taken, inputs)
    outputs = [p for job in jobs for p in (job.output, job.std_output) if p]
    outputs += [p for job in volume_jobs for p in (job.output, job.std_output) if p]
    _check_existing(outputs, volume_folders={p for job in volume_jobs if job.found.kind ==
                                             "dicom" for p in (job.output, job.std_output) if p},
                    overview=overview, inputs=inputs, overwrite=overwrite)

    total = len(jobs) + sum(s.slice_count for s in found)
    counter = _Progress(total, f"predict {direction}") if progress else None
    written: list[str] = []
    overview_rows: list[list[np.ndarray]] = []
    overview_names: list[str] = []
    try:
        chunk = batch_size * _CHUNK_BATCHES
        for start in range(0, len(jobs), chunk):
            part = list(range(start, min(start + chunk, len(jobs))))
            unit_inputs = [maps_in[i].to_unit(jobs[i].piece.pixels) for i in part]
            results = translate_slices(model, unit_inputs, direction, samples, batch_size,
                                       on_done=counter.advance if counter else None)
            for i, unit_input, (mean, std) in zip(part, unit_inputs, results):
                job = jobs[i]
                writers.write_slice(job.output, map_out.from_unit(mean), out_units, out_modality)
                written.append(job.output)
                if std is not None:
                    std_out = std * np.float32((map_out.high - map_out.low) / 2.0)
                    writers.write_slice(job.std_output, std_out, out_units, out_modality)
                    written.append(job.std_output)
                if len(overview_rows) < OVERVIEW_ROWS:
                    overview_rows.append(_overview_row(unit_input, mean, std))
                    overview_names.append(os.path.basename(job.piece.path))

        for job in volume_jobs:
            try:
                volume = volumes.read_volume(job.found, in_modality)
            except VAEGANError as err:
                if on_bad is None:
                    raise
                if counter:
                    counter.drop(job.found.slice_count)
                on_bad(err)
                if counter:
                    counter.show()
                continue
            result = translate_volume(run, volume, direction, samples, batch_size,
                                      on_done=counter.advance if counter else None)
            study_uid = _new_uid() if volume.kind == "dicom" else None
            written.extend(volumes.write_volume(job.output, volume, result.mean, out_modality, "mean",
                                                study_uid))
            if result.std is not None:
                written.extend(volumes.write_volume(job.std_output, volume, result.std, out_modality,
                                                    "std", study_uid))
            if len(overview_rows) < OVERVIEW_ROWS:
                middle = volume.voxels.shape[0] // 2
                unit_std = None
                if result.std is not None:
                    unit_std = result.std[middle] / np.float32((map_out.high - map_out.low) / 2.0)
                overview_rows.append(_overview_row(result.unit_input[middle],
                                                   result.unit_mean[middle], unit_std))
                overview_names.append(f"{os.path.basename(job.output)} [{middle}]")
    finally:
        if counter:  # end the progress line, also when an error follows
            counter.close()

    if not written:  # every volume was left out when its voxels were read
        raise VAEGANError(input_path, "no readable images (every image file was bad)")
    titles = [in_modality.upper(), f"synthetic {out_modality.upper()}"] + (["std (scaled)"] if samples > 1
                                                                  else [])
    write_overview_png(overview, overview_rows, titles, row_titles=overview_names)
    written.append(overview)
    return written


def _input_role_only(root: str, files: list[str], found: list, modality: str):
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


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


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


def _check_existing(outputs: list[str], volume_folders: set[str], overview: str,
                    inputs: set[str], overwrite: bool) -> None:
    """Refuse outputs that exist (unless ``overwrite``), and the overview image on an input."""
    if real_path(overview) in inputs:
        raise VAEGANError(overview, "is an input and the overview image would overwrite it; "
                                    "write to an output folder outside the input folder")
    for path in [*outputs, overview]:
        if not os.path.lexists(path):
            continue
        if not overwrite:
            raise VAEGANError(path, "output exists; use --overwrite to replace it")
        if os.path.isdir(path) and path not in volume_folders:
            raise VAEGANError(path, "output exists and is a folder; remove it or choose "
                                    "another output folder")
        if path in volume_folders and not os.path.isdir(path):
            raise VAEGANError(path, "output series folder exists and is a file; remove it or "
                                    "choose another output folder")


def _plan_outputs(output_dir: str, pieces: list[readers.Slice], names: dict, out_units: str,
                  fmt: str, samples: int, taken: dict[str, str], inputs: set[str]) -> list[_Job]:
    """Output (and std) path of every input slice; refuses names that collide or hit an input."""
    jobs = []
    for piece in pieces:
        stem, ext = os.path.splitext(volumes.name_of(names, piece.path))
        ext = _output_extension(ext, fmt, out_units)
        output = os.path.join(output_dir, stem + ext)
        std_output = os.path.join(output_dir, f"{stem}_std{ext}") if samples > 1 else None
        for path in filter(None, (output, std_output)):
            _claim(path, piece.path, taken, inputs)
        jobs.append(_Job(piece, output, std_output))
    return jobs


def _plan_volume_outputs(output_dir: str, found: list[FoundVolume], names: dict,
                         samples: int, taken: dict[str, str], inputs: set[str]
                         ) -> list[_VolumeJob]:
    """Output file (NIfTI) or series folder (DICOM) of every volume, and its ``_std`` twin.

    A series folder replaces an earlier output folder of the same name, so
    it must hold no input and nothing but DICOM files, and no other output
    may lie inside it.
    """
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
        jobs.append(_VolumeJob(volume, output, std_output))
    for folder in folders:
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
            for _, _, found in os.walk(folder):
                if any(not f.lower().endswith(".dcm") for f in found):
                    raise VAEGANError(folder, "output series folder exists and holds files that "
                                              "are not DICOM; choose another output folder")
    return jobs


def _output_extension(ext: str, fmt: str, out_units: str) -> str:
    if fmt != "same":
        return "." + fmt
    if ext.lower() in (".jpg", ".jpeg") and out_units != "uint8":
        return ".png"  # JPEG holds 8-bit only; HU / MRI intensities need 16-bit
    return ext


def _overview_row(unit_input: np.ndarray, mean: np.ndarray, std: np.ndarray | None) -> list:
    row = [unit_input, mean]
    if std is not None:
        top = float(std.max())
        row.append(std / top * 2.0 - 1.0 if top > 0 else np.full_like(std, -1.0))
    return row


class _Progress:
    """``predict mri2ct: 12/40 slices`` on one stderr line."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self._show()

    def advance(self, count: int) -> None:
        self.done += count
        self._show()

    def drop(self, count: int) -> None:
        """Leave ``count`` slices out of the total and end the line, for a message below it."""
        self.total -= count
        sys.stderr.write("\n")
        sys.stderr.flush()

    def show(self) -> None:
        self._show()

    def _show(self) -> None:
        sys.stderr.write(f"\r{self.label}: {self.done}/{self.total} slices")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()
