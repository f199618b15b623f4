"""Training throughput of the default model: images/s, GFLOP/s, % of peak, input wait.

Runs ``VAECycleGAN.fit`` on the real tf.data pipeline (phantom slices at the
image size, or ``--slice-size`` slices the crops are cut from), times each step with a callback (median after warm-up), then
times the same steps on an in-memory batch; the difference is the share of
step time spent waiting for input. The peak it divides by is measured in the
same run, right after the timed steps, in the precision they ran in
(``bench_peak.conv_peak``); results/peak-*.json is never read.

    KERAS_BACKEND=tensorflow python benchmarks/bench_train.py --image-size 128 --batch-size 4 \
        --steps 20 --mixed-precision bfloat16
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
from flops import training_flops_per_image  # noqa: E402


def step_times(model, dataset, steps: int, warmup: int) -> list[float]:
    import keras

    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            keras.ops.convert_to_numpy(logs["g_loss"])  # wait for the step to finish
            times.append(time.perf_counter() - self.start)

    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, shuffle=False,
              callbacks=[Timer()])
    return times[warmup:]


def pipeline_and_in_memory_steps(model, pipeline, steps: int, warmup: int,
                                 rounds: int = 2) -> tuple[float, float]:
    """Median step time on the tf.data pipeline, and on one of its batches held in memory.

    The difference is the input wait: what the step waited for the pipeline
    (bench_data.py measures a cached real-sized set the same way). The two
    are timed in alternating blocks (``rounds`` of each, the first step of
    every block left out), so a shared machine's load drifting during the
    run weighs on both alike.
    """
    import tensorflow as tf

    mri, ct = next(iter(pipeline))
    in_memory = tf.data.Dataset.from_tensors((mri, ct)).repeat()
    step_times(model, pipeline, 0, warmup)  # traces the step
    block = max(1, steps // rounds)
    with_pipeline, without_input = [], []
    for _ in range(rounds):
        with_pipeline += step_times(model, pipeline, block, 1)
        without_input += step_times(model, in_memory, block, 1)
    return statistics.median(with_pipeline), statistics.median(without_input)


def input_wait_fraction(step_s: float, in_memory_s: float) -> float:
    """The share of a pipeline step spent waiting for input."""
    return round(max(0.0, 1 - in_memory_s / step_s), 3)


def throughput(config, policy: str, step_s: float, in_memory_s: float,
               peak_repeats: int = 5) -> dict:
    """Images/s, GFLOP/s and their fraction of the conv peak measured now, on this machine."""
    from bench_peak import conv_peak, fraction_of_peak

    flops = training_flops_per_image(config)
    images_per_s = config.batch_size / step_s
    achieved = flops * images_per_s / 1e9
    peak = conv_peak(policy, config.image_size, config.batch_size, peak_repeats)
    return {"step_s_median": round(step_s, 4), "images_per_s": round(images_per_s, 3),
            "flops_per_image": flops, "achieved_gflops": round(achieved, 1),
            **fraction_of_peak(achieved, peak),
            "input_wait_fraction": input_wait_fraction(step_s, in_memory_s)}


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--slice-size", type=int, default=0,
                        help="phantom slice side the crops are cut from (default: --image-size; "
                             "e.g. 512 for 256x256 crops from 512x512 slices)")
    parser.add_argument("--jit-compile", action="store_true", help="XLA (TensorFlow backend)")
    parser.add_argument("--augment-resampling", default="bilinear",
                        choices=["bilinear", "lanczos"],
                        help="the augmentation's resampling (lanczos costs the input pipeline more)")
    parser.add_argument("--gen-filters", type=int, default=0,
                        help="filters of the generators' first stage (default: the config's); "
                             "what a wider generator costs a step")
    args = parser.parse_args()

    import keras

    from keras_vaegan.backends.precision import apply_precision
    from keras_vaegan.config import Config
    from keras_vaegan.data.pipeline import make_training_dataset
    from keras_vaegan.data.training_data import phantom_training_data
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    policy = apply_precision(args.mixed_precision)
    slice_size = args.slice_size or args.image_size
    config = Config(image_size=args.image_size, batch_size=args.batch_size,
                    phantom_size=slice_size, phantom_subjects=8,
                    mixed_precision=args.mixed_precision, jit_compile=args.jit_compile,
                    augment_resampling=args.augment_resampling,
                    **({"gen_filters": args.gen_filters} if args.gen_filters else {}))
    data = phantom_training_data(config)
    config = data.config
    model = VAECycleGAN(config)
    model.compile()
    pipeline = make_training_dataset(data.mri, data.ct, config)
    with_pipeline, without_input = pipeline_and_in_memory_steps(model, pipeline, args.steps,
                                                                args.warmup)

    result = {
        "benchmark": "train", **common.machine(), "policy": policy,
        "jit_compile": bool(model.jit_compile), "augment_resampling": config.augment_resampling,
        # recorded when asked for, as the name's -gN is: the table's reproduce command adds it
        **({"gen_filters": config.gen_filters} if args.gen_filters else {}),
        "image_size": args.image_size, "slice_size": slice_size, "batch_size": args.batch_size,
        "steps": args.steps,
        **throughput(config, policy, with_pipeline, without_input),
        "parameters": int(sum(int(keras.ops.size(v)) for v in model.trainable_variables)),
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
    }
    name = (f"train-{result['backend']}-{policy}-{args.image_size}px-b{args.batch_size}"
            + ("-xla" if args.jit_compile and result["backend"] == "tensorflow" else "")
            + ("-lanczos" if args.augment_resampling == "lanczos" else "")
            + (f"-from{slice_size}" if slice_size != args.image_size else "")
            + (f"-g{args.gen_filters}" if args.gen_filters else ""))
    common.write_result(name, result)


if __name__ == "__main__":
    main()
