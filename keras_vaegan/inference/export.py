"""Export a trained run for serving: a TF Serving SavedModel (or ONNX) that reproduces ``predict``.

``export_run`` writes the TF Serving layout ``OUTPUT/N/`` (``saved_model.pb``,
``variables/``) with the whole of ``predict``'s per-slice path inside the
graph, so a client sends raw intensities and gets output units back:

- ``serving_default`` (MRI -> CT) and ``ct2mri`` (CT -> MRI): input key
  ``images``, float32 ``[batch, height, width, 1]`` in file units (MRI in its
  own units, CT in HU; 0..255 for a run trained on 8-bit images); output key
  ``translated``, float32, same shape, in output units (HU for CT; MRI in the
  run's ``mri_reference_range`` scale; 0..255 for 8-bit runs).
- ``mri2ct_uncertainty``: input ``images``; outputs ``mean`` and ``std`` (in
  output units) from ``samples`` latent draws, fixed at export time.

A 2.5-D run (``context_slices`` K > 1) takes ``images`` float32
``[batch, height, width, K]``: for each slice to translate, the K slices
around it in the volume's slice order (channel ``K // 2`` the slice itself,
missing neighbours at a volume's edge repeated from the nearest slice), and
returns that centre slice translated, ``[batch, height, width, 1]`` (the
generator returns a whole stack; serving keeps its centre channel, as
``predict`` does). K = 1 is the plain ``[batch, height, width, 1]`` above.

Inside the graph, exactly as ``predict`` does per slice: MRI is scaled by its
own robust percentiles (numpy's default 'linear' interpolation on the finite
values of each image in the batch; of a stack's centre slice for K > 1), CT by
the run's HU window; the image is padded evenly with air (-1) to a multiple
of the generator's stride, translated with ``z = mu`` (the mean of the
translations of the image and of its mirror, mirrored back, unless the run's
``mirror_average`` is off: ``models/mirror.py``; each of them the mean over
the generator's phases unless ``shift_average`` is off: ``models/shifts.py``),
cropped back and mapped to output units. The
arithmetic of the maps runs in float64, as ``data/units.py`` does. Each image
of a batch is normalised on its own; the images of one request must share
height and width (send different sizes as separate requests).

The SavedModel needs only TensorFlow to load (``tf.saved_model.load``; no
Keras, no keras_vaegan). Export itself runs under the TensorFlow backend: a
``.keras`` run trained on JAX or PyTorch loads there too, so when
``keras.backend.backend()`` is not ``tensorflow`` the export is re-run in a
subprocess with ``KERAS_BACKEND=tensorflow`` (setting that variable yourself
skips the extra process).

``fmt="onnx"`` writes ``OUTPUT/N/mri2ct.onnx`` and ``OUTPUT/N/ct2mri.onnx``
with the same input (``images``) and output (``translated``) through
``tf2onnx`` (``pip install -e ".[onnx]"``); the uncertainty signature has no
ONNX counterpart (its random draws do not convert).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from keras_vaegan.backends.layer_calls import replaced_calls
from keras_vaegan.data.units import AIR_UNIT
from keras_vaegan.errors import VAEGANError
from keras_vaegan.inference.compiled import mirrors, shifts
from keras_vaegan.io.atomic import durable_rename
from keras_vaegan.models.mirror import translated

FORMATS = ("savedmodel", "onnx")
SIGNATURES = {"serving_default": "mri2ct", "ct2mri": "ct2mri"}
UNCERTAINTY_SIGNATURE = "mri2ct_uncertainty"
INPUT_KEY = "images"
OUTPUT_KEY = "translated"
DEFAULT_SAMPLES = 8
EXPORT_INFO = os.path.join("assets.extra", "keras_vaegan.json")
ONNX_OPSET = 17
_RESULT_TAG = "keras-vaegan-export-result: "


def export_run(run_dir: str | os.PathLike | None, output: str | os.PathLike,
               version: int | None = None, *, samples: int = DEFAULT_SAMPLES,
               fmt: str = "savedmodel", precision: str = "off") -> str:
    """Export the run in ``run_dir`` (None: newest under savedmodels/) to ``output/N``; return that path.

    ``N`` defaults to one more than the highest integer version folder in
    ``output``; an existing version is never overwritten. The version is
    written under a temporary name beside it and renamed when complete.
    ``precision`` is what the exported graph computes in (``load_run``;
    default float32).
    """
    if fmt not in FORMATS:
        raise VAEGANError(None, f"unknown export format '{fmt}' (one of {', '.join(FORMATS)})")
    if isinstance(samples, bool) or int(samples) != samples or samples < 2:
        raise VAEGANError(None, f"samples must be a whole number >= 2, got {samples}")
    if fmt == "onnx" and precision != "off":
        raise VAEGANError(None, "ONNX export is float32 only (--mixed-precision off)")
    if version is not None and (isinstance(version, bool) or int(version) != version
                                or version < 1):
        raise VAEGANError(None, f"version must be a whole number >= 1, got {version}")
    output = os.fspath(output)
    from keras_vaegan.io.paths import check_output_folder

    check_output_folder(output)
    if fmt == "onnx":
        _require_tf2onnx()

    if version is not None:
        _refuse_existing(os.path.join(output, str(int(version))))

    import keras

    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow_process(run_dir, output, version, int(samples), fmt,
                                             precision)

    from keras_vaegan.inference.runs import load_run

    run = load_run(run_dir, precision)  # a missing or broken run fails before anything is created
    final = os.path.join(output, str(_next_version(output) if version is None else int(version)))
    _refuse_existing(final)
    try:
        os.makedirs(output, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".tmp-export-", dir=output)
    except OSError as err:
        raise VAEGANError(output, f"cannot write here ({err.strerror or err})") from None
    try:
        with traceable_upsampling(run.model.g_ct, run.model.g_mri):
            module = ServingModule(run.model, run.config, int(samples))
            if fmt == "savedmodel":
                _write_saved_model(module, staging)
            else:
                _write_onnx(module, staging)
        _write_info(staging, run, int(samples), fmt)
        _open_permissions(staging)
        _refuse_existing(final)  # another export may have taken it meanwhile
        durable_rename(staging, final)  # every file flushed, then the rename, then the folder
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
    return final


# --- the serving graph ------------------------------------------------------------------


def _tf():
    import tensorflow as tf

    return tf


class ServingModule:
    """Builds the serving tf.functions over a loaded VAECycleGAN (TensorFlow backend only).

    ``self.module`` is the ``tf.Module`` that is saved: it tracks the two
    generators' variables (weights and latent seed state) and holds the
    functions as attributes; ``signatures()`` names the concrete functions.
    """

    def __init__(self, model, config, samples: int = DEFAULT_SAMPLES):
        tf = _tf()
        from keras_vaegan.inference.predict import output_map

        self.stride = int(model.total_stride)
        self.percentiles = tuple(float(p) for p in config.mri_percentiles)
        self.input_maps = {"mri": _fixed_input_map("mri", config),
                           "ct": _fixed_input_map("ct", config)}
        self.output_maps = {"mri": output_map("mri", config)[1], "ct": output_map("ct", config)[1]}
        self.samples = int(samples)
        self.generators = {"mri2ct": model.g_ct, "ct2mri": model.g_mri}
        self.mirror = mirrors(model)  # as predict's compiled pass reads them
        self.shift = shifts(model)
        self.channels = input_channels(model)
        self.centre = self.channels // 2

        spec = input_spec(self.channels)
        module = tf.Module(name="keras_vaegan_serving")
        module.generator_variables = list(model.g_ct.variables) + list(model.g_mri.variables)

        def mri2ct(images):
            return {OUTPUT_KEY: self.translate(images, "mri2ct")}

        def ct2mri(images):
            return {OUTPUT_KEY: self.translate(images, "ct2mri")}

        def mri2ct_uncertainty(images):
            mean, std = self.translate_samples(images, "mri2ct")
            return {"mean": mean, "std": std}

        module.mri2ct = tf.function(mri2ct, input_signature=[spec])
        module.ct2mri = tf.function(ct2mri, input_signature=[spec])
        module.mri2ct_uncertainty = tf.function(mri2ct_uncertainty, input_signature=[spec])
        self.module = module

    def signatures(self) -> dict:
        m = self.module
        return {"serving_default": m.mri2ct.get_concrete_function(),
                "ct2mri": m.ct2mri.get_concrete_function(),
                UNCERTAINTY_SIGNATURE: m.mri2ct_uncertainty.get_concrete_function()}

    # -- pieces of predict, as graph ops -------------------------------------------------
    def translate(self, images, direction: str):
        """Raw intensities -> translated image in output units (``z = mu``)."""
        in_modality, out_modality = ("mri", "ct") if direction == "mri2ct" else ("ct", "mri")
        unit = self.to_unit(images, in_modality)
        padded, crop = self.pad(unit)
        out = self.generated(padded, direction, sample=False)
        return self.from_unit(self.centre_slice(crop(out)), out_modality)

    def translate_samples(self, images, direction: str):
        """``samples`` latent draws -> (mean, std) in output units, as ``predict --samples``."""
        tf = _tf()
        in_modality, out_modality = ("mri", "ct") if direction == "mri2ct" else ("ct", "mri")
        unit = self.to_unit(images, in_modality)
        padded, crop = self.pad(unit)
        batch = tf.shape(padded)[0]
        tiled = tf.tile(padded, [self.samples, 1, 1, 1])  # draw k of image b at k * batch + b
        draws = self.generated(tiled, direction, sample=True)
        draws = tf.reshape(tf.cast(self.centre_slice(crop(draws)), tf.float32),
                           tf.concat([[self.samples, batch], tf.shape(images)[1:3], [1]], 0))
        mean = tf.reduce_mean(draws, axis=0)
        std = tf.math.reduce_std(draws, axis=0)
        out_map = self.output_maps[out_modality]
        return (self.from_unit(mean, out_modality),
                std * tf.constant((out_map.high - out_map.low) / 2.0, tf.float32))

    def generated(self, padded, direction: str, sample: bool):
        """The generator's pass as ``predict`` runs it (mirror- and shift-averaged unless the run
        says not)."""
        return translated(self.generators[direction], padded, sample, self.mirror, self.shift)

    def centre_slice(self, stacks):
        """``[b, h, w, K]`` -> its centre channel ``[b, h, w, 1]`` (the slice being translated)."""
        # a gather, not a strided slice with an ellipsis: tf2onnx turned that slice into a
        # 5-D output in one of two fresh-venv runs
        return _tf().gather(stacks, [self.centre], axis=3)

    def to_unit(self, images, modality: str):
        """File units -> [-1, 1] per image (``IntensityMap.to_unit`` in float64)."""
        tf = _tf()
        x = tf.cast(images, tf.float64)
        fixed = self.input_maps[modality]
        if fixed is not None:
            low = tf.constant(fixed.low, tf.float64)
            high = tf.constant(fixed.high, tf.float64)
        else:
            # the centre slice's percentiles: a lone slice sent as K copies maps as predict
            # maps it alone (percentiles of repeated values differ slightly)
            low, high = robust_range(self.centre_slice(x), self.percentiles)
            low, high = low[:, None, None, None], high[:, None, None, None]
        unit = 2.0 * (x - low) / (high - low) - 1.0
        return tf.cast(tf.clip_by_value(unit, -1.0, 1.0), tf.float32)

    def from_unit(self, unit, modality: str):
        """[-1, 1] -> output units (``IntensityMap.from_unit`` in float64)."""
        tf = _tf()
        out_map = self.output_maps[modality]
        u = tf.cast(unit, tf.float64)
        value = (u + 1.0) / 2.0 * (out_map.high - out_map.low) + out_map.low
        return tf.cast(value, tf.float32)

    def pad(self, unit):
        """Pad evenly with air to a multiple of the stride; return it and the crop back."""
        tf = _tf()
        shape = tf.shape(unit)
        height, width = shape[1], shape[2]
        stride = self.stride
        extra_h = (height + stride - 1) // stride * stride - height
        extra_w = (width + stride - 1) // stride * stride - width
        top, left = extra_h // 2, extra_w // 2
        paddings = tf.stack([[0, 0], [top, extra_h - top], [left, extra_w - left], [0, 0]])
        padded = tf.pad(unit, paddings, constant_values=AIR_UNIT)

        def crop(image):
            return image[:, top:top + height, left:left + width, :]

        return padded, crop


def input_channels(model) -> int:
    """K, the channels ``images`` has: the generators' stack depth (1 for a 2-D run)."""
    return int(getattr(model.g_ct, "channels", 1))


