"""Write 2-D slices in output units (png, tif, npy, jpg).

Each writer is the inverse of ``readers.read_slice`` for its units: CT in HU
goes to unsigned 16-bit PNG/TIFF as HU + 1024 (or float32 ``.npy``), MRI
intensities to 16-bit PNG/TIFF (or float32 ``.npy``), 8-bit images to 8-bit
files. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import os

import numpy as np

from keras_vaegan.data.readers import CT_PNG_OFFSET
from keras_vaegan.data.units import UNITS, normalise_modality
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_path

OUTPUT_EXTENSIONS = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg")
_PILLOW_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}


def write_slice(path: str | os.PathLike, image, units: str, modality: str) -> None:
    """Write one 2-D array given in output units; the format follows the extension."""
    path = os.fspath(path)
    modality = normalise_modality(modality)
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise VAEGANError(path, f"unsupported output type '{ext or 'none'}' "
                                f"(supported: {', '.join(OUTPUT_EXTENSIONS)})")
    if units not in UNITS:
        raise VAEGANError(path, f"unknown intensity units '{units}' (one of {', '.join(UNITS)})")
    if units == "hu" and modality != "ct":
        raise VAEGANError(path, "units 'hu' are for CT only")
    if units == "percentile" and modality != "mri":
        raise VAEGANError(path, "units 'percentile' are for MRI only")
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise VAEGANError(path, f"expected a 2-D image, got shape {image.shape}")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise VAEGANError(path, "image has non-finite values (NaN or inf)")
    if ext in (".jpg", ".jpeg") and units != "uint8":
        raise VAEGANError(path, f"JPEG holds 8-bit images only; write {units} "
                                "output as .png, .tif or .npy")

    if units == "uint8":
        data = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    elif ext == ".npy":
        data = image.astype(np.float32)
    else:
        offset = CT_PNG_OFFSET if units == "hu" else 0
        data = np.clip(np.rint(image + offset), 0, 65535).astype(np.uint16)

    with atomic_path(path) as tmp:
        try:
            if ext == ".npy":
                with open(tmp, "wb") as handle:
                    np.save(handle, data, allow_pickle=False)
            else:
                from PIL import Image

                options = {"quality": 95} if _PILLOW_FORMATS[ext] == "JPEG" else {}
                Image.fromarray(data).save(tmp, format=_PILLOW_FORMATS[ext], **options)
        except OSError as err:
            raise VAEGANError(path, f"cannot write ({err.strerror or err})") from None
