"""Image sets as uint8 arrays of shape (N, H, W, 3), RGB, pixel levels 0..255.

Sources
-------
* The shared CIFAR-10 files in ``../shared/data`` (development and CI only, never needed at run time):
  ``cifar10-test-dev.npz`` (key ``images``, the 500 dev test images), ``cifar10-train-lossless.npz`` (``images``)
  and ``cifar10-train-jpeg75.npz`` (``jpeg_bytes`` + ``offsets``: concatenated JPEG files decoded with PIL).
* Any ``.npz`` with an ``images`` array or the ``jpeg_bytes``/``offsets`` pair.
* Any folder of image files (png, jpg, webp, ...), converted to RGB, sorted by file name.
* The official CIFAR-10 python archive ``cifar-10-python.tar.gz`` (read in place, never extracted), its extracted
  folder ``cifar-10-batches-py/`` or one batch file of it; see :func:`load_cifar10_python`. Download it from
  https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 python version").

Every failure a user can cause (missing file, unreadable image, wrong size) raises :class:`InputError`.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddpmcodec.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
SHARED_ENV = "DDPMCODEC_SHARED"
DEV_FILE = "cifar10-test-dev.npz"
TRAIN_LOSSLESS_FILE = "cifar10-train-lossless.npz"
TRAIN_JPEG_FILE = "cifar10-train-jpeg75.npz"


# ---- locating the shared folder ------------------------------------------------------------------------------
def default_shared_dir() -> Path | None:
    """The development ``shared/`` folder: ``$DDPMCODEC_SHARED`` if set, else ``../shared`` next to the repo.

    Returns None when the folder does not exist (e.g. on a user's machine).
    """
    env = os.environ.get(SHARED_ENV)
    if env:
        path = Path(env).expanduser()
        return path if path.is_dir() else None
    repo = Path(__file__).resolve().parent.parent
    path = repo.parent / "shared"
    return path if path.is_dir() else None


def shared_data_file(name: str, shared_dir: str | Path | None = None) -> Path:
    """Path of ``shared/data/<name>``; InputError if the shared folder or the file is missing."""
    base = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    if base is None:
        raise InputError(f"shared data folder not found (set {SHARED_ENV} or place it at ../shared): need {name}")
    path = base / "data" / name
    if not path.is_file():
        raise InputError(f"missing shared data file {path}")
    return path


# ---- npz files -----------------------------------------------------------------------------------------------
def probe_images(path: str | Path | None, offset: int, limit: int) -> np.ndarray:
    """Images offset..offset+limit-1 of an .npz (default: ../shared's lossless training originals, which probes use
    instead of the dev images); InputError when the file or ../shared is missing."""
    source = path or shared_data_file(TRAIN_LOSSLESS_FILE)
    return load_npz_images(source, limit=offset + limit)[offset:]


def decode_jpeg_blob(jpeg_bytes: np.ndarray, offsets: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Decode concatenated JPEG files: image i is ``jpeg_bytes[offsets[i]:offsets[i+1]]`` -> (N, H, W, 3) uint8."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1 if limit is None else min(limit, len(offsets) - 1)
    if n < 0 or (n > 0 and (offsets[0] < 0 or offsets[n] > len(jpeg_bytes) or np.any(np.diff(offsets[: n + 1]) <= 0))):
        raise InputError("corrupt JPEG blob: offsets out of range or not increasing")
    blob = np.asarray(jpeg_bytes, dtype=np.uint8).tobytes()
    out = None
    for i in range(n):
        try:
            with Image.open(io.BytesIO(blob[offsets[i]: offsets[i + 1]])) as im:
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"corrupt JPEG {i} in blob: {exc}") from None
        if out is None:
            out = np.empty((n,) + arr.shape, dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise InputError(f"JPEG {i} has shape {arr.shape}, expected {out.shape[1:]}")
        out[i] = arr
    return out if out is not None else np.zeros((0, 0, 0, 3), dtype=np.uint8)


def load_npz_images(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Images from an npz with ``images`` (N,H,W,3) uint8 or ``jpeg_bytes`` + ``offsets``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" in data.files:
                images = data["images"] if limit is None else data["images"][:limit]
            elif "jpeg_bytes" in data.files and "offsets" in data.files:
                images = decode_jpeg_blob(data["jpeg_bytes"], data["offsets"], limit)
            else:
                raise InputError(f"{path}: expected key 'images' or 'jpeg_bytes'+'offsets', found {data.files}")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    return _check_images(images, str(path))


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"{what}: expected uint8 (N,H,W,3) images, got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images)


# ---- folders -------------------------------------------------------------------------------------------------
def list_image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (by extension), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"no such folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image(path: str | Path) -> np.ndarray:
    """One image file -> (H, W, 3) uint8 RGB (palette, grey and alpha images are converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def center_crop_resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """Center-crop (H, W, 3) uint8 to a square, then resize to (resolution, resolution, 3) with a box/bicubic filter."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top: top + side, left: left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    resample = Image.BOX if side >= 2 * resolution else Image.BICUBIC
    return np.asarray(Image.fromarray(square).resize((resolution, resolution), resample=resample))


def load_image_folder(folder: str | Path, resolution: int | None = None, *, resize: bool = False,
                      limit: int | None = None, return_names: bool = False):
    """Every image in ``folder`` as (N, H, W, 3) uint8.

    resolution: required square size; an image of another size raises InputError unless ``resize`` (training only),
    which center-crops and resizes it. Without ``resolution`` all images must share one size.
    """
    files = list_image_files(folder)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    images = []
    for path in files:
        img = read_image(path)
        if resolution is not None and img.shape[:2] != (resolution, resolution):
            if not resize:
                raise InputError(f"{path} is {img.shape[1]}x{img.shape[0]}, expected {resolution}x{resolution}")
            img = center_crop_resize(img, resolution)
        if images and img.shape != images[0].shape:
            raise InputError(f"{path} is {img.shape[1]}x{img.shape[0]}, but {files[0].name} is "
                             f"{images[0].shape[1]}x{images[0].shape[0]}; pass a resolution to check or resize")
        images.append(img)
    out = np.stack(images)
    return (out, [p.name for p in files]) if return_names else out


from ddpmcodec.cifar10_archive import (CIFAR_BATCHES, CIFAR_SPLITS, SPLIT_SEP, is_cifar10_python,  # noqa: F401
                                       load_cifar10_python, split_source)


# ---- entry points --------------------------------------------------------------------------------------------
def load_images(source: str | Path, resolution: int | None = None, *, resize: bool = False,
                limit: int | None = None, split: str | None = None) -> np.ndarray:
    """Images from an ``.npz`` file, a folder, one image file or CIFAR-10 python data -> (N, H, W, 3) uint8.

    CIFAR-10 (see :func:`load_cifar10_python`): ``cifar-10-python.tar.gz``, the folder ``cifar-10-batches-py``
    or one batch file, default the 10,000 test images; append ``::train`` / ``::test`` / ``::all`` /
    ``::data_batch_3`` to choose the split (``"cifar-10-python.tar.gz::train"``), or pass ``split="train"``
    (both at once must agree). Another source with a split raises InputError.
    """
    source, path_split = split_source(source)
    if path_split is not None and split is not None and path_split != split:
        raise InputError(f"{source}: split {path_split!r} in the path but split={split!r} given")
    split = split if split is not None else path_split
    if split is not None and not is_cifar10_python(source):
        if not source.exists():
            raise InputError(f"no such file or folder: {source}")
        raise InputError(f"{source}: a '{SPLIT_SEP}{split}' split applies only to CIFAR-10 python data")
    if is_cifar10_python(source):
        images = load_cifar10_python(source, split, limit)
    elif source.is_dir():
        return load_image_folder(source, resolution, resize=resize, limit=limit)
    elif not source.exists():
        raise InputError(f"no such file or folder: {source}")
    elif source.suffix.lower() == ".npz":
        images = load_npz_images(source, limit)
    else:
        images = read_image(source)[None]
    if resolution is not None and images.shape[1:3] != (resolution, resolution):
        if not resize:
            raise InputError(f"{source}: images are {images.shape[2]}x{images.shape[1]}, "
                             f"expected {resolution}x{resolution}")
        images = np.stack([center_crop_resize(im, resolution) for im in images])
    return images


def load_dev_set(limit: int | None = None, shared_dir: str | Path | None = None) -> np.ndarray:
    """The 500 CIFAR-10 dev test images (official test indices 0..499), (N, 32, 32, 3) uint8."""
    return load_npz_images(shared_data_file(DEV_FILE, shared_dir), limit)


def load_cifar_train_pool(shared_dir: str | Path | None = None, lossless_oversample: int = 2,
                          limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's training pool: 50,000 JPEG-q75 images + 5,085 lossless originals.

    Returns (images (M, 32, 32, 3) uint8, pool (P,) int64 indices into images) where every lossless image appears
    ``lossless_oversample`` times in ``pool``; sample uniformly from ``pool``. ``limit`` caps each file (tests).
    """
    jpeg = load_npz_images(shared_data_file(TRAIN_JPEG_FILE, shared_dir), limit)
    lossless = load_npz_images(shared_data_file(TRAIN_LOSSLESS_FILE, shared_dir), limit)
    images = np.concatenate([jpeg, lossless])
    lossless_idx = np.arange(len(jpeg), len(images), dtype=np.int64)
    pool = np.concatenate([np.arange(len(jpeg), dtype=np.int64)] + [lossless_idx] * max(1, lossless_oversample))
    return images, pool


def load_training_data(data: str | Path | None, resolution: int,
                       shared_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Training images for ``ddpmcodec train``: (images uint8 (M,H,W,3), pool (P,) int64, description).

    data: None or "cifar10" = the shared CIFAR-10 pool (jpeg75 + 2x lossless); else an npz file or a folder
    (center-cropped/resized to ``resolution`` when needed), or the official CIFAR-10 python archive/folder, whose
    training batches (50,000 images) are used unless a split is given (``cifar-10-python.tar.gz::test``).
    """
    if data is None or str(data) == "cifar10":
        if shared_dir is None and default_shared_dir() is None:
            raise InputError(f"no training data: pass --data (an npz or a folder of images); the shared CIFAR-10 "
                             f"files were not found (set {SHARED_ENV})")
        images, pool = load_cifar_train_pool(shared_dir)
        desc = f"shared CIFAR-10 train: {TRAIN_JPEG_FILE} (50000) + {TRAIN_LOSSLESS_FILE} (5085, x2)"
    else:
        source, split = split_source(data)
        if split is None and is_cifar10_python(source) and source.name not in CIFAR_BATCHES:
            split = "train"  # never train on the test batch by default
        images = load_images(source, resolution, resize=True, split=split)
        pool = np.arange(len(images), dtype=np.int64)
        desc = f"{data} ({len(images)} images)"
    if images.shape[1:3] != (resolution, resolution):
        raise InputError(f"training images are {images.shape[2]}x{images.shape[1]}, model needs {resolution}")
    if len(pool) == 0:
        raise InputError("no training images")
    return images, pool, desc
