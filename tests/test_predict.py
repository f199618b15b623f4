"""predict: whole slices at native size, units in and out, uncertainty, runs, errors."""

from __future__ import annotations

import contextlib
import os
import shutil

import numpy as np
import pytest
from conftest import save_tiny_run

from keras_vaegan.config import Config
from keras_vaegan.data import readers, volumes, writers
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.predict import (
    LoadedRun,
    find_newest_run,
    load_run,
    predict,
    translate_slice,
    translate_slices,
)

TINY = dict(image_size=32, batch_size=2, gen_filters=4, latent_channels=4, gen_res_blocks=1,
            disc_filters=(8, 16), disc_heads=1, epochs=1, steps_per_epoch=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A fake trained run: an untrained tiny model saved as a run directory."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_tiny_run(run, Config(**TINY))
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run(str(run_dir))


@pytest.fixture(scope="module")
def uint8_run(run_dir, loaded):
    """The same model, recorded as trained on 8-bit MRI and 8-bit CT."""
    return LoadedRun(model=loaded.model, run_dir=str(run_dir),
                     config=loaded.config.replace(mri_units="uint8", ct_units="uint8"))


def _mri(height, width, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    head = ((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.4 * width)) ** 2 < 1
    return (head * 600.0 + rng.normal(0, 20, (height, width))).clip(0, None).astype(np.float32)


def _ct_hu(height, width):
    yy, xx = np.mgrid[0:height, 0:width]
    r = ((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.4 * width)) ** 2
    return np.where(r < 0.7, 40.0, np.where(r < 1.0, 1000.0, -1000.0)).astype(np.float32)


@pytest.fixture()
def mri_folder(tmp_path):
    folder = tmp_path / "mri"
    writers.write_slice(folder / "a.png", _mri(96, 64), "percentile", "mri")
    writers.write_slice(folder / "sub" / "b.npy", _mri(40, 40, seed=1), "percentile", "mri")
    return folder


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


def test_predict_writes_one_output_per_slice_at_input_size(mri_folder, tmp_path, loaded):
    out = tmp_path / "out"
    written = predict(mri_folder, out, run=loaded, progress=None)
    assert _listing(out) == ["a.png", "overview.png", os.path.join("sub", "b.npy")]
    assert sorted(os.path.relpath(p, out) for p in written) == _listing(out)
    ct_a = readers.read_slice(out / "a.png", "ct")
    ct_b = readers.read_slice(out / "sub" / "b.npy", "ct")
    assert ct_a.pixels.shape == (96, 64) and ct_a.bit_depth == "uint16"
    assert ct_b.pixels.shape == (40, 40)
    for hu in (ct_a.pixels, ct_b.pixels):  # synthetic CT in HU, inside the run's window
        assert hu.min() >= -1024 - 1e-3 and hu.max() <= 3071 + 1e-3


def test_single_sample_is_deterministic_and_has_no_std(mri_folder, tmp_path, run_dir):
    first = predict(mri_folder, tmp_path / "one", run=str(run_dir), fmt="npy", progress=None)
    second = predict(mri_folder, tmp_path / "two", run=str(run_dir), fmt="npy", progress=None)
    assert not any("_std" in p for p in first)
    for a, b in zip(first, second):
        if a.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b))


def test_samples_write_a_positive_std_map(mri_folder, tmp_path, loaded):
    out = tmp_path / "out"
    written = predict(mri_folder, out, run=loaded, samples=4, fmt="npy", progress=None)
    assert _listing(out) == ["a.npy", "a_std.npy", "overview.png",
                             os.path.join("sub", "b.npy"), os.path.join("sub", "b_std.npy")]
    assert len(written) == 5
    std = np.load(out / "a_std.npy")
    assert std.shape == (96, 64) and (std >= 0).all() and std.mean() > 0
    assert std.max() <= (3071 + 1024) / 2 * 2  # std in HU is at most the window's half-range x2


