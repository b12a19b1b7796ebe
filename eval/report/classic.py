"""Classic codecs on the report's images: lossy quality sweeps (PSNR, MS-SSIM vs bpp) and lossless baselines.

Every number counts the whole file as the encoder wrote it (container and headers included), except the one row
that says otherwise (HEVC payload: the coded image data of a HEIF file alone, see :func:`heif_payload_size`). bpp =
total bytes * 8 / total pixels; PSNR (dB, RGB, 0..255, whole image) and MS-SSIM are computed per image and averaged
over images.

MS-SSIM (torchmetrics ``multiscale_structural_similarity_index_measure``): the standard 5 scales need >= 161 px, so
32x32 images use :data:`MSSSIM_OPTIONS`: 3 scales (32, 16, 8 px) with the first three standard weights renormalised,
a 7x7 Gaussian window (sigma 0.9: torchmetrics derives the window from sigma, 2*int(3.5*sigma+0.5)+1 = 7 taps;
reflect padding), K = (0.01, 0.03), data range 255, float64, SSIM maps averaged over the RGB channels.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

_W = np.array([0.0448, 0.2856, 0.3001])
MSSSIM_OPTIONS = {"betas": tuple(float(w) for w in _W / _W.sum()), "sigma": 0.9, "kernel_size": 7, "k1": 0.01,
                  "k2": 0.03, "data_range": 255.0}
PSNR_CAP_DB = 100.0  # per-image PSNR of an exact decode (MSE 0), so that means stay finite


@dataclass(frozen=True)
class Codec:
    """One classic codec: encode(pixels (H,W,3) uint8, quality) -> file bytes; decode(bytes) -> pixels."""

    key: str  # file stem of its results JSON
    name: str  # CompressAI 'name'
    qualities: tuple  # sweep values, ordered so that bpp increases
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    setting: str  # human description of the options and what 'quality' means
    library: str
    size: Callable[[bytes], int] | None = None  # bytes counted for a file (default: len, the whole file)


def _ic(name: str):
    """The imagecodecs module if it has codec ``name`` (e.g. 'JPEGXL') compiled in, else None."""
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs if getattr(getattr(imagecodecs, name, None), "available", False) else None


def _pil_save(pixels: np.ndarray, fmt: str, **opts) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **opts)
    return buf.getvalue()


def _pil_load(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _pil_has(fmt: str) -> bool:
    from PIL import features

    return {"WEBP": features.check("webp")}.get(fmt, True)


# ---- HEVC intra (BPG class) through HEIF ----------------------------------------------------------------------------
HEIF_QUALITIES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def _heif():
    """pillow_heif with its HEIF opener registered and an HEVC encoder, else None."""
    try:
        import pillow_heif
    except ImportError:
        return None
    try:
        if not pillow_heif.libheif_info().get("HEIF"):
            return None
        pillow_heif.register_heif_opener()
    except Exception:  # noqa: BLE001  a broken install counts as missing
        return None
    return pillow_heif


def iso_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level ISO-BMFF boxes as (type, offset, total size): 8-byte size + type headers, size 1 = a 64-bit size
    after the type, size 0 = to the end of the file. ValueError on a malformed layout."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 8:
            raise ValueError(f"truncated box header at offset {i}")
        size, typ = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        if size == 1:
            if len(data) - i < 16:
                raise ValueError(f"truncated 64-bit box size at offset {i}")
            size = int.from_bytes(data[i + 8:i + 16], "big")
        elif size == 0:
            size = len(data) - i
        if size < 8 or i + size > len(data):
            raise ValueError(f"bad size {size} of box {typ!r} at offset {i}")
        out.append((typ, i, size))
        i += size
    return out


def heif_payload_size(data: bytes) -> int:
    """Bytes of coded image data in a HEIF file: the payloads of its ``mdat`` boxes (box headers excluded). That is
    the HEVC bitstream (length-prefixed NAL units); the parameter sets (in the ``hvcC`` box) and every other box of
    the container are left out, so it can be held against raw-bitstream codecs such as BPG."""
    total, found = 0, False
    for typ, off, size in iso_boxes(data):
        if typ == b"mdat":
            header = 16 if int.from_bytes(data[off:off + 4], "big") == 1 else 8
            total += size - header
            found = True
    if not found:
        raise ValueError("no mdat box in the HEIF file")
    return total


def heif_codecs() -> tuple[list[Codec], list[str]]:
    """HEVC intra through pillow-heif (libheif + x265), counted two ways: the whole HEIF file, and the HEVC payload."""
    if _heif() is None:
        return [], ["HEVC/HEIF (BPG class) skipped: pillow-heif with an HEVC encoder not installed "
                    "(pip install pillow-heif)"]
    enc = lambda p, q: _pil_save(p, "HEIF", quality=int(q), chroma=444)  # noqa: E731
    what = ("libheif + x265 via pillow-heif, HEVC intra (BPG's coding tools), YUV 4:4:4, default speed; "
            "quality 1..95")
    return [Codec("heif", "HEVC intra (HEIF file)", HEIF_QUALITIES, enc, _pil_load,
                  what + "; whole .heic file (~400 bytes of HEIF boxes on any image)", "pillow-heif"),
            Codec("hevc_payload", "HEVC intra (payload only)", HEIF_QUALITIES, enc, _pil_load,
                  what + "; counts only the coded image data (mdat payload: the HEVC slice NAL units with their "
                  "4-byte length prefixes), not the HEIF boxes or the parameter sets; for comparison with BPG "
                  "figures", "pillow-heif", size=heif_payload_size)], []


def lossy_codecs() -> tuple[list[Codec], list[str]]:
    """(available lossy codecs, notes about skipped ones)."""
    out, notes = [], []
    out.append(Codec("jpeg", "JPEG", (1, 5, 10, 20, 35, 50, 70, 85, 95),
                     lambda p, q: _pil_save(p, "JPEG", quality=int(q), subsampling=0, optimize=True), _pil_load,
                     "libjpeg via pillow, 4:4:4 (no chroma subsampling), optimized Huffman tables; quality 1..95",
                     "pillow"))
    if _pil_has("WEBP"):
        out.append(Codec("webp", "WebP", (0, 10, 25, 50, 75, 90, 95, 100),
                         lambda p, q: _pil_save(p, "WEBP", quality=int(q), method=6), _pil_load,
                         "libwebp lossy via pillow (4:2:0, the only lossy WebP mode), method 6; quality 0..100",
                         "pillow"))
    else:
        notes.append("WebP skipped: pillow built without WebP")
    ic = _ic("JPEG2K")
    if ic:
        out.append(Codec("jpeg2000", "JPEG 2000", (16, 20, 24, 28, 32, 36, 40, 45),
                         lambda p, q: bytes(ic.jpeg2k_encode(p, level=int(q), codecformat="J2K")), ic.jpeg2k_decode,
                         "OpenJPEG via imagecodecs, raw J2K codestream (.j2k, no JP2 boxes), 9/7 wavelet; "
                         "quality = fixed-quality PSNR target in dB (16..45)", "imagecodecs"))
    else:
        notes.append("JPEG 2000 skipped: imagecodecs with OpenJPEG not available")
    ic = _ic("AVIF")
    if ic:
        out.append(Codec("avif", "AVIF", (0, 15, 30, 45, 60, 75, 85, 95),
                         lambda p, q: bytes(ic.avif_encode(p, level=int(q), speed=6,
                                                           pixelformat=ic.AVIF.PIXEL_FORMAT.YUV444)),
                         ic.avif_decode, "libavif via imagecodecs, YUV 4:4:4, speed 6; quality 0..95", "imagecodecs"))
    else:
        notes.append("AVIF skipped: imagecodecs with libavif not available")
    ic = _ic("JPEGXL")
    if ic:
        out.append(Codec("jpegxl", "JPEG-XL", (15.0, 8.0, 4.0, 2.5, 1.5, 1.0, 0.5, 0.25, 0.1),
                         lambda p, q: bytes(ic.jpegxl_encode(p, distance=float(q), effort=7)), ic.jpegxl_decode,
                         "libjxl via imagecodecs, VarDCT, effort 7 (default), bare codestream; quality = "
                         "butteraugli distance 15..0.1", "imagecodecs"))
    else:
        notes.append("JPEG-XL skipped: imagecodecs with libjxl not available")
    heif, heif_notes = heif_codecs()
    return out + heif, notes + heif_notes


def lossless_codecs() -> tuple[list[Codec], list[str]]:
    """(available lossless codecs, notes); quality is unused (a single point each)."""
    out, notes = [Codec("png", "PNG", (None,), lambda p, q: _pil_save(p, "PNG", optimize=True, compress_level=9),
                        _pil_load, "pillow, optimize=True, compress_level 9", "pillow")], []
    if _pil_has("WEBP"):
        out.append(Codec("webp_lossless", "WebP lossless", (None,),
                         lambda p, q: _pil_save(p, "WEBP", lossless=True, quality=100, method=6), _pil_load,
                         "pillow, lossless, quality 100, method 6 (slowest, smallest)", "pillow"))
    else:
        notes.append("WebP lossless skipped: pillow built without WebP")
    ic = _ic("JPEGXL")
    if ic:
        out.append(Codec("jpegxl_lossless", "JPEG-XL lossless", (None,),
                         lambda p, q: bytes(ic.jpegxl_encode(p, lossless=True, effort=9)), ic.jpegxl_decode,
                         "imagecodecs, lossless, effort 9", "imagecodecs"))
    else:
        notes.append("JPEG-XL lossless skipped: imagecodecs with libjxl not available")
    ic = _ic("JPEG2K")
    if ic:
        out.append(Codec("jpeg2000_lossless", "JPEG 2000 lossless", (None,),
                         lambda p, q: bytes(ic.jpeg2k_encode(p, codecformat="J2K", reversible=True)),
                         ic.jpeg2k_decode, "OpenJPEG via imagecodecs, reversible 5/3, J2K codestream", "imagecodecs"))
    return out, notes


# ---- metrics ------------------------------------------------------------------------------------------------------
def psnr_per_image(decoded: np.ndarray, original: np.ndarray) -> np.ndarray:
    """(N,) PSNR in dB on 0..255 over the whole RGB image; exact decodes get :data:`PSNR_CAP_DB`."""
    mse = ((decoded.astype(np.float64) - original.astype(np.float64)) ** 2).reshape(len(original), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, PSNR_CAP_DB, 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)))


def msssim_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchmetrics") is not None


def msssim_per_image(decoded: np.ndarray, original: np.ndarray, batch: int = 256) -> np.ndarray | None:
    """(N,) MS-SSIM with :data:`MSSSIM_OPTIONS`, or None when torchmetrics is missing or images are < 32 px."""
    if not msssim_available() or min(original.shape[1:3]) < 32:
        return None
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    o = dict(MSSSIM_OPTIONS)
    out = []
    for i in range(0, len(original), batch):
        x = torch.from_numpy(np.ascontiguousarray(decoded[i:i + batch])).permute(0, 3, 1, 2).double()
        y = torch.from_numpy(np.ascontiguousarray(original[i:i + batch])).permute(0, 3, 1, 2).double()
        out.append(ms_ssim(x, y, gaussian_kernel=True, sigma=o["sigma"], kernel_size=o["kernel_size"], k1=o["k1"],
                           k2=o["k2"], data_range=o["data_range"], betas=o["betas"], reduction="none").numpy())
    return np.concatenate(out)


def msssim_description() -> str:
    o = MSSSIM_OPTIONS
    return (f"torchmetrics MS-SSIM, 3 scales (32/16/8 px for 32x32), weights {tuple(round(b, 4) for b in o['betas'])}"
            f" (standard first three, renormalised), {o['kernel_size']}x{o['kernel_size']} Gaussian window "
            f"(sigma {o['sigma']}, reflect padding), "
            f"K=({o['k1']}, {o['k2']}), data range 255, RGB, mean over images")


# ---- sweeps -------------------------------------------------------------------------------------------------------
def run_codec(codec: Codec, images: np.ndarray, quality, *, exact: bool = False) -> dict:
    """One quality setting on all images -> aggregate dict (no per-image arrays)."""
    n, h, w, _ = images.shape
    dec = np.empty_like(images)
    sizes = np.empty(n, dtype=np.int64)
    t_enc = t_dec = 0.0
    for i, im in enumerate(images):
        start = time.perf_counter()
        data = codec.encode(np.ascontiguousarray(im), quality)
        t_enc += time.perf_counter() - start
        start = time.perf_counter()
        out = np.asarray(codec.decode(data))
        t_dec += time.perf_counter() - start
        if out.shape != im.shape or out.dtype != np.uint8:
            raise RuntimeError(f"{codec.name} decoded shape {out.shape} {out.dtype}, expected {im.shape} uint8")
        sizes[i], dec[i] = (len(data) if codec.size is None else codec.size(data)), out
    psnr = psnr_per_image(dec, images)
    ms = None if exact else msssim_per_image(dec, images)
    res = {"quality": quality, "bytes_total": int(sizes.sum()), "bpp": float(sizes.sum() * 8 / (n * h * w)),
           "bpd": float(sizes.sum() * 8 / images.size), "min_bytes": int(sizes.min()), "max_bytes": int(sizes.max()),
           "psnr_db": float(psnr.mean()), "n_exact": int((psnr == PSNR_CAP_DB).sum()),
           "ms_ssim": None if ms is None else float(ms.mean()),
           "encode_s_per_image": t_enc / n, "decode_s_per_image": t_dec / n}
    if exact:
        res["exact"] = bool(np.array_equal(dec, images))
        if not res["exact"]:
            raise RuntimeError(f"{codec.name} did not decode bit-exactly")
    return res


def sweep(codec: Codec, images: np.ndarray, *, exact: bool = False, progress: bool = False) -> dict:
    """All of a codec's qualities -> {'key', 'name', 'setting', 'library', 'points': [run_codec dicts]}."""
    points = [run_codec(codec, images, q, exact=exact)
              for q in tqdm(codec.qualities, desc=codec.key, unit="q", disable=not progress, leave=False)]
    return {"key": codec.key, "name": codec.name, "setting": codec.setting, "library": codec.library,
            "n_images": len(images), "points": points}


def library_versions() -> dict:
    """Versions that the classic results depend on (part of their cache key)."""
    import PIL

    v = {"pillow": PIL.__version__}
    try:
        import imagecodecs

        v["imagecodecs"] = imagecodecs.__version__
    except ImportError:
        pass
    try:
        import torchmetrics

        v["torchmetrics"] = torchmetrics.__version__
    except ImportError:
        pass
    heif = _heif()
    if heif is not None:
        v["pillow_heif"] = heif.__version__
        v["libheif"] = heif.libheif_info().get("libheif")
        v["heif_encoder"] = heif.libheif_info().get("HEIF")
    return v
