"""plan_prediction without a model: outputs, collisions, existing outputs, geometry, nothing written."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from keras_vaegan.config import Config
from keras_vaegan.data import writers
from keras_vaegan.data.volume import FoundVolume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.predict_plan import (
    PredictionInputs,
    find_prediction_inputs,
    plan_prediction,
)

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402

CONFIG = Config()  # trained on MRI by percentiles and CT in HU
STRIDE = 4
MR_SMALL = get_testdata_file("MR_small.dcm")


def plan(inputs, output_dir, **options):
    return plan_prediction(inputs, output_dir, config=options.pop("config", CONFIG),
                           stride=options.pop("stride", STRIDE), **options)


def mri(height=32, width=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 600, (height, width))


def relative(paths, root):
    return sorted(os.path.relpath(p, root) for p in paths)


def save_nifti(path, data, affine=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([-1.0, -1.0, 1.0, 1.0])
                             if affine is None else affine), str(path))
    return path


def mr_copy(path, series_uid, series_number):
    dataset = pydicom.dcmread(MR_SMALL)
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = series_number
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dataset.save_as(path)


@pytest.fixture()
def slices(tmp_path):
    folder = tmp_path / "in"
    writers.write_slice(folder / "a.png", mri(), "percentile", "mri")
    writers.write_slice(folder / "sub" / "b.npy", mri(40, 36, seed=1), "percentile", "mri")
    return folder


def test_plan_names_every_output_and_writes_nothing(slices, tmp_path):
    out = tmp_path / "out"
    result = plan(slices, out, samples=2)
    assert relative(result.outputs, out) == ["a.png", "a_std.png", "overview.png",
                                             os.path.join("sub", "b.npy"),
                                             os.path.join("sub", "b_std.npy")]
    assert result.outputs[-1] == str(out / "overview.png") == result.overview
    assert result.total_slices == 2 and result.out_units == "hu"
    assert [job.piece.pixels.shape for job in result.slices] == [(32, 32), (40, 36)]
    assert not out.exists()  # a plan writes nothing, not even the output folder
    assert relative(plan(slices, out, fmt="npy").outputs, out) == [
        "a.npy", "overview.png", os.path.join("sub", "b.npy")]


def test_two_inputs_with_one_output_name_are_refused(tmp_path):
    folder = tmp_path / "in"
    writers.write_slice(folder / "a.png", mri(), "percentile", "mri")
    writers.write_slice(folder / "a.npy", mri(), "percentile", "mri")
    with pytest.raises(VAEGANError, match="would also be written for") as err:
        plan(folder, tmp_path / "out", fmt="png")
    assert err.value.path == str(folder / "a.png")
    assert len(plan(folder, tmp_path / "out").outputs) == 3  # same format: a.png and a.npy


def test_existing_outputs_are_refused_without_overwrite(slices, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"an earlier result")
    with pytest.raises(VAEGANError, match="output exists; use --overwrite") as err:
        plan(slices, out)
    assert err.value.path == str(out / "a.png")
    assert len(plan(slices, out, overwrite=True).slices) == 2
    (out / "a.png").unlink()
    (out / "overview.png").mkdir()  # a folder where a file goes: not even with overwrite
    with pytest.raises(VAEGANError, match="is a folder"):
        plan(slices, out, overwrite=True)
    assert (out / "overview.png").is_dir() and os.listdir(out) == ["overview.png"]


def test_an_input_inside_the_output_folder_is_never_an_output(tmp_path):
    data = tmp_path / "data"
    writers.write_slice(data / "mri.png", mri(), "percentile", "mri")
    with pytest.raises(VAEGANError, match="is an input and its output would overwrite it"):
        plan(data, data)  # data/mri.png would be its own output
    assert relative(plan(data, data, fmt="npy").outputs, data) == ["mri.npy", "overview.png"]
    # an earlier output inside the input folder is an input now, also with overwrite
    writers.write_slice(data / "out" / "mri.png", mri(), "hu", "ct")
    with pytest.raises(VAEGANError, match="is an input") as err:
        plan(data, data / "out", overwrite=True)
    assert err.value.path == str(data / "out" / "mri.png")
    (data / "out" / "mri.png").unlink()
    writers.write_slice(data / "overview.png", mri(), "uint8", "mri")
    with pytest.raises(VAEGANError, match="overview image would overwrite it"):
        plan(data, data, fmt="npy", overwrite=True)


def test_a_bad_file_stops_the_plan_or_is_reported_and_left_out(slices, tmp_path):
    bad = slices / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(VAEGANError, match="not a readable image") as err:
        plan(slices, tmp_path / "out")
    assert err.value.path == str(bad)
    skipped = []
    result = plan(slices, tmp_path / "out", on_bad=skipped.append)
    assert [err.path for err in skipped] == [str(bad)]
    assert relative(result.outputs, tmp_path / "out") == ["a.png", "overview.png",
                                                         os.path.join("sub", "b.npy")]
    # the bad file still counts as an input: no output may overwrite it
    with pytest.raises(VAEGANError, match="is an input"):
        plan(slices, slices, on_bad=skipped.append, fmt="png")
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(bad, only_bad)
    with pytest.raises(VAEGANError, match="every image file was bad"):
        plan(only_bad, tmp_path / "out", on_bad=skipped.append)
    assert not (tmp_path / "out").exists()


def test_a_slice_seen_side_on_is_refused_before_anything_else(tmp_path):
    """A volume whose model-facing slice is a strip (a single sagittal slice cut along S/I)."""
    series = tmp_path / "sagittal"
    mr_copy(str(series / "one.dcm"), pydicom.uid.generate_uid(), 1)
    strip = FoundVolume(kind="dicom", files=[str(series / "one.dcm")], path=str(series),
                        slice_count=64, slice_shape=(64, 1))
    good = FoundVolume(kind="nifti", files=[str(tmp_path / "good.nii.gz")],
                       path=str(tmp_path / "good.nii.gz"), slice_count=3, slice_shape=(16, 16))
    inputs = PredictionInputs(str(tmp_path), "mri", [], [strip, good], set())
    with pytest.raises(VAEGANError, match="slices are 1x64, smaller than 8x8") as err:
        plan(inputs, tmp_path / "out")
    assert err.value.path == str(series)
    skipped = []
    result = plan(inputs, tmp_path / "out", on_bad=skipped.append)
    assert [job.found for job in result.volumes] == [good] and result.total_slices == 3
    assert [err.path for err in skipped] == [str(series)]
    # a NIfTI strip is refused from its header
    save_nifti(tmp_path / "strip.nii.gz", np.zeros((1, 16, 16), np.float32))
    with pytest.raises(VAEGANError, match="smaller than 8x8"):
        plan(tmp_path / "strip.nii.gz", tmp_path / "out")


def test_slice_size_is_checked_at_the_models_stride(tmp_path):
    big = save_nifti(tmp_path / "big.nii.gz", np.zeros((2048, 2048, 1), np.uint8))
    assert plan(big, tmp_path / "out", stride=4).volumes[0].found.slice_shape == (2048, 2048)
    with pytest.raises(VAEGANError, match="too big to translate") as err:
        plan(big, tmp_path / "out", stride=3000)  # padded to 3000x3000
    assert err.value.path == str(big)
    writers.write_slice(tmp_path / "small.png", mri(8, 8), "percentile", "mri")
    assert len(plan(tmp_path / "small.png", tmp_path / "out", stride=64).slices) == 1


def test_modalities_units_and_formats_are_checked_up_front(tmp_path):
    writers.write_slice(tmp_path / "ct8.png", np.full((16, 16), 128.0), "uint8", "ct")
    with pytest.raises(VAEGANError, match="8-bit CT holds no Hounsfield units"):
        plan(tmp_path / "ct8.png", tmp_path / "out", direction="ct2mri")
    eight_bit = CONFIG.replace(mri_units="uint8", ct_units="uint8")
    assert plan(tmp_path / "ct8.png", tmp_path / "out", direction="ct2mri",
                config=eight_bit).out_units == "uint8"
    volume = save_nifti(tmp_path / "mri.nii.gz", np.ones((16, 16, 3), np.float32))
    with pytest.raises(VAEGANError, match="needs a run trained on CT in HU"):
        plan(volume, tmp_path / "out", config=eight_bit)
    with pytest.raises(VAEGANError, match="use --format same"):
        plan(volume, tmp_path / "out", fmt="png")
    with pytest.raises(VAEGANError, match="Modality is MR, expected CT"):
        plan(MR_SMALL, tmp_path / "out", direction="ct2mri")
    with pytest.raises(VAEGANError, match="unknown direction"):
        plan(volume, tmp_path / "out", direction="mri2pet")
    with pytest.raises(VAEGANError, match="samples must be a whole number"):
        plan(volume, tmp_path / "out", samples=0)
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_folder_is_refused(slices, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(VAEGANError, match="is a file, not a folder"):
        plan(slices, blocker / "out")
    with pytest.raises(VAEGANError, match="output exists and is not a folder"):
        plan(slices, blocker)


def test_dicom_series_outputs_are_named_after_their_folder_and_series(tmp_path):
    first, second = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    mr_copy(str(tmp_path / "in" / "study" / "x1.dcm"), first, 7)
    mr_copy(str(tmp_path / "in" / "study" / "x2.dcm"), second, 9)
    mr_copy(str(tmp_path / "in" / "alone" / "y.dcm"), pydicom.uid.generate_uid(), 3)
    out = tmp_path / "out"
    result = plan(tmp_path / "in", out, samples=2)
    assert relative(result.outputs, out) == [
        "alone", "alone_std", "overview.png", os.path.join("study", "series7"),
        os.path.join("study", "series7_std"), os.path.join("study", "series9"),
        os.path.join("study", "series9_std")]
    assert relative(plan(tmp_path / "in" / "alone", out).outputs, out) == ["alone",
                                                                           "overview.png"]
    assert relative(plan(tmp_path / "in" / "alone" / "y.dcm", out).outputs, out) == [
        "overview.png", "y"]
    # an existing series folder is replaced only with overwrite, and only if it holds DICOM
    (out / "alone").mkdir(parents=True)
    (out / "alone" / "old.dcm").write_bytes(b"")
    with pytest.raises(VAEGANError, match="output exists"):
        plan(tmp_path / "in" / "alone", out)
    assert plan(tmp_path / "in" / "alone", out, overwrite=True).volumes
    (out / "alone" / "notes.txt").write_text("mine")
    with pytest.raises(VAEGANError, match="holds files that are not DICOM"):
        plan(tmp_path / "in" / "alone", out, overwrite=True)


def test_find_prediction_inputs_keeps_the_input_role_of_subjects(tmp_path):
    for subject in ("001", "002"):
        for role in ("mr", "ct", "mask"):
            save_nifti(tmp_path / subject / f"{role}.nii.gz", np.ones((16, 16, 2), np.float32))
    inputs = find_prediction_inputs(tmp_path, "mri2ct")
    assert relative([v.path for v in inputs.volumes], tmp_path) == [
        os.path.join("001", "mr.nii.gz"), os.path.join("002", "mr.nii.gz")]
    assert len(inputs.every_input) == 6  # every image counts as an input, also the others
    result = plan(inputs, tmp_path / "out", direction="mri2ct")
    assert relative(result.outputs, tmp_path / "out") == [
        os.path.join("001", "mr.nii.gz"), os.path.join("002", "mr.nii.gz"), "overview.png"]


# --- staging: how predict makes its writes all or nothing ------------------------------------


def test_staged_outputs_appear_only_on_commit_and_vanish_on_error(tmp_path, monkeypatch):
    from keras_vaegan.inference import staging

    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with staging.StagedOutputs(out) as staged:
            writers.write_slice(staged.path(str(out / "sub" / "a.npy")), mri(), "percentile",
                                "mri")
            assert not (out / "sub").exists()  # written under a hidden folder only
            raise RuntimeError("a refusal found late")
    assert not (tmp_path / "new").exists()  # the folders it made are gone too

    out.mkdir(parents=True)
    (out / "series").mkdir()
    (out / "series" / "old.dcm").write_bytes(b"old")
    (out / "a.npy").write_bytes(b"old")
    flushed = []
    monkeypatch.setattr(staging, "sync_folder", flushed.append)
    finals = [str(out / "a.npy"), str(out / "series"), str(out / "sub" / "b.npy")]
    with staging.StagedOutputs(out) as staged:
        for final in finals[::2]:
            os.makedirs(os.path.dirname(staged.path(final)), exist_ok=True)
            with open(staged.path(final), "wb") as handle:
                handle.write(b"new")
        os.makedirs(staged.path(finals[1]))
        with open(os.path.join(staged.path(finals[1]), "00001.dcm"), "wb") as handle:
            handle.write(b"new")
        assert staged.final(staged.path(finals[2])) == finals[2]
        staged.commit(finals)
    assert (out / "a.npy").read_bytes() == b"new" == (out / "sub" / "b.npy").read_bytes()
    assert os.listdir(out / "series") == ["00001.dcm"]  # the old series folder replaced whole
    assert sorted(os.listdir(out)) == ["a.npy", "series", "sub"]  # no staging folder left
    assert sorted(flushed) == [str(out), str(out / "sub")]


def test_an_uncertainty_map_the_dicom_input_cannot_carry_is_refused_in_the_plan(tmp_path):
    """693_UNCI.dcm has no Frame of Reference: its Parametric Map cannot be placed in the patient.

    With --samples 2 the plan refuses it (nothing written); with one sample it plans as usual.
    """
    source = get_testdata_file("693_UNCI.dcm")
    if source is None:
        pytest.skip("pydicom-data is not installed")
    image = tmp_path / "in" / "693_UNCI.dcm"
    os.makedirs(image.parent)
    shutil.copy(source, image)
    out = tmp_path / "out"
    with pytest.raises(VAEGANError, match="no FrameOfReferenceUID"):
        plan(str(image), str(out), samples=2, direction="ct2mri")
    assert not out.exists()
    planned = plan(str(image), str(out), samples=1, direction="ct2mri")
    assert len(planned.volumes) == 1 and not out.exists()
