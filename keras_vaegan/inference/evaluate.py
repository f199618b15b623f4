"""Measure synthetic CT against a reference CT: MAE (HU), PSNR and SSIM within a mask.

Conventions (SynthRAD): prediction and reference are clipped to
[-1024, 3000] HU; PSNR uses the fixed data range 4024 HU; every metric is
taken over the voxels of a mask: the one given, or a body mask where the
reference CT is above -500 HU.

- MAE: mean |prediction - reference| over the mask, in HU.
- PSNR: ``10 log10(4024^2 / MSE)`` with the MSE over the mask, in dB
  (``inf`` when prediction equals reference).
- SSIM: the standard gaussian-window SSIM of Wang et al. (2004): window
  sigma 1.5 px truncated at 3.5 sigma (11 x 11), K1 = 0.01, K2 = 0.03,
  population covariance, reflected borders. As SynthRAD does, voxels
  outside the mask are set to -1024 HU in both images and values are shifted
  to [0, 4024] first. It is computed **in 2-D on every axial slice** and
  the SSIM map is averaged over the mask voxels (leaving out the 5-pixel
  rim of each slice that the window does not cover, like scikit-image's
  mean). SynthRAD's own SSIM is 3-D with a 7^3 uniform window, so its values
  differ slightly from these.

``evaluate`` pairs inputs by subject (file or folder name): a volume file,
a DICOM series folder, folders of subjects, the SynthRAD layout
(``SUBJECT/mr.nii.gz``, ``ct.nii.gz``, ``mask.nii.gz``) or 2-D slices
(paired by file name). It translates the MRI with a run, or scores a
prediction already made.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from keras_vaegan.data import readers, volumes
from keras_vaegan.data.filters import gaussian_blur
from keras_vaegan.data.volume import FoundVolume, Volume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_write_text
from keras_vaegan.io.figures import OVERVIEW_NAME
from keras_vaegan.io.paths import same_path

CLIP_HU = (-1024.0, 3000.0)
DATA_RANGE_HU = CLIP_HU[1] - CLIP_HU[0]  # 4024
BODY_THRESHOLD_HU = -500.0
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
METRICS = ("mae_hu", "psnr_db", "ssim")

_MODALITY = {"mri": "mri", "ct": "ct", "sct": "ct", "prediction": "ct", "mask": None}
_ACCEPTED = {"mri": ("mri",), "ct": ("ct",), "mask": ("mask",), "sct": ("sct",),
             "prediction": ("sct", "ct", "mri")}  # predict keeps the input's name (mr.nii.gz)


# --- metrics --------------------------------------------------------------------------------


def _prepare(prediction, reference, mask):
    prediction = np.asarray(prediction, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if prediction.shape != reference.shape:
        raise VAEGANError(None, f"prediction {prediction.shape} and reference "
                                f"{reference.shape} differ in shape")
    if mask is None:
        mask = reference > BODY_THRESHOLD_HU
    mask = np.asarray(mask) > 0
    if mask.shape != reference.shape:
        raise VAEGANError(None, f"mask {mask.shape} and reference {reference.shape} differ in "
                                "shape")
    if not mask.any():
        raise VAEGANError(None, "the mask is empty")
    return np.clip(prediction, *CLIP_HU), np.clip(reference, *CLIP_HU), mask


def mae_hu(prediction, reference, mask=None) -> float:
    """Mean absolute error in HU within the mask, both images clipped to [-1024, 3000]."""
    prediction, reference, mask = _prepare(prediction, reference, mask)
    return float(np.abs(prediction[mask] - reference[mask]).mean())


def psnr_db(prediction, reference, mask=None, data_range: float = DATA_RANGE_HU) -> float:
    """PSNR in dB within the mask with a fixed data range (inf for identical images)."""
    prediction, reference, mask = _prepare(prediction, reference, mask)
    mse = float(np.mean((prediction[mask] - reference[mask]) ** 2))
    return math.inf if mse == 0 else float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(prediction, reference, mask=None, data_range: float = DATA_RANGE_HU) -> float:
    """2-D gaussian SSIM per axial slice, averaged over the mask (see the module docstring)."""
    prediction, reference, mask = _prepare(prediction, reference, mask)
    low = CLIP_HU[0]
    a = np.where(mask, prediction, low) - low
    b = np.where(mask, reference, low) - low
    if a.ndim == 2:
        a, b, mask = a[None], b[None], mask[None]
    values = ssim_map(a, b, data_range)
    rim = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    inner = np.zeros_like(mask)
    if mask.shape[-2] > 2 * rim and mask.shape[-1] > 2 * rim:
        inner[..., rim:-rim, rim:-rim] = True
    use = mask & inner if (mask & inner).any() else mask
    return float(values[use].mean(dtype=np.float64))


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM per pixel of ``[..., rows, cols]`` arrays, gaussian window over the last two axes."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _gaussian(a), _gaussian(b)
    var_a = _gaussian(a * a) - mu_a * mu_a
    var_b = _gaussian(b * b) - mu_b * mu_b
    cov = _gaussian(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / \
        ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


def _gaussian(x: np.ndarray) -> np.ndarray:
    """Separable gaussian blur (sigma 1.5, 11 taps) over the last two axes, reflected borders."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return gaussian_blur(x, SSIM_SIGMA, radius, pad_mode="symmetric", dtype=np.float64)


