"""export: a TF Serving SavedModel whose signatures reproduce predict, loadable without keras_vaegan."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import save_tiny_run
from test_cli import assert_one_error_line, cli

from keras_vaegan.config import Config
from keras_vaegan.data import units
from keras_vaegan.data.phantom import make_slices
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.export import export_run, robust_range
from keras_vaegan.inference.predict import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICE_SHAPE = (38, 35)  # not a multiple of the stride (4): padding is uneven and cropped back


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A fake trained run: an untrained tiny model saved as a run directory."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_tiny_run(run)
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("savedmodels") / "sct"
    path = export_run(str(run_dir), str(output), samples=4)
    assert path == os.path.join(str(output), "1")
    return output


@pytest.fixture(scope="module")
def phantom_slices():
    mri, ct, _ = make_slices(3, size=40, seed=7)
    height, width = SLICE_SHAPE
    return mri[:, :height, 1:width + 1].copy(), ct[:, :height, 1:width + 1].copy()


def _saved_model_cli(*args):
    return subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_saved_model_cli_lists_both_signatures(exported):
    result = _saved_model_cli("show", "--dir", str(exported / "1"), "--all")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    signatures = {}
    for block in text.split("signature_def[")[1:]:
        name = block.split("'")[1]
        signatures[name] = block.split("Method name is")[0]
    for name, outputs in (("serving_default", ["translated"]), ("ct2mri", ["translated"]),
                          ("mri2ct_uncertainty", ["mean", "std"])):
        block = signatures[name]
        for key in ["inputs['images']"] + [f"outputs['{out}']" for out in outputs]:
            part = block.split(key)[1]
            assert "dtype: DT_FLOAT" in part.split("name:")[0], (name, key)
            assert "shape: (-1, -1, -1, 1)" in part.split("name:")[0], (name, key)
    for name in ("serving_default", "ct2mri"):
        assert "tensorflow/serving/predict" in text.split(f"signature_def['{name}']")[1]


_CHILD = textwrap.dedent("""
    import importlib.abc, os, sys

    class NoPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "keras_vaegan":
                raise ImportError("the SavedModel must load without keras_vaegan")
            return None

    sys.meta_path.insert(0, NoPackage())
    repo = os.path.realpath(sys.argv[3])
    assert all(os.path.realpath(p or os.getcwd()) != repo for p in sys.path), sys.path

    import numpy as np
    import tensorflow as tf

    export, folder = sys.argv[1], sys.argv[2]
    model = tf.saved_model.load(export)
    for source, signature in (("mri", "serving_default"), ("ct", "ct2mri")):
        images = tf.constant(np.load(os.path.join(folder, source + ".npy"))[..., None])
        out = model.signatures[signature](images=images)
        np.save(os.path.join(folder, signature + ".npy"), out["translated"].numpy())
    images = tf.constant(np.load(os.path.join(folder, "mri.npy"))[..., None])
    out = model.signatures["mri2ct_uncertainty"](images=images)
    np.save(os.path.join(folder, "mean.npy"), out["mean"].numpy())
    np.save(os.path.join(folder, "std.npy"), out["std"].numpy())
    assert "keras_vaegan" not in sys.modules
    print("ok")
