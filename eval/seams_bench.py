"""Seams bench: tiled vs windowed network evaluation on crops of real photos (issue 11 part 4).

    python -m eval.seams_bench                 # full table (lossless + lossy stops, encode/decode times)
    python -m eval.seams_bench --proxy         # quick: eps MSE and x^_0 seams of noised crops, several geometries

Photos: grace_hopper.jpg (ships with matplotlib) and the STM32F3 board photo that ships with the Rust toolchain's
embedded book (if present), downscaled so a 96x96 crop holds a recognisable part of the scene. One torch thread.
Writes docs/seams/<image>_compare.png (original | per-tile | windowed preview at t~200), every preview to
eval/out/seams/, and prints a Markdown table (docs/seams/README.md).
"""
from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpmcodec.codec import decoding, progressive
from ddpmcodec.diffusion import Schedule, predict_x0, q_sample
from ddpmcodec.images import psnr, tile_grid, tiles_to_uint8, to_tiles
from ddpmcodec.network import windows
from ddpmcodec.network.model_io import load_model

OUT = Path(__file__).resolve().parent.parent / "docs" / "seams"  # the side-by-side comparisons
FRAMES = Path(__file__).resolve().parent / "out" / "seams"  # every preview (ignored by git)


def photos(size: int = 96) -> dict[str, np.ndarray]:
    """name -> (size, size, 3) uint8 crop."""
    import matplotlib.cbook

    out = {}
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        small = np.asarray(im.convert("RGB").resize((128, 150), Image.BICUBIC))
        out["hopper_face"] = small[10:10 + size, 16:16 + size].copy()
        full = np.asarray(im.convert("RGB"))
        out["hopper_detail"] = full[300:300 + size, 200:200 + size].copy()
    board = sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/f3.jpg")))
    if board:
        with Image.open(board[0]) as im:
            small = np.asarray(im.convert("RGB").resize((240, 159), Image.BICUBIC))
            out["board"] = small[30:30 + size, 70:70 + size].copy()
    return out


def seam_score(img: np.ndarray, tile: int) -> float:
    """Mean |difference| between horizontally/vertically adjacent pixels that straddle a tile border, minus the
    same for adjacent pixel pairs inside tiles (0 for an image without seams, on average)."""
    a = img.astype(np.float64)
    dx = np.abs(a[:, 1:] - a[:, :-1]).mean(axis=(0, 2))  # (W-1,) per column pair
    dy = np.abs(a[1:] - a[:-1]).mean(axis=(1, 2))
    def split(d):
        border = np.zeros(len(d), bool)
        border[tile - 1::tile] = True
        return d[border].mean() if border.any() else 0.0, d[~border].mean()
    bx, ix = split(dx)
    by, iy = split(dy)
    return float((bx + by) / 2 - (ix + iy) / 2)


