"""Where training slices come from: user folders (slices, NIfTI, DICOM) or the built-in phantom.

Returns slices already in model units ([-1, 1]) and the units they were in,
so the run records them and ``predict`` inverts them exactly. The slices are a
``SliceSet`` that knows each slice's volume (group) and position along it, so
the pipeline can build 2.5-D stacks (``config.context_slices``) of true
neighbours: a volume is one group at the positions of its kept slices, a 2-D
slice file its own group, a phantom subject one group.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from keras_vaegan.config import Config
from keras_vaegan.data import phantom, readers, slice_cache, volumes
from keras_vaegan.data.readers import read_slice
from keras_vaegan.data.slice_cache import InMemorySlices, SliceCollector, SliceSet
from keras_vaegan.data.units import IntensityMap, map_for, modality_units, mri_map
from keras_vaegan.data.volume import FoundVolume
from keras_vaegan.errors import VAEGANError

MRI_FOLDER_NAMES = ("mri", "mr", "traina")
CT_FOLDER_NAMES = ("ct", "trainb")


@dataclass
class TrainingData:
    """Unpaired slices in model units, and the config with their units recorded."""

    mri: SliceSet  # SliceStore through the slice cache, else InMemorySlices
    ct: SliceSet
    config: Config
    origin: str  # "phantom" or a description of the folders


def split_data_root(root: str) -> tuple[list[str], list[str]]:
    """The MRI and CT inputs of a ``--data ROOT`` folder -> (mri paths, ct paths).

    Either ``ROOT`` has subfolders mri/mr/trainA and ct/trainB (any case),
    or it holds subjects in the SynthRAD layout: folders with an MRI volume
    ``mr``/``mri`` (``.nii``, ``.nii.gz``, or a DICOM folder of that name)
    and a CT volume ``ct`` (masks and other files are ignored).
    """
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
    if len(found) == 2:
        return [found["mri"]], [found["ct"]]
    mri, ct = find_subject_volumes(root)
    if mri and ct:
        return mri, ct
    if found or mri or ct:
        missing = "CT" if "mri" in found or mri else "MRI"
    else:
        missing = "MRI"
    names = MRI_FOLDER_NAMES if missing == "MRI" else CT_FOLDER_NAMES
    raise VAEGANError(root, f"no {missing} subfolder (expected one of: {', '.join(names)}, any "
                            "case) and no subjects with mr/mri and ct volumes "
                            "(SUBJECT/mr.nii.gz, SUBJECT/ct.nii.gz); or use --mri-dir/--ct-dir")


def find_subject_volumes(root: str) -> tuple[list[str], list[str]]:
    """SynthRAD-style subjects below ``root``: (MRI volume paths, CT volume paths), sorted."""
    mri, ct = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files) + subfolders:
            path = os.path.join(folder, name)
            role = subject_role(path)
            if role == "mri":
                mri.append(path)
            elif role == "ct":
                ct.append(path)
        # a DICOM folder named mr/ct is one volume: do not look inside it again
        subfolders[:] = [d for d in subfolders if subject_role(os.path.join(folder, d)) is None]
    return mri, ct


def subject_role(path: str) -> str | None:
    """'mri' / 'ct' for a SynthRAD-style subject entry: mr.nii.gz, ct.nii.gz, a ct/ DICOM folder."""
    if not (os.path.isdir(path) or readers.file_kind(path) in ("nifti", "dicom")):
        return None
    role = volumes.subject_role(path)
    return role if role in ("mri", "ct") else None


def read_folder(paths: str | list[str], modality: str, config: Config,
                on_bad: readers.BadFileHandler | None = None
                ) -> tuple[InMemorySlices, str, list]:
    """Read every slice and volume under ``paths`` -> (slices in [-1, 1], units name, maps).

    2-D slices are mapped one by one (MRI by its own percentiles); volumes
    are cut into axial slices, MRI scaled by the percentiles of the whole
    volume, and with ``config.body_slices_only`` only slices that show body
    are kept. Volumes hold HU (CT) or MRI intensities, so they mix only with
    16-bit or float slices, not with 8-bit ones. A bad file raises, or with
    ``on_bad`` is handed to it and left out. The slices keep their volume
    and position (``SliceSet.groups`` / ``positions``).
    """
    collector = SliceCollector()
    units, maps = stream_folder(paths, modality, config, collector.add, on_bad)
    return collector.finish(), units, maps


def stream_folder(paths: str | list[str], modality: str, config: Config,
                  add, on_bad: readers.BadFileHandler | None = None) -> tuple[str, list]:
    """``read_folder`` that hands each image's slices to ``add`` as they are read -> (units, maps).

    ``add`` gets one [rows, cols] slice, or a volume's kept [k, rows, cols]
    stack with ``positions=`` the kept slices' indices along the volume (a
    gap where ``body_slices_only`` dropped one), in model units; each call
    is one group. Only one volume is in memory at a time.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    where = os.fspath(paths[0]) if len(paths) == 1 else os.path.commonpath(
        [os.path.abspath(p) for p in paths])
    slice_files: list[str] = []
    found: list[FoundVolume] = []
    for path in paths:
        slice_paths, vols = volumes.find_inputs(path, modality, on_bad=on_bad)
        slice_files.extend(slice_paths)
        found.extend(vols)
    slices = []
    for path in slice_files:
        try:
            slices.append(read_slice(path, modality))
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
    units = _units_of(slices, bool(found), modality, where)
    maps = [map_for(units, s.pixels, config) for s in slices]
    for mapping, image in zip(maps, slices):
        add(mapping.to_unit(image.pixels))
    read, kept = len(slices), len(slices)
    del slices
    for volume_files in found:
        try:
            volume = volumes.read_volume(volume_files, modality)
        except VAEGANError as err:
            readers.skip_or_raise(on_bad, err)
            continue
        read += 1
        mapping = map_for(units, volume.voxels, config)
        keep = body_slices(volume.voxels, mapping, modality, config)
        if not keep.any():
            warnings.warn(f"{volume.path}: no slice shows body (body_slices_only); skipped",
                          stacklevel=2)
            continue
        add(mapping.to_unit(volume.voxels[keep]), positions=np.flatnonzero(keep))
        kept += int(keep.sum())
        maps.append(mapping)
        del volume
    if not read:
        raise VAEGANError(where, "no readable images (every image file was bad)")
    if not kept:
        raise VAEGANError(where, "no slice shows body; check the units or set "
                                 "body_slices_only=false")
    return units, maps


