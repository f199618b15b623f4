"""Run one backend's half of a cross-backend test (``KERAS_BACKEND`` picks it).

    python backend_probe.py train WORKDIR     train a tiny run and save model.keras + its predictions
    python backend_probe.py check WORKDIR     load the other backends' models, predict; take one
                                              generator step from the shared initial weights

Results are .npy/.json files in WORKDIR, compared by test_cross_backend.py.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from conftest import TINY, ring_batch  # noqa: E402

from keras_vaegan.config import Config  # noqa: E402
from keras_vaegan.models.vaecyclegan import VAECycleGAN  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
# the KL term weighted as in a VAE run, so its gradient is compared across backends too
STEP_CONFIG = dict(TINY, vae_sampling=False, beta_kl=1e-3, pool_size=2, learning_rate_g=1e-3,
                   learning_rate_d=1e-3, decay_start=1.0)


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def predictions(model, mri):
    return np.stack([to_np(model.translate(mri, "mri2ct")), to_np(model.translate(mri, "ct2mri"))])


def train(workdir: str, backend: str) -> None:
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    mri, ct = ring_batch(32)
    model = VAECycleGAN(Config(**TINY))
    model.compile()
    dataset = tf.data.Dataset.from_tensors((mri, ct)).repeat()
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)
    model.save(os.path.join(workdir, f"{backend}.keras"))
    np.save(os.path.join(workdir, f"{backend}-own.npy"), predictions(model, mri))


def step_terms(weights: str) -> dict:
    """Loss terms at the shared weights, then again after one train step."""
    import tensorflow as tf

    mri, ct = ring_batch(32)
    model = VAECycleGAN(Config(**STEP_CONFIG))
    model.compile()
    model.load_weights(weights)
    before = {k: float(to_np(v)) for k, v in model.evaluation_terms(mri, ct).items()}
    dataset = tf.data.Dataset.from_tensors((mri, ct)).repeat()
    logs = model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0).history
    after = {k: float(to_np(v)) for k, v in model.evaluation_terms(mri, ct).items()}
    return {"before": before, "step": {k: v[0] for k, v in logs.items()}, "after": after}


def check(workdir: str, backend: str) -> None:
    mri, _ = ring_batch(32)
    for source in BACKENDS:
        path = os.path.join(workdir, f"{source}.keras")
        if source != backend and os.path.exists(path):
            model = keras.saving.load_model(path, safe_mode=True)
            np.save(os.path.join(workdir, f"{source}-on-{backend}.npy"), predictions(model, mri))
    with open(os.path.join(workdir, f"step-{backend}.json"), "w") as handle:
        json.dump(step_terms(os.path.join(workdir, "initial.weights.h5")), handle)


def save_initial_weights(workdir: str) -> None:
    keras.utils.set_random_seed(2)
    model = VAECycleGAN(Config(**STEP_CONFIG))
    model.compile()
    model.save_weights(os.path.join(workdir, "initial.weights.h5"))


if __name__ == "__main__":
    mode, workdir = sys.argv[1], sys.argv[2]
    backend = keras.backend.backend()
    {"train": train, "check": check}[mode](workdir, backend)
