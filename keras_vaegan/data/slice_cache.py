"""Training slices decoded once into an on-disk cache, then read back crop by crop.

Why: holding every slice of a real study set in RAM (tens of GB as float32)
does not fit a workstation, and decoding DICOM/NIfTI every epoch is slow. The
first ``fit`` on a set writes each modality's slices, already in model units,
as float16 into a few raw shard files with an index of (shard, offset, rows,
cols); later runs open the index and read only the rows a crop needs.

Float16 model units, not file units: the mapping (CT window, per-volume MRI
percentiles) is applied once and the pipeline has one path for both
modalities; float16 has 11 significant bits, so [-1, 1] is kept within
2.5e-4 (half a HU of a 4095 HU window), at half float32's size.

Shards are read with ``os.pread`` rather than memory-mapped: pages of a mapped
file count in the process's resident set until the kernel drops them, so an
epoch over a mapped cache would grow RSS with the dataset; ``pread`` goes
through the page cache, which the kernel manages, not the process.

A cache folder is named by a key hashed from the inputs (paths, sizes,
modification times) and the settings that change the slices (units,
window, percentiles, body-slice selection, bad-file skipping): change any of
them and a new cache is built; the old one is left for the user to delete.

Every slice also knows where it came from, for 2.5-D input
(``config.context_slices`` = K): its ``group`` (one per volume, or per 2-D
slice file) and its ``position`` along that volume's slice axis (the index
in the file, kept when ``body_slices_only`` drops slices). ``stacks`` turns a
slice into the K slice indices of its stack: neighbours only within a group
and only at the adjacent position, else the nearest slice in that
direction repeated (a volume's edge, a dropped slice, a lone 2-D file).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np

from keras_vaegan.config import Config
from keras_vaegan.data import readers
from keras_vaegan.data.units import AIR_UNIT
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_folder

FORMAT_VERSION = 2  # 2: index columns group and position (older caches are rebuilt)
INDEX_FILE = "index.npy"  # int64 [slices, 6]: shard, offset (elements), rows, cols, group, position
_INDEX_COLUMNS = 6
META_FILE = "cache.json"  # key, units, intensity maps, files skipped as bad
SHARD_BYTES = 1 << 30  # a new shard file after 1 GiB: few open files, no huge file
CACHE_ENV = "KERAS_VAEGAN_CACHE"
_DTYPE = np.dtype("<f2")

# per modality, the settings that change which slices are kept or their values
KEY_SETTINGS = {"ct": ("ct_window_hu", "body_slices_only", "body_threshold_hu",
                       "body_min_fraction"),
                "mri": ("mri_percentiles", "body_slices_only", "body_threshold_mri",
                        "body_min_fraction")}


class SliceSet:
    """Slices of one modality in model units, any size each; read by whole slice or by window.

    ``groups`` and ``positions`` say which volume (or 2-D file) each slice
    came from and where along its slice axis; slices of one group share a shape.
    """

    shapes: np.ndarray  # int64 [n, 2]: rows, cols of each slice
    groups: np.ndarray  # int64 [n]: the volume / 2-D file of each slice
    positions: np.ndarray  # int64 [n]: index along that volume's slice axis
    _links: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.shapes)

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of slice ``index`` (any float dtype)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> np.ndarray:
        """One whole slice, float32."""
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return np.asarray(self.rows(index, 0, int(self.shapes[index, 0])), np.float32)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def stack(self, index: int, k: int) -> np.ndarray:
        """The ``k`` slice indices of slice ``index``'s stack, int64 [k] (see ``stacks``)."""
        return self.stacks(np.array([index]), k)[0]

    def stacks(self, indices, k: int) -> np.ndarray:
        """Slice indices -> int64 [len, k]: each slice's stack, channel ``k // 2`` the slice itself.

        Channel ``k // 2 + d`` is the slice ``d`` positions further along the
        same volume; where that slice does not exist (edge, dropped slice,
        other group) the nearest existing one in that direction is repeated.
        """
        if k < 1 or k % 2 == 0:
            raise ValueError(f"a stack has an odd number of slices, got {k}")
        if self._links is None:
            self._links = neighbour_links(self.groups, self.positions)
        below, above = self._links
        centre = np.asarray(indices, np.int64).reshape(-1)
        lower, upper = [], []
        down = up = centre
        for _ in range(k // 2):
            down, up = below[down], above[up]
            lower.append(down)
            upper.append(up)
        return np.stack(lower[::-1] + [centre] + upper, axis=1)

    def read_stack(self, index: int, k: int) -> np.ndarray:
        """Slice ``index``'s whole stack as float32 [rows, cols, k]."""
        return np.stack([self[int(i)] for i in self.stack(index, k)], axis=-1)

    def window(self, index: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """``height`` x ``width`` float32 pixels from (top, left), air where outside the slice."""
        rows, cols = (int(v) for v in self.shapes[index])
        out = np.full((height, width), AIR_UNIT, np.float32)
        r0, r1 = max(top, 0), min(top + height, rows)
        c0, c1 = max(left, 0), min(left + width, cols)
        if r0 < r1 and c0 < c1:
            out[r0 - top:r1 - top, c0 - left:c1 - left] = self.rows(index, r0, r1)[:, c0:c1]
        return out

    def windows(self, indices, tops, lefts, size: int, k: int = 1) -> np.ndarray:
        """A batch of square windows -> float32 [batch, size, size, k] (one call per batch).

        With ``k > 1`` each element is its slice's stack, every channel cut
        at the same (top, left); a slice repeated by the clamp is read once.
        """
        if k == 1:
            return np.stack([self.window(int(i), int(t), int(left), size, size)
                             for i, t, left in zip(indices, tops, lefts)])[..., np.newaxis]
        out = []
        for stack, top, left in zip(self.stacks(indices, k), tops, lefts):
            read = {int(i): self.window(int(i), int(top), int(left), size, size)
                    for i in set(stack.tolist())}
            out.append(np.stack([read[int(i)] for i in stack], axis=-1))
        return np.stack(out)


def neighbour_links(groups: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(below, above): for each slice the index of its neighbour at position -1 / +1, or itself.

    A neighbour is a slice of the same group at exactly the adjacent
    position, in whatever order the slices are stored.
    """
    groups = np.asarray(groups, np.int64).reshape(-1)
    positions = np.asarray(positions, np.int64).reshape(-1)
    if groups.shape != positions.shape:
        raise ValueError(f"{len(groups)} groups for {len(positions)} positions")
    order = np.lexsort((positions, groups))
    g, p = groups[order], positions[order]
    same = g[1:] == g[:-1]
    if np.any(same & (p[1:] == p[:-1])):
        raise ValueError("two slices share a group and position")
    adjacent = same & (p[1:] == p[:-1] + 1)
    up = np.arange(len(order))
    down = np.arange(len(order))
    up[:-1][adjacent] += 1
    down[1:][adjacent] -= 1
    below, above = np.empty_like(order), np.empty_like(order)
    below[order], above[order] = order[down], order[up]
    return below, above


def stack_positions(images, positions=None) -> tuple[np.ndarray, np.ndarray]:
    """What one ``add`` gets -> (float32 [k, rows, cols], int64 [k] positions).

    A [rows, cols] slice is a one-slice group at position 0; a [k, rows, cols]
    volume stack is at ``positions`` (default 0..k-1: none dropped).
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
        images = images[np.newaxis]
    if images.ndim != 3:
        raise ValueError(f"expected [rows, cols] or [k, rows, cols], got shape {images.shape}")
    positions = np.arange(len(images)) if positions is None else np.asarray(positions, np.int64)
    if positions.shape != (len(images),):
        raise ValueError(f"{positions.size} positions for {len(images)} slices")
    return images, positions.astype(np.int64)


class InMemorySlices(SliceSet):
    """Slices held as numpy arrays (the phantom, a folder read without cache, a caller's list).

    Without ``groups`` every slice is its own group (a 2-D slice: its stack
    is itself repeated); ``positions`` default to 0.
    """

    def __init__(self, slices: list[np.ndarray], groups=None, positions=None):
        self.slices = slices
        self.shapes = np.array([s.shape for s in slices], np.int64).reshape(-1, 2)
        count = len(slices)
        self.groups = (np.arange(count, dtype=np.int64) if groups is None
                       else np.asarray(groups, np.int64).reshape(-1))
        self.positions = (np.zeros(count, np.int64) if positions is None
                          else np.asarray(positions, np.int64).reshape(-1))
        if len(self.groups) != count or len(self.positions) != count:
            raise ValueError(f"{count} slices with {len(self.groups)} groups and "
                             f"{len(self.positions)} positions")
        order = np.argsort(self.groups, kind="stable")
        shapes, same = self.shapes[order], np.diff(self.groups[order]) == 0
        if np.any(same & np.any(shapes[1:] != shapes[:-1], axis=1)):
            raise ValueError("slices of one group differ in shape")

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        return self.slices[index][start:stop]

    def __add__(self, other) -> InMemorySlices:
        """Both sets in one, their groups kept apart (a list counts as 2-D slices)."""
        if not isinstance(other, SliceSet):
            other = InMemorySlices(list(other))
        offset = int(self.groups.max()) + 1 if len(self) else 0
        return InMemorySlices(list(self.slices) + list(other),
                              np.concatenate([self.groups, other.groups + offset]),
                              np.concatenate([self.positions, other.positions]))


class SliceCollector:
    """``add`` for reading a folder into memory: one group per call, as ``CacheWriter``."""

    def __init__(self):
        self.slices: list[np.ndarray] = []
        self.groups: list[int] = []
        self.positions: list[int] = []
        self._group = 0

    def add(self, images, positions=None) -> None:
        """A volume's kept [k, rows, cols] stack (at ``positions``) or one [rows, cols] slice."""
        images, positions = stack_positions(images, positions)
        self.slices.extend(images)
        self.groups.extend([self._group] * len(images))
        self.positions.extend(positions.tolist())
        self._group += 1

    def finish(self) -> InMemorySlices:
        return InMemorySlices(self.slices, self.groups, self.positions)


class SliceStore(SliceSet):
    """A finished cache folder, read with ``pread``: only the bytes asked for come in."""

    def __init__(self, folder: str):
        self.folder = folder
        try:
            self.index = np.load(os.path.join(folder, INDEX_FILE))
            with open(os.path.join(folder, META_FILE), encoding="utf-8") as handle:
                self.meta = json.load(handle)
        except (OSError, ValueError) as err:
            raise VAEGANError(folder, f"unreadable slice cache ({err}); delete it to "
                                      "rebuild") from None
        if (self.meta.get("format") != FORMAT_VERSION or self.index.ndim != 2
                or self.index.shape[1] != _INDEX_COLUMNS):
            raise VAEGANError(folder, f"slice cache of format {self.meta.get('format')}, not "
                                      f"{FORMAT_VERSION}; delete it to rebuild")
        self.shapes = self.index[:, 2:4]
        self.groups = self.index[:, 4]
        self.positions = self.index[:, 5]
        self._files: dict[int, int] = {}

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        shard, offset, _, cols = (int(v) for v in self.index[index, :4])
        count = (stop - start) * cols
        data = os.pread(self._fd(shard), count * _DTYPE.itemsize,
                        (offset + start * cols) * _DTYPE.itemsize)
        if len(data) != count * _DTYPE.itemsize:
            raise VAEGANError(self._shard_path(shard), "slice cache shard cut short; delete "
                                                       "the cache folder to rebuild it")
        return np.frombuffer(data, _DTYPE).reshape(stop - start, cols)

    def _fd(self, shard: int) -> int:
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self._shard_path(shard), os.O_RDONLY)
        return fd

    def _shard_path(self, shard: int) -> str:
        return os.path.join(self.folder, f"shard-{shard:05d}.f16")

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # pickling (a dataset copied to another process) reopens the files there
    def __getstate__(self) -> dict:
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])