def input_spec(channels: int):
    """The signatures' one input: float32 ``[batch, height, width, channels]`` named ``images``."""
    tf = _tf()
    return tf.TensorSpec([None, None, None, int(channels)], tf.float32, name=INPUT_KEY)


@contextlib.contextmanager
def traceable_upsampling(*models):
    """Let bilinear ``UpSampling2D`` layers trace with unknown height and width.

    Keras 3.15's ``ops.image.resize`` checks ``size[0] <= 0`` in Python, which
    a symbolic size (the serving signature's ``None`` height and width) cannot
    answer. While this is active, each such layer calls what Keras's
    TensorFlow backend calls for it, ``tf.image.resize(x, 2 * size,
    "bilinear", antialias=False)``, so the graph computes the same values.
    """
    from keras import layers

    tf = _tf()

    def replacement(layer):
        if not (isinstance(layer, layers.UpSampling2D) and layer.interpolation == "bilinear"
                and layer.data_format == "channels_last"):
            return None

        def call(inputs, factors=tuple(int(f) for f in layer.size)):
            size = tf.shape(inputs)[1:3] * tf.constant(factors, tf.int32)
            return tf.image.resize(inputs, size, method="bilinear", antialias=False)

        return call

    with replaced_calls(models, replacement):
        yield


