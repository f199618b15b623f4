"""predict streams an axial NIfTI volume: the same files as translating it whole, in memory
that does not grow with the slice count.

``volumes.open_volume`` opens such a file lazily and ``predict`` writes each
batch as it is translated, in the file's own slice order. The reference is
the whole-volume path (``read_volume`` -> ``translate_volume`` ->
``write_volume``), taken by telling ``open_volume`` the file cannot stream.
Memory is tracemalloc's peak (numpy buffers and Python bytes), not timed.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc

import numpy as np
import pytest
from conftest import TINY, head_like, save_tiny_run

from keras_vaegan.config import Config
from keras_vaegan.data import nifti_stream, volumes
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.predict import predict
from keras_vaegan.inference.runs import LoadedRun, load_run

nib = pytest.importorskip("nibabel")

AFFINES = {
    "ras": np.diag([0.9, 1.1, 2.5, 1.0]),  # slices ascending in the file
    "z_down": np.diag([-0.9, -1.1, -2.5, 1.0]),  # slices stored top first: written descending
}




def save(path, data, affine=AFFINES["ras"]):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return str(path)


class Draws:
    """A stand-in 2.5-D model: each output channel mixes the stack, and two latent draws differ.

    The draws alternate +d, -d within a batch whatever order the batches come
    in, so the mean and std of a batch do not depend on the order (a real
    model's random draws would).
    """

    total_stride = 4

    def __init__(self, channels: int = 3):
        self.channels, self.calls = channels, 0

    def translate(self, inputs, direction, sample=False):
        stacks = np.asarray(inputs, dtype=np.float32)
        mixed = np.tanh(stacks * 0.8 + 0.1 * stacks.mean(axis=-1, keepdims=True))
        if sample:
            self.calls += 1
            mixed = mixed + (0.05 if self.calls % 2 else -0.05) * np.cos(7 * stacks)
        return mixed


def _in_memory(monkeypatch):
    monkeypatch.setattr(nifti_stream, "streamable", lambda volume: False)


def _voxel_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _outputs(folder) -> dict[str, bytes]:
    return {name: _voxel_bytes(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if name.endswith((".nii", ".nii.gz"))}


@pytest.mark.parametrize("layout,name", [("ras", "v.nii.gz"), ("z_down", "v.nii.gz"),
                                         ("z_down", "v.nii")])
@pytest.mark.parametrize("direction,samples", [("mri2ct", 1), ("mri2ct", 2), ("ct2mri", 1)])
def test_streamed_outputs_equal_the_whole_volume_outputs(tmp_path, monkeypatch, layout, name,
                                                         direction, samples):
    """Byte for byte (header and voxels), _std included; the overview shows the same slice."""
    config = Config(**{**TINY, "context_slices": 3})
    inputs = tmp_path / "in"
    os.makedirs(inputs)
    data = head_like((40, 36, 11)) - (1000.0 if direction == "ct2mri" else 0.0)
    save(inputs / name, data, AFFINES[layout])
    opened = volumes.open_volume(volumes.find_inputs(str(inputs))[1][0], "mri")
    assert volumes.streams(opened)
    opened.voxels.close()

    def run_predict(out):
        run = LoadedRun(model=Draws(), config=config, run_dir=str(tmp_path))
        return predict(str(inputs), str(tmp_path / out), run=run, direction=direction,
                       samples=samples, batch_size=3)

    streamed = run_predict("streamed")
    _in_memory(monkeypatch)
    whole = run_predict("whole")
    assert [os.path.basename(p) for p in streamed] == [os.path.basename(p) for p in whole]
    assert len(streamed) == (3 if samples > 1 else 2)
    assert _outputs(tmp_path / "streamed") == _outputs(tmp_path / "whole")
    from PIL import Image

    pictures = [np.asarray(Image.open(tmp_path / out / "overview.png"))
                for out in ("streamed", "whole")]
    np.testing.assert_array_equal(*pictures)


def test_a_real_2_5d_model_streams_as_it_translates_whole(tmp_path, monkeypatch):
    """The compiled pass, batches going down a file stored top first, K = 3 neighbours."""
    run = load_run(save_tiny_run(tmp_path / "run", Config(**{**TINY, "context_slices": 3})))
    inputs = tmp_path / "in"
    os.makedirs(inputs)
    save(inputs / "up.nii.gz", head_like((32, 40, 9), seed=1))
    save(inputs / "down.nii.gz", head_like((32, 40, 9), seed=2), AFFINES["z_down"])
    predict(str(inputs), str(tmp_path / "streamed"), run=run, batch_size=4)
    _in_memory(monkeypatch)
    predict(str(inputs), str(tmp_path / "whole"), run=run, batch_size=4)
    streamed, whole = _outputs(tmp_path / "streamed"), _outputs(tmp_path / "whole")
    assert sorted(streamed) == ["down.nii.gz", "up.nii.gz"]
    assert streamed == whole


class Identity:
    """A stand-in model (no compiled pass): its translation is its input."""

    total_stride = 4

    def translate(self, inputs, direction, sample=False):
        return inputs


def _peak(call, *args, **kwargs) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        call(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("direction", ["mri2ct", "ct2mri"])
def test_predict_memory_does_not_grow_with_the_slice_count(tmp_path, monkeypatch, direction):
    """80 and 320 slices of 128x96: the same peak within a few slices, far below one volume.

    Scans go 8 slices at a time here (1 M voxels by default: more than the
    small volume). Before streaming, predict held the input and the output
    volume (about 2 volumes: 8 MB at 80 slices, 31 MB at 320).
    """
    from keras_vaegan.data import nifti

    monkeypatch.setattr(nifti, "_SLAB_VOXELS", 8 * 128 * 96)
    run = LoadedRun(model=Identity(), config=Config(**TINY), run_dir=str(tmp_path))
    offset = 1000.0 if direction == "ct2mri" else 0.0
    warm = tmp_path / "warm"
    os.makedirs(warm)
    save(warm / "w.nii.gz", head_like((32, 32, 4)) - offset)
    predict(str(warm), str(tmp_path / "warm_out"), run=run, direction=direction)
    peaks = {}
    for count in (80, 320):
        inputs = tmp_path / f"in{count}"
        os.makedirs(inputs)
        save(inputs / "v.nii.gz", head_like((128, 96, count)) - offset)
        peaks[count] = _peak(predict, str(inputs), str(tmp_path / f"out{count}"), run=run,
                             direction=direction, batch_size=4)
    slice_bytes = 128 * 96 * 4
    assert peaks[320] - peaks[80] < 8 * slice_bytes, peaks
    assert peaks[320] < 0.3 * 320 * slice_bytes, peaks


def test_a_streamed_volume_with_nan_is_refused_before_anything_is_written(tmp_path):
    run = LoadedRun(model=Identity(), config=Config(**TINY), run_dir=str(tmp_path))
    inputs = tmp_path / "in"
    os.makedirs(inputs)
    save(inputs / "a_good.nii.gz", head_like((32, 32, 12)))
    bad = head_like((32, 32, 12), seed=3)
    bad[5, 5, 9] = np.nan
    save(inputs / "b_bad.nii.gz", bad)
    out = tmp_path / "out"
    with pytest.raises(VAEGANError, match="non-finite"):
        predict(str(inputs), str(out), run=run)
    assert not out.exists() or os.listdir(out) == []
    skipped = []
    written = predict(str(inputs), str(out), run=run, on_bad=skipped.append)
    assert [os.path.basename(p) for p in written] == ["a_good.nii.gz", "overview.png"]
    assert len(skipped) == 1 and "b_bad.nii.gz" in str(skipped[0])
    assert sorted(os.listdir(out)) == ["a_good.nii.gz", "overview.png"]


def test_corrupt_gzip_data_in_a_streamed_volume_is_one_clear_error(tmp_path):
    """A flipped byte inside the compressed voxels: found by the first pass, nothing written."""
    run = LoadedRun(model=Identity(), config=Config(**TINY), run_dir=str(tmp_path))
    inputs = tmp_path / "in"
    os.makedirs(inputs)
    path = save(inputs / "v.nii.gz", head_like((64, 64, 40)))
    with open(path, "r+b") as handle:
        size = os.path.getsize(path)
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    out = tmp_path / "out"
    with pytest.raises(VAEGANError, match="v.nii.gz") as raised:
        predict(str(inputs), str(out), run=run)
    assert "corrupt" in str(raised.value) or "truncated" in str(raised.value)
    assert not out.exists() or os.listdir(out) == []