def test_translate_slices_batches_keep_order_and_match_single(loaded):
    model = loaded.model
    rng = np.random.default_rng(3)
    images = [rng.uniform(-1, 1, shape).astype(np.float32)
              for shape in [(40, 40), (33, 50), (40, 40), (12, 20), (37, 38)]]
    batched = translate_slices(model, images, "mri2ct", samples=1, batch_size=3)
    for image, (mean, std) in zip(images, batched):
        single, none = translate_slice(model, image, "mri2ct")
        assert none is None and std is None
        assert mean.shape == image.shape
        np.testing.assert_allclose(mean, single, atol=1e-4)


def test_load_run_can_turn_mirror_and_shift_averaging_off(run_dir):
    """A run predicts mirror- and shift-averaged unless loaded with ``mirror_average=False``
    and ``shift_average=False``: one pass; each can be turned off alone."""
    image = _mri(32, 40).astype(np.float32) / 500.0 - 1.0
    image[:, :7] = -1.0  # air on one side only: the slice is not its own mirror
    default = load_run(str(run_dir))
    single = load_run(str(run_dir), mirror_average=False, shift_average=False)
    mirror_only = load_run(str(run_dir), shift_average=False)
    assert default.model.settings.mirror_average and default.config.mirror_average
    assert default.model.settings.shift_average and default.config.shift_average
    assert not single.model.settings.mirror_average and not single.config.mirror_average
    assert not single.model.settings.shift_average and not single.config.shift_average
    net = single.model.g_ct

    def one(x):
        return np.asarray(net(np.ascontiguousarray(x)[None, :, :, None], training=False,
                              sample=False)[0])[0, ..., 0]

    stride = single.model.total_stride

    def phases(x):  # every diagonal phase p < stride (p reflected pixels before), cropped back
        return sum(one(np.pad(x, (p, (stride - p) % stride), mode="reflect"))
                   [p:p + x.shape[0], p:p + x.shape[1]] for p in range(stride)) / stride

    one_pass, of_mirror = one(image), one(image[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(translate_slice(single.model, image)[0], one_pass, atol=5e-5)
    np.testing.assert_allclose(translate_slice(mirror_only.model, image)[0],
                               (one_pass + of_mirror) / 2, atol=5e-5)
    np.testing.assert_allclose(translate_slice(default.model, image)[0],
                               (phases(image) + phases(image[:, ::-1])[:, ::-1]) / 2, atol=5e-5)
    assert np.abs(one_pass - of_mirror).max() > 1e-3
    assert np.abs(phases(image) - one_pass).max() > 1e-3


def test_predict_single_pass_writes_the_one_pass_translation(tmp_path, run_dir):
    """``predict(..., mirror_average=False, shift_average=False)`` (the CLI's
    ``--single-pass``) writes one pass; a run already loaded the other way is refused rather
    than silently reloaded."""
    image = _mri(32, 40)
    image[:, :7] = 0  # air on one side only: the slice is not its own mirror
    np.save(tmp_path / "a.npy", image)
    off = dict(mirror_average=False, shift_average=False)
    single = load_run(str(run_dir), **off)
    written = {}
    for name, averaging in (("single", off), ("default", {})):
        predict(tmp_path / "a.npy", tmp_path / name, run=str(run_dir), fmt="npy", **averaging)
        written[name] = np.load(tmp_path / name / "a.npy")
    predict(tmp_path / "a.npy", tmp_path / "loaded", run=single, fmt="npy", **off)
    np.testing.assert_array_equal(np.load(tmp_path / "loaded" / "a.npy"), written["single"])
    assert np.abs(written["single"] - written["default"]).max() > 1.0  # HU
    for key in off:
        with pytest.raises(VAEGANError, match=f"{key}=False"):
            predict(tmp_path / "a.npy", tmp_path / "refused", run=single, fmt="npy",
                    **{key: True})
    assert not (tmp_path / "refused").exists()


def test_find_newest_run_picks_the_latest_model(tmp_path, run_dir):
    root = tmp_path / "savedmodels"
    for name, mtime in (("old", 1_000_000), ("new", 2_000_000), ("mid", 1_500_000)):
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "model.keras").write_bytes(b"x")
        (folder / "config.json").write_text("{}")
        os.utime(folder / "model.keras", (mtime, mtime))
    (root / "export" / "1").mkdir(parents=True)  # an exported SavedModel is not a run
    assert find_newest_run(root) == str(root / "new")
    with pytest.raises(VAEGANError, match="no trained run found"):
        find_newest_run(tmp_path / "empty")


def test_load_run_refuses_what_is_not_a_run(tmp_path, run_dir):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    with pytest.raises(VAEGANError) as err:
        load_run(folder)
    assert err.value.path == str(folder) and "model.keras" in err.value.reason
    with pytest.raises(VAEGANError, match="no such run folder"):
        load_run(tmp_path / "missing")
    (folder / "model.keras").write_bytes(b"this is not a zip file")
    (folder / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    with pytest.raises(VAEGANError) as err:
        load_run(folder)
    assert "model.keras" in err.value.path and "cannot load the model" in err.value.reason
    assert "\n" not in str(err.value)


def test_unreadable_input_writes_nothing(mri_folder, tmp_path, loaded):
    (mri_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    with pytest.raises(VAEGANError) as err:
        predict(mri_folder, out, run=loaded, progress=None)
    assert err.value.path.endswith("broken.png")
    assert not out.exists() or _listing(out) == []


def test_output_folder_must_not_be_the_input_folder(mri_folder, loaded):
    before = _listing(mri_folder)
    with pytest.raises(VAEGANError, match="input folder"):
        predict(mri_folder, mri_folder, run=loaded, progress=None)
    assert _listing(mri_folder) == before


def test_colliding_output_names_are_refused_before_writing(tmp_path, loaded):
    folder = tmp_path / "mri"
    writers.write_slice(folder / "a.png", _mri(32, 32), "percentile", "mri")
    writers.write_slice(folder / "a.npy", _mri(32, 32), "percentile", "mri")
    out = tmp_path / "out"
    with pytest.raises(VAEGANError, match="would also be written"):
        predict(folder, out, run=loaded, fmt="png", progress=None)
    assert not out.exists()


def test_ct_16bit_png_to_mri_in_reference_range(tmp_path, loaded):
    source = tmp_path / "ct.png"
    writers.write_slice(source, _ct_hu(48, 56), "hu", "ct")
    assert readers.read_slice(source, "ct").bit_depth == "uint16"
    out = tmp_path / "out"
    written = predict(source, out, run=loaded, direction="ct2mri", samples=2, progress=None)
    assert [os.path.basename(p) for p in written] == ["ct.png", "ct_std.png", "overview.png"]
    mri = readers.read_slice(out / "ct.png", "mri")
    low, high = loaded.config.mri_reference_range
    assert mri.pixels.shape == (48, 56) and mri.bit_depth == "uint16"
    assert mri.pixels.min() >= low and mri.pixels.max() <= high


def test_8bit_images_follow_the_run_units(tmp_path, loaded, uint8_run):
    source = tmp_path / "mri.png"
    writers.write_slice(source, _mri(36, 44) / 600 * 255, "uint8", "mri")
    # trained on 8-bit: 8-bit in, 8-bit out
    predict(source, tmp_path / "u8", run=uint8_run, progress=None)
    ct = readers.read_slice(tmp_path / "u8" / "mri.png", "ct")
    assert ct.bit_depth == "uint8" and ct.pixels.shape == (36, 44)
    # trained on percentile MRI / HU CT: 8-bit MRI is scaled by percentiles, CT written in HU
    predict(source, tmp_path / "hu", run=loaded, progress=None)
    assert readers.read_slice(tmp_path / "hu" / "mri.png", "ct").bit_depth == "uint16"
    # 8-bit CT has no HU: refused for a run trained on HU, accepted by an 8-bit run
    ct8 = tmp_path / "ct8.jpg"
    writers.write_slice(ct8, np.full((32, 32), 128.0), "uint8", "ct")
    with pytest.raises(VAEGANError, match="8-bit CT"):
        predict(ct8, tmp_path / "refused", run=loaded, direction="ct2mri", progress=None)
    assert not (tmp_path / "refused").exists()
    written = predict(ct8, tmp_path / "ok", run=uint8_run, direction="ct2mri", progress=None)
    assert os.path.basename(written[0]) == "ct8.jpg"


def test_jpeg_input_with_hu_output_is_written_as_png(tmp_path, loaded):
    source = tmp_path / "mri.jpg"
    writers.write_slice(source, _mri(32, 32) / 600 * 255, "uint8", "mri")
    written = predict(source, tmp_path / "out", run=loaded, progress=None)
    assert os.path.basename(written[0]) == "mri.png"
    assert readers.read_slice(written[0], "ct").bit_depth == "uint16"


# --- progress through a callback; all or nothing ---------------------------------------------


def test_progress_goes_to_the_callback_and_predict_prints_nothing(mri_folder, tmp_path, loaded,
                                                                  capsys):
    calls = []
    predict(mri_folder, tmp_path / "out", run=loaded, batch_size=1,
            progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)]  # (done, total) after each batch of one slice
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def _save_nifti(path, data):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])),
             str(path))


