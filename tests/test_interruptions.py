"""Interrupted training never costs a user data: SIGKILL, a kill mid-checkpoint, Ctrl-C, NaN."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import TINY
from test_training import tensorboard_steps

from keras_vaegan.errors import VAEGANError
from keras_vaegan.training.fit import TrainingInterrupted, fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_json(tmp_path, **changes) -> str:
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    values.update(changes)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(values))
    return str(path)


def start_fit(run, config, *extra, env=None):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "cli.py"), "fit", "--output", str(run),
         "--config", config, "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def wait_for_epoch(run, epoch, proc, timeout=300):
    state = run / "checkpoints" / "state.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= epoch:
            return
        if proc.poll() is not None:
            raise AssertionError(f"fit ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def resume(run, config):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "cli.py"), "fit", "--resume", "--output", str(run),
         "--config", config, "--quiet"], capture_output=True, text=True, timeout=600)


def finished_iterations(run) -> int:
    model = keras.saving.load_model(str(run / "model.keras"))
    return int(keras.ops.convert_to_numpy(model.g_ct_optimizer.iterations))


def history_epochs(run) -> list[int]:
    with open(run / "history.csv") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def run_cli_until_killed(run, config, fault, resume=True):
    """``fit`` (or ``fit --resume``) with a fault point armed; returns the finished process."""
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "fit", *(["--resume"] if resume else []),
            "--output", str(run), "--config", config, "--quiet"]
    env = {**os.environ, "KERAS_VAEGAN_FAULT": fault} if fault else None
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


def assert_records_of(run, committed: int) -> None:
    """Every committed epoch has one history row, a snapshot, TensorBoard scalars and image."""
    epochs = history_epochs(run)
    assert epochs in (list(range(committed)), list(range(committed + 1))), epochs
    snapshots = sorted(os.listdir(run / "snapshots"))
    assert [f"epoch-{e + 1:04d}.png" for e in range(committed)] == snapshots[:committed]
    steps = tensorboard_steps(run / "logs" / "train")
    assert steps, "no TensorBoard events"
    for tag in ("epoch_g_loss", "epoch_cycle", "epoch_d_ct", "snapshot"):
        assert set(range(committed)) <= steps.get(tag, set()), (tag, steps.get(tag))


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_last_complete_epoch(tmp_path):
    run, config = tmp_path / "run", tiny_json(tmp_path, epochs=4, steps_per_epoch=3)
    proc = start_fit(run, config)
    wait_for_epoch(run, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((run / "checkpoints" / "state.json").read_text())
    assert not (run / "model.keras").exists()
    result = resume(run, config)
    assert result.returncode == 0, result.stderr
    assert f"resuming after epoch {done['epoch']} of 4" in result.stderr
    assert finished_iterations(run) == 12  # 4 epochs x 3 steps: nothing lost, nothing doubled
    assert history_epochs(run)[-1] == 3


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    run, config = tmp_path / "run", tiny_json(tmp_path, epochs=3, steps_per_epoch=2)
    proc = start_fit(run, config, env={"KERAS_VAEGAN_FAULT": "checkpoint-write:2"})
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    assert any(name.startswith(".tmp-") for name in os.listdir(run / "checkpoints"))
    result = resume(run, config)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 1 of 3" in result.stderr
    assert not any(name.startswith(".tmp-") for name in os.listdir(run / "checkpoints"))
    assert finished_iterations(run) == 6


# (fault armed, epochs committed once the process is killed there): each boundary between
# the end-of-epoch writers once. The first kill comes after the first commit (--resume needs
# a checkpoint); each later run resumes the one before and is killed in turn.
KILLS = [("checkpoint-written:1", 1), ("snapshot-written:2", 1), ("history-written:2", 1),
         ("history-plot-written:2", 1), ("tensorboard-written:2", 1), ("checkpoint-write:2", 1),
         ("history-written:3", 2), ("checkpoint-written:3", 3)]


@pytest.mark.slow
def test_a_kill_between_any_two_end_of_epoch_writes_loses_no_record(tmp_path):
    run, config = tmp_path / "run", tiny_json(tmp_path, epochs=4, steps_per_epoch=2)
    for number, (fault, committed) in enumerate(KILLS):
        killed = run_cli_until_killed(run, config, fault, resume=number > 0)
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr[-3000:])
        state = json.loads((run / "checkpoints" / "state.json").read_text())
        assert state["epoch"] == committed, fault
        assert_records_of(run, committed)
    result = run_cli_until_killed(run, config, None)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 3 of 4" in result.stderr
    assert history_epochs(run) == [0, 1, 2, 3]  # one row per epoch, in order
    assert sorted(os.listdir(run / "snapshots")) == [f"epoch-{e:04d}.png" for e in (1, 2, 3, 4)]
    steps = tensorboard_steps(run / "logs" / "train")
    scalars = [tag for tag in steps if tag.startswith("epoch_")]
    assert len(scalars) >= 9 and all(steps[tag] == {0, 1, 2, 3} for tag in scalars), steps
    assert steps["snapshot"] == {0, 1, 2, 3}
    assert (run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [name for folder in (run, run / "snapshots", run / "checkpoints")
                 for name in os.listdir(folder) if name.startswith(".tmp-")]
    assert leftovers == []
    assert finished_iterations(run) == 8  # 4 epochs x 2 steps: the redone epochs not counted twice


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    run, config = tmp_path / "run", tiny_json(tmp_path, epochs=50, steps_per_epoch=3)
    proc = start_fit(run, config)
    wait_for_epoch(run, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"fit --resume --output {run}" in stderr
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert os.path.exists(run / "checkpoints" / state["weights"])
    assert state["iterations"] >= 3


class CtrlC(keras.callbacks.Callback):
    """A real SIGINT to this process after step ``batch`` of ``epoch`` (seen at the next step)."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_run_resumed_after_ctrl_c_trains_only_the_rest_of_that_epoch(tiny_config, tmp_path):
    run, config = tmp_path / "run", tiny_config.replace(epochs=3, steps_per_epoch=4)
    with pytest.raises(TrainingInterrupted):
        fit(config, output=str(run), verbose=0, callbacks=[CtrlC(1, 1)])
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["interrupted"] and state["epoch"] == 1
    assert 4 < state["iterations"] < 8  # inside the second epoch
    fit(config, output=str(run), resume=True, verbose=0)
    assert finished_iterations(run) == 12  # not 12 + the steps of epoch 1 run twice
    assert history_epochs(run) == [0, 1, 2]
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["iterations"], state["interrupted"]) == (3, 12, False)