def _units_of(slices: list, volumes_found: bool, modality: str, where: str) -> str:
    """The one units name of a folder's images; mixing 8-bit with 16-bit/float is refused."""
    kinds = {modality_units(s.bit_depth, modality) for s in slices}
    volume_units = modality_units("float", modality)
    if volumes_found and kinds - {volume_units}:
        raise VAEGANError(where, f"mixes volumes ({volume_units}) with 8-bit slices (uint8): "
                                 "their units disagree; convert the slices to 16-bit/float "
                                 f"{'HU' if modality == 'ct' else 'intensities'} or train on "
                                 "one kind")
    if len(kinds) > 1:
        raise VAEGANError(where, f"mixed intensity units ({', '.join(sorted(kinds))}): "
                                 "use only 8-bit or only 16-bit/float images per modality")
    return kinds.pop() if kinds else volume_units


def body_slices(voxels: np.ndarray, mapping, modality: str, config: Config) -> np.ndarray:
    """Which axial slices of a volume to train on (all, unless ``body_slices_only``).

    Body is CT above ``body_threshold_hu``, or MRI above
    ``body_threshold_mri`` of the volume's robust range; a slice is kept when
    at least ``body_min_fraction`` of its pixels are body.
    """
    if not config.body_slices_only:
        return np.ones(voxels.shape[0], bool)
    if modality == "ct":
        threshold = config.body_threshold_hu
    else:
        threshold = mapping.low + config.body_threshold_mri * (mapping.high - mapping.low)
    fraction = (voxels > threshold).reshape(voxels.shape[0], -1).mean(axis=1)
    return fraction >= max(config.body_min_fraction, 1e-9)


