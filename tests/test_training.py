"""Training behaviour: losses fall, save/load is exact, an interrupted run resumes."""

from __future__ import annotations

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ring_batch

from keras_vaegan.models.vaecyclegan import LOSS_TERMS, VAECycleGAN
from keras_vaegan.training.fit import fit

pytestmark = pytest.mark.backend


def fixed_batch_dataset():
    mri, ct = ring_batch(32)
    return tf.data.Dataset.from_tensors((mri, ct)).repeat(), mri


def test_cycle_loss_falls_on_a_fixed_batch(tiny_config):
    keras.utils.set_random_seed(0)
    config = tiny_config.replace(learning_rate_g=1e-3, learning_rate_d=1e-3, decay_start=1.0,
                                 epochs=4, steps_per_epoch=10)
    model = VAECycleGAN(config)
    model.compile()
    dataset, _ = fixed_batch_dataset()
    history = model.fit(dataset, epochs=4, steps_per_epoch=10, verbose=0).history
    assert set(LOSS_TERMS) <= set(history)
    cycle = history["cycle"]
    assert cycle[-1] < 0.5 * cycle[0], cycle
    assert all(np.isfinite(v) for term in LOSS_TERMS for v in history[term])
    assert int(keras.ops.convert_to_numpy(model.g_ct_optimizer.iterations)) == 40
    assert int(keras.ops.convert_to_numpy(model.d_mri_optimizer.iterations)) == 40


def test_identity_term_is_each_generators_l1_on_its_own_domain_and_off_by_default(tiny_config):
    mri, ct = ring_batch(32)
    assert tiny_config.lambda_identity == 0.0  # the default since the quality benchmark
    off = VAECycleGAN(tiny_config)
    _, terms, _ = off.generator_objective(mri, ct, training=False)
    assert float(keras.ops.convert_to_numpy(terms["identity"])) == 0.0

    on = VAECycleGAN(tiny_config.replace(lambda_identity=0.5))
    g_loss, terms, _ = on.generator_objective(mri, ct, training=False)
    value = lambda x: keras.ops.convert_to_numpy(x).astype("float64")  # noqa: E731
    same_ct = value(on.g_ct(ct, training=False, sample=False)[0])
    same_mri = value(on.g_mri(mri, training=False, sample=False)[0])
    expected = np.abs(same_ct - ct).mean() + np.abs(same_mri - mri).mean()
    assert float(value(terms["identity"])) == pytest.approx(expected, rel=1e-5)
    others = sum(float(value(terms[k])) for k in ("adv_ct", "adv_mri"))
    others += 10.0 * float(value(terms["cycle"]))
    others += tiny_config.beta_kl * float(value(terms["kl"]))
    others += 1.0 * float(value(terms["structure"]))  # lambda_structure's default
    assert float(value(g_loss)) == pytest.approx(others + 0.5 * 10.0 * expected, rel=1e-5)


def test_structure_term_compares_each_input_with_its_translation_and_can_be_off(tiny_config):
    from keras_vaegan.models.losses import structure_loss

    mri, ct = ring_batch(32)
    assert tiny_config.lambda_structure == 1.0  # the default since the quality benchmark
    off = VAECycleGAN(tiny_config.replace(lambda_structure=0.0))
    _, terms, _ = off.generator_objective(mri, ct, training=False)
    assert float(keras.ops.convert_to_numpy(terms["structure"])) == 0.0

    on = VAECycleGAN(tiny_config.replace(lambda_structure=2.0, beta_kl=0.01))  # KL weighed too
    g_loss, terms, (fake_ct, fake_mri) = on.generator_objective(mri, ct, training=False)
    value = lambda x: float(keras.ops.convert_to_numpy(x))  # noqa: E731
    expected = value(structure_loss(mri, fake_ct)) + value(structure_loss(ct, fake_mri))
    assert value(terms["structure"]) == pytest.approx(expected, rel=1e-5)
    assert 0.0 < expected <= 4.0
    others = value(terms["adv_ct"]) + value(terms["adv_mri"]) + 10.0 * value(terms["cycle"])
    others += 0.01 * value(terms["kl"])
    assert value(g_loss) == pytest.approx(others + 2.0 * expected, rel=1e-5)


