"""DICOM outputs checked by independent tools on real public files (issue 25).

Every derived series is checked with dicom3tools' ``dciodvfy`` (no error
line that its input does not already have) and read back with SimpleITK's
``ImageSeriesReader`` (same size, origin, spacing and direction as the
input series). Outputs are made without a model: the input's own voxels
are written as the other modality, as ``predict`` would write a translation.
Each defect of the issue has its test on the real file that showed it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_vaegan.data import volumes
from keras_vaegan.data.volume import MEDICAL_EXTRA
from keras_vaegan.errors import VAEGANError

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

CT_SMALL = get_testdata_file("CT_small.dcm")
MR_SMALL = get_testdata_file("MR_small.dcm")
DICOMDIR_TESTS = os.path.join(os.path.dirname(CT_SMALL), "dicomdirtests", "98892003")
OTHER = {"ct": "mri", "mri": "ct"}
IMAGE_STORAGE = {"ct": pydicom.uid.CTImageStorage, "mri": pydicom.uid.MRImageStorage}
# real public single files: (name, modality of the input)
REAL_FILES = [("CT_small.dcm", "ct"), ("MR_small.dcm", "mri"), ("explicit_VR-UN.dcm", "ct"),
              ("693_UNCI.dcm", "ct"), ("693_J2KR.dcm", "ct"), ("MR2_J2KR.dcm", "mri")]


def _pydicom_data(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    return path


def _needs_dciodvfy() -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools")


def dciodvfy_errors(path: str) -> set[str]:
    """dciodvfy's error lines for one file, with sequence paths and item numbers removed."""
    result = subprocess.run(["dciodvfy", path], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return {_normalise(line) for line in lines if line.startswith("Error")}


def _normalise(line: str) -> str:
    line = re.sub(r"\[\d+\]", "[]", line)  # item numbers within a sequence
    return re.sub(r"</[^<>]*/", "<", line)  # the sequence path leading to the element


def new_errors(output: str, source: str) -> set[str]:
    return dciodvfy_errors(output) - dciodvfy_errors(source)


def sitk_geometry(paths: list[str]) -> tuple:
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(paths))
    image = reader.Execute()
    return image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def assert_same_geometry(source_files: list[str], output_files: list[str]) -> None:
    (size_a, *geometry_a), (size_b, *geometry_b) = (sitk_geometry(source_files),
                                                    sitk_geometry(output_files))
    assert size_a == size_b
    for a, b in zip(geometry_a, geometry_b):
        np.testing.assert_allclose(b, a, atol=1e-4)


def translated(source, modality: str, out: str, role: str = "mean") -> tuple:
    """Read ``source`` and write its own voxels back as the other modality at ``out``."""
    volume = volumes.read_volume(source, modality)
    written = volumes.write_volume(out, volume, volume.voxels, OTHER[modality], role=role,
                                   study_uid=generate_uid())
    return volume, written


def source_of(dataset, sources: dict):
    return sources[str(dataset.SourceImageSequence[0].ReferencedSOPInstanceUID)]


def copied_series(source: str, folder, positions: list[float]) -> list[str]:
    """A series of slices copied from one public file, ``positions`` mm along its normal."""
    original = pydicom.dcmread(source)
    normal = np.cross(*np.reshape([float(v) for v in original.ImageOrientationPatient], (2, 3)))
    start = np.array([float(v) for v in original.ImagePositionPatient])
    uid, paths = generate_uid(), []
    os.makedirs(folder, exist_ok=True)
    for i, along in enumerate(positions):
        ds = original.copy()
        ds.file_meta = original.file_meta.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in start + along * normal]
        ds.PixelData = (original.pixel_array.astype("<i2") + 10 * i).tobytes()
        paths.append(os.path.join(folder, f"im{i}.dcm"))
        ds.save_as(paths[-1])
    return paths


