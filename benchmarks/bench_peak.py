"""The machine's achieved GFLOP/s: a large matmul and a representative Conv2D.

Median of repeated runs, float32 and bfloat16, on the backend of
KERAS_BACKEND. The results/peak-<backend>.json this writes is a record of
one machine, never an input: bench_train.py and bench_predict.py call
``conv_peak`` themselves, in the same run and the precision they ran in,
because a peak measured on another CPU (AVX-512 against AVX2, say) makes a
fraction of it meaningless.

    python benchmarks/bench_peak.py [--image-size 128] [--batch-size 4] [--steps 10]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402


def compiled(fn):
    """``fn`` compiled as a training or prediction step is: ``tf.function`` (no XLA), ``jax.jit``.

    Timing a kernel eagerly measures Python dispatch too, and under load that
    made the "peak" lower than what a compiled step reached (fractions above
    1). Torch runs eagerly, as its steps do.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=False)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _timed(fn, args: tuple, repeats: int) -> float:
    """Median seconds of ``fn(*args)``, waiting for the result each time (compiled in warm-up)."""
    import keras

    return common.median_seconds(lambda: keras.ops.convert_to_numpy(fn(*args)), repeats)


def matmul_gflops(dtype: str, n: int, repeats: int) -> float:
    import keras

    a = keras.random.normal((n, n), dtype=dtype)
    b = keras.random.normal((n, n), dtype=dtype)
    run = compiled(lambda a, b: keras.ops.cast(keras.ops.sum(keras.ops.matmul(a, b)), "float32"))
    return 2 * n ** 3 / _timed(run, (a, b), repeats) / 1e9


def conv_probe(dtype: str, side: int, batch: int, channels: int):
    """(call, flops): a compiled 3x3 Conv2D, channels -> channels, 'same', and its FLOPs.

    ``call()`` runs it once and waits for the result; a caller may interleave
    it with what it measures, so that both see the same load.
    """
    import keras

    x = keras.random.normal((batch, side, side, channels), dtype=dtype)
    kernel = keras.random.normal((3, 3, channels, channels), dtype=dtype)
    run = compiled(lambda x, kernel: keras.ops.cast(
        keras.ops.sum(keras.ops.conv(x, kernel, padding="same")), "float32"))
    return (lambda: keras.ops.convert_to_numpy(run(x, kernel)),
            2 * batch * side * side * 9 * channels * channels)


def conv_gflops(dtype: str, side: int, batch: int, channels: int, repeats: int) -> float:
    """A 3x3 Conv2D, channels -> channels, 'same' padding: the generator's workhorse."""
    call, flops = conv_probe(dtype, side, batch, channels)
    return flops / common.median_seconds(call, repeats) / 1e9


PEAK_CHANNELS = 128  # the generator's residual blocks: 4 * gen_filters channels
# Below 32 x 32 (batch 4) a conv call is bound by its overhead, not by arithmetic: measured on
# a 2-core EPYC, 16 x 16 gave 22 GFLOP/s where 32 and 64 gave 34-36, less than the training
# step itself achieved. A peak must be an upper bound, so small images are measured at 32.
MIN_PEAK_SIDE = 32


def compute_dtype(policy: str) -> str:
    """The dtype a Keras dtype policy (``float32``, ``mixed_bfloat16``...) computes in."""
    import keras

    return keras.DTypePolicy(policy).compute_dtype


def peak_probe(policy: str, image_size: int, batch_size: int):
    """(call, flops, description) of the peak conv for ``policy`` and an image size.

    The generator's residual blocks at 1/4 resolution are the shape (at least
    MIN_PEAK_SIDE), in the policy's compute precision, compiled.
    """
    dtype = compute_dtype(policy)
    side = max(MIN_PEAK_SIDE, image_size // 4)
    call, flops = conv_probe(dtype, side, batch_size, PEAK_CHANNELS)
    return call, flops, (dtype, f"3x3 conv {PEAK_CHANNELS}->{PEAK_CHANNELS} channels, "
                                f"{side}x{side}, batch {batch_size}, compiled")


def peak_record(gflops: float, described: tuple[str, str], repeats: int) -> dict:
    """The peak with what it was measured on, to be stored beside a fraction."""
    dtype, shape = described
    return {"peak_gflops": gflops, "peak_dtype": dtype,
            "peak_shape": f"{shape}, median of {repeats}"}


def conv_peak(policy: str, image_size: int, batch_size: int, repeats: int = 5) -> dict:
    """This machine's 3x3 conv GFLOP/s now, in ``policy``'s compute precision: measured here.

    Compiled (``compiled``), as the steps it is compared with are; the shape
    is ``peak_probe``'s.
    """
    call, flops, described = peak_probe(policy, image_size, batch_size)
    gflops = flops / common.median_seconds(call, repeats) / 1e9
    return peak_record(gflops, described, repeats)


def fraction_of_peak(achieved_gflops: float, peak: dict) -> dict:
    """Report fields: the peak measured in this run (rounded) and achieved / peak."""
    return {"peak_gflops": round(peak["peak_gflops"], 1), "peak_dtype": peak["peak_dtype"],
            "peak_shape": peak["peak_shape"],
            "fraction_of_peak": round(achieved_gflops / peak["peak_gflops"], 3)}


def main() -> None:
    args = common.parser(__doc__, steps=10).parse_args()
    result = {"benchmark": "peak", **common.machine(), "image_size": args.image_size,
              "batch_size": args.batch_size, "repeats": args.steps}
    for dtype in ("float32", "bfloat16"):
        result[f"matmul_{dtype}_gflops"] = round(matmul_gflops(dtype, 2048, args.steps), 1)
        # The generator's residual blocks: 3x3, 4 * gen_filters channels at 1/4 resolution.
        result[f"conv_{dtype}_gflops"] = round(
            conv_gflops(dtype, args.image_size // 4, args.batch_size, PEAK_CHANNELS, args.steps), 1)
    common.write_result(f"peak-{result['backend']}", result)


if __name__ == "__main__":
    main()
