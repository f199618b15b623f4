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
from keras_vaegan.inference.evaluate import (
    evaluate,
    format_table,
    mae_hu,
    psnr_db,
    score,
    ssim,
    through_plane_mae_hu,
)

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
    assert "model" not in results  # no model made these
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
    assert results["model"] == {"run": str(tmp_path / "run"), "policy": "float32",
                                "mirror_average": True, "shift_average": True}
    single = evaluate(tmp_path / "data", tmp_path / "data", run=tmp_path / "run",
                      mirror_average=False, shift_average=False)
    assert single["model"]["mirror_average"] is False
    assert single["model"]["shift_average"] is False
    assert single["subjects"][0]["mae_hu"] != row["mae_hu"]  # one pass, not the mirror average


# --- masks beside a reference file (issue 25, item 7) --------------------------------------------


def _box_case(tmp_path):
    """A phantom CT, a box mask and a prediction off by 100 HU in the box, 300 HU elsewhere."""
    ct, _ = head(slices=3)
    box = np.zeros(ct.shape, dtype=bool)
    box[:, 8:24, 8:24] = True
    return ct, box, ct + np.where(box, 100.0, 300.0)


def test_synthrad_mask_beside_a_reference_file_is_used(tmp_path):
    ct, box, prediction = _box_case(tmp_path)
    reference = save_nifti(tmp_path / "000" / "ct.nii.gz", ct)
    save_nifti(tmp_path / "000" / "mask.nii.gz", box.astype(np.float32))
    save_nifti(tmp_path / "000" / "mr.nii.gz", ct)  # other SynthRAD roles do not matter
    predicted = save_nifti(tmp_path / "pred" / "000.nii.gz", prediction)
    (row,) = evaluate(None, reference, prediction_path=predicted)["subjects"]
    assert row["mask"] == str(tmp_path / "000" / "mask.nii.gz")
    assert row["mae_hu"] == pytest.approx(100.0) and row["mask_voxels"] == box.sum()
    # a reference of another name, alone in its folder with the mask: the folder is its subject
    alone = save_nifti(tmp_path / "pat1" / "pat1.nii.gz", ct)
    save_nifti(tmp_path / "pat1" / "mask.nii.gz", box.astype(np.float32))
    (row,) = evaluate(None, alone, prediction_path=predicted)["subjects"]
    assert row["mae_hu"] == pytest.approx(100.0)
    # --mask wins over the file beside the reference
    everything = save_nifti(tmp_path / "all.nii.gz", np.ones(ct.shape, dtype=np.float32))
    (row,) = evaluate(None, reference, prediction_path=predicted, mask_path=everything)["subjects"]
    assert row["mae_hu"] == pytest.approx(np.abs(np.clip(prediction, -1024, 3000) - ct).mean())


def test_a_mask_beside_several_subjects_files_is_nobodys(tmp_path):
    ct, box, prediction = _box_case(tmp_path)
    for name in ("alice", "bob"):
        save_nifti(tmp_path / "ct" / f"{name}.nii.gz", ct)
    save_nifti(tmp_path / "ct" / "mask.nii.gz", box.astype(np.float32))
    predicted = save_nifti(tmp_path / "pred" / "alice.nii.gz", prediction)
    (row,) = evaluate(None, tmp_path / "ct" / "alice.nii.gz",
                      prediction_path=predicted)["subjects"]
    assert row["mask"].startswith("reference CT > -500 HU")
    assert row["mask_voxels"] == (ct > -500).sum()
    # two masks beside one subject's CT: which one is meant is not guessed
    reference = save_nifti(tmp_path / "000" / "ct.nii.gz", ct)
    save_nifti(tmp_path / "000" / "mask.nii.gz", box.astype(np.float32))
    save_nifti(tmp_path / "000" / "mask.nii", box.astype(np.float32))
    with pytest.raises(VAEGANError, match="2 mask images beside the reference") as err:
        evaluate(None, reference, prediction_path=predicted)
    assert err.value.path == str(tmp_path / "000")


# --- SSIM: the SynthRAD computation (issue 25, item 9) ----------------------------------------------


def skimage_synthrad_ssim(prediction, reference, mask):
    """What SynthRAD's evaluation code computes, with scikit-image itself."""
    from skimage.metrics import structural_similarity
    from skimage.util import crop

    shifted = [np.where(mask, np.clip(x, -1024, 3000), -1024).astype(np.float64) + 1024
               for x in (reference, prediction)]
    _, full = structural_similarity(*shifted, data_range=4024, full=True)
    return crop(full, 3)[crop(mask, 3)].mean(dtype=np.float64)


