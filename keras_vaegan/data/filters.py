"""A separable gaussian blur in numpy (scipy is not a dependency).

Used by the phantom (partial-volume edges) and by SSIM in ``evaluate``.
"""

from __future__ import annotations

import numpy as np


def gaussian_blur(x: np.ndarray, sigma: float, radius: int, pad_mode: str = "edge",
                  dtype=np.float64) -> np.ndarray:
    """Blur over the last two axes with a normalised gaussian of ``2 * radius + 1`` taps.

    ``pad_mode`` is numpy's: "edge" replicates the border, "symmetric" mirrors
    it including the edge pixel (scipy.ndimage's "reflect").
    """
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(dtype)
    out = np.asarray(x, dtype=dtype)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode=pad_mode)
        length = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(kernel):
            acc += weight * np.take(padded, np.arange(i, i + length), axis=axis)
        out = acc
    return out
