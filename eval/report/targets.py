"""The report's per-target series: for each target bpp, the one file `encode --target-bpp` writes
(codec.stop_points.encode_within_bpp: the best of the default file's prefix, stop schedules and the deep lossy chain
within the budget), decoded and measured, cached per chunk of images like the coded curve.
"""
from __future__ import annotations

import math
import time

import numpy as np
from tqdm import tqdm

from ddpmcodec.batch.result_cache import Cache, image_digest
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, coded_inputs
from ddpmcodec.codec.stop_points import encode_within_bpp
from ddpmcodec.errors import InputError
from ddpmcodec.images import psnr
from eval.report import classic
from eval.report.model import _chunks, _model


def target_image(model, pixels: np.ndarray, settings: CodecSettings, targets: list[float]) -> list[dict]:
    """Per target: the written file's bytes, the t it stops at (0: lossless), PSNR and MS-SSIM of what it decodes
    to (checked against the encoder's PSNR), encode and decode seconds. A target below this image's smallest possible
    file (`encode --target-bpp` refuses it) gives a row with bytes None and the refusal in "error"."""
    rows = []
    for target in targets:
        start = time.perf_counter()
        try:
            data, _, stop = encode_within_bpp(pixels, model, settings, target)
        except InputError as exc:
            rows.append({"target_bpp": target, "bytes": None, "t": None, "psnr_db": None, "ms_ssim": None,
                         "encode_s": time.perf_counter() - start, "decode_s": None, "error": str(exc)})
            continue
        enc_s = time.perf_counter() - start
        start = time.perf_counter()
        out = list(decode_progressive(data, model, every_step=False))[-1]
        dec_s = time.perf_counter() - start
        got = psnr(out.pixels, pixels) if out.t else math.inf
        if out.t and not math.isclose(got, stop.psnr, abs_tol=1e-6):
            raise RuntimeError(f"target {target} bpp: decoded PSNR {got:.4f} differs from the encoder's "
                               f"{stop.psnr:.4f}")
        ms = classic.msssim_per_image(out.pixels[None], pixels[None]) if out.t else None
        rows.append({"target_bpp": target, "bytes": len(data), "t": int(out.t),
                     "psnr_db": None if not math.isfinite(got) else float(got),
                     "ms_ssim": None if ms is None else float(ms[0]), "encode_s": enc_s, "decode_s": dec_s})
    return rows


def target_chunk(model, images: np.ndarray, first_index: int, settings: CodecSettings, targets: list[float],
                 tick=None) -> list[dict]:
    """One cached part: :func:`target_image` of each image (model or ModelRef); tick() after each image."""
    model, part = _model(model), []
    for i, im in enumerate(images):
        part.append({"index": first_index + i, "rows": target_image(model, im, settings, targets)})
        if tick:
            tick()
    return part