def _snapshot(folder) -> dict:
    """Every file under ``folder`` (hidden ones too) -> its bytes."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def test_nan_voxels_found_when_read_leave_the_output_folder_as_it_was(tmp_path, loaded):
    """A slice and a good volume are translated before the NaN volume is read: none is written."""
    folder = tmp_path / "in"
    writers.write_slice(folder / "a.png", _mri(32, 32), "percentile", "mri")
    rng = np.random.default_rng(0)
    _save_nifti(folder / "good.nii.gz", rng.uniform(0, 500, (24, 20, 3)))
    nan = rng.uniform(0, 500, (24, 20, 3))
    nan[5, 5, 1] = np.nan
    _save_nifti(folder / "nan.nii.gz", nan)
    out = tmp_path / "out"
    with pytest.raises(VAEGANError, match="non-finite") as err:
        predict(folder, out, run=loaded)
    assert err.value.path == str(folder / "nan.nii.gz")
    assert not out.exists()
    # earlier results stay byte for byte, also those --overwrite would have replaced
    out.mkdir()
    (out / "a.png").write_bytes(b"an earlier result")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(VAEGANError, match="non-finite"):
        predict(folder, out, run=loaded, overwrite=True)
    assert _snapshot(out) == before  # no staging folder left behind either
    # a rerun is not refused for "output exists"; --skip-bad leaves the NaN volume out
    (out / "a.png").unlink()
    skipped = []
    written = predict(folder, out, run=loaded, on_bad=skipped.append)
    assert [err.path for err in skipped] == [str(folder / "nan.nii.gz")]
    assert _listing(out) == ["a.png", "good.nii.gz", "notes.txt", "overview.png"]
    assert sorted(os.path.relpath(p, out) for p in written) == ["a.png", "good.nii.gz",
                                                                "overview.png"]
    assert volumes.read_volume(out / "good.nii.gz", "ct").voxels.shape == (3, 20, 24)


def _dicom_outputs(folder):
    pydicom = pytest.importorskip("pydicom")
    return [pydicom.dcmread(os.path.join(d, f)) for d, _, files in os.walk(folder)
            for f in files if f.endswith(".dcm")]


def test_a_folder_of_series_with_mixed_orientations_writes_nothing(tmp_path, loaded):
    """pydicom's MR2: tri-plane localizer series (mixed slice orientations within a series)."""
    from pydicom.data import get_testdata_file

    source = os.path.join(os.path.dirname(get_testdata_file("CT_small.dcm")),
                          "dicomdirtests", "98892003", "MR2")
    folder = tmp_path / "MR2"
    shutil.copytree(source, folder)
    out = tmp_path / "out"
    with pytest.raises(VAEGANError) as err:
        predict(folder, out, run=loaded)
    assert err.value.path.startswith(str(folder))
    assert not out.exists()
    skipped = []  # --skip-bad: the refused series reported, whole slices for any other
    try:
        predict(folder, out, run=loaded, on_bad=skipped.append)
    except VAEGANError as err:
        assert "every image file was bad" in err.reason
        assert not out.exists()
    else:
        assert all(min(d.Rows, d.Columns) >= 8 for d in _dicom_outputs(out))
    assert skipped and all(e.path.startswith(str(folder)) for e in skipped)


