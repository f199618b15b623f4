"""Multi-worker training: two TF_CONFIG workers on localhost train like one process.

The slow test runs ``cli.py fit --strategy multiworker`` as two worker
processes (CPU, free ports), kills the second with SIGKILL after epoch 1,
checks that the chief stops at once with one error line, resumes both, and
compares the chief's history and weights with one process killed and
resumed at the same point.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import tensorflow as tf

from keras_vaegan.backends.distribution import worker_failures_as_errors
from keras_vaegan.backends.input_sharding import INPUT_LOG_ENV, crop_hashes, shard_global_batches
from keras_vaegan.errors import VAEGANError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "cli.py")
# Tiny widths as in conftest.TINY. No random draw inside the step (VAE sampling,
# history pool): each replica would draw its own noise for its rows, which differs
# from one process's draw for the whole batch; the data itself is identical.
SETTINGS = dict(gen_filters=8, latent_channels=8, gen_res_blocks=1, latent_downsample=4,
                disc_filters=[16, 32, 32], disc_heads=2, pool_size=0, vae_sampling=False, beta_kl=1e-3,
                phantom_subjects=2, phantom_slices=4, phantom_size=32, snapshot_count=2)
FIT = ["fit", "--image-size", "32", "--batch-size", "4", "--epochs", "2",
       "--steps-per-epoch", "2", "--mixed-precision", "off", "--quiet", "--seed", "3",
       *[arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={json.dumps(value)}")]]
KILL_BOUND_S = 90  # the survivor must be gone this long after its peer was killed


def test_each_worker_gets_its_own_rows_of_every_global_batch():
    ids = tf.data.Dataset.range(30).map(lambda i: (tf.fill([1], i), -tf.fill([1], i)))
    batches = ids.batch(6, drop_remainder=True)
    shares = [[b[0].numpy().ravel().tolist() for b in shard_global_batches(batches, w, 3)]
              for w in range(3)]
    for step in range(5):
        rows = [row for worker in shares for row in worker[step]]
        assert rows == list(range(step * 6, step * 6 + 6))  # disjoint, complete, in order
    # Two local replicas per worker: the worker's rows cut into consecutive per-replica batches.
    two_local = [b[0].numpy().ravel().tolist() for b in shard_global_batches(batches, 1, 3, 2)]
    assert two_local[:4] == [[2], [3], [8], [9]]
    with pytest.raises(ValueError, match="does not split"):
        shard_global_batches(ids.batch(5, drop_remainder=True), 0, 2)


def test_a_lost_worker_becomes_one_error_and_other_errors_pass():
    with pytest.raises(VAEGANError, match="another worker died.*--resume"):
        with worker_failures_as_errors("multiworker"):
            raise tf.errors.UnavailableError(None, None, "Collective ops is aborted")
    with pytest.raises(tf.errors.UnavailableError):
        with worker_failures_as_errors("none"):
            raise tf.errors.UnavailableError(None, None, "not a multi-worker run")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(**extra) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("KERAS_VAEGAN_FAULT", None)
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def _workers(outputs, extra_args=(), fault=None, log=None):
    """Start two workers on free localhost ports; worker 1 gets ``fault``."""
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    procs = []
    for index, output in enumerate(outputs):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = _env(TF_CONFIG=tf_config, KERAS_VAEGAN_COLLECTIVE_TIMEOUT="60",
                   KERAS_VAEGAN_FAULT=fault if index == 1 else None, **{INPUT_LOG_ENV: log})
        procs.append(subprocess.Popen(
            [sys.executable, CLI, *FIT, "--strategy", "multiworker", "--output", str(output),
             *extra_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _single(output, extra_args=(), fault=None):
    return subprocess.run([sys.executable, CLI, *FIT, "--strategy", "none", "--output",
                           str(output), *extra_args], env=_env(KERAS_VAEGAN_FAULT=fault),
                          capture_output=True, text=True, timeout=600)


def _history(run) -> dict[str, list[float]]:
    lines = (run / "history.csv").read_text().splitlines()
    names = lines[0].split(",")
    rows = [dict(zip(names, line.split(","))) for line in lines[1:]]
    return {n: [float(r[n]) for r in rows] for n in names if not n.startswith("val_")}


def _weights(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: out.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return out


def _global_batch_hashes(steps: int) -> list[list[tuple[str, str]]]:
    """The (mri, ct) crop hashes of one process's first global batches."""
    import keras

    from keras_vaegan.config import Config
    from keras_vaegan.data.pipeline import make_training_dataset
    from keras_vaegan.data.slice_cache import cache_root
    from keras_vaegan.data.training_data import load_training_data

    config = Config(**{**SETTINGS, "disc_filters": tuple(SETTINGS["disc_filters"])},
                    image_size=32, batch_size=4, epochs=2, steps_per_epoch=2, seed=3,
                    mixed_precision="off")
    keras.utils.set_random_seed(3)  # as fit does: the pipeline's augmentation draws from it
    data = load_training_data(config, cache_dir=cache_root(config.data_cache))  # as fit reads it
    dataset = make_training_dataset(data.mri, data.ct, data.config)
    return [list(zip(crop_hashes(m.numpy()), crop_hashes(c.numpy())))
            for m, c in dataset.take(steps)]


