"""A harder phantom head: the cases that make MRI -> CT hard on real heads.

Why a second phantom: the defaults were tuned on the classic one
(``phantom.py``); this one is the tuning target for changes that should
generalise. It is drawn in millimetres in 3-D and sampled as thick axial
slices, with what real heads have and the classic phantom lacks or keeps
easy:

- air cells inside thick bone (mastoid-like, low and lateral-posterior) and a
  frontal sinus inside a thickened frontal bone;
- cortical outer and inner tables (bright on CT) around diploe (darker
  marrow), both dark on T1 except the marrow;
- sulci: CSF clefts lined with grey matter reaching in from the cortex;
- lateral ventricles whose size varies about fourfold between subjects;
- lesions: calcifications (700-1400 HU, dark on T1), haemorrhage (60-80 HU,
  bright on T1) with an oedema rim, only sometimes present;
- per-subject 3-D pose (three rotations, shift) and shape (size, axes);
- a 3-D MRI bias field, Rician MRI noise, gaussian CT noise;
- partial volume: labels drawn on a grid twice as fine in-plane and at three
  planes through each slice, the tissue values averaged down; slices are
  3-5 mm thick (per subject), the pixels FOV_MM / size wide.

Everything is drawn from the seed alone, so a seed gives the same head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from keras_vaegan.config import PHANTOM_KINDS
from keras_vaegan.data import phantom
from keras_vaegan.data.filters import gaussian_blur
from keras_vaegan.data.phantom import CT_RANGE_HU, PhantomSubject
from keras_vaegan.errors import VAEGANError

AIR, SKIN, FAT, CORTICAL_BONE, MARROW, CSF, GREY_MATTER, WHITE_MATTER, SOFT_TISSUE, \
    AIR_CELL, CALCIFICATION, HAEMORRHAGE, OEDEMA = range(13)
TISSUES = {
    "air": AIR, "skin": SKIN, "fat": FAT, "cortical_bone": CORTICAL_BONE, "marrow": MARROW,
    "csf": CSF, "grey_matter": GREY_MATTER, "white_matter": WHITE_MATTER,
    "soft_tissue": SOFT_TISSUE, "air_cell": AIR_CELL, "calcification": CALCIFICATION,
    "haemorrhage": HAEMORRHAGE, "oedema": OEDEMA,
}
FOV_MM = 230.0  # in-plane field of view: a pixel is FOV_MM / size millimetres
SLICE_MM = (3.0, 5.0)  # slice thickness (= spacing) range, drawn per subject
_IN_PLANE = 2  # fine samples per pixel side
_THROUGH = 3  # fine planes per slice
_AIR_HU = -1000.0
_CT_BLUR = 0.45  # pixels

# CT range (HU, drawn per subject), T1-like MRI value, its relative jitter.
_CONTRAST = (
    (SKIN, (30.0, 60.0), 480.0, 0.1),
    (FAT, (-120.0, -80.0), 900.0, 0.06),
    (CORTICAL_BONE, (1300.0, 1800.0), 25.0, 0.3),
    (MARROW, (300.0, 600.0), 560.0, 0.12),
    (CSF, (0.0, 15.0), 90.0, 0.2),
    (GREY_MATTER, (35.0, 45.0), 370.0, 0.06),
    (WHITE_MATTER, (22.0, 32.0), 520.0, 0.06),
    (SOFT_TISSUE, (40.0, 60.0), 330.0, 0.1),
    (CALCIFICATION, (700.0, 1400.0), 60.0, 0.3),
    (HAEMORRHAGE, (60.0, 80.0), 760.0, 0.08),
    (OEDEMA, (10.0, 22.0), 230.0, 0.12),
)


@dataclass(frozen=True)
class PhantomKind:
    """What differs between the built-in phantoms: how a subject and its anatomy floor are drawn."""

    name: str
    make_subject: phantom.SubjectMaker
    expected_ct: Callable[[int, int, int], np.ndarray]  # (seed, size, slices) -> HU
    spacing: Callable[[int, int], tuple] | None  # (seed, size) -> voxel mm; None: 1 mm


def phantom_kind(kind: str) -> PhantomKind:
    """The built-in phantom called ``kind`` (``config.PHANTOM_KINDS``)."""
    if kind == "classic":
        return PhantomKind("classic", phantom.make_subject, phantom.expected_ct, None)
    if kind == "head":
        return PhantomKind("head", make_subject, expected_ct, spacing_mm)
    raise VAEGANError(None, f"phantom must be one of {', '.join(PHANTOM_KINDS)}, got '{kind}'")


def make_subject(seed: int, size: int = 64, slices: int = 8) -> PhantomSubject:
    """One head of ``slices`` thick axial slices of ``size`` x ``size`` pixels."""
    rng, anatomy, contrast, fine = _draw_subject(seed, size, slices)
    ct_clean = _average_down(contrast["ct"][fine])
    mri_clean = _average_down(contrast["mri"][fine])
    mask = (_average_down((fine != AIR).astype(np.float32)) >= 0.5).astype(np.uint8)
    labels = _mode_down(fine)

    ct = _blur(ct_clean, _CT_BLUR) + rng.normal(0.0, contrast["ct_noise"], ct_clean.shape)
    ct = np.clip(ct, *CT_RANGE_HU).astype(np.float32)
    mri = _blur(mri_clean, 0.5) * _bias_field(rng, anatomy, int(size))
    sigma = contrast["mri_noise"]
    real = mri + rng.normal(0.0, sigma, mri.shape)
    imag = rng.normal(0.0, sigma, mri.shape)
    mri = np.sqrt(real * real + imag * imag).astype(np.float32)  # Rician magnitude
    return PhantomSubject(mri=mri, ct=ct, mask=mask, labels=labels, seed=int(seed))


def expected_ct(seed: int, size: int = 64, slices: int = 8) -> np.ndarray:
    """The anatomy of ``make_subject(seed, ...)`` at mid-range densities, no noise.

    As for the classic phantom: densities are drawn apart from the MRI, so
    this is the best any MRI -> CT method can do (the anatomy floor).
    """
    _, _, _, fine = _draw_subject(seed, size, slices)
    middle = np.full(len(TISSUES), _AIR_HU, np.float32)
    for tissue, hu_range, _, _ in _CONTRAST:
        middle[tissue] = np.mean(hu_range)
    return np.clip(_blur(_average_down(middle[fine]), _CT_BLUR), *CT_RANGE_HU).astype(np.float32)


def spacing_mm(seed: int, size: int = 64) -> tuple[float, float, float]:
    """(column, row, slice) voxel size of the subject, in millimetres."""
    thickness = _draw_thickness(np.random.default_rng(int(seed)))
    return (FOV_MM / int(size), FOV_MM / int(size), thickness)


# --- drawing -------------------------------------------------------------------------


def _draw_thickness(rng: np.random.Generator) -> float:
    return float(rng.uniform(*SLICE_MM))  # always the first draw of a subject


def _draw_subject(seed: int, size: int, slices: int):
    size, slices = int(size), int(slices)
    if size < 16:
        raise VAEGANError(None, f"phantom size must be at least 16 pixels, got {size}")
    if slices < 1:
        raise VAEGANError(None, f"phantom needs at least one slice, got {slices}")
    rng = np.random.default_rng(int(seed))
    anatomy = _draw_anatomy(rng, slices)
    contrast = _draw_contrast(rng)
    x, y, z = _head_coordinates(anatomy, size)
    return rng, anatomy, contrast, _label_volume(rng_for_cells(seed), anatomy, x, y, z)


def rng_for_cells(seed: int) -> np.random.Generator:
    """The air cells' own stream, so their number does not shift the other draws."""
    return np.random.default_rng([int(seed), 7])


