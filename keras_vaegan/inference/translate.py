"""Translate slices and volumes with a model, in the units the run was trained on.

Every slice is translated at its native resolution: padded with air
(``AIR_UNIT``) up to a multiple of the generator's total stride, translated,
and cropped back, so the output has the input's height and width.
``samples > 1`` draws the latent ``K`` times and returns the mean and the
per-pixel standard deviation (the model's own uncertainty). The maps here
take file units to model units and back (HU for CT), as the run's training
data was mapped. Nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np

from keras_vaegan.data import readers, units
from keras_vaegan.data.volume import Volume, check_slice_size
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.runs import LoadedRun

DIRECTIONS = ("mri2ct", "ct2mri")
MAX_PASS_PIXELS = 2 ** 22  # pixels in one forward pass (padded): one 2048x2048 slice, or 16 of
# 512x512. On CPU the default generator needs about 1 GB per million pixels, so a bigger slice
# is refused and big slices go fewer to a batch than --batch-size.


def direction_modalities(direction: str) -> tuple[str, str]:
    """'mri2ct' -> ('mri', 'ct'): the modality read and the one written."""
    if direction not in DIRECTIONS:
        raise VAEGANError(None, f"unknown direction '{direction}' (one of {', '.join(DIRECTIONS)})")
    return ("mri", "ct") if direction == "mri2ct" else ("ct", "mri")


# --- translation in model units ---------------------------------------------------------


def translate_slice(model, unit_image_2d: np.ndarray, direction: str = "mri2ct",
                    samples: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """One 2-D slice in [-1, 1] -> (translated mean, per-pixel std or None), same size."""
    return translate_slices(model, [unit_image_2d], direction, samples, batch_size=1)[0]


def translate_slices(model, images: Sequence[np.ndarray], direction: str = "mri2ct",
                     samples: int = 1, batch_size: int = 4,
                     on_done: Callable[[int], None] | None = None,
                     ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Translate 2-D slices in [-1, 1], batching slices of the same padded shape.

    Returns ``(mean, std)`` per slice in the input order, each cropped back to
    its slice's size; ``std`` is None for ``samples == 1`` (deterministic,
    ``z = mu``). ``on_done(n)`` is called after each batch with its size.
    """
    direction_modalities(direction)
    samples, batch_size = int(samples), int(batch_size)
    if samples < 1:
        raise VAEGANError(None, f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise VAEGANError(None, f"batch size must be >= 1, got {batch_size}")
    stride = int(model.total_stride)
    prepared = [_as_2d(image) for image in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(prepared):
        groups.setdefault(_padded_shape(image.shape, stride), []).append(index)

    results: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(prepared)
    for shape, indices in groups.items():
        check_slice_pixels(None, shape, stride)
        per_pass = max(1, min(batch_size, MAX_PASS_PIXELS // (shape[0] * shape[1])))
        for start in range(0, len(indices), per_pass):
            batch_indices = indices[start:start + per_pass]
            batch = np.stack([_pad(prepared[i], shape) for i in batch_indices])[..., None]
            mean, std = _translate_batch(model, batch, direction, samples)
            for row, i in enumerate(batch_indices):
                results[i] = (_crop(mean[row], prepared[i].shape),
                              None if std is None else _crop(std[row], prepared[i].shape))
            if on_done is not None:
                on_done(len(batch_indices))
    return results  # type: ignore[return-value]


def _translate_batch(model, batch: np.ndarray, direction: str, samples: int):
    inputs = keras.ops.convert_to_tensor(batch, dtype="float32")
    if samples == 1:
        out = model.translate(inputs, direction, sample=False)
        return keras.ops.convert_to_numpy(out)[..., 0].astype(np.float32), None
    draws = np.stack([keras.ops.convert_to_numpy(model.translate(inputs, direction, sample=True))
                      [..., 0].astype(np.float32) for _ in range(samples)])
    return draws.mean(axis=0), draws.std(axis=0)


def check_slice_pixels(path: str | None, shape: tuple[int, int], stride: int) -> None:
    """Refuse a slice bigger than one forward pass may be (``MAX_PASS_PIXELS``, padded)."""
    rows, cols = _padded_shape(tuple(shape), stride)
    if rows * cols > MAX_PASS_PIXELS:
        raise VAEGANError(path, f"slices of {shape[1]}x{shape[0]} pixels are too big to "
                                f"translate (at most {MAX_PASS_PIXELS:,} pixels after padding, "
                                "e.g. 2048x2048); crop or downsample them")


def check_translatable(path: str | None, shape: tuple[int, ...], stride: int) -> None:
    """Refuse a slice the model cannot translate as one image.

    A side under ``MIN_SIDE`` pixels (a 1-pixel strip cut from a slice seen
    side-on, say) or more pixels than one forward pass may hold.
    """
    if len(shape) != 2:
        raise VAEGANError(path, f"expected 2-D slices, got shape {tuple(shape)}")
    rows, cols = (int(side) for side in shape)
    check_slice_size(path, rows, cols)
    check_slice_pixels(path, (rows, cols), stride)


def _as_2d(image) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise VAEGANError(None, f"expected a 2-D slice, got shape {image.shape}")
    return image


def _padded_shape(shape: tuple[int, int], stride: int) -> tuple[int, int]:
    return tuple(-(-side // stride) * stride for side in shape)  # type: ignore[return-value]


def _pad(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pad evenly on both sides of each axis with air (``AIR_UNIT``)."""
    extra = [target - side for target, side in zip(shape, image.shape)]
    widths = [(e // 2, e - e // 2) for e in extra]
    return np.pad(image, widths, mode="constant", constant_values=units.AIR_UNIT)


def _crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    top = (image.shape[0] - shape[0]) // 2
    left = (image.shape[1] - shape[1]) // 2
    return np.ascontiguousarray(image[top:top + shape[0], left:left + shape[1]])


# --- units --------------------------------------------------------------------------------


def input_map(piece: readers.Slice, modality: str, config) -> units.IntensityMap:
    """File units -> model units for one input slice, as the run's training data was mapped.

    MRI has no absolute unit, so an MRI slice that is not 8-bit is scaled by
    its robust percentiles even for a run trained on 8-bit MRI. CT must match:
    an 8-bit CT holds no HU, and a run trained on 8-bit CT never saw HU.
    """
    trained = config.ct_units if modality == "ct" else config.mri_units
    if modality == "ct":
        if trained == "hu" and piece.bit_depth == "uint8":
            raise VAEGANError(piece.path, "8-bit CT holds no Hounsfield units, but this run was "
                                          "trained on CT in HU; give 16-bit PNG/TIFF or .npy in HU")
        if trained == "uint8" and piece.bit_depth != "uint8":
            raise VAEGANError(piece.path, "CT in HU, but this run was trained on 8-bit CT; "
                                          "give 8-bit images or a run trained on HU")
        return units.map_for(trained, piece.pixels, config)
    if trained == "uint8" and piece.bit_depth != "uint8":
        trained = "percentile"
    return units.map_for(trained, piece.pixels, config)


def output_map(modality: str, config) -> tuple[str, units.IntensityMap]:
    """(units name, map) in which the target modality is written."""
    name = config.ct_units if modality == "ct" else config.mri_units
    if name == "uint8":
        return name, units.UINT8_MAP
    if modality == "ct":
        return name, units.ct_map(tuple(config.ct_window_hu))
    return name, units.IntensityMap(*(float(v) for v in config.mri_reference_range))


def volume_input_map(volume: Volume, modality: str, config) -> units.IntensityMap:
    """File units -> model units for a whole volume: the CT window, or the volume's MRI percentiles."""
    return input_map(readers.Slice(path=volume.path, pixels=volume.voxels, bit_depth="float"),
                     modality, config)


def volume_input_check(modality: str, config, path: str | None = None) -> None:
    """Refuse CT volumes (HU) for a run that was trained on 8-bit CT, before reading them."""
    if modality == "ct" and config.ct_units == "uint8":
        raise VAEGANError(path, "CT volumes hold HU, but this run was trained on 8-bit CT; "
                                "give 8-bit images or a run trained on HU")


def volume_output_map(modality: str, config, path: str | None = None) -> units.IntensityMap:
    """The output map for a volume; refuses CT output from a run that never saw HU."""
    name, mapping = output_map(modality, config)
    if modality == "ct" and name != "hu":
        raise VAEGANError(path, "this run was trained on 8-bit CT, which holds no Hounsfield "
                                "units; a CT volume needs a run trained on CT in HU")
    return mapping


def std_scale(mapping: units.IntensityMap) -> np.float32:
    """Model units -> output units for a spread (a std): the map's half-range, no offset."""
    return np.float32((mapping.high - mapping.low) / 2.0)


@dataclass
class TranslatedVolume:
    """A volume translated slice by slice: canonical [slices, rows, cols] arrays."""

    unit_input: np.ndarray  # the input in model units
    unit_mean: np.ndarray  # the translation in model units
    mean: np.ndarray  # the translation in output units (HU for CT)
    std: np.ndarray | None  # per-voxel std over latent draws in output units (samples > 1)


def translate_volume(run: LoadedRun, volume: Volume, direction: str = "mri2ct",
                     samples: int = 1, batch_size: int = 4,
                     on_done: Callable[[int], None] | None = None) -> TranslatedVolume:
    """Translate every axial slice of a volume (in batches) and map back to output units."""
    in_modality, out_modality = direction_modalities(direction)
    if volume.modality != in_modality:
        raise VAEGANError(volume.path, f"was read as {volume.modality.upper()}, but {direction} "
                                       f"translates {in_modality.upper()}")
    map_in = volume_input_map(volume, in_modality, run.config)
    map_out = volume_output_map(out_modality, run.config, volume.path)
    unit_input = map_in.to_unit(volume.voxels)
    results = translate_slices(run.model, list(unit_input), direction, samples, batch_size,
                               on_done=on_done)
    unit_mean = np.stack([mean for mean, _ in results])
    std = None
    if samples > 1:
        std = np.stack([s for _, s in results]) * std_scale(map_out)
    return TranslatedVolume(unit_input=unit_input, unit_mean=unit_mean,
                            mean=map_out.from_unit(unit_mean), std=std)
