"""Find what ``evaluate`` compares: reference CT, prediction (or MRI) and mask per subject.

Inputs pair by subject (file or folder name): a volume file, a DICOM series
folder, folders of subjects, the SynthRAD layout (``SUBJECT/mr.nii.gz``,
``ct.nii.gz``, ``mask.nii.gz``) or 2-D slices (paired by file name). Nothing
is read here but headers.

Masks: ``--mask`` (laid out like the references); else a SynthRAD ``mask``
image (``mask.nii.gz``, ``mask.nii``, a ``mask`` DICOM folder, ...) in the
reference folder's subjects, or beside a reference *file* when that file is
one subject's (named ``ct``, or the only other image in its folder); else
none (``evaluate`` then uses the body mask).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from keras_vaegan.data import readers, volumes
from keras_vaegan.data.volume import FoundVolume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.figures import OVERVIEW_NAME
from keras_vaegan.io.paths import same_path

_MODALITY = {"mri": "mri", "ct": "ct", "sct": "ct", "prediction": "ct", "mask": None}
_ACCEPTED = {"mri": ("mri",), "ct": ("ct",), "mask": ("mask",), "sct": ("sct",),
             "prediction": ("sct", "ct", "mri")}  # predict keeps the input's name (mr.nii.gz)


@dataclass
class Item:
    """One image found under a root: a 2-D slice file or a volume found on disk."""

    key: str  # subject: relative name without extension (and without a SynthRAD role name)
    path: str
    found: FoundVolume | None  # None for a 2-D slice


@dataclass
class Subject:
    """What one row of ``evaluate`` compares."""

    key: str
    reference: Item  # the reference CT (HU)
    compared: Item  # the synthetic CT, or the MRI to translate
    mask: Item | None  # None: the body mask of the reference

    @property
    def label(self) -> str:
        return self.key or os.path.basename(volumes.strip_extension(self.reference.path))


def collect(root: str, role: str, strict: bool = False) -> dict[str, Item]:
    """Images under ``root`` keyed by subject, for one role (mri, ct, sct, mask, prediction).

    In a subject folder, files named mr/mri/ct/sct/mask count for their role
    only; other names count for any role (unless ``strict``).
    """
    files, found = volumes.find_inputs(root, _MODALITY[role])
    names = volumes.input_names(root, files, found)
    items: dict[str, Item] = {}
    for image in [*files, *found]:
        if role == "prediction" and volumes.name_of(names, image) == OVERVIEW_NAME:
            continue  # the picture predict draws beside its outputs
        name = volumes.strip_extension(volumes.name_of(names, image))
        parts = name.split(os.sep)
        named = volumes.subject_role(parts[-1])
        if named is not None:
            if named not in _ACCEPTED[role]:
                continue
            key = os.sep.join(parts[:-1])
        elif strict:
            continue
        else:
            key = name
        path = image if isinstance(image, str) else image.path
        if key in items:
            raise VAEGANError(path, f"a second {role} image for subject '{key or root}' (the "
                                    f"other is {items[key].path}); keep one per subject")
        items[key] = Item(key, path, None if isinstance(image, str) else image)
    return items


def pair(reference: dict[str, Item], other: dict[str, Item], what: str,
         required: bool = True) -> dict[str, Item]:
    """Match ``other`` to the reference subjects (a single pair always matches)."""
    if len(reference) == 1 and len(other) == 1:
        return {next(iter(reference)): next(iter(other.values()))}
    matched = {key: other[key] for key in reference if key in other}
    if required:
        for key, item in reference.items():
            if key not in matched:
                raise VAEGANError(item.path, f"no {what} for subject '{key}' (subjects are "
                                             "paired by file or folder name)")
    return matched


def mask_beside(reference_file: str) -> str | None:
    """The SynthRAD ``mask`` image beside a reference file, when the file is one subject's.

    The folder is a subject's when the reference is named ``ct`` (SynthRAD),
    or when no other image in it has a name outside the SynthRAD roles (a
    folder of several subjects' CTs and one ``mask`` gives nobody that mask).
    """
    folder = os.path.dirname(os.path.abspath(reference_file))
    own = os.path.basename(reference_file)
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return None
    paths = {name: os.path.join(folder, name) for name in entries if name != own}
    masks = [path for name, path in paths.items() if volumes.subject_role(name) == "mask"
             and (os.path.isdir(path) or readers.file_kind(path) is not None)]
    if not masks:
        return None
    if len(masks) > 1:
        raise VAEGANError(folder, f"{len(masks)} mask images beside the reference "
                                  f"({', '.join(os.path.basename(m) for m in masks)}); "
                                  "keep one, or give --mask")
    if volumes.subject_role(own) != "ct":
        others = [name for name, path in paths.items() if volumes.subject_role(name) is None
                  and os.path.isfile(path) and readers.file_kind(path) is not None]
        if others:
            return None
    return masks[0]


def _masks(reference_path: str, references: dict[str, Item],
           mask_path: str | None) -> dict[str, Item]:
    if mask_path is not None:
        return pair(references, collect(mask_path, "mask"), "mask")
    if os.path.isdir(reference_path):
        return pair(references, collect(reference_path, "mask", strict=True), "mask",
                    required=False)
    beside = mask_beside(reference_path)
    return {} if beside is None else pair(references, collect(beside, "mask"), "mask")


def pair_subjects(reference_path: str | os.PathLike, input_path: str | os.PathLike | None = None,
                  prediction_path: str | os.PathLike | None = None,
                  mask_path: str | os.PathLike | None = None) -> list[Subject]:
    """Every reference subject with its prediction (or MRI) and mask, sorted by subject."""
    reference_path = os.fspath(reference_path)
    references = collect(reference_path, "ct")
    if prediction_path is not None:
        prediction_path = os.fspath(prediction_path)
        if os.path.isdir(reference_path) and same_path(prediction_path, reference_path):
            # one SynthRAD folder holding ct and sct: only sct is the prediction
            predictions = collect(prediction_path, "sct", strict=True)
        else:
            predictions = collect(prediction_path, "prediction")
        compared = pair(references, predictions, "prediction")
    else:
        compared = pair(references, collect(os.fspath(input_path), "mri"), "MRI input")
    masks = _masks(reference_path, references,
                   None if mask_path is None else os.fspath(mask_path))
    return [Subject(key, item, compared[key], masks.get(key))
            for key, item in sorted(references.items())]
