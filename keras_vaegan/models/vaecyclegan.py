"""``VAECycleGAN``: the two VAE generators, two multi-output PatchGANs and the objective.

Read it top to bottom: the sub-models, the objective (generator and
discriminator losses, written once with ``keras.ops``), then the train and
test steps, which hand the one thing that differs per backend, taking
gradients, to the running backend's steps in ``keras_vaegan.backends``.

    fake_ct  = G_ct(x);   rec_mri = G_mri(fake_ct)
    fake_mri = G_mri(y);  rec_ct  = G_ct(fake_mri)
    L_G = sum_k w_k adv(D_ct_k(fake_ct), real) + sum_k w_k adv(D_mri_k(fake_mri), real)
        + lambda_cycle (|rec_mri - x| + |rec_ct - y|)
        + lambda_identity lambda_cycle (|G_ct(y) - y| + |G_mri(x) - x|)
        + beta_kl (KL(q(z|x) || N(0, I)) + KL(q(z|y) || N(0, I)))
        + lambda_structure (2 - ncc(|grad x|, |grad fake_ct|) - ncc(|grad y|, |grad fake_mri|))
          (structure_kind=mind: |MIND(x) - MIND(fake_ct)| + |MIND(y) - MIND(fake_mri)|)
        + lambda_feature_match (fm(D_ct; y, fake_ct) + fm(D_mri; x, fake_mri))
          (fm: the per-channel feature means of the real and the fake batch, every block)
    L_D = 0.5 sum_k w_k (adv(D_k(real), real) + adv(D_k(pool(fake)), fake))   for each D

The head weights w_k are fixed, or (``disc_head_warmup``) move from the
deepest head alone to the configured ones over the first part of training.
With ``disc_head_temperature`` T > 0 the generator's terms weight head k by
w_k exp(s_k / T), renormalised, where s_k is how much better head k tells
this batch's fakes from the real batch (its loss on the fakes minus on the
reals): the depth at which the discriminator separates best gets the
generator's attention (the discriminators keep w_k).

Images are stacks ``[batch, H, W, K]`` with K = ``config.context_slices``
(channel ``K // 2`` the slice itself, the others its neighbours): every
generator maps K channels to K, the discriminators judge K-channel stacks and
the history pools hold them. Each term above is a mean over all K channels.
K = 1 is the plain 2-D model with its original weight layout.
"""

from __future__ import annotations

import keras

from keras_vaegan import backends
from keras_vaegan.config import Config
from keras_vaegan.models.discriminator import MultiHeadPatchDiscriminator
from keras_vaegan.models.generator import VAEGenerator
from keras_vaegan.models.history_pool import HistoryPool
from keras_vaegan.models.losses import (
    adaptive_head_weights,
    adversarial_loss,
    adversarial_terms,
    feature_matching_loss,
    kl_divergence,
    l1_loss,
    structure_loss,
    weighted_sum,
)
from keras_vaegan.models.mirror import translated
from keras_vaegan.models.optimizers import (
    OPTIMIZER_NAMES,
    OptimizerGroup,
    make_optimizers,
    with_loss_scaling,
)

LOSS_TERMS = ("g_loss", "adv_ct", "adv_mri", "cycle", "identity", "kl", "structure",
              "feature_match", "d_ct", "d_mri")