def test_feature_matching_term_compares_each_discriminators_features_and_can_be_off(
        tiny_config):
    from keras_vaegan.models.losses import feature_matching_loss

    mri, ct = ring_batch(32)
    assert tiny_config.lambda_feature_match == 0.0  # off by default
    off = VAECycleGAN(tiny_config)
    _, terms, _ = off.generator_objective(mri, ct, training=False)
    assert float(keras.ops.convert_to_numpy(terms["feature_match"])) == 0.0

    on = VAECycleGAN(tiny_config.replace(lambda_feature_match=3.0))
    g_loss, terms, (fake_ct, fake_mri) = on.generator_objective(mri, ct, training=False)
    value = lambda x: float(keras.ops.convert_to_numpy(x))  # noqa: E731

    def matched(disc, real, fake):
        return value(feature_matching_loss(disc.features_and_logits(real)[0],
                                           disc.features_and_logits(fake)[0]))

    expected = matched(on.d_ct, ct, fake_ct) + matched(on.d_mri, mri, fake_mri)
    assert value(terms["feature_match"]) == pytest.approx(expected, rel=1e-5)
    assert expected > 0
    others = value(terms["adv_ct"]) + value(terms["adv_mri"]) + 10.0 * value(terms["cycle"])
    others += tiny_config.beta_kl * value(terms["kl"]) + value(terms["structure"])
    assert value(g_loss) == pytest.approx(others + 3.0 * expected, rel=1e-5)


def test_learning_rate_is_constant_then_decays_linearly_to_zero(tiny_config):
    from keras_vaegan.models.schedule import ConstantThenLinearDecay

    schedule = ConstantThenLinearDecay(2e-4, total_steps=100, decay_start_step=50)
    rates = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 50, 75, 100, 120)]
    assert rates == pytest.approx([2e-4, 2e-4, 1e-4, 0.0, 0.0])


def test_saved_model_reloads_and_predicts_identically(tiny_config, tmp_path):
    model = VAECycleGAN(tiny_config)
    model.compile()
    dataset, mri = fixed_batch_dataset()
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, VAECycleGAN)
    for direction in ("mri2ct", "ct2mri"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded.translate(mri, direction)),
            keras.ops.convert_to_numpy(model.translate(mri, direction)))
    assert loaded.settings == model.settings


