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
   comes from.
4. Writes results/quality-<name>-seed<seed>.json and, per variant, a figure
   (MRI | sCT | CT | |error| | uncertainty) of test slices at three levels of
   the head (face and maxillary sinuses, middle, vertex).

    python benchmarks/quality.py --steps 2000 --variants full,no_kl,single_head,no_augment,copies

Variants run one after the other; to use both cores, start one process per
group of variants with the same --name/--seed/--steps: each adds its variants
to the same JSON file. ``--table`` prints the README's markdown table from
the JSON files, ``--score RUN`` scores a run kept with ``--keep`` again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import common  # noqa: E402

VARIANTS = {
    "full": {},
    "no_kl": {"vae_sampling": False, "beta_kl": 0.0},  # deterministic latent: plain CycleGAN G
    "single_head": {"disc_heads": 1},
    "no_augment": {"augment": False},
    "copies": {"augment_copies": 1},  # the seed's one fixed augmented copy per sample
}
HU_CLIP = (-1024.0, 3000.0)
TEST_SEED_OFFSET = 3000  # the test subjects' dataset seed is --seed plus this


def write_split(root: str, size: int, train_subjects: int, test_subjects: int,
                slices: int, seed: int) -> dict:
    """Unpaired training volumes (flat mri/ and ct/ folders) and paired test subjects."""
    from keras_vaegan.data.phantom import write_phantom

    paths = {"mri": os.path.join(root, "train", "mri"), "ct": os.path.join(root, "train", "ct"),
             "test": os.path.join(root, "test")}
    for modality, offset in (("mri", 1000), ("ct", 2000)):
        staging = os.path.join(root, f"staging-{modality}")
        write_phantom(staging, subjects=train_subjects, slices=slices, size=size, fmt="nii",
                      seed=seed + offset)
        os.makedirs(paths[modality], exist_ok=True)
        for subject in sorted(os.listdir(staging)):
            shutil.copy(os.path.join(staging, subject, f"{modality}.nii.gz"),
                        os.path.join(paths[modality], f"{subject}.nii.gz"))
        shutil.rmtree(staging)
    write_phantom(paths["test"], subjects=test_subjects, slices=slices, size=size, fmt="nii",
                  seed=seed + TEST_SEED_OFFSET)
    return paths


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (ranks by argsort; ties are rare for float maps)."""
    ra = np.empty(len(a)); ra[np.argsort(a)] = np.arange(len(a))
    rb = np.empty(len(b)); rb[np.argsort(b)] = np.arange(len(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def lookup_table_floor(mri_units: list, cts: list, masks: list, bins: int = 256) -> float:
    """MAE (HU) of the best per-intensity map MRI -> HU, fitted on the test pairs."""
    x = np.concatenate([m[k > 0] for m, k in zip(mri_units, masks)])
    y = np.clip(np.concatenate([c[k > 0] for c, k in zip(cts, masks)]), *HU_CLIP)
    index = np.clip(((x + 1) / 2 * (bins - 1)).round().astype(int), 0, bins - 1)
    table = np.zeros(bins)
    for b in np.unique(index):
        table[b] = np.median(y[index == b])  # the median minimises the absolute error
    return float(np.mean(np.abs(table[index] - y)))


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


def score_variant(run_dir: str, test_root: str, figure: str | None) -> dict:
    from keras_vaegan.data.volumes import read_volume
    from keras_vaegan.inference.evaluate import evaluate
    from keras_vaegan.inference.predict import translate_volume
    from keras_vaegan.inference.runs import load_run

    run = load_run(run_dir)
    report = evaluate(test_root, test_root, run=run, batch_size=8)
    subjects = sorted(os.listdir(test_root))
    stds, errors, ct2mri, panels, tissues = [], [], [], [], ([], [], [])
    for subject in subjects:
        folder = os.path.join(test_root, subject)
        mri = read_volume(os.path.join(folder, "mri.nii.gz"), "mri")
        ct = read_volume(os.path.join(folder, "ct.nii.gz"), "ct")
        mask = read_volume(os.path.join(folder, "mask.nii.gz"), "ct").voxels > 0.5
        sampled = translate_volume(run, mri, "mri2ct", samples=8, batch_size=8)
        deterministic = translate_volume(run, mri, "mri2ct", samples=1, batch_size=8)
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
        "ct2mri_mae_units": float(np.mean(np.concatenate(ct2mri))),
        "uncertainty_spearman": rank_correlation(np.concatenate(stds), np.concatenate(errors)),
        "mri2ct_by_tissue": tissue_errors(*tissues),
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


def floor_for(test_root: str, config) -> float:
    from keras_vaegan.data.units import mri_map
    from keras_vaegan.data.volumes import read_volume

    mris, cts, masks = [], [], []
    for subject in sorted(os.listdir(test_root)):
        folder = os.path.join(test_root, subject)
        mri = read_volume(os.path.join(folder, "mri.nii.gz"), "mri").voxels
        mris.append(mri_map(mri, config.mri_percentiles).to_unit(mri))
        cts.append(read_volume(os.path.join(folder, "ct.nii.gz"), "ct").voxels)
        masks.append(read_volume(os.path.join(folder, "mask.nii.gz"), "ct").voxels)
    return lookup_table_floor(mris, cts, masks)


def anatomy_floor(seed: int, subjects: int, slices: int, size: int) -> float:
    """MAE (HU) of ``phantom.expected_ct`` on the test subjects ``write_split`` draws.

    The error left to a method that draws every tissue exactly where it is but
    cannot know the subject's densities (they are drawn apart from the MRI).
    """
    from keras_vaegan.data.phantom import expected_ct, make_subject, subject_seed

    errors = []
    for index in range(subjects):
        subject_id = subject_seed(seed + TEST_SEED_OFFSET, index)
        subject = make_subject(subject_id, size, slices)
        ct = np.clip(subject.ct, *HU_CLIP)
        errors.append(np.abs(expected_ct(subject_id, size, slices) - ct)[subject.mask > 0])
    return float(np.mean(np.concatenate(errors)))


def merge_result(name: str, results: dict) -> dict:
    """Add this invocation's variants to results/NAME.json when the budget matches."""
    path = os.path.join(common.RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return results
    with open(path, encoding="utf-8") as handle:
        previous = json.load(handle)
    same = all(previous.get(k) == results[k] for k in ("steps", "batch_size", "image_size",
                                                        "seed", "overrides", "backend"))
    if not same:
        print(f"note: {path} was measured with other settings; replacing it", flush=True)
        return results
    return {**results, "variants": {**previous.get("variants", {}), **results["variants"]}}


TABLE_ORDER = ("full", "no_kl", "single_head", "no_augment", "copies")


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
        changed = "".join(f" {k}={json.dumps(v)}" for k, v in result["overrides"].items())
        for name in names:
            v = result["variants"][name]
            m = v["mri2ct"]
            label = f"{name} +{changed}" if changed else name
            rows.append(f"| {label} | {result['seed']} | {result['steps']} | {m['mae_hu']:.0f} | "
                        f"{m['psnr_db']:.1f} | {m['ssim']:.2f} | {v['ct2mri_mae_units']:.2f} | "
                        f"{v['uncertainty_spearman']:.2f} | "
                        f"{result['lookup_table_floor_mae_hu']:.0f} | {v['train_minutes']} |")
    return "\n".join(rows)


def trained_precision(run_dir: str) -> str:
    """The dtype policy the run trained with, from its config.json (``auto`` depends on the CPU)."""
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        return json.load(handle).get("precision_policy", "")


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
    parser.add_argument("--train-subjects", type=int, default=24)
    parser.add_argument("--test-subjects", type=int, default=4)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--name", default="phantom64")
    parser.add_argument("--keep", help="keep the runs and data in this folder")
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
    from keras_vaegan.config import Config
    from keras_vaegan.errors import VAEGANError
    from keras_vaegan.training.fit import fit

    unknown = [name for name in args.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    try:
        overrides = parse_set(args.set)
        base = Config(image_size=args.image_size, batch_size=args.batch_size, seed=args.seed,
                      steps_per_epoch=args.steps_per_epoch,
                      epochs=max(1, args.steps // args.steps_per_epoch)).replace(**overrides)
    except click.BadParameter as error:
        parser.error(f"--set: {error.message}")
    except VAEGANError as error:
        parser.error(f"--set: {error.reason}")
    work = args.keep or tempfile.mkdtemp(prefix="vaegan-quality-")
    paths = write_split(os.path.join(work, "data"), args.image_size, args.train_subjects,
                        args.test_subjects, args.slices, args.seed)
    if args.score:
        figure = os.path.join(common.RESULTS, f"quality-{args.name}-scored-seed{args.seed}.png")
        print(json.dumps(score_variant(args.score, paths["test"], figure)), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    results = {"benchmark": "quality", **common.machine(), "steps": base.total_steps,
               "batch_size": args.batch_size, "image_size": args.image_size,
               "seed": args.seed, "overrides": overrides,
               "lookup_table_floor_mae_hu": floor_for(paths["test"], base),
               "anatomy_floor_mae_hu": anatomy_floor(args.seed, args.test_subjects, args.slices,
                                                     args.image_size),
               "variants": {}}
    for name in args.variants.split(","):
        config = base.replace(**VARIANTS[name])
        run_dir = os.path.join(work, f"run-{name}")
        start = time.perf_counter()
        fit(config, output=run_dir, mri_dir=paths["mri"], ct_dir=paths["ct"], verbose=0)
        minutes = (time.perf_counter() - start) / 60
        figure = os.path.join(common.RESULTS, f"quality-{args.name}-{name}-seed{args.seed}.png")
        scored = score_variant(run_dir, paths["test"], figure)
        results["variants"][name] = {**scored, "train_minutes": round(minutes, 1),
                                     "precision": trained_precision(run_dir),
                                     "config": VARIANTS[name]}
        print(json.dumps({name: results["variants"][name]}), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    name = f"quality-{args.name}-seed{args.seed}"
    common.write_result(name, merge_result(name, results))


if __name__ == "__main__":
    main()
