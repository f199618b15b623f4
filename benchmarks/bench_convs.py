"""Each convolution of a training step timed alone at its own shape: the step's conv ceiling.

``bench_train.py`` divides a step's FLOPs by the conv peak (one 3x3,
128 -> 128 convolution at 64x64, the kind the CPU's kernels run best). A
step is made of other shapes: the 7x7 stem (1 -> 32) and image head
(32 -> 1) at full size, the 64-channel blocks at half size, the
discriminators' 4x4 strided convolutions. This script records every
``Conv2D`` of the default generator and discriminator at the training
shapes, times its forward, input-gradient and weight-gradient kernels alone
(TensorFlow, compiled, the run's precision), and adds them up with the
passes a training step makes (``passes_per_net``, as ``flops.py`` counts
them: 2 passes of each generator, 3 with the identity term, with all three
kernels; 3 of each discriminator, one with the input gradient and two with
the weight gradient). That sum is the step's time if it ran nothing but
its convolutions, each as fast as it runs alone: no step can beat its
fraction of the peak, whatever the norms, activations and losses cost. Kernels and peak are each the best of ``--repeats`` runs (a bound:
noise on a shared machine only ever slows a run). Per-layer rows show which
shapes hold the step below the peak.

    KERAS_BACKEND=tensorflow python benchmarks/bench_convs.py --image-size 256 --batch-size 4 \\
        --mixed-precision bfloat16
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import common  # noqa: E402
from flops import DISCRIMINATOR_PASSES, conv_flops, generator_passes  # noqa: E402


def passes_per_net(config) -> tuple[dict, dict]:
    """Kernel runs per training step of one generator and of one discriminator (``flops.py``).

    A generator pass needs all three kernels; of each discriminator's three
    passes one needs the input gradient (a fake for the generator update) and
    two the weight gradient (real and pooled fake for its own update).
    """
    per_generator = generator_passes(config) // 2
    per_discriminator = DISCRIMINATOR_PASSES // 2
    return ({"forward": per_generator, "input_grad": per_generator, "weight_grad": per_generator},
            {"forward": per_discriminator, "input_grad": 1, "weight_grad": per_discriminator - 1})


def recorded_convs(net, images) -> list[tuple[str, object, tuple]]:
    """(name, layer, input shape) of each ``Conv2D`` as ``net(images)`` runs it.

    The name is the layer's path without the outer model's: ``g_ct/stem/conv``.
    """
    import keras

    from keras_vaegan.backends.layer_calls import replaced_calls

    seen = []

    def replacement(layer):
        if not isinstance(layer, keras.layers.Conv2D):
            return None

        def call(inputs):
            seen.append((layer.path.split("/", 1)[-1], layer, tuple(inputs.shape)))
            return type(layer).call(layer, inputs)

        return call

    with replaced_calls([net], replacement):
        net(images, training=True)
    return seen


def kernel_seconds(layer, input_shape: tuple, dtype: str, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of ``layer``'s forward, input- and weight-gradient kernels."""
    import tensorflow as tf
    from bench_peak import compiled

    strides = [1, *layer.strides, 1]
    padding = layer.padding.upper()
    kernel = tf.cast(tf.random.normal(tuple(layer.kernel.shape), stddev=0.05), dtype)
    images = tf.cast(tf.random.normal(input_shape), dtype)
    output = tf.nn.conv2d(images, kernel, strides, padding)
    grad = tf.cast(tf.random.normal(tuple(output.shape)), dtype)
    kernels = {
        "forward": (lambda x, k: tf.nn.conv2d(x, k, strides, padding), (images, kernel)),
        "input_grad": (lambda g, k: tf.compat.v1.nn.conv2d_backprop_input(
            input_shape, k, g, strides, padding), (grad, kernel)),
        "weight_grad": (lambda x, g: tf.compat.v1.nn.conv2d_backprop_filter(
            x, tuple(layer.kernel.shape), g, strides, padding), (images, grad)),
    }
    seconds = {}
    for name, (fn, args) in kernels.items():
        run = compiled(lambda *a, fn=fn: fn(*a)[0, 0, 0, 0])  # a slice: no reduction timed
        seconds[name] = common.best_seconds(lambda run=run, args=args: run(*args).numpy(),
                                            repeats)
    return seconds