class StopAtEpoch(keras.callbacks.Callback):
    """Simulate a crash at the start of an epoch (after the previous checkpoint)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_continues_from_last_completed_epoch(tiny_config, tmp_path):
    run = str(tmp_path / "run")
    config = tiny_config.replace(epochs=3, steps_per_epoch=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config, output=run, verbose=0, callbacks=[StopAtEpoch(2)])
    assert not os.path.exists(os.path.join(run, "model.keras"))
    with open(os.path.join(run, "checkpoints", "state.json")) as handle:
        assert json.load(handle)["epoch"] == 2

    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    fit(config, output=run, resume=True, verbose=0, callbacks=[Record()])
    assert seen == [2]  # only the missing epoch ran
    model = keras.saving.load_model(os.path.join(run, "model.keras"))
    # optimizer state came back: 3 epochs x 2 steps in total
    assert int(keras.ops.convert_to_numpy(model.g_ct_optimizer.iterations)) == 6
    with open(os.path.join(run, "history.csv")) as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [0, 1, 2]
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == [
        "epoch-0001.png", "epoch-0002.png", "epoch-0003.png"]


def test_fit_refuses_to_overwrite_an_existing_run(tiny_config, tmp_path):
    from keras_vaegan.errors import VAEGANError

    run = str(tmp_path / "run")
    fit(tiny_config.replace(epochs=1, steps_per_epoch=1), output=run, verbose=0)
    with pytest.raises(VAEGANError, match="already exists"):
        fit(tiny_config, output=run, verbose=0)


def test_ema_run_saves_the_generators_weight_average(tiny_config, tmp_path):
    run = str(tmp_path / "run")
    config = tiny_config.replace(epochs=1, steps_per_epoch=4, ema_momentum=0.5,
                                 learning_rate_g=1e-3)
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            m = self.model
            seen["g_raw"] = [keras.ops.convert_to_numpy(v) for v in m.g_ct.trainable_variables]
            seen["d_raw"] = [keras.ops.convert_to_numpy(v) for v in m.d_ct.trainable_variables]
            seen["g_ema"] = [keras.ops.convert_to_numpy(v)
                             for v in m.g_ct_optimizer._model_variables_moving_average]
            assert not m.d_ct_optimizer.use_ema

    fit(config, output=run, verbose=0, callbacks=[Capture()])
    saved = keras.saving.load_model(os.path.join(run, "model.keras"))
    g_saved = [keras.ops.convert_to_numpy(v) for v in saved.g_ct.trainable_variables]
    d_saved = [keras.ops.convert_to_numpy(v) for v in saved.d_ct.trainable_variables]
    for got, ema in zip(g_saved, seen["g_ema"]):
        np.testing.assert_allclose(got, ema, rtol=1e-6, atol=1e-7)
    # the average is not the last step's weights (4 steps at 1e-3 moved them)
    assert max(float(np.abs(a - b).max()) for a, b in zip(g_saved, seen["g_raw"])) > 1e-5
    for got, raw in zip(d_saved, seen["d_raw"]):
        np.testing.assert_array_equal(got, raw)


def test_a_resumed_ema_run_goes_on_from_the_saved_weight_average(tiny_config, tmp_path):
    """A long run with ``ema_momentum`` goes on in pieces: the average must survive a stop."""
    run = str(tmp_path / "run")
    config = tiny_config.replace(epochs=2, steps_per_epoch=3, ema_momentum=0.5,
                                 learning_rate_g=1e-3)

    def averages(model):
        return [keras.ops.convert_to_numpy(v)
                for v in model.g_ct_optimizer._model_variables_moving_average]

    stopped, resumed = {}, {}

    class StopAfterFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            stopped["ema"] = averages(self.model)
            stopped["raw"] = [keras.ops.convert_to_numpy(v)
                              for v in self.model.g_ct.trainable_variables]
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(config, output=run, verbose=0, callbacks=[StopAfterFirst()])

    class AtResume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            resumed["ema"] = averages(self.model)

    fit(config, output=run, resume=True, verbose=0, callbacks=[AtResume()])
    for got, saved in zip(resumed["ema"], stopped["ema"]):
        np.testing.assert_array_equal(got, saved)
    # the average differs from the raw weights, so a restart from the raw ones would show
    assert max(float(np.abs(a - b).max())
               for a, b in zip(stopped["ema"], stopped["raw"])) > 1e-5


def test_a_run_saved_before_the_structure_term_resumes_without_it(tmp_path):
    from keras_vaegan.cli import build_config
    from keras_vaegan.config import Config

    old = Config().to_dict()
    del old["lambda_structure"]  # a config.json written before the key existed
    run_config = tmp_path / "config.json"
    run_config.write_text(json.dumps(old))
    assert build_config(None, str(run_config), {}).lambda_structure == 0.0
    # a user's --config file that leaves it out gets the default, as every other key does
    assert build_config(str(run_config), None, {}).lambda_structure == 1.0
    assert Config.load(run_config, saved_run=True).lambda_structure == 0.0
    # a run saved with the key keeps its own value
    run_config.write_text(json.dumps(Config(lambda_structure=0.5).to_dict()))
    assert build_config(None, str(run_config), {}).lambda_structure == 0.5


def test_a_vae_run_resumes_as_a_vae_under_the_deterministic_default(tmp_path):
    from keras_vaegan.cli import build_config
    from keras_vaegan.config import Config

    assert not Config().vae_sampling and Config().beta_kl == 0.0  # the default since issue 27
    vae = Config(vae_sampling=True, beta_kl=1e-3).to_dict()
    run_config = tmp_path / "config.json"
    run_config.write_text(json.dumps(vae))  # a run saved while the VAE was the default
    resumed = build_config(None, str(run_config), {})
    assert resumed.vae_sampling and resumed.beta_kl == 1e-3
    del vae["vae_sampling"]  # a config.json written before the key existed: it sampled
    run_config.write_text(json.dumps(vae))
    assert build_config(None, str(run_config), {}).vae_sampling
    assert not build_config(str(run_config), None, {}).vae_sampling  # a user's --config file


def test_a_config_file_changes_only_the_keys_it_names_on_resume(tmp_path):
    from keras_vaegan.cli import build_config
    from keras_vaegan.config import Config

    run_config = tmp_path / "config.json"
    Config(lambda_cycle=5.0, gen_filters=16, seed=3).save(run_config)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"lambda_cycle": 7.0}))
    config = build_config(str(extra), str(run_config), {"seed": 4})
    assert config.lambda_cycle == 7.0  # the file's own key
    assert config.gen_filters == 16  # the run's, not the default 32 the file leaves out
    assert config.seed == 4  # explicit options still win
    assert Config.read_settings(extra) == {"lambda_cycle": 7.0}


def test_history_of_a_resumed_run_stays_one_table_when_its_columns_change(tmp_path):
    from keras_vaegan.training.callbacks import HistoryLogger

    path = tmp_path / "history.csv"
    # two epochs written by a run saved before the structure term existed
    old = HistoryLogger(str(path))
    old.on_train_begin()
    for epoch in range(2):
        old.on_epoch_end(epoch, {"cycle": 0.5 - epoch / 10, "kl": 1.0, "g_loss": 3.0})
    old.on_train_end()

    resumed = HistoryLogger(str(path), append=True)
    resumed.on_train_begin()
    resumed.on_epoch_end(2, {"cycle": 0.2, "kl": 0.9, "g_loss": 2.0, "structure": 0.4})
    resumed.on_train_end()

    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["epoch", "cycle", "g_loss", "kl", "structure",
                                 "val_cycle", "val_g_loss", "val_kl", "val_structure"]
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert [float(row["cycle"]) for row in rows] == pytest.approx([0.5, 0.4, 0.2])
    assert [row["kl"] for row in rows] == ["1.0", "1.0", "0.9"]
    assert [row["structure"] for row in rows] == ["NA", "NA", "0.4"]

    # a resume with the same columns only appends, in the file's order
    again = HistoryLogger(str(path), append=True)
    again.on_train_begin()
    again.on_epoch_end(3, {"structure": 0.3, "kl": 0.8, "g_loss": 1.5, "cycle": 0.1})
    again.on_train_end()
    with open(path, newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert (last["epoch"], last["cycle"], last["kl"], last["structure"]) == ("3", "0.1", "0.8", "0.3")


def tensorboard_steps(folder) -> dict[str, set[int]]:
    """Tag -> the steps it was written at, over every event file in a TensorBoard folder."""
    steps: dict[str, set[int]] = {}
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                steps.setdefault(value.tag, set()).add(int(event.step))
    return steps


def tensorboard_images(folder, tag: str) -> dict[int, tuple[int, int, bytes]]:
    """Step -> (width, height, PNG) of the image summaries named ``tag``."""
    images = {}
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                if value.tag == tag and value.metadata.plugin_data.plugin_name == "images":
                    width, height, png = value.tensor.string_val
                    images[int(event.step)] = (int(width), int(height), png)
    return images


class CaptureHistoryPlot(keras.callbacks.Callback):
    """Reads history.png after the run's own callbacks at each epoch end."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        with open(self.path, "rb") as handle:
            self.seen.append(handle.read())


