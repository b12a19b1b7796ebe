"""Image I/O and tiling: files <-> uint8 (H, W, 3) arrays <-> model-space tiles (N, 3, R, R)."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ddpmcodec.diffusion import to_pixels
from ddpmcodec.errors import InputError


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) uint8
    source_mode: str  # "RGB" or "L" (grayscale, stored with R = G = B)
    note: str  # what conversion happened, '' if none


def load_image(path: str | Path) -> LoadedImage:
    """Read an image file; convert what converts losslessly, refuse the rest with a clear message."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, expected an image file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            _refuse_deep(im)
            im.load()
            return image_to_array(im)
    except PermissionError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _deep_error(what: str) -> InputError:
    return InputError(f"{what} images (more than 8 bits per channel) are not supported; convert to 8-bit first")


_DEEP_RAWMODE = re.compile(r";(16|32|F)|^(I|F)(;|$)")


def source_bit_depth(im: Image.Image) -> int | None:
    """Bits per channel stored in the file (before Pillow converts anything), or None if unknown.

    Pillow opens 16-bit RGB(A) PNG and TIFF files as 8-bit "RGB"/"RGBA", so the mode alone cannot tell."""
    fmt = im.format or ""
    if fmt == "PNG":
        fp = getattr(im, "fp", None)
        try:
            pos = fp.tell()
            fp.seek(0)
            head = fp.read(26)
            fp.seek(pos)
        except (AttributeError, OSError, ValueError):
            head = b""
        if len(head) >= 26 and head[12:16] == b"IHDR":
            return head[24]
    if fmt == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        if bits:
            return max(bits) if isinstance(bits, tuple) else int(bits)
    deepest = None
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if isinstance(raw, str) and _DEEP_RAWMODE.search(raw):
            deepest = 16
        if fmt == "PPM" and isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int) and args[1] > 255:
            deepest = 16  # P3/P6 with maxval > 255
    return deepest


def _refuse_deep(im: Image.Image) -> None:
    """Refuse inputs with more than 8 bits per channel (Pillow would silently cut them to 8 bits)."""
    bits = source_bit_depth(im)
    if bits is None or bits <= 8:
        return
    tiles = getattr(im, "tile", None) or []
    args = tiles[0][3] if tiles and len(tiles[0]) > 3 else None
    raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else im.mode)
    layout = str(raw).split(";")[0]
    kind = {"RGB": "RGB", "RGBA": "RGBA", "LA": "grayscale+alpha", "L": "grayscale", "I": "grayscale"}.get(
        layout, im.mode if not im.mode.startswith("I") else "grayscale")
    raise _deep_error(f"{bits}-bit {kind}")


def image_to_array(im: Image.Image) -> LoadedImage:
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        raise _deep_error("16-bit grayscale" if "16" in mode else f"high bit depth ({mode})")
    if mode == "CMYK" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
        raise InputError(f"{mode} images are not supported; convert to RGB first")
    note = ""
    if mode == "P" or mode == "PA":
        if "transparency" in im.info or mode == "PA":
            im = im.convert("RGBA")
            mode = "RGBA"
        else:
            im, mode, note = im.convert("RGB"), "RGB", "palette image converted to RGB"
    if mode == "1":
        im, mode, note = im.convert("L"), "L", "1-bit image converted to grayscale"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            raise InputError("images with transparency are not supported (alpha channel is not fully opaque)")
        base = "L" if mode.startswith("L") else "RGB"
        im, mode, note = im.convert(base), base, (note or "opaque alpha channel dropped")
    if mode == "L":
        g = np.asarray(im, dtype=np.uint8)
        return LoadedImage(np.repeat(g[:, :, None], 3, axis=2), "L", note)
    if mode != "RGB":
        raise InputError(f"unsupported image mode {mode}")
    return LoadedImage(np.asarray(im, dtype=np.uint8).copy(), "RGB", note)


def png_bytes(pixels: np.ndarray, source_mode: str = "RGB") -> bytes:
    """(H, W, 3) uint8 as a PNG file's bytes (grayscale sources as single-channel PNG)."""
    arr = pixels[:, :, 0] if source_mode == "L" else pixels
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def save_image(pixels: np.ndarray, path: str | Path, source_mode: str = "RGB") -> None:
    """Write (H, W, 3) uint8 as PNG (grayscale sources as single-channel PNG), atomically."""
    from ddpmcodec.atomic_write import atomic_write

    atomic_write(path, png_bytes(pixels, source_mode))


def tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    return -(-height // tile), -(-width // tile)


def to_tiles(pixels: np.ndarray, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 -> tiles (N, 3, R, R) float32 in [-1, 1] (edge-padded) and a bool mask of real pixels."""
    h, w, _ = pixels.shape
    gh, gw = tile_grid(h, w, tile)
    padded = np.pad(pixels, ((0, gh * tile - h), (0, gw * tile - w), (0, 0)), mode="edge")
    real = np.zeros(padded.shape[:2], dtype=bool)
    real[:h, :w] = True
    x = torch.from_numpy(padded).float().div(127.5).sub(1.0)
    x = x.reshape(gh, tile, gw, tile, 3).permute(0, 2, 4, 1, 3).reshape(gh * gw, 3, tile, tile)
    m = torch.from_numpy(real).reshape(gh, tile, gw, tile).permute(0, 2, 1, 3).reshape(gh * gw, 1, tile, tile)
    return x.contiguous(), m.expand(-1, 3, -1, -1).contiguous()


def from_tiles(tiles: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tiles (N, 3, R, R) -> (H, W, 3) float tensor cropped to the image size (inverse of :func:`to_tiles`)."""
    n, c, r, _ = tiles.shape
    gh, gw = tile_grid(height, width, r)
    if n != gh * gw:
        raise ValueError("tile count does not match image size")
    img = tiles.reshape(gh, gw, c, r, r).permute(0, 3, 1, 4, 2).reshape(gh * r, gw * r, c)
    return img[:height, :width]


def tiles_to_uint8(tiles: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Model-space tiles (N, 3, R, R) in [-1, 1] -> (H, W, 3) uint8 image (rounded, clipped, cropped)."""
    return to_pixels(from_tiles(tiles, height, width)).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between uint8 arrays (inf if equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
