"""Bad input never costs data: malformed files are refused (odd valid ones accepted) as documented.

Most files are checked through the Python API (fast); a handful of CLI calls
pin the command-line contract: one line ``error: <path>: <reason>``, exit
code 2, no traceback (one with ``KERAS_VAEGAN_DEBUG=1``), ``--skip-bad``,
``--overwrite``, safe-mode refusal and invalid run configs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import numpy as np
import pytest
from conftest import TINY as FIT_TINY
from conftest import save_tiny_run
from PIL import Image
from test_cli import assert_one_error_line, cli, tiny_config_file

from keras_vaegan.config import Config
from keras_vaegan.data import readers, volumes, writers
from keras_vaegan.data.training_data import load_training_data
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.predict import load_run, predict

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402

TINY = dict(image_size=32, batch_size=2, gen_filters=4, latent_channels=4, gen_res_blocks=1,
            disc_filters=(8, 16), disc_heads=1, epochs=1, steps_per_epoch=1)
MR_SMALL = get_testdata_file("MR_small.dcm")
AFFINE = np.diag([-1.0, -1.0, 2.0, 1.0])


# --- the corpus -------------------------------------------------------------------------------


def _head(height=48, width=40, seed=0) -> np.ndarray:
    """An 8-bit MRI-like slice: a bright ellipse with noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.4 * width)) ** 2 < 1
    noise = np.random.default_rng(seed).normal(0, 8, (height, width))
    return np.clip(inside * 180 + 30 + noise, 0, 255).astype(np.uint8)


def _cut(path, keep) -> None:
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:keep(len(data))])


def _nifti(path, data) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), AFFINE), str(path))
    return str(path)


