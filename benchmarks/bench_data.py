"""Training on a real-sized set: peak RSS, preprocessing time, images/s and input wait, at
1x and 4x the volumes (issue 28: peak RSS may grow <= 10 %, input wait < 5 %).

A synthetic set of int16 NIfTI volumes (CT in HU, MRI intensities; head-like
ellipses with texture, each volume different) is written once under
``--workdir`` and reused by later runs. For each set size a fresh child
process (its peak RSS from ``wait4``):

1. builds the on-disk slice cache from the volumes (cold: the set's cache
   folder is removed first) -- the first epoch's preprocessing time -- then
   opens it again (what a later run pays);
2. trains ``--steps`` steps at ``--image-size`` crops on the cached pipeline,
   then the same steps on one batch held in memory (bench_train.py's
   ``pipeline_and_in_memory_steps``): steady-state images/s and input wait.

Then ``python cli.py fit`` runs ``--fit-steps`` steps on the same folders and
cache (reused), as a user runs it, for its own peak RSS.

    python benchmarks/bench_data.py --workdir /data/bench --volumes 40 --slices 150 --size 512
    python benchmarks/bench_data.py --workdir /tmp/bench-data --volumes 10 --slices 48  # 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# moderate widths: a step long enough to be a real step, short enough for 2 cores
MODEL = dict(gen_filters=16, latent_channels=32, gen_res_blocks=2, latent_downsample=4,
             disc_filters=[32, 64, 128], disc_heads=2, pool_size=8, snapshot_count=2)


# --- the synthetic set -------------------------------------------------------------------
def synthetic_volume(index: int, size: int, slices: int, modality: str):
    """One int16 volume [cols, rows, slices] (NIfTI order): a textured ellipse in air."""
    import numpy as np

    rng = np.random.default_rng([index, modality == "ct"])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    a, b = 0.3 + 0.1 * rng.random(2)
    volume = np.empty((size, size, slices), np.int16)
    for k in range(slices):
        scale = 1.0 - 0.4 * abs(k / max(slices - 1, 1) - 0.5)  # smaller towards the ends
        r = (xx / (a * scale)) ** 2 + (yy / (b * scale)) ** 2
        texture = 30 * np.sin(xx * (20 + index) + k * 0.1) * np.cos(yy * 17)
        if modality == "ct":
            image = np.where(r < 1, 40 + texture, -1000.0)
            image = np.where((r > 0.8) & (r < 1), 1200.0, image)  # a skull
        else:
            image = np.where(r < 1, 600 + 4 * texture, 5.0) + 10 * rng.standard_normal((size, size))
        volume[:, :, k] = np.clip(image, -1024, 3071).astype(np.int16).T
    return volume


def write_pool(workdir: str, count: int, size: int, slices: int) -> str:
    """``count`` volumes per modality under workdir/pool-SIZExSIZExSLICES (written once)."""
    import nibabel as nib
    import numpy as np

    pool = os.path.join(workdir, f"pool-{size}x{size}x{slices}")
    for modality in ("mri", "ct"):
        os.makedirs(os.path.join(pool, modality), exist_ok=True)
        for i in range(count):
            path = os.path.join(pool, modality, f"{i:04d}.nii")
            if os.path.exists(path):
                continue
            image = nib.Nifti1Image(synthetic_volume(i, size, slices, modality), np.eye(4))
            image.set_data_dtype(np.int16)
            nib.save(image, path + ".part.nii")
            os.replace(path + ".part.nii", path)
    return pool


def link_set(workdir: str, pool: str, count: int) -> str:
    """A set folder with mri/ and ct/ linking the pool's first ``count`` volumes."""
    folder = os.path.join(workdir, f"set-{os.path.basename(pool)}-{count}")
    for modality in ("mri", "ct"):
        os.makedirs(os.path.join(folder, modality), exist_ok=True)
        for i in range(count):
            target = os.path.join(pool, modality, f"{i:04d}.nii")
            link = os.path.join(folder, modality, f"{i:04d}.nii")
            if not os.path.exists(link):
                try:
                    os.link(target, link)
                except OSError:
                    os.symlink(target, link)
    return folder