def sagittal_series(folder, count: int, rows: int = 64, cols: int = 64) -> list[str]:
    """MR_small's header as a sagittal stack of ``count`` slices 2 mm apart."""
    original = pydicom.dcmread(MR_SMALL)
    uid, paths = generate_uid(), []
    os.makedirs(folder, exist_ok=True)
    pixels = np.arange(rows * cols, dtype="<i2").reshape(rows, cols) % 700
    for i in range(count):
        ds = original.copy()
        ds.file_meta = original.file_meta.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [2.0 * i, -100.0, 100.0]
        ds.Rows, ds.Columns = rows, cols
        ds.PixelData = (pixels + i).astype("<i2").tobytes()
        paths.append(os.path.join(folder, f"sag{i}.dcm"))
        ds.save_as(paths[-1])
    return paths


# --- dciodvfy: no error its input does not already have ---------------------------------------


@pytest.mark.parametrize("name,modality", REAL_FILES)
def test_real_single_files_give_conformant_outputs_on_the_same_grid(tmp_path, name, modality):
    _needs_dciodvfy()
    source = _pydicom_data(name)
    _, written = translated(source, modality, str(tmp_path / "out"))
    (output,) = written
    assert new_errors(output, source) == set()
    assert_same_geometry([source], written)
    dataset = pydicom.dcmread(output)
    assert dataset.SOPClassUID == IMAGE_STORAGE[OTHER[modality]]
    assert list(dataset.ImageType) == ["DERIVED", "SECONDARY",
                                       "AXIAL" if OTHER[modality] == "ct" else "OTHER"]


@pytest.mark.parametrize("name,modality", [("CT_small.dcm", "ct"), ("MR_small.dcm", "mri")])
def test_series_made_from_public_files_give_conformant_series(tmp_path, name, modality):
    """Four slices in shuffled order: each output file against the slice it came from."""
    _needs_dciodvfy()
    paths = copied_series(get_testdata_file(name), tmp_path / "in", [7.5, 0.0, 2.5, 5.0])
    volume, written = translated(tmp_path / "in", modality, str(tmp_path / "out"))
    assert len(written) == 4
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in paths}
    for output in written:
        assert new_errors(output, source_of(pydicom.dcmread(output), sources)) == set()
    assert_same_geometry([s.path for s in volume.dicom_slices], written)
    back = volumes.read_volume(tmp_path / "out", OTHER[modality])
    np.testing.assert_allclose(back.voxels, volume.voxels, atol=0.51)


def test_type2_attributes_are_copied_even_empty_and_created_when_missing(tmp_path):
    # Laterality is present and empty in CT_small and MR_small, SliceThickness absent in
    # explicit_VR-UN, PatientPosition (Type 2C for CT/MR images) absent there too
    for source, modality in ((CT_SMALL, "ct"), (MR_SMALL, "mri")):
        _, (output,) = translated(source, modality, str(tmp_path / modality))
        dataset = pydicom.dcmread(output)
        assert "Laterality" in dataset and dataset.Laterality in ("", None)
    source = _pydicom_data("explicit_VR-UN.dcm")
    _, (output,) = translated(source, "ct", str(tmp_path / "un"))
    dataset = pydicom.dcmread(output)
    for name in ("SliceThickness", "PatientPosition", "EchoTime"):  # EchoTime: MR Image, Type 2
        assert name in dataset and dataset[name].value in ("", None), name
    assert dataset.PatientName == pydicom.dcmread(source).PatientName


@pytest.mark.parametrize("name,between", [("CT_small.dcm", 5.0), ("693_UNCI.dcm", 20.0),
                                          ("693_J2KR.dcm", 20.0)])
def test_spacing_between_slices_is_copied_so_one_slice_keeps_its_depth(tmp_path, name, between):
    _, written = translated(_pydicom_data(name), "ct", str(tmp_path / "out"))
    assert float(pydicom.dcmread(written[0]).SpacingBetweenSlices) == between
    assert sitk_geometry(written)[2][2] == pytest.approx(between)


# --- geometry refused from headers, before anything is written ------------------------------