def score(prediction_hu, reference_hu, mask=None) -> dict:
    """MAE, PSNR and SSIM of one subject (mask: given, or reference > -500 HU)."""
    prediction, reference, mask = _prepare(prediction_hu, reference_hu, mask)
    return {"mae_hu": mae_hu(prediction, reference, mask),
            "psnr_db": psnr_db(prediction, reference, mask),
            "ssim": ssim(prediction, reference, mask),
            "mask_voxels": int(mask.sum())}


# --- pairing inputs -------------------------------------------------------------------------


@dataclass
class _Item:
    """One image found under a root: a 2-D slice file or a volume found on disk."""

    key: str  # subject: relative name without extension (and without a SynthRAD role name)
    path: str
    found: FoundVolume | None  # None for a 2-D slice


def _collect(root: str, role: str, strict: bool = False) -> dict[str, _Item]:
    """Images under ``root`` keyed by subject, for one role (mri, ct, mask, prediction).

    In a subject folder, files named mr/mri/ct/sct/mask count for their role
    only; other names count for any role (unless ``strict``).
    """
    files, found = volumes.find_inputs(root, _MODALITY[role])
    names = volumes.input_names(root, files, found)
    items: dict[str, _Item] = {}
    for item in [*files, *found]:
        if role == "prediction" and volumes.name_of(names, item) == OVERVIEW_NAME:
            continue  # the picture predict draws beside its outputs
        name = volumes.strip_extension(volumes.name_of(names, item))
        parts = name.split(os.sep)
        named = volumes.subject_role(parts[-1])
        if named is not None:
            if named not in _ACCEPTED[role]:
                continue
            key = os.sep.join(parts[:-1])
        elif strict:
            continue
        else:
            key = name
        path = item if isinstance(item, str) else item.path
        if key in items:
            raise VAEGANError(path, f"a second {role} image for subject '{key or root}' (the "
                                    f"other is {items[key].path}); keep one per subject")
        items[key] = _Item(key, path, None if isinstance(item, str) else item)
    return items


def _pair(reference: dict[str, _Item], other: dict[str, _Item], what: str,
          required: bool = True) -> dict[str, _Item]:
    """Match ``other`` to the reference subjects (a single pair always matches)."""
    if len(reference) == 1 and len(other) == 1:
        return {next(iter(reference)): next(iter(other.values()))}
    matched = {key: other[key] for key in reference if key in other}
    if required:
        for key, item in reference.items():
            if key not in matched:
                raise VAEGANError(item.path, f"no {what} for subject '{key}' (subjects are "
                                             "paired by file or folder name)")
    return matched


# --- evaluate ---------------------------------------------------------------------------------