def robust_range(images, percentiles: tuple[float, float]):
    """Per-image (low, high) percentiles of the finite values, as ``units.mri_map``.

    ``images`` is float64 ``[batch, ...]``. Reproduces ``np.percentile``'s
    default 'linear' method bit for bit: virtual index ``(n - 1) * q``, the
    neighbours below and above it (both the last value at or past the end),
    and numpy's two-sided lerp. ``high`` becomes ``low + 1`` where the range
    is empty, as in ``mri_map``.
    """
    tf = _tf()
    batch = tf.shape(images)[0]
    flat = tf.reshape(images, tf.stack([batch, -1]))
    finite = tf.math.is_finite(flat)
    count = tf.reduce_sum(tf.cast(finite, tf.int32), axis=1)
    check = tf.debugging.assert_positive(count, message="MRI image has no finite values")
    with tf.control_dependencies([check]):
        ordered = tf.sort(tf.where(finite, flat, tf.constant(float("inf"), tf.float64)), axis=1)
    size = tf.shape(flat)[1]
    n = tf.cast(count, tf.float64)
    last = count - 1
    values = []
    for percent in percentiles:
        q = float(percent) / 100.0  # np.true_divide(q, 100)
        virtual = (n - 1.0) * q
        below = tf.floor(virtual)
        above_end = virtual >= n - 1.0
        previous = tf.where(above_end, last, tf.cast(below, tf.int32))
        following = tf.where(above_end, last, tf.cast(below, tf.int32) + 1)
        previous = tf.maximum(previous, 0)
        following = tf.maximum(following, 0)
        gamma = virtual - tf.where(above_end, tf.constant(-1.0, tf.float64), below)
        offsets = tf.range(batch) * size
        a = tf.gather(tf.reshape(ordered, [-1]), offsets + previous)
        b = tf.gather(tf.reshape(ordered, [-1]), offsets + following)
        diff = b - a
        values.append(tf.where(gamma >= 0.5, b - diff * (1.0 - gamma), a + diff * gamma))
    low, high = values
    high = tf.where(high > low, high, low + 1.0)
    return low, high


