"""Benchmark the progressive codec on the dev test set: coded vs ideal rate at every stop point, PSNR at a target
bpp, lossless bits/dim, encode/decode time and the share of time outside the U-Net.

    python -m eval.codec_bench --limit 500 --out eval/out/codec            # the README numbers
    python -m eval.codec_bench --limit 8 --steps 50 --budget 6              # a quick variant
    python -m eval.codec_bench --limit 500 --ray auto --out eval/out/codec  # as Ray tasks of --ray-batch images

Ideal and coded come from the same encoder run: 'ideal' is the exact KL of every coded step along the chain the
encoder actually sampled (plus the x_0 layer's code length), 'coded' is the size of the real file that stops there
(what `truncate` writes: header, payload and coder termination), 'stream' the bits the steps occupy on the rANS
stack (the channel simulation's cost without the container's fixed bytes).

With --ray, tasks of --ray-batch images each run bench() (one torch thread); each task's result is cached atomically
under <--out>/chunks/ as it arrives, so a rerun runs only the missing tasks, and merge() writes the same files as a
local run (the same per-image sizes and PSNR; timings differ).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ddpmcodec.codec.progressive import CodecSettings, coded_inputs, default_t_end, encode
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.data import load_dev_set, load_images
from ddpmcodec.errors import CodecError, InputError
from ddpmcodec.network.model_io import load_model


def bench(model, images: np.ndarray, settings: CodecSettings, *, target_bpp: float = 0.36, decode_every: int = 1,
          progress: bool = True, first: int = 0) -> dict:
    """Encode each image (uint8 (N, H, W, 3)); decode, verify and time run image first + i when it is a multiple of
    decode_every (0: never). Returns per-step means (bits/dim, dB), per-image rows and their summary."""
    n, h, w, _ = images.shape
    dims = h * w * 3
    per_image, rows = [], None
    for i in tqdm(range(n), disable=not progress, desc="codec", unit="img"):
        res = encode(images[i], model, settings)
        ideal_cum = np.cumsum([s.ideal_bits for s in res.steps])
        coded = np.array([8 * s.bytes_if_stopped for s in res.steps], dtype=np.float64)
        stream = np.array([s.stream_bits for s in res.steps], dtype=np.float64)
        psnrs = np.array([s.psnr for s in res.steps])
        dec_s = float("nan")
        if decode_every and (first + i) % decode_every == 0:
            start = time.perf_counter()
            out = list(decode_progressive(res.data, model, every_step=False))
            dec_s = time.perf_counter() - start
            if not np.array_equal(out[-1].pixels, images[i]):
                raise RuntimeError(f"image {i}: lossless round trip failed")
        bpp = coded / (h * w)
        fit = np.nonzero(bpp <= target_bpp)[0]
        k = int(fit[-1]) if len(fit) else 0
        per_image.append({"bytes": len(res.data), "ideal_bits": float(ideal_cum[-1]), "encode_s": res.seconds,
                          "unet_s": res.unet_seconds, "decode_s": dec_s, "bpp_at_target": float(bpp[k]),
                          "psnr_at_target": float(psnrs[k]), "t_at_target": res.steps[k].t})
        if rows is None:
            rows = {"t": [s.t for s in res.steps], "ideal": [], "coded": [], "stream": [], "psnr": []}
        rows["ideal"].append(ideal_cum)
        rows["coded"].append(coded)
        rows["stream"].append(stream)
        rows["psnr"].append(np.where(np.isinf(psnrs), np.nan, psnrs))
    ideal, coded, stream, psnr = (np.mean(rows[k], axis=0) for k in ("ideal", "coded", "stream", "psnr"))
    steps = [_ratios({"t": t, "ideal_bpd": ideal[j] / dims, "coded_bpd": coded[j] / dims,
                      "stream_bpd": stream[j] / dims,
                      "psnr_db": None if not np.isfinite(psnr[j]) else float(psnr[j])}) for j, t in enumerate(rows["t"])]
    return {"n_images": n, "image_size": [h, w], "settings": settings.__dict__, **_image_summary(per_image, dims),
            "header_bytes": int(round(coded[0] / 8)), "target_bpp": target_bpp, "threads": torch.get_num_threads(),
            "steps": steps, "per_image": per_image}


def _ratios(step: dict) -> dict:
    for k in ("coded", "stream"):
        step[f"{k}_over_ideal"] = step[f"{k}_bpd"] / step["ideal_bpd"] if step["ideal_bpd"] > 0 else None
    return step


def _image_summary(per_image: list[dict], dims: int) -> dict:
    """Scalar results from per-image rows: lossless size, target-bpp point, timings (shared by bench and merge)."""
    n = len(per_image)
    col = lambda k: np.array([p[k] for p in per_image], dtype=np.float64)  # noqa: E731
    enc, unet, dec = col("encode_s"), col("unet_s"), col("decode_s")
    lossless_bpd = col("bytes") * 8 / dims
    return {
        "lossless_bpd": float(lossless_bpd.mean()),
        "lossless_bpd_stderr": float(lossless_bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "ideal_total_bpd": float(col("ideal_bits").mean() / dims),
        "coded_over_ideal_lossless": float(col("bytes").sum() * 8 / col("ideal_bits").sum()),
        "bpp_at_target": float(col("bpp_at_target").mean()), "psnr_at_target_db": float(col("psnr_at_target").mean()),
        "encode_s_per_image": float(enc.mean()), "unet_share_encode": float(unet.sum() / enc.sum()),
        "decode_s_per_image": float(np.nanmean(dec)) if np.isfinite(dec).any() else None,
    }


def merge(results: list[dict]) -> dict:
    """Combine runs over disjoint image ranges (same settings) into one result, weighting means by image count."""
    if len({json.dumps(r["settings"], sort_keys=True) for r in results}) != 1:
        raise ValueError("runs have different settings")
    if len({tuple(s["t"] for s in r["steps"]) for r in results}) != 1:
        raise ValueError("runs have different schedules")
    n = np.array([r["n_images"] for r in results], dtype=np.float64)
    w = n / n.sum()
    out = dict(results[0])
    per = [p for r in results for p in r["per_image"]]
    out["per_image"], out["n_images"] = per, len(per)
    dims = results[0]["image_size"][0] * results[0]["image_size"][1] * 3
    out.update(_image_summary(per, dims))
    steps = []
    for j, s0 in enumerate(results[0]["steps"]):
        m = {k: float(sum(wi * r["steps"][j][k] for wi, r in zip(w, results)))
             for k in ("ideal_bpd", "coded_bpd", "stream_bpd")}
        ps = [r["steps"][j]["psnr_db"] for r in results]
        m["psnr_db"] = None if any(p is None for p in ps) else float(sum(wi * p for wi, p in zip(w, ps)))
        steps.append(_ratios({"t": s0["t"], **m}))
    out["steps"] = steps
    out["command"] = "; ".join(r.get("command", "") for r in results)
    return out


def bench_task(ref, images: np.ndarray, settings: CodecSettings, target_bpp: float, decode_every: int,
               first: int) -> dict:
    """One Ray task of :func:`bench_ray`: bench() of a batch of images with the model a ModelRef names."""
    return bench(ref.load(), images, settings, target_bpp=target_bpp, decode_every=decode_every, progress=False,
                 first=first)


def bench_ray(ref, model, images: np.ndarray, settings: CodecSettings, *, address: str, out: str | Path,
              batch: int = 8, target_bpp: float = 0.36, decode_every: int = 1, progress: bool = True) -> dict:
    """:func:`bench` of the images as Ray tasks of `batch` images, merged with :func:`merge`. Each part is cached
    under out/chunks, keyed by model and x_0 layer identity, pixels, settings, format and encoder version, target bpp
    and which images are decoded; a failed task ends the run with one InputError line after the others are cached."""
    from ddpmcodec.batch.result_cache import Cache, image_digest

    spans = [(a, min(a + batch, len(images))) for a in range(0, len(images), batch)]
    keys = [{**coded_inputs(model, settings), "images": image_digest(images[a:b]), "target_bpp": target_bpp,
             "decode_every": decode_every, "decode_phase": a % decode_every if decode_every else 0} for a, b in spans]
    calls = [(images[a:b], settings, target_bpp, decode_every, a) for a, b in spans]
    with tqdm(total=len(images), disable=not progress, desc="codec (Ray)", unit="img") as bar:
        parts = Cache(Path(out) / "chunks").parts("bench", keys, bench_task, calls, None, ray=address, ref=ref,
                                                  bar=bar, sizes=[b - a for a, b in spans])
    return merge(parts)


def format_table(r: dict) -> str:
    lines = [f"{r['n_images']} images, settings {r['settings']}",
             f"lossless: {r['lossless_bpd']:.3f} bits/dim (ideal {r['ideal_total_bpd']:.3f}; coded/ideal "
             f"{r['coded_over_ideal_lossless']:.3f}); at <= {r['target_bpp']} bpp: {r['bpp_at_target']:.3f} bpp, "
             f"PSNR {r['psnr_at_target_db']:.2f} dB",
             f"encode {r['encode_s_per_image']:.2f} s/image (U-Net share {100 * r['unet_share_encode']:.0f}%), "
             f"decode {r['decode_s_per_image'] or float('nan'):.2f} s/image, {r['threads']} threads",
             "", "| t | ideal bits/dim | coded bits/dim (file) | coded/ideal | stream/ideal | PSNR dB |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for s in r["steps"]:
        lines.append(f"| {s['t']} | {s['ideal_bpd']:.4f} | {s['coded_bpd']:.4f} | {fmt(s['coded_over_ideal'], '.3f')} "
                     f"| {fmt(s['stream_over_ideal'], '.3f')} | {fmt(s['psnr_db'], '.2f')} |")
    return "\n".join(lines)


def add_settings_options(ap: argparse.ArgumentParser) -> None:
    """The codec settings as options (--steps, --t-end, --budget, --margin, --prior, --seed); see settings_from_args."""
    d = CodecSettings()
    ap.add_argument("--steps", type=int, default=d.n_steps)
    ap.add_argument("--t-end", type=int, default=d.t_end, help="default: the model's (its learned x_0 layer's)")
    ap.add_argument("--budget", type=int, default=d.budget_bits)
    ap.add_argument("--margin", type=int, default=d.margin_bits)
    ap.add_argument("--prior", default=d.prior, choices=("calibrated", "fixedlarge"))
    ap.add_argument("--seed", type=int, default=d.seed, help="codec seed")
    ap.add_argument("--portable", action="store_true", help="the U-Net on integer grids (format 8, --portable)")


def settings_from_args(args: argparse.Namespace, model) -> CodecSettings:
    """CodecSettings from add_settings_options' options, with t_end resolved for the model (it names the outputs)."""
    return CodecSettings(n_steps=args.steps, t_end=args.t_end or default_t_end(model), budget_bits=args.budget,
                         margin_bits=args.margin, prior=args.prior, seed=args.seed,
                         exact_network=bool(getattr(args, "portable", False)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", default=None, help="npz/folder [dev test set]")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--offset", type=int, default=0)
    add_settings_options(ap)
    ap.add_argument("--target-bpp", type=float, default=0.36)
    ap.add_argument("--decode-every", type=int, default=1, help="time/verify decoding of every k-th image (0: off)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ray", metavar="ADDRESS", default=None,
                    help='run as Ray tasks: auto, local or an address (pip install "ddpmcodec[cluster]")')
    ap.add_argument("--ray-batch", type=int, default=8, help="images per Ray task")
    ap.add_argument("--out", default="eval/out/codec")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine finished runs (disjoint images) and exit")
    args = ap.parse_args(argv)
    if args.merge:
        r = merge([json.loads(Path(f).read_text()) for f in args.merge])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"codec_merged_n{r['n_images']}.json").write_text(json.dumps(r, indent=1))
        (out / f"codec_merged_n{r['n_images']}.md").write_text(format_table(r) + "\n")
        print(format_table(r))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images(args.images) if args.images else load_dev_set()
    images = images[args.offset: args.offset + args.limit]
    model = load_model(args.model, device=args.device)
    settings = settings_from_args(args, model)
    if args.ray is None:
        r = bench(model, images, settings, target_bpp=args.target_bpp, decode_every=args.decode_every)
    else:
        from ddpmcodec.batch.ray_map import ModelRef
        from ddpmcodec.batch.ray_tasks import connect

        try:
            if args.ray_batch < 1:
                raise InputError(f"--ray-batch must be at least 1, got {args.ray_batch}")
            connect(args.ray)
            r = bench_ray(ModelRef.of(args.model, args.device), model, images, settings, address=args.ray,
                          out=args.out, batch=args.ray_batch, target_bpp=args.target_bpp,
                          decode_every=args.decode_every)
        except CodecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    r["model"], r["command"] = args.model, "python -m eval.codec_bench " + " ".join(
        sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"s{args.steps}_e{settings.t_end}_b{args.budget}_m{args.margin}_{args.prior}_o{args.offset}_n{len(images)}" \
        + ("_portable" if args.portable else "")
    (out / f"codec_{tag}.json").write_text(json.dumps(r, indent=1))
    (out / f"codec_{tag}.md").write_text(format_table(r) + "\n")
    print(format_table(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
