"""Benchmark lossless bits-back coding on the dev test set against PNG, WebP and JPEG-XL, side by side in one run.

    python -m eval.bitsback_bench                       # 100-image set (+ extrapolation to 500), 8 single images
    python -m eval.bitsback_bench --limit 500           # the full dev set (about 1.5 h on 1 CPU thread)
    python -m eval.bitsback_bench --limit 8 --single 2 --compare 0 --steps-sweep "" --grid-sweep "" \
        --single-grid-sweep ""                          # smoke run

Reported per configuration: whole-file bits/dim (everything: container header, sub-header, stack words, the
consumed initial seed words), 'net' = file minus the consumed seed bits, the NELBO of the same chain evaluated on the
encoder's own draws (prior KL + per-step KLs with continuous Gaussians + the x_0 layer's code length) and
an independent estimate of the model's NELBO for the same schedule (fresh draws x_t ~ q(x_t|x_0) per level, as
calc_bpd_loop). Every bits-back file is decoded and compared pixel for pixel (except the encode-only grid sweeps).
Baselines count whole files: PNG (pillow, optimize, level 9), WebP lossless (pillow, method 6), JPEG-XL lossless
(imagecodecs, effort 9).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ddpmcodec.bitsback import codec as bitsback

from ddpmcodec.entropy import pixelmodel
from ddpmcodec.bitsback.chain import schedule_for
from ddpmcodec.data import load_dev_set, load_images
from ddpmcodec.diffusion import LOG2, gaussian_kl, q_sample_batched
from ddpmcodec.images import to_tiles
from ddpmcodec.network.model_io import load_model

# ---- baselines ----------------------------------------------------------------------------------------------------
def _png(im: np.ndarray) -> int:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="PNG", optimize=True, compress_level=9)
    return buf.tell()


def _webp(im: np.ndarray) -> int:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return buf.tell()


def _jxl(im: np.ndarray) -> int | None:
    try:
        import imagecodecs

        return len(imagecodecs.jpegxl_encode(im, lossless=True, effort=9))
    except Exception:  # imagecodecs missing or built without JPEG-XL
        return None


def baselines(images: np.ndarray) -> dict:
    out = {}
    for name, fn in (("png", _png), ("webp_lossless", _webp), ("jpegxl_lossless", _jxl)):
        start = time.perf_counter()
        sizes = [fn(im) for im in images]
        if any(s is None for s in sizes):
            continue
        out[name] = {"bytes": sizes, "seconds_per_image": (time.perf_counter() - start) / len(images)}
    return out


# ---- the model's NELBO for the schedule, on independent draws -------------------------------------------------------
def schedule_nelbo(model, images: np.ndarray, settings: bitsback.BitsBackSettings, seed: int = 1234,
                   batch: int = 26, progress: bool = False) -> list[float]:
    """Per image, bits: prior KL + sum_j E KL(q(x_{t_j}|x_{t_{j-1}},x_0) || p) + decoder term, each level with a
    fresh x_{t_{j-1}} ~ q(x_{t_{j-1}}|x_0) (unbiased for the codec's continuous-latent bound; same prior and x_0
    layer as the codec)."""
    sched, profile, kind, steps, levels = schedule_for(model, settings.n_steps, settings.t_end, 0)
    gen = torch.Generator().manual_seed(seed)
    tile = model.unet_config.resolution
    out = []
    for im in tqdm(images, disable=not progress, desc="nelbo", unit="img"):
        x0, mask = to_tiles(im, tile)
        n_tiles = len(x0)
        ts = [lv.t_prev for lv in levels] + [levels[-1].t]
        t_all = torch.tensor(ts).repeat_interleave(n_tiles)
        x0_all = x0.repeat(len(ts), 1, 1, 1)
        noise = torch.randn(x0_all.shape, generator=gen, dtype=torch.float64)
        xt = q_sample_batched(sched, x0_all.double(), t_all, noise)
        eps = torch.cat([model.eps(xt[i:i + batch].float(), t_all[i:i + batch]) for i in range(0, len(xt), batch)])
        sab = torch.from_numpy(sched.sqrt_alpha_bar[t_all.numpy()]).view(-1, 1, 1, 1)
        s1ab = torch.from_numpy(sched.sqrt_one_minus_alpha_bar[t_all.numpy()]).view(-1, 1, 1, 1)
        x0_hat = ((xt - s1ab * eps.double()) / sab).clamp(-1.0, 1.0)
        real = mask.flatten()
        bits = 0.0
        for j, lv in enumerate(levels):
            sl = slice(j * n_tiles, (j + 1) * n_tiles)
            c0, cp, var_q = lv.rev
            mu_q = c0 * x0.double() + cp * xt[sl]
            mu_p = c0 * x0_hat[sl] + cp * xt[sl]
            bits += float(gaussian_kl(mu_q.flatten()[real], var_q, mu_p.flatten()[real], lv.p_var).sum()) / LOG2
        h, w, _ = im.shape
        last = x0_hat[len(levels) * n_tiles:]
        rows = pixelmodel.mean_rows(last, h, w)
        bits += pixelmodel.code_length_bits(im, rows, pixelmodel.fit(im, rows))
        mean_T = sched.sqrt_alpha_bar[sched.T] * x0.double().flatten()[real]
        bits += float(gaussian_kl(mean_T, 1.0 - sched.alpha_bar[sched.T], torch.zeros_like(mean_T), 1.0).sum()) / LOG2
        out.append(bits)
    return out


# ---- bits-back runs -----------------------------------------------------------------------------------------------
def run_bitsback(model, images: list[np.ndarray], settings: bitsback.BitsBackSettings, decode: bool = True,
                 progress: bool = False, desc: str = "bitsback") -> dict:
    """One file for all `images`; decoded and verified when `decode`."""
    bar = tqdm(total=len(images) * (2 if decode else 1), disable=not progress, desc=desc, unit="img")
    res = bitsback.encode_set(images, model, settings, progress=lambda k, n: bar.update(1))
    dec_s = float("nan")
    if decode:
        start = time.perf_counter()
        out = bitsback.decode_images(res.data, model, progress=lambda k, n: bar.update(1))
        dec_s = time.perf_counter() - start
        if not all(np.array_equal(a, b) for a, b in zip(out.images, images)):
            raise RuntimeError("bits-back round trip failed")
    bar.close()
    dims = sum(im.size for im in images)
    return {
        "settings": dataclasses.asdict(res.settings),
        "images": len(images), "dims": dims, "bytes": len(res.data), "bpd": 8 * len(res.data) / dims,
        "seed_bits": res.seed_bits, "overhead_bytes": res.overhead_bytes,
        "net_bpd": res.net_bits / dims, "seed_bpd": res.seed_bits / dims,
        "net_bits_per_image": [s.net_bits for s in res.images],
        "nelbo_bits_per_image": [s.nelbo_bits for s in res.images],
        "kl_bits_per_image": [s.kl_bits for s in res.images],
        "decoder_bits_per_image": [s.decoder_bits for s in res.images],
        "nelbo_same_bpd": sum(s.nelbo_bits for s in res.images) / dims,
        "encode_s": res.seconds, "decode_s": dec_s, "unet_s_encode": res.unet_seconds, "attempts": res.attempts,
        "encode_s_per_image": res.seconds / len(images), "decode_s_per_image": dec_s / len(images)}


def _settings(**kw) -> bitsback.BitsBackSettings:
    return bitsback.BitsBackSettings(**kw)


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


# ---- report -------------------------------------------------------------------------------------------------------
def markdown(r: dict) -> str:
    n, dims1 = r["limit"], r["dims_per_image"]
    base = r["baselines"]
    n_all = max((len(b["bytes"]) for b in base.values()), default=n)
    whole = n >= n_all  # the set file already holds every image: no extrapolated column
    lines = [f"Model `{r['model']}` ({r['model_identity'][:8]}), {r['steps']} coded steps (schedule: "
             f"{r['coded_steps']} levels down to t={r['t_end']}), dev test images 0..{n - 1}; bits/dim of whole files.",
             "",
             f"| codec | 1 image | {n} images |{'' if whole else f' {n_all} images |'} encode s/img | decode s/img |",
             "|---|---|---|---|---|" + ("" if whole else "---|")]
    for name, label in (("png", "PNG (pillow, optimize, level 9)"), ("webp_lossless", "WebP lossless (method 6)"),
                        ("jpegxl_lossless", "JPEG-XL lossless (effort 9)")):
        if name in base:
            b = base[name]["bytes"]
            rest = "" if whole else f" {8 * sum(b) / (len(b) * dims1):.3f} |"
            lines.append(f"| {label} | {8 * np.mean(b[:r['single']]) / dims1:.3f} | "
                         f"{8 * sum(b[:n]) / (n * dims1):.3f} |{rest} {base[name]['seconds_per_image']:.4f} | – |")
    s, m = r["single_run"], r["set_run"]
    ext = r["extrapolated_500"]
    lines.append(f"| bits-back, one image per file (grid {s['grid_bits']}) | {s['bpd_mean']:.3f} | – |"
                 f"{'' if whole else ' – |'} {s['encode_s_per_image']:.2f} | {s['decode_s_per_image']:.2f} |")
    extrapolated = "" if whole else f" {ext['bpd']:.3f} (extrapolated) |"
    lines.append(f"| bits-back, one file for the set (grid {m['settings']['grid_bits']}) | – | {m['bpd']:.3f} |"
                 f"{extrapolated} {m['encode_s_per_image']:.2f} | {m['decode_s_per_image']:.2f} |")
    lines += ["", "Bits-back accounting for the set file (bits/dim):", "",
              "| quantity | value |", "|---|---|",
              f"| whole file ({m['bytes']} bytes) | {m['bpd']:.4f} |",
              f"| initial (seed) bits paid, once per file | {m['seed_bpd']:.4f} ({m['seed_bits']} bits = "
              f"{m['seed_bits'] / dims1:.2f} bits/dim of one image) |",
              f"| container + sub-header bytes | {m['overhead_bytes']} |",
              f"| net = file - seed bits | {m['net_bpd']:.4f} |",
              f"| NELBO on the encoder's own draws | {m['nelbo_same_bpd']:.4f} |",
              f"| net - NELBO (same draws), mean ± s.e. over images | {r['net_minus_nelbo_same'][0]:+.4f} ± "
              f"{r['net_minus_nelbo_same'][1]:.4f} |"]
    if r.get("nelbo_indep_bpd") is not None:
        lines += [f"| model NELBO for this schedule, independent draws | {r['nelbo_indep_bpd']:.4f} ± "
                  f"{r['nelbo_indep_se']:.4f} |",
                  f"| net - NELBO (independent), paired ± s.e. | {r['net_minus_nelbo_indep'][0]:+.4f} ± "
                  f"{r['net_minus_nelbo_indep'][1]:.4f} |"]
    if not whole:
        lines.append(f"| 500-image file, extrapolated: seed + 500 x mean net image + overhead | {ext['bpd']:.4f} |")
    for title, key in (("Order comparison (same images, one file each)", "order_runs"),
                       ("Grid sweep (Bit-Swap, one file for the images)", "grid_runs"),
                       ("Coded steps (Bit-Swap)", "steps_runs")):
        rows = r.get(key) or []
        if not rows:
            continue
        lines += ["", f"{title}:", "",
                  "| order | steps | grid | images | file bpd | seed bits (bits/dim of one image) | net bpd | "
                  "NELBO same draws | net - NELBO | encode s/img | decode s/img |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in rows:
            st = x["settings"]
            d = _mean_se([(a - b) / dims1 for a, b in zip(x["net_bits_per_image"], x["nelbo_bits_per_image"])])
            lines.append(f"| {st['order']} | {st['n_steps']} | {st['grid_bits']} | {x['images']} | {x['bpd']:.3f} | "
                         f"{x['seed_bits']} ({x['seed_bits'] / dims1:.2f}) | {x['net_bpd']:.4f} | "
                         f"{x['nelbo_same_bpd']:.4f} | {d[0]:+.4f} ± {d[1]:.4f} | {x['encode_s_per_image']:.2f} | "
                         f"{x['decode_s_per_image']:.2f} |")
    if r.get("single_grid_runs"):
        k = min(r["single"], r.get("single_sweep_images", 4))
        own = np.mean([x["bpd"] for x in r["single_runs"][:k]])
        lines += ["", f"One-image files, images 0..{k - 1}: grid {r['single_run']['grid_bits']} {own:.3f} bits/dim; "
                  + "; ".join(f"grid {g} {v['bpd_mean']:.3f} (initial bits {v['seed_bpd_mean']:.2f}, net "
                              f"{v['net_bpd_mean']:.3f})" for g, v in r["single_grid_runs"].items())]
    lines += ["", f"Wall time of the whole run: {r['wall_s']:.0f} s ({r['threads']} torch thread(s), {r['device']}; "
              f"machine load average {r['load_average_start'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} "
              "at the end: timings include sharing the CPU)."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.bitsback_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", default=None, help="folder or .npz (default: the 500 dev test images)")
    ap.add_argument("--limit", type=int, default=100, help="images in the set file (baselines use all)")
    ap.add_argument("--single", type=int, default=8, help="images coded one per file")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--t-end", type=int, default=1)
    ap.add_argument("--grid-bits", type=int, default=None, help="grid of the set file [by set size]")
    ap.add_argument("--single-grid-bits", type=int, default=None, help="grid of single-image files [by set size]")
    ap.add_argument("--compare", type=int, default=8, help="images for the Bit-Swap vs BB-ANS comparison (0: skip)")
    ap.add_argument("--grid-sweep", default="-2,-1,0,1,2,3", help="grid_bits values (16 images each; '' skips)")
    ap.add_argument("--steps-sweep", default="25,50", help="n_steps values (16 images each; '' skips)")
    ap.add_argument("--sweep-images", type=int, default=16)
    ap.add_argument("--single-grid-sweep", default="-2,0",
                    help="other grids for one-image files (images 0..--single-sweep-images-1, encode only)")
    ap.add_argument("--single-sweep-images", type=int, default=4)
    ap.add_argument("--no-indep-nelbo", action="store_true", help="skip the independent-draw NELBO")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="eval/out/bitsback")
    ap.add_argument("-q", "--quiet", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    t_run = time.perf_counter()
    progress = not args.quiet and sys.stderr.isatty()
    model = load_model(args.model)
    all_images = load_dev_set() if args.images is None else load_images(args.images)
    images = [all_images[i] for i in range(min(args.limit, len(all_images)))]
    dims1 = int(images[0].size)
    _, _, kind, steps, _ = schedule_for(model, args.steps, args.t_end, 0)
    r = {"model": model.name, "model_identity": model.identity, "prior": kind, "steps": args.steps,
         "coded_steps": len(steps) - 1, "t_end": args.t_end, "limit": len(images), "single": args.single,
         "single_sweep_images": args.single_sweep_images,
         "dims_per_image": dims1, "threads": args.threads, "device": str(model.device), "argv": argv or sys.argv[1:],
         "load_average_start": os.getloadavg()}
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"baselines on {len(all_images)} images")
    r["baselines"] = baselines(all_images)

    single_settings = _settings(n_steps=args.steps, t_end=args.t_end, grid_bits=args.single_grid_bits)
    singles = [run_bitsback(model, [images[i]], single_settings, progress=progress, desc=f"single {i}")
               for i in range(min(args.single, len(images)))]
    r["single_runs"] = singles
    r["single_run"] = {"grid_bits": singles[0]["settings"]["grid_bits"] if singles else None,
                       "bpd_mean": float(np.mean([x["bpd"] for x in singles])),
                       "net_bpd_mean": float(np.mean([x["net_bpd"] for x in singles])),
                       "seed_bpd_mean": float(np.mean([x["seed_bpd"] for x in singles])),
                       "encode_s_per_image": float(np.mean([x["encode_s"] for x in singles])),
                       "decode_s_per_image": float(np.mean([x["decode_s"] for x in singles]))}
    log(f"single-image files: {r['single_run']}")

    set_settings = _settings(n_steps=args.steps, t_end=args.t_end, grid_bits=args.grid_bits)
    m = run_bitsback(model, images, set_settings, progress=progress, desc="set")
    r["set_run"] = m
    r["net_minus_nelbo_same"] = _mean_se([(a - b) / dims1 for a, b in zip(m["net_bits_per_image"],
                                                                           m["nelbo_bits_per_image"])])
    mean_net_img = float(np.mean(m["net_bits_per_image"]))
    bits_500 = m["seed_bits"] + 500 * mean_net_img + 8 * m["overhead_bytes"]
    r["extrapolated_500"] = {"bits": bits_500, "bpd": bits_500 / (500 * dims1)}
    log(f"set: {m['bpd']:.4f} bpd, net {m['net_bpd']:.4f}, nelbo(same) {m['nelbo_same_bpd']:.4f}")
    r["nelbo_indep_bpd"] = None
    if not args.no_indep_nelbo:
        nel = schedule_nelbo(model, np.stack(images), set_settings, progress=progress)
        r["nelbo_indep_bits_per_image"] = nel
        r["nelbo_indep_bpd"], r["nelbo_indep_se"] = (v / dims1 for v in _mean_se(nel))
        r["net_minus_nelbo_indep"] = _mean_se([(a - b) / dims1 for a, b in zip(m["net_bits_per_image"], nel)])
        log(f"nelbo(indep) {r['nelbo_indep_bpd']:.4f}")

    set_grid = m["settings"]["grid_bits"]
    r["order_runs"] = []
    if args.compare:
        sub = images[:args.compare]
        for order in bitsback.ORDERS:
            r["order_runs"].append(run_bitsback(model, sub, _settings(n_steps=args.steps, t_end=args.t_end,
                                                                      grid_bits=set_grid, order=order),
                                                progress=progress, desc=order))
    sweep = images[:args.sweep_images]
    r["grid_runs"] = [run_bitsback(model, sweep, _settings(n_steps=args.steps, t_end=args.t_end, grid_bits=int(g)),
                                   decode=False, progress=progress, desc=f"grid {g}")
                      for g in args.grid_sweep.split(",") if g.strip()]
    r["steps_runs"] = [run_bitsback(model, sweep, _settings(n_steps=int(k), t_end=args.t_end, grid_bits=set_grid),
                                    progress=progress, desc=f"steps {k}")
                       for k in args.steps_sweep.split(",") if k.strip()]
    r["single_grid_runs"] = {}
    for g in (x for x in args.single_grid_sweep.split(",") if x.strip()):
        runs = [run_bitsback(model, [images[i]], _settings(n_steps=args.steps, t_end=args.t_end, grid_bits=int(g)),
                             decode=False, progress=progress, desc=f"single grid {g}")
                for i in range(min(args.single_sweep_images, len(images)))]
        r["single_grid_runs"][g] = {"bpd_mean": float(np.mean([x["bpd"] for x in runs])), "images": len(runs),
                                    "seed_bpd_mean": float(np.mean([x["seed_bpd"] for x in runs])),
                                    "net_bpd_mean": float(np.mean([x["net_bpd"] for x in runs]))}
    r["wall_s"] = time.perf_counter() - t_run
    r["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bitsback_bench.json").write_text(json.dumps(r, indent=1, default=float))
    table = markdown(r)
    (out / "bitsback_table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
