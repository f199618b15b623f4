"""Scores of a synthetic CT against a reference CT, in HU within a mask (SynthRAD conventions).

Both images are clipped to [-1024, 3000] HU; every metric is taken over the
voxels of a mask (the one given, or a body mask where the reference CT is
above -500 HU).

- ``mae_hu``: mean |prediction - reference| over the mask, in HU.
- ``psnr_db``: ``10 log10(4024^2 / MSE)`` with the MSE over the mask, in dB
  (``inf`` when prediction equals reference).
- ``ssim``, two computations (``mode``):

  * ``"synthrad"`` (the default): what the SynthRAD challenge's evaluation
    code computes, so that a value here compares with the challenge's
    leaderboards and the papers that report them. Voxels outside the mask
    are set to -1024 HU in both images, values are shifted by +1024 (to
    [0, 4024]), and scikit-image's ``structural_similarity`` is taken on the
    whole **3-D** volume with its defaults: a 7 x 7 x 7 uniform window,
    K1 = 0.01, K2 = 0.03, sample covariance (``N / (N - 1)``), data range
    4024. The SSIM map is averaged over the mask voxels that are at least 3
    voxels from every face of the volume (scikit-image's crop). A volume
    thinner than 7 slices, or a 2-D image, gets the same computation on each
    slice with a 7 x 7 window, since the 7-voxel window does not fit across
    the slices. scikit-image is not needed: the uniform filters are numpy.
  * ``"2d"``: the gaussian-window SSIM of Wang et al. (2004) on every axial
    slice (sigma 1.5 px, 11 x 11, population covariance, reflected borders;
    same masking and shift), averaged over the mask leaving out each
    slice's 5-pixel rim. This was the only SSIM before; the quality numbers
    in ``benchmarks/RESULTS.md`` up to the SSIM choice were measured with it.
    It is lower than the SynthRAD value for the same images, most for poor
    predictions (issue 25 measured 0.87 against 0.91 on a good one, 0.07
    against 0.14 on a poor one).

- ``through_plane_mae_hu``: slice consistency. The mean absolute difference
  between the slice-to-slice steps of the synthetic CT and of the reference
  CT along the slice axis (the canonical first axis, the one ``predict``
  translates slice by slice), over the pairs of neighbouring voxels that
  are both in the mask. A prediction made slice by slice that is right on
  average but flickers from slice to slice scores badly here while its MAE
  hides it. Volumes only (``None`` for fewer than 2 slices).

Memory: nothing volume-sized is made beyond a boolean mask. The metrics
walk the volume in slabs of a few slices, so a 200 x 512 x 512 pair is
scored in well under 2 GB (``benchmarks/bench_evaluate.py``). The SynthRAD
SSIM computes each slab in float32 (within 1e-6 of float64, also on flat
regions at 3000 HU where a variance is the small difference of two large
window means); MAE, PSNR and the "2d" SSIM in float64, as before.
"""

from __future__ import annotations

import math

import numpy as np

from keras_vaegan.data.filters import gaussian_blur
from keras_vaegan.errors import VAEGANError

CLIP_HU = (-1024.0, 3000.0)
DATA_RANGE_HU = CLIP_HU[1] - CLIP_HU[0]  # 4024
BODY_THRESHOLD_HU = -500.0
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_MODES = ("synthrad", "2d")
DEFAULT_SSIM = "synthrad"
SYNTHRAD_WINDOW = 7  # scikit-image's default uniform window, as SynthRAD calls it
GAUSSIAN_SIGMA = 1.5
GAUSSIAN_TRUNCATE = 3.5
METRICS = ("mae_hu", "psnr_db", "ssim")
SLAB_SLICES = 8  # slices converted to float64 at a time

SSIM_DESCRIPTIONS = {
    "synthrad": "SynthRAD: scikit-image structural_similarity on the 3-D volume (7x7x7 uniform "
                "window, sample covariance, K1 0.01, K2 0.03; 7x7 per slice below 7 slices), "
                "outside the mask -1024 HU, averaged within the mask cropped by 3 voxels",
    "2d": f"2-D gaussian window per axial slice (sigma {GAUSSIAN_SIGMA}, K1 {SSIM_K1}, "
          f"K2 {SSIM_K2}), averaged within the mask",
}


