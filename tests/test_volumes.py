"""Volumes: DICOM series and NIfTI read in HU, canonical orientation, written back on their grid."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from keras_vaegan.config import Config
from keras_vaegan.data import training_data, units, volumes, writers
from keras_vaegan.data.phantom import make_subject, subject_seed, write_phantom
from keras_vaegan.data.readers import find_images
from keras_vaegan.data.volume import Reorientation
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_folder

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

CT_SMALL = get_testdata_file("CT_small.dcm")
MR_SMALL = get_testdata_file("MR_small.dcm")
ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


def ct_series(folder, positions, uid=None, instance_numbers=None, with_position=True):
    """CT_small copied into a series: slice i holds the original pixels + 100 * i."""
    source = pydicom.dcmread(CT_SMALL)
    uid = uid or generate_uid()
    os.makedirs(folder, exist_ok=True)
    base = source.pixel_array.astype(np.int16)
    for i, z in enumerate(positions):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = (instance_numbers or list(range(1, len(positions) + 1)))[i]
        if with_position:
            ds.ImagePositionPatient = [-158.1, -179.0, float(z)]
        else:
            del ds.ImagePositionPatient
        ds.PixelData = (base + 100 * i).astype("<i2").tobytes()
        ds.save_as(os.path.join(folder, f"img{i}.dcm"))
    return base.astype(np.float32) - 1024.0  # HU of slice 0 (slope 1, intercept -1024)


def canonical_test_volume(slices=5, rows=12, cols=9):
    """An asymmetric volume: every voxel value tells its canonical (slice, row, col)."""
    s, r, c = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(cols), indexing="ij")
    return (1000.0 * s + 10.0 * r + 0.1 * c).astype(np.float32)


def save_nifti(path, data, affine, qform_code=1, sform_code=1):
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine, code=sform_code)
    nib.save(image, str(path))
    return str(path)


# --- DICOM -----------------------------------------------------------------------------------


def test_ct_small_reads_hu_like_pydicoms_modality_lut():
    volume = volumes.read_volume(CT_SMALL, "ct")
    dataset = pydicom.dcmread(CT_SMALL)
    expected = apply_modality_lut(dataset.pixel_array, dataset)
    assert volume.voxels.shape == (1, 128, 128) and volume.voxels.dtype == np.float32
    np.testing.assert_array_equal(volume.voxels[0], expected)
    assert volume.kind == "dicom" and volume.path == CT_SMALL
    np.testing.assert_allclose(volume.spacing_mm[1:], [0.661468, 0.661468])


def test_find_images_lists_volumes_and_extensionless_dicom(tmp_path):
    (tmp_path / "IM0001").write_bytes(open(CT_SMALL, "rb").read())
    (tmp_path / "DICOMDIR").write_bytes(open(CT_SMALL, "rb").read())
    (tmp_path / "README").write_text("not an image")
    save_nifti(tmp_path / "v.nii.gz", np.zeros((8, 8, 2)), np.eye(4))
    writers.write_slice(tmp_path / "s.png", np.zeros((8, 8)), "hu", "ct")
    assert [os.path.basename(p) for p in find_images(tmp_path)] == ["IM0001", "s.png", "v.nii.gz"]
    slices, found = volumes.find_inputs(tmp_path)
    assert [os.path.basename(p) for p in slices] == ["s.png"]
    assert [(s.kind, os.path.basename(s.files[0])) for s in found] == [("dicom", "IM0001"),
                                                                      ("nifti", "v.nii.gz")]


def test_dicom_folder_is_grouped_by_series_and_sorted_by_position(tmp_path):
    # positions shuffled against file names and instance numbers; two series in one folder
    folder = tmp_path / "b"
    hu0 = ct_series(folder, [20.0, 0.0, 10.0], uid="1.2.3.1")
    other = tmp_path / "b2"
    ct_series(other, [5.0, 15.0], uid="1.2.3.2")
    for name in os.listdir(other):
        os.replace(other / name, folder / f"x{name}")
    slices, found = volumes.find_inputs(folder)
    assert sorted(len(s.files) for s in found) == [2, 3]
    three = next(s for s in found if len(s.files) == 3)
    volume = volumes.read_volume(three, "ct")
    assert volume.voxels.shape == (3, 128, 128)
    # file img1 (z=0) first, then img2 (z=10), img0 (z=20): pixels + 100, + 200, + 0
    for k, offset in enumerate([100, 200, 0]):
        np.testing.assert_array_equal(volume.voxels[k], hu0 + offset)
    assert [s.position[2] for s in volume.dicom_slices] == [0.0, 10.0, 20.0]
    assert volume.spacing_mm[0] == pytest.approx(10.0)
    names = volumes.input_names(str(folder), slices, found)
    assert sorted(volumes.name_of(names, s) for s in found) == [
        os.path.join("b", "series1"), os.path.join("b", "series2")]


def test_without_positions_slices_follow_instance_number(tmp_path):
    hu0 = ct_series(tmp_path, [0, 0, 0], instance_numbers=[3, 1, 2], with_position=False)
    volume = volumes.read_volume(tmp_path, "ct")
    for k, offset in enumerate([100, 200, 0]):  # instance 1 is img1, 2 is img2, 3 is img0
        np.testing.assert_array_equal(volume.voxels[k], hu0 + offset)


def test_enhanced_multiframe_uses_per_frame_position_and_rescale(tmp_path):
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(CT_SMALL)
    base = ds.pixel_array.astype(np.int16)
    frames = np.stack([base, base + 1, base + 2])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype("<i2").tobytes()
    del ds.ImagePositionPatient, ds.RescaleSlope, ds.RescaleIntercept
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for z in (10.0, 0.0, 5.0):
        item, position, rescale = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, z]
        rescale.RescaleSlope, rescale.RescaleIntercept = 2, -1000
        item.PlanePositionSequence = [position]
        item.PixelValueTransformationSequence = [rescale]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    path = tmp_path / "multi.dcm"
    ds.save_as(path)
    volume = volumes.read_volume(path, "ct")
    assert volume.voxels.shape == (3, 128, 128)
    for k, frame in enumerate([1, 2, 0]):  # z = 0, 5, 10
        np.testing.assert_array_equal(volume.voxels[k], frames[frame] * 2.0 - 1000.0)
    assert [s.frame for s in volume.dicom_slices] == [1, 2, 0]


def test_dicom_series_written_back_reads_the_same_hu(tmp_path):
    ct_series(tmp_path / "in", [0.0, 2.5, 5.0])
    volume = volumes.read_volume(tmp_path / "in", "ct")
    hu = volume.voxels + np.float32(0.3)
    written = volumes.write_volume(str(tmp_path / "out"), volume, hu, "ct", study_uid="1.2.3.4")
    assert len(written) == 3 and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    back = volumes.read_volume(tmp_path / "out", "ct")
    np.testing.assert_allclose(back.voxels, hu, atol=0.5)  # int16 HU, slope 1
    datasets = [s.dataset for s in back.dicom_slices]
    assert {str(d.StudyInstanceUID) for d in datasets} == {"1.2.3.4"}
    assert len({str(d.SeriesInstanceUID) for d in datasets}) == 1
    source_uid = str(volume.dicom_slices[0].dataset.SeriesInstanceUID)
    assert str(datasets[0].SeriesInstanceUID) != source_uid
    # an uncertainty map keeps sub-HU precision (float32 frames of a Parametric Map, one
    # per input slice) and is not an image of the patient: it does not read back as a CT
    std = np.full(volume.voxels.shape, 3.21, np.float32)
    volumes.write_volume(str(tmp_path / "std"), volume, std, "ct", role="std")
    (spread,) = [pydicom.dcmread(tmp_path / "std" / name) for name in os.listdir(tmp_path / "std")]
    assert spread.SOPClassUID == pydicom.uid.ParametricMapStorage
    np.testing.assert_allclose(spread.pixel_array, volume.to_file_order(std), atol=1e-3)
    with pytest.raises(VAEGANError, match="not CT images"), pytest.warns(UserWarning):
        volumes.read_volume(tmp_path / "std", "ct")
    # writing again replaces the earlier series folder whole
    volumes.write_volume(str(tmp_path / "out"), volume, hu, "ct")
    assert len(os.listdir(tmp_path / "out")) == 3


def test_bad_dicom_inputs_name_the_file(tmp_path):
    no_pixels = pydicom.dcmread(CT_SMALL)
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(VAEGANError, match="no pixel data") as err:
        volumes.find_inputs(tmp_path / "nopix.dcm")
    assert err.value.path == str(tmp_path / "nopix.dcm")
    (tmp_path / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(VAEGANError, match="not a DICOM file") as err:
        volumes.find_inputs(tmp_path / "noise.dcm")
    assert err.value.path == str(tmp_path / "noise.dcm") and "\n" not in str(err.value)
    with pytest.raises(VAEGANError, match="Modality is MR, expected CT"):
        volumes.read_volume(MR_SMALL, "ct")
    rtplan = get_testdata_file("rtplan.dcm")
    with pytest.raises(VAEGANError, match="not an image"):
        volumes.find_inputs(rtplan)
    folder = tmp_path / "with_plan"
    ct_series(folder, [0.0, 1.0])
    (folder / "plan.dcm").write_bytes(open(rtplan, "rb").read())
    with pytest.warns(UserWarning, match="skipped 1 DICOM"):
        _, found = volumes.find_inputs(folder)
    assert len(found) == 1 and len(found[0].files) == 2


def test_a_folder_with_mr_and_ct_series_gives_each_modality_its_own(tmp_path):
    ct_series(tmp_path / "patient", [0.0, 3.0])
    (tmp_path / "patient" / "mr.dcm").write_bytes(open(MR_SMALL, "rb").read())
    with pytest.warns(UserWarning, match="not MR images"):
        _, found = volumes.find_inputs(tmp_path / "patient", "mri")
    assert [os.path.basename(f) for s in found for f in s.files] == ["mr.dcm"]
    with pytest.warns(UserWarning, match="not CT images"):
        _, found = volumes.find_inputs(tmp_path / "patient", "ct")
    assert sorted(os.path.basename(f) for s in found for f in s.files) == ["img0.dcm", "img1.dcm"]
    _, found = volumes.find_inputs(tmp_path / "patient")
    assert len(found) == 2


# --- NIfTI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["phantom_lps", "ras", "permuted"])
def test_nifti_slices_follow_the_affine_not_the_array_order(tmp_path, layout):
    """Three files of one head, stored in different axis orders, read as the same slices."""
    canonical = canonical_test_volume()  # [slice (I->S), row (A->P), col (R->L)]
    if layout == "phantom_lps":  # data[col, row, slice], affine: +i = L, +j = P, +k = S
        data, affine = canonical.transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0])
    elif layout == "ras":  # data[x, y, z] with +x = R, +y = A, +z = S (2 mm slices)
        data = np.flip(np.flip(canonical.transpose(2, 1, 0), 0), 1)
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
    else:  # data[slice, col, row]: +i = S, +j = L (-x), +k = P (-y)
        data = canonical.transpose(0, 2, 1)
        affine = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    path = save_nifti(tmp_path / f"{layout}.nii.gz", data, affine)
    volume = volumes.read_volume(path, "mri")
    np.testing.assert_array_equal(volume.voxels, canonical)
    assert volume.spacing_mm[0] == (2.0 if layout == "ras" else 1.0)
    np.testing.assert_array_equal(volume.to_file_order(volume.voxels), data)


def test_every_axis_order_round_trips_exactly():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 6, 7)).astype(np.float32)
    for perm in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]:
        for signs in np.ndindex(2, 2, 2):
            directions = np.zeros((3, 3))
            for axis, world in enumerate(perm):
                directions[world, axis] = -1.0 if signs[axis] else 1.0
            reorient = Reorientation.from_directions(directions)
            canonical = reorient.to_canonical(data)
            np.testing.assert_array_equal(reorient.to_file_order(canonical), data)


def test_nifti_written_back_keeps_shape_affine_and_header_codes(tmp_path):
    volume = volumes.read_volume(ANATOMICAL, "mri")
    source = nib.load(ANATOMICAL)
    assert volume.voxels.shape == (25, 41, 33)  # LAS: 25 axial slices of 41 x 33
    out = tmp_path / "ct.nii.gz"
    volumes.write_volume(str(out), volume, volume.voxels - 1000.0, "ct")
    written = nib.load(out)
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    for code in ("qform_code", "sform_code"):
        assert written.header[code] == source.header[code]
    np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
    assert written.get_data_dtype() == np.dtype("<f4")  # the big-endian int16 input comes back
    assert written.header.get_slope_inter() == (None, None)  # float HU, no scaling
    np.testing.assert_array_equal(written.get_fdata(), source.get_fdata() - 1000.0)
    assert b"not for diagnosis" in written.header["descrip"].tobytes()


def test_nifti_with_trailing_singleton_dimension_keeps_its_shape(tmp_path):
    data = canonical_test_volume().transpose(2, 1, 0)[..., None]
    path = save_nifti(tmp_path / "v.nii", data, np.diag([-1.0, -1.0, 1.0, 1.0]))
    volume = volumes.read_volume(path, "ct")
    assert volume.voxels.shape == (5, 12, 9)
    volumes.write_volume(str(tmp_path / "o.nii"), volume, volume.voxels, "ct")
    assert nib.load(tmp_path / "o.nii").shape == (9, 12, 5, 1)


def test_bad_nifti_inputs_name_the_file(tmp_path):
    cases = {
        "four_d.nii.gz": ("4-D NIfTI", lambda p: save_nifti(p, np.zeros((8, 8, 4, 3)), np.eye(4))),
        "flat.nii": ("2-D NIfTI", lambda p: save_nifti(p, np.zeros((8, 8)), np.eye(4))),
        "nan.nii.gz": ("non-finite", lambda p: save_nifti(p, np.full((8, 8, 3), np.nan),
                                                          np.eye(4))),
        "tiny.nii": ("smaller than", lambda p: save_nifti(p, np.zeros((4, 4, 3)), np.eye(4))),
        "noise.nii": ("not a readable NIfTI",
                      lambda p: open(p, "wb").write(np.random.default_rng(1).bytes(600))),
        "empty.nii.gz": ("empty file", lambda p: open(p, "wb").close()),
    }
    for name, (reason, make) in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(VAEGANError, match=reason) as err:
            volumes.read_volume(path, "ct")
        assert err.value.path == str(path) and "\n" not in str(err.value), name
    full = tmp_path / "full.nii.gz"
    save_nifti(full, np.random.default_rng(2).normal(size=(32, 32, 16)), np.eye(4))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(VAEGANError) as err:
        volumes.read_volume(cut, "ct")
    assert err.value.path == str(cut) and "NIfTI" in err.value.reason


def test_phantom_nifti_reads_back_as_the_phantom_slices(tmp_path):
    write_phantom(tmp_path, subjects=1, slices=3, size=32, fmt="nii", seed=5)
    subject = make_subject(subject_seed(5, 0), size=32, slices=3)
    for name, expected in (("ct", subject.ct), ("mri", subject.mri), ("mask", subject.mask)):
        volume = volumes.read_volume(tmp_path / "000" / f"{name}.nii.gz", "ct")
        np.testing.assert_allclose(volume.voxels, expected, atol=1e-3)


# --- units and training data ---------------------------------------------------------------------


def test_hu_to_model_units_and_back_is_exact_within_the_window():
    volume = volumes.read_volume(CT_SMALL, "ct")
    mapping = units.ct_map((-1024.0, 3071.0))
    back = mapping.from_unit(mapping.to_unit(volume.voxels))
    inside = (volume.voxels >= -1024) & (volume.voxels <= 3071)
    assert inside.mean() > 0.99
    np.testing.assert_allclose(back[inside], volume.voxels[inside], atol=1e-3)
    np.testing.assert_allclose(back[~inside], np.clip(volume.voxels[~inside], -1024, 3071),
                               atol=1e-3)


def test_synthrad_layout_feeds_fit_with_body_slices_only(tmp_path):
    write_phantom(tmp_path, subjects=2, slices=3, size=32, fmt="nii", seed=0)
    # a fully empty slab in one CT: 2 air slices added below the head
    path = tmp_path / "001" / "ct.nii.gz"
    image = nib.load(path)
    data = np.concatenate([np.full((32, 32, 2), -1000.0), image.get_fdata()], axis=2)
    save_nifti(path, data, image.affine)
    mri, ct = training_data.split_data_root(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in mri] == [os.path.join("000", "mri.nii.gz"),
                                                           os.path.join("001", "mri.nii.gz")]
    data = training_data.load_training_data(Config(), data_root=str(tmp_path))
    assert len(data.mri) == 6 and len(data.ct) == 6  # the air slices are left out
    assert data.config.mri_units == "percentile" and data.config.ct_units == "hu"
    everything = training_data.load_training_data(Config(body_slices_only=False),
                                            data_root=str(tmp_path))
    assert len(everything.ct) == 8
    for s in data.mri + data.ct:
        assert s.shape == (32, 32) and s.min() >= -1 and s.max() <= 1


def test_volumes_mix_with_16bit_slices_but_not_with_8bit_ones(tmp_path):
    write_phantom(tmp_path / "ph", subjects=1, slices=2, size=32, fmt="nii", seed=0)
    folder = tmp_path / "ct"
    os.makedirs(folder)
    os.replace(tmp_path / "ph" / "000" / "ct.nii.gz", folder / "vol.nii.gz")
    writers.write_slice(folder / "s.png", np.full((32, 32), 40.0), "hu", "ct")
    slices, unit, _ = training_data.read_folder(str(folder), "ct", Config())
    assert unit == "hu" and len(slices) == 3
    writers.write_slice(folder / "g.png", np.full((32, 32), 100.0), "uint8", "ct")
    with pytest.raises(VAEGANError, match="units disagree"):
        training_data.read_folder(str(folder), "ct", Config())


def test_atomic_folder_replaces_whole_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "series"
    with atomic_folder(target) as tmp:
        open(os.path.join(tmp, "a.dcm"), "w").write("1")
    assert os.listdir(target) == ["a.dcm"]
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            open(os.path.join(tmp, "b.dcm"), "w").write("2")
            raise RuntimeError("stop")
    assert os.listdir(target) == ["a.dcm"]
    with atomic_folder(target) as tmp:
        open(os.path.join(tmp, "c.dcm"), "w").write("3")
    assert os.listdir(target) == ["c.dcm"]
    assert sorted(os.listdir(tmp_path)) == ["series"]