def _draw_anatomy(rng: np.random.Generator, slices: int) -> dict:
    """Pose, shape, layer thicknesses, ventricles, lesions and the slices' heights (mm)."""
    thickness = _draw_thickness(rng)
    span = thickness * (slices - 1)
    low, high = -36.0, 44.0 - span  # skull base .. above the ventricles
    z0 = rng.uniform(low, high) if high > low else (low + 44.0 - span) / 2
    z = z0 + thickness * np.arange(slices)
    scale = rng.uniform(0.9, 1.06)
    a = {
        "thickness": thickness, "z": z,
        "angles": rng.uniform(-1, 1, 3) * np.radians([12.0, 8.0, 6.0]),  # yaw, pitch, roll
        "shift": rng.uniform(-8, 8, 2), "scale": scale,
        "radii": np.array([rng.uniform(68, 78), rng.uniform(88, 100), rng.uniform(80, 92)]),
        "skin": rng.uniform(1.5, 2.5), "fat": rng.uniform(2.0, 5.0),
        "outer_table": rng.uniform(1.5, 2.5), "diploe": rng.uniform(2.0, 4.5),
        "inner_table": rng.uniform(1.2, 2.0), "csf_rim": rng.uniform(1.5, 3.0),
        "cortex": rng.uniform(2.5, 3.5),
        "sulci": (int(rng.integers(14, 22)), rng.uniform(0, 2 * np.pi),
                  int(rng.integers(5, 9)), rng.uniform(0, 2 * np.pi)),
        "sulcus_depth": rng.uniform(7.0, 13.0), "sulcus_width": rng.uniform(0.18, 0.3),
        "ventricles": rng.uniform(0.6, 2.2), "ventricle_spread": rng.uniform(5.0, 9.0),
        "frontal_sinus": rng.uniform(0.6, 1.3), "mastoid": rng.uniform(0.8, 1.25),
    }
    a["lesions"] = _draw_lesions(rng, z)
    return a


