"""Intensity units: how file values (HU, MRI intensities, 8-bit grey) map to [-1, 1].

The networks see every image in [-1, 1]. CT in Hounsfield units is clipped to
a fixed window; MRI, which has no absolute unit, is scaled by robust
percentiles of its own volume (or slice); 8-bit images map 0..255. A run
records the units names (``config.ct_units``, ``config.mri_units``) so that
``predict`` maps outputs back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from keras_vaegan.errors import VAEGANError

UNITS = ("hu", "percentile", "uint8")
AIR_UNIT = -1.0  # air / background in model units: what crops, augmentation and prediction pad with


@dataclass(frozen=True)
class IntensityMap:
    """Linear map of the file range [low, high] onto [-1, 1] (clipped)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            raise VAEGANError(None, f"intensity range must have low < high, got "
                                    f"[{self.low}, {self.high}]")

    def to_unit(self, x) -> np.ndarray:
        """File units -> [-1, 1], values outside [low, high] clipped."""
        x = np.asarray(x, dtype=np.float64)
        u = 2.0 * (x - self.low) / (self.high - self.low) - 1.0
        return np.clip(u, -1.0, 1.0).astype(np.float32)

    def from_unit(self, u) -> np.ndarray:
        """[-1, 1] -> file units; the exact inverse of ``to_unit`` inside [low, high]."""
        u = np.asarray(u, dtype=np.float64)
        return ((u + 1.0) / 2.0 * (self.high - self.low) + self.low).astype(np.float32)

    def to_dict(self) -> dict:
        return {"low": float(self.low), "high": float(self.high)}

    @classmethod
    def from_dict(cls, values: dict) -> "IntensityMap":
        try:
            return cls(float(values["low"]), float(values["high"]))
        except (KeyError, TypeError, ValueError):
            raise VAEGANError(None, f"not an intensity map: {values!r}") from None


UINT8_MAP = IntensityMap(0.0, 255.0)


def ct_map(window_hu: tuple[float, float] = (-1024.0, 3071.0)) -> IntensityMap:
    """The fixed CT window in HU."""
    return IntensityMap(float(window_hu[0]), float(window_hu[1]))


def mri_map(image, percentiles: tuple[float, float] = (0.5, 99.5)) -> IntensityMap:
    """Robust range of one MRI slice or volume, ignoring non-finite values.

    The same numbers as ``np.percentile`` of the values as float64, but found
    on one copy in a type that holds them exactly (float32 for a float32
    volume): a whole volume is copied once, not three times in float64.
    """
    _check_percentiles(percentiles)
    array = np.asarray(image)
    values = np.array(array, dtype=_exact_type(array.dtype), order="C").reshape(-1)
    if not _all_finite(values):
        values = values[np.isfinite(values)]
    if values.size == 0:
        raise VAEGANError(None, "MRI image has no finite values")
    low, high = _percentiles_in_place(values, percentiles)
    if not high > low:
        high = low + 1.0
    return IntensityMap(low, high)


_FINITE_CHUNK = 1 << 20  # values checked at a time: no mask as big as the volume


def _check_percentiles(percentiles) -> None:
    if not all(0 <= p <= 100 for p in percentiles):
        raise VAEGANError(None, f"percentiles must be in [0, 100], got {tuple(percentiles)}")


def _exact_type(dtype: np.dtype) -> type:
    """float32 where it holds every value of ``dtype`` exactly (so the order is kept), else float64."""
    small = dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2) or \
        (dtype.kind == "f" and dtype.itemsize <= 4)
    return np.float32 if small else np.float64


def _all_finite(values: np.ndarray) -> bool:
    return all(np.isfinite(values[start:start + _FINITE_CHUNK]).all()
               for start in range(0, values.size, _FINITE_CHUNK))


def _percentiles_in_place(values: np.ndarray, percentiles) -> tuple[float, float]:
    """``np.percentile(values.astype(float64), percentiles)`` bit for bit, partitioning ``values``.

    numpy's 'linear' method (its ``_quantile``/``_lerp``, written out): the
    order statistics are the same in any type that holds the values exactly,
    and the interpolation is done in float64 as numpy does it. ``values``
    is 1-D, finite and not empty; it is reordered.
    """
    previous, following, gamma = _ranks(values.size, percentiles)
    values.partition(np.unique(np.concatenate(([0, -1], previous, following))))
    return _interpolate(values[previous], values[following], gamma)


