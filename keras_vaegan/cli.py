"""``python cli.py ...``: a thin click layer over functions you can call from Python.

Errors a user can fix print one line, ``error: <path>: <reason>``, and exit
with code 2 (``KERAS_VAEGAN_DEBUG=1`` shows the traceback instead). Heavy
imports (Keras, TensorFlow) happen inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys

import click

from keras_vaegan.config import MIXED_PRECISION, PHANTOM_KINDS, STRATEGIES
from keras_vaegan.inference.metrics import DEFAULT_SSIM, SSIM_MODES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide what TensorFlow's C++ runtime prints at import (absl/oneDNN banners).

    Those lines are written to file descriptor 2 before logging is set up,
    so TF_CPP_MIN_LOG_LEVEL cannot stop them. Python errors still show:
    they are raised after the descriptor is restored.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_backends() -> None:
    """Import Keras and TensorFlow, and let TensorFlow look for GPUs, with native stderr shut.

    The GPU look-up is where TensorFlow's C++ logging prints its own lines
    (``failed call to cuInit`` on a machine without a GPU driver): done here,
    they never come before a command's own output or its one error line.
    """
    with _native_stderr_silenced():
        import keras  # noqa: F401
        import tensorflow  # (the data pipeline always uses it)

        tensorflow.config.list_physical_devices()


def _fail(message: str, teardown: bool = True) -> None:
    """The one error line and exit code 2; ``teardown=False`` skips the interpreter's cleanup."""
    click.echo(f"error: {message}", err=True)
    if not teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    sys.exit(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (a colour image made grey, DICOM objects skipped) as ``warning: ...``."""
    text = " ".join(str(message).split())
    click.echo(f"warning: {text}", err=True)


# readers and writers whose remarks the user never sees raw (pylibjpeg & co decode for pydicom)
_LIBRARIES = ("pydicom", "nibabel", "PIL", "highdicom", "pylibjpeg", "openjpeg", "libjpeg")


def _library_of(filename: str) -> str | None:
    """The reading library whose source file ``filename`` is, or None (our code, Python's...)."""
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        folder = os.path.dirname(getattr(module, "__file__", None) or "")
        if folder and os.path.abspath(filename).startswith(folder + os.sep):
            return name
    return None


class LibraryWarnings(logging.Handler):
    """What pydicom, nibabel and PIL say while a command runs: held back, then one line each.

    Their log records (``logging``) and Python warnings are collected, never
    printed as they come. If the command then stops with an error, they are
    dropped: the remark is the library's view of the same broken file, in its
    own words, and printed first it would bury the one line that says what is
    wrong and which file to fix (``error: <path>: <reason>``). If the command
    goes on to the end, each distinct remark follows the result once, as
    ``warning: <path>: <reason>``: the file the remark names, else the
    command's input, since a remark about a file that was read anyway (an
    invalid UID, a truncated tail) is worth checking. Our own warnings
    already name their file and are printed as they come.
    """

    def __init__(self, input_path: str | None) -> None:
        super().__init__(logging.WARNING)
        self.input_path = os.fspath(input_path) if input_path else None
        self.notices: dict[str, None] = {}  # insertion-ordered set of lines
        self.saved: list[tuple[logging.Logger, bool]] = []

    def install(self) -> None:
        """Catch the libraries' records (not passed on to the root logger) and warnings."""
        import warnings

        for name in _LIBRARIES:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.propagate))
            logger.addHandler(self)
            logger.propagate = False
        warnings.showwarning = self.showwarning

    def uninstall(self) -> None:
        import warnings

        warnings.showwarning = _one_line_warning
        for logger, propagate in self.saved:
            logger.removeHandler(self)
            logger.propagate = propagate
        self.saved = []

    def emit(self, record: logging.LogRecord) -> None:
        self.add(record.getMessage())

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if _library_of(filename) is None:
            _one_line_warning(message, category, filename, lineno, file, line)
        else:
            self.add(str(message))

    def add(self, text: str) -> None:
        text = " ".join(text.split())
        text = re.sub(r" ?Please see <[^>]*>.*$", "", text)  # pydicom's pointer to the standard
        path = next((p for p in re.findall(r"(?:in file |^)(\S+)", text)
                     if os.path.isfile(p)), None) or self.input_path
        if path:
            text = text.replace(f" in file {path}", "")
        self.notices[f"warning: {path}: {text}" if path else f"warning: {text}"] = None

    def report(self) -> None:
        """After a command that went on to the end: each remark once."""
        for line in self.notices:
            click.echo(line, err=True)


