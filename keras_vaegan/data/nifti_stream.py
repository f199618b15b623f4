"""NIfTI volumes read and written a slab of slices at a time (issue 28).

``predict`` on a long volume must not hold it whole: ``open_nifti`` reads
only the header and gives a ``Volume`` whose voxels (``LazyVoxels``) are read
on demand, through one open file; ``NiftiSlabWriter`` writes the output's
header first and then each slab as it comes. Both go through the file in its
own order, so a ``.nii.gz`` is decompressed or compressed in one forward pass
(a backward seek in gzip decompresses again from the start). The values and
bytes are those of ``nifti.read_nifti`` and ``nifti.write_nifti`` exactly;
``streamable`` says which files allow it (slices along the file's last axis,
one contiguous byte range each): the others are read and written whole.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from typing import Iterator

import numpy as np

from keras_vaegan.data import nifti
from keras_vaegan.data.volume import Reorientation, Volume
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.atomic import atomic_path

_READ_ERRORS = (EOFError, OSError, ValueError, zlib.error)  # a truncated or corrupt .nii.gz


def streamable(volume: Volume) -> bool:
    """True for a NIfTI whose canonical slices lie along its file's last (slowest) array axis."""
    return volume.kind == "nifti" and volume.nifti_image is not None \
        and volume.reorient.axes[0] == 2


def open_nifti(path: str | os.PathLike, modality: str) -> Volume:
    """A NIfTI ``Volume`` from its header alone: its voxels are read when asked for.

    The checks and messages of ``read_nifti``, except the NaN/inf check,
    which needs the voxels (the caller checks each slab it reads).
    """
    path = os.fspath(path)
    image = nifti._load(path)
    shape, reorient = nifti._checked(path, image)
    return nifti.nifti_volume(path, image, reorient, LazyVoxels(path, image, shape, reorient),
                              modality)