def load_training_data(config: Config, data_root: str | None = None, mri_dir: str | None = None,
                       ct_dir: str | None = None, on_bad: readers.BadFileHandler | None = None,
                       cache_dir: str | None = None) -> TrainingData:
    """The unpaired MRI and CT slices for ``fit`` (the phantom when no data is given).

    Every file is read here, before training writes anything. A bad file
    raises, or with ``on_bad`` (``--skip-bad``) is handed to it and left out.
    With ``cache_dir``, folder data is decoded once into an on-disk slice
    cache there (reused while the files and settings are unchanged) and the
    slices are ``SliceStore``s read from it; without, ``InMemorySlices``.
    The phantom is always in memory (it is small and has no files).
    """
    if data_root and (mri_dir or ct_dir):
        raise VAEGANError(data_root, "give either --data or --mri-dir/--ct-dir, not both")
    if bool(mri_dir) != bool(ct_dir):
        raise VAEGANError(mri_dir or ct_dir, "--mri-dir and --ct-dir go together")
    if data_root:
        mri_paths, ct_paths = split_data_root(data_root)
    elif mri_dir:
        mri_paths, ct_paths = [mri_dir], [ct_dir]
    else:
        return phantom_training_data(config)
    if cache_dir:
        mri, mri_units, mri_maps = _cached(cache_dir, mri_paths, "mri", config, on_bad)
        ct, ct_units, _ = _cached(cache_dir, ct_paths, "ct", config, on_bad)
    else:
        mri, mri_units, mri_maps = read_folder(mri_paths, "mri", config, on_bad)
        ct, ct_units, _ = read_folder(ct_paths, "ct", config, on_bad)
    reference = _reference_range(mri_maps) if mri_units == "percentile" else (0.0, 255.0)
    config = config.replace(mri_units=mri_units, ct_units=ct_units, mri_reference_range=reference)
    return TrainingData(mri, ct, config, origin=f"MRI {_describe(mri_paths)} ({len(mri)} slices), "
                                                f"CT {_describe(ct_paths)} ({len(ct)} slices)")


def _cached(cache_dir: str, paths: list[str], modality: str, config: Config, on_bad):
    """One modality through the slice cache -> (store, units, maps)."""

    def build(add, handler):
        return stream_folder(paths, modality, config, add, handler)

    store, units, bounds = slice_cache.open_or_build(cache_dir, paths, modality, config,
                                                     build, on_bad)
    return store, units, [IntensityMap(low, high) for low, high in bounds]


def _describe(paths: list[str]) -> str:
    if len(paths) == 1:
        return os.fspath(paths[0])
    return f"{len(paths)} volumes under {os.path.commonpath([os.path.abspath(p) for p in paths])}"


def phantom_training_data(config: Config) -> TrainingData:
    """Phantom slices; MRI and CT from different subjects, so the pairs are truly unpaired.

    Each subject is one group, its slices at their positions along z.
    """
    from keras_vaegan.data.phantom_head import phantom_kind

    count = config.phantom_subjects * config.phantom_slices
    make = phantom_kind(config.phantom).make_subject
    mri, _, _ = phantom.make_slices(count, config.phantom_size, seed=config.seed,
                                    slices_per_subject=config.phantom_slices, make=make)
    _, ct, _ = phantom.make_slices(count, config.phantom_size, seed=config.seed + 1,
                                   slices_per_subject=config.phantom_slices, make=make)
    maps = [mri_map(s, config.mri_percentiles) for s in mri]
    config = config.replace(mri_units="percentile", ct_units="hu",
                            mri_reference_range=_reference_range(maps))
    ct_to_unit = map_for("hu", None, config)
    name = "phantom" if config.phantom == "classic" else f"{config.phantom} phantom"
    groups, positions = phantom.slice_groups(count, config.phantom_slices)
    return TrainingData(InMemorySlices([m.to_unit(s) for m, s in zip(maps, mri)], groups, positions),
                        InMemorySlices([ct_to_unit.to_unit(s) for s in ct], groups, positions),
                        config,
                        origin=f"{name} ({count} MRI and {count} CT slices, "
                               f"{config.phantom_size}x{config.phantom_size})")


def _reference_range(maps) -> tuple[float, float]:
    return (float(np.median([m.low for m in maps])), float(np.median([m.high for m in maps])))
