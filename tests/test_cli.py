"""The command line end to end: phantom -> fit -> predict, and clear errors (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd=None, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600)


def tiny_config_file(path) -> str:
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    values.update(epochs=1, steps_per_epoch=2)
    with open(path, "w") as handle:
        json.dump(values, handle)
    return str(path)


def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


@pytest.mark.slow
@pytest.mark.backend
def test_phantom_fit_predict_end_to_end(tmp_path):
    data = tmp_path / "phantom"
    result = cli("phantom", data, "--subjects", 2, "--slices", 3, "--size", 32)
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(data / "mri")) == 6 and len(os.listdir(data / "ct")) == 6

    run = tmp_path / "run"
    result = cli("fit", "--data", data, "--output", run, "--config",
                 tiny_config_file(tmp_path / "tiny.json"), "--epochs", 1, "--quiet")
    assert result.returncode == 0, result.stderr
    for name in ("model.keras", "config.json", "history.csv", "checkpoints", "snapshots", "logs"):
        assert os.path.exists(run / name), name
    assert json.loads((run / "config.json").read_text())["ct_units"] == "hu"

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in os.listdir(data / "mri")[:2]:
        (inputs / name).write_bytes((data / "mri" / name).read_bytes())
    wide = np.random.default_rng(0).integers(0, 4000, (96, 64)).astype("uint16")
    Image.fromarray(wide).save(inputs / "wide.png")
    out = tmp_path / "out"
    result = cli("predict", "--input", inputs, "--output", out, "--model", run)
    assert result.returncode == 0, result.stderr
    for name in os.listdir(inputs):
        written = np.asarray(Image.open(out / name))
        assert written.shape == np.asarray(Image.open(inputs / name)).shape
    assert (out / "overview.png").exists()
    # --single-pass: one pass per slice (its values: tests/test_predict.py), not the mirror average
    result = cli("predict", "--input", inputs / "wide.png", "--output", tmp_path / "one-pass",
                 "--model", run, "--single-pass")
    assert result.returncode == 0, result.stderr
    one_pass = np.asarray(Image.open(tmp_path / "one-pass" / "wide.png"), dtype=np.float64)
    averaged = np.asarray(Image.open(out / "wide.png"), dtype=np.float64)
    assert one_pass.shape == averaged.shape and np.abs(one_pass - averaged).max() > 0

    # The newest run under savedmodels/ is used when --model is not given.
    saved = tmp_path / "savedmodels"
    saved.mkdir()
    shutil.copytree(run, saved / "only-run")
    # (and --mixed-precision bfloat16 writes the same slice within a few HU: 17 HU mean on this
    # one-epoch tiny model and noise input, 2 HU on a trained run; the range is ~3,000 HU)
    result = cli("predict", "--input", inputs / "wide.png", "--output", tmp_path / "out2",
                 "--direction", "mri2ct", "--mixed-precision", "bfloat16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fast = np.asarray(Image.open(tmp_path / "out2" / "wide.png"), dtype=np.float64)
    exact = np.asarray(Image.open(out / "wide.png"), dtype=np.float64)
    assert fast.shape == exact.shape
    assert np.abs(fast - exact).mean() < 0.02 * (exact.max() - exact.min())


def test_missing_folder_gives_exit_2_and_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = cli("fit", "--mri-dir", missing, "--ct-dir", missing, "--output", tmp_path / "r")
    assert_one_error_line(result, str(missing))


def test_non_image_file_gives_exit_2_and_one_line(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    result = cli("predict", "--input", bad, "--output", tmp_path / "out", "--model", tmp_path)
    assert_one_error_line(result)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_help_explains_every_command():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("fit", "predict", "phantom"):
        assert command in result.stdout
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "--" in sub.stdout


def test_library_warnings_are_held_back_and_reported_once_each_as_path_and_reason(
        tmp_path, capsys):
    """pydicom/nibabel/PIL log records and warnings: nothing printed as they come, one line each
    after the result; our own warnings (they name their file) still print at once."""
    import logging
    import warnings

    import pydicom

    from keras_vaegan.cli import LibraryWarnings

    scan = tmp_path / "scan.dcm"
    scan.write_bytes(b"")
    root_seen = []

    class Root(logging.Handler):
        def emit(self, record):
            root_seen.append(record.getMessage())

    root = Root()
    logging.getLogger().addHandler(root)
    library = LibraryWarnings(str(tmp_path))
    library.install()
    try:
        logging.getLogger("pydicom").warning("End of file reached in file %s", scan)
        logging.getLogger("nibabel").warning("pixdim[0] (qfac) should be 1   (default) or -1")
        logging.getLogger("nibabel").warning("pixdim[0] (qfac) should be 1 (default) or -1")
        logging.getLogger("pydicom").info("not a warning: not shown")
        warnings.warn_explicit("Invalid value for VR UI: '1.2.x'. Please see <https://dicom.nema"
                               ".org/x.html> for allowed values for each VR.", UserWarning,
                               os.path.join(os.path.dirname(pydicom.__file__), "valuerep.py"), 1)
        warnings.warn_explicit(f"{scan}: colour image (RGB) converted to greyscale luminance",
                               UserWarning, __file__, 1)
        held = capsys.readouterr().err
    finally:
        library.uninstall()
        logging.getLogger().removeHandler(root)
    assert held == f"warning: {scan}: colour image (RGB) converted to greyscale luminance\n"
    assert root_seen == []  # not passed on to handlers that print raw text (absl's)
    assert logging.getLogger("pydicom").propagate and logging.getLogger("nibabel").propagate
    library.report()
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {scan}: End of file reached",
        f"warning: {tmp_path}: pixdim[0] (qfac) should be 1 (default) or -1",
        f"warning: {tmp_path}: Invalid value for VR UI: '1.2.x'.",
    ]
