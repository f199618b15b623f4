"""Distribution and precision: two devices train like one; mixed precision keeps float32 losses."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ring_batch

from keras_vaegan.backends.distribution import is_chief_worker
from keras_vaegan.backends.precision import cpu_has_native_bfloat16, resolve_policy
from keras_vaegan.models.vaecyclegan import VAECycleGAN

TESTS = os.path.dirname(os.path.abspath(__file__))
OUTER = os.environ.get("KERAS_VAEGAN_INNER_BACKEND_RUN") != "1"


def run_probe(mode, tmp_path, backend, extra_env=None):
    out = tmp_path / f"{backend}-{mode}.json"
    env = {**os.environ, "KERAS_BACKEND": backend, **(extra_env or {})}
    result = subprocess.run([sys.executable, os.path.join(TESTS, "distribution_probe.py"), mode,
                             str(out), str(tmp_path / f"{backend}-initial.weights.h5")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.skipif(not OUTER, reason="run once, from the outer test process")
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_give_the_same_losses_as_one_for_the_same_global_batch(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if backend == "jax" else {}
    one = run_probe("one", tmp_path, backend)
    two = run_probe("two", tmp_path, backend, env)
    assert one["replicas"] == 1 and two["replicas"] == 2, two["name"]
    for term, values in one["losses"].items():
        # The first epoch (the step from identical weights and the one after it) agrees
        # tightly. Adam's first steps move every weight by about the learning rate
        # whatever the gradient's size, so reduction-order round-off then grows; the
        # reconstruction terms still agree to a percent, the adversarial ones drift more.
        np.testing.assert_allclose(two["losses"][term][0], values[0], rtol=1e-3, atol=1e-4,
                                   err_msg=term)
        if term in ("cycle", "identity", "kl"):
            np.testing.assert_allclose(two["losses"][term], values, rtol=2e-2, err_msg=term)


@pytest.mark.backend
def test_mixed_bfloat16_trains_with_float32_outputs_and_losses(tiny_config):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = VAECycleGAN(tiny_config)
        model.compile()
        mri, ct = ring_batch(32)
        assert keras.backend.standardize_dtype(model.g_ct.stem.conv.compute_dtype) == "bfloat16"
        assert keras.backend.standardize_dtype(model.g_ct.stem.conv.kernel.dtype) == "float32"
        _, terms, fakes = model.generator_objective(mri, ct)
        assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in terms.values())
        assert keras.backend.standardize_dtype(fakes[0].dtype) == "float32"
        heads = model.d_ct(mri)
        assert all(keras.backend.standardize_dtype(h.dtype) == "float32" for h in heads)
        dataset = tf.data.Dataset.from_tensors((mri, ct)).repeat()
        history = model.fit(dataset, epochs=2, steps_per_epoch=3, verbose=0).history
        assert all(np.isfinite(history["g_loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.backend
def test_float16_scales_every_loss_and_skips_a_non_finite_step(tiny_config):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = VAECycleGAN(tiny_config)
        model.compile()
        assert all(isinstance(o, keras.optimizers.LossScaleOptimizer)
                   for o in model.optimizer.optimizers)
        mri, ct = ring_batch(32)
        mri[0, 5, 5, 0] = np.nan  # poisons every gradient of this step
        before = [keras.ops.convert_to_numpy(v).copy() for v in model.g_ct.trainable_variables]
        scale = float(keras.ops.convert_to_numpy(model.g_ct_optimizer.dynamic_scale))
        model.fit(tf.data.Dataset.from_tensors((mri, ct)).repeat(), epochs=1, steps_per_epoch=1,
                  verbose=0)
        after = [keras.ops.convert_to_numpy(v) for v in model.g_ct.trainable_variables]
        assert all(np.array_equal(a, b) for a, b in zip(before, after))
        assert float(keras.ops.convert_to_numpy(model.g_ct_optimizer.dynamic_scale)) == scale / 2
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_auto_precision_follows_the_hardware(tmp_path, monkeypatch):
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bfloat16(str(flags))
    flags.write_text("flags\t: fpu avx2\n")
    assert not cpu_has_native_bfloat16(str(flags))
    import keras_vaegan.backends.precision as precision

    monkeypatch.setattr(precision, "accelerator_available", lambda: True)
    assert resolve_policy("auto") == "mixed_float16"
    monkeypatch.setattr(precision, "accelerator_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    assert resolve_policy("auto") == "float32"
    assert resolve_policy("bfloat16") == "mixed_bfloat16"


def test_only_the_chief_worker_writes():
    assert is_chief_worker("")
    cluster = {"worker": ["a:1", "b:2"]}
    assert is_chief_worker(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not is_chief_worker(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    with_chief = {"chief": ["c:0"], **cluster}
    assert not is_chief_worker(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_says_multi_device_is_not_supported(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(TESTS), "cli.py"), "fit", "--strategy",
         "mirrored", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "torch"}, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --strategy mirrored")
    assert "Traceback" not in result.stderr
