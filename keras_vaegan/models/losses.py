"""The VAE-CycleGAN loss terms, written once with ``keras.ops``.

Every backend's step module calls these same functions, so the
objective is identical on TensorFlow, JAX and PyTorch. Each term is a
float32 scalar whatever the compute dtype (mixed precision keeps losses in
float32).
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops


def _f32(x):
    return ops.cast(x, "float32")


def adversarial_terms(predictions: Sequence, target_is_real: bool, kind: str = "lsgan") -> list:
    """The adversarial loss of each discriminator head, in the heads' order (deepest last).

    ``lsgan``: mean squared distance of the patch map to 1 (real) or 0 (fake).
    ``bce``: binary cross-entropy on logits against the same targets.
    """
    terms = []
    for pred in predictions:
        pred = _f32(pred)
        target = ops.ones_like(pred) if target_is_real else ops.zeros_like(pred)
        if kind == "lsgan":
            terms.append(ops.mean(ops.square(pred - target)))
        elif kind == "bce":
            terms.append(ops.mean(keras.losses.binary_crossentropy(target, pred,
                                                                   from_logits=True)))
        else:
            raise ValueError(f"unknown adversarial loss '{kind}'")
    return terms


def adversarial_loss(predictions: Sequence, target_is_real: bool, kind: str = "lsgan",
                     head_weights: Sequence | None = None):
    """Weighted sum over discriminator heads of the per-head adversarial loss."""
    terms = adversarial_terms(predictions, target_is_real, kind)
    if head_weights is None:
        head_weights = [1.0 / len(terms)] * len(terms)
    return weighted_sum(head_weights, terms)


def feature_matching_loss(real_features: Sequence, fake_features: Sequence):
    """Mean over blocks of |E f(real) - E f(fake)|, E a per-channel mean over batch and space.

    Salimans et al. 2016's feature matching: the batches are unpaired, so
    it compares the discriminator's features as distributions (their
    per-channel means), not pixel by pixel. The real side is held constant.
    The first block has no norm, so its means say how much edge each filter
    finds; on the phantom they matched within batch-to-batch noise already.
    """
    total = 0.0
    for real, fake in zip(real_features, fake_features):
        real_mean = ops.stop_gradient(ops.mean(_f32(real), axis=(0, 1, 2)))
        total = total + ops.mean(ops.abs(ops.mean(_f32(fake), axis=(0, 1, 2)) - real_mean))
    return total / len(real_features)


def weighted_sum(weights: Sequence, terms: Sequence):
    """``sum_k weights[k] * terms[k]``: the heads' terms combined."""
    total = 0.0
    for weight, term in zip(weights, terms):
        total = total + weight * term
    return total


def adaptive_head_weights(fake_losses: Sequence, real_losses: Sequence, prior: Sequence,
                          temperature: float) -> list:
    """Weights ``prior_k exp(s_k / T)``, normalised to sum 1, where ``s_k`` is head k's separation.

    ``s_k`` is the generator's adversarial loss on the fakes minus the same
    loss on real images: how much more head k believes the real ones, which
    a head's overall bias (every image called fake, say) does not change.
    The generator is pushed hardest at the depth where the discriminator
    tells its fakes apart best; which depth that is can differ between
    anatomies and change during training, where fixed weights cannot. The
    separations go through ``stop_gradient``: the weights steer the
    generator's gradient and are not themselves a way for it to lower its
    loss. A large ``T`` gives back ``prior``.
    """
    separation = ops.stack([ops.stop_gradient(_f32(fake) - _f32(real))
                            for fake, real in zip(fake_losses, real_losses)])
    scaled = (separation - ops.max(separation)) / temperature  # <= 0: exp cannot overflow
    prior = ops.stack([ops.convert_to_tensor(w, "float32") for w in prior])
    weighted = prior * ops.exp(scaled)
    weights = weighted / ops.sum(weighted)
    return [weights[k] for k in range(len(fake_losses))]


def l1_loss(prediction, target):
    """Mean absolute difference: the cycle and identity terms."""
    return ops.mean(ops.abs(_f32(prediction) - _f32(target)))


def kl_divergence(mu, log_var):
    """KL(N(mu, exp(log_var)) || N(0, I)), averaged over latent elements.

    Averaging (not summing) keeps ``beta_kl`` on the same per-pixel scale as
    the L1 terms, whatever the latent size.
    """
    mu = _f32(mu)
    log_var = _f32(log_var)
    return ops.mean(0.5 * (ops.square(mu) + ops.exp(log_var) - 1.0 - log_var))


