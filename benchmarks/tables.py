"""Write the result tables of the docs from benchmarks/results/*.json, so they cannot disagree.

Each table in README.md, benchmarks/RESULTS.md and benchmarks/README.md sits between
``<!-- table:NAME -->`` and ``<!-- /table -->``; this script rewrites what is between
from the JSON files. Which runs a table shows, in which order and under which label is
written here (a label is prose); every figure comes from the JSON.

    python benchmarks/tables.py            # rewrite the tables in place
    python benchmarks/tables.py --check    # exit 1 when a document's table differs from the JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "benchmarks/RESULTS.md", "benchmarks/README.md")
MARKED = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


class Results:
    """The JSON files of one results folder, read once each."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: dict[str, dict] = {}

    def __call__(self, name: str) -> dict:
        if name not in self._cache:
            path = self.folder / f"{name}.json"
            if not path.exists():
                raise SystemExit(f"error: {path}: no such results file (named by a table)")
            self._cache[name] = json.loads(path.read_text(encoding="utf-8"))
        return self._cache[name]

    def variant(self, name: str, variant: str) -> tuple[dict, dict]:
        """``variant`` of quality-NAME; ``VARIANT@single_pass``: its one-pass-per-slice score."""
        variant, _, score = variant.partition("@")
        result = self(f"quality-{name}")
        if variant not in result["variants"]:
            raise SystemExit(f"error: {self.folder / f'quality-{name}.json'}: no variant {variant}")
        v = result["variants"][variant]
        if score:
            if f"mri2ct_{score}" not in v:
                raise SystemExit(f"error: {self.folder / f'quality-{name}.json'}: {variant} "
                                 f"has no mri2ct_{score}")
            v = {**v, "mri2ct": v[f"mri2ct_{score}"]}
        return result, v


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _two_places(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# ---- quality: one row per (results file, variant) ----

QUALITY_HEADER = ["run", "seed", "steps", "MRI -> CT MAE (HU)", "PSNR (dB)", "SSIM",
                  "CT -> MRI MAE (units)", "std vs error (Spearman)", "lookup-table floor (HU)",
                  "minutes"]


def quality_rows(results: Results, rows: list[tuple[str, str, str]]) -> str:
    """The full quality table: rows are (file name after 'quality-', variant, label)."""
    out = []
    for name, variant, label in rows:
        result, v = results.variant(name, variant)
        m = v["mri2ct"]
        out.append([label, str(result["seed"]), str(result["steps"]), f"{m['mae_hu']:.0f}",
                    f"{m['psnr_db']:.1f}", f"{m['ssim']:.2f}", f"{v['ct2mri_mae_units']:.2f}",
                    _two_places(v["uncertainty_spearman"]),
                    f"{result['lookup_table_floor_mae_hu']:.0f}", f"{v['train_minutes']:.1f}"])
    return _markdown(QUALITY_HEADER, out)


MIRROR_HEADER = ["run", "seed", "steps", "MAE (HU): one pass", "mirror-averaged",
                 "PSNR (dB)", "SSIM", "through-plane (HU)", "mirror-averaged bone / soft tissue / air (HU)"]


def _before_after(one: dict, both: dict):
    """A cell 'one pass -> mirror-averaged' of a metric, at a format."""
    return lambda key, fmt: f"{one[key]:{fmt}} -> {both[key]:{fmt}}"


def mirror_rows(results: Results, rows: list[tuple[str, str, str]]) -> str:
    """One pass per slice against the mirror average, the same weights (each 'a -> b').

    Each run's kept checkpoints (its ``trajectory``) follow it, where they
    were scored both ways; the last of them is the run itself.
    """
    out = []
    for name, variant, label in rows:
        result, v = results.variant(name, variant)
        points = [(f"{label}, a kept checkpoint", p) for p in v.get("trajectory", [])
                  if p.get("mri2ct_single_pass") and p["steps"] != result["steps"]]
        for text, point in [(label, v)] + points:
            one, both = point["mri2ct_single_pass"], point["mri2ct"]
            pair = _before_after(one, both)
            by_class = point["mri2ct_mae_hu_by_class"]
            steps = point.get("steps", result["steps"])
            out.append([text, str(result["seed"]), str(steps), f"{one['mae_hu']:.1f}",
                        f"{both['mae_hu']:.1f}", pair("psnr_db", ".1f"), pair("ssim", ".3f"),
                        pair("through_plane_mae_hu", ".0f"),
                        " / ".join(f"{by_class[c]:.0f}" for c in ("bone", "soft_tissue", "air"))])
    return _markdown(MIRROR_HEADER, out)


COMPARED_HEADER = ["try", "phantom", "seed", "MAE (HU), one pass", "the defaults, one pass",
                   "MAE mirror-averaged", "PSNR (dB) / SSIM", "through-plane, one pass (defaults)",
                   "bone / soft tissue / air (HU)"]


def compared_rows(results: Results, rows: list[tuple[str, str, str, str, str]]) -> str:
    """A try against the defaults' run on the same phantom and seed, both in one pass per slice.

    Rows are (name, variant, label, the defaults' name, their variant); the
    defaults' runs predate mirror averaging, so one pass is the fair match.
    PSNR, SSIM and the classes are the try's, mirror-averaged.
    """
    out = []
    for name, variant, label, base_name, base_variant in rows:
        result, v = results.variant(name, variant)
        _, base = results.variant(base_name, base_variant)
        one, both, was = v["mri2ct_single_pass"], v["mri2ct"], base["mri2ct"]
        by_class = v["mri2ct_mae_hu_by_class"]
        out.append([label, result["phantom"], str(result["seed"]), f"{one['mae_hu']:.0f}",
                    f"{was['mae_hu']:.0f}", f"{both['mae_hu']:.0f}",
                    f"{both['psnr_db']:.1f} / {both['ssim']:.2f}",
                    f"{one['through_plane_mae_hu']:.0f} ({was['through_plane_mae_hu']:.0f})",
                    " / ".join(f"{by_class[c]:.0f}" for c in ("bone", "soft_tissue", "air"))])
    return _markdown(COMPARED_HEADER, out)


def quality_short(results: Results, rows: list[tuple[str, str, str]]) -> str:
    """MAE, PSNR and SSIM only (the README's summary)."""
    out = []
    for name, variant, label in rows:
        result, v = results.variant(name, variant)
        m = v["mri2ct"]
        out.append([label, str(result["seed"]), str(result["steps"]), f"{m['mae_hu']:.0f}",
                    f"{m['psnr_db']:.1f}", f"{m['ssim']:.2f}"])
    return _markdown(["run", "seed", "steps", "MRI -> CT MAE (HU)", "PSNR (dB)", "SSIM"], out)


TISSUES = (("air", "air (< -300 HU)"), ("soft", "soft tissue (-300..300 HU)"),
           ("bone", "bone (> 300 HU)"), ("soft_interior", "soft tissue >= 3 px from air and bone"))


def _tissue_cell(results: Results, kind: str, runs: list[tuple[str, str]], tissue: str) -> str:
    cells = []
    for name, variant in runs:
        t = results.variant(name, variant)[1]["mri2ct_by_tissue"][tissue]
        cells.append({"mae_bias": f"{t['mae_hu']:.0f} / {t['signed_hu']:+.0f}",
                      "voxels": f"{t['voxels']:,}",
                      "share": f"{100 * t['share']:.0f} %"}[kind])
    return ", ".join(cells)


def tissue_columns(results: Results, first: str,
                   columns: list[tuple[str, str, list[tuple[str, str]]]]) -> str:
    """MRI -> CT error by CT class: columns are (header, mae_bias|voxels|share, runs)."""
    rows = [[label] + [_tissue_cell(results, kind, runs, tissue) for _, kind, runs in columns]
            for tissue, label in TISSUES]
    return _markdown([first] + [header for header, _, _ in columns], rows)


def anatomy_floor(results: Results, seeds: list[tuple[str, str]]) -> str:
    """The phantom's anatomy floor (exact, and blurred where the file has it) per seed."""
    found = [results(f"quality-{name}") for name, _ in seeds]
    rows = [["exact"] + [f"{r['anatomy_floor_mae_hu']:.0f}" for r in found]]
    for sigma in ("0.5", "1.0"):
        cells = [r.get("anatomy_floor_blurred_mae_hu", {}).get(sigma) for r in found]
        rows.append([f"blurred, sigma {sigma} px"] + ["n/a" if c is None else f"{c:.0f}" for c in cells])
    return _markdown(["anatomy floor"] + [f"{label} (HU)" for _, label in seeds], rows)


HEAD_HEADER = ["run", "seed", "steps", "precision", "MRI -> CT MAE (HU)", "PSNR (dB)", "SSIM",
               "bone / soft tissue / air MAE (HU)", "through-plane MAE (HU)", "minutes"]
PRECISION_NAMES = {"float32": "float32", "mixed_bfloat16": "bf16", "mixed_float16": "fp16"}


def quality_by_class(results: Results, rows: list[tuple[str, str, str]]) -> str:
    """Quality with the per-class MAE and the through-plane error (the head phantom's table)."""
    out = []
    for name, variant, label in rows:
        result, v = results.variant(name, variant)
        m, by_class = v["mri2ct"], v["mri2ct_mae_hu_by_class"]
        classes = " / ".join(f"{by_class[c]:.0f}" for c in ("bone", "soft_tissue", "air"))
        out.append([label, str(result["seed"]), str(result["steps"]),
                    PRECISION_NAMES.get(v["precision"], v["precision"]), f"{m['mae_hu']:.0f}",
                    f"{m['psnr_db']:.1f}", f"{m['ssim']:.2f}", classes,
                    f"{m['through_plane_mae_hu']:.0f}", f"{v['train_minutes']:.1f}"])
    return _markdown(HEAD_HEADER, out)


def trajectory(results: Results, columns: list[tuple[str, ...]]) -> str:
    """MRI -> CT MAE (HU) at each kept checkpoint of long runs: one column per (name, variant).

    The checkpoints are the ``trajectory`` that ``quality.py`` scores for a run
    trained with ``checkpoint_every``; an empty cell: that run kept no
    checkpoint at those steps. A fourth element names the score to show
    (``mri2ct_single_pass``: a mirror-averaged run's one-pass figures beside
    runs scored before mirror averaging); the default is ``mri2ct``.
    """
    maes = []
    for name, variant, _, *key in columns:
        _, v = results.variant(name, variant)
        if "trajectory" not in v:
            raise SystemExit(f"error: quality-{name}.json: {variant} has no trajectory")
        score = key[0] if key else "mri2ct"
        maes.append({point["steps"]: point[score]["mae_hu"] for point in v["trajectory"]})
    steps = sorted(set().union(*maes))
    rows = [[f"{step:,}", *(f"{mae[step]:.0f}" if step in mae else "" for mae in maes)]
            for step in steps]
    return _markdown(["steps", *(column[2] for column in columns)], rows)


def floors_by_class(results: Results, name: str) -> str:
    """A phantom's floors (constant, lookup table, anatomy) with the same columns."""
    floors = results(f"quality-{name}")["floors"]
    out = []
    for key, label in (("constant", "one constant HU (the median of the test CTs in the body)"),
                       ("lookup_table", "best per-intensity lookup table (fitted on the test pairs)"),
                       ("anatomy", "anatomy floor (every tissue in place, densities unknown)")):
        f = floors[key]
        classes = " / ".join(f"{f['by_class_mae_hu'][c]:.0f}" for c in ("bone", "soft_tissue", "air"))
        out.append([label, f"{f['mae_hu']:.0f}", classes, f"{f['through_plane_mae_hu']:.0f}"])
    return _markdown(["floor", "MRI -> CT MAE (HU)", "bone / soft tissue / air MAE (HU)",
                      "through-plane MAE (HU)"], out)


# ---- speed: every figure with the command that reproduces it ----

def _precision_flag(policy: str) -> str:
    """The benchmarks' --mixed-precision value that gives ``policy``."""
    return {"float32": "off", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[policy]


def _train_command(r: dict) -> str:
    precision = _precision_flag(r["policy"])
    command = (f"KERAS_BACKEND={r['backend']} python benchmarks/bench_train.py --image-size "
               f"{r['image_size']} --batch-size {r['batch_size']} --steps {r['steps']} "
               f"--mixed-precision {precision}")
    if r["jit_compile"] and r["backend"] == "tensorflow":
        command += " --jit-compile"
    if r.get("slice_size") and r["slice_size"] != r["image_size"]:
        command += f" --slice-size {r['slice_size']}"
    if r.get("augment_resampling", "bilinear") != "bilinear":
        command += f" --augment-resampling {r['augment_resampling']}"
    if "gen_filters" in r:
        command += f" --gen-filters {r['gen_filters']}"
    return f"`{command}`"


def training_speed(results: Results, names: list[str]) -> str:
    rows = []
    for name in names:
        r = results(f"train-{name}")
        rows.append([r["backend"], r["policy"] + (", XLA" if r["jit_compile"] and r["backend"] == "tensorflow" else ""),
                     f"{r['image_size']}x{r['image_size']}", str(r["batch_size"]),
                     f"{r['images_per_s']:.2f}", f"{r['achieved_gflops']:.0f}",
                     f"{100 * r['fraction_of_peak']:.0f} %", f"{100 * r['input_wait_fraction']:.0f} %",
                     f"{r['parameters'] / 1e6:.1f} M", f"{r['flops_per_image'] / 1e9:.0f}",
                     _train_command(r)])
    return _markdown(["backend", "precision", "crop", "batch", "images/s", "GFLOP/s",
                      "of peak", "input wait", "parameters", "GFLOP/image", "reproduce"], rows)


def peak_speed(results: Results, names: list[str]) -> str:
    rows = []
    for name in names:
        r = results(f"peak-{name}")
        command = (f"`KERAS_BACKEND={r['backend']} python benchmarks/bench_peak.py --image-size "
                   f"{r['image_size']} --batch-size {r['batch_size']} --steps {r['repeats']}`")
        rows.append([r["backend"], f"{r['matmul_float32_gflops']:.0f} / {r['conv_float32_gflops']:.0f}",
                     f"{r['matmul_bfloat16_gflops']:.0f} / {r['conv_bfloat16_gflops']:.0f}", command])
    return _markdown(["backend", "float32 GFLOP/s (matmul / conv)",
                      "bfloat16 GFLOP/s (matmul / conv)", "reproduce"], rows)


def conv_ceiling(results: Results, name: str, layers: int = 8) -> str:
    """bench_convs.py: the step's conv-only bound, then the layers that weigh most in it."""
    r = results(f"convs-{name}")
    precision = _precision_flag(r["policy"])
    command = (f"`KERAS_BACKEND={r['backend']} python benchmarks/bench_convs.py --image-size "
               f"{r['image_size']} --batch-size {r['batch_size']} --mixed-precision {precision} "
               f"--repeats {r['repeats']}`")
    rows = [[f"**all {len(r['layers'])}, alone** ({r['conv_gflop_per_step']:.0f} GFLOP per "
             f"step of {r['batch_size']})", "", "",
             f"{r['conv_only_gflops']:.0f} over the step: **{100 * r['conv_ceiling_fraction']:.0f} %"
             f"** of the peak ({r['peak_gflops']:.0f})", "100 %"]]
    for layer in r["layers"][:layers]:
        speed = layer["gflops_per_s"]
        rows.append([f"`{layer['layer']}`", "x".join(str(d) for d in layer["input"][1:]),
                     "{}x{}, {}->{}".format(*layer["kernel"])
                     + (f", stride {layer['strides'][0]}" if layer["strides"][0] > 1 else ""),
                     f"{speed['forward']:.0f} / {speed['input_grad']:.0f} / "
                     f"{speed['weight_grad']:.0f}", f"{100 * layer['share_of_step']:.1f} %"])
    return (_markdown(["convolutions", "input (HxWxC)", "kernel",
                       "GFLOP/s: forward / input grad / weight grad", "share of conv time"], rows)
            + f"\nReproduce: {command}\n")


def predict_speed(results: Results, names: list[str]) -> str:
    rows = []
    for name in names:
        r = results(f"predict-{name}")
        size, _, slices = r["volume"]
        precision = {"float32": "off", "mixed_bfloat16": "bfloat16"}[r["policy"]]
        repeats = f" --repeats {r.get('repeats', 1)}"  # files before --repeats ran one process each
        command = (f"`KERAS_BACKEND={r['backend']} python benchmarks/bench_predict.py --image-size {size} "
                   f"--slices {slices} --batch-size {r['batch_size']} --mixed-precision {precision}"
                   f"{repeats}`")
        volume = "x".join(str(n) for n in r["volume"])
        for way, key in (("`predict` in process", "in_process"), ("SavedModel", "savedmodel")):
            call = r.get(key + "_call_seconds")  # newer files: the call alone, without start-up
            rows.append([volume, r["policy"], way, f"{r[key + '_seconds']:.1f}",
                         "n/a" if call is None else f"{call:.1f}",
                         f"{r[key + '_slices_per_s']:.1f}", f"{r[key + '_peak_rss_mb'] / 1000:.1f}",
                         command])
    return _markdown(["volume", "precision", "how", "whole process (s)", "call alone (s)",
                      "slices/s", "peak RSS (GB)", "reproduce"], rows)


def predict_forward(results: Results, names: list[str]) -> str:
    """One batch through each forward pass, timed in turn with the conv peak (fractions of it)."""
    rows = []
    for name in names:
        r = results(f"predict-{name}")
        for way, key in (("compiled pass (`predict`)", "forward"),
                         ("SavedModel signature", "savedmodel_forward")):
            rows.append([way, f"{r[key + '_slices_per_s']:.2f}", f"{r[key + '_achieved_gflops']:.1f}",
                         f"{100 * r[key + '_fraction_of_peak']:.0f} %"])
        rows.append([f"conv peak ({r['peak_shape']})", "", f"{r['peak_gflops']:.1f}", "100 %"])
        rows.append(["whole `predict` call / serving loop (read, translate, write)",
                     f"{r['in_process_call_slices_per_s']:.2f} / {r['savedmodel_call_slices_per_s']:.2f}",
                     f"{r['in_process_call_achieved_gflops']:.1f} / "
                     f"{r['savedmodel_call_achieved_gflops']:.1f}",
                     f"{100 * r['in_process_call_fraction_of_peak']:.0f} % / "
                     f"{100 * r['savedmodel_call_fraction_of_peak']:.0f} %"])
    return _markdown(["256x256 slices, batch 8, bf16", "slices/s", "GFLOP/s", "of peak"], rows)


def data_scale(results: Results, name: str) -> str:
    """Training on a real-sized NIfTI set at 1x and 4x the volumes (bench_data.py)."""
    r = results(name)
    side, _ = r["slice_shape"]
    precision = {"float32": "off", "mixed_bfloat16": "bfloat16"}[r["runs"][0]["policy"]]
    rows = []
    for run in r["runs"]:
        rows.append([f"{run['volumes_per_modality']} x {side}x{side}x{r['slices_per_volume']}",
                     f"{run['mri_slices']:,} + {run['ct_slices']:,}",
                     f"{run['preprocess_s']:.0f}", f"{run['images_per_s']:.2f}",
                     f"{100 * run['input_wait_fraction']:.1f} %",
                     f"{run['peak_rss_mb']:,.0f}", f"{run['fit_cli_peak_rss_mb']:,.0f}"])
    small = r["runs"][0]["volumes_per_modality"]
    scale = r["runs"][1]["volumes_per_modality"] // small
    rows.append(["growth, 4x the volumes", "", "", "", "",
                 f"{100 * r['peak_rss_growth']:+.1f} %", f"{100 * r['fit_cli_peak_rss_growth']:+.1f} %"])
    table = _markdown(["volumes per modality", "slices (MRI + CT)", "cache build (s)",
                       "images/s", "input wait", "peak RSS (MB)", "`fit` peak RSS (MB)"], rows)
    return table + (f"\nReproduce: `python benchmarks/bench_data.py --workdir DIR --volumes {small} "
                    f"--scale {scale} --slices {r['slices_per_volume']} --size {side} "
                    f"--image-size {r['image_size']} --batch-size {r['batch_size']} "
                    f"--steps {r['steps']} --mixed-precision {precision}`\n")


# ---- which runs each table shows ----

# The defaults are the deterministic latent since issue 27: the benchmark's no_kl variant.
DEFAULTS = [(f"ablate-bce-seed{seed}", "no_kl", "defaults, one pass per slice (an earlier run)")
            for seed in range(3)]
MIRRORED = ("defaults-kept-seed0", "full", "**defaults** (mirror-averaged)")
ONE_PASS = ("defaults-kept-seed0", "full@single_pass", "the same run, one pass per slice")
VAE = "VAE latent (`vae_sampling`, `beta_kl=1e-3`: the defaults before)"
VAE_DEFAULTS = [(f"bce-seed{seed}", "full", VAE) for seed in range(3)]
LEAST_SQUARES = "VAE latent, adversarial_loss=lsgan (the defaults before that)"
LSGAN_DEFAULTS = [(f"tune-ld2-struct1-seed{seed}", "full", LEAST_SQUARES) for seed in range(3)]
NO_KL = "no_kl (deterministic latent)"
SINGLE_HEAD = "single_head (one discriminator head), VAE latent"
DET_SINGLE_HEAD = "single_head (one discriminator head)"
WARMUP = "disc_head_warmup=0.5 (the deepest head alone first, then all three)"
HEAD_WEIGHTS_3X = "disc_head_weights=[0.2, 0.2, 0.6] (deepest head 3x)"
LONG_RECIPE = "**long recipe**: 9,000 steps, VAE latent, least squares"
PAIRED = ("reference-seed0", "paired", "*paired reference (told the answer)*")
CYCLE_20 = "twice the cycle weight (`lambda_cycle=20`)"
HEAD_TEMPERATURE = "adaptive head weights (`disc_head_temperature=0.1`)"
SPECTRAL = "spectrally normalised discriminators (`disc_norm=spectral`)"
SPECTRAL_TTUR = "the same, discriminators' learning rate 4x (`learning_rate_d=8e-4`)"
WIDER = "a wider generator (`gen_filters=48`)"
FEATURE_MATCHING = "feature matching (`lambda_feature_match=10`)"
MIND = "MIND structure term (`structure_kind=mind`, `lambda_structure=5`)"
BEFORE_STRUCTURE = [("tune-noid-seed0", "full"), ("tune-noid-seed1", "full")]


def _tissue_pairs(before: str, after: str, runs: list[tuple[str, str, str]]) -> list:
    """Columns 'before, seed S' and 'after, seed S' for each (seed, before run, after run)."""
    columns = []
    for seed, old, new in runs:
        columns += [(f"{before}, seed {seed}", "mae_bias", [(old, "full")]),
                    (f"{after}, seed {seed}", "mae_bias", [(new, "full")])]
    return columns


TABLES = {
    "quality-summary": lambda r: quality_short(r, [MIRRORED, ONE_PASS, PAIRED]),
    "quality-mirror": lambda r: mirror_rows(r, [
        ("defaults-kept-seed0", "full", "defaults"),
        ("cpu-long-vae-s96-seed0", "full", "long recipe, 96 training subjects"),
        ("cpu-long-vae-ema-seed0", "full", "long recipe with a weight average (EMA 0.999)"),
        ("cpu-long-vae-ema-seed1", "full", "long recipe with a weight average (EMA 0.999)"),
        ("cpu-long-det-ema-seed0", "full", "defaults for 9,000 steps with a weight average "
         "(EMA 0.999)"),
    ]),
    "quality-mind": lambda r: compared_rows(r, [
        (f"mind5-seed{seed}", "full", MIND, f"ablate-bce-seed{seed}", "no_kl") for seed in range(3)
    ] + [(f"head64-mind5-seed{seed}", "full", MIND, f"head64-bce-ablate-seed{seed}", "no_kl")
         for seed in range(3)]),
    "quality-cycle-heads": lambda r: compared_rows(r, [
        (f"tune-cycle20-seed{seed}", "full", CYCLE_20, f"ablate-bce-seed{seed}", "no_kl")
        for seed in range(3)
    ] + [(f"head64-cycle20-seed{seed}", "full", CYCLE_20, f"head64-bce-ablate-seed{seed}", "no_kl")
         for seed in range(2)] + [
        ("tune-headtemp-seed0", "full", HEAD_TEMPERATURE, "ablate-bce-seed0", "no_kl"),
        ("head64-headtemp-seed0", "full", HEAD_TEMPERATURE, "head64-bce-ablate-seed0", "no_kl")]),
    "quality-feature-matching": lambda r: compared_rows(r, [
        (f"tune-featmatch-seed{seed}", "full", FEATURE_MATCHING, f"ablate-bce-seed{seed}", "no_kl")
        for seed in range(2)] + [
        (f"head64-featmatch-seed{seed}", "full", FEATURE_MATCHING,
         f"head64-bce-ablate-seed{seed}", "no_kl") for seed in range(2)]),
    "quality-gen-width": lambda r: compared_rows(r, [
        (f"tune-gen48-seed{seed}", "full", WIDER, f"ablate-bce-seed{seed}", "no_kl")
        for seed in range(2)] + [
        (f"head64-gen48-seed{seed}", "full", WIDER, f"head64-bce-ablate-seed{seed}", "no_kl")
        for seed in range(2)]),
    "quality-spectral": lambda r: compared_rows(r, [
        ("tune-specnorm-seed0", "full", SPECTRAL, "ablate-bce-seed0", "no_kl"),
        ("head64-specnorm-seed0", "full", SPECTRAL, "head64-bce-ablate-seed0", "no_kl"),
        ("tune-specnorm-ttur-seed0", "full", SPECTRAL_TTUR, "ablate-bce-seed0", "no_kl")]),
    "quality-defaults": lambda r: quality_rows(r, [MIRRORED] + DEFAULTS + [
        (f"det-sh-seed{seed}", "single_head", DET_SINGLE_HEAD) for seed in range(2)
    ] + [("warm-seed0", "full", WARMUP),
         ("cpu-long-vae-seed0", "full", LONG_RECIPE + " (CPU, bf16, in three pieces)"),
         ("cpu-long-vae-seed1", "full", LONG_RECIPE + " (CPU, bf16)"),
         ("cpu-long-vae-s96-seed0", "full", LONG_RECIPE + ", 96 training subjects (CPU, bf16; "
          "mirror-averaged)"),
         ("cpu-long-vae-ema-seed0", "full", LONG_RECIPE + ", weight average `ema_momentum=0.999` "
          "(CPU, bf16, in two pieces; mirror-averaged)"),
         ("cpu-long-vae-ema-seed1", "full", LONG_RECIPE + ", weight average `ema_momentum=0.999` "
          "(CPU, bf16, in two pieces; mirror-averaged)"),
         ("cpu-long-det-seed0", "full", "defaults for 9,000 steps (CPU, bf16, in two pieces)"),
         ("cpu-long-det-seed1", "full", "defaults for 9,000 steps (CPU, bf16, in three pieces)"),
         ("cpu-long-det-ema-seed0", "full", "defaults for 9,000 steps, weight average "
          "`ema_momentum=0.999` (CPU, bf16; mirror-averaged)"),
         ] + VAE_DEFAULTS + [
        (f"ablate-bce-seed{seed}", "single_head", SINGLE_HEAD) for seed in range(2)
    ] + LSGAN_DEFAULTS + [
        ("ablate-ld2-seed0", "no_kl", f"{NO_KL}, least squares"),
        ("ablate-ld2-seed1", "no_kl", f"{NO_KL}, least squares"),
        ("ablate-ld2-seed0", "single_head", f"{SINGLE_HEAD}, least squares"),
        ("ablate-ld2-seed1", "single_head", f"{SINGLE_HEAD}, least squares"),
        ("ablate-ld2-seed2", "single_head", f"{SINGLE_HEAD}, least squares"),
        ("ablate-ld2-seed0", "no_augment", "no_augment"),
        ("ablate-ld2-seed0", "copies", "copies (one fixed augmented copy per sample)"),
        ("tune-ld1-seed0", "full", "latent 1/1 (no stride)"),
        ("tune-ld1-seed1", "full", "latent 1/1 (no stride)"),
        ("long4000-ld2-seed0", "full", "long (VAE, least squares)"),
        ("subjects96-seed0", "full", "96 training subjects (VAE, least squares)"),
        ("subjects96-long-seed0", "full", "96 training subjects, long (VAE, least squares)"),
        ("gpu-long-seed0", "full", "long recipe (VAE, least squares; H200 GPU, JAX, bf16)"),
        ("gpu-long-seed1", "full", "long recipe (VAE, least squares; H200 GPU, JAX, bf16)"),
        ("cpu-jax-bf16-seed0", "full", "the long recipe's setup (VAE, least squares; CPU, JAX, bf16)"),
        ("s20-lanczos-seed0", "full", "augment_resampling lanczos"),
        ("tune-reflect-seed0", "full", "padding=reflect"),
        ("tune-dischp-seed0", "full", "disc_high_pass=true"),
        ("tune-dischp-seed1", "full", "disc_high_pass=true"),
        ("tune-scales3-seed0", "full", "structure_scales=3"),
        ("tune-judge-mean-seed0", "full", "judge_mean=true"),
        ("tune-k3-seed0", "full", "context_slices=3 (2.5-D)"),
        ("tune-lr4-seed0", "full", "learning rates 4e-4 (G and D)"),
        ("tune-lr4-seed1", "full", "learning rates 4e-4 (G and D)"),
        ("tune-cycle5-seed0", "full", "lambda_cycle=5"),
        ("tune-cycle5-seed1", "full", "lambda_cycle=5"),
        ("tune-dlr8-seed0", "full", "learning_rate_d=8e-4 (D four times G)"),
        ("tune-pool0-seed0", "full", "pool_size=0 (no history pool)"),
    ] + [(f"hw6-seed{seed}", "full", HEAD_WEIGHTS_3X) for seed in range(3)] + [
        PAIRED]),
    "quality-quickstart": lambda r: quality_by_class(r, [
        ("quickstart500-det-seed0", "no_kl", "quick start: the default `fit` (500 steps)"),
        ("quickstart500-bce-seed0", "full", "the same with the VAE latent (the default before)"),
        ("quickstart500-seed0", "full", "the VAE latent with least squares (before that)"),
        ("quickstart500-lr8-seed0", "full", "500 steps, learning rates 8e-4"),
        ("quickstart1000-seed0", "full", "1,000 steps (`fit --epochs 20`)"),
        ("cpu-jax-bf16-seed0", "full", "2,000 steps (JAX backend, bf16)"),
    ]),
    "quality-defaults-tissue": lambda r: tissue_columns(r, "CT class, seed 0: MAE / bias (HU)", [
        ("defaults", "mae_bias", [("ablate-bce-seed0", "no_kl")]),
        ("single_head", "mae_bias", [("det-sh-seed0", "single_head")]),
        ("VAE latent (before)", "mae_bias", [("bce-seed0", "full")]),
        ("least squares (VAE)", "mae_bias", [("tune-ld2-struct1-seed0", "full")]),
        ("single_head (VAE)", "mae_bias", [("ablate-bce-seed0", "single_head")]),
        ("no_kl, least squares", "mae_bias", [("ablate-ld2-seed0", "no_kl")]),
        ("single_head, least squares", "mae_bias", [("ablate-ld2-seed0", "single_head")]),
        ("latent 1/1", "mae_bias", [("tune-ld1-seed0", "full")]),
        ("long (4,000)", "mae_bias", [("long4000-ld2-seed0", "full")]),
        ("long recipe (9,000, CPU)", "mae_bias", [("cpu-long-vae-seed0", "full")]),
        ("defaults, 9,000 (CPU)", "mae_bias", [("cpu-long-det-seed0", "full")]),
        ("long recipe, VAE (9,000, GPU)", "mae_bias", [("gpu-long-seed0", "full")]),
        ("its setup, 2,000 (CPU)", "mae_bias", [("cpu-jax-bf16-seed0", "full")]),
        ("padding=reflect", "mae_bias", [("tune-reflect-seed0", "full")]),
        ("disc_high_pass", "mae_bias", [("tune-dischp-seed0", "full")]),
        ("paired reference", "mae_bias", [("reference-seed0", "paired")])]),
    "quality-long-trajectory": lambda r: trajectory(r, [
        ("cpu-long-vae-seed0", "full", "MRI -> CT MAE (HU): long recipe, seed 0 (CPU)"),
        ("cpu-long-vae-seed1", "full", "long recipe, seed 1 (CPU)"),
        ("cpu-long-det-seed1", "full", "defaults for 9,000 steps, seed 1 (CPU)"),
        ("cpu-long-vae-ema-seed0", "full", "long recipe + EMA 0.999, seed 0 (CPU, one pass)",
         "mri2ct_single_pass"),
        ("cpu-long-vae-ema-seed1", "full", "long recipe + EMA 0.999, seed 1 (CPU, one pass)",
         "mri2ct_single_pass"),
        ("cpu-long-det-ema-seed0", "full", "defaults + EMA 0.999, seed 0 (CPU, one pass)",
         "mri2ct_single_pass")]),
    "anatomy-floor": lambda r: anatomy_floor(r, [("ablate-ld2-seed0", "seed 0"),
                                                 ("ablate-ld2-seed1", "seed 1")]),
    "history-identity": lambda r: quality_rows(r, [
        ("phantom64-seed0", v, v) for v in ("full", "no_kl", "single_head", "no_augment", "copies")]
        + [("phantom64-seed1", "full", "full")]),
    "history-noid": lambda r: quality_rows(r, [
        (name, "full", "full + lambda_identity=0") for name, _ in BEFORE_STRUCTURE]),
    "history-noid-ablations": lambda r: quality_rows(r, [
        ("tune-noid-seed0", v, f"{v} + lambda_identity=0")
        for v in ("full", "no_kl", "single_head", "no_augment", "copies")]),
    "history-noid-tissue": lambda r: tissue_columns(r, "CT class, seed 0: MAE / bias (HU)", [
        (v, "mae_bias", [("tune-noid-seed0", v)])
        for v in ("full", "no_kl", "single_head", "no_augment", "copies")]),
    "history-beta": lambda r: quality_rows(r, [
        (f"tune-beta1e4-seed{s}", "full", "full + lambda_identity=0 beta_kl=0.0001") for s in (0, 1)]),
    "history-beta-tissue": lambda r: tissue_columns(r, "CT class: MAE / bias (HU)", _tissue_pairs(
        "defaults", "beta_kl 1e-4", [(s, f"tune-noid-seed{s}", f"tune-beta1e4-seed{s}") for s in (0, 1)])),
    "history-tuning": lambda r: quality_rows(r, [
        ("tune-heads5-seed0", "full", "full + disc_heads=5"),
        ("tune-ld2-seed0", "full", "full + latent_downsample=2"),
        ("tune-skip-seed0", "full", "full + skip_connections=true"),
        ("tune-aug-seed0", "full", "full + rotation_deg=15 zoom=0.2 translation=0.1"),
        ("tune-aug-seed1", "full", "full + rotation_deg=15 zoom=0.2 translation=0.1"),
        ("tune-ema-seed0", "full", "full + ema_momentum=0.995 (float32, other CPU)")]),
    "history-res6": lambda r: quality_rows(r, [
        (f"tune-res6-seed{s}", "full", "full + gen_res_blocks=6") for s in (0, 1)]),
    "history-res6-tissue": lambda r: tissue_columns(r, "CT class: MAE / bias (HU)", _tissue_pairs(
        "defaults", "6 blocks", [(s, f"tune-noid-seed{s}", f"tune-res6-seed{s}") for s in (0, 1)])),
    "history-struct1": lambda r: quality_rows(r, [
        (f"tune-struct1-seed{s}", "full", "full + lambda_structure=1") for s in (0, 1)]),
    "history-struct1-tissue": lambda r: tissue_columns(r, "CT class: MAE / bias (HU)", _tissue_pairs(
        "before", "structure", [(s, f"tune-noid-seed{s}", f"tune-struct1-seed{s}") for s in (0, 1)])),
    "history-latent": lambda r: quality_rows(r, [
        (f"tune-ld2-struct1-seed{s}", "full", "latent_downsample=2") for s in (0, 1)] + [
        (f"tune-struct3-seed{s}", "full", "lambda_structure=3") for s in (0, 1)] + [
        (f"tune-ld2-struct3-seed{s}", "full", "latent_downsample=2 + lambda_structure=3")
        for s in (0, 1)] + [
        ("tune-noresample-seed0", "full", "rotation 0, zoom 0, shift 0")]),
    "history-latent-tissue": lambda r: tissue_columns(
        r, "CT class: MAE / bias (HU), seed 0, seed 1", [
            (label, "mae_bias", [(f"{name}-seed{s}", "full") for s in (0, 1)])
            for label, name in (("structure 1 (before)", "tune-struct1"),
                                ("latent 1/2", "tune-ld2-struct1"),
                                ("structure 3", "tune-struct3"), ("both", "tune-ld2-struct3"))]),
    "history-long": lambda r: quality_rows(r, [
        ("tune-noid-seed0", "full", "defaults of the time (2,000 steps)"),
        ("long4000-seed0", "full", "the same, 4,000 steps")]),
    "history-error-by-class": lambda r: tissue_columns(r, "CT class", [
        ("voxels", "voxels", [("tune-noid-seed0", "full")]),
        ("MAE / bias (HU): ema_momentum, identity off", "mae_bias",
         [("tune-ema-seed0", "full"), ("tune-noid-seed0", "full")]),
        ("share of all error", "share", [("tune-ema-seed0", "full"), ("tune-noid-seed0", "full")])]),
    "quality-head": lambda r: quality_by_class(r, [
        ("head64-600-k1-seed0", "full", "least-squares defaults (2-D)"),
        ("head64-600-k3-seed0", "full", "context_slices=3 (2.5-D)"),
    ] + [(f"head64-bce-ablate-seed{seed}", "no_kl", "**defaults (2-D)**") for seed in range(3)]
    + [(f"head64-det-sh-seed{seed}", "single_head", DET_SINGLE_HEAD) for seed in range(2)]
    + [("head64-warm-seed0", "full", WARMUP)]
    + [(f"head64-bce-seed{seed}", "full", VAE) for seed in range(3)]
    + [(f"head64-bce-ablate-seed{seed}", "single_head", SINGLE_HEAD) for seed in range(2)]
    + [(f"head64-k1-seed{seed}", "full", LEAST_SQUARES) for seed in range(3)] + [
        ("head64-k1-seed0", "no_kl", f"{NO_KL}, least squares"),
        ("head64-k1-seed1", "no_kl", f"{NO_KL}, least squares"),
        ("head64-k1-seed0", "single_head", f"{SINGLE_HEAD}, least squares"),
        ("head64-k1-seed1", "single_head", f"{SINGLE_HEAD}, least squares"),
        ("head64-sh-seed2", "single_head", f"{SINGLE_HEAD}, least squares"),
        ("head64-k3-seed0", "full", "context_slices=3 (2.5-D)"),
        ("head64-reflect-seed0", "full", "padding=reflect"),
        ("head64-dischp-seed0", "full", "disc_high_pass=true"),
        ("head64-dischp-seed1", "full", "disc_high_pass=true"),
        ("head64-scales3-seed0", "full", "structure_scales=3"),
        ("head64-cycle5-seed0", "full", "lambda_cycle=5"),
    ] + [(f"head64-hw6-seed{seed}", "full", HEAD_WEIGHTS_3X) for seed in range(3)] + [
        ("head64-paired-seed0", "paired", "*paired reference (told the answer)*")]),
    "quality-head-floors": lambda r: floors_by_class(r, "head64-600-k1-seed0"),
    "speed-peak": lambda r: peak_speed(r, ["tensorflow"]),
    "speed-train": lambda r: training_speed(r, [
        "tensorflow-float32-128px-b4", "tensorflow-mixed_bfloat16-128px-b4",
        "tensorflow-mixed_bfloat16-128px-b1", "tensorflow-mixed_bfloat16-256px-b4",
        "tensorflow-mixed_bfloat16-256px-b1", "tensorflow-mixed_bfloat16-256px-b4-from512",
        "tensorflow-float32-128px-b4-xla",
        "jax-mixed_bfloat16-128px-b4", "torch-mixed_bfloat16-128px-b4",
        "tensorflow-float32-64px-b4", "tensorflow-float32-64px-b4-lanczos",
        "tensorflow-float32-64px-b4-g32", "tensorflow-float32-64px-b4-g48"]),
    "speed-convs": lambda r: conv_ceiling(r, "tensorflow-mixed_bfloat16-256px-b4"),
    "speed-predict": lambda r: predict_speed(r, ["tensorflow-mixed_bfloat16-256px"]),
    "speed-predict-forward": lambda r: predict_forward(r, ["tensorflow-mixed_bfloat16-256px"]),
    "speed-data": lambda r: data_scale(r, "bench-data"),
}


def render(text: str, results: Results, source: str) -> str:
    """The document with every marked table rewritten from the results."""
    def table(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"error: {source}: unknown table {name} (known: {', '.join(TABLES)})")
        return match.group(1) + TABLES[name](results) + match.group(4)

    return MARKED.sub(table, text)


def differing_tables(old: str, new: str) -> list[str]:
    olds = {m.start(): (m["name"], m["body"]) for m in MARKED.finditer(old)}
    news = [m["body"] for m in MARKED.finditer(new)]
    return [name for (name, body), fresh in zip(olds.values(), news) if body != fresh]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a table differs from the JSON")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="repository root holding the documents and benchmarks/results")
    args = parser.parse_args(argv)
    results = Results(args.root / "benchmarks" / "results")
    stale = []
    for document in DOCUMENTS:
        path = args.root / document
        old = path.read_text(encoding="utf-8")
        new = render(old, results, document)
        if new == old:
            continue
        if args.check:
            stale += [f"{document}: table {name} differs from benchmarks/results"
                      for name in differing_tables(old, new)]
        else:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote the tables of {document}")
    for line in stale:
        print(line, file=sys.stderr)
    if stale:
        print("run: python benchmarks/tables.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