def _fixed_input_map(modality: str, config):
    """The run's fixed input map, or None for MRI scaled by its own percentiles.

    Serving gets float32 values with no file bit depth, so a run trained on
    8-bit images takes 0..255 for that modality (predict's 8-bit path).
    """
    from keras_vaegan.data import units

    trained = config.ct_units if modality == "ct" else config.mri_units
    if trained == "uint8":
        return units.UINT8_MAP
    if modality == "ct":
        return units.ct_map(tuple(config.ct_window_hu))
    return None


# --- writing ----------------------------------------------------------------------------


def _write_saved_model(serving: ServingModule, folder: str) -> None:
    tf = _tf()
    tf.saved_model.save(serving.module, folder, signatures=serving.signatures())


def _require_tf2onnx() -> None:
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        raise VAEGANError(None, "--format onnx needs tf2onnx: pip install -e \".[onnx]\"") from None


def _write_onnx(serving: ServingModule, folder: str) -> None:
    """One ONNX model per direction, each with input ``images`` and output ``translated``."""
    import tf2onnx

    spec = (input_spec(serving.channels),)
    for name, fn in (("mri2ct", serving.module.mri2ct), ("ct2mri", serving.module.ct2mri)):
        try:
            with _quiet_tf2onnx():
                tf2onnx.convert.from_function(fn, input_signature=spec, opset=ONNX_OPSET,
                                              output_path=os.path.join(folder, f"{name}.onnx"))
        except Exception as err:  # tf2onnx raises bare exceptions for unsupported graphs
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise VAEGANError(None, f"ONNX conversion of {name} failed ({first})") from None