# --- one measurement in a child process ------------------------------------------------------
def child(args) -> None:
    import keras
    from bench_train import input_wait_fraction, pipeline_and_in_memory_steps

    from keras_vaegan.backends.precision import apply_precision
    from keras_vaegan.config import Config
    from keras_vaegan.data.pipeline import make_training_dataset
    from keras_vaegan.data.training_data import load_training_data
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    policy = apply_precision(args.mixed_precision)
    config = Config(image_size=args.image_size, batch_size=args.batch_size,
                    mixed_precision=args.mixed_precision, **MODEL)
    mri_dir, ct_dir = (os.path.join(args.set, m) for m in ("mri", "ct"))
    start = time.perf_counter()
    data = load_training_data(config, mri_dir=mri_dir, ct_dir=ct_dir, cache_dir=args.cache)
    built_s = time.perf_counter() - start
    start = time.perf_counter()
    data = load_training_data(config, mri_dir=mri_dir, ct_dir=ct_dir, cache_dir=args.cache)
    reopened_s = time.perf_counter() - start
    config = data.config
    keras.utils.set_random_seed(config.seed)
    model = VAECycleGAN(config)
    model.compile()
    pipeline = make_training_dataset(data.mri, data.ct, config)
    step_s, in_memory_s = pipeline_and_in_memory_steps(model, pipeline, args.steps, args.warmup)
    print(json.dumps({
        "policy": policy, "mri_slices": len(data.mri), "ct_slices": len(data.ct),
        "preprocess_s": round(built_s, 2), "cache_reopen_s": round(reopened_s, 3),
        "step_s_median": round(step_s, 4), "in_memory_step_s_median": round(in_memory_s, 4),
        "images_per_s": round(args.batch_size / step_s, 3),
        "input_wait_fraction": input_wait_fraction(step_s, in_memory_s)}), flush=True)


def run_measured(command: list[str]) -> tuple[str, float, float]:
    """Run a child -> (its stdout, its own peak RSS in MB from wait4, wall seconds)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n"
                             f"{err.read()[-3000:]}")
        return out.read(), usage.ru_maxrss / 1024.0, wall


def measure(args, workdir: str, pool: str, count: int) -> dict:
    folder = link_set(workdir, pool, count)
    cache = os.path.join(workdir, "cache", os.path.basename(folder))
    shutil.rmtree(cache, ignore_errors=True)  # a cold build: the first epoch's preprocessing
    common_args = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                   "--mixed-precision", args.mixed_precision]
    out, rss, wall = run_measured([sys.executable, os.path.abspath(__file__), "--child",
                                   "--set", folder, "--cache", cache, "--steps", str(args.steps),
                                   "--warmup", str(args.warmup), *common_args])
    result = {"volumes_per_modality": count, **json.loads(out.strip().splitlines()[-1]),
              "peak_rss_mb": round(rss, 1), "wall_s": round(wall, 1)}
    if args.fit_steps:
        sets = [f"{key}={json.dumps(value)}" for key, value in
                {**MODEL, "data_cache": cache}.items()]
        command = [sys.executable, "cli.py", "fit", "--mri-dir", os.path.join(folder, "mri"),
                   "--ct-dir", os.path.join(folder, "ct"), "--output",
                   os.path.join(workdir, "runs", f"{os.path.basename(folder)}-{time.time_ns()}"),
                   "--epochs", "1", "--steps-per-epoch", str(args.fit_steps),
                   "--quiet", *common_args, *(x for s in sets for x in ("--set", s))]
        _, fit_rss, fit_wall = run_measured(command)
        result.update({"fit_cli_peak_rss_mb": round(fit_rss, 1),
                       "fit_cli_wall_s": round(fit_wall, 1), "fit_cli_steps": args.fit_steps})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where the synthetic set is written once (required)")
    parser.add_argument("--volumes", type=int, default=40, help="volumes per modality (1x)")
    parser.add_argument("--scale", type=int, default=4, help="the larger set is this many times 1x")
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--image-size", type=int, default=256, help="training crop side")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fit-steps", type=int, default=5,
                        help="steps of the `cli.py fit` run (0: skip it)")
    parser.add_argument("--mixed-precision", default="off",
                        choices=["auto", "off", "bfloat16", "float16"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not args.workdir:
        parser.error("--workdir is required")

    workdir = os.path.abspath(args.workdir)
    sizes = [args.volumes, args.volumes * args.scale]
    free = shutil.disk_usage(os.path.dirname(workdir) if not os.path.exists(workdir)
                             else workdir).free
    need = 2 * sizes[-1] * args.size ** 2 * args.slices * 2 * 2  # int16 volumes + float16 caches
    if need > free:
        raise SystemExit(f"needs ~{need / 2**30:.1f} GiB under {workdir}, "
                         f"{free / 2**30:.1f} GiB free: use fewer --volumes or --slices")
    start = time.perf_counter()
    pool = write_pool(workdir, sizes[-1], args.size, args.slices)
    written_s = time.perf_counter() - start
    runs = [measure(args, workdir, pool, count) for count in sizes]
    small, large = runs
    growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
    result = {
        "benchmark": "data", **common.machine(), "slice_shape": [args.size, args.size],
        "slices_per_volume": args.slices, "image_size": args.image_size,
        "batch_size": args.batch_size, "steps": args.steps, "model": MODEL,
        "volume_dtype": "int16 NIfTI (.nii)", "cache_dtype": "float16 model units",
        "set_written_s": round(written_s, 1), "runs": runs,
        "peak_rss_growth": round(growth, 3),
        "fit_cli_peak_rss_growth": (round(large["fit_cli_peak_rss_mb"]
                                          / small["fit_cli_peak_rss_mb"] - 1, 3)
                                    if args.fit_steps else None),
        "targets": {"peak_rss_growth_max": 0.10, "input_wait_fraction_max": 0.05},
    }
    common.write_result("bench-data", result)


if __name__ == "__main__":
    main()
