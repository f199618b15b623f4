"""Find input files, and read 2-D image slices (png, jpg, tif, npy) into float arrays.

``find_images`` lists every supported file below a folder: 2-D slices and
the volume files (``.nii``, ``.nii.gz``, ``.dcm``, and extensionless files
that carry the DICOM ``DICM`` marker) that ``keras_vaegan.data.volumes``
reads. ``read_slice`` reads one 2-D slice. Every problem with a file becomes a
``VAEGANError`` naming the file, never a raw Pillow or numpy exception.

CT convention: unsigned 16-bit PNG/TIFF hold HU + 1024; signed or float TIFF
and ``.npy`` hold HU as they are; 8-bit CT stays 0..255 (units "uint8").
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from keras_vaegan.data.units import normalise_modality
from keras_vaegan.errors import VAEGANError
from keras_vaegan.io.paths import extension as _extension

SLICE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
DICOM_EXTENSIONS = (".dcm",)
IMAGE_EXTENSIONS = SLICE_EXTENSIONS + NIFTI_EXTENSIONS + DICOM_EXTENSIONS
CT_PNG_OFFSET = 1024  # unsigned 16-bit CT files store HU + 1024
MIN_SIDE = 8  # pixels: smaller slices are refused (the model pads to a multiple of its stride)
MAX_SIDE = 8192  # pixels: bigger slices are refused before their pixels are decoded
BIT_DEPTHS = ("uint8", "uint16", "float")

BadFileHandler = Callable[[VAEGANError], None]
"""What to do with a bad input file: ``None`` raises its error, a function (``--skip-bad``)
receives it and the file is left out."""


def skip_or_raise(on_bad: BadFileHandler | None, err: VAEGANError) -> None:
    """Raise ``err``, or hand it to ``on_bad`` so the caller can leave the file out."""
    if on_bad is None:
        raise err
    on_bad(err)


@dataclass
class Slice:
    """One 2-D image in file units (HU for CT unless 8-bit)."""

    path: str
    pixels: np.ndarray  # float32, 2-D
    bit_depth: str  # "uint8" | "uint16" | "float"


def _listed(name: str) -> bool:
    return not name.startswith(".")  # hidden files and our own ".tmp-*" files


def has_dicom_marker(path: str | os.PathLike) -> bool:
    """True for a file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def file_kind(path: str | os.PathLike) -> str | None:
    """'slice', 'nifti' or 'dicom' for a supported file name, else None.

    A file without extension counts as DICOM when it carries the DICOM
    marker (scanner exports such as ``IM0001``); ``DICOMDIR`` never does.
    """
    path = os.fspath(path)
    ext = _extension(path)
    if ext in SLICE_EXTENSIONS:
        return "slice"
    if ext in NIFTI_EXTENSIONS:
        return "nifti"
    if ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext == "" and os.path.basename(path).upper() != "DICOMDIR" and has_dicom_marker(path):
        return "dicom"
    return None


