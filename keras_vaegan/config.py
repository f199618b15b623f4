"""Every setting of a run in one dataclass, with JSON load/save and validation.

A run directory keeps its ``config.json``; ``predict`` and ``--resume`` read
it back, so the model, the units and the schedule are rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass

from keras_vaegan.errors import VAEGANError

ADVERSARIAL_LOSSES = ("lsgan", "bce")
UPSAMPLING_MODES = ("bilinear", "nearest", "transpose")
AUGMENT_RESAMPLING = ("lanczos", "bilinear")
MIXED_PRECISION = ("auto", "off", "float16", "bfloat16")
STRATEGIES = ("auto", "none", "mirrored", "multiworker")
PHANTOM_KINDS = ("classic", "head")  # data.phantom, data.phantom_head
GENERATOR_PADDING = ("zeros", "reflect")
STRUCTURE_KINDS = ("gradient", "mind")
DISC_NORMS = ("instance", "spectral")
MAX_CONTEXT_SLICES = 15  # 2.5-D stacks wider than this are thicker than the anatomy they help

# a run folder: what fit writes and predict, evaluate and export read
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"


@dataclass
class Config:
    """All settings of a VAE-CycleGAN run. Defaults train on the phantom in minutes."""

    # --- data -----------------------------------------------------------------
    image_size: int = 64  # training crop side in pixels (native resolution)
    batch_size: int = 4
    ct_window_hu: tuple[float, float] = (-1024.0, 3071.0)  # HU mapped to [-1, 1]
    mri_percentiles: tuple[float, float] = (0.5, 99.5)  # robust MRI range -> [-1, 1]
    phantom_subjects: int = 24  # default dataset when no data is given
    phantom_slices: int = 8  # slices per phantom subject
    phantom_size: int = 64  # phantom slice side in pixels
    phantom: str = "classic"  # classic (the defaults were tuned on it) | head: the harder head
    # (data/phantom_head.py: air cells in bone, sulci, calcifications, thick slices)
    shuffle_buffer: int = 512
    context_slices: int = 1  # K (odd): 2.5-D input, each slice with its K // 2 neighbours on
    # either side (in the volume's axial order) as K channels; the generators map the K-slice
    # stack to a K-slice stack and predict keeps the centre one. 1: plain 2-D slices
    data_cache: str = "auto"  # folder data decoded once to an on-disk slice cache (float16 model
    # units, data/slice_cache.py): auto ($KERAS_VAEGAN_CACHE, else ~/.cache/keras-vaegan), a
    # folder, or none (every slice in memory, decoded again each run)
    # volumes (NIfTI, DICOM): keep only axial slices that show some body
    body_slices_only: bool = True
    body_threshold_hu: float = -500.0  # CT voxels above this are body
    body_threshold_mri: float = 0.1  # MRI voxels above this fraction of the volume's robust range
    body_min_fraction: float = 0.02  # a slice is kept when this fraction of its pixels is body
    # --- augmentation (keras-cv) -----------------------------------------------
    augment: bool = True
    augment_copies: int = 0  # >0: the seed's "N fixed augmented copies per sample"
    flip: bool = True  # horizontal (left-right) flips
    rotation_deg: float = 5.0
    zoom: float = 0.1  # relative zoom range (+-)
    translation: float = 0.05  # relative shift range (+-)
    mri_intensity_jitter: float = 0.1  # MRI contrast/brightness jitter (+-)
    augment_resampling: str = "bilinear"  # | lanczos: 3x Lanczos-5 supersampled, keeps thin
    # edges (a 3-degree rotation and back costs a phantom CT 23 HU against 64) but tied on
    # the quality benchmark (113 vs 114 HU, benchmarks/RESULTS.md)
    # --- generator (VAE encoder-decoder) ---------------------------------------
    gen_filters: int = 32  # filters of the first encoder stage; 48 (twice the FLOPs, 1.6x a
    # step) tied at 2,000 steps on both phantoms (benchmarks/RESULTS.md)
    latent_downsample: int = 2  # latent is 1/latent_downsample of the image side; 2 beat 4 on
    # the phantom with the structure term on (114/110 vs 126/129 HU, benchmarks/RESULTS.md)
    gen_res_blocks: int = 4  # residual blocks in the encoder and again in the decoder
    latent_channels: int = 64
    vae_sampling: bool = False  # True (with beta_kl=1e-3): the VAE, z = mu + sigma * eps while
    # training; False: z = mu (a deterministic latent), which tied the VAE on the classic phantom
    # (105 vs 109 HU, three seeds) and won on the head one (benchmarks/RESULTS.md)
    judge_mean: bool = False  # True (with vae_sampling): the discriminators and the structure
    # term see the z = mu translation (predict's, before mirror_average); the sampled one goes
    # round the cycle
    skip_connections: bool = False  # U-Net skips around the latent (lets G ignore z)
    upsampling: str = "bilinear"  # bilinear | nearest | transpose
    padding: str = "zeros"  # zeros | reflect: how every generator convolution pads its border
    # (zeros are mid-grey in model units, ~+1000 HU: a bright frame the stem sees)
    # --- discriminator (deep multi-output PatchGAN) -----------------------------
    disc_filters: tuple[int, ...] = (64, 128, 256, 512, 512)
    disc_heads: int = 3  # real/fake heads after the last K blocks
    disc_head_weights: tuple[float, ...] | None = None  # None: equal weights
    disc_head_warmup: float = 0.0  # fraction of all steps over which the head weights move
    # linearly from the deepest head alone to disc_head_weights (coarse to fine); 0: off
    # (0.5 lost on both phantoms: 112 vs 107 and 157 vs 126 HU, benchmarks/RESULTS.md)
    disc_head_temperature: float = 0.0  # >0: the generator's adversarial term weights each
    # head by the head weights times exp(s / T), renormalised, s: how much better that head
    # tells this batch's fakes from the reals (models/losses.adaptive_head_weights); 0: off
    disc_min_map_size: int = 4  # stop striding below this feature-map side
    disc_high_pass: bool = False  # True: the discriminators also see a fixed Laplacian of the
    # image as a second channel (high frequencies: thin bone, edges)
    disc_norm: str = "instance"  # instance (after every block but the first) | spectral: every
    # discriminator convolution, heads included, divided by its largest singular value (a
    # 1-Lipschitz discriminator, Miyato et al. 2018) and no instance norm; it lost on both
    # phantoms (155 vs 107 and 205 vs 126 HU, benchmarks/RESULTS.md)
    # --- objective ----------------------------------------------------------------
    adversarial_loss: str = "bce"  # bce | lsgan: cross-entropy on logits tied least squares on
    # the classic phantom (100/121/105 vs 114/110/110 HU) and beat it on the head one (130/128
    # vs 149/166 HU; benchmarks/RESULTS.md)
    lambda_cycle: float = 10.0  # 20 tied, 5 lost (benchmarks/RESULTS.md)
    lambda_identity: float = 0.0  # times lambda_cycle; 0: off (CycleGAN uses 0.5, but asking
    # the MRI->CT generator to leave a CT unchanged hurt here: 137 vs 162 HU, benchmarks/RESULTS.md)
    beta_kl: float = 0.0  # weight of the KL term; 1e-3 with vae_sampling=true (the VAE)
    lambda_structure: float = 1.0  # keep the input's edges (gradient-magnitude correlation); 0:
    # off, as in CycleGAN; on, the phantom's sCT improved 137/160 -> 126/129 HU (RESULTS.md)
    structure_kind: str = "gradient"  # gradient (gradient-magnitude correlation) | mind
    # (MIND self-similarity descriptors, L1; with lambda_structure=5 it tied on both phantoms
    # over three seeds, 106 vs 105 and 119 vs 117 HU mean: benchmarks/RESULTS.md)
    structure_scales: int = 1  # >1: the structure term averaged over this many scales, each a
    # 2x average-pool of the previous
    lambda_feature_match: float = 0.0  # >0: the generators also match the discriminators'
    # per-channel feature means of the real batch, every block (Salimans et al. 2016); 0: off
    # (10 tied: 100/103 vs 107/100 and 126 vs 126 HU, benchmarks/RESULTS.md)
    pool_size: int = 50
    # --- optimisation -------------------------------------------------------------
    learning_rate_g: float = 2e-4
    learning_rate_d: float = 2e-4
    beta_1: float = 0.5
    beta_2: float = 0.999
    epochs: int = 10
    steps_per_epoch: int = 50
    decay_start: float = 0.5  # fraction of all steps after which the LR decays to 0
    ema_momentum: float = 0.0  # >0: the saved generators are this moving average of their
    # weights (0.995 averages about the last 200 steps); 0: the last step's weights
    # --- prediction ---------------------------------------------------------------
    mirror_average: bool = True  # predict, evaluate, export and the snapshots return the mean
    # of the translations of each slice and of its left-right mirror (models/mirror.py): a
    # second pass per slice; 6 HU better after 2,000 steps on the phantom, up to 30 HU at
    # earlier checkpoints (benchmarks/RESULTS.md)
    shift_average: bool = True  # each of those passes is also the mean over the generator's
    # phases (the slice as it is and padded by one pixel each side, models/shifts.py): twice
    # the passes; 1-2 HU better than the mirror alone on the classic phantom, 1.5-7 on the
    # head phantom, on every one of ten runs (benchmarks/RESULTS.md)
    # --- run ----------------------------------------------------------------------
    seed: int = 0
    mixed_precision: str = "auto"  # auto: float16 on GPU, bfloat16 on a bf16 CPU, else float32
    strategy: str = "none"
    jit_compile: bool = False
    snapshot_count: int = 4  # images in each snapshot grid
    checkpoint_every: int = 0  # >0: also keep every Nth epoch's checkpoint (a long run's
    # trajectory, each one a run folder through training.checkpoints.checkpoint_as_run);
    # 0: only the last two, what --resume needs
    # --- units recorded by the data loader (so predict inverts them exactly) ---
    mri_units: str = "percentile"  # percentile | uint8
    ct_units: str = "hu"  # hu | uint8
    precision_policy: str = ""  # the dtype policy the run trained with (set by fit)
    mri_reference_range: tuple[float, float] = (0.0, 1000.0)  # typical MRI percentile range,
    # used to write synthetic MRI (ct2mri) in the training set's intensity scale

    # ---------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_weights(self) -> tuple[float, ...]:
        """Weights of the discriminator heads, deepest last."""
        if self.disc_head_weights is None:
            return tuple(1.0 / self.disc_heads for _ in range(self.disc_heads))
        return tuple(float(w) for w in self.disc_head_weights)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def validate(self) -> None:
        """Raise VAEGANError naming the first setting that is out of range."""

        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise VAEGANError(None, f"config key '{key}': {why}")

        for key in ("image_size", "batch_size", "gen_filters", "latent_channels",
                    "epochs", "steps_per_epoch", "phantom_subjects",
                    "phantom_slices", "phantom_size", "disc_heads",
                    "disc_min_map_size", "shuffle_buffer", "snapshot_count"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("gen_res_blocks", "pool_size", "augment_copies", "seed", "checkpoint_every"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        need(self.image_size >= 16, "image_size", "must be >= 16 pixels")
        ld = self.latent_downsample
        need(ld >= 1 and (ld & (ld - 1)) == 0, "latent_downsample", "must be a power of two")
        need(self.image_size % ld == 0, "image_size",
             f"must be a multiple of latent_downsample ({ld})")
        lo, hi = self.ct_window_hu
        need(lo < hi, "ct_window_hu", "low must be below high")
        plo, phi = self.mri_percentiles
        need(0 <= plo < phi <= 100, "mri_percentiles", "need 0 <= low < high <= 100")
        need(0 <= self.body_threshold_mri < 1, "body_threshold_mri", "must be in [0, 1)")
        need(0 <= self.body_min_fraction <= 1, "body_min_fraction", "must be in [0, 1]")
        need(len(self.disc_filters) >= 1, "disc_filters", "needs at least one block")
        need(self.disc_heads <= len(self.disc_filters), "disc_heads",
             f"at most len(disc_filters) = {len(self.disc_filters)}")
        if self.disc_head_weights is not None:
            need(len(self.disc_head_weights) == self.disc_heads, "disc_head_weights",
                 f"needs {self.disc_heads} values (one per head)")
            need(all(w >= 0 for w in self.disc_head_weights) and sum(self.disc_head_weights) > 0,
                 "disc_head_weights", "must be >= 0 and not all zero")
        need(self.adversarial_loss in ADVERSARIAL_LOSSES, "adversarial_loss",
             f"one of {', '.join(ADVERSARIAL_LOSSES)}")
        need(self.augment_resampling in AUGMENT_RESAMPLING, "augment_resampling",
             f"one of {', '.join(AUGMENT_RESAMPLING)}")
        need(self.upsampling in UPSAMPLING_MODES, "upsampling",
             f"one of {', '.join(UPSAMPLING_MODES)}")
        need(self.mixed_precision in MIXED_PRECISION, "mixed_precision",
             f"one of {', '.join(MIXED_PRECISION)}")
        need(self.strategy in STRATEGIES, "strategy", f"one of {', '.join(STRATEGIES)}")
        need(self.phantom in PHANTOM_KINDS, "phantom", f"one of {', '.join(PHANTOM_KINDS)}")
        need(self.padding in GENERATOR_PADDING, "padding",
             f"one of {', '.join(GENERATOR_PADDING)}")
        need(self.context_slices >= 1 and self.context_slices % 2 == 1, "context_slices",
             "must be an odd number >= 1 (the slice itself and as many neighbours each side)")
        need(self.context_slices <= MAX_CONTEXT_SLICES, "context_slices",
             f"at most {MAX_CONTEXT_SLICES}")
        need(self.disc_norm in DISC_NORMS, "disc_norm", f"one of {', '.join(DISC_NORMS)}")
        need(self.structure_kind in STRUCTURE_KINDS, "structure_kind",
             f"one of {', '.join(STRUCTURE_KINDS)}")
        need(self.structure_scales >= 1, "structure_scales", "must be >= 1")
        need(4 * 2 ** (self.structure_scales - 1) <= self.image_size, "structure_scales",
             "its coarsest scale must keep at least 4 pixels of image_size")
        need(self.structure_kind != "mind" or 8 * 2 ** (self.structure_scales - 1)
             <= self.image_size, "structure_scales",
             "with structure_kind=mind its coarsest scale must keep at least 8 pixels")
        for key in ("lambda_cycle", "lambda_identity", "beta_kl", "lambda_structure",
                    "lambda_feature_match", "disc_head_temperature",
                    "rotation_deg", "zoom", "translation", "mri_intensity_jitter"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        for key in ("learning_rate_g", "learning_rate_d"):
            need(getattr(self, key) > 0, key, "must be > 0")
        for key in ("beta_1", "beta_2", "decay_start", "disc_head_warmup"):
            need(0 <= getattr(self, key) <= 1, key, "must be between 0 and 1")
        need(0 <= self.ema_momentum < 1, "ema_momentum", "must be in [0, 1) (0 turns it off)")
        need(self.zoom < 1 and self.translation < 1, "zoom",
             "zoom and translation must be below 1")
        need(self.mri_units in ("percentile", "uint8"), "mri_units", "percentile or uint8")
        need(self.ct_units in ("hu", "uint8"), "ct_units", "hu or uint8")

    # --- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict, origin: str | None = None) -> "Config":
        """Build a Config, refusing unknown keys and values of the wrong type."""
        if not isinstance(values, dict):
            raise VAEGANError(origin, "config must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise VAEGANError(origin, f"unknown config key '{key}'")
            kwargs[key] = _coerce(key, value, hints[key], origin)
        try:
            return cls(**kwargs)
        except VAEGANError as err:
            raise VAEGANError(origin, err.reason) from None

    def replace(self, **changes) -> "Config":
        """A copy with some settings changed (validated, types coerced)."""
        values = self.to_dict()
        values.update({k: v for k, v in changes.items() if v is not None})
        return Config.from_dict(values)

    def save(self, path: str | os.PathLike) -> None:
        from keras_vaegan.io.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, saved_run: bool = False) -> "Config":
        """Read a JSON config; ``saved_run``: a run's own config.json (see ``BEFORE_KEY_EXISTED``)."""
        return cls.from_dict(_read_json(path, saved_run), origin=os.fspath(path))

    @classmethod
    def read_settings(cls, path: str | os.PathLike, saved_run: bool = False) -> dict:
        """Only the settings a JSON config file names, checked and coerced like ``load``'s.

        Why: layering files (a resumed run's config.json, then a ``--config``
        file) must let a later file change only the keys it names; a full
        ``Config`` would put back the defaults of every key it leaves out.
        """
        values = _read_json(path, saved_run)
        checked = cls.from_dict(values, origin=os.fspath(path)).to_dict()
        return {key: checked[key] for key in values}


def _read_json(path: str | os.PathLike, saved_run: bool):
    """A config file's JSON value, with ``BEFORE_KEY_EXISTED`` filled in for a saved run."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise VAEGANError(path, "config file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VAEGANError(path, f"not a readable JSON config ({err})") from None
    if saved_run and isinstance(values, dict):
        values = {**BEFORE_KEY_EXISTED, **values}
    return values


# Settings added after runs were first saved, with the value that reproduces how a
# run whose config.json predates the key was trained (a resumed run keeps its objective).
BEFORE_KEY_EXISTED = {"lambda_structure": 0.0, "vae_sampling": True}


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return value


def _coerce(key: str, value, hint, where):
    """Check a JSON value against the field's type hint; tuples come as lists."""
    kind = typing.get_origin(hint)
    args = typing.get_args(hint)
    wrong = VAEGANError(where, f"config key '{key}': wrong type {type(value).__name__} "
                                f"({value!r}), expected {_hint_name(hint)}")
    if kind is typing.Union or (kind is not None and str(kind) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], where)
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0], where) for v in value)
        if len(value) != len(args):
            raise wrong
        return tuple(_coerce(key, v, a, where) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise wrong
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong
        return value
    return value


def _hint_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")

