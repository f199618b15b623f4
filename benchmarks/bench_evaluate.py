"""Memory and time of ``evaluate`` on a full-size CT pair (200 x 512 x 512 by default).

Writes a synthetic reference CT (int16, as SynthRAD ships it), its mask
(uint8) and a synthetic CT (float32, as ``predict`` writes it) as a SynthRAD
subject (``000/ct.nii``, ``000/mask.nii``; ``pred/000.nii``) under
``--workdir`` (default: a temporary folder, removed after), then runs
``evaluate`` in a fresh process for each SSIM mode: the library call, and
with ``--cli`` also ``cli.py evaluate`` (which imports TensorFlow, as every
command does). Each child's peak RSS is its ``ru_maxrss`` from ``wait4``.
The parent stays small (it neither makes the volumes nor imports Keras),
since Linux carries a parent's high-water mark into ``ru_maxrss`` across
fork and exec.

    python benchmarks/bench_evaluate.py [--workdir DIR] [--slices 200] [--size 512] [--cli]

The result goes to stdout and to ``benchmarks/results/bench-evaluate.json``;
the limit it is held to is 2 GB of peak RSS per run.
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

import common

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIMIT_MB = 2048
MODES = ("synthrad", "2d")

MAKE_DATA = r"""
import os, sys
import nibabel as nib
import numpy as np
from keras_vaegan.data.phantom import make_subject

folder, slices, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
factor = 4  # the phantom is drawn at a quarter of the size, then each voxel repeated
subject = make_subject(seed=11, size=size // factor, slices=-(-slices // factor))
def grow(x):
    for axis in range(3):
        x = np.repeat(x, factor, axis=axis)
    return x[:slices, :size, :size]
ct = grow(subject.ct.astype(np.float32))
mask = grow(subject.mask.astype(np.uint8))
rng = np.random.default_rng(0)
rows = np.linspace(-1, 1, size, dtype=np.float32)
bias = 60.0 * rows[None, :, None] * rows[None, None, :]  # a smooth error, as a model makes
prediction = ct + bias + rng.normal(0, 40, ct.shape).astype(np.float32)
affine = np.diag([-1.0, -1.0, 1.0, 1.0])
def save(path, canonical, dtype):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.transpose(canonical, (2, 1, 0)))
                             .astype(dtype), affine), path)
save(os.path.join(folder, "000", "ct.nii"), np.round(ct), np.int16)
save(os.path.join(folder, "000", "mask.nii"), mask, np.uint8)
save(os.path.join(folder, "pred", "000.nii"), prediction, np.float32)
"""

LIBRARY = r"""
import json, sys, time
start = time.perf_counter()
from keras_vaegan.inference.evaluate import evaluate
results = evaluate(None, sys.argv[1], prediction_path=sys.argv[2], ssim_mode=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - start, "mean": results["mean"]}))
"""


def run_child(command: list[str], log_dir: str, name: str) -> dict:
    """Run a command; return its seconds, peak RSS (ru_maxrss, MB) and stdout."""
    out_path = os.path.join(log_dir, f"{name}.out")
    err_path = os.path.join(log_dir, f"{name}.err")
    start = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    with open(out_path) as out, open(err_path) as err:
        stdout, stderr = out.read(), err.read()
    if child.returncode:
        raise SystemExit(f"{' '.join(command[:3])} ... failed ({child.returncode}):\n"
                         f"{stderr[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
            "stdout": stdout}


def avx_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """avx2 and every avx512 feature the CPU advertises (numpy's kernels depend on them)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return sorted(f for f in value.split() if f == "avx2" or f.startswith("avx512"))
    except OSError:
        pass
    return []


def measure(workdir: str, with_cli: bool) -> list[dict]:
    reference = os.path.join(workdir, "000", "ct.nii")
    prediction = os.path.join(workdir, "pred", "000.nii")
    runs = []
    for mode in MODES:
        child = run_child([sys.executable, "-c", LIBRARY, reference, prediction, mode],
                          workdir, f"library-{mode}")
        reported = json.loads(child.pop("stdout").strip().splitlines()[-1])
        runs.append({"how": "library", "ssim": mode, **child,
                     "evaluate_seconds": round(reported["seconds"], 2),
                     "mean": reported["mean"]})
        if with_cli:
            out = os.path.join(workdir, f"cli-{mode}.json")
            child = run_child([sys.executable, os.path.join(ROOT, "cli.py"), "evaluate",
                               "--prediction", prediction, "--reference", reference,
                               "--ssim", mode, "--json", out], workdir, f"cli-{mode}")
            child.pop("stdout")
            with open(out) as handle:
                runs.append({"how": "cli", "ssim": mode, **child,
                             "mean": json.load(handle)["mean"]})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="folder for the generated volumes (default: a "
                                          "temporary folder, removed after)")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cli", action="store_true", help="also time cli.py evaluate")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-evaluate-")
    os.makedirs(workdir, exist_ok=True)
    try:
        made = run_child([sys.executable, "-c", MAKE_DATA, workdir, str(args.slices),
                          str(args.size)], workdir, "make-data")
        runs = measure(workdir, args.cli)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {"benchmark": "evaluate", "shape": [args.slices, args.size, args.size],
              "files": "NIfTI, uncompressed: ct int16, mask uint8, prediction float32",
              "cpu_model": common.cpu_model(), "cpu_count": os.cpu_count(),
              "cpu_avx": avx_flags(), "python": sys.version.split()[0],
              "make_data_seconds": made["seconds"], "limit_peak_rss_mb": LIMIT_MB,
              "runs": runs,
              "under_limit": all(run["peak_rss_mb"] < LIMIT_MB for run in runs)}
    common.write_result("bench-evaluate", result)


if __name__ == "__main__":
    main()