class SkippedFiles:
    """``--skip-bad``: one ``warning: <path>: <reason>, skipped`` line per bad file, then a count."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, err) -> None:
        self.count += 1
        click.echo(f"warning: {err}, skipped", err=True)

    def report(self) -> None:
        if self.count:
            click.echo(f"skipped {self.count} bad file{'s' if self.count != 1 else ''}",
                       err=True)


class ProgressBar:
    """A ``keras_vaegan.io.progress.Progress`` drawn as a ``click.progressbar`` on stderr.

    It shows the count, the rate and the time left; the bar appears at the
    first call and ends with ``close()`` (also when an error stops the work).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar = None
        self.started = 0.0

    def __call__(self, done: int, total: int) -> None:
        import time

        if self.bar is None:
            self.started = time.monotonic()
            self.bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr,
                                         show_eta=True, show_pos=True,
                                         item_show_func=self._rate)
            self.bar.__enter__()
        self.bar.length = max(total, 1)
        self.bar.update(done - self.bar.pos)

    def _rate(self, _item) -> str:
        import time

        elapsed = time.monotonic() - self.started
        done = self.bar.pos if self.bar is not None else 0
        return f"{done / elapsed:.1f}/s" if elapsed > 0 and done else ""

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


_INPUT_OPTIONS = ("input_path", "data_root", "mri_dir", "ct_dir")  # what a remark is about