def check_inputs(prediction, reference, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays as given (not copied) and a boolean mask; shapes checked, mask not empty."""
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if prediction.shape != reference.shape:
        raise VAEGANError(None, f"prediction {prediction.shape} and reference "
                                f"{reference.shape} differ in shape")
    if mask is None:
        mask = reference > BODY_THRESHOLD_HU
    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask > 0
    if mask.shape != reference.shape:
        raise VAEGANError(None, f"mask {mask.shape} and reference {reference.shape} differ in "
                                "shape")
    if not mask.any():
        raise VAEGANError(None, "the mask is empty")
    return prediction, reference, mask


def _as_stack(*arrays: np.ndarray) -> list[np.ndarray]:
    """2-D images as one-slice stacks, so that every metric walks slices."""
    return [a[None] if a.ndim == 2 else a for a in arrays]


def _slabs(count: int, size: int = SLAB_SLICES, overlap: int = 0):
    """``slice`` objects covering ``range(count)`` in steps of ``size`` (each ``overlap`` longer)."""
    for start in range(0, count, size):
        yield slice(start, min(count, start + size + overlap))


def _clipped(x: np.ndarray, part: slice, dtype=np.float64) -> np.ndarray:
    return np.clip(np.asarray(x[part], dtype=dtype), *CLIP_HU)


def mae_hu(prediction, reference, mask=None) -> float:
    """Mean absolute error in HU within the mask, both images clipped to [-1024, 3000]."""
    prediction, reference, mask = _as_stack(*check_inputs(prediction, reference, mask))
    total = 0.0
    for part in _slabs(len(reference)):
        inside = mask[part]
        total += float(np.abs(_clipped(prediction, part) - _clipped(reference, part))[inside].sum())
    return total / int(mask.sum())


def psnr_db(prediction, reference, mask=None, data_range: float = DATA_RANGE_HU) -> float:
    """PSNR in dB within the mask with a fixed data range (inf for identical images)."""
    prediction, reference, mask = _as_stack(*check_inputs(prediction, reference, mask))
    total = 0.0
    for part in _slabs(len(reference)):
        error = (_clipped(prediction, part) - _clipped(reference, part))[mask[part]]
        total += float(np.sum(error * error))
    mse = total / int(mask.sum())
    return math.inf if mse == 0 else float(10.0 * np.log10(data_range ** 2 / mse))


def through_plane_mae_hu(prediction, reference, mask=None) -> float | None:
    """MAE in HU between the slice-to-slice steps of prediction and reference, within the mask.

    A step between slices ``k`` and ``k + 1`` counts where both voxels are in
    the mask. ``None`` when there is no such pair (one slice, or a mask that
    never covers two neighbouring slices).
    """
    prediction, reference, mask = check_inputs(prediction, reference, mask)
    if reference.ndim != 3 or len(reference) < 2:
        return None
    total, count = 0.0, 0
    for part in _slabs(len(reference), overlap=1):
        if part.stop - part.start < 2:
            continue
        predicted_step = np.diff(_clipped(prediction, part), axis=0)
        reference_step = np.diff(_clipped(reference, part), axis=0)
        both = mask[part][1:] & mask[part][:-1]
        total += float(np.abs(predicted_step - reference_step)[both].sum())
        count += int(both.sum())
    return total / count if count else None


def ssim(prediction, reference, mask=None, data_range: float = DATA_RANGE_HU,
         mode: str = DEFAULT_SSIM) -> float:
    """SSIM within the mask: ``mode`` "synthrad" (3-D, as the challenge) or "2d" (see above)."""
    if mode not in SSIM_MODES:
        raise VAEGANError(None, f"unknown SSIM '{mode}' (choose {' or '.join(SSIM_MODES)})")
    prediction, reference, mask = _as_stack(*check_inputs(prediction, reference, mask))
    if mode == "2d":
        return _ssim_gaussian_2d(prediction, reference, mask, data_range)
    return _ssim_synthrad(prediction, reference, mask, data_range)


def _shifted(x: np.ndarray, mask: np.ndarray, part: slice, dtype=np.float64) -> np.ndarray:
    """Slices ``part`` clipped, -1024 HU outside the mask, shifted to [0, 4024]."""
    low = CLIP_HU[0]
    values = _clipped(x, part, dtype)
    values[~mask[part]] = low
    values -= low
    return values


# --- SSIM "2d": gaussian window per slice ------------------------------------------------------


def _ssim_gaussian_2d(prediction, reference, mask, data_range: float) -> float:
    rim = int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5)
    inner = np.ones(mask.shape[1:], dtype=bool)  # a mask only in the rim: used whole
    if (mask.shape[-2] > 2 * rim and mask.shape[-1] > 2 * rim
            and mask[:, rim:-rim, rim:-rim].any()):
        inner[...] = False
        inner[rim:-rim, rim:-rim] = True
    total, count = 0.0, 0
    for part in _slabs(len(reference)):
        values = ssim_map(_shifted(prediction, mask, part), _shifted(reference, mask, part),
                          data_range)
        use = mask[part] & inner
        total += float(values[use].sum(dtype=np.float64))
        count += int(use.sum())
    return total / count


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Gaussian SSIM per pixel of ``[..., rows, cols]`` arrays (window over the last two axes)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    radius = int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5)

    def blur(x):
        return gaussian_blur(x, GAUSSIAN_SIGMA, radius, pad_mode="symmetric", dtype=np.float64)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    return _ssim_formula(mu_a, mu_b, var_a, var_b, cov, data_range)


def _ssim_formula(mu_a, mu_b, var_a, var_b, cov, data_range: float) -> np.ndarray:
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / \
        ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


# --- SSIM "synthrad": uniform 7-voxel window, 3-D --------------------------------------------


def _window_sums(x: np.ndarray, axes: tuple[int, ...], width: int) -> np.ndarray:
    """Sums over a ``width``-long window along each of ``axes``, where it fits ("valid")."""
    for axis in axes:
        length = x.shape[axis] - width + 1
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, length)
        total = x[tuple(index)].copy()
        for offset in range(1, width):
            index[axis] = slice(offset, offset + length)
            total += x[tuple(index)]
        x = total
    return x


def _ssim_synthrad(prediction, reference, mask, data_range: float) -> float:
    """Masked mean of scikit-image's SSIM map (uniform window, cropped), slab by slab.

    The cropped map needs no border handling: a voxel 3 or more from every
    face sees only voxels inside the volume. For the 3-D window, each slab of
    output slices reads 3 more slices on each side.
    """
    width = SYNTHRAD_WINDOW
    pad = (width - 1) // 2
    slices, rows, cols = reference.shape
    if rows < width or cols < width:
        raise VAEGANError(None, f"images of {rows}x{cols} pixels are smaller than the "
                                f"{width}-pixel SSIM window; use --ssim 2d")
    depth = width if slices >= width else 1  # thin stacks: 7x7 on each slice
    inner = mask[:, pad:rows - pad, pad:cols - pad]
    if depth > 1:
        inner = inner[pad:slices - pad]
    if not inner.any():
        raise VAEGANError(None, f"the mask has no voxel {pad} or more voxels from the volume's "
                                "edges, where the SynthRAD SSIM is averaged; use --ssim 2d")
    axes = (1, 2) if depth == 1 else (0, 1, 2)
    norm = float(width ** len(axes))
    sample = norm / (norm - 1)  # scikit-image's default sample covariance
    total = 0.0
    for part in _slabs(len(inner)):
        read = slice(part.start, part.stop + depth - 1)
        a = _shifted(prediction, mask, read, np.float32)
        b = _shifted(reference, mask, read, np.float32)
        moments = [_window_sums(x, axes, width) / norm for x in (a, b, a * a, b * b, a * b)]
        mu_a, mu_b, aa, bb, ab = moments
        values = _ssim_formula(mu_a, mu_b, sample * (aa - mu_a * mu_a),
                               sample * (bb - mu_b * mu_b), sample * (ab - mu_a * mu_b),
                               data_range)
        total += float(values[inner[part]].sum(dtype=np.float64))
    return total / int(inner.sum())


def score(prediction_hu, reference_hu, mask=None, ssim_mode: str = DEFAULT_SSIM) -> dict:
    """MAE, PSNR and SSIM of one subject (mask: given, or reference > -500 HU).

    A volume also gets ``through_plane_mae_hu``; a 2-D image does not.
    """
    prediction, reference, mask = check_inputs(prediction_hu, reference_hu, mask)
    result = {"mae_hu": mae_hu(prediction, reference, mask),
              "psnr_db": psnr_db(prediction, reference, mask),
              "ssim": ssim(prediction, reference, mask, mode=ssim_mode)}
    if reference.ndim == 3:
        result["through_plane_mae_hu"] = through_plane_mae_hu(prediction, reference, mask)
    result["mask_voxels"] = int(mask.sum())
    return result
