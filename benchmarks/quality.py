"""Synthesis quality on the phantom: train for a fixed budget, predict, evaluate, ablate.

1. Writes a phantom split as NIfTI volumes: training MRI and training CT from
   *different* subjects (unpaired), and paired test subjects with masks.
2. Trains with ``keras_vaegan.training.fit.fit`` (the code path of
   ``python cli.py fit``) for ``--steps`` steps, predicts the test MRI volumes
   and scores them with ``keras_vaegan.inference.evaluate.evaluate`` (MAE in
   HU, PSNR, SSIM in the body mask, SynthRAD conventions).
3. Reports, per variant: MRI -> CT metrics, CT -> MRI MAE in normalised
   units, the rank correlation between the K=8 latent standard deviation and
   the absolute error, and the per-intensity lookup-table floor fitted on the
   test pairs themselves (the best a method that maps each MRI intensity to
   one HU value can do: it cannot tell bone from air), and the anatomy floor
   (``phantom.expected_ct``: every tissue exactly where it is, at the middle
   of its HU range, since a subject's densities are not in its MRI).
   ``mri2ct_by_tissue`` splits the MRI -> CT error by CT class (air, soft
   tissue, bone, and soft tissue away from every edge) to show where the MAE
   comes from. The anatomy floor is also given blurred by 0.5 and 1 pixel:
   on a thin skull, softness costs as much as a wrong tissue.
   The ``paired`` variant is a reference, not an ablation: the same two
   generators trained with L1 on the *paired* training slices at the same
   budget, i.e. what this generator reaches when it is told the answer.
   Every variant also gets ``mri2ct_mae_hu_by_class`` (bone > 300 HU, soft
   tissue -200..300 HU, air < -200 HU in the reference CT, inside the body
   mask) and, from ``evaluate``, ``through_plane_mae_hu`` (the error of the
   slice-to-slice steps). ``floors`` scores three predictions that need no
   training in the same way (MAE, by class, through-plane): the best
   constant, the lookup table and the anatomy floor.
   ``--phantom head`` runs all of it on the harder head phantom
   (``keras_vaegan.data.phantom_head``) instead of the classic one.
4. Writes results/quality-<name>-seed<seed>.json and, per variant, a figure
   (MRI | sCT | CT | |error| | uncertainty) of test slices at three levels of
   the head (face and maxillary sinuses, middle, vertex).

    python benchmarks/quality.py --steps 2000 --variants full,vae,single_head,no_augment,copies
    python benchmarks/quality.py --phantom head --steps 2000 --variants full,paired

Variants run one after the other; to use both cores, start one process per
group of variants with the same --name/--seed/--steps: each adds its variants
to the same JSON file. Training prints one line per epoch (Keras's
``verbose=2``), so the log of a background run shows how far it is.
``--table`` prints the README's markdown table from the JSON files,
``--score RUN`` scores a run kept with ``--keep`` again. A run longer than a
session goes on in pieces: ``--keep DIR`` and, after a stop, the same command
with ``--resume`` continues each variant from its last complete epoch (as
``fit --resume`` does) on the kept data; ``train_minutes`` then adds up the
pieces' epochs and ``pieces`` says how many there were. With ``--set
checkpoint_every=N`` each variant also gets a ``trajectory``: every Nth
epoch's checkpoint scored as the run is (MAE, PSNR, SSIM, by class), to show
where a long run stops gaining. ``--rescore`` (with ``--keep``) scores the
kept runs again with today's prediction code and rewrites the result file,
keeping their training minutes. Each variant's ``mri2ct`` is what
``predict`` returns (mirror-averaged, ``models/mirror.py``, and since
2026-12-07 shift-averaged, ``models/shifts.py``: ``mri2ct_averaging`` says
which); ``mri2ct_single_pass`` is the same run with one pass per slice.

    python benchmarks/quality.py --steps 9000 --name long --keep ~/runs/long
    python benchmarks/quality.py --steps 9000 --name long --keep ~/runs/long --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import numpy as np  # noqa: E402

VARIANTS = {
    "full": {},
    "paired": {},  # reference, not an ablation: the same generators trained on paired slices (L1)
    "vae": {"vae_sampling": True, "beta_kl": 1e-3},  # the VAE latent (the default until issue 27)
    "no_kl": {"vae_sampling": False, "beta_kl": 0.0},  # deterministic latent: the default now
    "single_head": {"disc_heads": 1},
    "no_augment": {"augment": False},
    "copies": {"augment_copies": 1},  # the seed's one fixed augmented copy per sample
}
REFERENCES = ("paired",)  # variants that are not a `fit` of the VAE-CycleGAN
HU_CLIP = (-1024.0, 3000.0)
FLOOR_BLUR_PX = (0.5, 1.0)  # the anatomy floor is also reported blurred by these sigmas
TRAIN_SUBJECTS = 24  # per modality, unless --train-subjects says otherwise
TEST_SEED_OFFSET = 3000  # the test subjects' dataset seed is --seed plus this
CLOCK_FILE = "benchmark-clock.json"  # in a run folder: training minutes and pieces so far


def split_paths(root: str) -> dict:
    """Where ``write_split`` puts the training folders and the test subjects under ``root``."""
    return {"mri": os.path.join(root, "train", "mri"), "ct": os.path.join(root, "train", "ct"),
            "test": os.path.join(root, "test")}


def write_split(root: str, size: int, train_subjects: int, test_subjects: int,
                slices: int, seed: int, kind: str = "classic") -> dict:
    """Unpaired training volumes (flat mri/ and ct/ folders) and paired test subjects."""
    from keras_vaegan.data.phantom import write_phantom
    from keras_vaegan.data.phantom_head import phantom_kind

    drawn = phantom_kind(kind)
    draw = {"make": drawn.make_subject, "spacing": drawn.spacing}

    paths = split_paths(root)
    for modality, offset in (("mri", 1000), ("ct", 2000)):
        staging = os.path.join(root, f"staging-{modality}")
        write_phantom(staging, subjects=train_subjects, slices=slices, size=size, fmt="nii",
                      seed=seed + offset, **draw)
        os.makedirs(paths[modality], exist_ok=True)
        for subject in sorted(os.listdir(staging)):
            shutil.copy(os.path.join(staging, subject, f"{modality}.nii.gz"),
                        os.path.join(paths[modality], f"{subject}.nii.gz"))
        shutil.rmtree(staging)
    write_phantom(paths["test"], subjects=test_subjects, slices=slices, size=size, fmt="nii",
                  seed=seed + TEST_SEED_OFFSET, **draw)
    return paths


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (ranks by argsort; ties are rare for float maps)."""
    ra = np.empty(len(a))
    ra[np.argsort(a)] = np.arange(len(a))
    rb = np.empty(len(b))
    rb[np.argsort(b)] = np.arange(len(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def lookup_table_floor(mri_units: list, cts: list, masks: list, bins: int = 256) -> float:
    """MAE (HU) of the best per-intensity map MRI -> HU, fitted on the test pairs."""
    predictions = lookup_table_predictions(mri_units, cts, masks, bins)
    y = np.clip(np.concatenate([c[k > 0] for c, k in zip(cts, masks)]), *HU_CLIP)
    return float(np.mean(np.abs(np.concatenate(
        [p[k > 0] for p, k in zip(predictions, masks)]) - y)))


def lookup_table_predictions(mri_units: list, cts: list, masks: list,
                             bins: int = 256) -> list[np.ndarray]:
    """Each test MRI mapped through the best per-intensity table (HU), fitted on the test pairs."""
    def bin_of(mri):
        return np.clip(((mri + 1) / 2 * (bins - 1)).round().astype(int), 0, bins - 1)

    index = np.concatenate([bin_of(m[k > 0]) for m, k in zip(mri_units, masks)])
    y = np.clip(np.concatenate([c[k > 0] for c, k in zip(cts, masks)]), *HU_CLIP)
    table = np.full(bins, HU_CLIP[0])
    for b in np.unique(index):
        table[b] = np.median(y[index == b])  # the median minimises the absolute error
    return [table[bin_of(m)] for m in mri_units]


def constant_predictions(cts: list, masks: list) -> list[np.ndarray]:
    """The best single HU for every voxel: the median of the test CTs inside their masks."""
    value = float(np.median(np.clip(np.concatenate([c[k > 0] for c, k in zip(cts, masks)]),
                                    *HU_CLIP)))
    return [np.full(c.shape, value, np.float32) for c in cts]


def prediction_report(predictions: list, cts: list, masks: list) -> dict:
    """MAE, MAE by class and through-plane MAE (HU) of predicted volumes against the CTs."""
    from keras_vaegan.inference.evaluate import through_plane_mae_hu

    masks = [np.asarray(k) > 0 for k in masks]
    errors = np.concatenate([np.abs(np.clip(p, *HU_CLIP) - np.clip(c, *HU_CLIP))[k]
                             for p, c, k in zip(predictions, cts, masks)])
    steps = [through_plane_mae_hu(p, c, k) for p, c, k in zip(predictions, cts, masks)]
    steps = [v for v in steps if v is not None]
    return {"mae_hu": float(errors.mean()),
            "by_class_mae_hu": class_errors(predictions, cts, masks),
            "through_plane_mae_hu": float(np.mean(steps)) if steps else None}


# the classes the issue reports MAE for (reference CT, inside the body mask)
CLASS_HU = {"bone": (300.0, np.inf), "soft_tissue": (-200.0, 300.0), "air": (-np.inf, -200.0)}


def class_errors(predictions: list, cts: list, masks: list) -> dict:
    """MAE (HU) per CT class of ``CLASS_HU``, over all subjects' voxels in the masks."""
    report = {}
    for name, (low, high) in CLASS_HU.items():
        parts = []
        for p, c, k in zip(predictions, cts, masks):
            c = np.clip(c, *HU_CLIP)
            where = (np.asarray(k) > 0) & (c >= low) & (c < high)
            parts.append(np.abs(np.clip(p, *HU_CLIP) - c)[where])
        diff = np.concatenate(parts)
        report[name] = float(diff.mean()) if diff.size else None
    return report


TISSUE_HU = {"air": (-np.inf, -300.0), "soft": (-300.0, 300.0), "bone": (300.0, np.inf)}
INTERIOR_PX = 3  # "soft_interior": soft tissue at least this far (in-slice) from air or bone


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-slice binary erosion by a (2r+1)^2 square, outside the image counting as False."""
    height, width = mask.shape[-2:]
    padded = np.pad(mask.astype(bool), [(0, 0)] * (mask.ndim - 2) + [(radius, radius)] * 2)
    side = 2 * radius + 1
    return np.logical_and.reduce([padded[..., i:i + height, j:j + width]
                                  for i in range(side) for j in range(side)])


def tissue_errors(scts: list, cts: list, masks: list) -> dict:
    """Where the MAE comes from: per CT tissue class, signed and absolute error in HU.

    ``share`` is the class's part of the total absolute error in the mask, so
    the shares of air, soft and bone add up to 1; ``soft_interior`` (soft
    tissue away from every edge) shows intensity bias without edge blur.
    """
    classes = {name: [] for name in (*TISSUE_HU, "soft_interior")}
    total = 0.0
    for sct, ct, mask in zip(scts, cts, masks):
        ct = np.clip(ct, *HU_CLIP)
        diff = np.clip(sct, *HU_CLIP) - ct
        total += float(np.abs(diff[mask]).sum())
        for name, (low, high) in TISSUE_HU.items():
            classes[name].append(diff[mask & (ct >= low) & (ct < high)])
        soft = (ct >= TISSUE_HU["soft"][0]) & (ct < TISSUE_HU["soft"][1])
        classes["soft_interior"].append(diff[mask & erode(soft, INTERIOR_PX)])
    report = {}
    for name, parts in classes.items():
        diff = np.concatenate(parts)
        report[name] = {"voxels": int(diff.size),
                        "signed_hu": float(diff.mean()) if diff.size else float("nan"),
                        "mae_hu": float(np.abs(diff).mean()) if diff.size else float("nan"),
                        "share": float(np.abs(diff).sum() / total) if total else 0.0}
    return report


def clock_so_far(run_dir: str) -> dict:
    """Training minutes and pieces that earlier pieces of a resumed run recorded in its folder."""
    try:
        with open(os.path.join(run_dir, CLOCK_FILE)) as file:
            return json.load(file)
    except FileNotFoundError:
        return {"minutes": 0.0, "pieces": 0}


def training_clock(run_dir: str, before: dict):
    """A callback that records, at each epoch end, the training minutes of all pieces so far.

    Written after the epoch's checkpoint (also at a Ctrl-C, whose step fit
    saves), so the total counts the training a resumed run keeps; a kill
    mid-epoch loses that epoch's minutes along with its steps.
    """
    import keras

    class TrainingClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            minutes = before["minutes"] + (time.perf_counter() - self.start) / 60
            path = os.path.join(run_dir, CLOCK_FILE)
            with open(path + ".tmp", "w") as file:
                json.dump({"minutes": minutes, "pieces": before["pieces"] + 1}, file)
            os.replace(path + ".tmp", path)

    return TrainingClock()


def score_trajectory(run_dir: str, test_root: str) -> list[dict]:
    """The MRI -> CT scores of each checkpoint a run kept (``--set checkpoint_every=N``).

    Shows where a long run stopped gaining; each checkpoint is made a run
    folder for the time it is scored (``checkpoint_as_run``).
    """
    from keras_vaegan.config import CONFIG_FILE, Config
    from keras_vaegan.training.checkpoints import CHECKPOINTS, checkpoint_as_run, kept_epochs

    config = Config.load(os.path.join(run_dir, CONFIG_FILE), saved_run=True)
    points = []
    for epoch in kept_epochs(os.path.join(run_dir, CHECKPOINTS)):
        if epoch % config.checkpoint_every:
            continue  # one of the last two, kept for --resume
        with tempfile.TemporaryDirectory(prefix="vaegan-epoch-") as folder:
            scored = score_variant(checkpoint_as_run(run_dir, epoch, folder), test_root, None,
                                   uncertainty=False)
        points.append({"epoch": epoch, "steps": epoch * config.steps_per_epoch,
                       "mri2ct": scored["mri2ct"],
                       "mri2ct_single_pass": scored["mri2ct_single_pass"],
                       "mri2ct_mae_hu_by_class": scored["mri2ct_mae_hu_by_class"]})
        single = scored["mri2ct_single_pass"]
        print(f"trajectory: epoch {epoch}: {scored['mri2ct']['mae_hu']:.1f} HU"
              + (f" ({single['mae_hu']:.1f} in one pass)" if single else ""), flush=True)
    return points


def score_variant(run_dir: str, test_root: str, figure: str | None,
                  uncertainty: bool = True) -> dict:
    from keras_vaegan.data.volumes import read_volume
    from keras_vaegan.inference.evaluate import evaluate
    from keras_vaegan.inference.predict import translate_volume
    from keras_vaegan.inference.runs import load_run

    run = load_run(run_dir)
    # 2-D SSIM, as every committed result (evaluate's default is SynthRAD's 3-D SSIM now)
    report = evaluate(test_root, test_root, run=run, batch_size=8, ssim_mode="2d")
    # what mirror and shift averaging (models/mirror.py, shifts.py) add: one pass per slice
    averaging = run.config.mirror_average or run.config.shift_average
    single = evaluate(test_root, test_root,
                      run=load_run(run_dir, mirror_average=False, shift_average=False),
                      batch_size=8, ssim_mode="2d")["mean"] if averaging else None
    subjects = sorted(os.listdir(test_root))
    stds, errors, ct2mri, panels, tissues = [], [], [], [], ([], [], [])
    for subject in subjects:
        folder = os.path.join(test_root, subject)
        mri = read_volume(os.path.join(folder, "mri.nii.gz"), "mri")
        ct = read_volume(os.path.join(folder, "ct.nii.gz"), "ct")
        mask = read_volume(os.path.join(folder, "mask.nii.gz"), "ct").voxels > 0.5
        deterministic = translate_volume(run, mri, "mri2ct", samples=1, batch_size=8)
        sampled = (translate_volume(run, mri, "mri2ct", samples=8, batch_size=8) if uncertainty
                   else dataclasses.replace(deterministic, std=np.zeros_like(deterministic.mean)))
        error = np.abs(np.clip(deterministic.mean, *HU_CLIP) - np.clip(ct.voxels, *HU_CLIP))
        for part, value in zip(tissues, (deterministic.mean, ct.voxels, mask)):
            part.append(value)
        stds.append(sampled.std[mask])
        errors.append(error[mask])
        back = translate_volume(run, ct, "ct2mri", samples=1, batch_size=8)
        ct2mri.append(np.abs(back.unit_mean - deterministic.unit_input)[mask])
        level = figure_slice(len(panels), mri.voxels.shape[0])
        panels.append([deterministic.unit_input[level], deterministic.mean[level],
                       ct.voxels[level], error[level], sampled.std[level]])
    result = {
        "mri2ct": report["mean"],
        "mri2ct_averaging": {key: report["model"][key] for key in ("mirror_average",
                                                                   "shift_average")},
        "mri2ct_single_pass": single,
        "ct2mri_mae_units": float(np.mean(np.concatenate(ct2mri))),
        "uncertainty_spearman": (rank_correlation(np.concatenate(stds), np.concatenate(errors))
                                 if uncertainty else None),
        "mri2ct_by_tissue": tissue_errors(*tissues),
        "mri2ct_mae_hu_by_class": class_errors(*tissues),
        "subjects": len(subjects),
    }
    if figure:
        draw_figure(figure, panels[:3])
    return result


def figure_slice(row: int, slices: int) -> int:
    """Rows of the figure show the face (sinuses), the middle and the top of the head."""
    return (min(1, slices - 1), slices // 2, max(0, slices - 2))[row % 3]


def draw_figure(path: str, panels: list) -> None:
    from matplotlib.figure import Figure

    titles = ["MRI", "synthetic CT (HU)", "CT (HU)", "|error| (HU)", "uncertainty std (HU)"]
    ranges = [(-1, 1), (-1024, 2000), (-1024, 2000), (0, 1000), (0, 300)]
    fig = Figure(figsize=(2.2 * len(titles), 2.2 * len(panels)))
    for r, row in enumerate(panels):
        for c, (image, (lo, hi)) in enumerate(zip(row, ranges)):
            ax = fig.add_subplot(len(panels), len(titles), r * len(titles) + c + 1)
            ax.imshow(image, cmap="gray" if c < 3 else "magma", vmin=lo, vmax=hi)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def test_pairs(test_root: str, config) -> tuple[list, list, list]:
    """The test subjects' MRI (model units), CT (HU) and masks, as written by ``write_split``."""
    from keras_vaegan.data.units import mri_map
    from keras_vaegan.data.volumes import read_volume

    mris, cts, masks = [], [], []
    for subject in sorted(os.listdir(test_root)):
        folder = os.path.join(test_root, subject)
        mri = read_volume(os.path.join(folder, "mri.nii.gz"), "mri").voxels
        mris.append(mri_map(mri, config.mri_percentiles).to_unit(mri))
        cts.append(read_volume(os.path.join(folder, "ct.nii.gz"), "ct").voxels)
        masks.append(read_volume(os.path.join(folder, "mask.nii.gz"), "ct").voxels)
    return mris, cts, masks


def floor_for(test_root: str, config) -> float:
    return lookup_table_floor(*test_pairs(test_root, config))


def floors(test_root: str, config, seed: int, subjects: int, slices: int, size: int,
           kind: str = "classic") -> dict:
    """The predictions that need no training, scored as the variants are: what to beat."""
    mris, cts, masks = test_pairs(test_root, config)
    anatomy = anatomy_predictions(seed, subjects, slices, size, kind=kind)
    return {"constant": prediction_report(constant_predictions(cts, masks), cts, masks),
            "lookup_table": prediction_report(lookup_table_predictions(mris, cts, masks), cts,
                                              masks),
            "anatomy": prediction_report(anatomy, cts, masks)}


def anatomy_predictions(seed: int, subjects: int, slices: int, size: int, blur_px: float = 0.0,
                        kind: str = "classic") -> list[np.ndarray]:
    """``expected_ct`` of each test subject ``write_split`` draws (blurred by ``blur_px``)."""
    from keras_vaegan.data.filters import gaussian_blur
    from keras_vaegan.data.phantom import subject_seed
    from keras_vaegan.data.phantom_head import phantom_kind

    drawn = phantom_kind(kind)
    predictions = []
    for index in range(subjects):
        expected = drawn.expected_ct(subject_seed(seed + TEST_SEED_OFFSET, index), size, slices)
        if blur_px > 0:
            radius = max(1, int(np.ceil(3 * blur_px)))
            expected = gaussian_blur(expected, blur_px, radius, pad_mode="edge", dtype=np.float32)
        predictions.append(expected)
    return predictions


def anatomy_floor(seed: int, subjects: int, slices: int, size: int,
                  blur_px: float = 0.0, kind: str = "classic") -> float:
    """MAE (HU) of ``phantom.expected_ct`` on the test subjects ``write_split`` draws.

    The error left to a method that draws every tissue exactly where it is but
    cannot know the subject's densities (they are drawn apart from the MRI).
    ``blur_px`` > 0 blurs that CT in-slice by a gaussian of this sigma first:
    how much a translation that is right but slightly soft loses.
    """
    from keras_vaegan.data.phantom import subject_seed
    from keras_vaegan.data.phantom_head import phantom_kind

    make = phantom_kind(kind).make_subject
    errors = []
    expected = anatomy_predictions(seed, subjects, slices, size, blur_px, kind)
    for index in range(subjects):
        subject = make(subject_seed(seed + TEST_SEED_OFFSET, index), size, slices)
        ct = np.clip(subject.ct, *HU_CLIP)
        errors.append(np.abs(expected[index] - ct)[subject.mask > 0])
    return float(np.mean(np.concatenate(errors)))


def paired_training_slices(seed: int, subjects: int, slices: int, size: int, config,
                           kind: str = "classic"):
    """The MRI training subjects of ``write_split`` with their own CTs, in model units.

    Only the paired reference uses them: the VAE-CycleGAN never sees a pair.
    """
    from keras_vaegan.data.phantom import subject_seed
    from keras_vaegan.data.phantom_head import phantom_kind
    from keras_vaegan.data.units import ct_map, mri_map

    make_subject = phantom_kind(kind).make_subject
    window = ct_map(tuple(config.ct_window_hu))
    mri, ct = [], []
    for index in range(subjects):
        subject = make_subject(subject_seed(seed + 1000, index), size, slices)
        mri.append(mri_map(subject.mri, config.mri_percentiles).to_unit(subject.mri))
        ct.append(window.to_unit(subject.ct))
    return np.concatenate(mri), np.concatenate(ct)


def train_paired(config, mri: np.ndarray, ct: np.ndarray, run_dir: str) -> None:
    """The supervised reference: both generators trained with L1 on paired slices.

    Same generators, augmentation (geometry only: a pair must stay aligned),
    optimiser, schedule and step budget as ``fit``; only the objective differs.
    Its MAE is what this generator reaches when it is told the answer, so the
    gap to ``full`` is what training without pairs costs at this budget.
    Saved as a run folder, so it is scored by the same code as every variant.
    """
    import keras
    import tensorflow as tf

    from keras_vaegan.backends.precision import apply_precision
    from keras_vaegan.config import CONFIG_FILE, MODEL_FILE
    from keras_vaegan.data.augment import build_augmenter
    from keras_vaegan.models.optimizers import make_optimizers
    from keras_vaegan.models.vaecyclegan import VAECycleGAN

    policy = apply_precision(config.mixed_precision)
    config = config.replace(precision_policy=policy)
    keras.utils.set_random_seed(config.seed)
    model = VAECycleGAN(config)
    model.build()

    class Paired(keras.Model):
        def __init__(self):
            super().__init__()
            self.g_ct, self.g_mri = model.g_ct, model.g_mri  # tracked: their weights train
            for generator in (self.g_ct, self.g_mri):
                generator.log_var_head.trainable = False  # unused: the mean path is trained

        def call(self, inputs, training=False):
            mri_in, ct_in = inputs
            return (self.g_ct(mri_in, training=training, sample=False)[0],
                    self.g_mri(ct_in, training=training, sample=False)[0])

    augment = build_augmenter(config.replace(mri_intensity_jitter=0.0), "ct", seed=config.seed)
    pairs = np.stack([mri, ct], axis=-1).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices(pairs).shuffle(len(pairs), seed=config.seed)
    data = data.repeat().enumerate()
    if config.augment:
        data = data.map(lambda i, pair: augment(
            pair, seed=tf.stack([tf.constant(config.seed, tf.int64), i])))
    else:
        data = data.map(lambda i, pair: pair)
    data = data.map(lambda pair: ((pair[..., :1], pair[..., 1:]), (pair[..., 1:], pair[..., :1])))
    data = data.batch(config.batch_size, drop_remainder=True).prefetch(2)
    paired = Paired()
    paired.compile(optimizer=make_optimizers(config)["g_ct_optimizer"], loss=["mae", "mae"])
    paired.fit(data, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch, shuffle=False,
               verbose=2)
    os.makedirs(run_dir, exist_ok=True)
    model.save(os.path.join(run_dir, MODEL_FILE))
    config.save(os.path.join(run_dir, CONFIG_FILE))


def recorded_training(name: str, variant: str) -> dict:
    """What results/NAME.json says of a variant's training (minutes, pieces), or {}."""
    try:
        with open(os.path.join(common.RESULTS, f"{name}.json"), encoding="utf-8") as handle:
            kept = json.load(handle).get("variants", {}).get(variant, {})
    except FileNotFoundError:
        return {}
    return {key: kept[key] for key in ("train_minutes", "pieces") if key in kept}


def merge_result(name: str, results: dict) -> dict:
    """Add this invocation's variants to results/NAME.json when the budget matches."""
    path = os.path.join(common.RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return results
    with open(path, encoding="utf-8") as handle:
        previous = json.load(handle)
    # files written before train_subjects or phantom was recorded used the defaults
    previous.setdefault("train_subjects", TRAIN_SUBJECTS)
    previous.setdefault("phantom", "classic")
    results = {"phantom": "classic", **results}
    same = all(previous.get(k) == results[k] for k in ("steps", "batch_size", "image_size",
                                                        "seed", "overrides", "backend",
                                                        "train_subjects", "phantom"))
    if not same:
        print(f"note: {path} was measured with other settings; replacing it", flush=True)
        return results
    return {**results, "variants": {**previous.get("variants", {}), **results["variants"]}}


TABLE_ORDER = ("full", "vae", "no_kl", "single_head", "no_augment", "copies", "paired")


def markdown_table(paths: list[str]) -> str:
    """One row per (file, variant): the README's quality table; overrides join the label."""
    header = ("| variant | seed | steps | MRI -> CT MAE (HU) | PSNR (dB) | SSIM | CT -> MRI MAE "
              "(units) | std vs error (Spearman) | lookup-table floor (HU) | minutes |")
    rows = [header,
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        names = sorted(result["variants"], key=lambda n: (TABLE_ORDER + (n,)).index(n))
        changes = [f"{k}={json.dumps(v)}" for k, v in result["overrides"].items()]
        if result.get("train_subjects", TRAIN_SUBJECTS) != TRAIN_SUBJECTS:
            changes.append(f"{result['train_subjects']} training subjects")
        if result.get("phantom", "classic") != "classic":
            changes.append(f"{result['phantom']} phantom")
        changed = ", ".join(changes)
        for name in names:
            v = result["variants"][name]
            m = v["mri2ct"]
            label = f"{name} + {changed}" if changed else name
            rows.append(f"| {label} | {result['seed']} | {result['steps']} | {m['mae_hu']:.0f} | "
                        f"{m['psnr_db']:.1f} | {m['ssim']:.2f} | {v['ct2mri_mae_units']:.2f} | "
                        f"{_two_places(v['uncertainty_spearman'])} | "
                        f"{result['lookup_table_floor_mae_hu']:.0f} | {v['train_minutes']} |")
    return "\n".join(rows)


def _two_places(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def trained_precision(run_dir: str) -> str:
    """The dtype policy the run trained with, from its config.json (``auto`` depends on the CPU)."""
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        return json.load(handle).get("precision_policy", "")


_HELD: dict = {}  # the --keep folders this process works in -> their open lock files


def hold_folder(folder: str) -> bool:
    """Lock ``folder`` for this process (False: another process holds it).

    Two runs sharing a ``--keep`` folder would write their phantom splits
    over each other and score on the other's test data. The lock is an
    ``flock`` on a file inside, released when the process ends, even killed;
    this process may take it again (a run, then ``--rescore``).
    """
    import fcntl

    key = os.path.realpath(folder)
    if key in _HELD:
        return True
    os.makedirs(folder, exist_ok=True)
    handle = open(os.path.join(folder, ".quality.lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    _HELD[key] = handle
    return True


def result_header(args, base, overrides: dict, test_root: str) -> dict:
    """What a result file records before any variant: the budget, the phantom and its floors."""
    floor_args = (args.seed, args.test_subjects, args.slices, args.image_size)
    scored = floors(test_root, base, *floor_args, kind=args.phantom)
    return {"benchmark": "quality", **common.machine(), "steps": base.total_steps,
            "batch_size": args.batch_size, "image_size": args.image_size,
            "seed": args.seed, "overrides": overrides, "train_subjects": args.train_subjects,
            "phantom": args.phantom,
            "lookup_table_floor_mae_hu": scored["lookup_table"]["mae_hu"],
            "constant_floor_mae_hu": scored["constant"]["mae_hu"],
            "anatomy_floor_mae_hu": anatomy_floor(*floor_args, kind=args.phantom),
            "anatomy_floor_blurred_mae_hu": {
                str(px): anatomy_floor(*floor_args, blur_px=px, kind=args.phantom)
                for px in FLOOR_BLUR_PX},
            "floors": scored, "variants": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="training budget in steps")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="full", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides applied to every variant (JSON values)")
    parser.add_argument("--train-subjects", type=int, default=TRAIN_SUBJECTS,
                        help="subjects per training modality")
    parser.add_argument("--test-subjects", type=int, default=4)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--name", help="results/quality-NAME-seedS.json (default: phantom64 for "
                        "the classic phantom, head64 for the head phantom, at 64 pixels)")
    parser.add_argument("--phantom", choices=("classic", "head"), default="classic",
                        help="classic: the phantom the defaults were tuned on; head: the harder "
                        "head phantom (keras_vaegan.data.phantom_head)")
    parser.add_argument("--keep", help="keep the runs and data in this folder")
    parser.add_argument("--resume", action="store_true",
                        help="with --keep: continue each variant's kept run from its last "
                        "complete epoch, on the kept data")
    parser.add_argument("--rescore", action="store_true",
                        help="with --keep: score each kept variant again with today's code "
                        "(prediction, metrics) and rewrite the result file; no training")
    parser.add_argument("--score", metavar="RUN",
                        help="only score this run (kept with --keep) and draw its figure")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="only print the markdown table of these result files")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.table))
        return

    import click

    from keras_vaegan.cli import parse_set
    from keras_vaegan.config import MODEL_FILE, Config
    from keras_vaegan.errors import VAEGANError
    from keras_vaegan.training.callbacks import CHECKPOINTS
    from keras_vaegan.training.checkpoints import read_checkpoint_state
    from keras_vaegan.training.fit import TrainingInterrupted, fit

    unknown = [name for name in args.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    for flag, wanted in (("--resume", args.resume), ("--rescore", args.rescore)):
        if wanted and not args.keep:
            parser.error(f"{flag}: needs --keep (the folder of the kept runs)")
        if wanted and any(name in REFERENCES for name in args.variants.split(",")):
            parser.error(f"{flag}: the {', '.join(REFERENCES)} reference trains in one piece, "
                         "without a training clock")
    if args.rescore and args.resume:
        parser.error("--rescore: scores the kept runs as they are; leave out --resume")
    try:
        overrides = parse_set(args.set)
        base = Config(image_size=args.image_size, batch_size=args.batch_size, seed=args.seed,
                      steps_per_epoch=args.steps_per_epoch,
                      epochs=max(1, args.steps // args.steps_per_epoch)).replace(**overrides)
    except click.BadParameter as error:
        parser.error(f"--set: {error.message}")
    except VAEGANError as error:
        parser.error(f"--set: {error.reason}")
    args.name = args.name or ("phantom64" if args.phantom == "classic" else "head64")
    base = base.replace(phantom=args.phantom)  # recorded; fit reads the volumes written here
    work = args.keep or tempfile.mkdtemp(prefix="vaegan-quality-")
    if args.keep and not hold_folder(work):
        parser.error(f"--keep: {work} is in use by another quality.py run (its data and runs "
                     "would be overwritten); give each run its own folder")
    if args.rescore:  # the kept runs and the split they were trained and scored on
        paths = split_paths(os.path.join(work, "data"))
        if not os.path.isdir(paths["test"]):
            parser.error(f"--rescore: no kept test data under {work}")
    elif args.resume and os.path.isdir(split_paths(os.path.join(work, "data"))["test"]):
        paths = split_paths(os.path.join(work, "data"))  # the split the first piece wrote
    else:
        paths = write_split(os.path.join(work, "data"), args.image_size, args.train_subjects,
                            args.test_subjects, args.slices, args.seed, kind=args.phantom)
    if args.score:
        figure = os.path.join(common.RESULTS, f"quality-{args.name}-scored-seed{args.seed}.png")
        print(json.dumps(score_variant(args.score, paths["test"], figure)), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    results = result_header(args, base, overrides, paths["test"])
    print(json.dumps({"floors": results["floors"]}), flush=True)
    for name in args.variants.split(","):
        config = base.replace(**VARIANTS[name])
        run_dir = os.path.join(work, f"run-{name}")
        resume = args.resume and read_checkpoint_state(os.path.join(run_dir, CHECKPOINTS)) is not None
        before = clock_so_far(run_dir) if resume or args.rescore else {"minutes": 0.0, "pieces": 0}
        start = time.perf_counter()
        if args.rescore:
            if not os.path.isfile(os.path.join(run_dir, MODEL_FILE)):
                parser.error(f"--rescore: {run_dir} holds no finished run")
        elif name == "paired":
            train_paired(config, *paired_training_slices(args.seed, args.train_subjects,
                                                         args.slices, args.image_size, config,
                                                         kind=args.phantom),
                         run_dir)
        else:
            try:
                fit(config, output=run_dir, mri_dir=paths["mri"], ct_dir=paths["ct"], verbose=2,
                    resume=resume, callbacks=[training_clock(run_dir, before)])
            except TrainingInterrupted:  # Ctrl-C: fit saved the step it had reached
                how = ("the same command with --resume" if args.keep else
                       f"the same command with --keep {work} --resume (the run is kept there)")
                print(f"interrupted: {name} saved at its last step; to go on: {how}",
                      file=sys.stderr)
                raise SystemExit(130) from None
        minutes = before["minutes"] + (0 if args.rescore else (time.perf_counter() - start) / 60)
        figure = os.path.join(common.RESULTS, f"quality-{args.name}-{name}-seed{args.seed}.png")
        # a reference's log-variance heads were never trained: no uncertainty map
        scored = score_variant(run_dir, paths["test"], figure, uncertainty=name not in REFERENCES)
        results["variants"][name] = {**scored, "train_minutes": round(minutes, 1),
                                     "precision": trained_precision(run_dir),
                                     "config": VARIANTS[name]}
        pieces = before["pieces"] + (0 if args.rescore else 1)  # a rescore trains no piece
        if pieces > 1:
            results["variants"][name]["pieces"] = pieces
        if args.rescore:  # the minutes the result file holds count up to the model's save
            results["variants"][name].update(
                recorded_training(f"quality-{args.name}-seed{args.seed}", name))
        if config.checkpoint_every and name not in REFERENCES:
            results["variants"][name]["trajectory"] = score_trajectory(run_dir, paths["test"])
        print(json.dumps({name: results["variants"][name]}), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    name = f"quality-{args.name}-seed{args.seed}"
    common.write_result(name, merge_result(name, results))


if __name__ == "__main__":
    main()
