"""Intensity units: HU window, MRI percentiles and 8-bit maps round-trip exactly."""

import numpy as np
import pytest

from keras_vaegan.config import Config
from keras_vaegan.data.units import (
    UINT8_MAP,
    IntensityMap,
    ct_map,
    map_for,
    modality_units,
    mri_map,
)
from keras_vaegan.errors import VAEGANError


def test_hu_round_trip_is_exact_inside_the_window():
    window = ct_map()
    hu = np.linspace(-1024, 3071, 4096).astype(np.float32)
    unit = window.to_unit(hu)
    assert unit.dtype == np.float32
    assert unit.min() == -1.0 and unit.max() == 1.0
    np.testing.assert_allclose(window.from_unit(unit), hu, atol=1e-3)
    assert window.to_unit(np.float32(0.0)) == pytest.approx(2 * 1024 / 4095 - 1)


def test_hu_outside_the_window_is_clipped():
    window = ct_map((-1000.0, 2000.0))
    unit = window.to_unit(np.array([-3000.0, -1000.0, 2000.0, 5000.0]))
    np.testing.assert_array_equal(unit, [-1, -1, 1, 1])
    np.testing.assert_allclose(window.from_unit(unit), [-1000, -1000, 2000, 2000])


def test_percentile_map_ignores_outliers_and_non_finite_values():
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 900, size=(64, 64))
    image[0, 0] = 1e6
    image[0, 1] = np.nan
    image[0, 2] = np.inf
    m = mri_map(image, (0.5, 99.5))
    assert 100 <= m.low < 110 and 890 < m.high <= 900
    inside = image[1:, :]
    np.testing.assert_allclose(m.from_unit(m.to_unit(inside)),
                               np.clip(inside, m.low, m.high), rtol=1e-5)


def test_constant_image_gets_a_unit_wide_range():
    m = mri_map(np.full((8, 8), 42.0))
    assert (m.low, m.high) == (42.0, 43.0)
    assert np.all(m.to_unit(np.full((8, 8), 42.0)) == -1)


def test_uint8_round_trip():
    values = np.arange(256, dtype=np.float32)
    back = UINT8_MAP.from_unit(UINT8_MAP.to_unit(values))
    np.testing.assert_array_equal(np.rint(back), values)
    np.testing.assert_allclose(back, values, atol=1e-4)


def test_dict_round_trip_and_bad_ranges():
    m = IntensityMap(-1024.0, 3071.0)
    assert IntensityMap.from_dict(m.to_dict()) == m
    with pytest.raises(VAEGANError):
        IntensityMap(5.0, 5.0)
    with pytest.raises(VAEGANError):
        IntensityMap.from_dict({"low": 1})


def test_modality_units_and_map_for():
    assert modality_units("uint8", "ct") == "uint8"
    assert modality_units("uint8", "mri") == "uint8"
    assert modality_units("uint16", "ct") == "hu"
    assert modality_units("float", "CT") == "hu"
    assert modality_units("uint16", "mri") == "percentile"
    assert modality_units("float", "mr") == "percentile"
    with pytest.raises(VAEGANError):
        modality_units("uint16", "pet")

    config = Config(ct_window_hu=(-1000.0, 2000.0), mri_percentiles=(1.0, 99.0))
    assert map_for("hu", None, config) == IntensityMap(-1000.0, 2000.0)
    assert map_for("uint8", None, config) is UINT8_MAP
    image = np.arange(101, dtype=np.float32)
    assert map_for("percentile", image, config) == IntensityMap(1.0, 99.0)
    with pytest.raises(VAEGANError):
        map_for("kelvin", image, config)


def _cases(count=600):
    """Float32 samples that make order statistics hard: ties, zeros of both signs, huge ranges."""
    rng = np.random.default_rng(7)
    for trial in range(count):
        n = int(rng.integers(1, 3000))
        kind = trial % 5
        if kind == 0:
            values = rng.normal(0, 100, n)
        elif kind == 1:
            values = rng.integers(-5, 5, n).astype(np.float64)  # many ties
        elif kind == 2:
            values = np.zeros(n)  # background with a few voxels
            values[rng.integers(0, n, 3)] = rng.normal(0, 1, 3)
        elif kind == 3:
            values = rng.normal(0, 1, n) * 10 ** rng.uniform(-30, 30, n)
            values[::7] = -0.0
        else:
            values = rng.uniform(0, 1e4, n)
        percentiles = (0.5, 99.5) if trial % 3 == 0 else tuple(sorted(rng.uniform(0, 100, 2)))
        if trial % 11 == 0:
            percentiles = (0.0, 100.0)
        yield values.astype(np.float32), percentiles, int(rng.integers(1, 6))


def test_percentiles_of_slabs_equal_the_whole_volumes_bit_for_bit():
    """Counting keys slab by slab finds the same order statistics as numpy's float64 percentile."""
    from keras_vaegan.data.units import mri_map_of_slabs

    for values, percentiles, parts in _cases():
        slabs = np.array_split(values, parts)
        streamed = mri_map_of_slabs(lambda slabs=slabs: iter(slabs), percentiles)
        reference = np.percentile(values.astype(np.float64), percentiles)
        whole = mri_map(values, percentiles)
        assert (streamed.low, streamed.high) == (whole.low, whole.high)
        if reference[1] > reference[0]:
            assert (streamed.low, streamed.high) == (reference[0], reference[1])


def test_percentiles_of_slabs_skip_non_finite_values_and_refuse_none():
    from keras_vaegan.data.units import mri_map_of_slabs

    image = np.random.default_rng(0).uniform(100, 900, size=(6, 32, 32)).astype(np.float32)
    image[0, 0, 0], image[3, 1, 1], image[5, 2, 2] = np.nan, np.inf, -np.inf
    streamed = mri_map_of_slabs(lambda: (image[i:i + 2] for i in range(0, 6, 2)))
    whole = mri_map(image)
    assert (streamed.low, streamed.high) == (whole.low, whole.high)
    constant = mri_map_of_slabs(lambda: iter([np.full((4, 8, 8), 42.0, np.float32)]))
    assert (constant.low, constant.high) == (42.0, 43.0)
    with pytest.raises(VAEGANError, match="no finite values"):
        mri_map_of_slabs(lambda: iter([np.full((2, 8, 8), np.nan, np.float32)]))
    with pytest.raises(VAEGANError, match=r"\[0, 100\]"):
        mri_map_of_slabs(lambda: iter([image]), (-1.0, 50.0))