def _draw_lesions(rng: np.random.Generator, z: np.ndarray) -> list[dict]:
    """Calcifications and a haemorrhage (with oedema), each only sometimes, within the stack."""
    lesions = []
    centre = lambda: (rng.uniform(-35, 35), rng.uniform(-45, 50),  # noqa: E731
                      rng.uniform(z.min() - 2, z.max() + 2))
    if rng.random() < 0.7:
        for _ in range(int(rng.integers(1, 4))):
            lesions.append({"kind": CALCIFICATION, "at": centre(), "r": rng.uniform(2.5, 5.0)})
    if rng.random() < 0.6:
        at, r = centre(), rng.uniform(5.0, 11.0)
        lesions.append({"kind": OEDEMA, "at": at, "r": r + rng.uniform(3.0, 6.0)})
        lesions.append({"kind": HAEMORRHAGE, "at": at, "r": r})
    return lesions


def _draw_contrast(rng: np.random.Generator) -> dict:
    ct = np.full(len(TISSUES), _AIR_HU, np.float32)
    mri = np.zeros(len(TISSUES), np.float32)
    for tissue, hu_range, mri_value, rel in _CONTRAST:
        ct[tissue] = rng.uniform(*hu_range)
        mri[tissue] = mri_value * rng.uniform(1 - rel, 1 + rel)
    gain = rng.uniform(0.85, 1.15)
    return {"ct": ct, "mri": mri * gain, "ct_noise": rng.uniform(8, 20),
            "mri_noise": rng.uniform(0.012, 0.025) * 1000 * gain}


def _head_coordinates(a: dict, size: int):
    """Head-frame coordinates (mm) of every fine sample, [slices * _THROUGH, n, n] each."""
    n = size * _IN_PLANE
    pixel = FOV_MM / n
    grid = (np.arange(n, dtype=np.float64) + 0.5) * pixel - FOV_MM / 2
    offsets = (np.arange(_THROUGH) + 0.5) / _THROUGH - 0.5
    planes = (a["z"][:, None] + offsets[None, :] * a["thickness"]).reshape(-1)
    wz, wy, wx = np.meshgrid(planes, grid, grid, indexing="ij")
    points = np.stack([wx - a["shift"][0], wy - a["shift"][1], wz], axis=-1)
    head = points @ _rotation(*a["angles"]) / a["scale"]  # rows: R^T p for world -> head
    return [head[..., i].astype(np.float32) for i in range(3)]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


@dataclass
class _Frame:
    """Head-frame coordinates and the depth (mm) below the scalp of each fine sample."""

    x: np.ndarray
    y: np.ndarray  # y < 0 is anterior (the top of the image)
    z: np.ndarray  # superior
    depth: np.ndarray
    theta: np.ndarray  # in-plane angle around the head's axis
    phi: np.ndarray  # elevation


