"""`python -m eval.ledger`: options, the resumable per-image run, and the outputs."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ddpmcodec.codec.progressive import coded_inputs
from ddpmcodec.container import header as container
from ddpmcodec.errors import CodecError, InputError
from eval.codec_bench import add_settings_options, settings_from_args
from ddpmcodec.batch.result_cache import Cache, image_digest
from eval.report.write import finite
from eval.ledger.rates import COLUMNS, LEDGER_VERSION, PER_IMAGE_ARRAYS_MAX, ledger_image
from eval.ledger.write import aggregate, markdown


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.ledger", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", default=None, help="folder or .npz (default: the 500 dev test images)")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=16)
    add_settings_options(ap)
    ap.add_argument("--t-samples", type=int, default=8,
                    help="(a): importance-sampled single steps per interval between coded steps")
    ap.add_argument("--mc-seed", type=int, default=0, help="noise seed of (a) and (b)")
    ap.add_argument("--verify", action="store_true", help="also decode every file and check it bit-exact")
    ap.add_argument("--batch", type=int, default=64, help="network batch for (a) and (b)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="docs/results", help="writes <out>/ledger_dev{N}.{md,json}")
    ap.add_argument("--cache", default="eval/out/cache", help="per-image results (resume)")
    ap.add_argument("-q", "--quiet", action="store_true")
    return ap


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    from ddpmcodec.data import load_dev_set, load_images
    from ddpmcodec.network.model_io import load_model

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.t_samples < 1:
        raise InputError("--t-samples must be >= 1")
    images = load_dev_set() if args.images is None else load_images(args.images)
    images = images[args.offset: args.offset + args.limit]
    if len(images) == 0:
        raise InputError("no images selected (check --offset / --limit)")
    model = load_model(args.model, device=args.device)
    settings = settings_from_args(args, model)
    cache = Cache(args.cache)
    per_image = []
    for i, im in enumerate(images):
        key = {**coded_inputs(model, settings), "image": image_digest(im[None]), "index": args.offset + i,
               "t_samples": args.t_samples, "mc_seed": args.mc_seed, "ledger": LEDGER_VERSION, "verify": args.verify}
        rec = cache.get_json("ledger", key)
        if rec is None:
            rec = ledger_image(model, im, settings, index=args.offset + i, t_samples=args.t_samples,
                               seed=args.mc_seed, verify=args.verify, batch=args.batch)
            cache.put_json("ledger", key, rec)
        per_image.append(rec)
        if not args.quiet:
            print(f"image {args.offset + i}: lossless {rec['lossless']['file_bits'] / im.size:.3f} bits/dim, "
                  f"{sum(rec['seconds'].values()):.1f} s", file=sys.stderr, flush=True)
    dims = int(images[0].size)
    src = "CIFAR-10 dev test set" if args.images is None else str(args.images)
    r = {"command": "python -m eval.ledger " + " ".join(argv), "model": model.name,
         "model_identity": model.identity, "images_desc": f"{src}, images {args.offset}..{args.offset + len(images) - 1}",
         "settings": asdict(settings), "format_version": container.VERSION, "t_samples": args.t_samples,
         "mc_seed": args.mc_seed, "threads": torch.get_num_threads(), "aggregate": aggregate(per_image, dims),
         "per_image": [_compact(p if len(per_image) <= PER_IMAGE_ARRAYS_MAX else _scalars(p)) for p in per_image],
         "columns": dict(COLUMNS)}
    r["wall_s"] = time.perf_counter() - t0
    r["cache"] = {"hits": cache.hits, "misses": cache.misses}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ledger_dev{len(images)}" if args.images is None and args.offset == 0 else \
        f"ledger_{Path(str(args.images or 'dev')).stem}_o{args.offset}_n{len(images)}"
    (out / f"{stem}.json").write_text(json.dumps(finite(r), indent=1, allow_nan=False) + "\n")
    (out / f"{stem}.md").write_text(markdown(r))
    r["paths"] = [str(out / f"{stem}.md"), str(out / f"{stem}.json")]
    return r


def _scalars(p: dict) -> dict:
    """A per-image record without its per-stop-point arrays (lossless numbers and timings only)."""
    return {k: v for k, v in p.items() if not isinstance(v, list)}


def _compact(o, digits: int = 2):
    """A per-image record for the JSON: bits to 0.01, PSNR and seconds too (the cache keeps full precision)."""
    if isinstance(o, dict):
        return {k: _compact(v, digits) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_compact(v, digits) for v in o]
    if isinstance(o, float) and math.isfinite(o):
        return round(o, digits)
    return o


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.images is None:
            from ddpmcodec.data import DEV_FILE, shared_data_file

            try:
                shared_data_file(DEV_FILE)
            except InputError as exc:
                print(f"skipped: {exc} (pass --images to use other images)", file=sys.stderr)
                return 0
        r = run(args, argv)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(markdown(r))
        print("wrote " + ", ".join(r["paths"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
