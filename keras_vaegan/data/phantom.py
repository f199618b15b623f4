"""Deterministic synthetic head phantom: paired T1-like MRI and CT (HU) slices.

The default dataset when no data is given and the data the tests use. Each
subject (one seed) is a stack of axial slices through a head: skin,
subcutaneous fat, a skull of cortical outer and inner tables with fatty
marrow (diploe) between them, CSF, grey and white matter, deep grey nuclei,
lateral ventricles, occasional lesions, frontal sinuses and, in the lowest
slices, the face with maxillary sinuses and the nasal cavity. Shapes change
smoothly from slice to slice.

The MRI is T1-like: fat bright, white matter brighter than grey matter, CSF
dark, cortical bone and air both near 0 while marrow is medium-bright. That
bone and air look alike in MRI but not in CT is what makes MRI -> CT hard.
The MRI carries a smooth multiplicative bias field and Rician noise; the CT
carries gaussian noise. Tissue boundaries are rendered at twice the
resolution and averaged (partial volume), then blurred slightly.

Geometry is defined on a normalised field of view [-1, 1]^2, so a subject
rendered at 64 or 128 pixels is the same head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from keras_vaegan.data.filters import gaussian_blur
from keras_vaegan.errors import VAEGANError

# tissue labels ------------------------------------------------------------------
AIR, SKIN, FAT, CORTICAL_BONE, MARROW, CSF, GREY_MATTER, WHITE_MATTER, LESION, \
    SOFT_TISSUE, SINUS_AIR = range(11)
TISSUES = {
    "air": AIR, "skin": SKIN, "fat": FAT, "cortical_bone": CORTICAL_BONE, "marrow": MARROW,
    "csf": CSF, "grey_matter": GREY_MATTER, "white_matter": WHITE_MATTER, "lesion": LESION,
    "soft_tissue": SOFT_TISSUE, "sinus_air": SINUS_AIR,
}
CT_RANGE_HU = (-1024.0, 3071.0)
_SUPERSAMPLE = 2
_HEAD_HEIGHT = 1.5  # head height along the slice axis, in half-field-of-view units


@dataclass
class PhantomSubject:
    """One phantom head: paired MRI and CT volumes [slices, size, size]."""

    mri: np.ndarray  # float32, T1-like intensities, roughly 0..1000
    ct: np.ndarray  # float32, Hounsfield units
    mask: np.ndarray  # uint8, 1 inside the head (body mask)
    labels: np.ndarray  # uint8 tissue label per pixel (see TISSUES)
    seed: int


SubjectMaker = Callable[[int, int, int], PhantomSubject]  # (seed, size, slices) -> subject


def subject_seed(seed: int, index: int) -> int:
    """The seed of subject ``index`` in a dataset drawn with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _draw_subject(seed: int, size: int, slices: int):
    """A subject's anatomy, contrast and fine labels, and its generator for the noise after them."""
    size, slices = int(size), int(slices)
    if size < 16:
        raise VAEGANError(None, f"phantom size must be at least 16 pixels, got {size}")
    if slices < 1:
        raise VAEGANError(None, f"phantom needs at least one slice, got {slices}")
    rng = np.random.default_rng(int(seed))
    anatomy = _draw_anatomy(rng, slices)
    contrast = _draw_contrast(rng)
    return rng, anatomy, contrast, _label_volume(anatomy, size * _SUPERSAMPLE)


