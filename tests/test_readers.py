"""Slice readers and writers: formats, the CT HU convention, and clear errors."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from keras_vaegan.data.readers import SLICE_EXTENSIONS, Slice, find_images, read_slice, read_slices
from keras_vaegan.data.writers import write_slice
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.figures import write_overview_png


def _ramp(dtype, high, shape=(16, 24)):
    return (np.arange(np.prod(shape)).reshape(shape) * (high // np.prod(shape))).astype(dtype)


def test_8bit_png_reads_as_uint8(tmp_path):
    pixels = _ramp(np.uint8, 255)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    s = read_slice(tmp_path / "a.png", "ct")
    assert isinstance(s, Slice)
    assert s.bit_depth == "uint8" and s.pixels.dtype == np.float32
    np.testing.assert_array_equal(s.pixels, pixels)  # 8-bit CT stays 0..255
    assert s.path == str(tmp_path / "a.png")


def test_16bit_png_ct_is_hu_plus_1024_and_mri_is_as_is(tmp_path):
    stored = _ramp(np.uint16, 4000)
    Image.fromarray(stored).save(tmp_path / "b.png")
    ct = read_slice(tmp_path / "b.png", "ct")
    mri = read_slice(tmp_path / "b.png", "mri")
    assert ct.bit_depth == mri.bit_depth == "uint16"
    np.testing.assert_array_equal(ct.pixels, stored.astype(np.float32) - 1024)
    np.testing.assert_array_equal(mri.pixels, stored)


def test_tiff_unsigned_signed_and_float(tmp_path):
    stored = _ramp(np.uint16, 3000)
    Image.fromarray(stored).save(tmp_path / "u.tif")
    assert read_slice(tmp_path / "u.tif", "ct").pixels.min() == -1024
    signed = (_ramp(np.int32, 3000) - 1000).astype(np.int16)
    Image.fromarray(signed).save(tmp_path / "s.tiff")
    s = read_slice(tmp_path / "s.tiff", "ct")
    assert s.bit_depth == "float"
    np.testing.assert_array_equal(s.pixels, signed)  # signed TIFF holds HU as is
    floats = np.linspace(-1000, 2000, 16 * 24, dtype=np.float32).reshape(16, 24)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    f = read_slice(tmp_path / "f.tif", "ct")
    assert f.bit_depth == "float"
    np.testing.assert_array_equal(f.pixels, floats)


def test_npy_2d_and_single_channel(tmp_path):
    hu = np.linspace(-1000, 1500, 20 * 10).reshape(20, 10)
    np.save(tmp_path / "a.npy", hu)
    np.save(tmp_path / "b.npy", hu[None].astype(np.float32))
    np.save(tmp_path / "c.npy", hu[..., None].astype(np.int16))
    for name in ("a.npy", "b.npy", "c.npy"):
        s = read_slice(tmp_path / name, "ct")
        assert s.pixels.shape == (20, 10) and s.bit_depth == "float"
        np.testing.assert_allclose(s.pixels, hu, atol=1.0)
    np.save(tmp_path / "d.npy", np.zeros((2, 20, 10)))
    with pytest.raises(VAEGANError, match="2-D"):
        read_slice(tmp_path / "d.npy", "ct")
    bad = hu.copy()
    bad[3, 3] = np.nan
    np.save(tmp_path / "e.npy", bad)
    with pytest.raises(VAEGANError, match="non-finite"):
        read_slice(tmp_path / "e.npy", "ct")


def test_rgb_is_converted_to_luminance_with_a_warning(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 100
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    with pytest.warns(UserWarning, match="colour.png"):
        s = read_slice(path, "mri")
    assert s.bit_depth == "uint8"
    np.testing.assert_allclose(s.pixels, 0.299 * 200 + 0.114 * 100, atol=1e-3)
    # a grey image stored as RGB loses nothing: no warning
    Image.fromarray(np.repeat(rgb[..., :1], 3, axis=2)).save(tmp_path / "grey.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(read_slice(tmp_path / "grey.png", "mri").pixels, 200, atol=1e-3)


def test_palette_image_is_converted(tmp_path):
    grey = _ramp(np.uint8, 255)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    s = read_slice(tmp_path / "p.png", "mri")
    assert s.bit_depth == "uint8" and s.pixels.shape == grey.shape


@pytest.mark.parametrize("ext", [".png", ".tif", ".npy"])
def test_ct_hu_round_trip_through_write_slice(tmp_path, ext):
    hu = np.linspace(-1024, 3071, 32 * 32).reshape(32, 32)
    path = tmp_path / f"ct{ext}"
    write_slice(path, hu, "hu", "ct")
    s = read_slice(path, "ct")
    assert s.bit_depth == ("float" if ext == ".npy" else "uint16")
    np.testing.assert_allclose(s.pixels, hu, atol=0.5)
    write_slice(path, np.full((8, 8), -5000.0), "hu", "ct")
    expected = -5000.0 if ext == ".npy" else -1024.0  # 16-bit files hold HU >= -1024
    assert read_slice(path, "ct").pixels.min() == expected


def test_mri_and_uint8_round_trip_through_write_slice(tmp_path):
    mri = np.linspace(0, 1200, 16 * 16).reshape(16, 16)
    write_slice(tmp_path / "m.png", mri, "percentile", "mri")
    s = read_slice(tmp_path / "m.png", "mri")
    assert s.bit_depth == "uint16"
    np.testing.assert_allclose(s.pixels, mri, atol=0.5)
    grey = np.linspace(-10, 300, 16 * 16).reshape(16, 16)
    for ext in (".png", ".jpg", ".npy"):
        write_slice(tmp_path / f"g{ext}", grey, "uint8", "ct")
        back = read_slice(tmp_path / f"g{ext}", "ct")
        assert back.bit_depth == "uint8"
        expected = np.clip(np.rint(grey), 0, 255)
        np.testing.assert_allclose(back.pixels, expected, atol=0 if ext != ".jpg" else 8)
    with pytest.raises(VAEGANError, match="JPEG"):
        write_slice(tmp_path / "ct.jpg", grey, "hu", "ct")
    assert not (tmp_path / "ct.jpg").exists()
    with pytest.raises(VAEGANError, match="unsupported"):
        write_slice(tmp_path / "ct.bmp", grey, "hu", "ct")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_text_file_named_png_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(VAEGANError) as err:
        read_slice(path, "ct")
    assert err.value.path == str(path)
    assert "notes.png" in str(err.value) and "\n" not in str(err.value)
    assert str(path) not in err.value.reason  # the path is said once, not repeated


def test_zero_byte_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(VAEGANError, match="empty"):
        read_slice(empty, "mri")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(VAEGANError) as err:
        read_slice(tmp_path / "cut.png", "mri")
    assert err.value.path == str(tmp_path / "cut.png")
    np.save(tmp_path / "full.npy", np.zeros((32, 32)))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:100])
    with pytest.raises(VAEGANError, match="npy"):
        read_slice(tmp_path / "cut.npy", "ct")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(VAEGANError, match="not a .npy file"):
        read_slice(tmp_path / "text.npy", "ct")


def test_image_size_limits(tmp_path):
    Image.fromarray(np.zeros((4, 40), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(VAEGANError, match="smaller than 8x8"):
        read_slice(tmp_path / "thin.png", "mri")
    Image.new("L", (8200, 8)).save(tmp_path / "wide.png")
    with pytest.raises(VAEGANError, match="bigger than"):
        read_slice(tmp_path / "wide.png", "mri")


def test_find_images_recurses_sorts_and_skips_hidden_and_temp_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/2.png", "b/1.PNG", "a.npy", ".tmp-x.png", ".hidden/c.png", "b/note.txt"):
        (tmp_path / rel).write_bytes(b"x")
    assert find_images(tmp_path) == sorted(
        [str(tmp_path / "a.npy"), str(tmp_path / "b" / "1.PNG"), str(tmp_path / "b" / "2.png")])
    assert find_images(tmp_path / "a.npy") == [str(tmp_path / "a.npy")]
    with pytest.raises(VAEGANError, match="unsupported"):
        find_images(tmp_path / "b" / "note.txt")
    assert ".png" in SLICE_EXTENSIONS


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(VAEGANError, match="no such file or folder") as err:
        find_images(tmp_path / "nowhere")
    assert err.value.path == str(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(VAEGANError, match=r"no images \(\.png"):
        read_slices(tmp_path / "empty", "ct")


def test_read_slices_reads_folders_and_lists(tmp_path):
    for i in range(3):
        write_slice(tmp_path / "ct" / f"{i}.png", np.full((16, 16), 100.0 * i), "hu", "ct")
    slices = read_slices(tmp_path / "ct", "ct")
    assert [float(s.pixels.mean()) for s in slices] == [0.0, 100.0, 200.0]
    both = read_slices([tmp_path / "ct" / "0.png", tmp_path / "ct"], "ct")
    assert len(both) == 4


def test_overview_png(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[rng.uniform(-1, 1, (32, 32)) for _ in range(3)],
            [rng.uniform(-1, 1, (32, 32, 1)), rng.uniform(-1, 1, (40, 24))]]
    path = tmp_path / "snap" / "epoch_001.png"
    write_overview_png(path, rows, ["input", "translated", "reconstructed"],
                       row_titles=["MRI", "CT"])
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 96 and img.size[1] > 64
    with pytest.raises(VAEGANError):
        write_overview_png(tmp_path / "x.png", [])
