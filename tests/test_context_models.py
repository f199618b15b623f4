"""2.5-D models (context_slices = K > 1): K-channel stacks in and out, trained, saved, exported.

The tests marked ``backend`` also run on JAX and PyTorch (test_other_backends.py).
"""

from __future__ import annotations

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
from conftest import TINY

from keras_vaegan.config import Config
from keras_vaegan.models.generator import VAEGenerator
from keras_vaegan.models.losses import l1_loss, structure_loss

K = 3
CONTEXT = dict(TINY, context_slices=K)


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def stacks(batch: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random stacks whose K channels differ (a centre mix-up shows)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, size, size, K)).astype("float32")


def context_model(**changes):
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    model = VAECycleGAN(Config(**{**CONTEXT, **changes}))
    model.compile()
    return model


@pytest.mark.backend
def test_a_k3_model_builds_every_sub_model_for_k_channels():
    model = context_model(disc_high_pass=True)
    assert model.context_slices == K and model.centre_channel == K // 2
    for net in (model.g_ct, model.g_mri):
        assert net.channels == K
        assert tuple(net.stem.conv.kernel.shape)[2] == K
        assert tuple(net.to_image.kernel.shape)[3] == K
        image, mu, _ = net(stacks(), sample=False)
        assert to_np(image).shape == (2, 32, 32, K)
        assert to_np(mu).shape == (2, 8, 8, TINY["latent_channels"])
        assert net.compute_output_shape((2, 32, 32, K))[0] == (2, 32, 32, K)
    for disc in (model.d_ct, model.d_mri):
        assert tuple(disc.blocks[0].conv.kernel.shape)[2] == 2 * K  # K slices + K Laplacians
        assert [to_np(o).shape[-1] for o in disc(stacks())] == [1] * TINY["disc_heads"]
    for pool in (model.pool_ct, model.pool_mri):
        assert tuple(pool.images.shape) == (4, 32, 32, K)
    assert to_np(model.translate(stacks(), "ct2mri")).shape == (2, 32, 32, K)


@pytest.mark.backend
def test_k1_keeps_the_2d_layout_and_old_generator_configs_load_as_k1():
    model = context_model(context_slices=1)
    assert tuple(model.g_ct.to_image.kernel.shape)[2:] == (TINY["gen_filters"], 1)
    assert tuple(model.g_ct.stem.conv.kernel.shape)[2] == 1
    assert tuple(model.pool_ct.images.shape) == (4, 32, 32, 1)
    assert tuple(model.d_ct.blocks[0].conv.kernel.shape)[2] == 1
    old = {k: v for k, v in model.g_ct.get_config().items() if k != "channels"}
    assert VAEGenerator.from_config(old).channels == 1


def test_a_generator_refuses_stacks_of_another_depth():
    gen = VAEGenerator(filters=4, res_blocks=1, latent_channels=3, channels=K)
    with pytest.raises(ValueError, match="3-channel"):
        gen.build((1, 32, 32, 1))


@pytest.mark.backend
def test_losses_over_k_channels_mean_every_slice_and_structure_keeps_its_meaning():
    yy, xx = np.mgrid[:32, :32] - 15.5
    ring = np.where(np.abs(np.hypot(yy, xx) - 10) < 2, 1.0, -1.0).astype("float32")
    one = ring[None, :, :, None]
    same = np.repeat(one, K, axis=-1)
    moved = np.repeat(np.roll(one, 2, axis=2), K, axis=-1)
    # K identical slices: the same term as the 2-D image (means and correlation over H, W, K)
    assert float(to_np(structure_loss(same, moved))) == pytest.approx(
        float(to_np(structure_loss(one, np.roll(one, 2, axis=2)))), abs=1e-6)
    # a contrast flip is free, slice by slice; an edge moved in one slice only is not
    assert float(to_np(structure_loss(same, -0.5 * same + 0.2, scales=2))) == pytest.approx(
        0.0, abs=1e-4)
    one_moved = same.copy()
    one_moved[..., 0] = moved[..., 0]
    assert float(to_np(structure_loss(same, one_moved))) > 0.05
    # L1 (cycle, identity) weighs every slice equally
    off = same.copy()
    off[..., 2] += 0.3
    assert float(to_np(l1_loss(off, same))) == pytest.approx(0.3 / K, abs=1e-6)