def nibabel_anatomy_as_ct():
    """nibabel's test T1 (33 x 41 x 25) mapped to a CT-like range, canonical [slice, row, col]."""
    from nibabel.testing import data_path

    data = np.asarray(nib.load(os.path.join(data_path, "anatomical.nii")).dataobj, np.float64)
    ct = -1000.0 + data / data.max() * 2600.0
    return np.transpose(ct, (2, 1, 0)), np.transpose(data > 0.15 * data.max(), (2, 1, 0))


def ssim_cases():
    rng = np.random.default_rng(0)
    phantom = make_subject(3, size=48, slices=12)
    anatomy, anatomy_mask = nibabel_anatomy_as_ct()
    for name, ct, mask in (("phantom", phantom.ct.astype(np.float64), phantom.mask.astype(bool)),
                           ("nibabel", anatomy, anatomy_mask)):
        good = ct + rng.normal(0, 40, ct.shape)
        poor = 0.3 * ct + rng.normal(0, 400, ct.shape) - 200
        yield name, ct, mask, good, poor


@pytest.mark.parametrize("case", list(ssim_cases()), ids=lambda case: case[0])
def test_synthrad_ssim_equals_scikit_image(case):
    pytest.importorskip("skimage")
    _, ct, mask, good, poor = case
    values = {}
    for quality, prediction in (("good", good), ("poor", poor)):
        values[quality] = ssim(prediction.astype(np.float32), ct.astype(np.float32), mask,
                               mode="synthrad")
        assert values[quality] == pytest.approx(skimage_synthrad_ssim(prediction, ct, mask),
                                                abs=1e-4)
    assert 0.9 < values["good"] < 1 and values["poor"] < 0.6
    assert ssim(good, ct, mask) == values["good"]  # the default
    assert ssim(good, ct, mask, mode="2d") != pytest.approx(values["good"], abs=1e-3)


def test_thin_stacks_and_slices_get_the_synthrad_ssim_per_slice():
    pytest.importorskip("skimage")
    ct, mask = head(slices=3, size=32)
    prediction = ct + np.random.default_rng(1).normal(0, 80, ct.shape)
    # fewer than 7 slices: scikit-image's computation on each slice, cropped in-plane
    from skimage.metrics import structural_similarity

    maps = []
    for k in range(3):
        shifted = [np.where(mask[k], np.clip(x[k], -1024, 3000), -1024) + 1024
                   for x in (ct, prediction)]
        maps.append(structural_similarity(*shifted, data_range=4024, full=True)[1][3:-3, 3:-3])
    expected = np.concatenate([m[mask[k, 3:-3, 3:-3]] for k, m in enumerate(maps)]).mean()
    assert ssim(prediction, ct, mask) == pytest.approx(expected, abs=1e-4)
    assert ssim(prediction[1], ct[1], mask[1]) == pytest.approx(
        maps[1][mask[1, 3:-3, 3:-3]].mean(), abs=1e-4)
    with pytest.raises(VAEGANError, match="smaller than the 7-pixel SSIM window"):
        ssim(ct[:, 13:19, 13:19], ct[:, 13:19, 13:19], mask[:, 13:19, 13:19])
    edge = np.zeros_like(mask)
    edge[:, 0, :] = True
    with pytest.raises(VAEGANError, match="no voxel 3 or more voxels from the volume's edges"):
        ssim(ct, ct, edge)
    assert ssim(ct, ct, edge, mode="2d") == pytest.approx(1.0)
    with pytest.raises(VAEGANError, match="unknown SSIM '3d'"):
        ssim(ct, ct, mask, mode="3d")


def test_metrics_make_no_volume_sized_float_copies():
    """Peak memory grows with the volume by its boolean mask only (slabs of slices, not copies)."""
    import tracemalloc

    def peak_bytes(slices, ssim_mode):
        rng = np.random.default_rng(0)
        reference = np.full((slices, 48, 48), -1000.0, dtype=np.float32)
        reference[:, 8:40, 8:40] = rng.normal(40, 200, (slices, 32, 32))
        prediction = reference + rng.normal(0, 50, reference.shape).astype(np.float32)
        tracemalloc.start()
        try:
            result = score(prediction, reference, ssim_mode=ssim_mode)
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    for mode in ("synthrad", "2d"):
        (small, _), (big, result) = peak_bytes(100, mode), peak_bytes(400, mode)
        assert 0.5 < result["ssim"] < 1 and result["through_plane_mae_hu"] > 0
        # 300 more slices: 0.7 MB more mask; one float32 copy would be 2.8 MB, float64 5.5 MB
        grown = 300 * 48 * 48
        assert big - small < 1.5 * grown, f"{mode}: peak grew by {(big - small) / 1e6:.1f} MB"


# --- through-plane (slice consistency) ----------------------------------------------------------