def test_single_sagittal_slice_is_one_image_in_its_own_plane(tmp_path):
    """MR2_J2KR: one 1024x1024 sagittal slice, once cut into 1024 strips of 1x1024."""
    _needs_dciodvfy()
    source = _pydicom_data("MR2_J2KR.dcm")
    _, (found,) = volumes.find_inputs(source, "mri")
    assert found.slice_shape == (1024, 1024) and found.slice_count == 1
    volume = volumes.read_volume(found, "mri")
    original = pydicom.dcmread(source)
    np.testing.assert_allclose(volume.voxels[0], apply_modality_lut(original.pixel_array,
                                                                    original), rtol=1e-6)
    written = volumes.write_volume(str(tmp_path / "out"), volume, volume.voxels, "ct")
    (output,) = written
    dataset = pydicom.dcmread(output)
    assert (dataset.Rows, dataset.Columns) == (1024, 1024)
    assert dataset.ImageOrientationPatient == original.ImageOrientationPatient
    assert new_errors(output, source) == set()
    assert_same_geometry([source], written)


def test_single_slice_sagittal_series_of_a_dicomdir_are_16x16_images(tmp_path):
    """pydicom's dicomdirtests/98892003/MR1: three single-slice sagittal 16x16 series."""
    _, found = volumes.find_inputs(os.path.join(DICOMDIR_TESTS, "MR1"), "mri")
    assert [(f.slice_count, f.slice_shape) for f in found] == [(1, (16, 16))] * 3
    for k, series in enumerate(found):
        volume = volumes.read_volume(series, "mri")
        original = pydicom.dcmread(series.files[0])
        np.testing.assert_array_equal(volume.voxels[0], apply_modality_lut(
            original.pixel_array, original))
        (output,) = volumes.write_volume(str(tmp_path / f"s{k}"), volume, volume.voxels, "ct")
        assert pydicom.dcmread(output).pixel_array.shape == (16, 16)


def test_short_sagittal_stack_keeps_its_plane_and_a_long_one_is_resliced(tmp_path):
    sagittal_series(tmp_path / "short", 3)
    _, (short,) = volumes.find_inputs(tmp_path / "short", "mri")
    assert (short.slice_count, short.slice_shape) == (3, (64, 64))
    volume = volumes.read_volume(short, "mri")
    assert volume.voxels.shape == (3, 64, 64)
    sagittal_series(tmp_path / "long", 10)
    _, (long,) = volumes.find_inputs(tmp_path / "long", "mri")
    # axial slices: rows along A/P (64 in-plane columns), columns R/L (10 slices)
    assert (long.slice_count, long.slice_shape) == (64, (64, 10))
    assert volumes.read_volume(long, "mri").voxels.shape == (64, 64, 10)


def test_slices_the_model_would_see_too_small_are_refused_from_headers(tmp_path):
    sagittal_series(tmp_path / "thin", 10, rows=64, cols=6)  # axial slices of 6x10
    with pytest.raises(VAEGANError, match="smaller than 8x8") as err:
        volumes.find_inputs(tmp_path / "thin", "mri")
    assert err.value.path == str(tmp_path / "thin")


def test_mixed_orientations_are_refused_from_headers(tmp_path, monkeypatch):
    """dicomdirtests/98892003/MR2: three series, two mixing axial, coronal and sagittal."""
    from keras_vaegan.data import dicom_read

    def no_decoding(*args):
        raise AssertionError("pixel data decoded while grouping")

    monkeypatch.setattr(dicom_read, "_decode", no_decoding)
    folder = os.path.join(DICOMDIR_TESTS, "MR2")
    with pytest.raises(VAEGANError, match="series mixes slice orientations"):
        volumes.find_inputs(folder, "mri")
    bad: list[VAEGANError] = []
    _, found = volumes.find_inputs(folder, "mri", on_bad=bad.append)
    assert [os.path.basename(f.path) for f in found] == ["15970"]
    assert len(bad) == 2 and all("mixes slice orientations" in e.reason for e in bad)