def _nifti_header_only(path, shape) -> str:
    """A .nii whose header claims ``shape`` but holds no voxels (refused before reading them)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4)
    return str(path)


def _dicom(path, **changes) -> str:
    dataset = pydicom.dcmread(MR_SMALL)
    for name, value in changes.items():
        if value is None:
            delattr(dataset, name)
        else:
            setattr(dataset, name, value)
    dataset.save_as(path)
    return str(path)


def _bad_slices(folder) -> dict[str, tuple[str, str]]:
    """2-D slice files that must be refused -> {name: (path, reason fragment)}."""
    os.makedirs(folder, exist_ok=True)
    p = functools.partial(os.path.join, folder)
    open(p("zero.png"), "wb").close()
    with open(p("text.png"), "w") as handle:
        handle.write("this is a text file, not a picture\n")
    Image.fromarray(_head(64, 64)).save(p("cut.png"))
    _cut(p("cut.png"), lambda n: n // 2)
    Image.fromarray(_head(64, 64)).save(p("cut.jpg"), quality=95)
    _cut(p("cut.jpg"), lambda n: n // 2)
    Image.fromarray(_head(5, 7)).save(p("tiny_7x5.png"))
    Image.new("L", (8200, 8)).save(p("wide_8200x8.png"))
    with open(p("huge.npy"), "wb") as handle:  # header of a 10000x10000 array, no data
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": (10000, 10000)})
    np.save(p("nan.npy"), np.full((16, 16), np.nan, np.float32))
    np.save(p("cut.npy"), np.zeros((32, 32), np.float32))
    _cut(p("cut.npy"), lambda n: 200)
    return {
        "zero.png": (p("zero.png"), "empty file (0 bytes)"),
        "text.png": (p("text.png"), "not a readable image"),
        "cut.png": (p("cut.png"), "not a readable image (image file is truncated"),
        "cut.jpg": (p("cut.jpg"), "not a readable image (image file is truncated"),
        "tiny_7x5.png": (p("tiny_7x5.png"), "image is 7x5, smaller than 8x8"),
        "wide_8200x8.png": (p("wide_8200x8.png"), "image is 8200x8, bigger than 8192x8192"),
        "huge.npy": (p("huge.npy"), "bigger than 8192x8192"),
        "nan.npy": (p("nan.npy"), "non-finite values"),
        "cut.npy": (p("cut.npy"), "truncated .npy file"),
    }


def _bad_volumes(folder) -> dict[str, tuple[str, str, bool]]:
    """Volume files that must be refused -> {name: (path, reason, found from the header?)}."""
    os.makedirs(folder, exist_ok=True)
    p = functools.partial(os.path.join, folder)
    open(p("zero.nii.gz"), "wb").close()
    _nifti(p("cut_header.nii.gz"), np.zeros((16, 16, 4)))
    _cut(p("cut_header.nii.gz"), lambda n: 60)
    _nifti(p("cut_voxels.nii.gz"), np.random.default_rng(0).normal(size=(32, 32, 16)))
    _cut(p("cut_voxels.nii.gz"), lambda n: n // 2)
    _nifti(p("cut_voxels.nii"), np.random.default_rng(0).normal(size=(32, 32, 16)))
    _cut(p("cut_voxels.nii"), lambda n: n // 2)
    _nifti(p("nan.nii.gz"), np.full((16, 16, 3), np.nan))
    inf = np.zeros((16, 16, 3))
    inf[3, 4, 1] = np.inf
    _nifti(p("inf.nii.gz"), inf)
    _nifti(p("four_d.nii.gz"), np.zeros((16, 16, 4, 3)))
    _nifti(p("two_d.nii.gz"), np.zeros((16, 16)))
    _nifti_header_only(p("huge.nii"), (1024, 1024, 1024))
    open(p("zero.dcm"), "wb").close()
    with open(p("random.dcm"), "wb") as handle:
        handle.write(np.random.default_rng(1).bytes(2000))
    _dicom(p("no_pixels.dcm"), PixelData=None)
    _dicom(p("cut_pixels.dcm"))
    _cut(p("cut_pixels.dcm"), lambda n: n - 3000)
    _dicom(p("cut_header.dcm"))
    _cut(p("cut_header.dcm"), lambda n: 400)
    _dicom(p("rows_9000.dcm"), Rows=9000)
    _dicom(p("frames_20000.dcm"), Rows=4096, Columns=4096, NumberOfFrames=20000)
    return {
        "zero.nii.gz": (p("zero.nii.gz"), "empty file (0 bytes)", True),
        "cut_header.nii.gz": (p("cut_header.nii.gz"), "truncated or corrupt NIfTI", True),
        "cut_voxels.nii.gz": (p("cut_voxels.nii.gz"), "truncated or corrupt NIfTI", True),
        "cut_voxels.nii": (p("cut_voxels.nii"), "truncated NIfTI file", True),
        "nan.nii.gz": (p("nan.nii.gz"), "non-finite values (NaN or inf)", False),
        "inf.nii.gz": (p("inf.nii.gz"), "non-finite values (NaN or inf)", False),
        "four_d.nii.gz": (p("four_d.nii.gz"), "4-D NIfTI", True),
        "two_d.nii.gz": (p("two_d.nii.gz"), "2-D NIfTI", True),
        "huge.nii": (p("huge.nii"), "more than the limit of 268,435,456", True),
        "zero.dcm": (p("zero.dcm"), "empty file (0 bytes)", True),
        "random.dcm": (p("random.dcm"), "not a DICOM file", True),
        "no_pixels.dcm": (p("no_pixels.dcm"), "no pixel data", True),
        "cut_pixels.dcm": (p("cut_pixels.dcm"), "pixel data is cut short", True),
        "cut_header.dcm": (p("cut_header.dcm"), "not a complete DICOM image", True),
        "rows_9000.dcm": (p("rows_9000.dcm"), "bigger than 8192x8192", True),
        "frames_20000.dcm": (p("frames_20000.dcm"), "more than the limit of 268,435,456", True),
    }


def _good_slices(folder) -> dict[str, tuple[str, str]]:
    """Odd but valid slices that must be accepted -> {name: (path, bit depth)}."""
    os.makedirs(folder, exist_ok=True)
    p = functools.partial(os.path.join, folder)
    grey = _head()
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(p("rgb.png"))
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 200)])).save(p("rgba.png"))
    Image.fromarray(grey.astype(np.uint16) * 100).save(p("sixteen_bit.png"))
    Image.fromarray(_head(8, 8)).save(p("eight_by_eight.png"))
    Image.fromarray(grey).save(p("with spaces and ünïcödé – 頭部.png"))
    return {name: (p(name), depth) for name, depth in (
        ("rgb.png", "uint8"), ("rgba.png", "uint8"), ("sixteen_bit.png", "uint16"),
        ("eight_by_eight.png", "uint8"), ("with spaces and ünïcödé – 頭部.png", "uint8"))}


@pytest.fixture
def corpus(tmp_path):
    """The malformed (and odd but valid) files, built fresh in tmp_path."""
    return {"bad_slices": _bad_slices(tmp_path / "bad_slices"),
            "bad_volumes": _bad_volumes(tmp_path / "bad_volumes"),
            "good_slices": _good_slices(tmp_path / "good_slices")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(save_tiny_run(tmp_path_factory.mktemp("runs") / "tiny", Config(**TINY)))


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, names in os.walk(folder) for f in names)


# --- every file of the corpus ---------------------------------------------------------------


def test_every_bad_slice_is_refused_naming_the_file(corpus):
    for name, (path, reason) in corpus["bad_slices"].items():
        with pytest.raises(VAEGANError) as err:
            readers.read_slice(path, "mri")
        assert err.value.path == path, name
        assert reason in err.value.reason, (name, err.value.reason)
        assert "\n" not in str(err.value), name


def test_every_bad_volume_is_refused_naming_the_file(corpus):
    for name, (path, reason, from_header) in corpus["bad_volumes"].items():
        if from_header:  # found before any voxel is read, so before predict writes anything
            with pytest.raises(VAEGANError) as err:
                volumes.find_inputs(path, "mri")
        else:
            _, sources = volumes.find_inputs(path, "mri")
            with pytest.raises(VAEGANError) as err:
                volumes.read_volume(sources[0], "mri")
        assert err.value.path == path, name
        assert reason in err.value.reason, (name, err.value.reason)
        assert "\n" not in str(err.value), name


def test_odd_but_valid_slices_are_accepted_and_converted(corpus):
    good = corpus["good_slices"]
    for name, (path, depth) in good.items():
        piece = readers.read_slice(path, "mri")
        assert piece.bit_depth == depth and piece.pixels.dtype == np.float32, name
    grey = readers.read_slice(good["with spaces and ünïcödé – 頭部.png"][0], "mri").pixels
    np.testing.assert_allclose(readers.read_slice(good["rgb.png"][0], "mri").pixels, grey,
                               atol=0.01)  # grey RGB -> the same grey
    np.testing.assert_allclose(readers.read_slice(good["rgba.png"][0], "mri").pixels, grey,
                               atol=0.01)  # alpha dropped
    ct = readers.read_slice(good["sixteen_bit.png"][0], "ct").pixels
    np.testing.assert_array_equal(ct, grey.astype(np.float32) * 100 - 1024)  # HU + 1024
    red = os.path.join(os.path.dirname(good["rgb.png"][0]), "red.png")
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(red)
    with pytest.warns(UserWarning, match="converted to greyscale"):
        luminance = readers.read_slice(red, "mri").pixels
    np.testing.assert_allclose(luminance, 255 * 0.299, atol=0.01)


def test_predict_translates_odd_names_and_sizes_at_their_own_size(corpus, run, tmp_path):
    folder = os.path.dirname(corpus["good_slices"]["rgb.png"][0])
    written = predict(folder, tmp_path / "out", run=run, progress=None)
    assert _files(tmp_path / "out") == sorted(list(corpus["good_slices"]) + ["overview.png"])
    assert len(written) == len(corpus["good_slices"]) + 1
    eight = readers.read_slice(tmp_path / "out" / "eight_by_eight.png", "ct")
    assert eight.pixels.shape == (8, 8)  # padded to the stride (4) and cropped back


# --- folders, outputs, runs ---------------------------------------------------------------------


def test_empty_folders_and_folders_without_images_are_refused(tmp_path, run):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (tmp_path / "ct").mkdir()
    Image.fromarray(_head()).save(tmp_path / "ct" / "a.png")
    for folder in ("empty", "notes"):
        with pytest.raises(VAEGANError, match="no images") as err:
            predict(tmp_path / folder, tmp_path / "out", run=run, progress=None)
        assert err.value.path == str(tmp_path / folder)
        with pytest.raises(VAEGANError, match="no images") as err:
            load_training_data(Config(**FIT_TINY), mri_dir=str(tmp_path / folder),
                               ct_dir=str(tmp_path / "ct"))
        assert err.value.path == str(tmp_path / folder)
    assert not (tmp_path / "out").exists()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, run):
    from keras_vaegan.inference.evaluate import evaluate
    from keras_vaegan.inference.export import export_run

    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    Image.fromarray(_head()).save(tmp_path / "mri.png")
    with pytest.raises(VAEGANError, match="is a file, not a folder") as err:
        predict(tmp_path / "mri.png", blocker / "out", run=run, progress=None)
    assert err.value.path == str(blocker / "out")
    with pytest.raises(VAEGANError, match="output exists and is not a folder"):
        predict(tmp_path / "mri.png", blocker, run=run, progress=None)
    with pytest.raises(VAEGANError, match="is a file, not a folder"):
        export_run(run.run_dir, blocker / "export")
    reference = _nifti(tmp_path / "ct.nii.gz", np.full((16, 16, 3), 40.0))
    with pytest.raises(VAEGANError, match="is a file, not a folder"):
        evaluate(None, reference, prediction_path=reference, json_path=blocker / "r.json")
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write to read-only folders")
def test_read_only_output_folder_is_refused(tmp_path, run):
    Image.fromarray(_head()).save(tmp_path / "mri.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(VAEGANError, match="not writable"):
            predict(tmp_path / "mri.png", locked / "out", run=run, progress=None)
    finally:
        locked.chmod(0o700)


def test_a_model_path_that_is_not_a_run_is_refused(tmp_path):
    from keras_vaegan.inference.export import export_run

    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    for path, reason in ((tmp_path / "folder", "not a trained run (no model.keras)"),
                         (tmp_path / "missing", "no such run folder"),
                         (tmp_path / "file.txt", "not a run folder")):
        with pytest.raises(VAEGANError) as err:
            load_run(path)
        assert err.value.path == str(path) and reason in err.value.reason
    with pytest.raises(VAEGANError, match="not a trained run"):
        export_run(tmp_path / "folder", tmp_path / "export")
    assert not (tmp_path / "export").exists()


# --- what predict writes ----------------------------------------------------------------------


def _mixed_folder(folder, corpus) -> tuple[list[str], list[str]]:
    """Good slices and volumes with bad files among them -> (good names, bad paths)."""
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(_head()).save(os.path.join(folder, "a.png"))
    Image.fromarray(_head(seed=1)).save(os.path.join(folder, "b.png"))
    _nifti(os.path.join(folder, "c.nii.gz"), np.random.default_rng(0).uniform(0, 500, (24, 20, 3)))
    bad = [corpus["bad_slices"]["text.png"][0], corpus["bad_slices"]["tiny_7x5.png"][0],
           corpus["bad_volumes"]["cut_voxels.nii.gz"][0], corpus["bad_volumes"]["nan.nii.gz"][0]]
    paths = []
    for path in bad:
        paths.append(os.path.join(folder, os.path.basename(path)))
        shutil.copy(path, paths[-1])
    return ["a.png", "b.png", "c.nii.gz"], paths


def test_without_skip_bad_a_bad_file_stops_predict_before_writing(corpus, run, tmp_path):
    good, bad = _mixed_folder(tmp_path / "in", corpus)
    for path in bad[:3]:  # a bad slice, or a volume cut short: found before writing anything
        folder = tmp_path / f"only_{os.path.basename(path)}"
        os.makedirs(folder)
        for name in good:
            shutil.copy(tmp_path / "in" / name, folder / name)
        shutil.copy(path, folder)
        with pytest.raises(VAEGANError) as err:
            predict(folder, tmp_path / "out", run=run, progress=None)
        assert err.value.path == str(folder / os.path.basename(path))
        assert not (tmp_path / "out").exists()
    # NaN voxels are found when the volume is read, after a.png is translated: all or
    # nothing, so a.png is not written either (outputs are staged and moved in at the end)
    folder = tmp_path / "nan_last"
    os.makedirs(folder)
    shutil.copy(tmp_path / "in" / "a.png", folder)
    shutil.copy(bad[3], folder)
    with pytest.raises(VAEGANError, match="non-finite"):
        predict(folder, tmp_path / "out", run=run, progress=None)
    assert not (tmp_path / "out").exists()
    os.remove(folder / os.path.basename(bad[3]))  # a rerun is not refused for "output exists"
    predict(folder, tmp_path / "out", run=run, progress=None)
    assert readers.read_slice(tmp_path / "out" / "a.png", "ct").pixels.shape == (48, 40)


def test_skip_bad_translates_the_good_files_and_reports_each_bad_one(corpus, run, tmp_path):
    good, bad = _mixed_folder(tmp_path / "in", corpus)
    skipped = []
    written = predict(tmp_path / "in", tmp_path / "out", run=run, progress=None,
                      on_bad=skipped.append)
    assert _files(tmp_path / "out") == sorted(good + ["overview.png"])
    assert len(written) == len(good) + 1
    assert sorted(err.path for err in skipped) == sorted(bad)
    assert all(err.reason and "\n" not in err.reason for err in skipped)
    with pytest.raises(VAEGANError, match="every image file was bad"):
        predict(os.path.dirname(corpus["bad_slices"]["text.png"][0]), tmp_path / "none",
                run=run, progress=None, on_bad=skipped.append)
    assert not (tmp_path / "none").exists()


def test_existing_outputs_are_refused_unless_overwrite(run, tmp_path):
    Image.fromarray(_head()).save(tmp_path / "mri.png")
    out = tmp_path / "out"
    predict(tmp_path / "mri.png", out, run=run, progress=None)
    (out / "mri.png").write_bytes(b"an earlier result")
    with pytest.raises(VAEGANError, match="output exists; use --overwrite") as err:
        predict(tmp_path / "mri.png", out, run=run, progress=None)
    assert err.value.path == str(out / "mri.png")
    assert (out / "mri.png").read_bytes() == b"an earlier result"
    predict(tmp_path / "mri.png", out, run=run, progress=None, overwrite=True)
    assert readers.read_slice(out / "mri.png", "ct").pixels.shape == (48, 40)
    assert _files(out) == ["mri.png", "overview.png"]  # replaced atomically: no leftovers


def test_output_inside_the_input_folder_only_when_names_cannot_collide(run, tmp_path):
    data = tmp_path / "data"
    writers.write_slice(data / "mri.png", _head().astype(np.float64) * 4, "percentile", "mri")
    before = (data / "mri.png").read_bytes()
    with pytest.raises(VAEGANError, match="is an input .* outside the input folder") as err:
        predict(data, data, run=run, progress=None)  # data/mri.png would be overwritten
    assert err.value.path == str(data / "mri.png")
    predict(data, data, run=run, fmt="npy", progress=None)  # data/mri.npy: no collision
    assert _files(data) == ["mri.npy", "mri.png", "overview.png"]
    shutil.rmtree(data)
    writers.write_slice(data / "mri.png", _head().astype(np.float64) * 4, "percentile", "mri")
    predict(data, data / "out", run=run, progress=None)  # data/out/mri.png: no collision
    # again: data/out/mri.png is now an input too, and the output of data/mri.png
    with pytest.raises(VAEGANError, match="is an input") as err:
        predict(data, data / "out", run=run, progress=None, overwrite=True)
    assert err.value.path == str(data / "out" / "mri.png")
    assert (data / "mri.png").read_bytes() == before


# --- fit ------------------------------------------------------------------------------------------


def test_fit_stops_on_a_bad_file_before_writing_anything(corpus, tmp_path):
    from keras_vaegan.training.fit import fit

    for modality in ("mri", "ct"):
        writers.write_slice(tmp_path / "data" / modality / "a.png", _head().astype(float) * 4,
                            "percentile" if modality == "mri" else "hu", modality)
    shutil.copy(corpus["bad_slices"]["cut.png"][0], tmp_path / "data" / "ct")
    config = Config(**{**FIT_TINY, "epochs": 1, "steps_per_epoch": 1})
    with pytest.raises(VAEGANError, match="truncated") as err:
        fit(config, output=str(tmp_path / "run"), data_root=str(tmp_path / "data"), verbose=0)
    assert err.value.path == str(tmp_path / "data" / "ct" / "cut.png")
    assert not (tmp_path / "run").exists()
    (tmp_path / "data" / "ct" / "cut.png").unlink()
    shutil.copytree(tmp_path / "data", tmp_path / "held_out")
    shutil.copy(corpus["bad_volumes"]["nan.nii.gz"][0], tmp_path / "held_out" / "mri")
    with pytest.raises(VAEGANError, match="non-finite"):  # validation data is read first too
        fit(config, output=str(tmp_path / "run"), data_root=str(tmp_path / "data"),
            validation_data=str(tmp_path / "held_out"), verbose=0)
    assert not (tmp_path / "run").exists()
    skipped = []
    data = load_training_data(config, data_root=str(tmp_path / "held_out"),
                              on_bad=skipped.append)
    assert len(data.mri) == 1 and [e.path for e in skipped] == [
        str(tmp_path / "held_out" / "mri" / "nan.nii.gz")]


# --- untrusted runs -----------------------------------------------------------------------------


def _lambda_run(folder, config_source) -> str:
    """A run folder whose model.keras holds a Lambda layer (arbitrary Python code)."""
    import keras

    os.makedirs(folder, exist_ok=True)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda x: x * 2.0)])
    model.save(os.path.join(folder, "model.keras"))
    shutil.copy(os.path.join(config_source, "config.json"), folder)
    return str(folder)


def test_a_model_holding_python_code_is_refused_by_safe_mode(run, tmp_path):
    from keras_vaegan.inference.export import export_run

    evil = _lambda_run(tmp_path / "evil", run.run_dir)
    for attempt in (lambda: load_run(evil),
                    lambda: export_run(evil, tmp_path / "export")):
        with pytest.raises(VAEGANError, match=r"refused: .*`Lambda` layer.*safe mode") as err:
            attempt()
        assert err.value.path == os.path.join(evil, "model.keras")
    assert not (tmp_path / "export").exists() or not os.listdir(tmp_path / "export")


def test_an_invalid_run_config_names_the_key(run, tmp_path):
    for change, fragment in (({"no_such_setting": 1}, "unknown config key 'no_such_setting'"),
                             ({"gen_filters": "wide"}, "config key 'gen_filters': wrong type"),
                             ({"latent_downsample": 3}, "config key 'latent_downsample'")):
        folder = tmp_path / next(iter(change))
        shutil.copytree(run.run_dir, folder)
        values = json.loads((folder / "config.json").read_text())
        values.update(change)
        (folder / "config.json").write_text(json.dumps(values))
        with pytest.raises(VAEGANError) as err:
            load_run(folder)
        assert err.value.path == str(folder / "config.json") and fragment in err.value.reason


# --- the command line: a few calls for the contract -------------------------------------------


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A tiny run, an unsafe run, a run with an invalid config, and input folders."""
    root = tmp_path_factory.mktemp("cli")
    run_dir = save_tiny_run(root / "run", Config(**TINY))
    _lambda_run(root / "evil", run_dir)
    shutil.copytree(run_dir, root / "bad_config")
    values = json.loads((root / "bad_config" / "config.json").read_text())
    values["beta_kl"] = -1.0
    (root / "bad_config" / "config.json").write_text(json.dumps(values))
    inputs = root / "inputs"
    _good_slices(inputs)
    bad = _bad_slices(root / "bad")
    for name in ("text.png", "zero.png"):
        shutil.copy(bad[name][0], inputs / name)
    return root


