"""Prediction speed and memory for a whole volume: in-process and via the SavedModel.

Makes a NIfTI MRI volume (phantom anatomy, ``--image-size`` square slices,
``--slices`` of them; default 256x256x200), builds a run with the default
model (untrained: speed does not depend on the weights) unless ``--model`` is
given, then times ``predict`` on it in a fresh process and the exported
SavedModel in another fresh process, each reporting its peak RSS. The
in-process figure is also given as GFLOP/s and as a fraction of the conv peak
measured in this run, in the run's precision (``bench_peak.conv_peak``; end
to end, so loading and I/O count against it); results/peak-*.json is never read.

    python benchmarks/bench_predict.py [--image-size 256] [--slices 200] [--batch-size 8]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would
# report the parent's high-water mark.
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"

IN_PROCESS = r"""
import json, sys, time
t = time.perf_counter()
from keras_vaegan.inference.predict import predict
written = predict(sys.argv[1], sys.argv[2], run=sys.argv[3], batch_size=int(sys.argv[4]),
                  progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "files": len(written),
                  "peak_rss_mb": PEAK}))
"""

SAVED_MODEL = r"""
import json, sys, time
import numpy as np
t = time.perf_counter()
import nibabel as nib
import tensorflow as tf
volume = np.asarray(nib.load(sys.argv[1]).dataobj, dtype="float32")  # [x, y, slices]
serve = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
batch = int(sys.argv[3])
slices = np.moveaxis(volume, -1, 0)[..., None]
out = [serve(images=tf.constant(slices[i:i + batch]))["translated"].numpy()
       for i in range(0, len(slices), batch)]
print(json.dumps({"seconds": time.perf_counter() - t, "slices": int(sum(len(o) for o in out)),
                  "peak_rss_mb": PEAK}))
"""


def run_python(code: str, *args) -> dict:
    result = subprocess.run([sys.executable, "-c", code.replace("PEAK", PEAK), *map(str, args)], capture_output=True,
                            text=True, timeout=3600)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_volume(path: str, size: int, slices: int) -> None:
    import nibabel as nib
    import numpy as np

    from keras_vaegan.data.phantom import make_subject

    subject = make_subject(seed=7, size=size, slices=slices)
    nib.save(nib.Nifti1Image(np.transpose(subject.mri, (2, 1, 0)).astype("float32"), np.eye(4)),
             path)


def make_run(folder: str) -> str:
    """A default-config run (the global dtype policy decides its compute precision)."""
    from keras_vaegan.config import Config
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    config = Config()
    model = VAECycleGAN(config)
    model.compile()
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))
    config.save(os.path.join(folder, "config.json"))
    return folder


def end_to_end(run: str, policy: str, image_size: int, slices: int, batch_size: int,
               seconds: float, peak_repeats: int = 5) -> dict:
    """The in-process prediction as GFLOP/s and a fraction of the conv peak measured now."""
    from bench_peak import conv_peak, fraction_of_peak
    from flops import inference_flops_per_image

    from keras_vaegan.config import CONFIG_FILE, Config

    config = Config.load(os.path.join(run, CONFIG_FILE), saved_run=True)
    achieved = inference_flops_per_image(config, image_size) * slices / seconds / 1e9
    peak = conv_peak(policy, image_size, batch_size, peak_repeats)
    return {"in_process_achieved_gflops": round(achieved, 1),
            **{f"in_process_{k}": v for k, v in fraction_of_peak(achieved, peak).items()}}


def main() -> None:
    parser = common.parser(__doc__, image_size=256, batch_size=8, steps=1)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--model", help="run folder (default: an untrained default model)")
    args = parser.parse_args()
    from keras_vaegan.training.precision import apply_precision

    policy = apply_precision(args.mixed_precision)
    with tempfile.TemporaryDirectory() as tmp:
        volume = os.path.join(tmp, "mri.nii.gz")
        make_volume(volume, args.image_size, args.slices)
        run = args.model or make_run(os.path.join(tmp, "run"))
        from keras_vaegan.inference.export import export_run

        exported = export_run(run, os.path.join(tmp, "export"))
        in_process = run_python(IN_PROCESS, volume, os.path.join(tmp, "out"), run, args.batch_size)
        served = run_python(SAVED_MODEL, volume, exported, args.batch_size)
        speed = end_to_end(run, policy, args.image_size, args.slices, args.batch_size,
                           in_process["seconds"])
    result = {
        "benchmark": "predict", **common.machine(), "policy": policy,
        "volume": [args.image_size, args.image_size, args.slices], "batch_size": args.batch_size,
        "in_process_seconds": round(in_process["seconds"], 2),
        "in_process_slices_per_s": round(args.slices / in_process["seconds"], 2),
        "in_process_peak_rss_mb": round(in_process["peak_rss_mb"], 1), **speed,
        "savedmodel_seconds": round(served["seconds"], 2),
        "savedmodel_slices_per_s": round(args.slices / served["seconds"], 2),
        "savedmodel_peak_rss_mb": round(served["peak_rss_mb"], 1),
    }
    common.write_result(f"predict-{result['backend']}-{policy}-{args.image_size}px", result)


if __name__ == "__main__":
    main()