def user_errors(command):
    """Turn VAEGANError (and an unwritable output) into one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from keras_vaegan.errors import VAEGANError, WorkerLostError

        if os.environ.get("KERAS_VAEGAN_DEBUG") == "1":
            return command(*args, **kwargs)
        library = LibraryWarnings(next((kwargs[k] for k in _INPUT_OPTIONS if kwargs.get(k)),
                                       None))
        library.install()
        try:
            _import_backends()
            result = command(*args, **kwargs)
        except WorkerLostError as err:  # no interpreter teardown after an aborted runtime
            _fail(str(err), teardown=False)
        except VAEGANError as err:
            _fail(str(err))
        except PermissionError as err:
            _fail(f"{err.filename}: permission denied")
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:
            library.uninstall()
        library.report()
        return result

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="keras-vaegan")
def main() -> None:
    """keras-vaegan: synthetic CT from MRI (and MRI from CT) learned from unpaired scans.

    The backend is Keras's: KERAS_BACKEND=tensorflow|jax|torch python cli.py fit ...
    """


def parse_set(values: tuple[str, ...] | list[str]) -> dict:
    """``--set KEY=VALUE`` pairs: JSON values (numbers, true, lists), anything else a string."""
    overrides = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--set")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def build_config(config_file: str | None, run_config: str | None, overrides: dict):
    """Defaults <- run's config.json (resume) <- --config FILE <- explicit options.

    Each layer changes only the keys it names.
    """
    from keras_vaegan.config import Config

    values = Config().to_dict()
    for path, saved_run in ((run_config, True), (config_file, False)):
        if path:
            values.update(Config.read_settings(path, saved_run=saved_run))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(values, origin="command line")


@main.command()
@click.option("--data", "data_root", type=click.Path(), help="Folder with subfolders mri|mr|trainA and ct|trainB (any case), or SynthRAD-style subjects (SUBJECT/mr.nii.gz, ct.nii.gz).")
@click.option("--mri-dir", type=click.Path(), help="Folder (searched recursively) of MRI slices or volumes (NIfTI, DICOM).")
@click.option("--ct-dir", type=click.Path(), help="Folder (searched recursively) of CT slices or volumes (NIfTI, DICOM; HU).")
@click.option("--image-size", type=int, help="Side of the random training crops in pixels (default 64).")
@click.option("--epochs", type=int, help="Number of epochs (default 10).")
@click.option("--steps-per-epoch", type=int, help="Training steps per epoch (default 50).")
@click.option("--batch-size", type=int, help="Images per step (default 4).")
@click.option("--output", type=click.Path(), help="Run folder (default savedmodels/run-<date>-<time>).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last complete epoch.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--config", "config_file", type=click.Path(), help="JSON file of settings (keys of keras_vaegan.config.Config).")
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE", help="Override any setting, e.g. --set lambda_cycle=5 (repeatable).")
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION), help="Compute precision (default auto: float16 on a GPU, bfloat16 on a CPU with native bf16, else float32).")
@click.option("--strategy", type=click.Choice(STRATEGIES), help="Distribution strategy (default none).")
@click.option("--jit-compile/--no-jit-compile", default=None, help="XLA-compile the TensorFlow train step (default off: slower on CPU). JAX always jits.")
@click.option("--validation-data", type=click.Path(), help="Held-out folder (same layout as --data) for validation losses.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable or invalid image files (one warning each) instead of stopping.")
@user_errors
def fit(data_root, mri_dir, ct_dir, image_size, epochs, steps_per_epoch, batch_size, output, resume,
        seed, config_file, set_values, mixed_precision, strategy, jit_compile, validation_data, quiet,
        skip_bad):
    """Train a VAE-CycleGAN (on the built-in phantom when no data is given)."""
    from keras_vaegan.errors import VAEGANError

    if resume and not output:
        raise VAEGANError(None, "--resume needs --output RUN (the run folder to continue)")
    overrides = parse_set(set_values)
    overrides.update(image_size=image_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
                     batch_size=batch_size, seed=seed, mixed_precision=mixed_precision,
                     strategy=strategy, jit_compile=jit_compile)
    run_config = os.path.join(output, "config.json") if resume and output else None
    if run_config and not os.path.exists(run_config):
        raise VAEGANError(output, "nothing to resume: no config.json in this folder")
    config = build_config(config_file, run_config, overrides)
    if output:
        from keras_vaegan.io.paths import check_output_folder

        check_output_folder(output)  # before the data is read, not after
    from keras_vaegan.training.fit import TrainingInterrupted
    from keras_vaegan.training.fit import fit as run_fit

    skipped = SkippedFiles() if skip_bad else None
    try:
        run = run_fit(config, output=output, data_root=data_root, mri_dir=mri_dir,
                      ct_dir=ct_dir, resume=resume, validation_data=validation_data,
                      verbose=0 if quiet else "auto", messages=True, on_bad=skipped)
    except TrainingInterrupted as stop:
        click.echo(str(stop), err=True)
        sys.exit(130)
    if skipped is not None:
        skipped.report()
    from keras_vaegan.backends.distribution import is_chief_worker

    if config.strategy == "multiworker" and not is_chief_worker():
        click.echo(f"worker done; the chief saves the run in {run}")  # this worker wrote nothing
    else:
        click.echo(f"run saved in {run}")


# predict, evaluate and export: what the loaded model computes in (``load_run``)
INFERENCE_PRECISION = click.option("--mixed-precision", "precision", type=click.Choice(MIXED_PRECISION), default="off", show_default=True, help="What the model computes in: off (float32; the values do not depend on the machine), or bfloat16 / float16 / auto for speed (bfloat16 is about 1.7x as fast on a CPU with native bf16; HU differ slightly; ONNX export is float32 only).")
# predict and evaluate: one generator pass per slice (``load_run``'s mirror_average=False and
# shift_average=False)
SINGLE_PASS = click.option("--single-pass", is_flag=True, help="One pass per slice instead of the run's average of four (the slice and its left-right mirror, each also shifted by one pixel, translated, moved back and averaged): up to 4x as fast, 4-14 HU less accurate on the phantoms (benchmarks/RESULTS.md).")


def _averaging(single_pass: bool) -> dict:
    """``--single-pass`` as ``load_run``'s ``mirror_average`` and ``shift_average`` (None: the
    run's own settings)."""
    off = False if single_pass else None
    return {"mirror_average": off, "shift_average": off}