def test_multiframe_mr_without_geometry_is_refused_not_invented(tmp_path):
    """emri_small: an Enhanced MR without functional groups (no orientation, no position)."""
    source = _pydicom_data("emri_small.dcm")
    with pytest.raises(VAEGANError, match="no ImageOrientationPatient") as err:
        volumes.find_inputs(source, "mri")
    assert err.value.path == source
    bad: list[VAEGANError] = []
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(source, folder / "emri.dcm")
    shutil.copy(MR_SMALL, folder / "mr.dcm")
    _, found = volumes.find_inputs(folder, "mri", on_bad=bad.append)
    assert [os.path.basename(f.path) for f in found] == ["mr.dcm"] and len(bad) == 1


def test_a_slice_without_position_is_written_without_one_and_warned(tmp_path):
    paths = copied_series(CT_SMALL, tmp_path / "in", [0.0, 5.0])
    for path in paths:
        dataset = pydicom.dcmread(path)
        del dataset.ImagePositionPatient
        dataset.save_as(path)
    volume = volumes.read_volume(tmp_path / "in", "ct")
    with pytest.warns(UserWarning, match="no ImagePositionPatient") as caught:
        written = volumes.write_volume(str(tmp_path / "out"), volume, volume.voxels, "mri")
    assert str(tmp_path / "in") in str(caught[0].message)
    assert all("ImagePositionPatient" not in pydicom.dcmread(p) for p in written)


# --- the uncertainty map: a Parametric Map, never a CT/MR image -----------------------------


def test_std_map_is_a_valid_parametric_map_on_the_input_grid(tmp_path):
    _needs_dciodvfy()
    pytest.importorskip("highdicom")
    paths = copied_series(MR_SMALL, tmp_path / "in", [0.0, 2.0, 4.0])
    volume = volumes.read_volume(tmp_path / "in", "mri")
    spread = np.abs(np.random.default_rng(0).normal(30.0, 10.0, volume.voxels.shape))
    study = generate_uid()
    (path,) = volumes.write_volume(str(tmp_path / "std"), volume, spread, "ct", role="std",
                                   study_uid=study)
    pmap = pydicom.dcmread(path)
    assert pmap.SOPClassUID == pydicom.uid.ParametricMapStorage
    assert pmap.Modality not in ("CT", "MR") and pmap.StudyInstanceUID == study
    assert new_errors(path, paths[0]) == set()
    mapping = pmap.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"
    # each frame holds the spread of the input slice at its plane position (in any order)
    positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float)
                 for f in pmap.PerFrameFunctionalGroupsSequence]
    stored = volume.to_file_order(spread)
    for frame, position in zip(pmap.pixel_array, positions):
        (index,) = [k for k, s in enumerate(volume.dicom_slices)
                    if np.allclose(s.position, position, atol=1e-4)]
        np.testing.assert_allclose(frame, stored[index], rtol=1e-6)
    referenced = {str(i.ReferencedSOPInstanceUID) for study_item in
                  pmap.StudiesContainingOtherReferencedInstancesSequence
                  for series in study_item.ReferencedSeriesSequence
                  for i in series.ReferencedInstanceSequence}
    assert referenced == {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}
    with pytest.raises(VAEGANError), pytest.warns(UserWarning, match="not CT images"):
        volumes.find_inputs(tmp_path / "std", "ct")


def test_std_map_needs_highdicom_and_says_how_to_get_it(tmp_path, monkeypatch):
    _, (found,) = volumes.find_inputs(MR_SMALL, "mri")
    volume = volumes.read_volume(found, "mri")
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(VAEGANError, match=re.escape(MEDICAL_EXTRA)):
        volumes.check_std_writable(found)
    with pytest.raises(VAEGANError, match="Parametric Map"):
        volumes.write_volume(str(tmp_path / "std"), volume, volume.voxels, "ct", role="std")
    assert not os.path.exists(tmp_path / "std")
    volumes.write_volume(str(tmp_path / "mean"), volume, volume.voxels, "ct")  # needs none


def test_std_map_of_an_input_without_frame_of_reference_is_refused_up_front(tmp_path):
    """693_UNCI has no FrameOfReferenceUID: a map could not be placed on its grid."""
    _, (found,) = volumes.find_inputs(_pydicom_data("693_UNCI.dcm"), "ct")
    with pytest.raises(VAEGANError, match="no FrameOfReferenceUID"):
        volumes.check_std_writable(found)
