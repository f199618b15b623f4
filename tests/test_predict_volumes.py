"""predict on volumes: NIfTI in -> NIfTI out, DICOM series in -> a derived series out, *_std maps."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import save_tiny_run

from keras_vaegan.config import Config
from keras_vaegan.data import units, volumes
from keras_vaegan.data.phantom import write_phantom
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference import predict as predict_module
from keras_vaegan.inference.predict import (
    LoadedRun,
    load_run,
    predict,
    translate_slice,
    translate_volume,
)

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut  # noqa: E402

TINY = dict(image_size=32, batch_size=2, gen_filters=4, latent_channels=4, gen_res_blocks=1,
            disc_filters=(8, 16), disc_heads=1, epochs=1, steps_per_epoch=1)
MR_SMALL = get_testdata_file("MR_small.dcm")
ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
CT_WINDOW = (-1024.0, 3071.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An untrained tiny model saved as a run, loaded back."""
    return load_run(save_tiny_run(tmp_path_factory.mktemp("runs") / "tiny", Config(**TINY)))


class IdentityModel:
    """A 'model' whose translation is its input, with or without latent draws."""

    total_stride = 4

    def translate(self, inputs, direction, sample=False):
        return inputs


def identity_run(run):
    return LoadedRun(model=IdentityModel(), config=run.config, run_dir=run.run_dir)


def mr_series(folder, count=3):
    """MR_small copied into a series of ``count`` slices 2 mm apart, given in reverse order."""
    source = pydicom.dcmread(MR_SMALL)
    uid = pydicom.uid.generate_uid()
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        ds = source.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta = source.file_meta.copy()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-83.9, -91.2, 10.0 - 2.0 * i]
        ds.PixelData = (source.pixel_array.astype("<i2") + 50 * i).tobytes()
        ds.save_as(os.path.join(folder, f"mr{i}.dcm"))


def read_series(folder):
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    return [pydicom.dcmread(f) for f in files]