def test_a_single_sagittal_slice_is_never_cut_into_strips(tmp_path, loaded):
    """pydicom-data's MR2_J2KR.dcm, one 1024x1024 sagittal slice: one image, or refused whole."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    scan = tmp_path / "in" / "MR2_J2KR.dcm"
    scan.parent.mkdir()
    shutil.copy(get_testdata_file("MR2_J2KR.dcm"), scan)
    header = pydicom.dcmread(scan, stop_before_pixels=True)
    out = tmp_path / "out"
    try:
        written = predict(scan, out, run=loaded)
    except VAEGANError as err:
        assert err.path == str(scan) and "\n" not in str(err)
        assert not out.exists()
        return
    outputs = _dicom_outputs(out)
    assert len(outputs) == 1 and len(written) == 2  # the slice and the overview
    assert (outputs[0].Rows, outputs[0].Columns) == (header.Rows, header.Columns)


class _Eager:
    """The model behind a stand-in that only has ``translate``: today's eager pass, unpadded."""

    def __init__(self, model):
        self.model, self.total_stride = model, model.total_stride

    def translate(self, inputs, direction, sample=False):
        return self.model.translate(inputs, direction, sample=sample)


def test_compiled_pass_is_traced_once_and_reused_across_volumes(tmp_path, run_dir):
    import nibabel as nib

    from keras_vaegan.inference.compiled import _CACHE, compiled_translation
    from keras_vaegan.inference.translate import volume_input_map, volume_output_map

    run = load_run(str(run_dir))  # a model of its own: nothing compiled for it yet
    folder = tmp_path / "in"
    folder.mkdir()
    for name, count in (("a", 7), ("b", 5)):  # 7 = 3 + 3 + 1: the last batch is padded
        data = np.stack([_mri(37, 45, seed=k) for k in range(count)], axis=-1)
        nib.save(nib.Nifti1Image(np.transpose(data, (1, 0, 2)), np.eye(4)),
                 str(folder / f"{name}.nii.gz"))
    predict(folder, tmp_path / "out", run=run, batch_size=3, progress=None)

    stride = run.model.total_stride
    shape = (3, -(-37 // stride) * stride, -(-45 // stride) * stride)
    assert list(_CACHE[run.model]) == [("mri2ct", shape, False)]  # one function for both
    assert compiled_translation(run.model, "mri2ct", shape, sample=False).traces == 1
    for name in ("a", "b"):
        volume = volumes.read_volume(folder / f"{name}.nii.gz", "mri")
        unit = volume_input_map(volume, "mri", run.config).to_unit(volume.voxels)
        eager = translate_slices(_Eager(run.model), list(unit), "mri2ct", batch_size=3)
        expected = volume_output_map("ct", run.config).from_unit(np.stack([m for m, _ in eager]))
        written = volumes.read_volume(tmp_path / "out" / f"{name}.nii.gz", "ct").voxels
        assert written.shape == expected.shape == volume.voxels.shape
        low, high = run.config.ct_window_hu
        np.testing.assert_allclose(written, expected, rtol=0, atol=1e-5 * (high - low) / 2)


@pytest.mark.parametrize("padding,filters", [("same", 1), ("valid", 1), ("same", 3)])
def test_few_filter_convs_traced_as_depthwise_give_the_same_values(padding, filters):
    import keras

    from keras_vaegan.backends.tensorflow_steps import _few_filter_convs_as_depthwise

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the rewrite is TensorFlow's only")
    layer = keras.layers.Conv2D(filters, 7, padding=padding, bias_initializer="random_normal")
    net = keras.Sequential([keras.Input((20, 24, 5)), layer])
    images = np.random.default_rng(0).normal(size=(2, 20, 24, 5)).astype(np.float32)
    plain = keras.ops.convert_to_numpy(net(images))
    with _few_filter_convs_as_depthwise(net):
        assert "call" in vars(layer)  # rewritten while the context lasts
        rewritten = keras.ops.convert_to_numpy(net(images))
    assert "call" not in vars(layer)  # the layer is itself again afterwards
    assert rewritten.shape == plain.shape
    np.testing.assert_allclose(rewritten, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3, None])
def test_instance_norms_traced_as_fused_batch_norms_give_the_same_values(batch):
    """Values and gradients of Keras's GroupNormalization(groups=-1), static and unknown batch."""
    import keras
    import tensorflow as tf

    from keras_vaegan.backends.tensorflow_steps import instance_norms_fused

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the rewrite is TensorFlow's only")
    norm = keras.layers.GroupNormalization(groups=-1, epsilon=1e-5,
                                           gamma_initializer="random_normal",
                                           beta_initializer="random_normal")
    net = keras.Sequential([keras.Input((12, 10, 6)), norm])
    rng = np.random.default_rng(0)
    images = (rng.normal(size=(3, 12, 10, 6)) * rng.uniform(0.1, 5, (3, 1, 1, 6))
              + rng.normal(0, 3, (3, 1, 1, 6))).astype(np.float32)[:batch or 3]
    weights = tf.constant(rng.normal(size=images.shape).astype(np.float32))

    def loss_and_grads(rewrite: bool):
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                with instance_norms_fused(net) if rewrite else contextlib.nullcontext():
                    out = net(x)
                loss = tf.reduce_sum(out * weights)
            return out, tape.gradient(loss, [x, norm.gamma, norm.beta])

        spec = tf.TensorSpec((batch, 12, 10, 6), tf.float32)
        return tf.function(run, input_signature=[spec])(tf.constant(images))

    plain, plain_grads = loss_and_grads(False)
    fused, fused_grads = loss_and_grads(True)
    assert "call" not in vars(norm)  # the layer is itself again afterwards
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-4, atol=1e-4)
    for got, want in zip(fused_grads, plain_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-3)
    assert np.abs(plain.numpy().mean(axis=(1, 2)) - norm.beta.numpy()).max() < 1e-4