def make_subject(seed: int, size: int = 64, slices: int = 8) -> PhantomSubject:
    """One phantom head of ``slices`` axial slices of ``size`` x ``size`` pixels."""
    rng, anatomy, contrast, labels_fine = _draw_subject(seed, size, slices)
    size = int(size)
    labels = _mode_downsample(labels_fine)
    ct_clean = _downsample(contrast["ct"][labels_fine])
    mri_clean = _downsample(contrast["mri"][labels_fine])
    head_fraction = _downsample((labels_fine != AIR).astype(np.float32))
    mask = (head_fraction >= 0.5).astype(np.uint8)

    ct = _blur(ct_clean, _CT_BLUR) + rng.normal(0.0, contrast["ct_noise"], ct_clean.shape)
    ct = np.clip(ct, *CT_RANGE_HU).astype(np.float32)

    mri = _blur(mri_clean, 0.5) * _bias_field(rng, anatomy["t"], size)
    sigma = contrast["mri_noise"]
    real = mri + rng.normal(0.0, sigma, mri.shape)
    imag = rng.normal(0.0, sigma, mri.shape)
    mri = np.sqrt(real * real + imag * imag).astype(np.float32)  # Rician magnitude
    return PhantomSubject(mri=mri, ct=ct, mask=mask, labels=labels, seed=int(seed))


def expected_ct(seed: int, size: int = 64, slices: int = 8) -> np.ndarray:
    """The CT of ``make_subject(seed, size, slices)`` as the best MRI -> CT method would draw it.

    A subject's tissue densities are drawn independently of its MRI, so no
    method can read them off the MRI; knowing the anatomy exactly, the middle
    of each tissue's HU range is the guess with the least expected absolute
    error. This is that CT (same partial volume and blur, no noise): its MAE
    against the subject's CT is the phantom's floor for any MRI -> CT method.
    """
    _, _, contrast, labels_fine = _draw_subject(seed, size, slices)
    ct = _downsample(_mid_range_ct(contrast["lesion_bright"])[labels_fine])
    return np.clip(_blur(ct, _CT_BLUR), *CT_RANGE_HU).astype(np.float32)