def _frame(a: dict, x, y, z) -> _Frame:
    rx, ry, rz = a["radii"]
    rz_eff = np.where(z >= 0, rz, 2.2 * rz)  # the head narrows slowly below its equator
    terms = (x / rx, y / ry, z / rz_eff)
    r = np.sqrt(sum(t * t for t in terms)) + 1e-6
    grad = np.sqrt((x / rx ** 2) ** 2 + (y / ry ** 2) ** 2 + (z / rz_eff ** 2) ** 2) / r + 1e-6
    return _Frame(x=x, y=y, z=z, depth=(1 - r) / grad, theta=np.arctan2(y, x),
                  phi=np.arctan2(z, np.sqrt(x * x + y * y)))


def _label_volume(cells: np.random.Generator, a: dict, x, y, z) -> np.ndarray:
    """Tissue labels at the fine samples, painted outside in, each over what is beneath."""
    f = _frame(a, x, y, z)
    labels = np.full(f.depth.shape, AIR, np.uint8)
    skull_out = a["skin"] + a["fat"]
    diploe = a["diploe"] * np.clip(1.3 * np.sin(f.theta) ** 2 - 0.1, 0.15, 1)  # thin at temples
    marrow_in = skull_out + a["outer_table"]
    inner_in = marrow_in + diploe
    brain_in = inner_in + a["inner_table"]
    labels[f.depth >= 0] = SKIN
    labels[f.depth >= a["skin"]] = FAT
    labels[f.depth >= skull_out] = CORTICAL_BONE
    labels[f.depth >= marrow_in] = MARROW
    labels[f.depth >= inner_in] = CORTICAL_BONE
    _paint_brain(labels, a, f, brain_in)
    _paint_base(labels, f, brain_in)
    _paint_lesions(labels, a, f)
    _paint_frontal_sinus(labels, a, f, skull_out)
    _paint_mastoids(labels, cells, a, f, skull_out)
    return labels


def _paint_brain(labels: np.ndarray, a: dict, f: _Frame, brain_in) -> None:
    """CSF rim, cortex with sulci, white matter, deep grey nuclei and ventricles."""
    csf_in = brain_in + a["csf_rim"]
    k1, p1, k2, p2 = a["sulci"]
    fold = np.minimum(np.abs(np.sin(k1 * f.theta + p1 + 2.0 * np.sin(3 * f.phi))),
                      np.abs(np.sin(k2 * f.phi + p2 + 1.5 * np.sin(2 * f.theta))))
    w = a["sulcus_width"]
    cleft = (fold < w) & (f.depth < csf_in + a["sulcus_depth"])
    lined = (fold < 2.5 * w) & (f.depth < csf_in + a["sulcus_depth"] + a["cortex"])
    labels[f.depth >= brain_in] = CSF
    labels[f.depth >= csf_in] = GREY_MATTER
    labels[(f.depth >= csf_in + a["cortex"]) & ~lined] = WHITE_MATTER
    labels[(f.depth >= csf_in) & cleft] = CSF
    brain = f.depth >= csf_in
    s, v = a["ventricle_spread"], a["ventricles"]
    for side in (-1, 1):
        nucleus = ((f.x - side * (s + 14)) / 8) ** 2 + ((f.y - 4) / 13) ** 2 + (f.z / 10) ** 2 < 1
        labels[nucleus & brain] = GREY_MATTER
    for side in (-1, 1):
        vx, vy = f.x - side * s, f.y + 2
        u = vx * np.cos(0.25 * side) - vy * np.sin(0.25 * side)
        t = vx * np.sin(0.25 * side) + vy * np.cos(0.25 * side)
        horn = (u / (3.5 * v)) ** 2 + (t / (22 + 4 * v)) ** 2 + ((f.z - 12) / (6 + 3 * v)) ** 2 < 1
        labels[horn & brain] = CSF
    third = (f.x / (1.2 * v)) ** 2 + ((f.y - 4) / 9) ** 2 + ((f.z + 2) / 8) ** 2 < 1
    labels[third & brain] = CSF


def _paint_base(labels: np.ndarray, f: _Frame, brain_in) -> None:
    """Below the brain: a bony skull base, then soft tissue of the neck."""
    inside = f.depth >= brain_in
    labels[inside & (f.z < -46)] = CORTICAL_BONE
    labels[inside & (f.z < -52)] = SOFT_TISSUE