@contextlib.contextmanager
def _quiet_tf2onnx():
    import logging

    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _write_info(folder: str, run, samples: int, fmt: str) -> None:
    """What was exported, for people and clients (TF Serving ignores assets.extra/)."""
    import keras_vaegan
    from keras_vaegan.inference.predict import output_map

    info = {
        "keras_vaegan_version": keras_vaegan.__version__,
        "format": fmt,
        "run": os.path.basename(os.path.abspath(run.run_dir)),
        "input_key": INPUT_KEY,
        "output_key": OUTPUT_KEY,
        "signatures": ({"serving_default": "mri2ct", "ct2mri": "ct2mri",
                        UNCERTAINTY_SIGNATURE: f"mri2ct mean and std of {samples} draws"}
                       if fmt == "savedmodel" else {"mri2ct.onnx": "mri2ct",
                                                    "ct2mri.onnx": "ct2mri"}),
        "input_units": {"mri": run.config.mri_units, "ct": run.config.ct_units},
        "output_units": {"ct": output_map("ct", run.config)[1].to_dict(),
                         "mri": output_map("mri", run.config)[1].to_dict()},
        "total_stride": int(run.model.total_stride),
        "input_channels": input_channels(run.model),
        "output_channels": 1,
        "config": run.config.to_dict(),
    }
    path = os.path.join(folder, EXPORT_INFO)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
        handle.write("\n")


def _open_permissions(folder: str) -> None:
    """mkdtemp makes the folder private; give it the modes a plain mkdir would (servers read it)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)


# --- versions ---------------------------------------------------------------------------


def _next_version(output: str) -> int:
    """One more than the highest integer version folder in ``output`` (1 if none)."""
    try:
        names = os.listdir(output)
    except FileNotFoundError:
        return 1
    except OSError as err:
        raise VAEGANError(output, f"cannot read the export folder ({err.strerror or err})") from None
    versions = [int(name) for name in names
                if name.isdigit() and os.path.isdir(os.path.join(output, name))]
    return max(versions, default=0) + 1


def _refuse_existing(final: str) -> None:
    if os.path.lexists(final):
        raise VAEGANError(final, "this version already exists and is never overwritten; "
                                 "leave out --version for the next free one")


# --- other backends ---------------------------------------------------------------------


def _export_in_tensorflow_process(run_dir, output: str, version, samples: int, fmt: str,
                                  precision: str) -> str:
    """Re-run the export with KERAS_BACKEND=tensorflow (the SavedModel is a TensorFlow graph)."""
    request = {"run_dir": None if run_dir is None else os.fspath(run_dir), "output": output,
               "version": version, "samples": samples, "fmt": fmt, "precision": precision}
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = subprocess.run([sys.executable, "-m", "keras_vaegan.inference.export",
                             json.dumps(request)],
                            capture_output=True, text=True, env=env)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            answer = json.loads(line[len(_RESULT_TAG):])
            if "error" in answer:
                raise VAEGANError(answer["error"]["path"], answer["error"]["reason"])
            return answer["path"]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    raise VAEGANError(None, "export under KERAS_BACKEND=tensorflow failed"
                            + (f": {lines[-1].strip()}" if lines else ""))


def _main(argv: list[str]) -> int:
    """Entry point of the TensorFlow subprocess: one JSON request in, one tagged JSON line out."""
    import keras

    request = json.loads(argv[0])
    if keras.backend.backend() != "tensorflow":  # never start another process from here
        print(_RESULT_TAG + json.dumps({"error": {"path": None, "reason": (
            f"the export process runs under {keras.backend.backend()}, not tensorflow")}}))
        return 2
    try:
        path = export_run(request["run_dir"], request["output"], request["version"],
                          samples=request["samples"], fmt=request["fmt"],
                          precision=request["precision"])
    except VAEGANError as err:
        print(_RESULT_TAG + json.dumps({"error": {"path": err.path, "reason": err.reason}}))
        return 2
    print(_RESULT_TAG + json.dumps({"path": path}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
