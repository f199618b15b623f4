"""Find and load a trained run directory (``model.keras`` + ``config.json``).

``predict``, ``evaluate`` and ``export`` all start from a run: the one given
with ``--model RUN``, or the newest one under ``savedmodels/``. Anything that
is not a loadable run becomes one ``VAEGANError`` naming the path, never a
raw Keras, zip or h5 exception. Model files are untrusted: ``config.json`` is
validated (unknown keys, types, ranges) and ``model.keras`` is loaded in
Keras safe mode, so a file holding Python code (a ``Lambda`` layer) is
refused, never run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from keras_vaegan.backends.precision import policy_scope, resolve_policy
from keras_vaegan.config import CONFIG_FILE, MODEL_FILE, Config
from keras_vaegan.errors import VAEGANError

DEFAULT_RUNS_ROOT = "savedmodels"


@dataclass
class LoadedRun:
    """A trained model with the settings (and data units) it was trained with."""

    model: object  # VAECycleGAN
    config: Config
    run_dir: str
    policy: str = "float32"  # the dtype policy the loaded model computes in (``load_run``)


def is_run(folder: str | os.PathLike) -> bool:
    folder = os.fspath(folder)
    return (os.path.isfile(os.path.join(folder, MODEL_FILE))
            and os.path.isfile(os.path.join(folder, CONFIG_FILE)))


def find_newest_run(root: str | os.PathLike = DEFAULT_RUNS_ROOT) -> str:
    """The run under ``root`` (searched recursively) whose model.keras was written last."""
    root = os.fspath(root)
    newest: tuple[float, str] | None = None
    if os.path.isdir(root):
        for folder, subfolders, _ in os.walk(root):
            if is_run(folder):
                subfolders[:] = []  # a run's checkpoints/ and snapshots/ are not runs
                try:
                    mtime = os.path.getmtime(os.path.join(folder, MODEL_FILE))
                except OSError:
                    continue
                # ties (same mtime) go to the later name, so the pick is reproducible
                if newest is None or (mtime, folder) > newest:
                    newest = (mtime, folder)
            else:
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    if newest is None:
        raise VAEGANError(root, "no trained run found; train one with `python cli.py fit` "
                                "or pass --model")
    return newest[1]


def load_run(run_dir: str | os.PathLike | None = None, precision: str = "off",
             mirror_average: bool | None = None,
             shift_average: bool | None = None) -> LoadedRun:
    """Load a run's config.json and model.keras (``None``: the newest run under savedmodels/).

    A path to the ``model.keras`` file itself is accepted too. ``precision``
    (a ``--mixed-precision`` value) is what the loaded model computes in,
    whatever it trained with: ``off`` (float32, the default: the values do not
    depend on the CPU), ``bfloat16``, ``float16`` or ``auto``.
    ``mirror_average`` (None: the run's own setting, on unless it was trained
    with it off) decides whether predictions average each slice's translation
    with its mirror's (``models/mirror.py``), ``shift_average`` (the same)
    whether each of those passes is the mean over the generator's phases
    (``models/shifts.py``); both False make a prediction one pass per slice.
    """
    if run_dir is None:
        run_dir = find_newest_run()
    run_dir = os.fspath(run_dir)
    if os.path.isfile(run_dir) and os.path.basename(run_dir) == MODEL_FILE:
        run_dir = os.path.dirname(run_dir) or "."
    if not os.path.exists(run_dir):
        raise VAEGANError(run_dir, "no such run folder")
    if not os.path.isdir(run_dir):
        raise VAEGANError(run_dir, f"not a run folder (expected a folder holding {MODEL_FILE} "
                                   f"and {CONFIG_FILE})")
    model_path = os.path.join(run_dir, MODEL_FILE)
    config_path = os.path.join(run_dir, CONFIG_FILE)
    for path in (model_path, config_path):
        if not os.path.isfile(path):
            raise VAEGANError(run_dir, f"not a trained run (no {os.path.basename(path)}); "
                                       "train one with `python cli.py fit`")
    config = Config.load(config_path, saved_run=True)
    with policy_scope(precision) as policy:
        model = _load_model(model_path)
    chosen = {key: bool(value) for key, value in (("mirror_average", mirror_average),
                                                  ("shift_average", shift_average))
              if value is not None}
    if chosen:  # the model's settings are what its prediction passes read
        config = config.replace(**chosen)
        model.settings = model.settings.replace(**chosen)
    return LoadedRun(model=model, config=config, run_dir=run_dir, policy=policy)


def run_for(run: LoadedRun | str | os.PathLike | None, precision: str | None,
            mirror_average: bool | None = None,
            shift_average: bool | None = None) -> LoadedRun:
    """``run`` loaded in ``precision`` (None: float32), or as given when it is loaded already.

    ``mirror_average`` and ``shift_average`` as in ``load_run`` (None: the
    run's own setting). A loaded run is used as it was loaded; asking for
    another precision or averaging is an error rather than a silent reload.
    """
    if not isinstance(run, LoadedRun):
        return load_run(run, precision or "off", mirror_average, shift_average)
    if precision is not None:
        wanted = resolve_policy(precision)
        if wanted != run.policy:
            raise VAEGANError(run.run_dir, f"this run was loaded as {run.policy}, not {wanted}; "
                                           f"load it with load_run(..., precision="
                                           f"{precision!r})")
    for key, wanted in (("mirror_average", mirror_average), ("shift_average", shift_average)):
        loaded = bool(getattr(run.config, key))
        if wanted is not None and bool(wanted) != loaded:
            raise VAEGANError(run.run_dir, f"this run was loaded with {key}={loaded}; load it "
                                           f"with load_run(..., {key}={bool(wanted)})")
    return run


def _load_model(path: str):
    import keras

    import keras_vaegan.models.vaecyclegan  # noqa: F401  (registers the custom classes)

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # ValueError, zipfile.BadZipFile, OSError, KeyError, h5py errors
        unsafe = _unsafe_content(err)
        if unsafe:
            raise VAEGANError(path, f"refused: it holds Python code ({unsafe}) that loading "
                                    "would run, and Keras safe mode never loads code from a "
                                    "model file; use a run trained with keras-vaegan") from None
        raise VAEGANError(path, f"cannot load the model ({_one_line(err, path)})") from None
    if not (hasattr(model, "translate") and hasattr(model, "total_stride")):
        raise VAEGANError(path, f"not a VAE-CycleGAN model (got {type(model).__name__})")
    return model


def _unsafe_content(err: BaseException) -> str | None:
    """What Keras safe mode refused to deserialize (e.g. "a `Lambda` layer"), or None."""
    import re

    text = str(err)
    if "safe_mode" not in text and "arbitrary code" not in text:
        return None
    found = re.search(r"deserialization of an? `?([\w.]+)`? ?(layer|function|object)?", text)
    if not found:
        return "a lambda or other Python function"
    return f"a `{found.group(1)}` {found.group(2) or 'object'}"


def _one_line(err: BaseException, path: str) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    for name in (f"filepath={path}", repr(path), path):
        text = text.replace(name, "")
    text = " ".join(text.split()).strip(" :.,")
    if len(text) > 200:
        text = text[:197] + "..."
    return text or type(err).__name__