@pytest.fixture(scope="module")
def three_epoch_run(tmp_path_factory):
    from conftest import TINY

    from keras_vaegan.config import Config

    run = tmp_path_factory.mktemp("runs") / "three"
    capture = CaptureHistoryPlot(str(run / "history.png"))
    fit(Config(**TINY).replace(epochs=3, steps_per_epoch=1), output=str(run), verbose=0,
        callbacks=[capture])
    return run, capture.seen


def test_fit_redraws_history_png_at_each_epoch_end(three_epoch_run):
    from PIL import Image

    run, seen = three_epoch_run
    assert len(seen) == 3
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in seen)
    assert len(set(seen)) == 3  # a new curve point each epoch
    assert (run / "history.png").read_bytes() == seen[-1]
    assert len(seen[-1]) < 150_000
    with Image.open(run / "history.png") as image:
        assert max(image.size) <= 1200


def test_tensorboard_gets_the_snapshot_grid_of_every_epoch(three_epoch_run):
    from PIL import Image

    run, _ = three_epoch_run
    images = tensorboard_images(run / "logs" / "train", "snapshot")
    assert sorted(images) == [0, 1, 2]
    for epoch, (width, height, png) in images.items():
        with Image.open(run / "snapshots" / f"epoch-{epoch + 1:04d}.png") as snapshot:
            assert (width, height) == snapshot.size
            expected = np.asarray(snapshot.convert("RGB"))
        decoded = tf.io.decode_png(png, channels=3).numpy()
        np.testing.assert_array_equal(decoded, expected)  # the snapshot's own pixels
    steps = tensorboard_steps(run / "logs" / "train")
    assert steps["epoch_g_loss"] == {0, 1, 2}