@pytest.mark.backend
def test_train_steps_on_k3_batches_give_finite_losses_and_fill_the_pools():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = context_model(disc_high_pass=True, lambda_identity=0.5, structure_scales=2)
    mri, ct = stacks(seed=1), stacks(seed=2)
    dataset = tf.data.Dataset.from_tensors((mri, ct)).repeat()
    before = [to_np(v).copy() for v in model.g_ct.trainable_variables[:1]]
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0).history
    assert set(history) >= {"g_loss", "cycle", "identity", "structure", "d_ct", "d_mri"}
    assert all(np.isfinite(v) for values in history.values() for v in values), history
    assert history["identity"][0] > 0 and history["structure"][0] > 0
    assert int(to_np(model.pool_ct.count)) == 4 and int(to_np(model.pool_mri.count)) == 4
    assert np.abs(to_np(model.pool_ct.images)[..., 0] - to_np(model.pool_ct.images)[..., 2]).max() > 0
    assert np.abs(to_np(model.g_ct.trainable_variables[0]) - before[0]).max() > 0


@pytest.mark.backend
def test_a_k3_model_saves_and_loads_with_its_depth_and_outputs(tmp_path):
    model = context_model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.settings.context_slices == K and loaded.g_mri.channels == K
    assert tuple(loaded.pool_mri.images.shape)[-1] == K
    x = stacks(seed=3)
    for direction in ("mri2ct", "ct2mri"):
        np.testing.assert_array_equal(to_np(loaded.translate(x, direction)),
                                      to_np(model.translate(x, direction)))


@pytest.mark.backend
def test_the_snapshot_shows_the_centre_slice_of_each_stack(tmp_path):
    from keras_vaegan.training.callbacks import SnapshotCallback

    model = context_model()
    mri, ct = stacks(seed=4), stacks(seed=5)
    snapshot = SnapshotCallback(mri, ct, str(tmp_path))
    snapshot.set_model(model)
    rows = snapshot.rows()
    fake_ct = to_np(model.translate(mri, "mri2ct"))
    rec_ct = to_np(model.translate(model.translate(ct, "ct2mri"), "mri2ct"))
    centre = K // 2
    for i, row in enumerate(rows):
        assert len(row) == len(SnapshotCallback.TITLES)
        assert all(panel.shape == (32, 32) for panel in row)
        np.testing.assert_array_equal(row[0], mri[i, ..., centre])
        np.testing.assert_array_equal(row[3], ct[i, ..., centre])
        np.testing.assert_allclose(row[1], fake_ct[i, ..., centre], atol=1e-6)
        np.testing.assert_allclose(row[5], rec_ct[i, ..., centre], atol=1e-6)
    snapshot.on_epoch_end(0)
    assert os.path.getsize(tmp_path / "epoch-0001.png") > 0


# --- export (TensorFlow only: the SavedModel is a TensorFlow graph) -----------------------


@pytest.fixture(scope="module")
def exported_k3(tmp_path_factory):
    from conftest import save_tiny_run

    from keras_vaegan.inference.export import export_run

    run = save_tiny_run(tmp_path_factory.mktemp("runs") / "k3", Config(**CONTEXT))
    path = export_run(run, str(tmp_path_factory.mktemp("savedmodels") / "sct"), samples=3)
    return run, path


def _phantom_stacks(modality: str) -> np.ndarray:
    """[3, 38, 35, K] in file units; the neighbours' range differs from the centre's."""
    from keras_vaegan.data.phantom import make_slices

    mri, ct, _ = make_slices(3, size=40, seed=7)
    images = (mri if modality == "mri" else ct)[:, :38, 1:36].astype(np.float32)
    neighbours = images * (2.0 if modality == "mri" else 1.0) - (0 if modality == "mri" else 200)
    return np.stack([neighbours, images, np.roll(neighbours, 1, axis=0)], axis=-1)


