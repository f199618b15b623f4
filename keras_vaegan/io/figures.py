"""Figures written as PNG files: the overview grid of predict, evaluate and the training snapshots."""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_path

OVERVIEW_NAME = "overview.png"  # predict's (and evaluate's) grid of inputs and outputs, not a result


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
    save_figure(fig, path, pad=0.3)


def save_figure(fig, path: str | os.PathLike, pad: float = 0.3) -> None:
    """Lay out a matplotlib ``Figure`` and write it as a PNG atomically (never half written).

    Text the font cannot draw (file names in other scripts) becomes boxes,
    and a layout that cannot fit gets no warning: a figure is a picture of a
    result, not a reason to print to the user's console.
    """
    path = os.fspath(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(tight_layout|Glyph).*")
        fig.tight_layout(pad=pad)
        with atomic_path(path, suffix=".png") as tmp:
            try:
                fig.savefig(tmp, format="png")
            except OSError as err:
                raise VAEGANError(path, f"cannot write ({err.strerror or err})") from None
