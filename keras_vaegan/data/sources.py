"""Where training slices come from: user folders or the built-in phantom.

Returns slices already in model units ([-1, 1]) and the units they were in,
so the run records them and ``predict`` inverts them exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from keras_vaegan.config import Config
from keras_vaegan.data import phantom
from keras_vaegan.data.readers import find_images, read_slice
from keras_vaegan.data.units import map_for, mri_map, modality_units
from keras_vaegan.errors import VAEGANError

MRI_FOLDER_NAMES = ("mri", "mr", "traina")
CT_FOLDER_NAMES = ("ct", "trainb")


@dataclass
class TrainingData:
    """Unpaired slices in model units, and the config with their units recorded."""

    mri: list[np.ndarray]
    ct: list[np.ndarray]
    config: Config
    source: str  # "phantom" or a description of the folders


def split_data_root(root: str) -> tuple[str, str]:
    """``ROOT`` with subfolders mri/mr/trainA and ct/trainB (any case) -> (mri_dir, ct_dir)."""
    if not os.path.isdir(root):
        raise VAEGANError(root, "no such folder")
    found = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        if name.lower() in MRI_FOLDER_NAMES:
            found.setdefault("mri", path)
        elif name.lower() in CT_FOLDER_NAMES:
            found.setdefault("ct", path)
    for modality, names in (("mri", MRI_FOLDER_NAMES), ("ct", CT_FOLDER_NAMES)):
        if modality not in found:
            raise VAEGANError(root, f"no {modality.upper()} subfolder (expected one of: "
                                    f"{', '.join(names)}, any case); or use --mri-dir/--ct-dir")
    return found["mri"], found["ct"]


def read_folder(folder: str, modality: str, config: Config) -> tuple[list[np.ndarray], str, list]:
    """Read every slice of ``folder`` -> (slices in [-1, 1], units name, intensity maps)."""
    slices = [read_slice(path, modality) for path in find_images(folder)]
    kinds = {modality_units(s.bit_depth, modality) for s in slices}
    if len(kinds) > 1:
        raise VAEGANError(folder, f"mixed intensity units ({', '.join(sorted(kinds))}): "
                                  "use only 8-bit or only 16-bit/float images per modality")
    units = kinds.pop()
    maps = [map_for(units, s.pixels, config) for s in slices]
    return [m.to_unit(s.pixels) for m, s in zip(maps, slices)], units, maps


def load_training_data(config: Config, data_root: str | None = None, mri_dir: str | None = None,
                       ct_dir: str | None = None) -> TrainingData:
    """The unpaired MRI and CT slices for ``fit`` (the phantom when no data is given)."""
    if data_root and (mri_dir or ct_dir):
        raise VAEGANError(data_root, "give either --data or --mri-dir/--ct-dir, not both")
    if bool(mri_dir) != bool(ct_dir):
        raise VAEGANError(mri_dir or ct_dir, "--mri-dir and --ct-dir go together")
    if data_root:
        mri_dir, ct_dir = split_data_root(data_root)
    if not mri_dir:
        return phantom_training_data(config)
    mri, mri_units, mri_maps = read_folder(mri_dir, "mri", config)
    ct, ct_units, _ = read_folder(ct_dir, "ct", config)
    reference = _reference_range(mri_maps) if mri_units == "percentile" else (0.0, 255.0)
    config = config.replace(mri_units=mri_units, ct_units=ct_units, mri_reference_range=reference)
    return TrainingData(mri, ct, config, source=f"MRI {mri_dir} ({len(mri)} slices), "
                                                f"CT {ct_dir} ({len(ct)} slices)")


def phantom_training_data(config: Config) -> TrainingData:
    """Phantom slices; MRI and CT from different subjects, so the pairs are truly unpaired."""
    count = config.phantom_subjects * config.phantom_slices
    mri, _, _ = phantom.make_slices(count, config.phantom_size, seed=config.seed,
                                    slices_per_subject=config.phantom_slices)
    _, ct, _ = phantom.make_slices(count, config.phantom_size, seed=config.seed + 1,
                                   slices_per_subject=config.phantom_slices)
    maps = [mri_map(s, config.mri_percentiles) for s in mri]
    config = config.replace(mri_units="percentile", ct_units="hu",
                            mri_reference_range=_reference_range(maps))
    ct_to_unit = map_for("hu", None, config)
    return TrainingData([m.to_unit(s) for m, s in zip(maps, mri)],
                        [ct_to_unit.to_unit(s) for s in ct], config,
                        source=f"phantom ({count} MRI and {count} CT slices, "
                               f"{config.phantom_size}x{config.phantom_size})")


def _reference_range(maps) -> tuple[float, float]:
    return (float(np.median([m.low for m in maps])), float(np.median([m.high for m in maps])))