@main.command()
@click.option("--input", "input_path", required=True, type=click.Path(), help="Slice, NIfTI or DICOM file, or a folder (searched recursively; DICOM grouped by series).")
@click.option("--output", "output_dir", required=True, type=click.Path(), help="Folder for the outputs (slices; NIfTI files; DICOM series folders).")
@click.option("--model", "model_path", type=click.Path(), help="Run folder (default: newest run under savedmodels/).")
@click.option("--direction", type=click.Choice(["mri2ct", "ct2mri"]), default="mri2ct", show_default=True, help="Translation direction.")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Latent draws; >1 writes the mean and a *_std uncertainty map.")
@click.option("--format", "fmt", type=click.Choice(["same", "png", "npy"]), default="same", show_default=True, help="Output format of 2-D slices (volumes are written like their input).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Slices per forward pass (fewer for big slices: at most 2048x2048 pixels a pass).")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable or invalid input files (one warning each) instead of stopping.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist (inputs are never overwritten).")
@INFERENCE_PRECISION
@SINGLE_PASS
@user_errors
def predict(input_path, output_dir, model_path, direction, samples, fmt, batch_size, skip_bad,
            overwrite, precision, single_pass):
    """Translate slices and volumes at native resolution (MRI -> synthetic CT in HU by default)."""
    from keras_vaegan.inference.predict import predict as run_predict

    skipped = SkippedFiles() if skip_bad else None
    bar = ProgressBar(f"predict {direction}")

    def on_bad(err) -> None:  # the warning on a line of its own; the bar goes on below it
        if bar.bar is not None and sys.stderr.isatty():
            click.echo("", err=True)
        skipped(err)

    try:
        written = run_predict(input_path, output_dir, run=model_path, direction=direction,
                              samples=samples, fmt=fmt, batch_size=batch_size, progress=bar,
                              overwrite=overwrite, on_bad=on_bad if skip_bad else None,
                              precision=precision, **_averaging(single_pass))
    finally:
        bar.close()
    if skipped is not None:
        skipped.report()
    click.echo(f"wrote {len(written)} files to {output_dir}")


