"""``predict``: plan -> translate -> write, all or nothing.

1. Plan (``predict_plan.plan_prediction``, no model): every input found and
   checked, every output named, every refusal that headers allow made.
2. Translate (``translate``): slice by slice at native resolution, in the
   units the run was trained on; a volume (NIfTI file, DICOM series) axial
   slice by axial slice on its own grid.
3. Write: one output per input with the input's name (NIfTI in, NIfTI out;
   a DICOM series in, a derived DICOM series out; ``_std`` beside each for
   ``samples > 1``), plus an ``overview.png``.

All or nothing. Some refusals can only come when a volume's voxels are read
(NaN voxels, pixel data that does not decode), after other outputs have been
translated. Outputs are therefore *staged*: written into a hidden folder
inside the output folder (``staging.StagedOutputs``) and moved onto their
final names only when every input has been translated. Staging was chosen
over removing what was written on a refusal because removal cannot bring
back an earlier output that ``overwrite`` already replaced, and leaves
half a folder to a reader (or a kill) in the meantime; moving in is one
rename per output on the same file system. A refused run thus leaves the
output folder exactly as it was, and a rerun is not refused for "output
exists". With ``on_bad`` (``--skip-bad``) a bad input is handed to it and
skipped, the others are translated.

The library does not print: progress goes to ``progress(done, total)``
(``keras_vaegan.io.progress.Progress``; the CLI draws a bar).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from keras_vaegan.data import readers, volumes, writers
from keras_vaegan.data.volume import Volume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.predict_plan import (
    FORMATS,
    PredictionPlan,
    VolumeJob,
    check_options,
    find_prediction_inputs,
    plan_prediction,
)
from keras_vaegan.inference.runs import LoadedRun, find_newest_run, load_run, run_for
from keras_vaegan.inference.staging import StagedOutputs
from keras_vaegan.inference.translate import (
    DIRECTIONS,
    MAX_PASS_PIXELS,
    TranslatedVolume,
    VolumeTranslation,
    check_slice_pixels,
    check_translatable,
    direction_modalities,
    input_map,
    output_map,
    std_scale,
    translate_slice,
    translate_slices,
    translate_volume,
    volume_input_check,
    volume_input_map,
    volume_output_map,
)
from keras_vaegan.io.figures import write_overview_png
from keras_vaegan.io.paths import check_output_folder
from keras_vaegan.io.progress import Progress

__all__ = ["DIRECTIONS", "FORMATS", "MAX_PASS_PIXELS", "LoadedRun", "TranslatedVolume",
           "check_slice_pixels", "direction_modalities", "find_newest_run", "input_map",
           "load_run", "output_map", "plan_prediction", "predict", "translate_slice",
           "translate_slices", "translate_volume", "volume_input_check", "volume_input_map",
           "volume_output_map"]

OVERVIEW_ROWS = 8
_CHUNK_BATCHES = 16  # batches translated (and held in memory) before their outputs are written


def predict(input_path: str | os.PathLike, output_dir: str | os.PathLike,
            run: LoadedRun | str | os.PathLike | None = None, direction: str = "mri2ct",
            samples: int = 1, fmt: str = "same", batch_size: int = 4,
            progress: Progress | None = None, overwrite: bool = False,
            on_bad: readers.BadFileHandler | None = None,
            precision: str | None = None, mirror_average: bool | None = None,
            shift_average: bool | None = None) -> list[str]:
    """Translate every slice and volume under ``input_path`` into ``output_dir``; return the paths.

    Before the model is loaded, the options and the output folder are
    checked and every input is found (2-D slices read, volume headers
    checked); then the run is loaded and the plan made (``plan_prediction``:
    geometry at the model's stride, units, output names, collisions,
    existing outputs; ``overwrite`` replaces existing outputs, never inputs).
    Nothing is written in the output folder unless every input is
    translated, or, with ``on_bad``, left out as bad (reported to it).
    ``progress(done, total)`` is called as slices are translated.
    ``precision``: what the model computes in (``load_run``; default float32);
    ``mirror_average`` and ``shift_average``: both False for one pass per
    slice (``load_run``; None: the run's own setting).
    """
    if isinstance(progress, bool):  # the old on/off flag: the library no longer prints
        progress = None
    samples, batch_size = check_options(direction, fmt, samples, batch_size)
    input_path, output_dir = os.fspath(input_path), os.fspath(output_dir)
    check_output_folder(output_dir)
    inputs = find_prediction_inputs(input_path, direction, fmt, on_bad)
    run = run_for(run, precision, mirror_average, shift_average)
    plan = plan_prediction(inputs, output_dir, config=run.config,
                           stride=int(run.model.total_stride), direction=direction, fmt=fmt,
                           samples=samples, overwrite=overwrite, on_bad=on_bad)
    counter = _Counter(progress, plan.total_slices)
    overview = _Overview(plan)
    with StagedOutputs(output_dir) as staged:
        written = _translate_slice_jobs(run, plan, staged, batch_size, counter, overview)
        written += _translate_volume_jobs(run, plan, staged, batch_size, counter, overview,
                                          on_bad)
        if not written:  # every volume was left out when its voxels were read
            raise VAEGANError(input_path, "no readable images (every image file was bad)")
        overview.write(staged.path(plan.overview))
        staged.commit(plan.outputs)
    return [staged.final(path) for path in written] + [plan.overview]


def _translate_slice_jobs(run: LoadedRun, plan: PredictionPlan, staged: StagedOutputs,
                          batch_size: int, counter: "_Counter", overview: "_Overview"
                          ) -> list[str]:
    """Translate the 2-D slices a chunk of batches at a time; write each into staging."""
    written: list[str] = []
    jobs, map_out = plan.slices, plan.output_map
    chunk = batch_size * _CHUNK_BATCHES
    for start in range(0, len(jobs), chunk):
        part = jobs[start:start + chunk]
        unit_inputs = [job.input_map.to_unit(job.piece.pixels) for job in part]
        results = translate_slices(run.model, unit_inputs, plan.direction, plan.samples,
                                   batch_size, on_done=counter.advance)
        for job, unit_input, (mean, std) in zip(part, unit_inputs, results):
            path = staged.path(job.output)
            writers.write_slice(path, map_out.from_unit(mean), plan.out_units, plan.out_modality)
            written.append(path)
            if std is not None:
                path = staged.path(job.std_output)
                writers.write_slice(path, std * std_scale(map_out), plan.out_units,
                                    plan.out_modality)
                written.append(path)
            overview.add(unit_input, mean, std, os.path.basename(job.piece.path))
    return written


def _translate_volume_jobs(run: LoadedRun, plan: PredictionPlan, staged: StagedOutputs,
                           batch_size: int, counter: "_Counter", overview: "_Overview",
                           on_bad: readers.BadFileHandler | None) -> list[str]:
    """Open, check, translate and write (into staging) each volume; bad ones to ``on_bad``."""
    written: list[str] = []
    stride = int(run.model.total_stride)
    for job in plan.volumes:
        try:
            volume = _opened_volume(job, plan.in_modality, stride)
        except VAEGANError as err:
            if on_bad is None:
                raise
            counter.drop(job.found.slice_count)
            on_bad(err)
            continue
        if volumes.streams(volume):
            with contextlib.closing(volume.voxels):
                written += _stream_volume(run, plan, staged, batch_size, counter, overview,
                                          job, volume)
        else:
            written += _translate_volume(run, plan, staged, batch_size, counter, overview, job,
                                         volume)
        del volume  # the last volume is gone before the next one is read
    return written


def _opened_volume(job: VolumeJob, modality: str, stride: int) -> Volume:
    """The job's volume, opened to stream or read whole (``volumes.open_volume``), and checked."""
    volume = volumes.open_volume(job.found, modality)
    try:
        check_translatable(volume.path, volume.voxels.shape[1:], stride)  # never strips
    except VAEGANError:
        if volumes.streams(volume):
            volume.voxels.close()
        raise
    return volume


def _translate_volume(run: LoadedRun, plan: PredictionPlan, staged: StagedOutputs,
                      batch_size: int, counter: "_Counter", overview: "_Overview",
                      job: VolumeJob, volume: Volume) -> list[str]:
    """Translate one read volume and write it (and its ``_std``) into staging; return the paths."""
    result = translate_volume(run, volume, plan.direction, plan.samples, batch_size,
                              on_done=counter.advance)
    study_uid = _new_uid() if volume.kind == "dicom" else None
    written = volumes.write_volume(staged.path(job.output), volume, result.mean,
                                   plan.out_modality, "mean", study_uid)
    if result.std is not None:
        written += volumes.write_volume(staged.path(job.std_output), volume, result.std,
                                        plan.out_modality, "std", study_uid)
    middle = volume.voxels.shape[0] // 2
    overview.add(*result.unit_slice(middle), f"{os.path.basename(job.output)} [{middle}]")
    return written


def _stream_volume(run: LoadedRun, plan: PredictionPlan, staged: StagedOutputs,
                   batch_size: int, counter: "_Counter", overview: "_Overview",
                   job: VolumeJob, volume: Volume) -> list[str]:
    """Translate a streamed volume and write it (and its ``_std``) batch by batch as it comes.

    The batches go in the file's own slice order, so reading and writing
    pass through each file once, forwards; nothing volume-sized is held.
    """
    translation = VolumeTranslation(run, volume, plan.direction, plan.samples, batch_size)
    paths = [staged.path(job.output)]
    if plan.samples > 1:
        paths.append(staged.path(job.std_output))
    middle = volume.voxels.shape[0] // 2
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(volumes.slab_writer(path, volume, plan.out_modality, role))
                   for path, role in zip(paths, ("mean", "std"))]
        for slab in translation.slabs(counter.advance, volume.voxels.file_order_step < 0):
            for output, values in zip(outputs, (slab.mean, slab.std)):
                output.write(slab.start, slab.stop, values)
            if slab.start <= middle < slab.stop:
                overview.add(*slab.unit_slice(middle),
                             f"{os.path.basename(job.output)} [{middle}]")
    return paths


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


class _Counter:
    """Slices done against the total, reported to a ``Progress`` callback (if any)."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0
        self._report()

    def advance(self, count: int) -> None:
        self.done += count
        self._report()

    def drop(self, count: int) -> None:
        """Leave ``count`` slices of a skipped volume out of the total."""
        self.total -= count
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


class _Overview:
    """The first ``OVERVIEW_ROWS`` translated slices: input, translation (and scaled std)."""

    def __init__(self, plan: PredictionPlan):
        self.rows: list[list[np.ndarray]] = []
        self.names: list[str] = []
        self.titles = [plan.in_modality.upper(), f"synthetic {plan.out_modality.upper()}"]
        if plan.samples > 1:
            self.titles.append("std (scaled)")

    def add(self, unit_input: np.ndarray, mean: np.ndarray, std: np.ndarray | None,
            name: str) -> None:
        if len(self.rows) >= OVERVIEW_ROWS:
            return
        row = [unit_input, mean]
        if std is not None:
            top = float(std.max())
            row.append(std / top * 2.0 - 1.0 if top > 0 else np.full_like(std, -1.0))
        self.rows.append(row)
        self.names.append(name)

    def write(self, path: str) -> None:
        write_overview_png(path, self.rows, self.titles, row_titles=self.names)