def conv_rows(net, images, dtype: str, passes: dict, repeats: int) -> list[dict]:
    rows = []
    for name, layer, shape in recorded_convs(net, images):
        seconds = kernel_seconds(layer, shape, dtype, repeats)
        k_h, k_w, c_in, c_out = (int(d) for d in layer.kernel.shape)
        side_out = -(-shape[1] // layer.strides[0])  # square images and kernels, 'same'
        flops = shape[0] * conv_flops(side_out, k_h, c_in, c_out)
        rows.append({
            "layer": name, "input": list(shape), "kernel": [k_h, k_w, c_in, c_out],
            "strides": list(layer.strides), "forward_gflop": round(flops / 1e9, 3),
            **{f"{k}_ms": round(v * 1e3, 2) for k, v in seconds.items()},
            "gflops_per_s": {k: round(flops / v / 1e9, 1) for k, v in seconds.items()},
            "step_s": sum(passes[k] * v for k, v in seconds.items()),
            "step_gflop": sum(passes.values()) * flops / 1e9,
        })
    return rows


def conv_ceiling(config, policy: str, repeats: int) -> dict:
    """The step's conv-only time and GFLOP/s, its fraction of the peak, and the per-layer rows."""
    import keras
    from bench_peak import compute_dtype, fraction_of_peak, peak_probe

    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    dtype = compute_dtype(policy)
    call, flops, (peak_dtype, peak_shape) = peak_probe(policy, config.image_size,
                                                       config.batch_size)
    peak_seconds = [common.best_seconds(call, repeats)]  # before and after the kernels
    model = VAECycleGAN(config)
    model.build()
    images = keras.random.normal((config.batch_size, config.image_size, config.image_size,
                                  model.context_slices))
    centre = images[..., model.centre_channel:model.centre_channel + 1]
    generator, discriminator = passes_per_net(config)
    rows = (conv_rows(model.g_ct, images, dtype, generator, repeats)
            + conv_rows(model.d_ct, centre, dtype, discriminator, repeats))
    # Two generators and two discriminators of the same shapes.
    step_s = 2 * sum(row["step_s"] for row in rows)
    step_gflop = 2 * sum(row["step_gflop"] for row in rows)
    peak_seconds.append(common.best_seconds(call, repeats))
    peak = {"peak_gflops": flops / min(peak_seconds) / 1e9, "peak_dtype": peak_dtype,
            "peak_shape": f"{peak_shape}, best of {repeats} before and {repeats} after"}
    for row in rows:
        row["share_of_step"] = round(2 * row["step_s"] / step_s, 3)
        row["step_s"] = round(row["step_s"], 4)
        row["step_gflop"] = round(row["step_gflop"], 2)
    return {
        "conv_only_step_s": round(step_s, 3),
        "conv_gflop_per_step": round(step_gflop, 3),
        "conv_only_gflops": round(step_gflop / step_s, 1),
        **{key.replace("fraction_of_peak", "conv_ceiling_fraction"): value
           for key, value in fraction_of_peak(step_gflop / step_s, peak).items()},
        "layers": sorted(rows, key=lambda row: -row["step_s"]),
    }


def main() -> None:
    parser = common.parser(__doc__, image_size=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from keras_vaegan.backends.precision import apply_precision
    from keras_vaegan.config import Config

    policy = apply_precision(args.mixed_precision)
    config = Config(image_size=args.image_size, batch_size=args.batch_size,
                    mixed_precision=args.mixed_precision)
    result = {"benchmark": "convs", **common.machine(), "policy": policy,
              "image_size": args.image_size, "batch_size": args.batch_size,
              "repeats": args.repeats, **conv_ceiling(config, policy, args.repeats)}
    common.write_result(f"convs-{result['backend']}-{policy}-{args.image_size}px-b{args.batch_size}",
                        result)


if __name__ == "__main__":
    main()
