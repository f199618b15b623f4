"""The run's history: ``history.csv`` (one row per epoch) and ``history.png`` (its loss curves)."""

from __future__ import annotations

import collections.abc
import csv
import io
import math
import os

import keras
import numpy as np

from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_write_text
from keras_vaegan.io.figures import save_figure

HISTORY_FILE = "history.csv"
HISTORY_PLOT = "history.png"


class HistoryLogger(keras.callbacks.Callback):
    """``history.csv`` in Keras's ``CSVLogger`` format, rewritten whole (atomically) at each epoch end.

    Why not ``CSVLogger`` itself: it appends to an open file, so (1) a
    resumed run whose columns differ from the file's header (a loss term
    added since, ``--validation-data`` given only on resume) would shift
    every later column under the old header, (2) the row of an epoch that
    was written but not checkpointed before a kill would be doubled when
    that epoch is trained again, and (3) a power cut could leave half a
    row. Here the table is kept whole: columns are the union of the file's
    and this session's (cells an epoch did not log read ``NA``, as Keras
    writes them), rows of epochs from ``first_epoch`` on are dropped when
    training begins (they are trained again), and a retrained epoch's row
    replaces its old one.
    """

    def __init__(self, filename: str, append: bool = False, first_epoch: int | None = None):
        super().__init__()
        self.filename = os.fspath(filename)
        self.append = append
        self.first_epoch = first_epoch
        self.keys: list[str] | None = None
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        self.keys, self.rows = None, []
        if self.append and os.path.exists(self.filename):
            self.keys, self.rows = read_history(self.filename)
            if self.first_epoch is not None:
                kept = [row for row in self.rows if _epoch_of(row) < self.first_epoch]
                if len(kept) != len(self.rows):
                    self.rows = kept
                    self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.keys = _columns(self.keys, logs)
        self.rows = [row for row in self.rows if _epoch_of(row) < epoch]
        self.rows.append({"epoch": epoch, **{k: _cell(v) for k, v in logs.items()}})
        self._write()

    def _write(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["epoch", *(self.keys or [])], restval="NA",
                                extrasaction="ignore", dialect=csv.excel)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.filename, text.getvalue())


def read_history(path: str) -> tuple[list[str], list[dict]]:
    """The columns (without ``epoch``) and rows (dicts of text) of a ``history.csv``."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row.get("epoch") not in (None, "")]
        return [name for name in reader.fieldnames or [] if name != "epoch"], rows


def _columns(old: list[str] | None, logs: dict) -> list[str]:
    """The table's columns after an epoch that logged ``logs``: the file's order when it has them all."""
    new = sorted(logs)
    if not any(name.startswith("val_") for name in new):
        new += [f"val_{name}" for name in new]  # as CSVLogger does without validation
    if old is None:
        return new
    if set(new) <= set(old):
        return old
    names = set(old) | set(new)
    return (sorted(n for n in names if not n.startswith("val_"))
            + sorted(n for n in names if n.startswith("val_")))


def _cell(value):
    """A logged value as CSVLogger writes it (a 1-D array as a quoted list)."""
    if isinstance(value, str):
        return value
    if isinstance(value, collections.abc.Iterable) and np.ndim(value) != 0:
        return f'"[{", ".join(map(str, value))}]"'
    return value


def _epoch_of(row: dict) -> int:
    return int(row["epoch"])


class HistoryPlot(keras.callbacks.Callback):
    """Redraws ``history.png`` from ``history.csv`` at each epoch end (after ``HistoryLogger``)."""

    def __init__(self, history_csv: str, path: str):
        super().__init__()
        self.history_csv = history_csv
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        write_history_plot(self.history_csv, self.path)


def write_history_plot(history_csv: str | os.PathLike, path: str | os.PathLike) -> None:
    """Loss curves from ``history.csv``: one small panel per term, train and validation where logged.

    Epochs are counted from 1 on the x axis, as the snapshots are named.
    """
    path = os.fspath(path)
    names, rows = read_history(os.fspath(history_csv))
    if not rows:
        raise VAEGANError(os.fspath(history_csv), "no epoch to plot")
    epochs = [_epoch_of(row) + 1 for row in rows]
    terms = [name for name in names if not name.startswith("val_")]
    fig = _history_figure(epochs, terms, {name: [_number(row.get(name)) for row in rows]
                                          for name in names})
    save_figure(fig, path, pad=0.4)


def _history_figure(epochs: list[int], terms: list[str], values: dict[str, list[float]]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_cols = max(1, min(4, len(terms)))
    n_rows = max(1, math.ceil(len(terms) / n_cols))
    fig = Figure(figsize=(2.6 * n_cols, 1.9 * n_rows), dpi=72)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    marker = "o" if len(epochs) <= 30 else None
    for ax, term in zip(axes, terms):
        ax.plot(epochs, values[term], marker=marker, markersize=2.5, linewidth=1.0,
                label="train")
        validation = values.get(f"val_{term}", [])
        if any(math.isfinite(v) for v in validation):
            ax.plot(epochs, validation, marker=marker, markersize=2.5, linewidth=1.0,
                    label="validation")
            ax.legend(fontsize=6, frameon=False)
        ax.set_title(term, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[len(terms):]:
        ax.axis("off")
    return fig


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan  # "NA" (not logged that epoch) or a list cell
