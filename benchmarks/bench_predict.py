"""Prediction speed and memory for a whole volume: in-process and via the SavedModel.

Makes NIfTI MRI volumes (phantom anatomy, ``--image-size`` square slices,
``--slices`` of them and half as many; default 256x256x200 and x100), builds
a run with the default model (untrained: speed does not depend on the
weights) unless ``--model`` is given, then in fresh processes, ``--repeats``
times each (medians reported):

- ``predict`` on the volume: the whole process (Python start, imports, model
  load, read, translate, write) and the ``predict`` call alone (read,
  translate, write), with the process's peak RSS; also once on the half
  volume, to show that peak RSS does not grow with the slice count;
- the exported SavedModel on the same volume, batch by batch, as a client
  would use it: the whole process (imports, load, read, serve, write the
  translated .nii.gz) and the serving loop alone.

In this process it then times, in turn (a, b, c, a, b, c... so that load
from other jobs hits all three alike): one batch through the compiled
forward pass (``inference.compiled``), one through the SavedModel, and the
3x3 conv peak (``bench_peak.peak_probe``: compiled, in the run's
precision). Every one of them (``predict``, the export, the compiled pass)
computes in ``--mixed-precision`` (``predict --mixed-precision``). It
reports ``flops_per_slice`` and, for each way, slices/s, GFLOP/s and
``fraction_of_peak`` against that peak. results/peak-*.json is never read.

    python benchmarks/bench_predict.py [--image-size 256] [--slices 200] [--batch-size 8] \
        [--mixed-precision bfloat16] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would
# report the parent's high-water mark.
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"

IN_PROCESS = r"""
import json, sys, time
t = time.perf_counter()
from keras_vaegan.inference.predict import load_run, predict
run = load_run(sys.argv[3], precision=sys.argv[5])
call = time.perf_counter()
written = predict(sys.argv[1], sys.argv[2], run=run, batch_size=int(sys.argv[4]), overwrite=True)
end = time.perf_counter()
print(json.dumps({"seconds": end - t, "call_seconds": end - call, "files": len(written),
                  "peak_rss_mb": PEAK}))
"""

SAVED_MODEL = r"""
import json, sys, time
import numpy as np
t = time.perf_counter()
import nibabel as nib
import tensorflow as tf
image = nib.load(sys.argv[1])
volume = np.asarray(image.dataobj, dtype="float32")  # [x, y, slices]
serve = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
batch = int(sys.argv[3])
slices = np.moveaxis(volume, -1, 0)[..., None]
loop = time.perf_counter()
out = [serve(images=tf.constant(slices[i:i + batch]))["translated"].numpy()
       for i in range(0, len(slices), batch)]
end = time.perf_counter()
translated = np.moveaxis(np.concatenate(out)[..., 0], 0, -1)
nib.save(nib.Nifti1Image(translated, image.affine, image.header), sys.argv[4])
written = time.perf_counter()
print(json.dumps({"seconds": written - t, "call_seconds": end - loop,
                  "slices": int(len(translated[0, 0])), "peak_rss_mb": PEAK}))
"""


def run_python(code: str, *args) -> dict:
    result = subprocess.run([sys.executable, "-c", code.replace("PEAK", PEAK), *map(str, args)],
                            capture_output=True, text=True, timeout=3600)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{args[0]}: {figures}", file=sys.stderr, flush=True)  # a long run shows its progress
    return figures


def median_of(code: str, repeats: int, *args) -> dict:
    """Each figure's median over ``repeats`` fresh processes (peak RSS: the largest)."""
    runs = [run_python(code, *args) for _ in range(repeats)]
    medians = {key: statistics.median(r[key] for r in runs) for key in ("seconds", "call_seconds")}
    return {**medians, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "all_seconds": [round(r["seconds"], 2) for r in runs],
            "all_call_seconds": [round(r["call_seconds"], 2) for r in runs]}


def make_volume(path: str, size: int, slices: int) -> None:
    import nibabel as nib
    import numpy as np

    from keras_vaegan.data.phantom import make_subject

    subject = make_subject(seed=7, size=size, slices=slices)
    nib.save(nib.Nifti1Image(np.transpose(subject.mri, (2, 1, 0)).astype("float32"), np.eye(4)),
             path)


def make_run(folder: str) -> str:
    """A default-config run (untrained; what it computes in is chosen when it is loaded)."""
    from keras_vaegan.config import Config
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    config = Config()
    model = VAECycleGAN(config)
    model.compile()
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))
    config.save(os.path.join(folder, "config.json"))
    return folder


def interleaved(runs: dict, repeats: int) -> dict:
    """Median seconds of each call, run in turn (a, b, c, a, b, c...) to share the load.

    The first round traces and warms up, and is not counted.
    """
    import statistics
    import time

    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(repeats + 1):
        for name, call in runs.items():
            start = time.perf_counter()
            call()
            if index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def forward_calls(run: str, exported: str, image_size: int, batch_size: int,
                  precision: str) -> dict:
    """One batch through the compiled pass, and through the SavedModel, as calls.

    The SavedModel takes raw intensities and maps units in its graph; the
    compiled pass takes model units (predict maps them in numpy).
    """
    import numpy as np
    import tensorflow as tf

    from keras_vaegan.inference.compiled import compiled_translation
    from keras_vaegan.inference.runs import load_run

    model = load_run(run, precision).model
    translate = compiled_translation(model, "mri2ct", (batch_size, image_size, image_size),
                                     sample=False)
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    raw = np.random.default_rng(0).uniform(0, 1000, (batch_size, image_size, image_size, 1))
    raw = raw.astype(np.float32)
    unit = np.clip(raw / 500.0 - 1.0, -1.0, 1.0).astype(np.float32)
    return {"forward": lambda: translate(unit),
            "savedmodel_forward": lambda: serve(images=tf.constant(raw))["translated"].numpy()}


