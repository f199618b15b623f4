"""The command line on volumes: evaluate and predict end to end, bad volumes -> one error line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import save_tiny_run
from test_cli import assert_one_error_line, cli

from keras_vaegan.config import Config

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def save_nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])),
             str(path))
    return path


def test_evaluate_prints_a_table_and_writes_json(tmp_path):
    ct = np.full((16, 16, 3), -1000.0)
    ct[4:12, 4:12] = 40.0
    reference = save_nifti(tmp_path / "ct.nii.gz", ct)
    prediction = save_nifti(tmp_path / "sct.nii.gz", ct + 100.0 * (ct > -500))
    result = cli("evaluate", "--prediction", prediction, "--reference", reference, "--json",
                 tmp_path / "out.json")
    assert result.returncode == 0, result.stderr
    assert "MAE (HU)" in result.stdout and "100.00" in result.stdout
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["mean"]["mae_hu"] == pytest.approx(100.0)


def test_evaluate_refuses_model_options_with_a_prediction(tmp_path):
    ct = save_nifti(tmp_path / "ct.nii.gz", np.zeros((16, 16, 3)))
    for option in (("--model", tmp_path), ("--single-pass",)):
        result = cli("evaluate", "--prediction", ct, "--reference", ct, *option)
        assert_one_error_line(result, option[0], "with --prediction no model is used")


def test_four_d_nifti_is_one_error_line(tmp_path):
    path = save_nifti(tmp_path / "fmri.nii.gz", np.zeros((16, 16, 4, 5)))
    result = cli("predict", "--input", path, "--output", tmp_path / "out", "--model", tmp_path)
    assert_one_error_line(result, str(path), "4-D NIfTI")
    assert not (tmp_path / "out").exists()


def test_nifti_of_nans_is_one_error_line(tmp_path):
    reference = save_nifti(tmp_path / "ct.nii.gz", np.zeros((16, 16, 3)))
    bad = save_nifti(tmp_path / "nan.nii.gz", np.full((16, 16, 3), np.nan))
    result = cli("evaluate", "--prediction", bad, "--reference", reference)
    assert_one_error_line(result, str(bad), "NaN")


def test_dicom_without_pixel_data_is_one_error_line(tmp_path):
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del dataset.PixelData
    path = tmp_path / "nopixels.dcm"
    dataset.save_as(path)
    result = cli("predict", "--input", path, "--output", tmp_path / "out", "--model", tmp_path)
    assert_one_error_line(result, str(path), "no pixel data")
    assert not (tmp_path / "out").exists()


TINY = dict(image_size=32, batch_size=2, gen_filters=4, latent_channels=4, gen_res_blocks=1,
            disc_filters=(8, 16), disc_heads=1, epochs=1, steps_per_epoch=1)


def test_predict_refused_late_writes_nothing_and_skip_bad_translates_the_rest(tmp_path):
    """NaN voxels are found only when read, after the good volume: exit 2, output folder as it was;
    with --skip-bad a warning line, the good volume written, and the progress bar on stderr."""
    run = save_tiny_run(tmp_path / "run", Config(**TINY))
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_nifti(folder / "good.nii.gz", rng.uniform(0, 500, (16, 16, 3)))
    nan = rng.uniform(0, 500, (16, 16, 3))
    nan[2, 2, 2] = np.nan
    bad = save_nifti(folder / "nan.nii.gz", nan)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli("predict", "--input", folder, "--output", out, "--model", run)
    assert_one_error_line(result, f"error: {bad}: volume has non-finite values")
    assert sorted(os.listdir(out)) == ["notes.txt"]
    result = cli("predict", "--input", folder, "--output", out, "--model", run, "--skip-bad")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert f"warning: {bad}: volume has non-finite values (NaN or inf), skipped" in lines
    assert lines[-1] == "skipped 1 bad file"
    assert any(line.startswith("predict mri2ct") for line in lines)  # the bar's label
    assert result.stdout.strip() == f"wrote 2 files to {out}"
    assert sorted(os.listdir(out)) == ["good.nii.gz", "notes.txt", "overview.png"]
