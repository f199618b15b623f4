"""2.5-D prediction: every output slice is translated from the stack of its neighbours.

A stand-in model (no weights) shows what the translation pass hands the
generator: its output is a fixed function of the stack, so the test can say
which input slices reached which output slice, at the edges too.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_vaegan.config import Config
from keras_vaegan.data.volume import Reorientation, Volume
from keras_vaegan.inference.runs import LoadedRun
from keras_vaegan.inference.translate import translate_slices, translate_volume, volume_stacks


class StackReader:
    """A 'model' whose translation of a stack is a weighted sum of its channels, in each channel.

    Channel c gets weight 10 ** c, so the centre output spells out which
    slices were in the stack and in what order.
    """

    total_stride = 1

    def __init__(self, channels: int):
        self.settings = Config(context_slices=channels)
        self.seen: list[tuple[int, ...]] = []

    def translate(self, inputs, direction, sample=False):
        stacks = np.asarray(inputs)
        self.seen.append(stacks.shape)
        weights = 10.0 ** np.arange(stacks.shape[-1])
        code = (stacks * weights).sum(axis=-1, keepdims=True)
        return np.repeat(code, stacks.shape[-1], axis=-1)


def _run(model, config: Config) -> LoadedRun:
    return LoadedRun(model=model, config=config, run_dir="")


def _volume(count: int, rows: int = 4, cols: int = 5) -> Volume:
    # slice z holds the value z + 1 everywhere (file units = model units below)
    voxels = np.repeat(np.arange(1, count + 1, dtype=np.float32), rows * cols).reshape(
        count, rows, cols)
    return Volume(voxels=voxels, kind="nifti", path="v.nii.gz", files=["v.nii.gz"],
                  reorient=Reorientation(), file_shape=voxels.shape, spacing_mm=(1.0, 1.0, 1.0),
                  modality="mri")


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_volume_stacks_hold_neighbours_and_repeat_the_edges(batch_size, monkeypatch):
    from keras_vaegan.inference import translate

    class Identity:  # file units = model units = output units: the codes stay readable
        low, high = -1.0, 1.0

        @staticmethod
        def to_unit(array):
            return np.asarray(array, np.float32)

        from_unit = to_unit

    identity = Identity()
    monkeypatch.setattr(translate, "volume_input_map", lambda *a, **k: identity)
    monkeypatch.setattr(translate, "volume_output_map", lambda *a, **k: identity)
    model = StackReader(3)
    result = translate_volume(_run(model, model.settings), _volume(5), batch_size=batch_size)
    codes = result.mean[:, 0, 0]
    # slice z: 1 * (z-1) + 10 * z + 100 * (z+1), in values z + 1; edges repeat slice 1 / 5
    expected = [1 + 10 * 1 + 100 * 2, 1 + 20 + 300, 2 + 30 + 400, 3 + 40 + 500, 4 + 50 + 500]
    np.testing.assert_allclose(codes, expected, rtol=1e-6)
    assert all(shape[-1] == 3 for shape in model.seen)


def test_volume_stacks_of_width_one_are_the_slices_themselves():
    voxels = np.random.default_rng(0).normal(size=(6, 3, 4)).astype(np.float32)
    stacks = volume_stacks(voxels, 2, 5, 1, lambda a: a * 2)
    assert stacks.shape == (3, 3, 4, 1)
    np.testing.assert_array_equal(stacks[..., 0], voxels[2:5] * 2)


def test_volume_stacks_wider_than_the_volume_repeat_both_ends():
    voxels = np.arange(2, dtype=np.float32)[:, None, None] * np.ones((2, 1, 1), np.float32)
    stacks = volume_stacks(voxels, 0, 2, 5, lambda a: a)
    np.testing.assert_array_equal(stacks[:, 0, 0, :], [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])


def test_a_lone_slice_is_its_own_stack():
    model = StackReader(3)
    image = np.full((4, 4), 0.5, np.float32)
    mean, std = translate_slices(model, [image], batch_size=1)[0]
    assert std is None
    np.testing.assert_allclose(mean, 0.5 * 111)  # the same slice in all three channels


# --- a trained 2.5-D run, end to end -------------------------------------------------------


@pytest.fixture(scope="module")
def k3_run(tmp_path_factory):
    """fit with context_slices=3 on phantom NIfTI volumes (read through the slice cache)."""
    from conftest import TINY

    from keras_vaegan.data.phantom import write_phantom
    from keras_vaegan.training.fit import fit

    root = tmp_path_factory.mktemp("k3")
    data = root / "data"
    write_phantom(data, subjects=2, slices=6, size=32, fmt="nii", seed=5)
    config = Config(**{**TINY, "epochs": 1, "steps_per_epoch": 2, "context_slices": 3})
    run = fit(config, output=str(root / "run"), data_root=str(data), verbose=0, messages=False)
    return run, data


def _moved_by(loaded, volume: Volume, changed: int) -> np.ndarray:
    """Per output slice, the largest change when input slice ``changed`` alone is altered."""
    before = translate_volume(loaded, volume).mean
    voxels = volume.voxels.copy()
    voxels[changed] = voxels[changed][::-1, ::-1]  # another slice's anatomy, same intensities
    altered = Volume(**{**volume.__dict__, "voxels": voxels})
    after = translate_volume(loaded, altered).mean
    return np.abs(after - before).reshape(len(before), -1).max(axis=1)


def test_each_output_slice_sees_its_neighbours_and_no_further(k3_run):
    from keras_vaegan.data import volumes
    from keras_vaegan.inference.runs import load_run

    run, data = k3_run
    loaded = load_run(run)
    assert loaded.config.context_slices == 3
    volume = volumes.read_volume(str(data / "000" / "mri.nii.gz"), "mri")
    moved = _moved_by(loaded, volume, changed=3)
    assert (moved[2:5] > 1.0).all(), moved  # slice 3 and its two neighbours (HU)
    np.testing.assert_array_equal(moved[[0, 1, 5]], 0.0)  # K // 2 = 1 away at most


def test_a_k3_run_predicts_volumes_and_slices_from_the_cli(k3_run, tmp_path):
    import nibabel as nib
    from test_cli import cli

    run, data = k3_run
    source = data / "001" / "mri.nii.gz"
    result = cli("predict", "--model", run, "--input", source, "--output", tmp_path / "out",
                 "--samples", 2)
    assert result.returncode == 0, result.stderr
    written = nib.load(str(tmp_path / "out" / "mri.nii.gz"))
    assert written.shape == nib.load(str(source)).shape
    std = nib.load(str(tmp_path / "out" / "mri_std.nii.gz")).get_fdata()
    assert np.isfinite(std).all() and std.max() > 0
    # a lone PNG slice is its own stack (repeated K times)
    slices = tmp_path / "png"
    from keras_vaegan.data.phantom import write_phantom

    write_phantom(slices, subjects=1, slices=1, size=32, fmt="png", seed=9)
    result = cli("predict", "--model", run, "--input", slices / "mri", "--output", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "p").glob("*.png"))) >= 1


def test_the_compiled_k3_pass_equals_the_eager_generator(tmp_path):
    """The compiled pass (few-filter convs rewritten as depthwise sums) keeps the centre slice."""
    from conftest import TINY, save_tiny_run

    from keras_vaegan.inference.runs import load_run

    config = Config(**{**TINY, "context_slices": 3})
    loaded = load_run(save_tiny_run(tmp_path / "run", config))

    class Eager:  # the same model through keras' eager call, not the compiled function
        settings, total_stride = loaded.model.settings, loaded.model.total_stride

        def translate(self, inputs, direction, sample=False):
            return loaded.model.translate(inputs, direction, sample=sample)

    images = list(np.random.default_rng(3).uniform(-1, 1, (5, 30, 27)).astype(np.float32))
    compiled = translate_slices(loaded.model, images, batch_size=2)
    eager = translate_slices(Eager(), images, batch_size=2)
    for (a, _), (b, _) in zip(compiled, eager):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_k3_run_is_evaluated_and_resumed(k3_run, tmp_path):
    """evaluate translates each subject from its stacks; --resume continues a K=3 run."""
    import shutil

    from keras_vaegan.inference.evaluate import evaluate
    from keras_vaegan.training.fit import fit

    run, data = k3_run
    subject = data / "000"
    results = evaluate(subject / "mri.nii.gz", subject / "ct.nii.gz",
                       mask_path=subject / "mask.nii.gz", run=run)
    mean = results["mean"]
    assert np.isfinite(mean["mae_hu"]) and mean["mae_hu"] > 0
    assert np.isfinite(mean["through_plane_mae_hu"])

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = Config.load(str(copy / "config.json")).replace(epochs=2)
    config.save(str(copy / "config.json"))
    first = (copy / "checkpoints" / "epoch-0001.weights.h5").read_bytes()
    fit(config, output=str(copy), data_root=str(data), resume=True, verbose=0, messages=False)
    assert (copy / "checkpoints" / "epoch-0001.weights.h5").read_bytes() == first  # not retrained
    assert (copy / "checkpoints" / "epoch-0002.weights.h5").exists()
    history = (copy / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]  # epoch 2 added to epoch 1
    assert Config.load(str(copy / "config.json")).context_slices == 3