class LazyVoxels:
    """The canonical float32 voxels of a NIfTI file, read a few slices at a time.

    Indexing gives ``read_nifti(path).voxels[...]`` bit for bit (the same
    proxy, scaling and cast). One file handle stays open, and the last slices
    read are kept, so overlapping windows taken in the file's order
    (``file_order_step``) read every byte once and never seek backwards.
    """

    def __init__(self, path: str, image, shape: tuple[int, int, int],
                 reorient: Reorientation) -> None:
        self.path = path
        self._image = image
        self._file_shape = shape  # 3-D, trailing 1s dropped
        self._reorient = reorient
        self.shape = tuple(shape[axis] for axis in reorient.axes)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.file_order_step = -1 if reorient.flips[0] else 1
        self._handle = None
        self._proxy = None
        self._cache: tuple[int, int, np.ndarray] | None = None  # canonical start, stop, slices

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyVoxels({self.path!r}, shape={self.shape})"

    def __enter__(self) -> "LazyVoxels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (reading again reopens it) and drop the kept slices."""
        self._cache = None
        self._proxy = None
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()

    def __getitem__(self, key) -> np.ndarray:
        """Canonical slices ``key`` (an index or a slice of step 1) as a new float32 array.

        A tuple indexes the slices with its first item and the result with the rest.
        """
        if isinstance(key, tuple) and key:
            head, rest = key[0], key[1:]
            return self[head][(slice(None),) + rest if isinstance(head, slice) else rest]
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise ValueError(f"{self!r}: slices of step 1 only, not {key.step}")
            start, stop, _ = key.indices(self.shape[0])
            return self._window(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"slice {int(key)} of a volume of {self.shape[0]}")
            return self._window(index, index + 1)[0]
        raise TypeError(f"{self!r}: index with an int or a slice, not {type(key).__name__}")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole volume (what ``read_nifti`` holds), for code that needs all of it at once."""
        if copy is False:
            raise ValueError(f"{self!r}: the voxels are read from the file, a copy is needed")
        whole = np.empty(self.shape, np.float32)
        for start, stop, slab in self.slabs():
            whole[start:stop] = slab
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def slabs(self, size: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, canonical slices) of ``size`` slices, in the file's order, each read once.

        ``size`` None: as many slices as ``nifti._SLAB_VOXELS`` voxels (what
        ``read_nifti`` reads at a time), so every scan of a file shares one size.
        """
        if size is None:
            size = max(1, nifti._SLAB_VOXELS // (self.shape[1] * self.shape[2]))
        if size < 1:
            raise ValueError(f"slab size must be at least 1, not {size}")
        count = self.shape[0]
        self._cache = None  # slabs do not overlap: nothing is kept
        for first in range(0, count, size):  # file indices along the slice axis
            last = min(first + size, count)
            start, stop = (first, last) if self.file_order_step > 0 else \
                (count - last, count - first)
            yield start, stop, self._read(start, stop)

    def _window(self, start: int, stop: int) -> np.ndarray:
        """Slices [start, stop): the part already kept is copied, the rest read from the file."""
        out = np.empty((stop - start,) + self.shape[1:], np.float32)
        if stop == start:
            return out
        cached = self._cache
        lo, hi = start, stop  # what must still be read
        if cached is not None:
            c0, c1, kept = cached
            both0, both1 = max(start, c0), min(stop, c1)
            if both0 < both1:
                out[both0 - start:both1 - start] = kept[both0 - c0:both1 - c0]
                # read only the side that lies beyond the kept slices in the file's order
                if self.file_order_step > 0 and both0 == start:
                    lo = both1
                elif self.file_order_step < 0 and both1 == stop:
                    hi = both0
        if lo < hi:
            out[lo - start:hi - start] = self._read(lo, hi)
        self._cache = (start, stop, out.copy())  # the caller may change ``out`` in place
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Canonical slices [start, stop) read from the file (the slab ``_read_canonical`` reads)."""
        axis = self._reorient.axes[0]
        first, last = start, stop  # file indices along the slice axis
        if self._reorient.flips[0]:
            first, last = self.shape[0] - stop, self.shape[0] - start
        out = np.empty((stop - start,) + self.shape[1:], np.float32)
        slab_shape = list(self._file_shape)
        slab_shape[axis] = stop - start
        slicer = [slice(None)] * len(self._image.shape)
        slicer[axis] = slice(first, last)
        try:
            proxy = self._open()
            slab = np.asarray(proxy[tuple(slicer)])
        except _READ_ERRORS as err:
            self.close()
            raise VAEGANError(self.path, "truncated or corrupt NIfTI data "
                                         f"({nifti._short(err, self.path)})") from None
        self._reorient.file_order_view(out)[...] = slab.reshape(slab_shape)
        return out

    def _open(self):
        if self._proxy is None:
            from nibabel.openers import ImageOpener

            nifti.nibabel_module(self.path)
            self._handle = ImageOpener(self.path)
            self._proxy = nifti.open_proxy(self._handle, self._image)
        return self._proxy


class NiftiSlabWriter:
    """Write a float32 NIfTI like ``write_nifti``, a slab of canonical slices at a time.

    The header goes first, then each slab's bytes as ``write`` gets them
    (in the file's order: the order ``LazyVoxels.slabs`` gives); the file
    appears at ``path`` only when every slice was written and the block
    ended without an exception.
    """

    def __init__(self, path: str | os.PathLike, volume: Volume, modality: str,
                 role: str = "mean", description: str | None = None) -> None:
        self.path = os.fspath(path)
        if not streamable(volume):
            raise ValueError(f"{volume.path}: slices do not lie along the file's last axis; "
                             "write it whole (write_nifti)")
        self._volume = volume
        placeholder = np.broadcast_to(np.zeros((), np.float32), volume.file_shape)  # no memory
        self._header_image = nifti.output_image(volume, placeholder, modality, role, description)
        self._count = int(volume.voxels.shape[0])
        self._step = -1 if volume.reorient.flips[0] else 1
        self._next = 0 if self._step > 0 else self._count  # next start (or stop, when flipped)
        self._stack: contextlib.ExitStack | None = None
        self._file = None

    def __enter__(self) -> "NiftiSlabWriter":
        from nibabel.openers import ImageOpener

        nifti.nibabel_module(self.path)
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path, suffix=nifti.output_suffix(self.path)))
            self._file = stack.enter_context(ImageOpener(tmp, "wb"))  # gzip as nib.save does
            self._write_header()
        except BaseException as err:
            self._file = None
            stack.__exit__(type(err), err, err.__traceback__)  # no temporary file is left
            if isinstance(err, OSError):
                raise VAEGANError(self.path, f"cannot write ({err.strerror or err})") from None
            raise
        self._stack = stack
        return self

    def _write_header(self) -> None:
        """What ``nib.save`` writes before the voxels (``AnalyzeImage.to_file_map``'s steps)."""
        from nibabel.analyze import get_slope_inter
        from nibabel.arraywriters import make_array_writer
        from nibabel.volumeutils import seek_tell

        image = self._header_image
        image.get_data_dtype(finalize=True)
        image.update_header()
        header = image.header
        writer = make_array_writer(np.asanyarray(image.dataobj), header.get_data_dtype(),
                                   header.has_data_slope, header.has_data_intercept)
        header.set_slope_inter(*get_slope_inter(writer))  # float32 out: no data looked at
        header.write_to(self._file)
        seek_tell(self._file, header.get_data_offset(), write0=True)
        self._dtype = header.get_data_dtype()  # little-endian float32

    def write(self, start: int, stop: int, slab) -> None:
        """Write canonical slices [start, stop), the next ones in the file's order."""
        if self._file is None:
            raise ValueError(f"{self.path}: write inside a 'with NiftiSlabWriter(...)' block")
        if self._step > 0 and (start != self._next or not start < stop <= self._count):
            raise ValueError(f"{self.path}: slices [{start}, {stop}) after [0, {self._next}) "
                             f"of {self._count}; the next ones start at {self._next}")
        if self._step < 0 and (stop != self._next or not 0 <= start < stop):
            raise ValueError(f"{self.path}: slices [{start}, {stop}) after [{self._next}, "
                             f"{self._count}); slices run down the file, the next ones end "
                             f"at {self._next}")
        slab = np.asarray(slab, dtype=np.float32)
        expected = (stop - start,) + tuple(self._volume.voxels.shape[1:])
        if slab.shape != expected:
            raise ValueError(f"{self.path}: slab of shape {slab.shape} for slices "
                             f"[{start}, {stop}); expected {expected}")
        in_file = self._volume.reorient.file_order_view(slab)  # (x, y, slices), the file's axes
        data = np.asarray(in_file, dtype=self._dtype).tobytes(order="F")
        try:
            self._file.write(data)
        except OSError as err:
            raise VAEGANError(self.path, f"cannot write ({err.strerror or err})") from None
        self._next = stop if self._step > 0 else start

    def __exit__(self, kind, error, trace) -> None:
        stack, self._stack, self._file = self._stack, None, None
        if stack is None:
            return
        if kind is None and self._next != (self._count if self._step > 0 else 0):
            done = (0, self._next) if self._step > 0 else (self._next, self._count)
            error = VAEGANError(self.path, f"only slices [{done[0]}, {done[1]}) of "
                                           f"{self._count} were written; nothing was saved")
            stack.__exit__(VAEGANError, error, None)  # atomic_path removes the temporary file
            raise error
        if kind is not None:
            stack.__exit__(kind, error, trace)
            return
        try:
            stack.close()  # ends the gzip stream, flushes, renames onto ``path``
        except OSError as err:
            raise VAEGANError(self.path, f"cannot write ({err.strerror or err})") from None
