"""Benchmarks divide by a peak they measured in the same run, never by a stored one (issue 28)."""

from __future__ import annotations

import argparse
import builtins
import glob
import json
import os
import re
import sys

import pytest
from conftest import TINY

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import bench_convs  # noqa: E402
import bench_peak  # noqa: E402
import bench_predict  # noqa: E402
import bench_train  # noqa: E402
import common  # noqa: E402
from flops import inference_flops_per_image, training_flops_per_image  # noqa: E402

from keras_vaegan.config import CONFIG_FILE, Config  # noqa: E402

MEASURED = 50.0  # what the patched measurement 'finds' on this machine
STORED = 301.7  # what a peak-*.json from another CPU says


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """The peak conv patched to 'run' at MEASURED GFLOP/s; a stored peak file that must not be
    read; every file opened is noted."""
    calls, opened = [], []

    def probe(dtype, side, batch, channels):
        calls.append((dtype, side, batch, channels))
        return (lambda: None), MEASURED * 1e9  # one second per call: MEASURED GFLOP/s

    monkeypatch.setattr(bench_peak, "conv_probe", probe)
    monkeypatch.setattr(common, "median_seconds", lambda call, repeats: 1.0)
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    for backend in ("tensorflow", "jax", "torch"):
        (tmp_path / f"peak-{backend}.json").write_text(json.dumps(
            {"conv_float32_gflops": STORED, "conv_bfloat16_gflops": STORED}))
    real_open = builtins.open

    def noting_open(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", noting_open)
    return calls, opened


def _no_peak_file_read(opened):
    return not [f for f in opened if isinstance(f, str) and re.search(r"peak-[^/]*\.json$", f)]


@pytest.mark.parametrize("policy, dtype", [("float32", "float32"),
                                           ("mixed_bfloat16", "bfloat16")])
def test_train_fraction_is_of_the_peak_measured_in_its_precision(measured, policy, dtype):
    calls, opened = measured
    config = Config(**{**TINY, "image_size": 256, "batch_size": 4})
    report = bench_train.throughput(config, policy, step_s=0.5, in_memory_s=0.4)
    achieved = training_flops_per_image(config) * (4 / 0.5) / 1e9
    assert calls == [(dtype, 64, 4, bench_peak.PEAK_CHANNELS)]  # 1/4 resolution, same batch
    assert report["peak_gflops"] == MEASURED and report["peak_dtype"] == dtype
    assert report["fraction_of_peak"] == round(achieved / MEASURED, 3)
    assert report["achieved_gflops"] == round(achieved, 1)
    assert report["input_wait_fraction"] == 0.2
    assert "64x64, batch 4" in report["peak_shape"]
    assert _no_peak_file_read(opened), opened


def test_predict_fraction_is_of_the_peak_measured_in_the_same_run(measured, monkeypatch,
                                                                   tmp_path):
    """bench_predict times the peak conv interleaved with the forward passes it compares."""
    calls, opened = measured
    run = tmp_path / "run"
    run.mkdir()
    config = Config(**TINY)
    config.save(run / CONFIG_FILE)
    monkeypatch.setattr(bench_predict, "forward_calls",
                        lambda *args: {"forward": None, "savedmodel_forward": None})
    monkeypatch.setattr(bench_predict, "interleaved",  # seconds per call, as measured
                        lambda runs, repeats: {"peak": 1.0, "forward": 0.5,
                                               "savedmodel_forward": 1.0})
    args = argparse.Namespace(image_size=64, batch_size=2, repeats=1, slices=10,
                              mixed_precision="bfloat16")
    report = bench_predict.speed(str(run), "exported", "mixed_bfloat16", args,
                                 in_process={"call_seconds": 2.0, "seconds": 4.0},
                                 served={"call_seconds": 4.0, "seconds": 8.0})
    flops = inference_flops_per_image(config, 64)
    assert flops == 2 * inference_flops_per_image(config.replace(mirror_average=False), 64)
    one_pass = inference_flops_per_image(config.replace(mirror_average=False, shift_average=False),
                                         64)
    assert flops == 2 * config.latent_downsample * one_pass  # the mirror's two, the stride's phases
    assert calls == [("bfloat16", bench_peak.MIN_PEAK_SIDE, 2, bench_peak.PEAK_CHANNELS)]
    assert report["peak_gflops"] == MEASURED and report["peak_dtype"] == "bfloat16"
    assert report["flops_per_slice"] == flops
    assert report["forward_fraction_of_peak"] == round(flops * 2 / 0.5 / 1e9 / MEASURED, 3)
    assert report["in_process_fraction_of_peak"] == round(flops * 10 / 4.0 / 1e9 / MEASURED, 3)
    assert _no_peak_file_read(opened), opened


@pytest.mark.parametrize("identity", [0.0, 0.5])
def test_conv_ceiling_times_every_conv_of_the_step_as_flops_counts_them(measured, monkeypatch,
                                                                        identity):
    """bench_convs records each Conv2D of the model with the passes flops.py counts."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("bench_convs times TensorFlow's kernels")
    calls, opened = measured
    monkeypatch.setattr(common, "best_seconds", lambda call, repeats: 1.0)
    config = Config(image_size=32, batch_size=2, lambda_identity=identity)
    report = bench_convs.conv_ceiling(config, "float32", repeats=1)
    layers = report["layers"]
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    model = VAECycleGAN(config)
    model.build()
    convs = [layer.path.split("/", 1)[1] for net in (model.g_ct, model.d_ct)
             for layer in net._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.Conv2D)]
    assert sorted(row["layer"] for row in layers) == sorted(convs)
    # every kernel 'took' one second: the step is the number of kernel runs, in seconds
    runs = 2 * sum(9 if identity else 6 for row in layers if row["layer"].startswith("g_ct/")) \
        + 2 * 6 * sum(1 for row in layers if row["layer"].startswith("d_ct/"))
    assert report["conv_only_step_s"] == runs
    flops = training_flops_per_image(config) * config.batch_size / 1e9
    assert report["conv_gflop_per_step"] == pytest.approx(flops, rel=1e-3)
    assert report["conv_ceiling_fraction"] == pytest.approx(flops / runs / MEASURED, abs=1e-3)
    assert report["peak_gflops"] == MEASURED and _no_peak_file_read(opened)
    assert sum(row["share_of_step"] for row in layers) == pytest.approx(1, abs=0.01)


def test_conv_kernels_run_at_the_layers_strides_and_padding():
    """The three kernels bench_convs times take the shapes a strided 'same' layer has."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("bench_convs times TensorFlow's kernels")
    layer = keras.layers.Conv2D(6, 4, strides=2, padding="same")
    layer.build((2, 9, 9, 3))
    seconds = bench_convs.kernel_seconds(layer, (2, 9, 9, 3), "float32", repeats=1)
    assert set(seconds) == {"forward", "input_grad", "weight_grad"}
    assert all(value > 0 for value in seconds.values())


def test_no_benchmark_reads_a_stored_peak():
    """Only bench_peak.py names a peak file (it writes the record); tables.py renders records."""
    for path in glob.glob(os.path.join(BENCHMARKS, "*.py")):
        name = os.path.basename(path)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if name == "tables.py":
            continue  # draws RESULTS.md's tables from the stored records; computes no fraction
        mentions = [line.strip() for line in text.splitlines()
                    if re.search(r"peak-", line) and not line.lstrip().startswith(("#", "KERAS"))
                    and "never read" not in line and "peak-<backend>.json this writes" not in line
                    and "results/peak-*.json is" not in line]  # prose saying it is never read
        if name == "bench_peak.py":
            assert mentions == ["common.write_result(f\"peak-{result['backend']}\", result)"]
        else:
            assert mentions == [], (name, mentions)
        assert ("fraction_of_peak" not in text or "conv_peak" in text
                or "peak_probe" in text), name


def test_every_figure_records_the_cpu_flags_and_model(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\n"
                       "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert common.cpu_flags(str(cpuinfo)) == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert common.cpu_model(str(cpuinfo)) == "Example CPU 9000"
    assert common.cpu_flags(str(tmp_path / "missing")) == []
    record = common.machine()
    assert record["cpu_flags"] == common.cpu_flags() and record["cpu_model"]
    assert "accelerator" in record


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_each_backend_names_its_accelerator_exactly_when_it_has_one(backend):
    from keras_vaegan import backends

    steps = backends.get(backend)
    name = steps.accelerator_name()
    assert (name is not None) == steps.accelerator_available()
    assert name is None or (isinstance(name, str) and name)
