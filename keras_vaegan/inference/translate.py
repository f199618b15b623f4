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
from typing import Callable, Iterator, Sequence

import keras
import numpy as np

from keras_vaegan.data import readers, units
from keras_vaegan.data.volume import Volume, check_slice_size
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.compiled import compiled_translation, context_of
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
    samples, batch_size = _checked_counts(samples, batch_size)
    stride = int(model.total_stride)
    prepared = [_as_2d(image) for image in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(prepared):
        groups.setdefault(_padded_shape(image.shape, stride), []).append(index)

    results: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(prepared)
    for shape, indices in groups.items():
        check_slice_pixels(None, shape, stride)
        passes = _Passes(model, direction, samples, shape, len(indices), batch_size)
        for start in range(0, len(indices), passes.per_pass):
            batch_indices = indices[start:start + passes.per_pass]
            mean, std = passes.run([prepared[i] for i in batch_indices])
            for row, i in enumerate(batch_indices):
                results[i] = (_crop(mean[row], prepared[i].shape),
                              None if std is None else _crop(std[row], prepared[i].shape))
            if on_done is not None:
                on_done(len(batch_indices))
    return results  # type: ignore[return-value]


class _Passes:
    """Forward passes over batches of same-shaped slices: padded, translated, (mean, std).

    A model with generators runs the cached compiled function of one fixed
    batch shape (``compiled.compiled_translation``); a short last batch is
    padded with air slices up to it, so it needs no trace of its own. A
    stand-in model (only ``translate``) runs eagerly on the batch as it is.
    """

    def __init__(self, model, direction: str, samples: int, shape: tuple[int, int],
                 count: int, batch_size: int):
        self.model, self.direction, self.samples, self.shape = model, direction, samples, shape
        self.channels = context_of(model)
        self.per_pass = max(1, min(batch_size, MAX_PASS_PIXELS // (shape[0] * shape[1]), count))
        self.compiled = compiled_translation(model, direction, (self.per_pass, *shape),
                                             sample=samples > 1)

    def run(self, slices: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Slices (at most ``per_pass``, each at most ``shape``) -> padded (mean, std or None).

        ``slices`` is a list of 2-D arrays or a 3-D array, each slice on its
        own (a 2.5-D model sees it repeated K times), or a 4-D array of
        stacks [n, rows, cols, K] (a volume's slab with its neighbours,
        ``volume_stacks``): placed with one copy.
        """
        rows = self.per_pass if self.compiled is not None else len(slices)
        batch = np.full((rows, *self.shape, self.channels), units.AIR_UNIT, np.float32)
        if isinstance(slices, np.ndarray) and slices.ndim == 4:
            pieces = [(slice(None, len(slices)), slices)]
        elif isinstance(slices, np.ndarray):
            pieces = [(slice(None, len(slices)), slices[..., np.newaxis])]
        else:
            pieces = [(row, image[..., np.newaxis]) for row, image in enumerate(slices)]
        for row, image in pieces:
            height, width = image.shape[-3:-1]
            top, left = (self.shape[0] - height) // 2, (self.shape[1] - width) // 2
            batch[row, top:top + height, left:left + width, :] = image
        if self.samples == 1:
            return self._forward(batch)[:len(slices)], None
        draws = np.stack([self._forward(batch)[:len(slices)] for _ in range(self.samples)])
        return draws.mean(axis=0), draws.std(axis=0)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled(batch)
        out = self.model.translate(keras.ops.convert_to_tensor(batch, dtype="float32"),
                                   self.direction, sample=self.samples > 1)
        return keras.ops.convert_to_numpy(out)[..., self.channels // 2].astype(np.float32)


def volume_stacks(voxels: np.ndarray, start: int, stop: int, channels: int,
                  to_unit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Slices ``start:stop`` of a [slices, rows, cols] volume as 2.5-D stacks [n, rows, cols, K].

    Stack ``z`` holds slices ``z - K//2 .. z + K//2`` as channels; past the
    volume's first or last slice the edge slice is repeated (as training
    stacks are built, ``data.slice_cache``). ``to_unit`` maps the slab to
    model units once (the neighbours are read once, not K times).
    """
    half = channels // 2
    if half == 0:
        return to_unit(voxels[start:stop])[..., np.newaxis]
    wanted = np.clip(np.arange(start - half, stop + half), 0, len(voxels) - 1)
    slab = to_unit(voxels[wanted[0]:wanted[-1] + 1])[wanted - wanted[0]]
    stacks = np.lib.stride_tricks.sliding_window_view(slab, channels, axis=0)
    return stacks  # [n, rows, cols, K] view: placed into the batch with one copy


def _checked_counts(samples, batch_size) -> tuple[int, int]:
    samples, batch_size = int(samples), int(batch_size)
    if samples < 1:
        raise VAEGANError(None, f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise VAEGANError(None, f"batch size must be >= 1, got {batch_size}")
    return samples, batch_size


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
    """File units -> model units for a whole volume: the CT window, or the volume's MRI percentiles.

    A volume read lazily (``voxels.slabs``, a NIfTI streamed by ``predict``)
    has its percentiles counted slab by slab: the same map, one slab in memory.
    """
    voxels = volume.voxels
    if modality == "mri" and not isinstance(voxels, np.ndarray) and hasattr(voxels, "slabs"):
        return units.mri_map_of_slabs(lambda: (slab for _, _, slab in voxels.slabs()),
                                      tuple(config.mri_percentiles))
    return input_map(readers.Slice(path=volume.path, pixels=voxels, bit_depth="float"),
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
    """A volume translated slice by slice: canonical [slices, rows, cols] arrays in output units.

    Only the outputs are held; the model-unit views (``unit_input``,
    ``unit_mean``) are mapped on request, whole or one slice at a time.
    """

    mean: np.ndarray  # the translation in output units (HU for CT)
    std: np.ndarray | None  # per-voxel std over latent draws in output units (samples > 1)
    input_voxels: np.ndarray  # the input voxels in file units
    map_in: units.IntensityMap  # file units -> model units for the input
    map_out: units.IntensityMap  # model units -> output units

    @property
    def unit_input(self) -> np.ndarray:
        """The input in model units."""
        return self.map_in.to_unit(self.input_voxels)

    @property
    def unit_mean(self) -> np.ndarray:
        """The translation in model units."""
        return self.map_out.to_unit(self.mean)

    def unit_slice(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Slice ``index`` in model units: (input, translation, std or None)."""
        std = None if self.std is None else self.std[index] / std_scale(self.map_out)
        return (self.map_in.to_unit(self.input_voxels[index]), self.map_out.to_unit(self.mean[index]),
                std)


@dataclass
class TranslatedSlab:
    """Slices ``start:stop`` of a volume, translated, in output units (what a writer takes)."""

    start: int
    stop: int
    mean: np.ndarray  # output units (HU for CT), [n, rows, cols]
    std: np.ndarray | None  # output units, for samples > 1
    unit_input: np.ndarray  # the input slices themselves (centre channels) in model units
    map_out: units.IntensityMap  # model units -> output units

    def unit_slice(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Volume slice ``index`` (inside this slab) in model units, as ``TranslatedVolume``'s."""
        row = index - self.start
        std = None if self.std is None else self.std[row] / std_scale(self.map_out)
        return self.unit_input[row], self.map_out.to_unit(self.mean[row]), std


class VolumeTranslation:
    """One volume's translation, a batch at a time: nothing volume-sized is held here.

    Made before any slice is translated, it checks the direction, the
    slice size and the units (the input map: the CT window, or the MRI
    volume's percentiles, found slab by slab for a volume read lazily);
    ``slabs()`` then translates batch after batch, each slice with its
    ``K // 2`` neighbours for a 2.5-D run (the edge slice repeated past the
    ends), in ascending slice order or, for a file that stores its slices
    the other way round, descending (``descending``), so a streaming reader
    and writer go through the file once, forwards.
    """

    def __init__(self, run: LoadedRun, volume: Volume, direction: str = "mri2ct",
                 samples: int = 1, batch_size: int = 4):
        in_modality, out_modality = direction_modalities(direction)
        if volume.modality != in_modality:
            raise VAEGANError(volume.path, f"was read as {volume.modality.upper()}, but "
                                           f"{direction} translates {in_modality.upper()}")
        samples, batch_size = _checked_counts(samples, batch_size)
        self.volume = volume
        self.map_in = volume_input_map(volume, in_modality, run.config)
        self.map_out = volume_output_map(out_modality, run.config, volume.path)
        self.count, self.rows, self.cols = volume.voxels.shape
        stride = int(run.model.total_stride)
        self.shape = _padded_shape((self.rows, self.cols), stride)
        check_slice_pixels(volume.path, self.shape, stride)
        self.passes = _Passes(run.model, direction, samples, self.shape, self.count, batch_size)

    def slabs(self, on_done: Callable[[int], None] | None = None,
              descending: bool = False) -> Iterator[TranslatedSlab]:
        """Translated batches covering every slice once; ``on_done(n)`` after each."""
        per_pass, count = self.passes.per_pass, self.count
        starts = range(0, count, per_pass)
        if descending:  # the same batches from the top: [count - per_pass, count), ...
            starts = range(count - per_pass, -per_pass, -per_pass)
        for start in starts:
            start, stop = max(start, 0), min(start + per_pass, count)
            yield self._translate(start, stop)
            if on_done is not None:
                on_done(stop - start)

    def _translate(self, start: int, stop: int) -> TranslatedSlab:
        stacks = volume_stacks(self.volume.voxels, start, stop, self.passes.channels,
                               self.map_in.to_unit)
        mean, std = self.passes.run(stacks)
        top, left = ((pad - side) // 2 for pad, side in zip(self.shape, (self.rows, self.cols)))
        window = (slice(None), slice(top, top + self.rows), slice(left, left + self.cols))
        return TranslatedSlab(
            start=start, stop=stop, mean=self.map_out.from_unit(mean[window]),
            std=None if std is None else std[window] * std_scale(self.map_out),
            unit_input=np.ascontiguousarray(stacks[..., self.passes.channels // 2]),
            map_out=self.map_out)


def translate_volume(run: LoadedRun, volume: Volume, direction: str = "mri2ct",
                     samples: int = 1, batch_size: int = 4,
                     on_done: Callable[[int], None] | None = None) -> TranslatedVolume:
    """Translate every axial slice of a volume and map it back to output units, in memory.

    ``VolumeTranslation`` batch by batch, gathered into whole output arrays
    (``predict`` streams a NIfTI volume to its file instead).
    """
    translation = VolumeTranslation(run, volume, direction, samples, batch_size)
    mean = np.empty(volume.voxels.shape, np.float32)
    std = np.empty(volume.voxels.shape, np.float32) if translation.passes.samples > 1 else None
    for slab in translation.slabs(on_done):
        mean[slab.start:slab.stop] = slab.mean
        if std is not None:
            std[slab.start:slab.stop] = slab.std
    return TranslatedVolume(mean=mean, std=std, input_voxels=volume.voxels,
                            map_in=translation.map_in, map_out=translation.map_out)