def test_mixed_precision_predict_computes_in_bfloat16_close_to_float32(mri_folder, tmp_path,
                                                                       run_dir, loaded):
    """``precision`` loads the model in that policy for this call only; float32 stays the default."""
    import keras

    policy_before = keras.mixed_precision.global_policy().name
    fast = load_run(str(run_dir), precision="bfloat16")
    assert fast.policy == "mixed_bfloat16" and loaded.policy == "float32"
    convs = [layer for layer in fast.model.g_ct._flatten_layers()
             if isinstance(layer, keras.layers.Conv2D)]
    assert convs[0].compute_dtype == "bfloat16"  # the stem; the latent and the head stay float32
    assert sum(layer.compute_dtype == "bfloat16" for layer in convs) > len(convs) // 2
    assert keras.mixed_precision.global_policy().name == policy_before  # the process unchanged

    outputs = {}
    for name, precision in (("f32", None), ("bf16", "bfloat16")):
        out = tmp_path / name
        predict(mri_folder, out, run=str(run_dir), fmt="npy", precision=precision)
        outputs[name] = np.load(out / "a.npy")
    gap = np.abs(outputs["bf16"] - outputs["f32"])
    assert gap.max() > 0  # really computed in another precision
    # bf16 keeps 8 bits of mantissa: about 0.4 % per rounding, ~1.4 % of the image's spread
    # after the generator's ~25 layers here (10 HU of 740); float32 and bf16 disagreeing on the
    # image would be tens of percent
    assert gap.mean() < 0.025 * outputs["f32"].std(), (gap.mean(), outputs["f32"].std())
    assert keras.mixed_precision.global_policy().name == policy_before

    # a run loaded already is used as loaded: asking for another precision is refused
    with pytest.raises(VAEGANError, match="loaded as float32, not mixed_bfloat16"):
        predict(mri_folder, tmp_path / "refused", run=loaded, fmt="npy", precision="bfloat16")
    assert not (tmp_path / "refused").exists()