def _paint_lesions(labels: np.ndarray, a: dict, f: _Frame) -> None:
    brain = np.isin(labels, (GREY_MATTER, WHITE_MATTER, OEDEMA, HAEMORRHAGE))
    for lesion in a["lesions"]:
        cx, cy, cz = lesion["at"]
        ball = (f.x - cx) ** 2 + (f.y - cy) ** 2 + (f.z - cz) ** 2 < lesion["r"] ** 2
        where = ball & (brain | (labels == CSF)) if lesion["kind"] == CALCIFICATION else ball & brain
        labels[where] = lesion["kind"]


def _paint_frontal_sinus(labels: np.ndarray, a: dict, f: _Frame, skull_out) -> None:
    """An air pocket inside a thickened frontal bone, anterior and low."""
    size = a["frontal_sinus"]
    front = -(a["radii"][1] - skull_out - 12.0)
    def pocket(wall):
        return (f.x / (16 * size + wall)) ** 2 + ((f.y - front) / (7.0 + wall)) ** 2 \
            + ((f.z + 8) / (12 * size + wall)) ** 2 < 1

    inside = f.depth >= skull_out
    labels[pocket(5.0) & inside] = CORTICAL_BONE
    labels[pocket(0.0) & inside] = AIR_CELL


def _paint_mastoids(labels: np.ndarray, cells: np.random.Generator, a: dict, f: _Frame,
                    skull_out) -> None:
    """Thick lateral-posterior bone, low in the head, riddled with small air cells."""
    size = a["mastoid"]
    inside = f.depth >= skull_out
    for side in (-1, 1):
        centre = np.array([side * (a["radii"][0] - 20.0), 0.3 * a["radii"][1], -24.0])
        radii = np.array([15.0, 18.0, 15.0]) * size
        e = sum(((c - m) / r) ** 2 for c, m, r in zip((f.x, f.y, f.z), centre, radii))
        labels[(e < 1) & inside] = CORTICAL_BONE
        for _ in range(int(cells.integers(20, 32))):
            offset = cells.uniform(-0.6, 0.6, 3) * radii
            r = cells.uniform(2.0, 4.0)
            ball = sum((c - m) ** 2 for c, m in zip((f.x, f.y, f.z), centre + offset)) < r * r
            labels[ball & (e < 0.55) & (f.depth >= skull_out + 3.0)] = AIR_CELL


# --- image formation ------------------------------------------------------------------


def _blocks(volume: np.ndarray) -> np.ndarray:
    """[slices, n, n, samples]: the fine samples of each output pixel."""
    planes, n, _ = volume.shape
    s, k, size = planes // _THROUGH, _IN_PLANE, n // _IN_PLANE
    v = volume.reshape(s, _THROUGH, size, k, size, k).transpose(0, 2, 4, 1, 3, 5)
    return v.reshape(s, size, size, _THROUGH * k * k)


def _average_down(volume: np.ndarray) -> np.ndarray:
    """Partial volume: the mean of each pixel's fine samples (in-plane and through-plane)."""
    return _blocks(volume).mean(axis=-1, dtype=np.float32)


def _mode_down(labels: np.ndarray) -> np.ndarray:
    """The most frequent label among each pixel's fine samples."""
    blocks = _blocks(labels)
    counts = (blocks[..., :, None] == blocks[..., None, :]).sum(axis=-1)
    pick = np.argmax(counts, axis=-1)
    return np.take_along_axis(blocks, pick[..., None], axis=-1)[..., 0].astype(np.uint8)


def _blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    return gaussian_blur(volume, sigma, radius, pad_mode="edge", dtype=np.float32)


def _bias_field(rng: np.random.Generator, a: dict, size: int) -> np.ndarray:
    """Smooth multiplicative 3-D bias field, about +-25 %."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x = coords[None, None, :]
    y = coords[None, :, None]
    z = ((a["z"] - 10.0) / 60.0).astype(np.float32)[:, None, None]
    c = rng.normal(0.0, 0.1, size=7)
    log_field = (c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * (x * x - 0.33)
                 + c[5] * (y * y - 0.33) + c[6] * x * z)
    return np.exp(np.clip(log_field, -0.3, 0.3)).astype(np.float32)