def proxy(model, imgs, ts=(600, 400, 200, 100, 50, 20), seeds=(0, 1)):
    """eps MSE (real pixels) and x^_0 seam score per geometry, on q(x_t | x_0) samples."""
    r = model.unet_config.resolution
    sched = Schedule(model.diffusion)
    variants = {"tiles": None, "w32s16": (r, r // 2), "w32s24": (r, 3 * r // 4), "w64s32": (2 * r, r),
                "full": (10 ** 6, 1)}
    rows = []
    for name, px in imgs.items():
        x0, mask = to_tiles(px, r)
        grid = tile_grid(*px.shape[:2], r)
        for t in ts:
            acc = {v: [0.0, 0.0, 0.0] for v in variants}
            for seed in seeds:
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
                xt = q_sample(sched, x0, t, noise)
                for v, geo in variants.items():
                    start = time.perf_counter()
                    if geo is None:
                        e = model.eps_reproducible(xt, t).float()
                    else:
                        e = windows.eps_windowed(model, xt, t, grid, *geo)
                    sec = time.perf_counter() - start
                    mse = float(((e - noise) ** 2)[mask].mean())
                    x0h = tiles_to_uint8(predict_x0(sched, xt, e, t).clamp(-1, 1), *px.shape[:2])
                    acc[v][0] += mse / len(seeds)
                    acc[v][1] += seam_score(x0h, r) / len(seeds)
                    acc[v][2] += sec / len(seeds)
            for v in variants:
                rows.append((name, t, v, *acc[v]))
                print(f"{name:14s} t={t:4d} {v:7s} mse={acc[v][0]:.5f} seam={acc[v][1]:+.3f} sec={acc[v][2]:.2f}",
                      flush=True)
    return rows


STOPS = (200, 57)


def _at_stop(steps, stop):
    """Index of the first coded step with t <= stop (where `encode --stop-at` ends)."""
    return next(i for i, st in enumerate(steps) if st.t <= stop)


def full(model, imgs, variants=("tiles", "windows")):
    """Real encode (lossless) + decode per variant; lossy stops read from the encoder's per-step table (the bytes of
    the file `encode --stop-at` writes and the PSNR of its preview), verified by the decoder's previews."""
    r = model.unet_config.resolution
    rows = []
    for name, px in imgs.items():
        n_dims = px.size
        Image.fromarray(px).save(FRAMES / f"{name}_original.png")
        for v in variants:
            settings = progressive.CodecSettings(windowed=(v == "windows"))
            res = progressive.encode(px, model, settings)
            start = time.perf_counter()
            previews = {}
            stop_ts = {stop: res.steps[_at_stop(res.steps, stop)].t for stop in STOPS}
            for step in decoding.decode_progressive(res.data, model):
                if step.t in stop_ts.values():
                    previews[step.t] = step.pixels
                last = step
            dec_sec = time.perf_counter() - start
            assert last.t == 0 and np.array_equal(last.pixels, px), "lossless round trip failed"
            row = {"image": name, "variant": v, "bpd": 8 * len(res.data) / n_dims, "bytes": len(res.data),
                   "enc_s": res.seconds, "dec_s": dec_sec, "windowed": res.header.windowed,
                   "seam_orig": seam_score(px, r)}
            for stop, t in stop_ts.items():
                st = res.steps[_at_stop(res.steps, stop)]
                assert abs(psnr(previews[t], px) - st.psnr) < 1e-9, "decoder preview differs from encoder's"
                row[f"t{stop}"] = t
                row[f"bytes{stop}"] = st.bytes_if_stopped
                row[f"psnr{stop}"] = st.psnr
                row[f"seam{stop}"] = seam_score(previews[t], r)
                Image.fromarray(previews[t]).save(FRAMES / f"{name}_t{t}_{v}.png")
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows) -> str:
    head = ("| image | eval | lossless bits/dim | bytes | " + " | ".join(
        f"t<={s}: t, bytes, PSNR dB, seam" for s in STOPS) + " | encode s | decode s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        stops = " | ".join(f"{r[f't{s}']}, {r[f'bytes{s}']}, {r[f'psnr{s}']:.2f}, {r[f'seam{s}']:+.2f}"
                           for s in STOPS)
        lines.append(f"| {r['image']} (seam of original {r['seam_orig']:+.2f}) | {r['variant']} | {r['bpd']:.3f} | "
                     f"{r['bytes']} | {stops} | {r['enc_s']:.0f} | {r['dec_s']:.0f} |")
    return "\n".join(lines)


def side_by_side(name, rows, scale=3):
    """docs/seams/<name>_compare.png: original | tiles preview | windowed preview at the t<=200 stop, enlarged."""
    r = {row["variant"]: row for row in rows if row["image"] == name}
    if set(r) != {"tiles", "windows"}:
        return
    ims = [Image.open(FRAMES / f"{name}_original.png")] + [
        Image.open(FRAMES / f"{name}_t{r[v]['t200']}_{v}.png") for v in ("tiles", "windows")]
    w, h = ims[0].size
    canvas = Image.new("RGB", (3 * w * scale + 2 * 8, h * scale), "white")
    for i, im in enumerate(ims):
        canvas.paste(im.resize((w * scale, h * scale), Image.NEAREST), (i * (w * scale + 8), 0))
    canvas.save(OUT / f"{name}_compare.png")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", action="store_true")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model("default")
    imgs = photos(args.size)
    if args.only:
        imgs = {k: v for k, v in imgs.items() if k in args.only.split(",")}
    if args.proxy:
        proxy(model, imgs)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    FRAMES.mkdir(parents=True, exist_ok=True)
    rows = full(model, imgs)
    for name in imgs:
        side_by_side(name, rows)
    print(table(rows))


if __name__ == "__main__":
    main()