def find_images(root: str | os.PathLike) -> list[str]:
    """A supported image file, or every supported image below a folder, sorted.

    Supported: 2-D slices (``SLICE_EXTENSIONS``) and volume files (``.nii``,
    ``.nii.gz``, ``.dcm``, extensionless DICOM).
    """
    root = os.fspath(root)
    if os.path.isfile(root):
        if file_kind(root) is None:
            raise VAEGANError(root, f"unsupported file type '{_extension(root) or 'none'}' "
                                    f"(supported: {', '.join(IMAGE_EXTENSIONS)})")
        return [root]
    if not os.path.isdir(root):
        raise VAEGANError(root, "no such file or folder")
    def unreadable(err: OSError) -> None:
        raise VAEGANError(err.filename or root, f"cannot read the folder "
                                                f"({err.strerror or err})")

    found = []
    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        subfolders[:] = sorted(d for d in subfolders if _listed(d))
        found.extend(path for path in (os.path.join(folder, name) for name in files
                                       if _listed(name))
                     if file_kind(path) is not None)
    if not found:
        raise VAEGANError(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return sorted(found)


def read_slice(path: str | os.PathLike, modality: str) -> Slice:
    """One image file as a float32 2-D Slice in file units (CT 16-bit: HU)."""
    path = os.fspath(path)
    modality = normalise_modality(modality)
    ext = _extension(path)
    if ext not in SLICE_EXTENSIONS:
        if file_kind(path) in ("nifti", "dicom"):
            raise VAEGANError(path, "is a volume, not a 2-D slice; read it with "
                                    "keras_vaegan.data.volumes")
        raise VAEGANError(path, f"unsupported file type '{ext or 'none'}' "
                                f"(supported: {', '.join(SLICE_EXTENSIONS)})")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise VAEGANError(path, "no such file") from None
    except OSError as err:
        raise VAEGANError(path, f"cannot read ({err.strerror or err})") from None
    if size == 0:
        raise VAEGANError(path, "empty file (0 bytes)")
    if ext == ".npy":
        pixels, bit_depth = _read_npy(path)
    else:
        pixels, bit_depth = _read_pillow(path)
    pixels = _check_pixels(path, pixels)
    if modality == "ct" and bit_depth == "uint16":
        pixels = pixels - np.float32(CT_PNG_OFFSET)
    return Slice(path=path, pixels=pixels, bit_depth=bit_depth)


def read_slices(paths: str | os.PathLike | Sequence[str | os.PathLike], modality: str) -> list[Slice]:
    """Every slice under a file/folder, or under each of a list of them, in sorted order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for path in paths:
        files.extend(find_images(path))
    return [read_slice(path, modality) for path in files]


# --- formats -----------------------------------------------------------------------


def _read_npy(path: str) -> tuple[np.ndarray, str]:
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as err:
        raise VAEGANError(path, f"cannot read ({_short(err, path)})") from None
    if magic != b"\x93NUMPY":
        raise VAEGANError(path, "not a .npy file (no NumPy header)")
    _check_npy_header(path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, OSError, EOFError, ...
        raise VAEGANError(path, f"not a readable .npy array ({_short(err, path)})") from None
    if not isinstance(array, np.ndarray):
        raise VAEGANError(path, "not a single .npy array")
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 2:
        raise VAEGANError(path, f"expected a 2-D array (or one channel), got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise VAEGANError(path, f"expected a numeric array, got dtype {array.dtype}")
    bit_depth = "uint8" if array.dtype == np.uint8 else "float"
    return array.astype(np.float32), bit_depth


def _check_npy_header(path: str) -> None:
    """Refuse a .npy array that is too big (or cut short) from its header, before loading it."""
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                           else npy_format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
            data_start = handle.tell()
    except Exception as err:  # ValueError for a bad header dictionary, EOFError, OSError
        raise VAEGANError(path, f"not a readable .npy array ({_short(err, path)})") from None
    squeezed = [side for side in shape if side != 1] if len(shape) > 2 else list(shape)
    if len(squeezed) == 2 and max(squeezed) > MAX_SIDE:
        raise VAEGANError(path, f"image is {squeezed[1]}x{squeezed[0]}, bigger than "
                                f"{MAX_SIDE}x{MAX_SIDE}")
    if int(np.prod(shape, dtype=np.int64)) > MAX_SIDE * MAX_SIDE:
        raise VAEGANError(path, f"array of shape {tuple(shape)} is bigger than one "
                                f"{MAX_SIDE}x{MAX_SIDE} image")
    if dtype.hasobject:
        raise VAEGANError(path, f"expected a numeric array, got dtype {dtype}")
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < expected:
        raise VAEGANError(path, f"truncated .npy file ({os.path.getsize(path)} of {expected} "
                                "bytes)")


def _read_pillow(path: str) -> tuple[np.ndarray, str]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise VAEGANError(path, f"has {frames} pages; one 2-D image per file is supported")
            width, height = img.size
            if width > MAX_SIDE or height > MAX_SIDE:
                raise VAEGANError(path, f"image is {width}x{height}, bigger than "
                                        f"{MAX_SIDE}x{MAX_SIDE}")
            img.load()  # decode everything now so truncated files fail here
            fmt = img.format
            return _pillow_pixels(path, img, fmt)
    except VAEGANError:
        raise
    except Image.DecompressionBombError:
        raise VAEGANError(path, "image is too large to decode safely") from None
    except Exception as err:  # UnidentifiedImageError, truncated data, bad headers
        raise VAEGANError(path, f"not a readable image ({_short(err, path)})") from None


def _pillow_pixels(path: str, img, fmt: str | None) -> tuple[np.ndarray, str]:
    mode = img.mode
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L"), dtype=np.float32), "uint8"
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
        mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(img)
        if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
            return array.astype(np.float32), "uint16"
        if mode == "I" and fmt == "PNG":  # PNG has no signed samples: 16-bit unsigned
            return array.astype(np.float32), "uint16"
        return array.astype(np.float32), "float"
    if mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    rgb = np.asarray(img, dtype=np.float32)[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        warnings.warn(f"{path}: colour image ({mode}) converted to greyscale luminance",
                      stacklevel=4)
    luminance = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return luminance.astype(np.float32), "uint8"


def _check_pixels(path: str, pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim != 2:
        raise VAEGANError(path, f"expected a 2-D image, got shape {pixels.shape}")
    height, width = pixels.shape
    if height < MIN_SIDE or width < MIN_SIDE:
        raise VAEGANError(path, f"image is {width}x{height}, smaller than {MIN_SIDE}x{MIN_SIDE}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise VAEGANError(path, f"image is {width}x{height}, bigger than {MAX_SIDE}x{MAX_SIDE}")
    if not np.isfinite(pixels).all():
        raise VAEGANError(path, "image has non-finite values (NaN or inf)")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _short(err: BaseException, path: str) -> str:
    """A one-line reason without the file name that libraries like to repeat."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    for name in (repr(path), f'"{path}"', path):
        text = text.replace(name, "")
    text = " ".join(text.split()).rstrip(" :")
    return text or type(err).__name__