class CacheWriter:
    """Appends slices (model units) to shard files and records where each one went."""

    def __init__(self, folder: str):
        self.folder = folder
        self.entries: list[tuple[int, int, int, int, int, int]] = []
        self.shard, self.offset, self._handle = -1, 0, None
        self._group = 0

    def add(self, images: np.ndarray, positions=None) -> None:
        """A volume's kept stack [k, rows, cols] (at ``positions`` along its slice axis,
        default 0..k-1) or one [rows, cols] slice, in model units: one group per call."""
        images, positions = stack_positions(images, positions)
        if self._handle is None or self.offset * _DTYPE.itemsize >= SHARD_BYTES:
            self._next_shard()
        _, rows, cols = images.shape
        self._handle.write(images.astype(_DTYPE).tobytes())
        for position in positions.tolist():
            self.entries.append((self.shard, self.offset, rows, cols, self._group, position))
            self.offset += rows * cols
        self._group += 1

    def _next_shard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self.shard += 1
        self.offset = 0
        self._handle = open(os.path.join(self.folder, f"shard-{self.shard:05d}.f16"), "wb")

    def finish(self, meta: dict) -> None:
        if self._handle is not None:
            self._handle.close()
        np.save(os.path.join(self.folder, INDEX_FILE),
                np.array(self.entries, np.int64).reshape(-1, _INDEX_COLUMNS))
        with open(os.path.join(self.folder, META_FILE), "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=1)

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()


def cache_root(setting: str) -> str | None:
    """``config.data_cache`` -> the folder caches go in, or None (keep slices in memory).

    ``auto``: ``$KERAS_VAEGAN_CACHE``, else ``$XDG_CACHE_HOME/keras-vaegan``, else
    ``~/.cache/keras-vaegan``: shared by every run of the user on the same data.
    """
    if setting in ("", "none"):
        return None
    if setting != "auto":
        return os.path.abspath(os.path.expanduser(setting))
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keras-vaegan")


def cache_key(paths: list[str], modality: str, config: Config, skip_bad: bool) -> str:
    """Hash of every input file (path, size, mtime) and the settings that shape the slices."""
    files = []
    for path in paths:
        for name in readers.find_images(path):
            stat = os.stat(name)
            files.append([os.path.abspath(name), stat.st_size, stat.st_mtime_ns])
    settings = {key: getattr(config, key) for key in KEY_SETTINGS[modality]}
    text = json.dumps({"format": FORMAT_VERSION, "modality": modality, "skip_bad": skip_bad,
                       "settings": settings, "files": files}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# build(add, on_bad) writes every slice through ``add(images, positions=None)`` (one
# volume or 2-D slice a call, see ``CacheWriter.add``) and returns (units, maps)
Builder = Callable[[Callable[..., None], "readers.BadFileHandler | None"], tuple[str, list]]


def open_or_build(root: str, paths: list[str], modality: str, config: Config,
                  build: Builder, on_bad: readers.BadFileHandler | None = None
                  ) -> tuple[SliceStore, str, list[tuple[float, float]]]:
    """The cache of ``paths`` for ``modality`` -> (store, units, MRI (low, high) per image).

    Reused when its key matches; otherwise built by ``build`` into a
    temporary folder that becomes the cache only when complete (a kill or a
    bad file leaves no half cache). Files skipped as bad while building are
    recorded and handed to ``on_bad`` again on reuse.
    """
    key = cache_key(paths, modality, config, on_bad is not None)
    folder = os.path.join(root, f"{modality}-{key[:24]}")
    store = _open_existing(folder, key)
    if store is None:
        _build(folder, key, build, on_bad)
        store = SliceStore(folder)
    elif on_bad is not None:
        for path, reason in store.meta["skipped"]:
            on_bad(VAEGANError(path, reason))
    maps = [tuple(m) for m in store.meta["maps"]]
    return store, store.meta["units"], maps


def _open_existing(folder: str, key: str) -> SliceStore | None:
    if not os.path.isfile(os.path.join(folder, META_FILE)):
        return None
    try:
        store = SliceStore(folder)
    except VAEGANError:  # damaged: built again in its place
        return None
    return store if store.meta.get("key") == key else None


class _BuiltMeanwhile(Exception):
    """Drops this build: the same cache appeared while it ran (its readers keep their files)."""


def _build(folder: str, key: str, build: Builder, on_bad) -> None:
    skipped: list[tuple[str | None, str]] = []

    def record(err: VAEGANError) -> None:
        skipped.append((err.path, err.reason))
        on_bad(err)

    try:
        with atomic_folder(folder) as tmp:
            writer = CacheWriter(tmp)
            try:
                units, maps = build(writer.add, record if on_bad is not None else None)
                writer.finish({"key": key, "format": FORMAT_VERSION, "units": units,
                               "maps": [[float(m.low), float(m.high)] for m in maps],
                               "skipped": skipped, "slices": len(writer.entries)})
            finally:
                writer.abort()
            if _open_existing(folder, key) is not None:
                raise _BuiltMeanwhile  # another process (a worker) finished it first: keep theirs
    except _BuiltMeanwhile:
        pass
    except OSError as err:
        raise VAEGANError(folder, f"cannot write the slice cache ({err.strerror or err}); "
                                  "free space, or --set data_cache=FOLDER elsewhere or "
                                  "data_cache=none (in memory)") from None