@keras.saving.register_keras_serializable(package="keras_vaegan")
class VAECycleGAN(keras.Model):
    """Unpaired MRI <-> CT translation. ``model(mri)`` returns synthetic CT in [-1, 1]."""

    def __init__(self, config: Config | dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = Config()
        elif isinstance(config, dict):
            config = Config.from_dict(config)
        self.settings = config
        c = config
        gen = dict(filters=c.gen_filters, latent_downsample=c.latent_downsample,
                   res_blocks=c.gen_res_blocks, latent_channels=c.latent_channels,
                   skip_connections=c.skip_connections, upsampling=c.upsampling,
                   padding=c.padding, channels=c.context_slices)
        disc = dict(filters=c.disc_filters, heads=c.disc_heads, image_size=c.image_size,
                    min_map_size=c.disc_min_map_size, high_pass=c.disc_high_pass,
                    norm=c.disc_norm)
        self.g_ct = VAEGenerator(**gen, seed=c.seed + 1, name="g_ct")
        self.g_mri = VAEGenerator(**gen, seed=c.seed + 2, name="g_mri")
        self.d_ct = MultiHeadPatchDiscriminator(**disc, name="d_ct")
        self.d_mri = MultiHeadPatchDiscriminator(**disc, name="d_mri")
        self.pool_ct = HistoryPool(c.pool_size, c.image_size, c.batch_size, seed=c.seed + 3,
                                   channels=c.context_slices, name="pool_ct", dtype="float32")
        self.pool_mri = HistoryPool(c.pool_size, c.image_size, c.batch_size, seed=c.seed + 4,
                                    channels=c.context_slices, name="pool_mri", dtype="float32")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}
        self._steps = backends.get()

    # --- sub-models ------------------------------------------------------------
    def build(self, input_shape=None):
        k = self.context_slices
        image = (None, None, None, k)
        for net in (self.g_ct, self.g_mri):
            net.build(image)
        crop = (None, self.settings.image_size, self.settings.image_size, k)
        for net in (self.d_ct, self.d_mri):
            net.build(crop)
        self.pool_ct.build(crop)
        self.pool_mri.build(crop)
        self.built = True

    @property
    def total_stride(self) -> int:
        return self.g_ct.total_stride

    @property
    def context_slices(self) -> int:
        """K, the channels (slices of a stack) every sub-model takes and the generators return."""
        return int(self.settings.context_slices)

    @property
    def centre_channel(self) -> int:
        """The channel of a stack that is the slice itself (K // 2): what predict keeps."""
        return self.context_slices // 2

    def call(self, inputs, training=False):
        return self.g_ct(inputs, training=training, sample=False)[0]

    def translate(self, images, direction: str = "mri2ct", sample: bool = False):
        """Stacks [b, h, w, K] in [-1, 1] -> translated stacks [b, h, w, K] (z = mu unless sample).

        Mirror-averaged (``models.mirror``) and shift-averaged
        (``models.shifts``) unless the config's ``mirror_average`` and
        ``shift_average`` are off: what ``predict`` returns.
        """
        net = self.g_ct if direction == "mri2ct" else self.g_mri
        return translated(net, images, sample, self.settings.mirror_average,
                          self.settings.shift_average)

    @property
    def generator_updates(self) -> list:
        """(sub-model, optimizer) pairs updated by L_G, in order."""
        return [(self.g_ct, self.g_ct_optimizer), (self.g_mri, self.g_mri_optimizer)]

    @property
    def discriminator_updates(self) -> list:
        """(sub-model, optimizer) pairs updated by L_D, in order."""
        return [(self.d_ct, self.d_ct_optimizer), (self.d_mri, self.d_mri_optimizer)]

    @property
    def generator_variables(self) -> list:
        return self.g_ct.trainable_variables + self.g_mri.trainable_variables

    @property
    def discriminator_variables(self) -> list:
        return self.d_ct.trainable_variables + self.d_mri.trainable_variables

    # --- compile ----------------------------------------------------------------
    def compile(self, g_ct_optimizer=None, g_mri_optimizer=None, d_ct_optimizer=None,
                d_mri_optimizer=None, adversarial_loss: str | None = None, **kwargs):
        """Take the four optimizers (defaults: Adam + CycleGAN schedule from the config)."""
        defaults = make_optimizers(self.settings)
        given = dict(g_ct_optimizer=g_ct_optimizer, g_mri_optimizer=g_mri_optimizer,
                     d_ct_optimizer=d_ct_optimizer, d_mri_optimizer=d_mri_optimizer)
        float16 = keras.mixed_precision.dtype_policy().name == "mixed_float16"
        for name in OPTIMIZER_NAMES:
            opt = keras.optimizers.get(given[name] if given[name] is not None else defaults[name])
            setattr(self, name, with_loss_scaling(opt) if float16 else opt)
        self.adversarial_kind = adversarial_loss or self.settings.adversarial_loss
        backend = keras.backend.backend()
        kwargs.setdefault("jit_compile", self.settings.jit_compile if backend == "tensorflow"
                          else backend == "jax")
        super().compile(optimizer=self.g_ct_optimizer, auto_scale_loss=False, **kwargs)
        if not self.built:
            self.build()
        self.optimizer = OptimizerGroup(
            [getattr(self, name) for name in OPTIMIZER_NAMES],
            [self.g_ct.trainable_variables, self.g_mri.trainable_variables,
             self.d_ct.trainable_variables, self.d_mri.trainable_variables])
        self.optimizer.build()

    def get_compile_config(self) -> dict:
        config = {name: keras.saving.serialize_keras_object(getattr(self, name))
                  for name in OPTIMIZER_NAMES if hasattr(self, name)}
        config["adversarial_loss"] = getattr(self, "adversarial_kind", None)
        return config

    def compile_from_config(self, config: dict) -> None:
        optimizers = {name: keras.saving.deserialize_keras_object(config[name])
                      for name in OPTIMIZER_NAMES if name in config}
        self.compile(**optimizers, adversarial_loss=config.get("adversarial_loss"))

    # --- the objective ------------------------------------------------------------
    def current_head_weights(self, training: bool = True) -> list:
        """The discriminator heads' weights at this step, deepest last.

        With ``disc_head_warmup`` the weights start on the deepest head alone
        (its patches see the most context: where bone and air are) and move
        linearly to ``disc_head_weights`` over that fraction of all steps, so
        the shallow heads' texture only counts once the layout is there. The
        step is the generator optimizer's counter, read as a variable so a
        compiled step and a resumed run follow it. Outside training, and
        with no warmup, the configured weights.
        """
        c = self.settings
        final = list(c.head_weights)
        warmup_steps = c.disc_head_warmup * c.total_steps
        if not training or warmup_steps <= 0 or len(final) == 1:
            return final
        step = keras.ops.cast(self.g_ct_optimizer.iterations, "float32")
        progress = keras.ops.minimum(step / warmup_steps, 1.0)
        deepest = [0.0] * (len(final) - 1) + [1.0]
        return [progress * w + (1.0 - progress) * d for w, d in zip(final, deepest)]

    def generator_terms(self, disc, fake, real, kind: str, training: bool = True):
        """(adversarial term, feature-matching term) against one discriminator.

        The adversarial term weights the heads by ``current_head_weights``,
        or with ``disc_head_temperature`` > 0 tilts those weights towards the
        heads that separate this batch's fakes from the real images best
        (``adaptive_head_weights``). With ``lambda_feature_match`` > 0 the
        second term compares the discriminator's features of the fakes and
        the real batch (``feature_matching_loss``), else it is 0. ``real`` is
        judged once, and only when one of the two reads it.
        """
        c = self.settings
        weights = self.current_head_weights(training)
        fake_features, fake_logits = disc.features_and_logits(fake, training=training)
        head_losses = adversarial_terms(fake_logits, True, kind)
        adaptive = c.disc_head_temperature > 0 and len(head_losses) > 1
        matching = c.lambda_feature_match > 0
        no_term = keras.ops.zeros((), "float32")
        if not (adaptive or matching):
            return weighted_sum(weights, head_losses), no_term
        real_features, real_logits = disc.features_and_logits(real, training=training)
        if adaptive:
            real_losses = adversarial_terms(real_logits, True, kind)
            weights = adaptive_head_weights(head_losses, real_losses, weights,
                                            c.disc_head_temperature)
        matched = feature_matching_loss(real_features, fake_features) if matching else no_term
        return weighted_sum(weights, head_losses), matched

    def generator_objective(self, mri, ct, training: bool = True):
        """L_G and its terms; also returns the fakes the discriminators will judge.

        The latent is sampled while training unless ``vae_sampling`` is off.
        With ``judge_mean`` the fakes (what the discriminators and the
        structure term see) are the ``z = mu`` translations and the sampled
        ones only go round the cycle.
        """
        c = self.settings
        sample = training and c.vae_sampling

        def translate(generator, images):
            """(what the discriminators judge, what goes round the cycle, mu, log_var)."""
            if sample and c.judge_mean:
                return generator.mean_and_sample(images, training)
            image, mu, log_var = generator(images, training=training, sample=sample)
            return image, image, mu, log_var

        fake_ct, drawn_ct, mu_x, log_var_x = translate(self.g_ct, mri)
        rec_mri = self.g_mri(drawn_ct, training=training, sample=sample)[0]
        fake_mri, drawn_mri, mu_y, log_var_y = translate(self.g_mri, ct)
        rec_ct = self.g_ct(drawn_mri, training=training, sample=sample)[0]
        kind = getattr(self, "adversarial_kind", c.adversarial_loss)
        adv_ct, match_ct = self.generator_terms(self.d_ct, fake_ct, ct, kind, training)
        adv_mri, match_mri = self.generator_terms(self.d_mri, fake_mri, mri, kind, training)
        terms = {
            "adv_ct": adv_ct,
            "adv_mri": adv_mri,
            "feature_match": match_ct + match_mri,
            "cycle": l1_loss(rec_mri, mri) + l1_loss(rec_ct, ct),
            "kl": kl_divergence(mu_x, log_var_x) + kl_divergence(mu_y, log_var_y),
        }
        if c.lambda_identity > 0:
            same_ct = self.g_ct(ct, training=training, sample=sample)[0]
            same_mri = self.g_mri(mri, training=training, sample=sample)[0]
            terms["identity"] = l1_loss(same_ct, ct) + l1_loss(same_mri, mri)
        else:
            terms["identity"] = keras.ops.zeros((), "float32")
        if c.lambda_structure > 0:
            terms["structure"] = (structure_loss(mri, fake_ct, c.structure_scales, c.structure_kind)
                                  + structure_loss(ct, fake_mri, c.structure_scales,
                                                   c.structure_kind))
        else:
            terms["structure"] = keras.ops.zeros((), "float32")
        terms["g_loss"] = (terms["adv_ct"] + terms["adv_mri"]
                           + c.lambda_cycle * terms["cycle"]
                           + c.lambda_identity * c.lambda_cycle * terms["identity"]
                           + c.beta_kl * terms["kl"]
                           + c.lambda_structure * terms["structure"]
                           + c.lambda_feature_match * terms["feature_match"])
        return terms["g_loss"], terms, (fake_ct, fake_mri)

    def discriminator_objective(self, mri, ct, fake_ct, fake_mri, training: bool = True):
        """L_D for each discriminator (fakes already drawn from the history pool)."""
        kind = getattr(self, "adversarial_kind", self.settings.adversarial_loss)
        weights = self.current_head_weights(training)

        def one(disc, real, fake):
            return 0.5 * (adversarial_loss(disc(real, training=training), True, kind, weights)
                          + adversarial_loss(disc(fake, training=training), False, kind,
                                             weights))

        return {"d_ct": one(self.d_ct, ct, fake_ct), "d_mri": one(self.d_mri, mri, fake_mri)}

    def pooled_fakes(self, fake_ct, fake_mri):
        """Fakes to show the discriminators: current ones mixed with the history pool."""
        stop = keras.ops.stop_gradient
        return self.pool_ct(stop(fake_ct)), self.pool_mri(stop(fake_mri))

    def evaluation_terms(self, mri, ct) -> dict:
        """All loss terms with the deterministic latent and without the pool."""
        _, terms, (fake_ct, fake_mri) = self.generator_objective(mri, ct, training=False)
        terms.update(self.discriminator_objective(mri, ct, fake_ct, fake_mri, training=False))
        return terms

    # --- steps --------------------------------------------------------------------
    @property
    def metrics(self) -> list:
        return list(self.trackers.values())

    def update_trackers(self, terms: dict) -> dict:
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, *args):
        return self._steps.train_step(self, *args)

    def test_step(self, *args):
        return self._steps.test_step(self, *args)

    # --- serialisation ----------------------------------------------------------
    def get_config(self) -> dict:
        return {"config": self.settings.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