def target_curve(model, images: np.ndarray, offset: int, settings: CodecSettings, targets: list[float],
                 cache: Cache, *, chunk: int = 10, progress: bool = False, ray: str | None = None,
                 ref=None) -> dict | None:
    """Means over images per target: bpp of the written file, PSNR (± s.e.), MS-SSIM, encode / decode seconds.
    settings: the report's, with t_end None when it was left to the model (as `encode --target-bpp` runs)."""
    if not targets or not len(images):
        return None
    spans = list(_chunks(len(images), chunk))
    keys = [{**coded_inputs(model, settings), "images": image_digest(images[a:b]), "targets": list(targets),
             "msssim": classic.MSSSIM_OPTIONS if classic.msssim_available() else None} for a, b in spans]
    calls = [(images[a:b], offset + a, settings, list(targets)) for a, b in spans]
    with tqdm(total=len(images), desc=f"--target-bpp files ({len(targets)} targets)", unit="img",
              disable=not progress) as bar:
        parts = cache.parts("targets", keys, target_chunk, calls, model, ray=ray, ref=ref, bar=bar,
                            sizes=[b - a for a, b in spans], local_tick=lambda: bar.update(1))
    per_image = [p for part in parts for p in part]
    pixels = images[0].shape[0] * images[0].shape[1]
    col = lambda j, k: np.array([np.nan if p["rows"][j][k] is None else p["rows"][j][k]  # noqa: E731
                                 for p in per_image], dtype=np.float64)
    out = {"n_images": len(per_image), "targets": list(targets), "images_with_file": [], "bpp": [], "psnr_db": [],
           "psnr_db_stderr": [], "ms_ssim": [], "encode_s": [], "decode_s": [], "lossless_share": []}
    for j in range(len(targets)):
        fits = np.isfinite(col(j, "bytes"))  # images whose smallest possible file is within the target
        out["images_with_file"].append(int(fits.sum()))
        if not fits.any():
            for k in ("bpp", "psnr_db", "psnr_db_stderr", "encode_s", "decode_s", "lossless_share"):
                out[k].append(math.nan)
            out["ms_ssim"].append(None)
            continue
        ps = col(j, "psnr_db")[fits]
        out["bpp"].append(float(np.mean(8 * col(j, "bytes")[fits] / pixels)))
        out["psnr_db"].append(float(np.mean(ps)))  # nan when some file was lossless (PSNR infinite)
        out["psnr_db_stderr"].append(float(np.std(ps, ddof=1) / math.sqrt(len(ps))) if len(ps) > 1 else math.nan)
        ms = col(j, "ms_ssim")[fits]
        out["ms_ssim"].append(float(np.mean(ms)) if np.isfinite(ms).all() else None)
        out["encode_s"].append(float(np.mean(col(j, "encode_s")[fits])))
        out["decode_s"].append(float(np.mean(col(j, "decode_s")[fits])))
        out["lossless_share"].append(float(np.mean(col(j, "t")[fits] == 0)))
    return out


def target_result(curve: dict, images_desc: str) -> dict:
    """CompressAI-style results of the per-target series (one point per target)."""
    keep = [j for j, p in enumerate(curve["psnr_db"]) if p is not None and math.isfinite(p)]
    res = {"bpp": [round(curve["bpp"][j], 6) for j in keep], "psnr-rgb": [round(curve["psnr_db"][j], 4) for j in keep],
           "target-bpp": [curve["targets"][j] for j in keep],
           "encoding_time": [round(curve["encode_s"][j], 4) for j in keep],
           "decoding_time": [round(curve["decode_s"][j], 4) for j in keep]}
    if all(curve["ms_ssim"][j] is not None for j in keep):
        res["ms-ssim-rgb"] = [round(curve["ms_ssim"][j], 6) for j in keep]
    return {"name": "DDPM --target-bpp (coded, one file per target)",
            "description": f"the file `ddpmcodec encode --target-bpp B` writes for each target B (whole file, "
                           f"decoded); {curve['n_images']} images ({images_desc})", "results": res}


def target_rows(curve: dict) -> list[str]:
    lines = ["| target bpp | file bpp | PSNR (dB) | MS-SSIM | encode s | decode s |", "|" + "---|" * 6]
    n_all = curve["n_images"]
    for j, target in enumerate(curve["targets"]):
        n = curve["images_with_file"][j]
        if n == 0:
            lines.append(f"| {target:g} | – | no file: below every image's smallest possible file | – | – | – |")
            continue
        p, se, ms = curve["psnr_db"][j], curve["psnr_db_stderr"][j], curve["ms_ssim"][j]
        share = curve["lossless_share"][j]
        ps = f"{p:.2f} ± {se:.2f}" if share == 0 else "∞ (every file lossless)" if share == 1 else \
            f"∞ for {100 * share:.0f}% of the images (lossless files)"
        if n < n_all:
            ps += f" ({n} of {n_all} images; the others' smallest file is larger)"
        lines.append(f"| {target:g} | {curve['bpp'][j]:.3f} | {ps} | {'–' if ms is None else f'{ms:.4f}'} | "
                     f"{curve['encode_s'][j]:.1f} | {curve['decode_s'][j]:.1f} |")
    return lines