def evaluate(input_path: str | os.PathLike | None, reference_path: str | os.PathLike,
             mask_path: str | os.PathLike | None = None, run=None,
             prediction_path: str | os.PathLike | None = None,
             json_path: str | os.PathLike | None = None, batch_size: int = 4,
             progress: bool = False) -> dict:
    """Score synthetic CT against reference CT per subject; return the results (and write JSON).

    ``input_path``: MRI to translate with ``run`` (a ``LoadedRun``, a run
    folder, or None for the newest run); or ``prediction_path``: synthetic
    CT already made (HU). ``mask_path``: masks (paired like the images);
    without it, a SynthRAD ``mask`` file beside the reference is used, else
    the body mask reference > -500 HU. Returns ``{"subjects": [...],
    "mean": {...}, "conventions": {...}}``.
    """
    if (input_path is None) == (prediction_path is None):
        raise VAEGANError(None, "give --input (MRI to translate with a model) or --prediction "
                                "(synthetic CT already made), one of them")
    if json_path is not None:
        from keras_vaegan.io.paths import check_writable

        check_writable(json_path)  # before the work, not after it
    reference_path = os.fspath(reference_path)
    references = _collect(reference_path, "ct")
    if prediction_path is not None:
        prediction_path = os.fspath(prediction_path)
        if os.path.isdir(reference_path) and same_path(prediction_path, reference_path):
            # one SynthRAD folder holding ct and sct: only sct is the prediction
            predictions = _collect(prediction_path, "sct", strict=True)
        else:
            predictions = _collect(prediction_path, "prediction")
        predicted = _pair(references, predictions, "prediction")
    else:
        predicted = _pair(references, _collect(os.fspath(input_path), "mri"), "MRI input")
    if mask_path is not None:
        masks = _pair(references, _collect(os.fspath(mask_path), "mask"), "mask")
    elif os.path.isdir(reference_path):
        masks = _pair(references, _collect(reference_path, "mask", strict=True), "mask",
                      required=False)
    else:
        masks = {}

    loaded = None
    if prediction_path is None:
        from keras_vaegan.inference.runs import LoadedRun, load_run

        loaded = run if isinstance(run, LoadedRun) else load_run(run)
        if loaded.config.ct_units != "hu":
            raise VAEGANError(loaded.run_dir, "this run was trained on 8-bit CT, which holds "
                                              "no Hounsfield units; evaluate needs a run "
                                              "trained on HU")

    rows = []
    try:
        for done, (key, ref_item) in enumerate(sorted(references.items())):
            if progress:
                sys.stderr.write(f"\revaluate: {done}/{len(references)} subjects")
                sys.stderr.flush()
            reference, ref_volume = _read(ref_item, "ct")
            if loaded is not None:
                try:
                    prediction, pred_volume = _translate(loaded, predicted[key], batch_size)
                except VAEGANError as err:
                    if err.path is not None:
                        raise
                    raise VAEGANError(predicted[key].path, err.reason) from None
                pred_label = f"model {loaded.run_dir}"
            else:
                prediction, pred_volume = _read(predicted[key], "ct")
                pred_label = predicted[key].path
            _same_grid(ref_item.path, ref_volume, pred_volume, prediction.shape, reference.shape)
            mask, mask_label = None, f"reference CT > {BODY_THRESHOLD_HU:g} HU"
            if key in masks:
                mask, mask_volume = _read(masks[key], "mask")
                _same_grid(masks[key].path, ref_volume, mask_volume, mask.shape, reference.shape)
                mask_label = masks[key].path
            try:
                result = score(prediction, reference, mask)
            except VAEGANError as err:
                raise VAEGANError(ref_item.path, err.reason) from None
            label = key or os.path.basename(volumes.strip_extension(ref_item.path))
            rows.append({"subject": label, **result, "reference": ref_item.path,
                         "prediction": pred_label, "mask": mask_label})
    finally:
        if progress:  # end the progress line, also when an error follows
            sys.stderr.write(f"\revaluate: {len(rows)}/{len(references)} subjects\n")
            sys.stderr.flush()
    mean = {name: float(np.mean([row[name] for row in rows])) for name in METRICS}
    mean["subjects"] = len(rows)
    results = {"subjects": rows, "mean": mean, "conventions": {
        "clip_hu": list(CLIP_HU), "data_range_hu": DATA_RANGE_HU,
        "default_mask": f"reference CT > {BODY_THRESHOLD_HU:g} HU",
        "ssim": f"2-D gaussian window per axial slice (sigma {SSIM_SIGMA}, K1 {SSIM_K1}, "
                f"K2 {SSIM_K2}), averaged within the mask"}}
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(_jsonable(results), indent=2) + "\n")
    return results


def format_table(results: dict) -> str:
    """The per-subject results and their mean as a plain-text table."""
    rows = results["subjects"]
    width = max([len("subject"), len("mean")] + [len(str(r["subject"])) for r in rows])
    lines = [f"{'subject':<{width}}  {'MAE (HU)':>9}  {'PSNR (dB)':>9}  {'SSIM':>6}  "
             f"{'mask voxels':>11}"]
    for row in rows:
        lines.append(f"{row['subject']:<{width}}  {row['mae_hu']:>9.2f}  {row['psnr_db']:>9.2f}  "
                     f"{row['ssim']:>6.4f}  {row['mask_voxels']:>11d}")
    mean = results["mean"]
    lines.append(f"{'mean':<{width}}  {mean['mae_hu']:>9.2f}  {mean['psnr_db']:>9.2f}  "
                 f"{mean['ssim']:>6.4f}  {'':>11}")
    return "\n".join(lines)


# --- reading -----------------------------------------------------------------------------------


def _read(item: _Item, role: str) -> tuple[np.ndarray, Volume | None]:
    """An image of a pair in HU (CT) or as is (mask): canonical volume, or 2-D slice."""
    if item.found is not None:
        volume = volumes.read_volume(item.found, "mri" if role == "mask" else "ct")
        return volume.voxels, volume
    piece = readers.read_slice(item.path, "mri" if role == "mask" else "ct")
    if role != "mask" and piece.bit_depth == "uint8":
        raise VAEGANError(item.path, "8-bit CT holds no Hounsfield units; give 16-bit PNG/TIFF "
                                     "(HU + 1024) or .npy in HU")
    return piece.pixels, None


def _translate(run, item: _Item, batch_size: int) -> tuple[np.ndarray, Volume | None]:
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


def _jsonable(value):
    """Strict JSON: infinite PSNR becomes the string "inf", NaN becomes null."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