def test_ctrl_c_at_an_epochs_last_step_commits_that_epoch_whole(tiny_config, tmp_path):
    run, config = tmp_path / "run", tiny_config.replace(epochs=3, steps_per_epoch=4)
    with pytest.raises(TrainingInterrupted):  # seen at the end of epoch 1's last step
        fit(config, output=str(run), verbose=0, callbacks=[CtrlC(1, 2)])
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["iterations"], state["interrupted"]) == (2, 8, False)
    fit(config, output=str(run), resume=True, verbose=0)
    assert finished_iterations(run) == 12
    assert history_epochs(run) == [0, 1, 2]


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
        tiny_config, tmp_path):
    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.g_ct.stem.conv.kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    run = tmp_path / "run"
    with pytest.raises(VAEGANError, match="diverged"):
        fit(tiny_config.replace(epochs=3, steps_per_epoch=2), output=str(run), verbose=0,
            callbacks=[Poison()])
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    assert not (run / "model.keras").exists()


def test_same_seed_gives_identical_weights(tiny_config, tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("determinism is checked on the TensorFlow CPU backend")
    config = tiny_config.replace(epochs=1, steps_per_epoch=3)
    weights = []
    for name in ("a", "b"):
        fit(config, output=str(tmp_path / name), verbose=0)
        model = keras.saving.load_model(str(tmp_path / name / "model.keras"))
        weights.append([keras.ops.convert_to_numpy(v) for v in model.weights])
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
