"""The machine's achieved GFLOP/s: a large matmul and a representative Conv2D.

Median of repeated runs, float32 and bfloat16, on the backend of
KERAS_BACKEND. bench_train.py divides its achieved GFLOP/s by these.

    python benchmarks/bench_peak.py [--image-size 128] [--batch-size 4] [--steps 10]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402


def matmul_gflops(dtype: str, n: int, repeats: int) -> float:
    import keras

    a = keras.random.normal((n, n), dtype=dtype)
    b = keras.random.normal((n, n), dtype=dtype)

    def run():
        keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.sum(keras.ops.matmul(a, b)), "float32"))

    return 2 * n ** 3 / common.median_seconds(run, repeats) / 1e9


def conv_gflops(dtype: str, side: int, batch: int, channels: int, repeats: int) -> float:
    """A 3x3 Conv2D, channels -> channels, 'same' padding: the generator's workhorse."""
    import keras

    x = keras.random.normal((batch, side, side, channels), dtype=dtype)
    kernel = keras.random.normal((3, 3, channels, channels), dtype=dtype)

    def run():
        keras.ops.convert_to_numpy(
            keras.ops.cast(keras.ops.sum(keras.ops.conv(x, kernel, padding="same")), "float32"))

    flops = 2 * batch * side * side * 9 * channels * channels
    return flops / common.median_seconds(run, repeats) / 1e9


def main() -> None:
    args = common.parser(__doc__, steps=10).parse_args()
    result = {"benchmark": "peak", **common.machine(), "image_size": args.image_size,
              "batch_size": args.batch_size, "repeats": args.steps}
    for dtype in ("float32", "bfloat16"):
        result[f"matmul_{dtype}_gflops"] = round(matmul_gflops(dtype, 2048, args.steps), 1)
        # The generator's residual blocks: 3x3, 4 * gen_filters channels at 1/4 resolution.
        result[f"conv_{dtype}_gflops"] = round(
            conv_gflops(dtype, args.image_size // 4, args.batch_size, 128, args.steps), 1)
    common.write_result(f"peak-{result['backend']}", result)


if __name__ == "__main__":
    main()
