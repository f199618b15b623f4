"""Write 2-D slices in output units (png, tif, npy, jpg) and overview PNG grids.

Each writer is the inverse of ``readers.read_slice`` for its units: CT in HU
goes to unsigned 16-bit PNG/TIFF as HU + 1024 (or float32 ``.npy``), MRI
intensities to 16-bit PNG/TIFF (or float32 ``.npy``), 8-bit images to 8-bit
files. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from keras_vaegan.data.atomic import atomic_path
from keras_vaegan.data.readers import CT_PNG_OFFSET
from keras_vaegan.data.units import UNITS, normalise_modality
from keras_vaegan.errors import VAEGANError

OUTPUT_EXTENSIONS = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg")
_PILLOW_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}


def check_writable(path: str | os.PathLike) -> None:
    """Refuse an output file path that cannot be written, before any work is done.

    The path must not be a folder, and its nearest existing parent must be a
    writable folder (the missing ones are made when the file is written).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise VAEGANError(path, "output is a folder; give a file name")
    _check_parent(path, os.path.dirname(os.path.abspath(path)))


def check_output_folder(path: str | os.PathLike) -> None:
    """Refuse an output folder that is a file, or that cannot be made or written."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise VAEGANError(path, "output exists and is not a folder")
    _check_parent(path, os.path.abspath(path))


def _check_parent(path: str, folder: str) -> None:
    """``folder``, or its nearest existing parent, must be a writable folder."""
    existing = folder
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise VAEGANError(path, f"cannot write here: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VAEGANError(path, f"cannot write here: {existing} is not writable")


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


def write_overview_png(path: str | os.PathLike, rows: Sequence[Sequence[np.ndarray]],
                       titles: Sequence[str] | None = None,
                       row_titles: Sequence[str] | None = None) -> None:
    """A grid of images in [-1, 1] (grey, -1 black) as one PNG.

    ``titles`` head the columns; ``row_titles`` label the rows. Rows may be
    ragged; images may differ in size.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = os.fspath(path)
    rows = [[np.squeeze(np.asarray(img, dtype=np.float32)) for img in row] for row in rows]
    n_rows = len(rows)
    n_cols = max((len(row) for row in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise VAEGANError(path, "overview needs at least one image")
    for row in rows:
        for img in row:
            if img.ndim != 2:
                raise VAEGANError(path, f"overview images must be 2-D, got shape {img.shape}")
    side = max(max(img.shape) for row in rows for img in row)
    cell = float(np.clip(side / 64.0, 1.6, 4.0))  # inches per image
    dpi = max(80, int(np.ceil(side / (cell * 0.85))))
    fig = Figure(figsize=(cell * n_cols, cell * n_rows + (0.3 if titles else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(rows[r]):
                ax.imshow(np.nan_to_num(rows[r][c], nan=-1.0), cmap="gray", vmin=-1.0,
                          vmax=1.0, interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0 and titles is not None and c < len(titles):
                ax.set_title(str(titles[c]), fontsize=9)
            if c == 0 and row_titles is not None and r < len(row_titles):
                ax.set_ylabel(str(row_titles[r]), fontsize=9)
    with warnings.catch_warnings():  # file names in scripts the font lacks: boxes, no warning
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout(pad=0.3)
        with atomic_path(path, suffix=".png") as tmp:
            try:
                fig.savefig(tmp, format="png")
            except OSError as err:
                raise VAEGANError(path, f"cannot write ({err.strerror or err})") from None
