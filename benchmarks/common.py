"""Shared helpers of the benchmark scripts: timing, results files, peak RSS."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parser(description: str, image_size: int = 128, batch_size: int = 4, steps: int = 20):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--steps", type=int, default=steps, help="timed repetitions (median reported)")
    p.add_argument("--mixed-precision", default="off", choices=["auto", "off", "bfloat16", "float16"])
    return p


def _run_seconds(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    return statistics.median(_run_seconds(fn, repeats, warmup))


def best_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """The fastest of repeated runs: for bounds (a peak, a ceiling), which noise only lowers."""
    return min(_run_seconds(fn, repeats, warmup))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name: the same core count can differ 3x in speed between sessions."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# What decides a CPU's conv peak: vector width (AVX2: 8 f32 lanes, AVX-512: 16) and native
# bfloat16 (AVX512-BF16, AMX). Recorded with every figure, so a figure names its machine.
PEAK_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """Which of PEAK_FLAGS the CPU advertises (first processor's ``flags`` line)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    found = set(value.split())
                    return [flag for flag in PEAK_FLAGS if flag in found]
    except OSError:
        pass
    return []


def machine() -> dict:
    import keras

    from keras_vaegan import backends
    from keras_vaegan.backends.precision import cpu_has_native_bfloat16

    return {"backend": keras.backend.backend(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "cpu_bfloat16": cpu_has_native_bfloat16(),
            "accelerator": backends.get().accelerator_name(),  # the GPU's name, None on a CPU
            "python": platform.python_version(), "keras": keras.__version__}


def write_result(name: str, result: dict) -> str:
    """Write results/NAME.json and print the JSON object as the last line."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(json.dumps(result), flush=True)
    return path