def test_history_drops_the_rows_of_epochs_trained_again_on_resume(tmp_path):
    from keras_vaegan.training.callbacks import HistoryLogger

    path = tmp_path / "history.csv"
    first = HistoryLogger(str(path))
    first.on_train_begin()
    for epoch in range(4):  # epochs 2 and 3 were written, but the checkpoint says 2 are done
        first.on_epoch_end(epoch, {"cycle": 1.0 - epoch / 10, "kl": 1.0})
    resumed = HistoryLogger(str(path), append=True, first_epoch=2)
    resumed.on_train_begin()
    with open(path, newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]
    resumed.on_epoch_end(2, {"cycle": 0.5, "kl": 0.9})
    resumed.on_epoch_end(2, {"cycle": 0.4, "kl": 0.8})  # an epoch retrained replaces its row
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["cycle"]) for row in rows] == [("0", "1.0"), ("1", "0.9"),
                                                              ("2", "0.4")]
    assert path.read_bytes().count(b"\r\n") == 4  # Keras's CSVLogger line ends, as before


def test_history_plot_draws_validation_curves_where_logged(tmp_path):
    from keras_vaegan.training.history import write_history_plot

    header = "epoch,cycle,kl,val_cycle,val_kl\r\n"
    (tmp_path / "train.csv").write_text(header + "0,1.0,2.0,NA,NA\r\n1,0.8,1.5,NA,NA\r\n")
    (tmp_path / "both.csv").write_text(header + "0,1.0,2.0,1.1,2.1\r\n1,0.8,1.5,0.9,1.7\r\n")
    for name in ("train", "both"):
        write_history_plot(tmp_path / f"{name}.csv", tmp_path / f"{name}.png")
    train, both = ((tmp_path / f"{n}.png").read_bytes() for n in ("train", "both"))
    assert train[:8] == both[:8] == b"\x89PNG\r\n\x1a\n"
    assert train != both
    assert sorted(os.listdir(tmp_path)) == ["both.csv", "both.png", "train.csv", "train.png"]


def test_checkpoint_every_keeps_a_trajectory_that_scores_as_runs(tiny_config, tmp_path):
    from keras_vaegan.errors import VAEGANError
    from keras_vaegan.inference.runs import load_run
    from keras_vaegan.training.checkpoints import checkpoint_as_run

    run = tmp_path / "run"
    config = tiny_config.replace(epochs=5, steps_per_epoch=2, learning_rate_g=1e-3,
                                 checkpoint_every=2)
    fit(config, output=str(run), verbose=0)
    # epochs 2 and 4 kept for the trajectory, 4 and 5 for --resume; 1 and 3 pruned
    assert sorted(os.listdir(run / "checkpoints")) == [
        "epoch-0002.weights.h5", "epoch-0004.weights.h5", "epoch-0005.weights.h5", "state.json"]
    _, mri = fixed_batch_dataset()
    sct = {}
    for epoch in (2, 5):
        folder = checkpoint_as_run(str(run), epoch, str(tmp_path / f"epoch{epoch}"))
        sct[epoch] = keras.ops.convert_to_numpy(load_run(folder).model.translate(mri))
    final = keras.ops.convert_to_numpy(load_run(str(run)).model.translate(mri))
    np.testing.assert_array_equal(sct[5], final)  # the last checkpoint is the saved model
    assert float(np.abs(sct[2] - final).max()) > 1e-4  # three epochs later it had moved on
    with pytest.raises(VAEGANError, match=r"no checkpoint after epoch 3 \(kept: 2, 4, 5\)"):
        checkpoint_as_run(str(run), 3, str(tmp_path / "epoch3"))
    assert not (tmp_path / "epoch3").exists()
    with pytest.raises(VAEGANError, match="already exists"):
        checkpoint_as_run(str(run), 2, str(tmp_path / "epoch2"))