def _ranks(count: int, percentiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's 'linear' method: (lower rank, upper rank, weight) per percentile of ``count`` values."""
    quantiles = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    virtual = (count - 1) * quantiles
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= count - 1
    previous[above] = following[above] = count - 1
    below = virtual < 0
    previous[below] = following[below] = 0
    return previous.astype(np.intp), following.astype(np.intp), virtual - np.floor(virtual)


def _interpolate(low_side, high_side, gamma: np.ndarray) -> tuple[float, float]:
    """numpy's ``_lerp`` in float64 between the order statistics at the two ranks."""
    low_side = np.asarray(low_side).astype(np.float64)
    high_side = np.asarray(high_side).astype(np.float64)
    diff = high_side - low_side
    result = low_side + diff * gamma
    np.subtract(high_side, diff * (1 - gamma), out=result, where=gamma >= 0.5)
    return float(result[0]), float(result[1])


def mri_map_of_slabs(slabs: Callable[[], Iterable[np.ndarray]],
                     percentiles: tuple[float, float] = (0.5, 99.5)) -> IntensityMap:
    """``mri_map`` of a float32 volume seen one slab at a time: the same map, one slab in memory.

    ``slabs()`` yields the volume's slabs afresh on each call; it is called
    twice. The order statistics are found by counting, not sorting: each
    float32 becomes an unsigned key in the same order, the first pass counts
    the keys' high 16 bits, the second the low 16 bits inside the few bins
    that hold the ranks wanted, which gives each order statistic exactly
    (predict's memory then does not grow with the slice count).
    """
    _check_percentiles(percentiles)
    high_counts = np.zeros(1 << 16, np.int64)
    for keys in _chunked_keys(slabs):
        high_counts += np.bincount(keys >> 16, minlength=1 << 16)
    count = int(high_counts.sum())
    if count == 0:
        raise VAEGANError(None, "MRI image has no finite values")
    previous, following, gamma = _ranks(count, percentiles)
    wanted = np.concatenate([previous, following])
    ends = np.cumsum(high_counts)
    bins = np.searchsorted(ends, wanted, side="right")
    low_counts = {int(b): np.zeros(1 << 16, np.int64) for b in np.unique(bins)}
    for keys in _chunked_keys(slabs):
        high = keys >> 16
        for b, counts in low_counts.items():
            counts += np.bincount(keys[high == b] & 0xFFFF, minlength=1 << 16)
    keys = np.empty(len(wanted), np.uint32)
    for i, (rank, b) in enumerate(zip(wanted, bins)):
        inside = rank - (ends[b - 1] if b else 0)
        low = int(np.searchsorted(np.cumsum(low_counts[int(b)]), inside, side="right"))
        keys[i] = (int(b) << 16) | low
    values = _keys_to_floats(keys)
    low, high = _interpolate(values[:len(previous)], values[len(previous):], gamma)
    if not high > low:
        high = low + 1.0
    return IntensityMap(low, high)


def _chunked_keys(slabs: Callable[[], Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
    """The keys of every slab, ``_KEY_CHUNK`` values at a time (their temporaries stay small)."""
    for slab in slabs():
        values = np.asarray(slab).reshape(-1)
        for start in range(0, values.size, _KEY_CHUNK):
            yield _float_keys(values[start:start + _KEY_CHUNK])


_KEY_CHUNK = 1 << 16  # values keyed and counted at a time


def _float_keys(slab) -> np.ndarray:
    """Finite float32 values -> uint32 keys in the same order (-0.0 counted as 0.0)."""
    values = np.asarray(slab, dtype=np.float32).reshape(-1)
    if not np.isfinite(values).all():
        values = values[np.isfinite(values)]
    bits = (values + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


def _keys_to_floats(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys >> 31, keys & np.uint32(0x7FFFFFFF), ~keys).astype(np.uint32)
    return bits.view(np.float32)


def normalise_modality(modality: str) -> str:
    """'mri' or 'ct' from the spellings users write (mr, MRI, CT, ...)."""
    name = str(modality).strip().lower()
    if name in ("mri", "mr"):
        return "mri"
    if name == "ct":
        return "ct"
    raise VAEGANError(None, f"unknown modality '{modality}' (mri or ct)")


def modality_units(bit_depth: str, modality: str) -> str:
    """Units name for images of a bit depth: 8-bit -> 'uint8', else 'hu' (CT) / 'percentile' (MRI)."""
    modality = normalise_modality(modality)
    if bit_depth == "uint8":
        return "uint8"
    return "hu" if modality == "ct" else "percentile"


def map_for(units: str, image, config) -> IntensityMap:
    """The map for a units name: 'hu' (config.ct_window_hu), 'percentile' (of ``image``), 'uint8'."""
    if units == "hu":
        return ct_map(tuple(config.ct_window_hu))
    if units == "percentile":
        return mri_map(image, tuple(config.mri_percentiles))
    if units == "uint8":
        return UINT8_MAP
    raise VAEGANError(None, f"unknown intensity units '{units}' (one of {', '.join(UNITS)})")