@pytest.mark.backend
def test_mr_small_becomes_a_valid_synthetic_ct_series(tmp_path, run):
    out = tmp_path / "out"
    written = predict(MR_SMALL, out, run=run, progress=None)
    assert sorted(os.path.relpath(p, out) for p in written) == [
        os.path.join("MR_small", "00001.dcm"), "overview.png"]
    source = pydicom.dcmread(MR_SMALL)
    (ct,) = read_series(out / "MR_small")
    assert ct.SOPClassUID == pydicom.uid.CTImageStorage and ct.Modality == "CT"
    assert ct.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert getattr(ct, uid) != getattr(source, uid)
        assert pydicom.uid.UID(getattr(ct, uid)).is_valid
    assert ct.file_meta.MediaStorageSOPInstanceUID == ct.SOPInstanceUID
    for tag in ("PatientName", "PatientID", "PatientSex", "StudyDate", "ImagePositionPatient",
                "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                "FrameOfReferenceUID", "InstanceNumber"):
        assert ct.get(tag) == source.get(tag), tag
    assert list(ct.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]  # value 3: CT Image IOD
    assert "synthetic CT" in ct.SeriesDescription and "not for diagnosis" in ct.SeriesDescription
    assert "not for diagnosis" in ct.ImageComments
    assert (ct.BitsAllocated, ct.BitsStored, ct.HighBit, ct.PixelRepresentation) == (16, 16, 15, 1)
    assert ct.PhotometricInterpretation == "MONOCHROME2" and ct.SamplesPerPixel == 1
    assert ct.pixel_array.dtype == np.int16 and float(ct.WindowWidth) > 0
    # stored * slope + intercept is the model's HU output
    expected = translate_volume(run, volumes.read_volume(MR_SMALL, "mri")).mean[0]
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    np.testing.assert_allclose(apply_modality_lut(ct.pixel_array, ct), hu)
    np.testing.assert_allclose(hu, expected, atol=1.0)
    assert hu.min() >= CT_WINDOW[0] and hu.max() <= CT_WINDOW[1]


@pytest.mark.backend
def test_anatomical_nifti_becomes_a_nifti_on_the_same_grid(tmp_path, run):
    out = tmp_path / "out"
    predict(ANATOMICAL, out, run=run, progress=None)
    source, written = nib.load(ANATOMICAL), nib.load(out / "anatomical.nii")
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    for code in ("qform_code", "sform_code"):
        assert written.header[code] == source.header[code]
    assert written.get_data_dtype() == np.dtype("<f4")
    hu = written.get_fdata()
    assert hu.min() >= CT_WINDOW[0] - 1e-3 and hu.max() <= CT_WINDOW[1] + 1e-3


def test_slice_order_and_orientation_survive_slice_by_slice_translation(tmp_path, run):
    """An asymmetric volume stored slice-axis-first with an oblique-free LPS affine."""
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1000, (6, 20, 28)).astype(np.float32)  # [slice (S), col (L), row (P)]
    affine = np.array([[0, -1.0, 0, 5], [0, 0, -1.5, 7], [2.5, 0, 0, -3], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=4)
    nib.save(image, tmp_path / "mri.nii.gz")
    # 1. identity 'model': the output is the input mapped MRI units -> HU voxel for voxel
    out = tmp_path / "identity"
    predict(tmp_path / "mri.nii.gz", out, run=identity_run(run), progress=None)
    written = nib.load(out / "mri.nii.gz")
    mri = units.mri_map(data, run.config.mri_percentiles)
    expected = units.ct_map(CT_WINDOW).from_unit(mri.to_unit(data))
    np.testing.assert_allclose(written.get_fdata(), expected, atol=1e-3)
    np.testing.assert_array_equal(written.affine, affine)
    assert (written.header["qform_code"], written.header["sform_code"]) == (1, 4)
    # 2. the real model: each output slice is that input slice translated on its own
    predict(tmp_path / "mri.nii.gz", tmp_path / "model", run=run, batch_size=4, progress=None)
    volume = volumes.read_volume(tmp_path / "model" / "mri.nii.gz", "ct")
    source = volumes.read_volume(tmp_path / "mri.nii.gz", "mri")
    assert volume.voxels.shape == (6, 28, 20)  # slices along file axis 0, rows P, cols L
    unit = mri.to_unit(source.voxels)
    for k in (0, 3, 5):
        single, _ = translate_slice(run.model, unit[k], "mri2ct")
        np.testing.assert_allclose(volume.voxels[k], units.ct_map(CT_WINDOW).from_unit(single),
                                   atol=0.05)


def test_samples_write_std_volumes_on_the_same_grid(tmp_path, run):
    mr_series(tmp_path / "series")
    out = tmp_path / "out"
    written = predict(tmp_path / "series", out, run=run, samples=3, progress=None)
    assert sorted(os.listdir(out)) == ["overview.png", "series", "series_std"]
    assert len(written) == 5  # three CT slices, one Parametric Map (never a CT), the overview
    mean, std = read_series(out / "series"), read_series(out / "series_std")
    assert len({d.StudyInstanceUID for d in mean + std}) == 1  # one new study, two series
    (spread,) = std
    assert spread.SOPClassUID == pydicom.uid.ParametricMapStorage
    assert mean[0].SeriesInstanceUID != spread.SeriesInstanceUID
    frames = [f.PlanePositionSequence[0].ImagePositionPatient
              for f in spread.PerFrameFunctionalGroupsSequence]
    np.testing.assert_allclose(sorted(np.array(frames, float).tolist()),
                               sorted(np.array([m.ImagePositionPatient for m in mean],
                                               float).tolist()))
    assert "std" in spread.SeriesDescription
    values = spread.pixel_array
    assert (values >= 0).all() and values.mean() > 0
    # NIfTI: *_std.nii.gz beside the mean, same affine; positive spread
    predict(ANATOMICAL, tmp_path / "nii", run=run, samples=2, progress=None)
    spread = nib.load(tmp_path / "nii" / "anatomical_std.nii")
    np.testing.assert_array_equal(spread.affine, nib.load(ANATOMICAL).affine)
    assert spread.get_fdata().min() >= 0 and spread.get_fdata().mean() > 0


def test_std_is_zero_when_every_draw_agrees_and_absent_for_one_sample(tmp_path, run):
    predict(ANATOMICAL, tmp_path / "one", run=run, samples=1, progress=None)
    assert sorted(os.listdir(tmp_path / "one")) == ["anatomical.nii", "overview.png"]
    predict(ANATOMICAL, tmp_path / "same", run=identity_run(run), samples=4, progress=None)
    assert np.all(nib.load(tmp_path / "same" / "anatomical_std.nii").get_fdata() == 0)


def test_dicom_series_order_survives(tmp_path, run):
    mr_series(tmp_path / "series", count=4)
    predict(tmp_path / "series", tmp_path / "out", run=identity_run(run), progress=None)
    written = read_series(tmp_path / "out" / "series")
    sources = {d.SOPInstanceUID: d for d in (pydicom.dcmread(tmp_path / "series" / f)
                                             for f in os.listdir(tmp_path / "series"))}
    source_volume = volumes.read_volume(tmp_path / "series", "mri")
    mapping = units.mri_map(source_volume.voxels, run.config.mri_percentiles)
    for ct in written:
        source = sources[ct.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ct.ImagePositionPatient == source.ImagePositionPatient
        expected = units.ct_map(CT_WINDOW).from_unit(
            mapping.to_unit(apply_modality_lut(source.pixel_array, source)))
        np.testing.assert_allclose(apply_modality_lut(ct.pixel_array, ct), expected, atol=0.51)


def test_synthrad_subjects_translate_only_their_mri(tmp_path, run):
    write_phantom(tmp_path / "data", subjects=2, slices=2, size=32, fmt="nii", seed=0)
    written = predict(tmp_path / "data", tmp_path / "out", run=run, progress=None)
    assert sorted(os.path.relpath(p, tmp_path / "out") for p in written) == [
        os.path.join("000", "mri.nii.gz"), os.path.join("001", "mri.nii.gz"), "overview.png"]
    ct2mri = predict(tmp_path / "data", tmp_path / "back", run=run, direction="ct2mri",
                     progress=None)
    assert os.path.join(str(tmp_path / "back"), "000", "ct.nii.gz") in ct2mri


def test_volume_outputs_never_touch_inputs(tmp_path, run):
    mr_series(tmp_path / "data" / "series", count=2)
    with pytest.raises(VAEGANError, match="holds an input"):  # out/series would be the input
        predict(tmp_path / "data" / "series", tmp_path / "data", run=run, progress=None)
    assert len(os.listdir(tmp_path / "data" / "series")) == 2
    (tmp_path / "out" / "series").mkdir(parents=True)
    (tmp_path / "out" / "series" / "notes.txt").write_text("mine")
    with pytest.raises(VAEGANError, match="not DICOM"):
        predict(tmp_path / "data" / "series", tmp_path / "out", run=run, progress=None)
    assert os.listdir(tmp_path / "out" / "series") == ["notes.txt"]
    with pytest.raises(VAEGANError, match="--format same"):
        predict(ANATOMICAL, tmp_path / "png", run=run, fmt="png", progress=None)
    with pytest.raises(VAEGANError, match="Modality is MR, expected CT"):
        predict(MR_SMALL, tmp_path / "wrong", run=run, direction="ct2mri", progress=None)
    assert not (tmp_path / "wrong").exists() and not (tmp_path / "png").exists()


def test_volume_ct_output_needs_a_run_trained_on_hu(tmp_path, run):
    uint8_run = LoadedRun(model=run.model, run_dir=run.run_dir,
                          config=run.config.replace(ct_units="uint8", mri_units="uint8"))
    with pytest.raises(VAEGANError, match="8-bit CT"):
        predict(ANATOMICAL, tmp_path / "out", run=uint8_run, progress=None)
    assert predict_module.volume_output_map("mri", uint8_run.config) == units.UINT8_MAP


@pytest.mark.slow
def test_fit_trains_on_synthrad_style_volumes_and_predicts_them(tmp_path):
    from conftest import TINY as FIT_TINY

    from keras_vaegan.training.fit import fit

    write_phantom(tmp_path / "data", subjects=2, slices=3, size=32, fmt="nii", seed=0)
    config = Config(**{**FIT_TINY, "epochs": 1, "steps_per_epoch": 1})
    folder = fit(config, output=str(tmp_path / "run"), data_root=str(tmp_path / "data"),
                 verbose=0)
    trained = load_run(folder)
    assert (trained.config.mri_units, trained.config.ct_units) == ("percentile", "hu")
    predict(tmp_path / "data" / "001", tmp_path / "out", run=trained, progress=None)
    written = nib.load(tmp_path / "out" / "mri.nii.gz")  # named relative to the input folder
    assert written.shape == (32, 32, 3)