def test_cli_bad_file_is_one_line_and_exit_2_and_debug_shows_the_traceback(cli_setup):
    root = cli_setup
    out = root / "out_refused"
    result = cli("predict", "--input", root / "inputs", "--output", out, "--model", root / "run")
    assert_one_error_line(result, f"error: {root / 'inputs' / 'text.png'}: not a readable image")
    assert not out.exists()
    debug = cli("predict", "--input", root / "inputs", "--output", out, "--model", root / "run",
                env={"KERAS_VAEGAN_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "VAEGANError" in debug.stderr
    assert not out.exists()


def test_cli_skip_bad_warns_per_file_counts_them_and_refuses_to_overwrite(cli_setup):
    root = cli_setup
    out = root / "out"
    result = cli("predict", "--input", root / "inputs", "--output", out, "--model", root / "run",
                 "--skip-bad")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for name in ("text.png", "zero.png"):
        assert sum(line.startswith(f"warning: {root / 'inputs' / name}: ") and
                   line.endswith(", skipped") for line in lines) == 1, result.stderr
    assert "skipped 2 bad files" in lines
    assert "Traceback" not in result.stderr
    assert "with spaces and ünïcödé – 頭部.png" in os.listdir(out)
    again = cli("predict", "--input", root / "inputs", "--output", out, "--model", root / "run",
                "--skip-bad")
    first = min(n for n in os.listdir(root / "inputs") if n not in ("text.png", "zero.png"))
    assert_one_error_line(again, f"error: {out / first}: output exists; use --overwrite")


def test_cli_refuses_an_unsafe_model_and_invalid_configs_naming_the_key(cli_setup, tmp_path):
    root = cli_setup
    image = root / "inputs" / "rgb.png"
    result = cli("predict", "--input", image, "--output", tmp_path / "o1", "--model", root / "evil")
    assert_one_error_line(result, str(root / "evil" / "model.keras"), "refused", "safe mode")
    result = cli("predict", "--input", image, "--output", tmp_path / "o2", "--model",
                 root / "bad_config")
    assert_one_error_line(result, str(root / "bad_config" / "config.json"),
                          "config key 'beta_kl'")
    config = tiny_config_file(tmp_path / "tiny.json")
    with open(config) as handle:
        values = json.load(handle)
    values["pool_size"] = [4]
    with open(config, "w") as handle:
        json.dump(values, handle)
    result = cli("fit", "--config", config, "--output", tmp_path / "run", "--quiet")
    assert_one_error_line(result, config, "config key 'pool_size': wrong type")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_fit_skip_bad_trains_on_the_good_files(cli_setup, tmp_path):
    data = tmp_path / "data"
    for modality, units in (("mri", "percentile"), ("ct", "hu")):
        for i in range(2):
            writers.write_slice(data / modality / f"{i}.png", _head(seed=i).astype(float) * 4,
                                units, modality)
    bad = _bad_slices(tmp_path / "bad")
    shutil.copy(bad["cut.png"][0], data / "mri")
    shutil.copy(bad["zero.png"][0], data / "ct")
    result = cli("fit", "--data", data, "--config", tiny_config_file(tmp_path / "tiny.json"),
                 "--output", tmp_path / "run", "--steps-per-epoch", 1, "--quiet", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert f"warning: {data / 'mri' / 'cut.png'}: not a readable image" in result.stderr
    assert f"warning: {data / 'ct' / 'zero.png'}: empty file (0 bytes), skipped" in result.stderr
    assert "skipped 2 bad files" in result.stderr.splitlines()
    assert (tmp_path / "run" / "model.keras").exists()


def test_slices_too_big_to_translate_are_refused_before_writing(run, tmp_path):
    from keras_vaegan.inference.predict import MAX_PASS_PIXELS, translate_slices

    Image.new("L", (2100, 2052)).save(tmp_path / "big.png")  # readable, too big to translate
    nib.save(nib.Nifti1Image(np.zeros((2100, 2100, 1), np.uint8), AFFINE),
             str(tmp_path / "big.nii.gz"))
    for name in ("big.png", "big.nii.gz"):
        with pytest.raises(VAEGANError, match="too big to translate") as err:
            predict(tmp_path / name, tmp_path / "out", run=run, progress=None)
        assert err.value.path == str(tmp_path / name)
    assert not (tmp_path / "out").exists()

    class Recorder:  # a 'model' that notes how many slices each forward pass holds
        total_stride, passes = 4, []

        def translate(self, inputs, direction, sample=False):
            self.passes.append(int(inputs.shape[0]))
            return inputs

    translate_slices(Recorder(), [np.zeros((1024, 1024), np.float32)] * 5, batch_size=8)
    assert Recorder.passes == [MAX_PASS_PIXELS // 1024 ** 2, 1]  # 4 + 1, not 5 at once


def test_skip_bad_with_only_bad_voxels_writes_nothing(corpus, run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("nan.nii.gz", "inf.nii.gz"):
        shutil.copy(corpus["bad_volumes"][name][0], folder)
    skipped = []
    with pytest.raises(VAEGANError, match="every image file was bad"):
        predict(folder, tmp_path / "out", run=run, progress=None, on_bad=skipped.append)
    assert len(skipped) == 2 and not os.path.exists(tmp_path / "out" / "overview.png")


# --- library warnings: the error line alone (issue 25 item 12) -------------------------------


def _only_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("name, direction, reason", [
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "mri2ct", "not a complete DICOM image"),
    ("bad_sequence.dcm", "mri2ct", "Modality is CT, expected MR here"),
])
def test_cli_pydicom_warning_before_an_error_is_not_printed(cli_setup, tmp_path, name, direction,
                                                            reason):
    """pydicom warns (a cut-short file, an invalid UID) about the file it then fails on: the user
    sees exactly one line, the error, not pydicom's text before it."""
    scan = tmp_path / name
    shutil.copy(get_testdata_file(name), scan)
    result = cli("predict", "--input", scan, "--output", tmp_path / "out", "--model",
                 cli_setup / "run", "--direction", direction)
    assert result.returncode == 2, result.stderr
    line = _only_line(result)
    assert line.startswith(f"error: {scan}: ") and reason in line, line
    assert not (tmp_path / "out").exists()


def test_cli_pydicom_warning_on_a_file_that_fails_later_is_not_printed(cli_setup, tmp_path):
    """bad_sequence.dcm read as a CT: pydicom warns about its invalid UIDs, then its JPEG
    Lossless pixels cannot be decoded here: no 'warning:' line, the error line last."""
    scan = tmp_path / "bad_sequence.dcm"
    shutil.copy(get_testdata_file("bad_sequence.dcm"), scan)
    result = cli("predict", "--input", scan, "--output", tmp_path / "out", "--model",
                 cli_setup / "run", "--direction", "ct2mri")
    assert_one_error_line(result, str(scan))
    # the progress bar's label may precede the error; nothing a library said may
    others = [line for line in result.stderr.splitlines()[:-1]
              if not line.startswith("predict ct2mri")]
    assert others == [], result.stderr
    assert "VR UI" not in result.stderr and "Please see" not in result.stderr


def test_cli_pydicom_warning_on_a_translated_file_follows_as_one_line(cli_setup, tmp_path):
    """A scan pydicom warns about but that translates: one ``warning: <path>: <reason>`` line
    after the result, without pydicom's pointer to the standard."""
    import warnings

    import pydicom

    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    scan = tmp_path / "mr_bad_uid.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.SeriesInstanceUID = "not-a-uid_x"
        dataset.save_as(scan)
    result = cli("predict", "--input", scan, "--output", tmp_path / "out", "--model",
                 cli_setup / "run")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == f"warning: {scan}: Invalid value for VR UI: 'not-a-uid_x'.", result.stderr
    assert sum(line.startswith("warning:") for line in lines) == 1, result.stderr
    assert "Please see" not in result.stderr