def test_through_plane_mae_counts_steps_between_masked_neighbours():
    reference = np.zeros((4, 8, 8))
    prediction = np.zeros((4, 8, 8)) + np.array([0.0, 10.0, 10.0, 40.0])[:, None, None]
    mask = np.ones((4, 8, 8), dtype=bool)
    mask[3, :4] = False  # half of the last slice: only 32 voxels step from slice 2 to 3
    # steps differ by 10 (64 voxels), 0 (64 voxels) and 30 (32 voxels): (640 + 960) / 160
    assert through_plane_mae_hu(prediction, reference, mask) == pytest.approx(10.0)
    assert through_plane_mae_hu(prediction + 55.0, reference, mask) == pytest.approx(10.0)
    assert through_plane_mae_hu(reference + 55.0, reference, mask) == 0  # an offset is consistent
    flicker = reference + np.array([20.0, -20.0, 20.0, -20.0])[:, None, None]
    assert mae_hu(flicker, reference, mask) == pytest.approx(20.0)
    assert through_plane_mae_hu(flicker, reference, mask) == pytest.approx(40.0)
    # clipped to [-1024, 3000] like the other metrics
    assert through_plane_mae_hu(reference + np.array([0, 5000.0, 0, 0])[:, None, None],
                                reference + 3000.0, mask) == pytest.approx(
                                    (3000 * 64 + 3000 * 64) / 160)
    assert through_plane_mae_hu(prediction[0], reference[0], mask[0]) is None  # a 2-D image
    lone = np.zeros_like(mask)
    lone[::2] = True  # no two neighbouring slices masked
    assert through_plane_mae_hu(prediction, reference, lone) is None


def test_evaluate_reports_through_plane_for_volumes_and_progress(tmp_path):
    ct, mask = head(slices=4)
    flicker = ct + np.where(mask, 1.0, 0.0) * np.array([30.0, -30.0, 30.0, -30.0])[:, None, None]
    for name in ("alice", "bob"):
        save_nifti(tmp_path / "ref" / f"{name}.nii.gz", ct)
        save_nifti(tmp_path / "pred" / f"{name}.nii.gz", flicker if name == "bob" else ct + 30.0)
        save_nifti(tmp_path / "masks" / f"{name}.nii.gz", mask.astype(np.float32))
    calls = []
    results = evaluate(None, tmp_path / "ref", prediction_path=tmp_path / "pred",
                       mask_path=tmp_path / "masks", json_path=tmp_path / "r.json",
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    rows = {row["subject"]: row for row in results["subjects"]}
    assert [rows[name]["mae_hu"] for name in ("alice", "bob")] == pytest.approx([30.0, 30.0])
    assert rows["alice"]["through_plane_mae_hu"] == pytest.approx(0.0, abs=1e-4)  # float32 files
    assert rows["bob"]["through_plane_mae_hu"] == pytest.approx(60.0)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["mean"]["through_plane_mae_hu"] == pytest.approx(30.0)
    assert written["conventions"]["ssim_mode"] == "synthrad"
    header, *lines = format_table(results).splitlines()
    assert "through-plane HU" in header and "60.00" in lines[1] and lines[-1].startswith("mean")
    # 2-D slices have no slice axis: no through-plane value, no column
    for k in range(2):
        writers.write_slice(tmp_path / "sref" / f"s{k}.npy", ct[k], "hu", "ct")
        writers.write_slice(tmp_path / "spred" / f"s{k}.npy", ct[k] + 10.0, "hu", "ct")
    slices = evaluate(None, tmp_path / "sref", prediction_path=tmp_path / "spred", ssim_mode="2d")
    assert all("through_plane_mae_hu" not in row for row in slices["subjects"])
    assert "through_plane_mae_hu" not in slices["mean"]
    assert "through-plane" not in format_table(slices)
    assert slices["conventions"]["ssim_mode"] == "2d"


def test_cli_ssim_choice_and_progress_bar(tmp_path):
    from test_cli import cli

    ct, mask = head(slices=8)
    reference = save_nifti(tmp_path / "000" / "ct.nii.gz", ct)
    save_nifti(tmp_path / "000" / "mask.nii.gz", mask.astype(np.float32))
    prediction = save_nifti(tmp_path / "000" / "sct.nii.gz", ct + 50.0 * mask)
    for mode in ("2d", "synthrad"):
        result = cli("evaluate", "--prediction", prediction, "--reference", reference, "--ssim",
                     mode, "--json", tmp_path / f"{mode}.json")
        assert result.returncode == 0, result.stderr
        written = json.loads((tmp_path / f"{mode}.json").read_text())
        (row,) = written["subjects"]
        assert row["ssim"] == pytest.approx(ssim(ct + 50.0 * mask, ct, mask, mode=mode))
        assert row["mask"].endswith("mask.nii.gz") and "evaluate" in result.stderr
    result = cli("evaluate", "--prediction", prediction, "--reference", reference, "--ssim", "3d")
    assert result.returncode == 2 and "'3d' is not one of" in result.stderr