def speed(run: str, exported: str, policy: str, args, in_process: dict, served: dict) -> dict:
    """Slices/s, GFLOP/s and fractions of the conv peak measured now, on this machine.

    The peak conv is timed interleaved with the two forward passes; the whole
    processes ran before, so their fractions are against a peak taken later.
    """
    from bench_peak import peak_probe, peak_record
    from flops import inference_flops_per_image

    from keras_vaegan.config import CONFIG_FILE, Config

    config = Config.load(os.path.join(run, CONFIG_FILE), saved_run=True)
    flops = inference_flops_per_image(config, args.image_size)
    peak_call, peak_flops, described = peak_probe(policy, args.image_size, args.batch_size)
    repeats = 2 * args.repeats + 1
    calls = forward_calls(run, exported, args.image_size, args.batch_size, args.mixed_precision)
    seconds = interleaved({"peak": peak_call, **calls}, repeats)
    peak = peak_record(peak_flops / seconds["peak"] / 1e9, described, repeats)
    result = {"flops_per_slice": flops}
    for name, slices_per_s in (
            ("forward", args.batch_size / seconds["forward"]),
            ("savedmodel_forward", args.batch_size / seconds["savedmodel_forward"]),
            ("in_process_call", args.slices / in_process["call_seconds"]),
            ("in_process", args.slices / in_process["seconds"]),
            ("savedmodel_call", args.slices / served["call_seconds"]),
            ("savedmodel", args.slices / served["seconds"])):
        achieved = flops * slices_per_s / 1e9
        result.update({f"{name}_slices_per_s": round(slices_per_s, 2),
                       f"{name}_achieved_gflops": round(achieved, 1),
                       f"{name}_fraction_of_peak": round(achieved / peak["peak_gflops"], 3)})
    return {**result, "peak_gflops": round(peak["peak_gflops"], 1),
            "peak_dtype": peak["peak_dtype"], "peak_shape": peak["peak_shape"]}


def main() -> None:
    parser = common.parser(__doc__, image_size=256, batch_size=8, steps=1)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure")
    parser.add_argument("--model", help="run folder (default: an untrained default model)")
    parser.add_argument("--volumes", help="folder keeping the phantom volumes between runs "
                                          "(default: made afresh in a temporary folder)")
    args = parser.parse_args()
    from keras_vaegan.backends.precision import apply_precision

    policy = apply_precision(args.mixed_precision)
    started = time.time()
    half = max(1, args.slices // 2)
    with tempfile.TemporaryDirectory() as tmp:
        volumes = args.volumes or tmp
        volume = os.path.join(volumes, f"mri-{args.image_size}-{args.slices}.nii.gz")
        small = os.path.join(volumes, "half", f"mri-{args.image_size}-{half}.nii.gz")
        for path, count in ((volume, args.slices), (small, half)):
            if not os.path.exists(path):  # the phantom is deterministic: made once per folder
                os.makedirs(os.path.dirname(path), exist_ok=True)
                make_volume(path, args.image_size, count)
        run = args.model or make_run(os.path.join(tmp, "run"))
        from keras_vaegan.inference.export import export_run

        exported = export_run(run, os.path.join(tmp, "export"), precision=args.mixed_precision)
        out = os.path.join(tmp, "out")
        in_process = median_of(IN_PROCESS, args.repeats, volume, out, run, args.batch_size,
                               args.mixed_precision)
        halved = run_python(IN_PROCESS, small, out, run, args.batch_size, args.mixed_precision)
        served = median_of(SAVED_MODEL, args.repeats, volume, exported, args.batch_size,
                           os.path.join(tmp, "served.nii.gz"))
        figures = speed(run, exported, policy, args, in_process, served)
    result = {
        "benchmark": "predict", **common.machine(), "policy": policy,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "volume": [args.image_size, args.image_size, args.slices], "batch_size": args.batch_size,
        "repeats": args.repeats,
        "in_process_seconds": round(in_process["seconds"], 2),
        "in_process_call_seconds": round(in_process["call_seconds"], 2),
        "in_process_peak_rss_mb": round(in_process["peak_rss_mb"], 1),
        f"in_process_peak_rss_mb_{half}_slices": round(halved["peak_rss_mb"], 1),
        "savedmodel_seconds": round(served["seconds"], 2),
        "savedmodel_call_seconds": round(served["call_seconds"], 2),
        "savedmodel_peak_rss_mb": round(served["peak_rss_mb"], 1),
        **figures,
        "runs_seconds": {"in_process": in_process["all_seconds"],
                         "in_process_call": in_process["all_call_seconds"],
                         "savedmodel": served["all_seconds"],
                         "savedmodel_call": served["all_call_seconds"]},
    }
    common.write_result(f"predict-{result['backend']}-{policy}-{args.image_size}px", result)


if __name__ == "__main__":
    main()
