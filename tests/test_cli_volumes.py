"""The command line on volumes: evaluate end to end, and bad volumes -> one error line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_one_error_line, cli

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