def _expected(model, config, images: np.ndarray, direction: str) -> np.ndarray:
    """predict's per-image path in numpy + the in-process generator, centre channel kept."""
    from keras_vaegan.data import units
    from keras_vaegan.inference.predict import output_map

    stride = model.total_stride
    out_modality = "ct" if direction == "mri2ct" else "mri"
    rows, cols = images.shape[1:3]
    pad_h, pad_w = -rows % stride, -cols % stride
    top, left = pad_h // 2, pad_w // 2
    result = []
    for stack in images:
        # MRI: the centre slice's percentiles (a lone slice sent K times maps as predict's)
        in_map = (units.mri_map(stack[..., K // 2], config.mri_percentiles)
                  if direction == "mri2ct"
                  else units.ct_map(config.ct_window_hu))
        unit = np.pad(in_map.to_unit(stack), [(top, pad_h - top), (left, pad_w - left), (0, 0)],
                      constant_values=units.AIR_UNIT)
        out = to_np(model.translate(unit[None], direction))[0, top:top + rows, left:left + cols]
        result.append(output_map(out_modality, config)[1].from_unit(out[..., K // 2]))
    return np.stack(result)[..., None]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="export runs under tensorflow")
def test_a_k3_export_takes_stacks_and_returns_the_generators_centre_slice(exported_k3):
    import tensorflow as tf

    run, path = exported_k3
    saved = tf.saved_model.load(path)
    model = keras.saving.load_model(os.path.join(run, "model.keras"), safe_mode=True)
    config = Config.load(os.path.join(run, "config.json"))
    with open(os.path.join(path, "assets.extra", "keras_vaegan.json"), encoding="utf-8") as handle:
        info = json.load(handle)
    assert info["input_channels"] == K and info["output_channels"] == 1
    for signature in ("serving_default", "ct2mri", "mri2ct_uncertainty"):
        spec = saved.signatures[signature].structured_input_signature[1]["images"]
        assert spec.shape.as_list() == [None, None, None, K]
    for signature, modality, direction in (("serving_default", "mri", "mri2ct"),
                                           ("ct2mri", "ct", "ct2mri")):
        images = _phantom_stacks(modality)
        served = saved.signatures[signature](images=tf.constant(images))["translated"].numpy()
        expected = _expected(model, config, images, direction)
        assert served.shape == expected.shape == (3, 38, 35, 1)
        scale = 1.0 if direction == "mri2ct" else 0.25  # HU / MRI reference units
        assert np.abs(served - expected).max() <= 0.01 * scale, np.abs(served - expected).max()
    images = _phantom_stacks("mri")
    out = saved.signatures["mri2ct_uncertainty"](images=tf.constant(images))
    mean, std = out["mean"].numpy(), out["std"].numpy()
    assert mean.shape == std.shape == (3, 38, 35, 1)
    assert np.isfinite(mean).all() and (std >= 0).all() and std.max() > 0
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):  # a 2-D slice is no stack
        saved.signatures["serving_default"](images=tf.constant(images[..., :1]))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="export runs under tensorflow")
@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None
                    or importlib.util.find_spec("onnxruntime") is None,
                    reason="the [onnx] extra (tf2onnx, onnxruntime) is not installed")
def test_a_k3_onnx_export_takes_stacks_like_the_saved_model(exported_k3, tmp_path):
    import onnxruntime
    import tensorflow as tf

    from keras_vaegan.inference.export import export_run

    run, saved_path = exported_k3
    path = export_run(run, str(tmp_path / "onnx"), fmt="onnx")
    session = onnxruntime.InferenceSession(os.path.join(path, "mri2ct.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[-1] == K
    images = _phantom_stacks("mri")
    onnx_out = session.run(None, {"images": images})[0]
    saved = tf.saved_model.load(saved_path)
    tf_out = saved.signatures["serving_default"](images=tf.constant(images))["translated"].numpy()
    assert onnx_out.shape == tf_out.shape == (3, 38, 35, 1)
    assert np.abs(onnx_out - tf_out).max() <= 1.0