def _gradient_magnitude(images):
    """Forward-difference gradient magnitude of NHWC images, (N, H-1, W-1, C)."""
    images = _f32(images)
    dy = images[:, 1:, :-1, :] - images[:, :-1, :-1, :]
    dx = images[:, :-1, 1:, :] - images[:, :-1, :-1, :]
    return ops.sqrt(ops.square(dx) + ops.square(dy) + 1e-8)


def structure_loss(inputs, translated, scales: int = 1, kind: str = "gradient"):
    """1 - the correlation of the two images' gradient magnitudes, averaged over the batch.

    ``scales`` > 1 averages that over the images and ``scales - 1`` successive
    2x average-pooled copies of them: at full resolution the term sees the
    skull's thin tables, coarser it sees the whole bone and its air cells as
    one structure, so a translation that blurs or shifts the skull by a pixel
    still gets a gradient towards the right place.

    Why: MRI and CT disagree on which tissue is bright (bone and air are both
    dark on MRI) but agree on where tissue boundaries are. Correlating edge
    strength, not signed gradients, ignores that contrast flip and asks the
    translation to keep the skull's edges where the input has them, which
    neither the adversarial nor the cycle term does (a generator may move an
    edge as long as its partner moves it back).

    ``kind="mind"`` compares MIND descriptors instead (``mind_distance``).
    """
    term = mind_distance if kind == "mind" else _structure_term
    total = term(inputs, translated)
    for _ in range(1, int(scales)):
        inputs = ops.average_pool(_f32(inputs), 2, strides=2, padding="valid")
        translated = ops.average_pool(_f32(translated), 2, strides=2, padding="valid")
        total = total + term(inputs, translated)
    return total / float(scales)


MIND_OFFSETS = ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def mind_descriptors(images):
    """MIND (Heinrich et al. 2012): each pixel's patch distances to its 8 neighbours' patches.

    ``exp(-D_r / V)``, where ``D_r`` is the 3x3 box-mean squared difference
    between the image and itself shifted by ``r`` and ``V`` their mean over
    the offsets (clipped to [1e-3, 1e3] times its image mean, so flat air and
    strong edges stay finite), each pixel's vector divided by its largest
    entry. It describes the local pattern of self-similarity, not intensity,
    so an MRI and its CT share it where their boundaries agree whichever
    tissue is bright. ``[N, H - 4, W - 4, C * 8]`` (valid pixels only: no
    padding to invent structure at the border).
    """
    images = _f32(images)
    height, width = images.shape[1], images.shape[2]
    centre = images[:, 1:height - 1, 1:width - 1, :]
    distances = []
    for dy, dx in MIND_OFFSETS:
        shifted = images[:, 1 + dy:height - 1 + dy, 1 + dx:width - 1 + dx, :]
        distances.append(ops.average_pool(ops.square(centre - shifted), 3, strides=1,
                                          padding="valid"))
    distances = ops.stack(distances, axis=-1)  # [N, H-4, W-4, C, 8]
    variance = ops.mean(distances, axis=-1, keepdims=True)
    typical = ops.mean(variance, axis=(1, 2, 3, 4), keepdims=True)
    variance = ops.clip(variance, 1e-3 * typical + 1e-12, 1e3 * typical + 1e-12)
    descriptors = ops.exp(-distances / variance)
    descriptors = descriptors / ops.max(descriptors, axis=-1, keepdims=True)
    return ops.reshape(descriptors, (-1, height - 4, width - 4,
                                     images.shape[3] * len(MIND_OFFSETS)))


def mind_distance(inputs, translated):
    """Mean absolute difference of the two images' MIND descriptors (0: the same structure).

    The structure-consistency term of Yang et al. (2018) for unpaired MR-to-CT
    CycleGANs: unlike the gradient-magnitude correlation it is local (each
    pixel's pattern normalised by its own neighbourhood), so a faint inner
    skull table counts as much as the bright outer edge.
    """
    return ops.mean(ops.abs(mind_descriptors(inputs) - mind_descriptors(translated)))


def _structure_term(inputs, translated):
    """One scale of ``structure_loss``."""
    a = _gradient_magnitude(inputs)
    b = _gradient_magnitude(translated)
    a = a - ops.mean(a, axis=(1, 2, 3), keepdims=True)
    b = b - ops.mean(b, axis=(1, 2, 3), keepdims=True)
    covariance = ops.mean(a * b, axis=(1, 2, 3))
    spread = ops.sqrt(ops.mean(ops.square(a), axis=(1, 2, 3))
                      * ops.mean(ops.square(b), axis=(1, 2, 3)) + 1e-8)
    return ops.mean(1.0 - covariance / spread)