""")


def test_saved_model_reproduces_predict_without_keras_vaegan(exported, run_dir, phantom_slices,
                                                             tmp_path):
    mri, ct = phantom_slices
    folder = tmp_path / "exchange"
    folder.mkdir()
    np.save(folder / "mri.npy", mri)
    np.save(folder / "ct.npy", ct)
    script = tmp_path / "serve.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, str(script), str(exported / "1"), str(folder), ROOT],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]

    config = Config.load(run_dir / "config.json")
    (low_hu, high_hu), (low_mri, high_mri) = config.ct_window_hu, config.mri_reference_range
    mri_tolerance = 1.0 * (high_mri - low_mri) / (high_hu - low_hu)  # 1 HU, in MRI units
    for source, images, direction, signature, tolerance in (
            ("mri", mri, "mri2ct", "serving_default", 1.0),
            ("ct", ct, "ct2mri", "ct2mri", mri_tolerance)):
        inputs = tmp_path / f"{source}_slices"
        for k, image in enumerate(images):
            inputs.mkdir(exist_ok=True)
            np.save(inputs / f"s{k}.npy", image)
        out = tmp_path / f"predicted_{direction}"
        predict(inputs, out, run=str(run_dir), direction=direction, fmt="npy", progress=None)
        expected = np.stack([np.load(out / f"s{k}.npy") for k in range(len(images))])
        served = np.load(folder / f"{signature}.npy")[..., 0]
        assert served.shape == expected.shape == images.shape
        assert np.abs(served - expected).max() <= tolerance, (signature,
                                                              np.abs(served - expected).max())

    mean, std = np.load(folder / "mean.npy"), np.load(folder / "std.npy")
    assert mean.shape == std.shape == mri.shape + (1,)
    assert np.isfinite(mean).all() and (std >= 0).all() and std.max() > 0
    assert mean.min() >= low_hu - 1e-3 and mean.max() <= high_hu + 1e-3


@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0.0, 100.0), (25.0, 75.0), (1 / 3, 200 / 3)])
def test_in_graph_percentiles_equal_numpy(percentiles):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    images = [rng.normal(300.0, 80.0, (17, 23)),
              rng.integers(0, 5, (9, 11)).astype(np.float64),  # ties
              np.full((6, 7), 42.0),  # constant: high becomes low + 1
              rng.uniform(0, 1000, (12, 12)).astype(np.float32).astype(np.float64)]
    with_gaps = rng.normal(0.0, 1.0, (10, 10))
    with_gaps[0, :7] = np.nan
    with_gaps[3, 2] = np.inf
    with_gaps[5, 5] = -np.inf
    one_value = np.full((4, 5), np.nan)
    one_value[2, 3] = 7.5
    images += [with_gaps, one_value]
    for image in images:
        batch = np.stack([image, image[::-1, ::-1] * 2.0 + 1.0])
        low, high = robust_range(tf.constant(batch), percentiles)
        for row, single in enumerate(batch):
            reference = units.mri_map(single, percentiles)
            assert float(low[row]) == reference.low and float(high[row]) == reference.high


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_versions_count_up_and_are_never_overwritten(exported, run_dir, tmp_path):
    # under JAX the export re-runs itself with KERAS_BACKEND=tensorflow
    result = cli("export", "--model", run_dir, "--output", exported,
                 env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(exported)) == ["1", "2"]
    assert (exported / "2" / "saved_model.pb").is_file()
    assert (exported / "2" / "variables").is_dir()

    before = (exported / "1" / "saved_model.pb").read_bytes()
    result = cli("export", "--model", run_dir, "--output", exported, "--version", 1)
    assert_one_error_line(result, str(exported / "1"), "already exists")
    assert (exported / "1" / "saved_model.pb").read_bytes() == before
    assert sorted(os.listdir(exported)) == ["1", "2"]  # no temporary folder left


def test_export_of_a_missing_run_gives_exit_2_and_one_line(tmp_path):
    missing = tmp_path / "no-run"
    result = cli("export", "--model", missing, "--output", tmp_path / "savedmodels" / "sct")
    assert_one_error_line(result, str(missing), "no such run folder")
    assert not (tmp_path / "savedmodels").exists()


@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None
                    or importlib.util.find_spec("onnxruntime") is None,
                    reason="the [onnx] extra (tf2onnx, onnxruntime) is not installed")
def test_onnx_export_matches_the_saved_model(run_dir, exported, phantom_slices, tmp_path):
    import onnxruntime
    import tensorflow as tf

    path = export_run(str(run_dir), str(tmp_path / "onnx"), fmt="onnx")
    assert sorted(os.listdir(path)) == ["assets.extra", "ct2mri.onnx", "mri2ct.onnx"]
    saved = tf.saved_model.load(str(exported / "1"))
    mri, ct = phantom_slices
    for name, signature, images in (("mri2ct", "serving_default", mri), ("ct2mri", "ct2mri", ct)):
        session = onnxruntime.InferenceSession(os.path.join(path, f"{name}.onnx"),
                                               providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        assert [o.name for o in session.get_outputs()] == ["translated"]
        batch = images[..., None].astype(np.float32)
        onnx_out = session.run(None, {"images": batch})[0]
        tf_out = saved.signatures[signature](images=tf.constant(batch))["translated"].numpy()
        assert np.abs(onnx_out - tf_out).max() <= 1.0


def test_bfloat16_export_serves_what_bfloat16_predict_writes(run_dir, exported, phantom_slices,
                                                             tmp_path):
    import tensorflow as tf

    mri, _ = phantom_slices
    path = export_run(str(run_dir), str(tmp_path / "bf16"), samples=2, precision="bfloat16")
    served = {}
    for name, folder in (("bf16", path), ("f32", str(exported / "1"))):
        serve = tf.saved_model.load(folder).signatures["serving_default"]
        served[name] = serve(images=tf.constant(mri[..., None]))["translated"].numpy()[..., 0]
    inputs = tmp_path / "mri"
    inputs.mkdir()
    for k, image in enumerate(mri):
        np.save(inputs / f"s{k}.npy", image)
    predict(inputs, tmp_path / "out", run=str(run_dir), fmt="npy", precision="bfloat16")
    written = np.stack([np.load(tmp_path / "out" / f"s{k}.npy") for k in range(len(mri))])
    assert np.abs(served["bf16"] - served["f32"]).max() > 0  # the graph computes in bf16
    # bf16 graphs round differently (fused norms in predict): each within bf16's band of float32
    # (17 HU mean on this untrained tiny model; the range is ~3,000 HU)
    band = 0.02 * (served["f32"].max() - served["f32"].min())
    assert np.abs(served["bf16"] - served["f32"]).mean() < band
    assert np.abs(written - served["f32"]).mean() < band

    with pytest.raises(VAEGANError, match="ONNX export is float32 only"):
        export_run(str(run_dir), str(tmp_path / "onnx"), fmt="onnx", precision="bfloat16")
    assert not (tmp_path / "onnx").exists()