def _logged_rows(folder) -> dict[tuple[int, int], tuple[int, str, str]]:
    rows = {}
    for name in sorted(os.listdir(folder)):
        for line in (folder / name).read_text().splitlines():
            worker, step, row, mri, ct = line.split()
            key, entry = (int(step), int(row)), (int(worker), mri, ct)
            # Keras draws the first batch once to build the model, then restarts the
            # iterator: a step may be logged again, with the very same crops.
            assert rows.setdefault(key, entry) == entry, f"step {key[0]} row {key[1]} differs"
    return rows


@pytest.mark.slow
def test_two_workers_train_like_one_process_survive_a_kill_and_resume(tmp_path):
    # One process, killed after epoch 1's checkpoint and resumed: the reference.
    single = tmp_path / "single"
    killed = _single(single, fault="checkpoint-written:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = _single(single, ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # Two workers; worker 1 is killed (SIGKILL) at the end of epoch 1.
    chief_run, other_run, log = tmp_path / "chief", tmp_path / "worker1", tmp_path / "inputs"
    chief, other = _workers([chief_run, other_run], fault="worker-epoch-end:1", log=str(log))
    other.communicate(timeout=600)
    killed_at = time.monotonic()
    assert other.returncode == -signal.SIGKILL
    _, chief_err = chief.communicate(timeout=KILL_BOUND_S + 60)
    assert time.monotonic() - killed_at < KILL_BOUND_S
    assert chief.returncode == 2, chief_err[-3000:]
    assert chief_err.strip().splitlines()[-1].startswith(
        "error: multi-worker training stopped: another worker died or cannot be reached")
    assert "Traceback" not in chief_err
    assert json.loads((chief_run / "checkpoints" / "state.json").read_text())["epoch"] == 1
    assert not other_run.exists()  # only the chief writes

    # The input: every global batch split between the workers, nothing twice, nothing missing.
    rows = _logged_rows(log)
    steps = 2  # epoch 1, trained by both before the kill (later batches may be prefetched)
    for step, batch in enumerate(_global_batch_hashes(steps)):
        assert [rows[(step, r)][1:] for r in range(4)] == batch
        assert [rows[(step, r)][0] for r in range(4)] == [0, 0, 1, 1]

    # Both resume from the chief's checkpoint (one shared run folder, as on a cluster).
    procs = _workers([chief_run, chief_run], ["--resume"])
    said = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        said.append(out)
    assert "run saved in" in said[0] and "run saved in" not in said[1]  # only the chief saved
    assert "worker done" in said[1]
    assert json.loads((chief_run / "checkpoints" / "state.json").read_text())["epoch"] == 2

    # Same loss curve. The first epoch starts from the same weights: only the order of
    # the sums differs (two workers' all-reduce against one batch mean), ~1e-6 relative.
    # Adam's steps then move each weight by about the learning rate whatever the
    # gradient's size, so round-off can grow; the reconstruction terms stay within 2 %.
    one, two = _history(single), _history(chief_run)
    assert one["epoch"] == two["epoch"] == [0.0, 1.0]
    for term in one:
        np.testing.assert_allclose(two[term][0], one[term][0], rtol=1e-3, atol=1e-4, err_msg=term)
        if term in ("cycle", "identity", "kl", "g_loss"):
            np.testing.assert_allclose(two[term], one[term], rtol=2e-2, atol=1e-4, err_msg=term)
    # Same final weights: 4 Adam steps of learning rate 2e-4 move a weight by <= ~8e-4;
    # two runs apart by round-off can differ by at most that, and are on average far closer.
    a = _weights(single / "checkpoints" / "epoch-0002.weights.h5")
    b = _weights(chief_run / "checkpoints" / "epoch-0002.weights.h5")
    assert a.keys() == b.keys()
    gaps = np.concatenate([np.abs(a[k].astype("float64") - b[k]).ravel() for k in a
                           if np.issubdtype(a[k].dtype, np.floating)])
    assert gaps.max() <= 1e-3 and gaps.mean() <= 2e-5, (gaps.max(), gaps.mean())


def test_jax_multiworker_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, CLI, "fit", "--strategy", "multiworker", "--output",
                             str(tmp_path / "run")], capture_output=True, text=True,
                            env={**_env(), "KERAS_BACKEND": "jax"}, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: --strategy multiworker is not supported with JAX")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