def make_slices(count: int, size: int = 64, seed: int = 0, slices_per_subject: int = 8,
                make: SubjectMaker | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` paired slices (mri, ct, mask), each [count, size, size], from as many subjects as needed.

    ``make`` draws one subject (default: this module's ``make_subject``; the
    harder head of ``phantom_head`` plugs in here).
    """
    make = make or make_subject
    count, slices_per_subject = int(count), int(slices_per_subject)
    if count < 1:
        raise VAEGANError(None, f"phantom slice count must be >= 1, got {count}")
    if slices_per_subject < 1:
        raise VAEGANError(None, f"phantom slices per subject must be >= 1, got {slices_per_subject}")
    subjects = -(-count // slices_per_subject)
    drawn = [make(subject_seed(seed, i), size, slices_per_subject) for i in range(subjects)]
    mri = np.concatenate([s.mri for s in drawn])[:count]
    ct = np.concatenate([s.ct for s in drawn])[:count]
    mask = np.concatenate([s.mask for s in drawn])[:count]
    return mri, ct, mask


def slice_groups(count: int, slices_per_subject: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(subject, z index) of each slice ``make_slices`` returns, int64 [count] each.

    ``make_slices`` concatenates whole subjects in order, each in z order,
    so slice i is slice ``i % slices_per_subject`` of subject
    ``i // slices_per_subject``: the groups and positions of 2.5-D stacks.
    """
    index = np.arange(int(count), dtype=np.int64)
    return index // int(slices_per_subject), index % int(slices_per_subject)


def write_phantom(out_dir: str | os.PathLike, subjects: int, slices: int, size: int,
                  fmt: str = "png", seed: int = 0, make: SubjectMaker | None = None,
                  spacing: Callable[[int, int], tuple] | None = None) -> list[str]:
    """Write a phantom dataset; returns the paths written.

    Slice formats (png, tif, npy): ``out_dir/{mri,ct,mask}/<subject>_<slice>.<fmt>``,
    CT as HU + 1024 in 16-bit PNG/TIFF (HU in .npy), MRI intensities as 16-bit
    PNG/TIFF, mask 0/255 8-bit. ``nii``: ``out_dir/<subject>/{mri,ct,mask}.nii.gz``
    with one affine (1 mm voxels), data stored as [column, row, slice]; the
    affine says columns run to the patient's left, rows to posterior and
    slices to superior (LPS), which is how the phantom is drawn, so
    ``volumes.read_volume`` gives back the slices as ``make_subject`` made them.
    ``make`` draws one subject (as for ``make_slices``); ``spacing(seed, size)``
    gives its NIfTI voxel size in mm (default 1 mm).
    """
    make = make or make_subject
    from keras_vaegan.data.writers import write_slice

    out_dir = os.fspath(out_dir)
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in ("png", "tif", "tiff", "npy", "nii", "nii.gz"):
        raise VAEGANError(None, f"phantom format must be png, tif, npy or nii, got '{fmt}'")
    if int(subjects) < 1:
        raise VAEGANError(None, f"phantom subjects must be >= 1, got {subjects}")
    written: list[str] = []
    for index in range(int(subjects)):
        subject = make(subject_seed(seed, index), size, slices)
        if fmt in ("nii", "nii.gz"):
            voxel = spacing(subject.seed, size) if spacing else (1.0, 1.0, 1.0)
            written.extend(_write_nifti_subject(os.path.join(out_dir, f"{index:03d}"), subject,
                                                voxel))
            continue
        for k in range(subject.mri.shape[0]):
            name = f"{index:03d}_{k:03d}.{fmt}"
            for folder, image, units, modality in (
                    ("mri", subject.mri[k], "percentile", "mri"),
                    ("ct", subject.ct[k], "hu", "ct"),
                    ("mask", subject.mask[k] * 255.0, "uint8", "mri")):
                path = os.path.join(out_dir, folder, name)
                write_slice(path, image, units, modality)
                written.append(path)
    return written


def _write_nifti_subject(folder: str, subject: PhantomSubject,
                         voxel: tuple = (1.0, 1.0, 1.0)) -> list[str]:
    try:
        import nibabel as nib
    except ImportError:
        raise VAEGANError(None, "NIfTI output needs nibabel: pip install 'keras-vaegan[medical]'") \
            from None
    from keras_vaegan.io.atomic import atomic_path

    # RAS world: +column = L, +row = P, +slice = S
    affine = np.diag([-float(voxel[0]), -float(voxel[1]), float(voxel[2]), 1.0])
    written = []
    for name, volume, dtype in (("mri", subject.mri, np.float32), ("ct", subject.ct, np.float32),
                                ("mask", subject.mask, np.uint8)):
        data = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)).astype(dtype))
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
        path = os.path.join(folder, f"{name}.nii.gz")
        with atomic_path(path, suffix=".nii.gz") as tmp:
            try:
                nib.save(image, tmp)
            except OSError as err:
                raise VAEGANError(path, f"cannot write ({err.strerror or err})") from None
        written.append(path)
    return written


# --- anatomy ------------------------------------------------------------------------


def _draw_anatomy(rng: np.random.Generator, slices: int) -> dict:
    """Per-subject shape parameters, and the axial position t in [0, 1] of each slice."""
    if slices == 1:
        t = np.array([rng.uniform(0.35, 0.6)])
    else:
        t = np.linspace(rng.uniform(0.0, 0.1), rng.uniform(0.8, 0.92), slices)
    lesions = []
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        lesions.append({
            "x": rng.uniform(-0.35, 0.35), "y": rng.uniform(-0.4, 0.45),
            "z": rng.uniform(0.3, 0.85) * _HEAD_HEIGHT, "r": rng.uniform(0.05, 0.11),
        })
    return {
        "t": t,
        "axis_x": rng.uniform(0.64, 0.76), "axis_y": rng.uniform(0.80, 0.89),
        "angle": rng.uniform(-0.17, 0.17),
        "offset": rng.uniform(-0.04, 0.04, size=2),
        "skin": rng.uniform(0.018, 0.026), "fat": rng.uniform(0.025, 0.045),
        "skull": rng.uniform(0.12, 0.15), "skull_phase": rng.uniform(0, 2 * np.pi),
        "diploe_fraction": rng.uniform(0.4, 0.55),
        "csf_rim": rng.uniform(0.015, 0.03), "cortex": rng.uniform(0.06, 0.09),
        "gyri": rng.integers(9, 15), "gyri_phase": rng.uniform(0, 2 * np.pi),
        "ventricles": rng.uniform(0.75, 1.4), "ventricle_spread": rng.uniform(0.07, 0.11),
        "frontal_sinus": rng.uniform(0.22, 0.36), "frontal_sinus_size": rng.uniform(0.7, 1.2),
        "face_top": rng.uniform(0.14, 0.2),
        "lesions": lesions,
    }


# CT range (HU, drawn uniformly per subject) and T1-like MRI value (jittered by the
# relative amount) of each tissue. The order is the order of the draws.
_CONTRAST = (
    (SKIN, (30.0, 60.0), 480.0, 0.1),
    (FAT, (-120.0, -80.0), 900.0, 0.06),
    (CORTICAL_BONE, (1100.0, 1500.0), 25.0, 0.3),
    (MARROW, (350.0, 600.0), 620.0, 0.1),
    (CSF, (2.0, 10.0), 90.0, 0.2),
    (GREY_MATTER, (36.0, 44.0), 370.0, 0.06),
    (WHITE_MATTER, (24.0, 31.0), 520.0, 0.06),
    (SOFT_TISSUE, (45.0, 60.0), 330.0, 0.1),
)
_LESION_BRIGHT = ((60.0, 75.0), 700.0, 0.1)  # haemorrhage-like: hyperdense in CT, bright in T1
_LESION_DARK = ((12.0, 20.0), 220.0, 0.15)  # oedema/infarct-like: hypodense in CT, dark in T1
_AIR_HU = -1000.0
_CT_BLUR = 0.45  # pixels


def _draw_contrast(rng: np.random.Generator) -> dict:
    """Per-subject tissue values: CT in HU, MRI in T1-like intensities (lookup by label)."""
    ct = np.zeros(len(TISSUES), np.float32)
    mri = np.zeros(len(TISSUES), np.float32)
    jitter = lambda value, rel: value * rng.uniform(1 - rel, 1 + rel)  # noqa: E731
    lesion_bright = bool(rng.random() < 0.5)
    ct[AIR], mri[AIR] = _AIR_HU, 0.0
    ct[SINUS_AIR], mri[SINUS_AIR] = _AIR_HU, 0.0
    for tissue, hu_range, mri_value, mri_rel in _CONTRAST:
        ct[tissue], mri[tissue] = rng.uniform(*hu_range), jitter(mri_value, mri_rel)
    hu_range, mri_value, mri_rel = _LESION_BRIGHT if lesion_bright else _LESION_DARK
    ct[LESION], mri[LESION] = rng.uniform(*hu_range), jitter(mri_value, mri_rel)
    gain = rng.uniform(0.85, 1.15)
    return {"ct": ct, "mri": mri * gain, "ct_noise": rng.uniform(10, 20),
            "mri_noise": rng.uniform(0.012, 0.022) * 1000 * gain, "lesion_bright": lesion_bright}


def _mid_range_ct(lesion_bright: bool) -> np.ndarray:
    """Each tissue's HU at the middle of its range (the lesion of the subject's kind)."""
    ct = np.full(len(TISSUES), _AIR_HU, np.float32)
    for tissue, hu_range, _, _ in _CONTRAST:
        ct[tissue] = np.mean(hu_range)
    ct[LESION] = np.mean((_LESION_BRIGHT if lesion_bright else _LESION_DARK)[0])
    return ct


def _label_volume(a: dict, n: int) -> np.ndarray:
    """Tissue labels [slices, n, n] at the pixel centres of an n x n grid.

    Structures are painted in order, each over what lies beneath it: the head's
    layers from the outline inwards, then the deep structures, the lesions, the
    sinuses and the face.
    """
    head = _head_frame(a, n)
    layers = _layer_depths(a, head)
    labels = np.full(head.depth.shape, AIR, np.uint8)
    _paint_scalp(labels, head, layers)
    _paint_skull(labels, head, layers)
    _paint_brain(labels, a, head, layers)
    _paint_lesions(labels, a, head, layers)
    _paint_frontal_sinus(labels, a, head, layers)
    _paint_face(labels, a, head, layers)
    return labels


@dataclass
class _HeadFrame:
    """Per-pixel coordinates of one subject's head, [slices, n, n] after broadcasting."""

    t: np.ndarray  # axial position of each slice in [0, 1]
    x: np.ndarray  # head-frame coordinates; y < 0 is anterior (top of the image)
    y: np.ndarray
    scale: np.ndarray  # the head's size relative to its widest slice
    ax: np.ndarray  # the outline's semi-axes on each slice
    ay: np.ndarray
    depth: np.ndarray  # approximate distance inside the head outline
    theta: np.ndarray  # angle around the head's centre


@dataclass
class _LayerDepths:
    """Depth below the outline at which each layer of scalp, skull and cortex begins."""

    skull: np.ndarray  # the skull's full thickness
    skin_in: float
    fat_in: np.ndarray
    outer_in: np.ndarray  # outer table ends, marrow (diploe) begins
    diploe_in: np.ndarray  # marrow ends, inner table begins
    skull_in: np.ndarray
    csf_in: np.ndarray
    cortex_in: np.ndarray


def _head_frame(a: dict, n: int) -> _HeadFrame:
    """The head outline of every slice: rotated, shifted, smaller towards the vertex."""
    t = a["t"].astype(np.float32)[:, None, None]
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    gx = coords[None, None, :]
    gy = coords[None, :, None]
    cos, sin = float(np.cos(a["angle"])), float(np.sin(a["angle"]))
    dx, dy = gx - float(a["offset"][0]), gy - float(a["offset"][1])
    x = (cos * dx + sin * dy).astype(np.float32)
    y = (-sin * dx + cos * dy).astype(np.float32)

    scale = np.sqrt(np.clip(1 - ((t - 0.4) / 0.78) ** 2, 0.05, 1))  # smaller towards the vertex
    ax, ay = a["axis_x"] * scale, a["axis_y"] * scale
    ay = ay * (1 + 0.06 * (t < 0.3) * (0.3 - t) / 0.3)  # longer face-to-back low down
    r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2) + 1e-6
    grad = np.sqrt((x / ax ** 2) ** 2 + (y / ay ** 2) ** 2) / r + 1e-6
    depth = (1 - r) / grad  # approximate distance inside the head outline
    theta = np.arctan2(y, x)
    return _HeadFrame(t=t, x=x, y=y, scale=scale, ax=ax, ay=ay, depth=depth, theta=theta)


def _layer_depths(a: dict, head: _HeadFrame) -> _LayerDepths:
    """Scalp, skull (thicker at the front, marrow front and back) and folded cortex thicknesses."""
    t, theta, y = head.t, head.theta, head.y
    skull = a["skull"] * (0.85 + 0.3 * t) * (1 + 0.15 * np.cos(theta - a["skull_phase"])) \
        * (1 + 0.12 * np.sin(theta) ** 2 * (y < 0))
    # diploe is thick front and back, thin at the temples (all cortical there)
    diploe = skull * a["diploe_fraction"] * np.clip(1.3 * np.sin(theta) ** 2 - 0.15, 0, 1)
    skin_in = a["skin"]
    fat_in = skin_in + a["fat"] * (1 + 0.3 * np.cos(2 * theta))
    outer_in = fat_in + (skull - diploe) * 0.55
    diploe_in = outer_in + diploe
    skull_in = fat_in + skull
    csf_in = skull_in + a["csf_rim"]
    gyri = 1 + 0.35 * np.sin(a["gyri"] * theta + a["gyri_phase"] + 3 * t) \
        + 0.2 * np.sin(2.3 * a["gyri"] * theta + 2 * a["gyri_phase"] - 5 * t)
    cortex_in = csf_in + a["cortex"] * gyri
    return _LayerDepths(skull=skull, skin_in=skin_in, fat_in=fat_in, outer_in=outer_in,
                        diploe_in=diploe_in, skull_in=skull_in, csf_in=csf_in,
                        cortex_in=cortex_in)


def _paint_scalp(labels: np.ndarray, head: _HeadFrame, layers: _LayerDepths) -> None:
    """Head outline: skin, then subcutaneous fat."""
    labels[head.depth >= 0] = SKIN
    labels[head.depth >= layers.skin_in] = FAT


def _paint_skull(labels: np.ndarray, head: _HeadFrame, layers: _LayerDepths) -> None:
    """Outer table, fatty marrow (diploe), inner table."""
    labels[head.depth >= layers.fat_in] = CORTICAL_BONE
    labels[head.depth >= layers.outer_in] = MARROW
    labels[head.depth >= layers.diploe_in] = CORTICAL_BONE


def _paint_brain(labels: np.ndarray, a: dict, head: _HeadFrame, layers: _LayerDepths) -> None:
    """CSF rim, cortex, white matter, deep grey nuclei and the ventricles."""
    depth, t, x, y, scale = head.depth, head.t, head.x, head.y, head.scale
    labels[depth >= layers.skull_in] = CSF
    labels[depth >= layers.csf_in] = GREY_MATTER
    labels[depth >= layers.cortex_in] = WHITE_MATTER
    brain = depth >= layers.csf_in

    # deep grey nuclei (thalamus, basal ganglia) in the middle slices
    deep = np.clip(1 - np.abs(t - 0.48) / 0.2, 0, 1) ** 0.5
    for side in (-1, 1):
        blob = ((x - side * (a["ventricle_spread"] + 0.13) * scale) / (0.07 * deep + 1e-6)) ** 2 + \
               ((y - 0.04) / (0.13 * deep + 1e-6)) ** 2 < 1
        labels[blob & brain] = GREY_MATTER

    # lateral ventricles: butterfly pair, largest mid-brain; third ventricle below
    vent = a["ventricles"] * np.clip(np.sin(np.pi * (t - 0.33) / 0.45), 0, 1) * scale
    spread = a["ventricle_spread"] * scale
    for side in (-1, 1):
        vx = x - side * spread
        vy = y + 0.03
        rot_x = vx * np.cos(0.25 * side) - vy * np.sin(0.25 * side)
        rot_y = vx * np.sin(0.25 * side) + vy * np.cos(0.25 * side)
        horn = (rot_x / (0.045 * vent + 1e-6)) ** 2 + (rot_y / (0.2 * vent + 1e-6)) ** 2 < 1
        labels[horn & brain] = CSF
    third = np.clip(1 - np.abs(t - 0.38) / 0.08, 0, 1)
    slit = (x / 0.014) ** 2 + ((y - 0.05) / (0.09 * third + 1e-6)) ** 2 < 1
    labels[slit & (third > 0) & brain] = CSF


def _paint_lesions(labels: np.ndarray, a: dict, head: _HeadFrame, layers: _LayerDepths) -> None:
    """Lesions: spheres, so they grow and shrink over neighbouring slices."""
    z = head.t * _HEAD_HEIGHT
    for lesion in a["lesions"]:
        radius2 = lesion["r"] ** 2 - (z - lesion["z"]) ** 2
        blob = (head.x - lesion["x"] * head.ax) ** 2 + (head.y - lesion["y"] * head.ay) ** 2 \
            < radius2
        labels[blob & (head.depth >= layers.cortex_in * 0.9)] = LESION


def _paint_frontal_sinus(labels: np.ndarray, a: dict, head: _HeadFrame,
                         layers: _LayerDepths) -> None:
    """Frontal sinus: air pockets in the frontal bone of the lower slices."""
    x, y = head.x, head.y
    fs = np.clip((a["frontal_sinus"] - head.t) / 0.12, 0, 1) ** 0.5 * a["frontal_sinus_size"]
    fs_y = -(head.ay - layers.fat_in - layers.skull - 0.045)
    for side in (-1, 1):
        e = ((x - side * 0.06) / (0.075 * fs + 1e-6)) ** 2 + ((y - fs_y) / (0.05 * fs + 1e-6)) ** 2
        labels[(e < 1.7) & (fs > 0) & (head.depth >= layers.fat_in)] = CORTICAL_BONE
        labels[(e < 1.0) & (fs > 0) & (head.depth >= layers.fat_in)] = SINUS_AIR


def _paint_face(labels: np.ndarray, a: dict, head: _HeadFrame, layers: _LayerDepths) -> None:
    """Lowest slices: the face, with maxillary sinuses and the nasal cavity."""
    x, y, ax, ay = head.x, head.y, head.ax, head.ay
    face = np.clip((a["face_top"] - head.t) / 0.1, 0, 1)
    patch = (x / (0.62 * ax + 1e-6)) ** 2 + ((y + 0.42 * ay) / (0.5 * ay + 1e-6)) ** 2 < face
    labels[patch & (head.depth >= layers.fat_in + layers.skull)] = SOFT_TISSUE
    cavities = []
    for side in (-1, 1):
        cavities.append(((x - side * 0.22 * ax) / 0.1) ** 2 + ((y + 0.42 * ay) / 0.13) ** 2)
    cavities.append((x / 0.03) ** 2 + ((y + 0.58 * ay) / 0.13) ** 2)
    inside = head.depth >= layers.fat_in
    for e in cavities:
        e = e / (face + 1e-6)
        labels[(e < 1.5) & (face > 0) & inside] = CORTICAL_BONE
        labels[(e < 1.0) & (face > 0) & inside] = SINUS_AIR


# --- image formation ------------------------------------------------------------------


def _downsample(volume: np.ndarray) -> np.ndarray:
    """Average _SUPERSAMPLE x _SUPERSAMPLE blocks (partial volume)."""
    s, n, _ = volume.shape
    k = _SUPERSAMPLE
    return volume.reshape(s, n // k, k, n // k, k).mean(axis=(2, 4), dtype=np.float32)


def _mode_downsample(labels: np.ndarray) -> np.ndarray:
    """The most frequent label of each _SUPERSAMPLE x _SUPERSAMPLE block."""
    s, n, _ = labels.shape
    k = _SUPERSAMPLE
    blocks = labels.reshape(s, n // k, k, n // k, k).transpose(0, 1, 3, 2, 4).reshape(
        s, n // k, n // k, k * k)
    counts = (blocks[..., :, None] == blocks[..., None, :]).sum(axis=-1)
    pick = np.argmax(counts, axis=-1)
    return np.take_along_axis(blocks, pick[..., None], axis=-1)[..., 0]


def _blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur over the last two axes (edges replicated)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    return gaussian_blur(volume, sigma, radius, pad_mode="edge", dtype=np.float32)


def _bias_field(rng: np.random.Generator, t: np.ndarray, size: int) -> np.ndarray:
    """Smooth multiplicative MRI bias field, about +-15 %, varying over x, y and slices."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x = coords[None, None, :]
    y = coords[None, :, None]
    z = (t[:, None, None] - 0.5).astype(np.float32)
    c = rng.normal(0.0, 0.07, size=6)
    log_field = (c[0] * x + c[1] * y + c[2] * x * y + c[3] * (x * x - 0.33)
                 + c[4] * (y * y - 0.33) + c[5] * z)
    return np.exp(np.clip(log_field, -0.3, 0.3)).astype(np.float32)
