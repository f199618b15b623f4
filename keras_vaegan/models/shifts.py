"""Shift averaging: a prediction is the mean of the translations at each of the generator's phases.

The generator's encoder downsamples by ``s`` (``latent_downsample``; one
stride-2 stage by default), so a pixel lands at one of ``s`` positions along
each axis of its stride grid, and the translation of an image shifted by one
pixel is not the shifted translation: on the phantom the two differed by
20-29 HU on average, detail the generator made up (benchmarks/RESULTS.md). Translating the image padded by ``p`` pixels above
and to the left (and ``s - p`` below and to the right, so the side stays a
multiple of ``s``) for every ``p < s`` and cropping each result back puts
every pixel at every diagonal phase; with the mirror average (``models.mirror``:
a left-right mirror of an even-width image moves every column to the other
phase) that covers each of the four phases of a stride-2 grid. The padding
mirrors the image at its edge (``reflect``: the same on every backend, where
Keras's torch backend pads ``symmetric`` by repeating the edge pixel), so the
edge gains no frame. It costs ``s`` passes per slice where one did.
"""

from __future__ import annotations

from typing import Callable

import keras

ROWS, COLS = 1, 2  # [batch, rows, cols, channels]


def phase_padding(phase: int, stride: int) -> list[list[int]]:
    """The ``keras.ops.pad`` widths that move an image ``phase`` pixels down and right."""
    before, after = phase, (stride - phase) % stride
    return [[0, 0], [before, after], [before, after], [0, 0]]


def shift_averaged(forward: Callable, images, stride: int, enabled: bool = True):
    """The mean over ``p < stride`` of ``forward`` of ``images`` moved by ``(p, p)``, moved back.

    ``forward`` maps ``[batch, rows, cols, K]`` (sides multiples of
    ``stride``) to an image of the same layout. ``forward(images)`` alone if
    not enabled or the stride is 1.
    """
    stride = int(stride)
    if not enabled or stride <= 1:
        return forward(images)
    total = forward(images)
    for phase in range(1, stride):
        padded = keras.ops.pad(images, phase_padding(phase, stride), mode="reflect")
        end = phase - stride  # negative: the rows and columns the padding added after
        total = keras.ops.add(total, forward(padded)[:, phase:end, phase:end, :])
    return keras.ops.multiply(total, keras.ops.cast(1.0 / stride, total.dtype))
