"""evaluate: MAE / PSNR / SSIM in HU within a mask (SynthRAD conventions), pairing, JSON."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from keras_vaegan.config import Config
from keras_vaegan.data import writers
from keras_vaegan.data.phantom import make_subject, subject_seed, write_phantom
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.evaluate import evaluate, format_table, mae_hu, psnr_db, score, ssim

nib = pytest.importorskip("nibabel")


def head(slices=3, size=32, seed=0):
    subject = make_subject(seed, size=size, slices=slices)
    return subject.ct.astype(np.float64), subject.mask.astype(bool)


def save_nifti(path, canonical, affine=None):
    """Canonical [slice, row, col] -> a phantom-style NIfTI (data [col, row, slice], LPS)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.transpose(canonical, (2, 1, 0)).astype(np.float32), affine),
             str(path))
    return str(path)


def test_identical_prediction_scores_perfectly():
    ct, mask = head()
    result = score(ct, ct, mask)
    assert result["mae_hu"] == 0 and result["psnr_db"] == math.inf
    assert result["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["mask_voxels"] == mask.sum()


def test_offset_inside_the_mask_is_the_mae():
    ct, mask = head()
    shifted = ct + 100.0 * mask
    assert mae_hu(shifted, ct, mask) == pytest.approx(100.0)
    assert psnr_db(shifted, ct, mask) == pytest.approx(20 * np.log10(4024 / 100))
    assert ssim(shifted, ct, mask) < 1.0
    # changes outside the mask do not count
    outside = ct + 500.0 * ~mask
    assert mae_hu(outside, ct, mask) == 0 and psnr_db(outside, ct, mask) == math.inf
    assert ssim(outside, ct, mask) == pytest.approx(1.0)


def test_default_mask_is_body_in_the_reference_and_values_are_clipped():
    ct, _ = head()
    body = ct > -500
    noisy = ct + np.where(body, 50.0, 800.0)  # air errors are outside the default mask
    assert mae_hu(noisy, ct) == pytest.approx(50.0)
    assert score(noisy, ct)["mask_voxels"] == body.sum()
    high = np.full((1, 16, 16), 3000.0)
    assert mae_hu(high + 1000.0, high, np.ones_like(high)) == 0  # both clipped at 3000 HU
    with pytest.raises(VAEGANError, match="mask is empty"):
        score(ct, ct, np.zeros_like(ct))
    with pytest.raises(VAEGANError, match="differ in shape"):
        score(ct[:2], ct)


def test_ssim_is_symmetric_and_falls_with_noise():
    ct, mask = head()
    rng = np.random.default_rng(0)
    a = ct + rng.normal(0, 30, ct.shape)
    b = ct + rng.normal(0, 300, ct.shape)
    assert ssim(a, ct, mask) == pytest.approx(ssim(ct, a, mask))
    assert 0 < ssim(b, ct, mask) < ssim(a, ct, mask) < 1
    assert ssim(a[1], ct[1], mask[1]) > 0  # a 2-D slice works too


def test_synthrad_layout_with_masks_json_and_table(tmp_path):
    write_phantom(tmp_path / "data", subjects=2, slices=2, size=32, fmt="nii", seed=0)
    predictions = tmp_path / "pred"
    for index, subject in enumerate(("000", "001")):
        ct = make_subject(subject_seed(0, index), size=32, slices=2)
        mask = ct.mask.astype(bool)
        save_nifti(predictions / subject / "mri.nii.gz", ct.ct + 100.0 * mask * (index + 1))
    out = tmp_path / "results" / "metrics.json"
    results = evaluate(None, tmp_path / "data", prediction_path=predictions, json_path=out)
    assert [r["subject"] for r in results["subjects"]] == ["000", "001"]
    assert [r["mae_hu"] for r in results["subjects"]] == pytest.approx([100.0, 200.0])
    assert results["mean"]["mae_hu"] == pytest.approx(150.0)
    assert all(r["mask"].endswith("mask.nii.gz") for r in results["subjects"])
    assert json.loads(out.read_text())["mean"]["subjects"] == 2
    table = format_table(results)
    assert "MAE (HU)" in table and table.splitlines()[-1].startswith("mean")
    # the same folder holding ct and sct: sct is the prediction; identical -> PSNR "inf" in JSON
    for subject in ("000", "001"):
        shutil.copy(tmp_path / "data" / subject / "ct.nii.gz",
                    tmp_path / "data" / subject / "sct.nii.gz")
    results = evaluate(None, tmp_path / "data", prediction_path=tmp_path / "data",
                       json_path=out)
    assert results["mean"]["mae_hu"] == 0
    assert json.loads(out.read_text())["mean"]["psnr_db"] == "inf"


def test_subjects_pair_by_name_and_a_missing_one_is_named(tmp_path):
    ct, mask = head()
    for name in ("alice", "bob"):
        save_nifti(tmp_path / "ref" / f"{name}.nii.gz", ct)
        save_nifti(tmp_path / "pred" / f"{name}.nii.gz", ct + (10.0 if name == "bob" else 0.0))
    save_nifti(tmp_path / "masks" / "bob.nii.gz", mask.astype(np.float32))
    save_nifti(tmp_path / "masks" / "alice.nii.gz", mask.astype(np.float32))
    results = evaluate(None, tmp_path / "ref", prediction_path=tmp_path / "pred",
                       mask_path=tmp_path / "masks")
    assert {r["subject"]: r["mae_hu"] for r in results["subjects"]} == pytest.approx(
        {"alice": 0, "bob": 10})
    os.remove(tmp_path / "pred" / "alice.nii.gz")
    save_nifti(tmp_path / "pred" / "carol.nii.gz", ct)
    with pytest.raises(VAEGANError, match="no prediction for subject 'alice'"):
        evaluate(None, tmp_path / "ref", prediction_path=tmp_path / "pred")
    moved = np.diag([-1.0, -1.0, 1.0, 1.0])
    moved[2, 3] = 5.0
    save_nifti(tmp_path / "moved.nii.gz", ct, moved)
    with pytest.raises(VAEGANError, match="affine differs"):
        evaluate(None, tmp_path / "ref" / "bob.nii.gz", prediction_path=tmp_path / "moved.nii.gz")
    with pytest.raises(VAEGANError, match="one of them"):
        evaluate(tmp_path / "ref", tmp_path / "ref", prediction_path=tmp_path / "pred")


def test_2d_slices_pair_by_file_name(tmp_path):
    ct, mask = head(slices=2)
    for k in range(2):
        writers.write_slice(tmp_path / "ref" / f"s{k}.png", ct[k], "hu", "ct")
        writers.write_slice(tmp_path / "pred" / f"s{k}.npy", ct[k] - 20.0 * mask[k], "hu", "ct")
    results = evaluate(None, tmp_path / "ref", prediction_path=tmp_path / "pred")
    assert [r["subject"] for r in results["subjects"]] == ["s0", "s1"]
    for row in results["subjects"]:  # 16-bit PNG rounds to whole HU
        assert 0 < row["mae_hu"] <= 20.5


def test_evaluate_with_a_model_translates_the_mri(tmp_path):
    from keras_vaegan.inference.runs import load_run
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    config = Config(image_size=32, batch_size=2, gen_filters=4, latent_channels=4,
                    gen_res_blocks=1, disc_filters=(8, 16), disc_heads=1)
    model = VAECycleGAN(config)
    model.compile()
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")
    config.save(tmp_path / "run" / "config.json")
    write_phantom(tmp_path / "data", subjects=1, slices=2, size=32, fmt="nii", seed=0)
    results = evaluate(tmp_path / "data", tmp_path / "data", run=load_run(tmp_path / "run"))
    (row,) = results["subjects"]
    assert row["subject"] == "000" and row["prediction"].startswith("model ")
    assert 0 < row["mae_hu"] < 4024 and np.isfinite(row["psnr_db"]) and -1 <= row["ssim"] <= 1