@main.command()
@click.option("--input", "input_path", type=click.Path(), help="MRI to translate: volume file, DICOM folder, folder of subjects, or 2-D slices.")
@click.option("--reference", "reference_path", required=True, type=click.Path(), help="Reference CT in HU, laid out like --input (paired by subject or file name).")
@click.option("--mask", "mask_path", type=click.Path(), help="Masks laid out like --reference (default: SynthRAD mask files, else reference CT > -500 HU).")
@click.option("--model", "model_path", type=click.Path(), help="Run folder that translates --input (default: newest run under savedmodels/).")
@click.option("--prediction", "prediction_path", type=click.Path(), help="Synthetic CT already made (HU), instead of --input and a model.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the results to this JSON file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Slices per forward pass.")
@click.option("--ssim", "ssim_mode", type=click.Choice(SSIM_MODES), default=DEFAULT_SSIM, show_default=True, help="synthrad: the SynthRAD challenge's 3-D SSIM (7-voxel uniform window, scikit-image's computation), comparable with published sCT results; 2d: gaussian SSIM per axial slice (this tool's earlier numbers).")
@INFERENCE_PRECISION
@SINGLE_PASS
@user_errors
def evaluate(input_path, reference_path, mask_path, model_path, prediction_path, json_path,
             batch_size, ssim_mode, precision, single_pass):
    """Score synthetic CT against reference CT: MAE (HU), PSNR, SSIM within a mask (SynthRAD)."""
    from keras_vaegan.errors import VAEGANError
    from keras_vaegan.inference.evaluate import evaluate as run_evaluate
    from keras_vaegan.inference.evaluate import format_table

    if prediction_path and (model_path or single_pass):
        raise VAEGANError(None, f"{'--model' if model_path else '--single-pass'} is for "
                                "translating --input; with --prediction no model is used")
    bar = ProgressBar("evaluate")
    try:
        results = run_evaluate(input_path, reference_path, mask_path=mask_path, run=model_path,
                               prediction_path=prediction_path, json_path=json_path,
                               batch_size=batch_size, progress=bar, ssim_mode=ssim_mode,
                               precision=precision, **_averaging(single_pass))
    finally:
        bar.close()
    click.echo(format_table(results))
    if json_path:
        click.echo(f"wrote {json_path}")


@main.command()
@click.option("--model", "model_path", type=click.Path(), help="Run folder (default: newest run under savedmodels/).")
@click.option("--output", required=True, type=click.Path(), help="Export folder, e.g. savedmodels/NAME; versions go in NAME/1, NAME/2, ...")
@click.option("--version", "version", type=click.IntRange(min=1), help="Version number (default: one more than the highest there); never overwritten.")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "onnx"]), default="savedmodel", show_default=True, help="TF Serving SavedModel, or ONNX (mri2ct.onnx, ct2mri.onnx; needs the [onnx] extra).")
@click.option("--samples", type=click.IntRange(min=2), default=8, show_default=True, help="Latent draws of the mri2ct_uncertainty signature (SavedModel only).")
@INFERENCE_PRECISION
@user_errors
def export(model_path, output, version, fmt, samples, precision):
    """Export a run for serving: normalisation, padding and units inside the graph."""
    from keras_vaegan.inference.export import export_run

    path = export_run(model_path, output, version, samples=samples, fmt=fmt, precision=precision)
    click.echo(f"exported {fmt} to {path}")


@main.command()
@click.argument("out", type=click.Path())
@click.option("--count", type=click.IntRange(min=1), help="Number of slices (spread over subjects of --slices each).")
@click.option("--subjects", type=click.IntRange(min=1), default=4, show_default=True, help="Number of subjects.")
@click.option("--slices", type=click.IntRange(min=1), default=8, show_default=True, help="Axial slices per subject.")
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True, help="Slice side in pixels.")
@click.option("--format", "fmt", type=click.Choice(["png", "tif", "npy", "nii"]), default="png", show_default=True, help="png/tif/npy slices, or nii volumes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same phantom).")
@click.option("--kind", type=click.Choice(PHANTOM_KINDS), default="classic", show_default=True, help="classic: the phantom the defaults were tuned on; head: the harder head (air cells in bone, sulci, calcifications, 3-5 mm slices).")
@user_errors
def phantom(out, count, subjects, slices, size, fmt, seed, kind):
    """Write paired phantom head MRI/CT (HU)/mask data to OUT."""
    from keras_vaegan.data.phantom import write_phantom
    from keras_vaegan.data.phantom_head import phantom_kind

    if count is not None:
        subjects = -(-count // slices)
    drawn = phantom_kind(kind)
    written = write_phantom(out, subjects=subjects, slices=slices, size=size, fmt=fmt, seed=seed,
                            make=drawn.make_subject, spacing=drawn.spacing)
    click.echo(f"wrote {len(written)} files to {out}")


if __name__ == "__main__":
    main()
