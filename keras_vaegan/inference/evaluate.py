"""Measure synthetic CT against a reference CT: MAE (HU), PSNR, SSIM and slice consistency.

``evaluate`` pairs the inputs (``pairing``: by subject, with their masks),
translates the MRI with a run or reads a prediction already made, scores
each subject (``metrics``: SynthRAD conventions, clipped to [-1024, 3000]
HU, within the mask) and returns the rows and their mean, optionally as
strict JSON too.

SSIM defaults to the SynthRAD challenge's computation (3-D, 7-voxel
uniform window, the scikit-image call) so that the number compares with
published sCT results; ``ssim_mode="2d"`` gives the per-slice gaussian
SSIM this project reported before (see ``metrics``).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from keras_vaegan.data import readers, volumes
from keras_vaegan.data.volume import Volume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.metrics import (
    BODY_THRESHOLD_HU,
    CLIP_HU,
    DATA_RANGE_HU,
    DEFAULT_SSIM,
    METRICS,
    SSIM_DESCRIPTIONS,
    SSIM_MODES,
    mae_hu,
    psnr_db,
    score,
    ssim,
    through_plane_mae_hu,
)
from keras_vaegan.inference.pairing import Item, Subject, pair_subjects
from keras_vaegan.io.atomic import atomic_write_text
from keras_vaegan.io.progress import Progress

__all__ = ["evaluate", "format_table", "mae_hu", "psnr_db", "score", "ssim",
           "strict_json", "through_plane_mae_hu"]

THROUGH_PLANE = "through_plane_mae_hu"
THROUGH_PLANE_DESCRIPTION = ("MAE (HU) between the slice-to-slice differences of prediction and "
                             "reference along the slice axis, where both neighbours are in the "
                             "mask (volumes only)")


def evaluate(input_path: str | os.PathLike | None, reference_path: str | os.PathLike,
             mask_path: str | os.PathLike | None = None, run=None,
             prediction_path: str | os.PathLike | None = None,
             json_path: str | os.PathLike | None = None, batch_size: int = 4,
             progress: Progress | None = None, ssim_mode: str = DEFAULT_SSIM,
             precision: str | None = None, mirror_average: bool | None = None,
             shift_average: bool | None = None) -> dict:
    """Score synthetic CT against reference CT per subject; return the results (and write JSON).

    ``input_path``: MRI to translate with ``run`` (a ``LoadedRun``, a run
    folder, or None for the newest run); or ``prediction_path``: synthetic
    CT already made (HU). ``mask_path``: masks (paired like the images);
    without it, a SynthRAD ``mask`` image in the reference folder or beside
    the reference file is used, else the body mask reference > -500 HU.
    ``ssim_mode``: "synthrad" (default) or "2d". ``precision``: what the
    model computes in (``load_run``; default float32); ``mirror_average`` and
    ``shift_average``: both False for one pass per slice (``load_run``).
    ``progress(done, total)`` is called after each subject. Returns
    ``{"subjects": [...], "mean": {...}, "conventions": {...}}``, and
    ``"model"`` (its run folder, precision policy, mirror and shift averaging)
    when a model translated.
    """
    if (input_path is None) == (prediction_path is None):
        raise VAEGANError(None, "give --input (MRI to translate with a model) or --prediction "
                                "(synthetic CT already made), one of them")
    if ssim_mode not in SSIM_MODES:
        raise VAEGANError(None, f"unknown SSIM '{ssim_mode}' (choose "
                                f"{' or '.join(SSIM_MODES)})")
    if json_path is not None:
        from keras_vaegan.io.paths import check_writable

        check_writable(json_path)  # before the work, not after it
    subjects = pair_subjects(reference_path, input_path=input_path,
                             prediction_path=prediction_path, mask_path=mask_path)
    loaded = (None if prediction_path is not None
              else _load_hu_run(run, precision, mirror_average, shift_average))
    rows = []
    for done, subject in enumerate(subjects, start=1):
        rows.append(_score_subject(subject, loaded, batch_size, ssim_mode))
        if progress is not None:
            progress(done, len(subjects))
    results = {"subjects": rows, "mean": _mean(rows), "conventions": _conventions(ssim_mode)}
    if loaded is not None:  # how the synthetic CT was made, so a results file says it
        results["model"] = {"run": loaded.run_dir, "policy": loaded.policy,
                            "mirror_average": bool(loaded.config.mirror_average),
                            "shift_average": bool(loaded.config.shift_average)}
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(strict_json(results), indent=2) + "\n")
    return results


def _load_hu_run(run, precision: str | None, mirror_average: bool | None,
                 shift_average: bool | None):
    from keras_vaegan.inference.runs import run_for

    loaded = run_for(run, precision, mirror_average, shift_average)
    if loaded.config.ct_units != "hu":
        raise VAEGANError(loaded.run_dir, "this run was trained on 8-bit CT, which holds no "
                                          "Hounsfield units; evaluate needs a run trained on HU")
    return loaded


def _score_subject(subject: Subject, loaded, batch_size: int, ssim_mode: str) -> dict:
    """One row: read (or translate), check the grids, score; volumes freed as soon as used."""
    reference, ref_volume = _read(subject.reference, "ct")
    if loaded is not None:
        try:
            prediction, pred_volume = _translate(loaded, subject.compared, batch_size)
        except VAEGANError as err:
            if err.path is not None:
                raise
            raise VAEGANError(subject.compared.path, err.reason) from None
        pred_label = f"model {loaded.run_dir}"
    else:
        prediction, pred_volume = _read(subject.compared, "ct")
        pred_label = subject.compared.path
    _same_grid(subject.compared.path, ref_volume, pred_volume, prediction.shape, reference.shape)
    del pred_volume
    mask, mask_label = None, f"reference CT > {BODY_THRESHOLD_HU:g} HU"
    if subject.mask is not None:
        mask_values, mask_volume = _read(subject.mask, "mask")
        _same_grid(subject.mask.path, ref_volume, mask_volume, mask_values.shape,
                   reference.shape)
        del mask_volume
        mask, mask_label = mask_values > 0, subject.mask.path
        del mask_values
    try:
        result = score(prediction, reference, mask, ssim_mode=ssim_mode)
    except VAEGANError as err:
        raise VAEGANError(subject.reference.path, err.reason) from None
    return {"subject": subject.label, **result, "reference": subject.reference.path,
            "prediction": pred_label, "mask": mask_label}


def _mean(rows: list[dict]) -> dict:
    mean = {name: float(np.mean([row[name] for row in rows])) for name in METRICS}
    steps = [row[THROUGH_PLANE] for row in rows if row.get(THROUGH_PLANE) is not None]
    if steps:
        mean[THROUGH_PLANE] = float(np.mean(steps))
    mean["subjects"] = len(rows)
    return mean


def _conventions(ssim_mode: str) -> dict:
    return {"clip_hu": list(CLIP_HU), "data_range_hu": DATA_RANGE_HU,
            "default_mask": f"reference CT > {BODY_THRESHOLD_HU:g} HU",
            "ssim_mode": ssim_mode, "ssim": SSIM_DESCRIPTIONS[ssim_mode],
            THROUGH_PLANE: THROUGH_PLANE_DESCRIPTION}


def format_table(results: dict) -> str:
    """The per-subject results and their mean as a plain-text table.

    The through-plane column appears when a subject is a volume (``-`` for
    2-D images and single slices).
    """
    rows = results["subjects"]
    steps = any(THROUGH_PLANE in row for row in rows)
    width = max([len("subject"), len("mean")] + [len(str(r["subject"])) for r in rows])

    def line(name, mae, psnr, ssim_text, step, voxels):
        step_text = f"  {step:>16}" if steps else ""
        return f"{name:<{width}}  {mae:>9}  {psnr:>9}  {ssim_text:>6}{step_text}  {voxels:>11}"

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [line("subject", "MAE (HU)", "PSNR (dB)", "SSIM", "through-plane HU",
                  "mask voxels")]
    for row in rows:
        lines.append(line(row["subject"], number(row["mae_hu"], 2), number(row["psnr_db"], 2),
                          number(row["ssim"], 4), number(row.get(THROUGH_PLANE), 2),
                          str(row["mask_voxels"])))
    mean = results["mean"]
    lines.append(line("mean", number(mean["mae_hu"], 2), number(mean["psnr_db"], 2),
                      number(mean["ssim"], 4), number(mean.get(THROUGH_PLANE), 2), ""))
    return "\n".join(lines)


# --- reading -----------------------------------------------------------------------------------


def _read(item: Item, role: str) -> tuple[np.ndarray, Volume | None]:
    """An image of a pair in HU (CT) or as is (mask): canonical volume, or 2-D slice."""
    if item.found is not None:
        volume = volumes.read_volume(item.found, "mri" if role == "mask" else "ct")
        return volume.voxels, volume
    piece = readers.read_slice(item.path, "mri" if role == "mask" else "ct")
    if role != "mask" and piece.bit_depth == "uint8":
        raise VAEGANError(item.path, "8-bit CT holds no Hounsfield units; give 16-bit PNG/TIFF "
                                     "(HU + 1024) or .npy in HU")
    return piece.pixels, None


def _translate(run, item: Item, batch_size: int) -> tuple[np.ndarray, Volume | None]:
    from keras_vaegan.inference import predict

    if item.found is not None:
        volume = volumes.read_volume(item.found, "mri")
        return predict.translate_volume(run, volume, "mri2ct", 1, batch_size).mean, volume
    piece = readers.read_slice(item.path, "mri")
    mapping = predict.input_map(piece, "mri", run.config)
    mean, _ = predict.translate_slice(run.model, mapping.to_unit(piece.pixels), "mri2ct")
    return predict.volume_output_map("ct", run.config, item.path).from_unit(mean), None


def _same_grid(path: str, reference: Volume | None, other: Volume | None,
               shape: tuple, reference_shape: tuple) -> None:
    if shape != reference_shape:
        raise VAEGANError(path, f"shape {shape} differs from the reference's {reference_shape}; "
                                "images must be on the reference CT's grid (resample first)")
    if reference is None or other is None:
        return
    if reference.nifti_image is not None and other.nifti_image is not None:
        if not np.allclose(reference.nifti_image.affine, other.nifti_image.affine, atol=1e-3):
            raise VAEGANError(path, "affine differs from the reference CT's: images must be on "
                                    "the same grid (resample first)")


def strict_json(value):
    """``value`` made strict JSON: an infinite PSNR becomes the string "inf", NaN null."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
